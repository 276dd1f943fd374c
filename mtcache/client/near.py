"""The near cache: a worker's own small copy of recent values.

Bounded by entries, by bytes (the encoded size) and by age. Every hit checks
the key's counter in the coordinator's shared-memory version table: a copy
whose counter moved is a miss, so a worker never serves a near copy older than
the last write its coordinator acknowledged. A table whose heartbeat stopped (its
coordinator stopped or died, and its counters will never move again) makes
every copy a miss.

Values are held decoded and returned as they are, as ``functools.lru_cache``
does: callers must not mutate them. With ``copy_on_read=True`` the encoded bytes
are kept instead and each hit decodes a fresh copy.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mtcache.shm import LIVENESS_MS, VersionTable

__all__ = ["NearCache"]

_MISSING = object()


class NearCache:
    """Thread-safe LRU of ``key -> (value, slot, version, expires_at, size, fresh_until)``.

    Bounded by bytes, ``max_bytes`` (an entry's size is its encoded value plus its key:
    the bytes the client received, whatever the decoded object costs), and by entries,
    ``capacity``; the least recently used copies go first until both bounds hold, and a
    value larger than ``max_bytes`` alone is not held.

    A copy is served while its counter is unchanged, its coordinator beats, and it is
    younger than its expiry (its TTL capped by the max age). A copy whose counter moved
    is dropped at once; one that only aged or lost its coordinator is kept (until the
    LRU pushes it out) for :meth:`stale`, the fail-safe of a caller that asks for it.

    ``decode`` is used only with ``copy_on_read``.
    """

    MISSING = _MISSING

    def __init__(
        self,
        capacity: int = 65_536,
        max_bytes: int = 128 * 1024 * 1024,
        max_age: float = 30.0,
        *,
        copy_on_read: bool = False,
        decode: Callable[[bytes], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
            raise ValueError(f"near_capacity must be a non-negative integer, got {capacity!r}")
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError(f"near_max_bytes must be a non-negative integer, got {max_bytes!r}")
        if not isinstance(max_age, (int, float)) or isinstance(max_age, bool) or not 0 <= max_age < float("inf"):
            raise ValueError(f"near_max_age must be a non-negative number of seconds, got {max_age!r}")
        if copy_on_read and decode is None:
            raise ValueError("copy_on_read needs a decode function")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.max_age = float(max_age)
        self.copy_on_read = copy_on_read
        self._decode = decode
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[Any, int, int, float, int, float]] = OrderedDict()
        self._bytes = 0
        self.table: VersionTable | None = None
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        """False when the capacity, byte bound or max age is zero."""
        return self.capacity > 0 and self.max_bytes > 0 and self.max_age > 0

    def get(self, key: str) -> Any:
        """The held value, or :attr:`MISSING` (absent, too old, changed since, or its
        coordinator stopped beating).

        :raises TypeError: ``key`` is unhashable.
        """
        if not self._data:  # empty or disabled: no lock needed to know it is a miss
            self.misses += 1
            return _MISSING
        table = self.table
        with self._lock:
            item = self._data.get(key)
            if item is not None:
                value, slot, version, expires_at, size, _ = item
                if table is not None and table.counters[slot] == version:
                    now = self._clock()
                    # and the coordinator still beats: a dead one's counters never move again
                    if now < expires_at and now * 1000 < table.header[3] + LIVENESS_MS:
                        self._data.move_to_end(key)
                        self.hits += 1
                        return self._decode(value) if self.copy_on_read else value  # type: ignore[misc]
                else:  # a write replaced it: never serve it again, not even as a fallback
                    del self._data[key]
                    self._bytes -= size
            self.misses += 1
            return _MISSING

    def freshness(self, key: str) -> tuple[int, float] | None:
        """``(version, seconds until it goes stale)`` of the held copy of ``key`` (its
        value's TTL, not the near cache's max age), or None if none is held."""
        with self._lock:
            item = self._data.get(key)
        return None if item is None else (item[2], item[5] - self._clock())

    def stale(self, key: str, max_age: float) -> Any:
        """A held copy of ``key`` that went stale at most ``max_age`` seconds ago and that
        no write has replaced since (its counter, as this worker last saw the table, did
        not move), its coordinator gone or stalled but not retired (not replaced: a
        successor may have taken writes since); else :attr:`MISSING`. The fail-safe
        of a caller whose source failed while no coordinator answers."""
        table = self.table
        with self._lock:
            item = self._data.get(key)
            # a retired table: its coordinator stopped, or one that replaced it took writes since
            if item is None or table is None or table.header[3] == 0:
                return _MISSING
            value, slot, version, _, _, fresh_until = item
            if table.counters[slot] != version or self._clock() - fresh_until > max_age:
                return _MISSING
        return self._decode(value) if self.copy_on_read else value  # type: ignore[misc]

    def put(self, key: str, value: Any, encoded: bytes, version: int, ttl: float) -> None:
        """Hold ``value`` (``encoded`` is its encoding, for size and copy-on-read),
        valid while ``key``'s counter equals ``version`` and for at most ``ttl``
        seconds (and the max age)."""
        table = self.table
        if table is None or not self.enabled:
            return
        size = len(encoded) + len(key)
        if size > self.max_bytes:
            return
        now = self._clock()
        expires_at = now + min(ttl, self.max_age)
        held = encoded if self.copy_on_read else value
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[4]
            self._data[key] = (held, table.slot(key), version, expires_at, size, now + ttl)
            self._bytes += size
            while len(self._data) > self.capacity or self._bytes > self.max_bytes:
                _, evicted = self._data.popitem(last=False)
                self._bytes -= evicted[4]

    def discard(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[4]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held by a
        thread that does not exist here) and no entries."""
        self._lock = threading.Lock()
        self._data = OrderedDict()
        self._bytes = 0
        self.table = None

    def __len__(self) -> int:
        return len(self._data)

    @property
    def bytes(self) -> int:
        """Bytes held (encoded sizes plus key lengths)."""
        return self._bytes
