"""The shared-memory L1 mirror: the coordinator's L1 values, readable by every worker.

A Unix-socket round trip to the coordinator costs ~50 µs; reading ~200 bytes out of
shared memory under a seqlock and decoding them costs ~1.4 µs. So the coordinator
(the single writer: one thread, asyncio) copies each L1 entry into a fixed-size
shared region with :class:`MirrorWriter`, and workers probe it with
:class:`MirrorReader` before they ask over the socket. The coordinator's Python
store stays the source of truth; an entry missing from the mirror is only a slower
read, so the writer drops entries whenever that is simpler.

Segment
    One file in :func:`mtcache.shm.shm_dir` (``/dev/shm``), created with mode 0600
    and mapped with ``mmap``, for the reasons given in :mod:`mtcache.shm` (no
    ``multiprocessing.shared_memory``: its resource tracker unlinks the segment when
    an attached worker exits). The file has its full size from the start but is
    sparse: only the header and buckets are reserved at creation, the arena as it
    fills (see Growth). Layout, all integers unsigned 64-bit words::

        header   16 words: magic, layout, generation, sets, ways, bucket offset,
                 arena offset, arena size, total size, arena reserved, reserved
        buckets  sets x 4 ways x 8 words (64 bytes, one cache line each):
                 seq, tag, expiry, arena offset, key length, value length, spare x2
        arena    page-aligned; per entry the key bytes, then the value bytes

    ``tag`` is ``zlib.crc32(key as UTF-8) | 1 << 32``: the same in every process
    (never Python's randomized ``hash()``) and never 0, so 0 marks an empty bucket
    even for a key whose crc32 is 0. The full key is kept in the arena and compared
    by the reader, so keys of any length work and crc32 collisions are harmless.

Placement
    Set-associative: a key lives in one of the 4 buckets of set ``crc32 % sets``.
    The writer reuses the key's bucket, else an empty way, else evicts the way
    with the earliest expiry (that key is simply no longer mirrored).

Seqlock
    The writer makes a bucket's ``seq`` odd, writes its fields, then makes it even
    (+2 per write). A reader reads ``seq``, the fields, copies the bytes and reads
    ``seq`` again: an odd or changed value means the copy may be torn, so it
    retries (3 attempts, then a miss). Every word is read and written through
    ``memoryview.cast("Q")``: aligned 8-byte loads and stores, never half-seen.
    ``struct.pack_into`` must never touch a word a reader may read: it zeroes its
    target before writing, and readers were measured seeing torn values. This
    relies on x86-64's total store order: the writer's stores become visible in
    program order and a reader's loads are not reordered with each other. On a
    weakly ordered CPU (ARM, POWER) the seqlock would need memory barriers, which
    Python cannot express; this module is only correct on x86-64 and other TSO
    machines.

Expiry
    Deadlines are ``time.monotonic_ns()`` values. On Linux ``time.monotonic`` is
    ``CLOCK_MONOTONIC``, one clock for the whole system, so a deadline written by
    the coordinator means the same instant in every worker (true on Linux and
    macOS; Python does not promise it everywhere). Both classes take a ``clock``
    so tests can drive time.

Arena: a ring
    Allocation appends at the head; when an entry does not fit before the end the
    head wraps to 0 (the unused tail is skipped). Before bytes are overwritten,
    every bucket still pointing into them is invalidated (``seq`` bumped, fields
    cleared), so a reader that was copying them fails its second ``seq`` check. A
    deque of ``(offset, bucket, seq after the write)`` in allocation order finds
    those buckets in O(1) amortised; a record whose bucket has been written since
    (its ``seq`` moved on) is dead and skipped. The ring is simple, O(1) per put
    and free of fragmentation, and FIFO reclaim suits cache churn, where old
    entries are the ones expiring. Its cost: an entry written long ago is pushed
    out of the mirror by later writes of other keys, however hot it is; readers
    then miss and the socket path serves it until the coordinator mirrors it
    again. An entry (key + value) larger than 1/8 of the arena is not mirrored.

Changes from the design note, and why
    * The entry's bytes are written before its bucket goes odd: they land in space
      no live bucket points into, so the old entry stays readable meanwhile and
      the odd window is five stores, not a copy (fewer retries and misses).
    * Allocations are rounded up to 8 bytes and never empty, and a record carries
      no length: one lap's allocations run contiguously from 0, so an older entry
      starting before the head was reclaimed already and one starting at or past
      the new end is untouched; the entries to reclaim are a prefix of the deque.
      On a wrap, the previous lap's entries left in the skipped tail go first.
    * Dead ring records stay in the deque until the head reaches them; when the
      deque grows past twice the live entries + 4096 it is compacted, which bounds
      the writer's memory under tiny, frequent rewrites.
    * The writer keeps its own copy of every ``seq``, tag and key and never reads
      the region back, so nothing written there by anyone else misleads it.
    * A set holds at most one entry per tag: a key whose crc32 equals that of
      another mirrored key in its set replaces it. So the reader's first tag match
      is the only candidate and it never scans on.
    * The arena starts on a page boundary and the reader maps it separately, so an
      arena offset is used as it is and the bounds check is one comparison (offset
      + key length + value length <= arena size). Key and value are copied by two
      slices, the key one compared at once: the value is copied once, and this is
      cheaper than ``mm.find``.
    * The reader's ``get`` is a closure (cells instead of attribute look-ups) with
      a bounded cache of key -> (UTF-8 bytes, tag, first bucket): encoding and
      crc32 cost more than the rest of a hit.
    * ``put`` with a deadline already past is not mirrored (and drops the key's
      old entry), like an oversized value: once ``put`` or ``delete`` returns, no
      older value of the key is readable. ``stats`` also counts ``evicted_by_set``.

Growth
    The arena's memory is reserved (``posix_fallocate``) in steps, as the ring's head
    first reaches past what is reserved: a step is 1 MiB or an eighth of what is
    reserved already, whichever is more. When the head reaches the end of the
    reserved part, the ring grows if live entries hold more than half of it, and
    goes round again otherwise; so the arena's memory is at most about twice what
    the mirror holds (plus a step), never more than the arena's size, and a mirror
    that only fills (no rewrites) reserves what it holds. The reserved size is a
    header word that only grows; the writer raises it only once the pages are
    reserved, and readers never read past it, so no process ever touches a page
    that is not reserved: a write into one could raise SIGBUS on a full
    ``/dev/shm``, and a read would allocate it. A reservation that fails
    (``/dev/shm`` full) stops the growth for good: the ring turns within what it
    has, and an entry larger than that is not mirrored. Nothing is ever given
    back while the mirror lives (a reader may be copying any reserved byte).

What a reader survives
    Any content of the region: a torn bucket is retried, a nonsensical one is a
    miss, and ``get`` neither raises nor reads outside the arena. It returns bytes
    only when the bucket stayed unchanged across the copy and the stored key is
    the key asked for; with this module as the only writer, that is a value put
    for that key, never older than a ``put`` or ``delete`` of it that returned
    before the read began. What a reader cannot survive is the file being
    truncated under its mapping (SIGBUS); mode 0600 leaves that to the owner. When
    the writer closes it first invalidates every entry, so attached readers miss
    from then on. If the coordinator dies without closing, entries stay readable
    until they expire: a worker should detach when it loses its coordinator or
    finds a new mirror (another ``generation``).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import secrets
import time
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from mtcache.shm import shm_dir

__all__ = ["DEFAULT_SETS", "DEFAULT_SIZE", "WAYS", "MirrorReader", "MirrorWriter"]

DEFAULT_SIZE = 64 * 2**20
DEFAULT_SETS = 16_384
WAYS = 4
MAX_ENTRY_FRACTION = 8  # an entry over arena_size // 8 is not mirrored
MIN_ARENA = 4096
GROW_STEP = 1 << 20  # the arena is reserved in steps of at least this many bytes (or an eighth of what it has)

_MAGIC = int.from_bytes(b"MTMIRROR", "little")
_LAYOUT = 2
_HEADER_WORDS = 16
_BUCKET_WORDS = 8
# header word indices
(_H_MAGIC, _H_LAYOUT, _H_GENERATION, _H_SETS, _H_WAYS, _H_BUCKETS, _H_ARENA, _H_ARENA_SIZE, _H_TOTAL,
 _H_COMMITTED) = range(10)
# word offsets inside a bucket
_SEQ, _TAG, _EXP, _OFF, _KLEN, _VLEN = range(6)
_OCCUPIED = 1 << 32
_NEVER = 2**64 - 1
_READ_ATTEMPTS = 3
_KEY_CACHE = 4096  # keys whose bytes, tag and set a reader remembers

Clock = Callable[[], int]


def _layout(size: int, sets: int) -> tuple[int, int]:
    """Arena offset (page-aligned, so the reader can map it alone) and arena size."""
    buckets_end = (_HEADER_WORDS + sets * WAYS * _BUCKET_WORDS) * 8
    page = mmap.ALLOCATIONGRANULARITY
    arena_offset = -(-buckets_end // page) * page
    return arena_offset, size - arena_offset


def _reserve(fd: int, offset: int, length: int) -> None:
    """Allocate the file's pages in ``[offset, offset + length)`` now, so that writing them
    later never faults (tmpfs raises SIGBUS on a write into a hole it has no room for).

    :raises OSError: no room (``/dev/shm`` full).
    """
    if length > 0 and hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, offset, length)


def _key_bytes(key: object) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    return key.encode("utf-8")


class MirrorWriter:
    """The coordinator's side: owns the segment and is its only writer.

    Not thread-safe: call it from one thread (the coordinator's event loop).
    """

    def __init__(self, path: str, fd: int, mm: mmap.mmap, sets: int, generation: int, clock: Clock) -> None:
        self.path = path
        self.generation = generation
        self.sets = sets
        self._fd = fd  # kept open to reserve the arena as it grows
        self._mm = mm
        self._words = memoryview(mm).cast("Q")
        self._clock = clock
        self._arena_offset, self.arena_size = _layout(len(mm), sets)
        self.max_entry = self.arena_size // MAX_ENTRY_FRACTION
        nbuckets = sets * WAYS
        # The writer's own copy of what it wrote; it never reads the shared region back,
        # so nothing another process scribbles there can mislead or crash it.
        self._seqs = [0] * nbuckets
        self._tags = [0] * nbuckets
        self._keys: list[str | None] = [None] * nbuckets
        self._lengths = [0] * nbuckets  # arena bytes held by each bucket's entry
        self._expiries = [0] * nbuckets
        self._index: dict[str, int] = {}
        self._ring: deque[tuple[int, int, int]] = deque()  # (arena offset, bucket, seq after the write)
        self._head = 0
        self._used = 0
        # the arena's reserved prefix: the ring runs inside it, and readers never look past it
        self._committed = 0
        self._can_grow = True
        self._puts = self._not_mirrored = self._evicted_by_set = self._evicted_by_ring = 0
        self._closed = False

    @classmethod
    def create(
        cls,
        size: int = DEFAULT_SIZE,
        *,
        sets: int = DEFAULT_SETS,
        prefix: str = "mtcache",
        directory: Path | str | None = None,
        clock: Clock = time.monotonic_ns,
    ) -> MirrorWriter:
        """Create an empty mirror of at most ``size`` bytes with ``sets`` x 4 buckets in a
        new file (mode 0600) in ``directory`` (default :func:`mtcache.shm.shm_dir`).
        ``clock`` returns ``time.monotonic_ns()``-compatible nanoseconds.

        Only the header and the buckets are reserved now; the arena is reserved as it
        fills (see "Growth" in the module docstring), so the file's memory is what the
        mirror holds, up to ``size``.

        :raises TypeError: ``size`` or ``sets`` is not an int.
        :raises ValueError: ``sets`` is not positive, or ``size`` leaves less than
            4096 bytes of arena after the header and the buckets.
        :raises OSError: the file cannot be created, its header and buckets reserved
            (``/dev/shm`` full) or mapped.
        """
        for name, value in (("size", size), ("sets", sets)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if sets <= 0:
            raise ValueError(f"sets must be positive, got {sets}")
        arena_offset, arena_size = _layout(size, sets)
        if arena_size < MIN_ARENA:
            raise ValueError(f"size {size} is too small for {sets} sets: need at least {arena_offset + MIN_ARENA}")
        folder = Path(directory) if directory is not None else shm_dir()
        path = str(folder / f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}.mirror")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)  # a sparse file: no memory until reserved or touched
            # Reserve what is written at once: a full /dev/shm (Docker's default is 64 MiB) is an
            # OSError here rather than a SIGBUS on some later write into a hole.
            _reserve(fd, 0, arena_offset)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        generation = secrets.randbits(64)
        writer = cls(path, fd, mm, sets, generation, clock)
        words = writer._words
        words[_H_LAYOUT] = _LAYOUT
        words[_H_GENERATION] = generation
        words[_H_SETS] = sets
        words[_H_WAYS] = WAYS
        words[_H_BUCKETS] = _HEADER_WORDS * 8
        words[_H_ARENA] = arena_offset
        words[_H_ARENA_SIZE] = arena_size
        words[_H_TOTAL] = size
        words[_H_MAGIC] = _MAGIC  # last: a half-built header is never a valid mirror
        return writer

    def put(self, key: str, value: bytes, expires_at: float) -> bool:
        """Mirror ``value`` under ``key`` until ``expires_at`` (``time.monotonic()``
        seconds, ``math.inf`` for never). Return False when it is not mirrored: key +
        value longer than ``max_entry`` bytes, or ``expires_at`` already past; the
        key's previous entry is dropped either way, so no older value stays readable.

        :raises TypeError: ``key`` is not a str, ``value`` not bytes or bytearray,
            ``expires_at`` not a number.
        :raises ValueError: ``expires_at`` is NaN, ``key`` cannot be encoded as UTF-8,
            or the writer is closed.
        """
        self._check_open()
        kb = _key_bytes(key)
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        expiry = self._expiry_ns(expires_at)
        self._puts += 1
        if len(kb) + len(value) > self.max_entry or expiry <= self._clock():
            self._not_mirrored += 1
            self._drop(key)
            return False
        length = (len(kb) + len(value) + 7) & ~7 or 8
        if length > self._committed and not self._grow(length):
            self._not_mirrored += 1  # no room could be reserved for it
            self._drop(key)
            return False
        crc = zlib.crc32(kb)
        bucket = self._index.get(key)
        if bucket is None:
            bucket = self._free_way(crc)
        self._write(bucket, key, kb, value, crc | _OCCUPIED, expiry, length)
        return True

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is mirrored now (expired or not)."""
        return key in self._index

    def delete(self, key: str) -> bool:
        """Stop mirroring ``key``: once this returns no reader finds it. Return
        whether it was mirrored.

        :raises TypeError: ``key`` is not a str.
        :raises ValueError: the writer is closed.
        """
        self._check_open()
        _key_bytes(key)
        return self._drop(key)

    def clear(self) -> None:
        """Drop every entry: readers miss from the moment this returns.

        :raises ValueError: the writer is closed.
        """
        self._check_open()
        for bucket in list(self._index.values()):
            self._invalidate(bucket)
        self._ring.clear()
        self._head = 0

    def stats(self) -> dict[str, int]:
        """Counters: ``entries`` mirrored now, ``puts`` (every call), ``not_mirrored``
        (oversized, already expired, or no room could be reserved), ``evicted_by_set``
        (a key pushed out of its full set), ``evicted_by_ring`` (its arena bytes reused),
        ``arena_used`` (bytes held by live entries, 8-byte rounded), ``arena_committed``
        (bytes of arena reserved so far: its memory) and ``arena_size`` (the most it may
        reserve)."""
        return {
            "entries": len(self._index),
            "puts": self._puts,
            "not_mirrored": self._not_mirrored,
            "evicted_by_set": self._evicted_by_set,
            "evicted_by_ring": self._evicted_by_ring,
            "arena_used": self._used,
            "arena_committed": self._committed,
            "arena_size": self.arena_size,
        }

    def close(self) -> None:
        """Invalidate every entry (so attached readers miss), unmap and remove the
        file. Safe to call twice."""
        if self._closed:
            return
        self.clear()
        self._closed = True
        self._words.release()
        self._mm.close()
        os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> MirrorWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"mirror writer {self.path} is closed")

    @staticmethod
    def _expiry_ns(expires_at: float) -> int:
        if not isinstance(expires_at, (int, float)) or isinstance(expires_at, bool):
            raise TypeError(f"expires_at must be a number of seconds, got {type(expires_at).__name__}")
        if math.isnan(expires_at):
            raise ValueError("expires_at must not be NaN")
        if expires_at <= 0:
            return 0
        if expires_at >= _NEVER / 1e9:  # math.inf too
            return _NEVER
        return int(expires_at * 1_000_000_000)

    def _free_way(self, crc: int) -> int:
        """The bucket a new key of ``crc`` goes to: one holding another key with the
        same tag (a set keeps one entry per tag), else an empty one, else the one
        whose entry expires first. An entry found there is forgotten here and stays
        readable until the caller rewrites the bucket."""
        first = (crc % self.sets) * WAYS
        keys, expiries, tags, tag = self._keys, self._expiries, self._tags, crc | _OCCUPIED
        empty = None
        victim = first
        for bucket in range(first, first + WAYS):
            if keys[bucket] is None:
                if empty is None:
                    empty = bucket
            elif tags[bucket] == tag:
                victim = bucket
                break
            elif keys[victim] is None or expiries[bucket] < expiries[victim]:
                victim = bucket
        else:
            if empty is not None:
                return empty
        self._evicted_by_set += 1
        self._forget(victim)
        return victim

    def _forget(self, bucket: int) -> None:
        """Remove ``bucket``'s entry from the writer's own bookkeeping."""
        key = self._keys[bucket]
        if key is not None:
            del self._index[key]
            self._keys[bucket] = None
            self._used -= self._lengths[bucket]
            self._lengths[bucket] = 0
            self._expiries[bucket] = 0

    def _drop(self, key: str) -> bool:
        bucket = self._index.get(key)
        if bucket is None:
            return False
        self._invalidate(bucket)
        return True

    def _invalidate(self, bucket: int) -> None:
        """Empty ``bucket`` in the segment; a reader mid-copy sees ``seq`` move."""
        words = self._words
        base = _HEADER_WORDS + bucket * _BUCKET_WORDS
        seq = self._seqs[bucket]
        words[base] = seq + 1
        for field in (_TAG, _EXP, _OFF, _KLEN, _VLEN):
            words[base + field] = 0
        words[base] = self._seqs[bucket] = seq + 2
        self._tags[bucket] = 0
        self._forget(bucket)

    def _write(
        self, bucket: int, key: str, kb: bytes, value: bytes | bytearray, tag: int, expiry: int, length: int
    ) -> None:
        klen, n = len(kb), len(kb) + len(value)
        # The bytes go where no live bucket points, so the old entry stays readable until
        # the fields flip between odd and even seq. (The allocation may invalidate this
        # very bucket, if its old bytes lie where the new ones go.)
        offset = self._allocate(length, bucket)
        start = self._arena_offset + offset
        self._mm[start : start + klen] = kb
        self._mm[start + klen : start + n] = value
        words = self._words
        base = _HEADER_WORDS + bucket * _BUCKET_WORDS
        seq = self._seqs[bucket]
        words[base] = seq + 1
        words[base + _TAG] = tag
        words[base + _EXP] = expiry
        words[base + _OFF] = offset
        words[base + _KLEN] = klen
        words[base + _VLEN] = n - klen
        words[base] = self._seqs[bucket] = seq + 2
        self._forget(bucket)  # the entry this one replaces, if the allocation left it
        self._tags[bucket] = tag
        self._ring.append((offset, bucket, seq + 2))
        self._keys[bucket] = key
        self._index[key] = bucket
        self._lengths[bucket] = length
        self._expiries[bucket] = expiry
        self._used += length
        if len(self._ring) > 2 * len(self._index) + 4096:
            seqs = self._seqs
            self._ring = deque(rec for rec in self._ring if seqs[rec[1]] == rec[2])

    def _allocate(self, length: int, writing: int) -> int:
        """The arena offset of ``length`` bytes for bucket ``writing``, after
        invalidating every bucket whose entry lies there.

        The deque's records tile the arena in allocation order: first what is left
        of the previous lap (offsets >= head, ascending), then this lap (offsets <
        head). So the records to reclaim are always a prefix of the deque.
        """
        ring = self._ring
        head = self._head
        if head + length > self._committed and not (self._used + length > self._committed // 2
                                                    and self._grow(head + length)):
            # the reserved arena is at least half dead bytes, or cannot grow: go round again
            while ring and ring[0][0] >= head:
                self._reclaim(ring.popleft(), writing)
            head = 0
        end = head + length
        while ring and head <= ring[0][0] < end:
            self._reclaim(ring.popleft(), writing)
        self._head = end
        return head

    def _grow(self, needed: int) -> bool:
        """Reserve more arena so that at least ``needed`` bytes of it are reserved: a step
        of ``GROW_STEP`` or an eighth of what is reserved, whichever is more, within
        ``arena_size``. Readers learn the new bound only once the pages are reserved.
        False if ``needed`` is past ``arena_size`` or the pages cannot be reserved (then
        the arena stays as it is from now on)."""
        if needed > self.arena_size or not self._can_grow:
            return False
        page = mmap.PAGESIZE
        target = max(needed, self._committed + max(GROW_STEP, self._committed // 8))
        target = min(self.arena_size, -(-target // page) * page)
        try:
            _reserve(self._fd, self._arena_offset + self._committed, target - self._committed)
        except OSError:
            self._can_grow = False  # /dev/shm is full: mirror within what is reserved
            return False
        self._committed = target
        self._words[_H_COMMITTED] = target
        return True

    def _reclaim(self, record: tuple[int, int, int], writing: int) -> None:
        _, bucket, seq = record
        if self._seqs[bucket] == seq:  # the bucket still holds these bytes
            if bucket != writing and self._keys[bucket] is not None:  # not being replaced anyway
                self._evicted_by_ring += 1
            self._invalidate(bucket)


class MirrorReader:
    """A worker's read-only view of a mirror; attach with :meth:`attach`.

    ``get(key) -> bytes | None`` is the mirrored value of ``key``, or None when it
    is not mirrored, has expired, or was being rewritten (a bucket is read at most
    3 times while it keeps changing, then it is a miss); ``entry(key)`` is the value
    with its expiry. They never raise for any content of the region; they raise
    TypeError for a key that is not a str, ValueError for one that cannot be encoded
    as UTF-8 and after :meth:`close`. ``entry`` is an attribute holding a closure,
    for speed. Threads may share a reader (the counters ``hits``,
    ``misses`` and ``torn_retries`` may then undercount).
    """

    __slots__ = ("_counters", "_maps", "_views", "entry", "generation", "path")

    #: ``(value, expiry)`` of ``key`` (expiry in ``clock`` nanoseconds), or None
    entry: Callable[[str], tuple[bytes, int] | None]

    def __init__(self, path: str, head: mmap.mmap, arena: mmap.mmap, clock: Clock) -> None:
        words = memoryview(head).cast("Q")
        self.path = path
        self.generation: int = words[_H_GENERATION]
        sets = words[_H_SETS]
        # one strided view per bucket field, indexed by bucket number
        seqs, tags, expiries, offsets, klens, vlens = (
            words[_HEADER_WORDS + field :: _BUCKET_WORDS] for field in (_SEQ, _TAG, _EXP, _OFF, _KLEN, _VLEN)
        )
        self._maps = (head, arena)
        self._views = (words, seqs, tags, expiries, offsets, klens, vlens)
        self.entry, self._counters = _make_get(words, seqs, tags, expiries, offsets, klens, vlens, arena, sets,
                                               clock)

    def get(self, key: str) -> bytes | None:
        """The mirrored value of ``key``, or None (see the class docstring)."""
        found = self.entry(key)
        return None if found is None else found[0]

    @classmethod
    def attach(cls, path: str, *, clock: Clock = time.monotonic_ns) -> MirrorReader:
        """Map the mirror at ``path`` read-only. ``clock`` returns
        ``time.monotonic_ns()``-compatible nanoseconds.

        :raises OSError: ``path`` does not exist or cannot be mapped.
        :raises ValueError: ``path`` is not a mirror of this layout.
        """
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            header = _read_header(fd, size)
            sets = header[_H_SETS]
            arena_offset, arena_size = _layout(size, sets)
            valid = (
                header[_H_MAGIC] == _MAGIC
                and header[_H_LAYOUT] == _LAYOUT
                and header[_H_WAYS] == WAYS
                and header[_H_BUCKETS] == _HEADER_WORDS * 8
                and sets > 0
                and header[_H_TOTAL] == size
                and header[_H_ARENA] == arena_offset
                and header[_H_ARENA_SIZE] == arena_size >= MIN_ARENA
            )
            if not valid:
                raise ValueError(f"{path} is not an mtcache L1 mirror of layout {_LAYOUT}")
            head = mmap.mmap(fd, arena_offset, prot=mmap.PROT_READ)
            try:
                arena = mmap.mmap(fd, arena_size, prot=mmap.PROT_READ, offset=arena_offset)
            except BaseException:
                head.close()
                raise
        finally:
            os.close(fd)
        return cls(path, head, arena, clock)

    @property
    def hits(self) -> int:
        """Reads that returned a value."""
        return self._counters()[0]

    @property
    def misses(self) -> int:
        """Reads that returned None."""
        return self._counters()[1]

    @property
    def torn_retries(self) -> int:
        """Reads of a bucket that found it being written and were retried (or given up)."""
        return self._counters()[2]

    def close(self) -> None:
        """Unmap; ``get`` raises ValueError from now on. Safe to call twice."""
        if self._maps[0].closed:
            return
        self.entry = _closed_get(self.path)
        for view in self._views:
            view.release()
        for mm in self._maps:
            mm.close()

    def __enter__(self) -> MirrorReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _read_header(fd: int, size: int) -> list[int]:
    """The header words of the file ``fd``, read without mapping it.

    :raises ValueError: the file is too small to hold a header.
    """
    if size < _HEADER_WORDS * 8:
        raise ValueError(f"a file of {size} bytes is too small to be an mtcache L1 mirror")
    data = os.pread(fd, _HEADER_WORDS * 8, 0)
    if len(data) != _HEADER_WORDS * 8:  # truncated since fstat
        raise ValueError("the file is too small to be an mtcache L1 mirror")
    return memoryview(data).cast("Q").tolist()


def _closed_get(path: str) -> Callable[[str], Any]:
    def get(key: str) -> Any:
        raise ValueError(f"mirror reader {path} is closed")

    return get


def _make_get(
    header: memoryview,
    seqs: memoryview,
    tags: memoryview,
    expiries: memoryview,
    offsets: memoryview,
    klens: memoryview,
    vlens: memoryview,
    arena: mmap.mmap,
    sets: int,
    clock: Clock,
) -> tuple[Callable[[str], tuple[bytes, int] | None], Callable[[], tuple[int, int, int]]]:
    """The reader's ``entry`` (value and expiry) and a function returning its (hits, misses, torn)
    counters.

    Each field is a strided view indexed by bucket number, so a read is one
    subscript; everything the hit path needs lives in closure cells. A read never
    looks past the arena's reserved prefix (``header[_H_COMMITTED]``, which only
    grows): an unreserved page of tmpfs would be allocated by the read itself, and
    raise SIGBUS when ``/dev/shm`` is full.
    """
    hits = misses = torn = 0
    arena_size = len(arena)
    located: dict[str, tuple[bytes, int, int]] = {}

    def locate(key: str) -> tuple[bytes, int, int]:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        kb = key.encode()
        crc = zlib.crc32(kb)
        if len(located) >= _KEY_CACHE:
            located.clear()
        found = located[key] = (kb, crc | _OCCUPIED, crc % sets * WAYS)
        return found

    def read(bucket: int, kb: bytes) -> tuple[bytes, int] | None:
        """The slow path: up to 2 more attempts at a bucket whose first read was
        torn. ``entry`` inlines one attempt of this loop."""
        nonlocal hits, misses, torn
        for _ in range(_READ_ATTEMPTS - 1):
            seq = seqs[bucket]
            start = offsets[bucket]
            vstart = start + klens[bucket]
            end = vstart + vlens[bucket]
            if end <= arena_size and end <= header[_H_COMMITTED]:
                same_key = arena[start:vstart] == kb
                value = arena[vstart:end]
                expiry = expiries[bucket]
                if seqs[bucket] == seq and not seq & 1:
                    if same_key and expiry > clock():
                        hits += 1
                        return value, expiry
                    break
            elif seqs[bucket] == seq and not seq & 1:
                break  # a consistent entry pointing outside the arena: not ours to read
            torn += 1
        misses += 1
        return None

    def entry(key: str) -> tuple[bytes, int] | None:
        nonlocal hits, misses, torn
        found = located.get(key)
        if found is None:
            found = locate(key)
        kb, tag, bucket = found
        if tags[bucket] != tag:
            if tags[bucket + 1] == tag:
                bucket += 1
            elif tags[bucket + 2] == tag:
                bucket += 2
            elif tags[bucket + 3] == tag:
                bucket += 3
            else:
                misses += 1
                return None
        seq = seqs[bucket]
        start = offsets[bucket]
        vstart = start + klens[bucket]
        end = vstart + vlens[bucket]
        # the bounds check (start and lengths are unsigned): inside the mapping and its reserved prefix
        if end <= arena_size and end <= header[_H_COMMITTED]:
            same_key = arena[start:vstart] == kb
            value = arena[vstart:end]
            expiry = expiries[bucket]
            if seqs[bucket] == seq and not seq & 1:
                if same_key and expiry > clock():
                    hits += 1
                    return value, expiry
                misses += 1
                return None
        elif seqs[bucket] == seq and not seq & 1:
            misses += 1
            return None
        torn += 1
        return read(bucket, kb)

    def counters() -> tuple[int, int, int]:
        return hits, misses, torn

    return entry, counters
