"""L1: the coordinator's store of encoded values, with per-entry TTL and two bounds.

The store maps ``str`` keys to ``bytes`` values (the coordinator never decodes
user values). It is bounded twice, by the number of entries (``capacity``) and by
the bytes they account for (``max_bytes``), and every entry has a time to live.

**Byte accounting.** An entry accounts for ``len(key.encode("utf-8")) +
len(value) + ENTRY_OVERHEAD`` bytes. :data:`ENTRY_OVERHEAD` (64 bytes) is a
fixed stand-in for the bookkeeping each entry costs (its dictionary slot, its
record, its heap item); a constant keeps the accounting deterministic and the
same on every platform, and stops a flood of empty values from looking free.

**Eviction policy.** When a :meth:`L1Store.set` leaves either bound exceeded, the
store first drops entries that have already expired (earliest expiry first,
reason ``"expired"``), and then evicts live entries in least-recently-used order
(reason ``"evicted"``) until both bounds hold. "Used" means stored by ``set()``
or returned by ``get()``; ``peek()``, ``remaining_ttl()`` and ``in`` do not
count as a use. The entry being set is never evicted by its own ``set()``.

**Expiry.** An entry is expired once ``clock() >= expires_at``. It is never
returned after that, but it stays in memory (and in ``len()``, ``size`` and
``bytes``) until ``get()`` finds it (lazy expiry), ``sweep()`` reaps it, or
``set()`` needs its room. ``sweep()`` is cheap: it pops from a min-heap of
expiry times; heap items made stale by an overwrite, delete or eviction are
skipped when popped (lazy invalidation), and the heap is rebuilt from the live
entries when it grows past twice their number.

**Removal callback.** ``on_remove(key, reason)`` runs exactly once for every
entry the store removes on its own (eviction; expiry found by ``get()``,
``sweep()`` or ``set()``), never for ``delete()``, ``clear()``, an overwrite by
``set()`` or an oversized ``set()`` (the caller knows of those). It runs after
the operation has finished changing the store, so the store is consistent
during the call and the callback may use it. If a callback raises, the store
still calls it for every other removal of that operation, logs any further
exception, and then re-raises the first one to the caller of the method; the
operation itself (a stored value, a removal) has already taken effect.

The store is not thread-safe: the coordinator uses it from its event loop.
Starts no threads; time only moves through the injected ``clock``.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

from mtcache.strategies import validate_ttl

__all__ = ["ENTRY_OVERHEAD", "L1Store", "RemoveReason", "StoreStats"]

RemoveReason = Literal["evicted", "expired"]

ENTRY_OVERHEAD = 64
"""Bytes accounted for each entry on top of its UTF-8 key and its value."""

# The heap is rebuilt once it holds more than 2x the live entries plus this slack;
# the slack keeps a nearly empty store from rebuilding on every set.
_HEAP_SLACK = 64

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of the store's counters and occupancy.

    ``hits``/``misses`` count ``get()`` calls; ``evictions`` and ``expirations``
    count entries the store removed on its own; ``size`` and ``bytes`` are what it
    holds now (expired entries not yet removed included); ``capacity`` and
    ``max_bytes`` are its bounds.
    """

    hits: int
    misses: int
    evictions: int
    expirations: int
    size: int
    bytes: int
    capacity: int
    max_bytes: int

    def as_dict(self) -> dict[str, int]:
        """The snapshot as a plain ``dict`` (field name → value)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Entry:
    __slots__ = ("expires_at", "fresh_until", "nbytes", "seq", "stamp", "value")

    def __init__(
        self, value: bytes, expires_at: float, nbytes: int, seq: int, stamp: int, fresh_until: float
    ) -> None:
        self.value = value
        self.expires_at = expires_at
        self.nbytes = nbytes
        self.seq = seq
        self.stamp = stamp
        self.fresh_until = fresh_until


def _positive_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}: {value!r}")
    if value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


class L1Store:
    """The L1 store: ``str`` keys, ``bytes`` values, TTL, LRU eviction under an
    entry bound and a byte bound (see the module docstring for the rules).

    ``get`` and ``set`` are O(1) apart from the entries they remove; ``sweep`` is
    O(log n) per entry it looks at.
    """

    def __init__(
        self,
        *,
        capacity: int = 2000,
        max_bytes: int = 64 * 1024 * 1024,
        default_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        on_remove: Callable[[str, RemoveReason], None] | None = None,
    ) -> None:
        """Create an empty store.

        :param capacity: the most entries held at once.
        :param max_bytes: the most bytes accounted at once; also the largest entry.
        :param default_ttl: seconds an entry lives when ``set()`` gets no ``ttl``.
        :param clock: seconds, never going backwards (``time.monotonic``).
        :param on_remove: called as ``on_remove(key, reason)`` for each entry the
            store removes on its own.
        :raises TypeError: a bound is not an ``int``, ``default_ttl`` not a number,
            or ``clock``/``on_remove`` not callable.
        :raises ValueError: a bound is not positive, or ``default_ttl`` is not a
            positive finite number.
        """
        self._capacity = _positive_int(capacity, "capacity")
        self._max_bytes = _positive_int(max_bytes, "max_bytes")
        self._default_ttl = validate_ttl(default_ttl, what="default_ttl")
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}: {clock!r}")
        if on_remove is not None and not callable(on_remove):
            raise TypeError(f"on_remove must be callable or None, not {type(on_remove).__name__}: {on_remove!r}")
        self._clock = clock
        self._on_remove = on_remove
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expirations = 0

    # reads

    def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or ``None`` if there is none, it has
        expired (then it is removed, with ``on_remove(key, "expired")``) or it is
        stale (kept, see :meth:`fresh_left`).

        Counts a hit or a miss and makes ``key`` the most recently used.
        """
        entry = self._data.get(key)
        if entry is None:
            self._misses += 1
            return None
        now = self._clock()
        if entry.expires_at <= now:
            self._misses += 1
            self._remove(key, entry)
            self._expirations += 1
            self._notify([(key, "expired")])
            return None
        if entry.fresh_until <= now:
            self._misses += 1
            return None
        self._hits += 1
        self._data.move_to_end(key)
        return entry.value

    def peek(self, key: str) -> bytes | None:
        """The value under ``key`` if it is there and not expired, else ``None``.

        Counts nothing, leaves the LRU order and the store as they are.
        """
        entry = self._data.get(key)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry.value

    def stamp_of(self, key: str) -> int | None:
        """The stamp ``key`` was stored with, if a live entry is there. Counts nothing."""
        entry = self._data.get(key)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry.stamp

    def fresh_left(self, key: str) -> float | None:
        """Seconds until ``key``'s value goes stale (negative once it is: then it is
        kept only as a fail-safe fallback until it expires), or ``None`` if it is
        absent or expired. Counts nothing."""
        entry = self._data.get(key)
        now = self._clock()
        if entry is None or entry.expires_at <= now:
            return None
        return entry.fresh_until - now

    def remaining_ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires, or ``None`` if it is absent or expired.

        Counts nothing and leaves the LRU order as it is.
        """
        entry = self._data.get(key)
        if entry is None:
            return None
        left = entry.expires_at - self._clock()
        return left if left > 0 else None

    def __contains__(self, key: object) -> bool:
        """Whether a live (not expired) entry is stored under ``key``. Counts nothing."""
        if not isinstance(key, str):
            return False
        entry = self._data.get(key)
        return entry is not None and entry.expires_at > self._clock()

    def __len__(self) -> int:
        """The number of entries held, expired ones not yet removed included."""
        return len(self._data)

    def keys(self) -> list[str]:
        """The keys of the live entries, least recently used first."""
        now = self._clock()
        return [key for key, entry in self._data.items() if entry.expires_at > now]

    def stats(self) -> StoreStats:
        """A snapshot of the counters and the occupancy."""
        return StoreStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            expirations=self._expirations,
            size=len(self._data),
            bytes=self._bytes,
            capacity=self._capacity,
            max_bytes=self._max_bytes,
        )

    # writes

    def set(
        self, key: str, value: bytes, ttl: float | None = None, stamp: int = 0, *, fresh: float | None = None
    ) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds (``None``: the default
        TTL), replacing any entry for ``key`` and making it the most recently used.
        ``stamp`` is kept with it (the stamp of the write, see :meth:`stamp_of`);
        ``fresh`` (at most ``ttl``, default ``ttl``) is how long the value is fresh,
        see :meth:`fresh_left`.

        Then removes expired entries and evicts least-recently-used ones until both
        bounds hold (``on_remove`` is called for each).

        :returns: ``True`` if stored; ``False`` if the entry alone would account for
            more than ``max_bytes``: then nothing is stored and any old entry for
            ``key`` is removed (without ``on_remove``).
        :raises TypeError: ``key`` is not a ``str``, ``value`` not ``bytes``, or
            ``ttl`` not a number.
        :raises ValueError: ``ttl`` is not a positive finite number, or ``key``
            cannot be encoded as UTF-8 (a lone surrogate).
        """
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}: {key!r}")
        if not isinstance(value, bytes):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        seconds = self._default_ttl if ttl is None else validate_ttl(ttl)
        try:
            key_bytes = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"key {key!r} cannot be encoded as UTF-8") from None
        nbytes = key_bytes + len(value) + ENTRY_OVERHEAD
        old = self._data.get(key)
        if old is not None:
            self._remove(key, old)
        if nbytes > self._max_bytes:
            return False
        now = self._clock()
        self._seq += 1
        entry = _Entry(value, now + seconds, nbytes, self._seq, stamp,
                       now + (seconds if fresh is None else min(fresh, seconds)))
        self._data[key] = entry
        self._bytes += nbytes
        heapq.heappush(self._heap, (entry.expires_at, entry.seq, key))
        removed = self._make_room(now) if self._over_bounds() else []
        self._maybe_compact()
        if removed:
            self._notify(removed)
        return True

    def delete(self, key: str) -> bool:
        """Remove the entry for ``key`` (no ``on_remove``).

        :returns: whether a live entry was removed (an expired one is removed too,
            but reported as absent, as ``get()`` would see it).
        """
        entry = self._data.get(key)
        if entry is None:
            return False
        self._remove(key, entry)
        self._maybe_compact()
        return entry.expires_at > self._clock()

    def clear(self) -> int:
        """Remove every entry (no ``on_remove``); counters are kept.

        :returns: how many entries were held, expired ones included.
        """
        count = len(self._data)
        self._data.clear()
        self._heap.clear()
        self._bytes = 0
        return count

    def sweep(self, limit: int = 256) -> int:
        """Remove up to ``limit`` expired entries, earliest expiry first, calling
        ``on_remove(key, "expired")`` for each.

        :returns: how many entries were removed.
        :raises TypeError: ``limit`` is not an ``int``.
        :raises ValueError: ``limit`` is not positive.
        """
        _positive_int(limit, "limit")
        removed: list[tuple[str, RemoveReason]] = []
        now = self._clock()
        while len(removed) < limit:
            key = self._pop_expired(now)
            if key is None:
                break
            removed.append((key, "expired"))
        if removed:
            self._notify(removed)
        return len(removed)

    # internals

    def _over_bounds(self) -> bool:
        return len(self._data) > self._capacity or self._bytes > self._max_bytes

    def _remove(self, key: str, entry: _Entry) -> None:
        del self._data[key]
        self._bytes -= entry.nbytes

    def _pop_expired(self, now: float) -> str | None:
        """Remove the live entry with the earliest expiry if it has expired, and
        return its key; ``None`` if no entry has expired. Skips stale heap items."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            entry = self._data.get(key)
            if entry is not None and entry.seq == seq:
                self._remove(key, entry)
                self._expirations += 1
                return key
        return None

    def _make_room(self, now: float) -> list[tuple[str, RemoveReason]]:
        removed: list[tuple[str, RemoveReason]] = []
        while self._over_bounds():
            key = self._pop_expired(now)
            if key is not None:
                removed.append((key, "expired"))
                continue
            # The newest entry is last and fits alone, so the loop stops before it.
            key, entry = self._data.popitem(last=False)
            self._bytes -= entry.nbytes
            self._evictions += 1
            removed.append((key, "evicted"))
        return removed

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * len(self._data) + _HEAP_SLACK:
            self._heap = [(e.expires_at, e.seq, key) for key, e in self._data.items()]
            heapq.heapify(self._heap)

    def _notify(self, removed: list[tuple[str, RemoveReason]]) -> None:
        callback = self._on_remove
        if callback is None:
            return
        first: BaseException | None = None
        for key, reason in removed:
            try:
                callback(key, reason)
            except Exception as exc:
                if first is None:
                    first = exc
                else:
                    _log.exception("on_remove(%r, %r) raised", key, reason)
        if first is not None:
            raise first
