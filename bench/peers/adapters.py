"""The synchronous peers, one small wrapper each, all with the same five methods.

Each wrapper imports its library when it is built, so a worker process loads
only the library it benchmarks (W4 measures the workers' memory). ``get``
returns None on a miss; ``get_or_compute`` is the peer's documented way to
cache a computed value (with its stampede protection, where it has one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .common import L2_TTL, Env

if TYPE_CHECKING:
    import redis

__all__ = ["SyncCache", "make_sync"]

#: The two-tier peer's local tier: as many entries, and as old, as mtcache's near cache by default.
LOCAL_SIZE = 65_536
LOCAL_TTL = 30.0


class SyncCache(Protocol):
    """What every synchronous peer offers the workloads."""

    def get(self, key: str) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...
    def delete(self, key: str) -> None: ...
    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any: ...
    def close(self) -> None: ...


def _redis(env: Env) -> redis.Redis:
    import redis

    if env.redis_url is None:
        raise ValueError("this peer needs a Redis URL")
    # redis-py picks the hiredis parser by itself when hiredis is installed
    return redis.Redis.from_url(env.redis_url)


class RedisPy:
    """redis-py straight to Redis, msgpack values, no local tier, no lock."""

    def __init__(self, env: Env) -> None:
        import msgpack

        self._r = _redis(env)
        self._pack = msgpack.packb
        self._unpack = msgpack.unpackb

    def get(self, key: str) -> Any:
        raw = self._r.get(key)
        return None if raw is None else self._unpack(raw)

    def set(self, key: str, value: Any) -> None:
        self._r.set(key, self._pack(value), ex=L2_TTL)

    def delete(self, key: str) -> None:
        self._r.delete(key)

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any:
        value = self.get(key)
        if value is None:
            value = fn()
            self.set(key, value)
        return value

    def close(self) -> None:
        self._r.close()


class TwoTier(RedisPy):
    """A per-process ``cachetools.TTLCache`` in front of redis-py: the common
    hand-rolled two-tier. Nothing tells one process that another wrote a key, so a
    local copy is served until its TTL runs out."""

    def __init__(self, env: Env) -> None:
        import cachetools

        super().__init__(env)
        self._local: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize=LOCAL_SIZE, ttl=LOCAL_TTL)
        self._lock = threading.Lock()  # TTLCache is not thread-safe (its docs say: guard it with a lock)
        self._hits = self._misses = 0

    def get(self, key: str) -> Any:
        with self._lock:
            value = self._local.get(key)
        if value is not None:
            self._hits += 1
            return value
        self._misses += 1
        value = super().get(key)
        if value is not None:
            with self._lock:
                self._local[key] = value
        return value

    def set(self, key: str, value: Any) -> None:
        super().set(key, value)
        with self._lock:
            self._local[key] = value

    def delete(self, key: str) -> None:
        super().delete(key)
        with self._lock:
            self._local.pop(key, None)

    def local_stats(self) -> list[int]:
        """[local hits, local misses, 0] of ``get`` so far."""
        return [self._hits, self._misses, 0]


class Dogpile:
    """dogpile.cache region on its Redis backend with ``distributed_lock=True``."""

    def __init__(self, env: Env) -> None:
        from dogpile.cache import make_region
        from dogpile.cache.api import NO_VALUE

        self._no_value = NO_VALUE
        self._region = make_region().configure(
            "dogpile.cache.redis",
            expiration_time=L2_TTL,
            arguments={
                "url": env.redis_url,
                "redis_expiration_time": L2_TTL + 60,
                "distributed_lock": True,
                "thread_local_lock": False,  # the docs require it with distributed_lock
                "lock_timeout": 30,
            },
        )

    def get(self, key: str) -> Any:
        value = self._region.get(key)
        return None if value is self._no_value else value

    def set(self, key: str, value: Any) -> None:
        self._region.set(key, value)

    def delete(self, key: str) -> None:
        self._region.delete(key)

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any:
        return self._region.get_or_create(key, fn)

    def close(self) -> None:
        backend: Any = self._region.backend
        backend.writer_client.close()
        backend.reader_client.close()


class Disk:
    """diskcache ``FanoutCache`` in one directory shared by every worker (its
    documented defaults: 8 shards, 10 ms timeout). ``get_or_compute`` is what
    ``memoize`` does: get, compute on a miss, set; no lock.

    A ``FanoutCache`` operation that waits longer than its timeout for SQLite's
    lock gives up quietly: ``get`` returns the default, ``set`` returns False and
    stores nothing. Callers usually ignore that, and so does ``set`` here; it
    counts them in :attr:`dropped_writes`."""

    def __init__(self, env: Env) -> None:
        import diskcache

        if env.directory is None:
            raise ValueError("diskcache needs a directory")
        self._cache = diskcache.FanoutCache(env.directory, shards=8, timeout=0.010)
        self.dropped_writes = 0

    def get(self, key: str) -> Any:
        return self._cache.get(key)

    def set(self, key: str, value: Any) -> None:
        if not self._cache.set(key, value, expire=L2_TTL):
            self.dropped_writes += 1

    def delete(self, key: str) -> None:
        self._cache.delete(key)

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any:
        value = self._cache.get(key)
        if value is None:
            value = fn()
            self._cache.set(key, value, expire=L2_TTL)
        return value

    def close(self) -> None:
        self._cache.close()


class Mtcache:
    """mtcache ``Client`` with its defaults (near cache 128 MiB / 65,536 entries, 30 s)."""

    #: ``Client(write_mode=...)``: "through" (its default) or "behind"
    write_mode = "through"

    def __init__(self, env: Env) -> None:
        from mtcache import Client

        if env.socket is None:
            raise ValueError("mtcache needs a coordinator socket")
        self._client = Client(env.socket, spawn=False, write_mode=self.write_mode)

    def get(self, key: str) -> Any:
        return self._client.get(key)

    def set(self, key: str, value: Any) -> None:
        self._client.set(key, value, ttl=L2_TTL)

    def delete(self, key: str) -> None:
        self._client.delete(key)

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any:
        return self._client.get_or_compute(key, fn, ttl=L2_TTL)

    def local_stats(self) -> list[int]:
        """[near hits, near misses, shared-memory mirror hits] so far."""
        stats = self._client.stats()
        return [stats.near_hits, stats.near_misses, stats.mirror_hits]

    def close(self) -> None:
        self._client.close()


class MtcacheBehind(Mtcache):
    """As :class:`Mtcache`, with ``write_mode="behind"``: ``set``/``delete`` return once this host holds the write."""

    write_mode = "behind"


_SYNC: dict[str, Callable[[Env], SyncCache]] = {
    "redis-py": RedisPy,
    "cachetools+redis": TwoTier,
    "dogpile.cache": Dogpile,
    "diskcache": Disk,
    "mtcache": Mtcache,
    "mtcache (write-behind)": MtcacheBehind,
}


def make_sync(peer: str, env: Env) -> SyncCache:
    """The synchronous wrapper of ``peer``.

    :raises KeyError: ``peer`` is not a synchronous peer.
    """
    return _SYNC[peer](env)
