"""This host's tier: L1, its shared-memory mirror and the version table, changed together.

Workers trust a near copy while its key's version is unchanged, and read the
mirror after reading the version. So every change to a key's L1 entry (a set,
a fill, a promotion, a delete, an invalidation, an eviction or expiry) writes
the mirror first and then moves the key's version, and every change goes
through :class:`LocalTier`: there is no other way to touch the store.

Each L1 entry keeps the stamp of the write that made it (see
:mod:`mtcache.coordinator.stamps`): an invalidation from another host drops it
only if that host's write is newer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from mtcache.coordinator.store import L1Store, RemoveReason
from mtcache.coordinator.tags import TagIndex
from mtcache.mirror import MirrorWriter
from mtcache.shm import VersionTable

__all__ = ["Hit", "LocalTier"]


class Hit(NamedTuple):
    """An L1 entry as a reply carries it."""

    value: bytes
    version: int
    ttl: float
    stamp: int


class LocalTier:
    """L1 + mirror + version table (see the module docstring). Event-loop only."""

    def __init__(
        self,
        table: VersionTable,
        mirror: MirrorWriter | None,
        *,
        capacity: int,
        max_bytes: int,
        default_ttl: float,
    ) -> None:
        self.table = table
        self.mirror = mirror
        #: how long a write that gave no TTL (neither ``ttl`` nor a strategy) lives here
        self.default_ttl = default_ttl
        self.store = L1Store(capacity=capacity, max_bytes=max_bytes, default_ttl=default_ttl, on_remove=self._removed)
        #: which entries carry which tags
        self.tags = TagIndex()

    def version_of(self, key: str) -> int:
        """The key's current version counter."""
        table = self.table
        return table.get(table.slot(key))

    def get(self, key: str) -> Hit | None:
        """The fresh entry of ``key`` (counted as a hit or a miss), or None; its ``ttl`` is how long it
        stays fresh. An entry L1 holds and the mirror lost (its arena bytes or its bucket were
        reused) is mirrored again, so a key read through the socket is read from the mirror next."""
        store = self.store
        value = store.get(key)
        if value is None:
            return None
        hit = Hit(value, self.version_of(key), store.fresh_left(key) or 0.0, store.stamp_of(key) or 0)
        mirror = self.mirror
        if mirror is not None and len(value) < mirror.max_entry and key not in mirror:
            # the same value under the same version: no version moves, a near copy of it stays good
            mirror.put(key, value, time.monotonic() + hit.ttl)
        return hit

    def stale(self, key: str, max_age: float) -> Hit | None:
        """``key``'s entry if it is stale by at most ``max_age`` seconds (kept for fail-safe), counting
        nothing; its ``ttl`` is how long ago it went stale."""
        store = self.store
        left = store.fresh_left(key)
        value = store.peek(key)
        if left is None or left > 0 or -left > max_age or value is None:
            return None
        return Hit(value, self.version_of(key), -left, store.stamp_of(key) or 0)

    def stamp_of(self, key: str) -> int | None:
        """The stamp of ``key``'s live entry, if any."""
        return self.store.stamp_of(key)

    def peek(self, key: str) -> tuple[bytes, float, int] | None:
        """``(value, remaining ttl, stamp)`` of ``key``'s live entry, counting nothing."""
        store = self.store
        value, ttl, stamp = store.peek(key), store.remaining_ttl(key), store.stamp_of(key)
        if value is None or ttl is None or stamp is None:
            return None
        return value, ttl, stamp

    def put(
        self, key: str, value: bytes, ttl: float | None, stamp: int, stale_for: float = 0.0, tags: tuple[str, ...] = ()
    ) -> int:
        """Store ``value`` (fresh for ``ttl``: its write's own TTL, FOREVER included, or the L1 default
        when the write gave none; then kept ``stale_for`` more seconds as a fail-safe fallback) with the
        stamp of its write; the key's new version. A value L1 cannot hold (over its byte bound) removes
        the key's entry instead. The mirror serves it while it is fresh."""
        if ttl is None:
            ttl = self.default_ttl
        stored = self.store.set(key, value, ttl + stale_for, stamp, fresh=ttl)
        if stored:
            self.tags.set(key, tags)
        else:
            self.tags.discard(key)
        if self.mirror is not None:
            if stored:
                self.mirror.put(key, value, time.monotonic() + ttl)
            else:
                self.mirror.delete(key)
        return self.table.bump_key(key)

    def delete(self, key: str) -> bool:
        """Remove ``key``'s entry and move its version; whether a live entry was there."""
        existed = self.store.delete(key)
        self.tags.discard(key)
        if self.mirror is not None:
            self.mirror.delete(key)
        self.table.bump_key(key)
        return existed

    def drop_older(self, key: str, stamp: int) -> bool:
        """Another host wrote ``key`` with ``stamp``: drop the entry unless it holds a newer write
        (or that very write, promoted from L2 before its stream entry arrived). True if the
        write applies here."""
        held = self.store.stamp_of(key)
        if held is not None and held >= stamp:
            return False
        self.delete(key)
        return True

    def drop_if(self, key: str, stamp: int) -> None:
        """Drop ``key``'s entry if it is the one written with ``stamp`` (that write lost to a newer one)."""
        if self.store.stamp_of(key) == stamp:
            self.delete(key)

    def clear(self, keep: Callable[[str, int], bool] | None = None) -> int:
        """Drop every entry, or every one for which ``keep(key, stamp)`` is false; every version moves.
        The number dropped."""
        store = self.store
        if keep is None:
            dropped = store.clear()
            self.tags.clear()
            if self.mirror is not None:
                self.mirror.clear()
        else:
            live = store.keys()
            doomed = [key for key in live if not keep(key, store.stamp_of(key) or 0)]
            for key in doomed:
                store.delete(key)
                self.tags.discard(key)
                if self.mirror is not None:
                    self.mirror.delete(key)
            dropped = len(doomed)
        self.table.bump_all()
        return dropped

    def sweep(self, limit: int) -> int:
        """Remove up to ``limit`` expired entries (each moves its key's version)."""
        return self.store.sweep(limit)

    def _removed(self, key: str, reason: RemoveReason) -> None:
        # evicted or expired: the mirror first, then the version (a worker reads the
        # version before the mirror, so it can never pair an old value with a new version)
        self.tags.discard(key)
        if self.mirror is not None:
            self.mirror.delete(key)
        self.table.bump_key(key)
