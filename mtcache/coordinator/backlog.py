"""Writes that did not reach Redis, kept until they are replayed.

While Redis is unreachable, a ``set``, ``delete`` or ``clear`` is still applied
to L1 and acknowledged, but its L2 write and its stream entry cannot be sent.
The backlog keeps **the writes themselves** (key, value or tombstone, TTL,
stamp), newest per key, so nothing that happens to L1 meanwhile (a staleness
drop, a gap, an eviction) can lose one. Until a key's write is replayed, reads
do not take that key from L2 (what Redis holds may be what the write
replaced). When Redis answers again the coordinator replays the backlog with the
same conditional script as every write: an outage write reaches Redis and the
other hosts only if no newer write (by stamp) got there first.

A ``clear`` supersedes every write recorded before it. The backlog is bounded by
bytes; past the bound it stops recording, counts and logs what it drops, and
remembers that it overflowed: on replay the coordinator then clears the whole
namespace on every host (a newer floor than any dropped write) instead of
letting an acknowledged write vanish silently.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

__all__ = ["ENTRY_OVERHEAD", "Write", "WriteBacklog"]

log = logging.getLogger("mtcache.coordinator")

#: Bytes accounted per write on top of its key and value (bookkeeping).
ENTRY_OVERHEAD = 96


@dataclass(frozen=True, slots=True, eq=False)
class Write:
    """One write as it must reach Redis: ``value`` None is a delete (a tombstone), ``clear`` a clear of the
    namespace (``key`` is then empty)."""

    key: str
    value: bytes | None
    ttl: float
    stamp: int
    clear: bool = False
    #: seconds the value is kept past ``ttl`` for fail-safe
    stale_for: float = 0.0
    #: the write stores again a value Redis holds with this very stamp (fail-safe's new expiry)
    renew: bool = False
    #: the tags of the value (see :mod:`mtcache.coordinator.tags`)
    tags: tuple[str, ...] = ()
    #: when the write was made (``time.monotonic()``): a replay keeps what is left of its TTL
    made: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """Seconds left of ``ttl`` now (zero or less: the value expired meanwhile)."""
        return self.ttl - (time.monotonic() - self.made)

    @property
    def nbytes(self) -> int:
        """What the write accounts for in the backlog's bound."""
        return len(self.key) + len(self.value or b"") + ENTRY_OVERHEAD


class WriteBacklog:
    """Writes waiting for Redis (see the module docstring). Event-loop only."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._writes: dict[str, Write] = {}
        #: the newest clear waiting for Redis
        self.clear: Write | None = None
        #: writes were dropped past the bound: the replay must clear the namespace
        self.overflowed = False
        self.bytes = 0
        self.recorded = 0
        self.dropped = 0

    def add(self, write: Write) -> None:
        """Record ``write`` (it replaces an older write of the same key; a clear replaces everything)."""
        if self.overflowed:
            self.dropped += 1
            return
        self.recorded += 1
        if write.clear:
            if self.clear is None or write.stamp > self.clear.stamp:
                self.clear = write
            self._writes = {k: w for k, w in self._writes.items() if w.stamp > write.stamp}
            self.bytes = sum(w.nbytes for w in self._writes.values())
            return
        old = self._writes.get(write.key)
        if old is not None:
            if old.stamp > write.stamp:
                return
            self.bytes -= old.nbytes
        self._writes[write.key] = write
        self.bytes += write.nbytes
        if self.bytes > self.max_bytes:
            self.dropped += len(self._writes)
            log.error(
                "the backlog of writes made while Redis is unreachable passed %d bytes: %d writes dropped; "
                "every host's copy of this namespace will be cleared when Redis answers",
                self.max_bytes, len(self._writes),
            )
            self._writes.clear()
            self.clear = None
            self.bytes = 0
            self.overflowed = True

    def covers(self, key: str) -> bool:
        """True if what Redis holds for ``key`` may be older than this host's truth."""
        return self.overflowed or self.clear is not None or key in self._writes

    def holds(self, key: str, stamp: int) -> bool:
        """True if the write of ``key`` with ``stamp`` is waiting here (L1 must keep its entry)."""
        write = self._writes.get(key)
        return write is not None and write.stamp == stamp

    def batch(self, size: int) -> list[Write]:
        """Up to ``size`` writes to replay next (they stay recorded until :meth:`done`)."""
        out: list[Write] = []
        for write in self._writes.values():
            out.append(write)
            if len(out) >= size:
                break
        return out

    def done(self, write: Write) -> None:
        """``write`` reached Redis: forget it, unless a newer write of its key replaced it meanwhile."""
        if write.clear:
            if self.clear is write:
                self.clear = None
        elif self._writes.get(write.key) is write:
            del self._writes[write.key]
            self.bytes -= write.nbytes

    def reset(self) -> None:
        """The namespace was cleared everywhere (after an overflow): nothing is left to replay."""
        self._writes.clear()
        self.clear = None
        self.bytes = 0
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._writes) + (self.clear is not None)

    def __bool__(self) -> bool:
        return self.overflowed or bool(self._writes) or self.clear is not None
