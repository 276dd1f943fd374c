"""A small ASGI app that serves quotes through mtcache's AsyncClient, for uvicorn.

    MTCACHE_SOCKET=/tmp/app/mtcache.sock REDIS_URL=redis://127.0.0.1:6379 \
        uvicorn workers.asgi_app:app --workers 4

The same endpoint as ``wsgi_app.py``: ``GET /quote/<symbol>`` answers
``{"symbol", "value", "pid"}``, the value from ``get_or_compute`` over a slow
price service (a coroutine, 0.5 s, each computation appended to
``$MTCACHE_COMPUTE_LOG``); other paths 404, a failing computation 502, a lease
wait past its deadline 504. Written by hand against the ASGI spec, no framework.

Each worker process builds its own ``AsyncClient`` at lifespan startup (or on its
first request if the server runs without lifespan) and closes it at shutdown.
uvicorn has no master hook to start a coordinator in, so the client starts one
itself (``spawn=True``): the first worker to find none starts it, detached, under
a lock so that workers starting together start one. It is the host's coordinator
and outlives the server, like a system service; stop it with SIGTERM (its pid is
in the ``mtcache health`` output).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from mtcache import AsyncClient, CacheStrategy, CacheTimeout, ComputeError
from workers.quotes import fetch_quote_async, json_body, quote_symbol

__all__ = ["app"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_cache: AsyncClient | None = None


def cache() -> AsyncClient:
    """This worker process's client, built on first use."""
    global _cache
    if _cache is None:
        # the socket from MTCACHE_SOCKET (or the per-user default); a coordinator it starts reads REDIS_URL
        _cache = AsyncClient(spawn=True)
    return _cache


async def quote(symbol: str) -> dict[str, Any]:
    """The cached quote of ``symbol`` (computed at most once per REALTIME period).

    :raises ComputeError: the price service failed.
    :raises CacheTimeout: another worker's computation took too long.
    """
    return await cache().get_or_compute(
        f"quote:{symbol}", lambda: fetch_quote_async(symbol), strategy=CacheStrategy.REALTIME
    )


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI callable: ``lifespan`` and ``http`` scopes."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http":
        status, data = await _handle(scope["method"], scope["path"])
        body = json_body({**data, "pid": os.getpid()})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    else:
        raise ValueError(f"this app serves http only, not {scope['type']!r}")


async def _lifespan(receive: Receive, send: Send) -> None:
    global _cache
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # connect now (starting the host's coordinator if none answers), not on the first request;
            # a coordinator that cannot be reached is not fatal: the client computes locally and retries
            await cache().health()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _cache is not None:
                await _cache.close()
                _cache = None
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _handle(method: str, path: str) -> tuple[int, dict[str, Any]]:
    symbol = quote_symbol(path)
    if symbol is None:
        return 404, {"error": f"no such resource: {path}"}
    if method not in ("GET", "HEAD"):
        return 405, {"error": f"{method} is not allowed"}
    try:
        return 200, {"symbol": symbol, "value": await quote(symbol)}
    except ComputeError as exc:
        return 502, {"error": str(exc)}
    except CacheTimeout as exc:
        return 504, {"error": str(exc)}
