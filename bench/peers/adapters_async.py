"""The asyncio peers, one small wrapper each; the same methods as coroutines.

Workers run them on uvloop (what uvicorn runs on). ``get_or_compute`` takes a
coroutine function and uses the peer's documented stampede tool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlparse

from .common import L2_TTL, Env

__all__ = ["AsyncCache", "make_async"]

AsyncFn = Callable[[], Awaitable[Any]]


class AsyncCache(Protocol):
    """What every asyncio peer offers the workloads."""

    async def get(self, key: str) -> Any: ...
    async def set(self, key: str, value: Any) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def get_or_compute(self, key: str, fn: AsyncFn) -> Any: ...
    async def close(self) -> None: ...


class Cashews:
    """cashews on Redis with ``client_side=True``: a per-process memory cache
    (10,000 entries, its default) kept coherent by Redis client tracking
    (BCAST) invalidations. ``get_or_compute`` is ``@cache(ttl, lock=True)``: a
    Redis lock around the call, and calls in one process coalesced.

    cashews reads the invalidations as RESP2 pub/sub messages; redis-py 8 speaks
    RESP3 by default, where they arrive as push messages cashews never sees. So
    ``protocol=2`` by default; ``protocol=None`` keeps redis-py's default.
    """

    def __init__(self, protocol: int | None = 2) -> None:
        self._protocol = protocol

    async def setup(self, env: Env) -> None:
        from cashews import Cache

        if env.redis_url is None:
            raise ValueError("cashews needs a Redis URL")
        self._cache = Cache()
        if self._protocol is None:
            self._cache.setup(env.redis_url, client_side=True)
        else:
            self._cache.setup(env.redis_url, client_side=True, protocol=self._protocol)
        await self._cache.init()

        async def load(key: str, fn: AsyncFn) -> Any:
            return await fn()

        self._load = self._cache(ttl=L2_TTL, key="{key}", lock=True)(load)

    async def get(self, key: str) -> Any:
        return await self._cache.get(key)

    async def set(self, key: str, value: Any) -> None:
        await self._cache.set(key, value, expire=L2_TTL)

    async def delete(self, key: str) -> None:
        await self._cache.delete(key)

    async def get_or_compute(self, key: str, fn: AsyncFn) -> Any:
        return await self._load(key, fn)

    async def close(self) -> None:
        await self._cache.close()


class Aiocache:
    """aiocache ``RedisCache`` with its default serializer (JSON; its
    ``MsgPackSerializer`` cannot read values back from Redis: the backend decodes
    the bytes as UTF-8 first). ``get_or_compute`` is ``@cached_stampede(lease=2)``,
    its stampede decorator (a ``RedLock``: SET NX in Redis; waiters wait on an
    in-process event)."""

    async def setup(self, env: Env) -> None:
        from aiocache import RedisCache, cached_stampede

        if env.redis_url is None:
            raise ValueError("aiocache needs a Redis URL")
        url = urlparse(env.redis_url)

        async def load(key: str, fn: AsyncFn) -> Any:
            return await fn()

        self._load = cached_stampede(
            lease=2, ttl=L2_TTL, key_builder=lambda _f, key, _fn: key, cache=RedisCache,
            endpoint=url.hostname, port=url.port,
        )(load)
        self._cache = self._load.cache

    async def get(self, key: str) -> Any:
        return await self._cache.get(key)

    async def set(self, key: str, value: Any) -> None:
        await self._cache.set(key, value, ttl=L2_TTL)

    async def delete(self, key: str) -> None:
        await self._cache.delete(key)

    async def get_or_compute(self, key: str, fn: AsyncFn) -> Any:
        return await self._load(key, fn)

    async def close(self) -> None:
        await self._cache.close()


class MtcacheAsync:
    """mtcache ``AsyncClient`` with its defaults."""

    async def setup(self, env: Env) -> None:
        from mtcache import AsyncClient

        if env.socket is None:
            raise ValueError("mtcache needs a coordinator socket")
        self._client = AsyncClient(env.socket, spawn=False)

    async def get(self, key: str) -> Any:
        return await self._client.get(key)

    async def set(self, key: str, value: Any) -> None:
        await self._client.set(key, value, ttl=L2_TTL)

    async def delete(self, key: str) -> None:
        await self._client.delete(key)

    async def get_or_compute(self, key: str, fn: AsyncFn) -> Any:
        return await self._client.get_or_compute(key, fn, ttl=L2_TTL)

    async def local_stats(self) -> list[int]:
        """[near hits, near misses, shared-memory mirror hits] so far."""
        stats = await self._client.stats()
        return [stats.near_hits, stats.near_misses, stats.mirror_hits]

    async def close(self) -> None:
        await self._client.close()


_ASYNC: dict[str, Callable[[], Cashews | Aiocache | MtcacheAsync]] = {
    "cashews": Cashews,
    "cashews (RESP3)": lambda: Cashews(protocol=None),
    "aiocache": Aiocache,
    "mtcache (async)": MtcacheAsync,
}


async def make_async(peer: str, env: Env) -> AsyncCache:
    """The connected asyncio wrapper of ``peer``.

    :raises KeyError: ``peer`` is not an asyncio peer.
    """
    cache = _ASYNC[peer]()
    await cache.setup(env)
    return cache
