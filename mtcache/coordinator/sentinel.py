"""Following a Sentinel failover at once.

redis-py's Sentinel-managed connections ask the sentinels where the master is only when they connect, and
give a connection up when it fails or is answered ``READONLY``. After ``SENTINEL FAILOVER`` (or a failover
after a partition) the old master is not reconfigured as a replica until the sentinels' next look at it, up
to their 10 s INFO period: meanwhile it still answers as a master, and a coordinator whose connections
stayed on it keeps writing there, while hosts that reconnected write to the new master. The old master's
demotion then discards those acknowledged writes, and the hosts do not hear each other's invalidations.

So a coordinator on a ``redis+sentinel://`` URL subscribes to ``+switch-master`` on a sentinel (in turn,
the next one when one fails) and, when the service's master moves, drops every connection at once: the
next call connects to the new master. What the old master took between the promotion and the event (a few
milliseconds) is still the documented loss of a failover, detected as any (README: "What a failover can
lose").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError

from mtcache.redis_urls import parse_sentinel_url, sentinel_connection_kwargs

__all__ = ["SentinelWatch"]

log = logging.getLogger("mtcache.coordinator")

#: The longest wait between two attempts to subscribe (the sentinels may all be down).
_BACKOFF_MAX = 2.0


class SentinelWatch:
    """Calls ``on_switch()`` each time the sentinels announce a new master for the URL's service.

    :param url: a ``redis+sentinel://`` or ``rediss+sentinel://`` URL.
    :param timeout: the socket connect timeout for the sentinels.
    :raises ValueError: ``url`` is not a sentinel URL.
    """

    def __init__(self, url: str, timeout: float, on_switch: Callable[[], Awaitable[None]]) -> None:
        self._target = parse_sentinel_url(url)
        self._kwargs = sentinel_connection_kwargs(self._target, timeout)
        self._on_switch = on_switch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (a task of the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay, turn = 0.05, 0
        sentinels = self._target.sentinels
        while True:
            host, port = sentinels[turn % len(sentinels)]
            turn += 1
            try:
                await self._listen(host, port)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                log.debug("sentinel %s:%d: %s; trying the next one", host, port, exc)
            await asyncio.sleep(delay)  # back-off before the next sentinel
            delay = min(delay * 2, _BACKOFF_MAX)

    async def _listen(self, host: str, port: int) -> None:
        client = redis.asyncio.Redis(host=host, port=port, **self._kwargs)
        try:
            pubsub = client.pubsub()
            await pubsub.subscribe("+switch-master")
            async for message in pubsub.listen():
                if message.get("type") == "message" and self._is_ours(message.get("data")):
                    log.warning("Sentinel announces a new master for %r: dropping every connection to the old one",
                                self._target.service)
                    await self._on_switch()
        finally:
            await client.aclose()

    def _is_ours(self, data: Any) -> bool:
        """``+switch-master`` says ``<service> <old ip> <old port> <new ip> <new port>``."""
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        return text.split(" ", 1)[0] == self._target.service
