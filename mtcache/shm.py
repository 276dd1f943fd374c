"""Shared memory between the coordinator (the only writer) and its workers.

:class:`VersionTable` is the per-host coherence mechanism of the design: N
unsigned 64-bit counters; ``slot = crc32(key) % N`` (the same in every process,
unlike Python's randomized ``hash()``). The coordinator bumps a key's slot on every
set, delete, invalidation, eviction and expiry of that key before it acknowledges
the request; every reply that carries a value carries the slot's counter too.
A worker's near copy is valid while the counter is unchanged.

Counters are read and written through ``memoryview.cast("Q")``: aligned 8-byte
loads and stores, which a reader never sees half-written (``struct.pack_into``
zeroes before writing, and a torn value was measured with it).

The segment is a file in ``/dev/shm`` (a tmpfs) mapped with ``mmap``, created
with mode 0600. We do not use ``multiprocessing.shared_memory`` because before
Python 3.13 every process that attaches registers the segment with its own
resource tracker, which unlinks it when that worker exits.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import stat
import tempfile
import time
import zlib
from pathlib import Path

__all__ = [
    "DEFAULT_SLOTS",
    "LIVENESS_MS",
    "STALL_MS",
    "VersionTable",
    "remove_orphans",
    "retire_segment",
    "shm_dir",
    "slot_of",
]

DEFAULT_SLOTS = 65_536
_HEADER_WORDS = 8  # magic, slots, generation, heartbeat, reserved...
_HEARTBEAT = 3
#: A table whose heartbeat is older than this (ms) belongs to a coordinator that is
#: gone: its counters no longer move, so nothing validated against them is trusted.
LIVENESS_MS = 3_000
#: A coordinator that beats every 0.25 s but has not for this long (ms) is stalled
#: (stopped, swapped out, a long pause): a client stops waiting for its replies.
STALL_MS = 1_000
_MAGIC = 0x4D54_4341_4348_0001  # "MTCACH" + layout 1


def shm_dir() -> Path:
    """Where segments live: ``/dev/shm`` when it is a writable folder, else the
    system temporary folder."""
    dev = Path("/dev/shm")
    if dev.is_dir() and os.access(dev, os.W_OK):
        return dev
    return Path(tempfile.gettempdir())


def retire_segment(path: str) -> bool:
    """Make the version table at ``path`` (left by a coordinator that died without
    stopping) untrusted by every worker that still maps it, then remove it; any
    other mtcache segment is only removed. True if a table was retired.

    Only a regular file of this user is touched (``O_NOFOLLOW``; the owner is checked)."""
    retired = False
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or not stat.S_ISREG(info.st_mode):
            return False
        if path.endswith(".ver") and info.st_size >= _HEADER_WORDS * 8:
            with mmap.mmap(fd, _HEADER_WORDS * 8) as mm:
                words = memoryview(mm).cast("Q")
                if words[0] == _MAGIC:
                    words[_HEARTBEAT] = 0  # as VersionTable.retire: readers stop trusting it at once
                    retired = True
                words.release()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(fd)
    return retired


def remove_orphans(directory: Path | None = None) -> int:
    """Retire and remove mtcache segments (``mtcache-<ns>-<pid>-<hex>.ver`` /
    ``.mirror``) of this user whose creating process is gone (a coordinator killed
    with SIGKILL cannot clean up); return how many. A live pid, or a pid reused by
    another process, keeps its files."""
    removed = 0
    uid = os.getuid()
    for path in (directory or shm_dir()).glob("mtcache-*"):
        if path.suffix not in (".ver", ".mirror"):
            continue
        parts = path.stem.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        try:
            if path.stat().st_uid != uid:
                continue
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            retire_segment(str(path))
            removed += 1
        except (PermissionError, FileNotFoundError):
            continue
    return removed


def slot_of(key: str, slots: int) -> int:
    """The version slot of ``key`` in a table of ``slots`` counters."""
    return zlib.crc32(key.encode("utf-8")) % slots


class VersionTable:
    """A table of 64-bit version counters in shared memory.

    Create it in the coordinator with :meth:`create`, attach in workers with
    :meth:`attach` by the path the coordinator handed over.
    """

    def __init__(self, path: str, mm: mmap.mmap, slots: int, *, owner: bool) -> None:
        self.path = path
        self.slots = slots
        self.owner = owner
        self._mm = mm
        self._words = memoryview(mm).cast("Q")
        #: the counters themselves, for readers on a hot path (``counters[slot]``)
        self.counters = self._words[_HEADER_WORDS:]
        #: the header words, for readers on a hot path (``header[3]`` is the heartbeat)
        self.header = self._words

    @classmethod
    def create(
        cls, slots: int = DEFAULT_SLOTS, *, prefix: str = "mtcache", directory: Path | None = None
    ) -> VersionTable:
        """Create a zeroed table of ``slots`` counters in a new segment (mode 0600).

        :raises ValueError: ``slots`` is not a positive integer.
        """
        if not isinstance(slots, int) or isinstance(slots, bool) or slots <= 0:
            raise ValueError(f"slots must be a positive integer, got {slots!r}")
        folder = directory or shm_dir()
        path = str(folder / f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}.ver")
        size = (slots + _HEADER_WORDS) * 8
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        table = cls(path, mm, slots, owner=True)
        table._words[1] = slots
        table._words[2] = int.from_bytes(secrets.token_bytes(7), "little")
        table.beat()
        table._words[0] = _MAGIC
        return table

    @classmethod
    def attach(cls, path: str) -> VersionTable:
        """Map an existing table read-only.

        :raises OSError: the segment does not exist or cannot be mapped.
        :raises ValueError: the segment is not a version table of this layout.
        """
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < _HEADER_WORDS * 8:
                raise ValueError(f"{path} is too small to be an mtcache version table")
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        words = memoryview(mm).cast("Q")
        magic, slots = words[0], words[1]
        words.release()
        if magic != _MAGIC or (slots + _HEADER_WORDS) * 8 != size:
            mm.close()
            raise ValueError(f"{path} is not an mtcache version table of this layout")
        return cls(path, mm, slots, owner=False)

    @property
    def generation(self) -> int:
        """A random number fixed at creation: tells two tables at one path apart."""
        return self._words[2]

    def beat(self) -> None:
        """The coordinator is alive (it calls this every sweep): store the time, in
        ``CLOCK_MONOTONIC`` milliseconds, the same clock in every process of the host."""
        self._words[_HEARTBEAT] = int(time.monotonic() * 1000)

    def retire(self) -> None:
        """The coordinator stops: from now on no reader trusts this table."""
        self._words[_HEARTBEAT] = 0

    def silent_ms(self, now: float | None = None) -> float | None:
        """Milliseconds since the last heartbeat, or None for a retired table."""
        beat = self._words[_HEARTBEAT]
        if beat == 0:
            return None
        return (time.monotonic() if now is None else now) * 1000 - beat

    def alive(self, now: float | None = None) -> bool:
        """True while the heartbeat is fresh (``now`` in ``time.monotonic()`` seconds)."""
        now = time.monotonic() if now is None else now
        return now * 1000 < self._words[_HEARTBEAT] + LIVENESS_MS

    def slot(self, key: str) -> int:
        """The slot of ``key``."""
        return zlib.crc32(key.encode("utf-8")) % self.slots

    def get(self, slot: int) -> int:
        """The counter of ``slot``."""
        return self.counters[slot]

    def bump(self, slot: int) -> int:
        """Increment the counter of ``slot`` (coordinator only); return its new value."""
        value = (self.counters[slot] + 1) & 0xFFFF_FFFF_FFFF_FFFF
        self.counters[slot] = value
        return value

    def bump_key(self, key: str) -> int:
        """Increment the counter of ``key``'s slot; return its new value."""
        return self.bump(self.slot(key))

    def bump_all(self) -> None:
        """Increment every counter (after a clear, or a gap in the invalidation stream)."""
        counters = self.counters
        for i in range(self.slots):
            counters[i] = (counters[i] + 1) & 0xFFFF_FFFF_FFFF_FFFF

    def close(self) -> None:
        """Unmap; the owner also removes the segment. Safe to call twice."""
        if self._mm.closed:
            return
        self.counters.release()
        self._words.release()
        self._mm.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
