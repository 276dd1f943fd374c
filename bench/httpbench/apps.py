"""The quote apps ``bench/http.py`` serves: one JSON endpoint, one cache per variant.

``GET /quote/<symbol>`` answers ``{"symbol": ..., "quote": {...}}``. The quote comes
from a price service that takes :data:`SERVICE_SECONDS` per call and appends one line
(``symbol unix-time``) per call to a log file, so the driver can count the calls of
every worker process. Variants (:data:`VARIANTS`):

- ``constant``: the same quote for every request, no service, no cache: the server's own
  ceiling (it still encodes the JSON body per request, as every variant does, so that the
  difference to it is the cache's cost);
- ``mtcache``: ``get_or_compute`` with ``CacheStrategy.REALTIME``;
- ``mtcache_eager``: the same with ``eager_refresh=EAGER_REFRESH``;
- ``redis_py``: cache-aside (GET, on a miss call the service and SET with the TTL);
- ``cashews``: ``@cache(ttl, lock=True)`` with ``client_side=True`` (asyncio only: cashews
  has no synchronous API, so it has no WSGI variant);
- ``nocache``: the service on every request.

Servers load :func:`wsgi_app` (gunicorn: ``'bench.httpbench.apps:wsgi_app()'``) or
:func:`asgi_app` (uvicorn ``--factory``), which read the variant and its addresses from
``HTTPBENCH_VARIANT``, ``HTTPBENCH_SOCKET``, ``HTTPBENCH_REDIS_URL`` and
``HTTPBENCH_CALL_LOG``; tests call :func:`make_wsgi` and :func:`make_asgi` directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from mtcache import AsyncClient, CacheStrategy, Client

__all__ = [
    "ASYNC_ONLY", "CONSTANT_QUOTE", "EAGER_REFRESH", "SERVICE_SECONDS", "TTL", "VARIANTS", "PriceService",
    "QuoteWSGI", "asgi_app", "make_asgi", "make_wsgi", "wsgi_app",
]

#: How long the price service takes per call.
SERVICE_SECONDS = 0.02
#: The quotes' time to live: mtcache's REALTIME preset, used by every cache.
TTL = CacheStrategy.REALTIME.ttl
#: mtcache_eager: the fraction of the TTL after which a hit starts a background refresh.
EAGER_REFRESH = 0.8
VARIANTS = ("constant", "mtcache", "mtcache_eager", "redis_py", "cashews", "nocache")
#: variants with no WSGI form
ASYNC_ONLY = frozenset({"cashews"})

_PATH = re.compile(r"/quote/([A-Za-z0-9._-]{1,32})")
_HEADERS = [("Content-Type", "application/json")]
ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]


class PriceService:
    """The slow source: :data:`SERVICE_SECONDS` per quote, each call appended to
    ``call_log`` (one ``write`` with ``O_APPEND``: lines from many processes never mix)."""

    def __init__(self, call_log: str | None, seconds: float = SERVICE_SECONDS) -> None:
        self.call_log, self.seconds = call_log, seconds

    def _record(self, symbol: str) -> None:
        if self.call_log:
            fd = os.open(self.call_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{symbol} {time.time():.6f}\n".encode())
            finally:
                os.close(fd)

    @staticmethod
    def _quote(symbol: str) -> dict[str, Any]:
        return {"symbol": symbol, "price": 100 + sum(symbol.encode()) % 400 + round(time.time() % 1, 2),
                "currency": "USD", "as_of": time.time()}

    def quote(self, symbol: str) -> dict[str, Any]:
        """One call of the service (blocking)."""
        self._record(symbol)
        time.sleep(self.seconds)
        return self._quote(symbol)

    async def quote_async(self, symbol: str) -> dict[str, Any]:
        """One call of the service (on the event loop)."""
        self._record(symbol)
        await asyncio.sleep(self.seconds)
        return self._quote(symbol)


#: what the constant app answers for every symbol: a quote of the same shape and size
CONSTANT_QUOTE = {"symbol": "CONST", "price": 123.45, "currency": "USD", "as_of": 1_700_000_000.0}
#: one encoder for every body (json.dumps with options builds a new encoder per call)
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _body(symbol: str, quote: dict[str, Any]) -> bytes:
    return _encode({"symbol": symbol, "quote": quote}).encode()


def _check(variant: str, redis_url: str | None, socket_path: str | None) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    if variant in ("redis_py", "cashews") and not redis_url:
        raise ValueError(f"variant {variant!r} needs a Redis URL")
    if variant.startswith("mtcache") and not socket_path:
        raise ValueError(f"variant {variant!r} needs a coordinator socket path")


class QuoteWSGI:
    """The WSGI app of one variant; :meth:`close` lets go of its cache's connections."""

    def __init__(self, lookup: Callable[[str], dict[str, Any]] | None, closers: list[Callable[[], Any]]) -> None:
        self.lookup, self.closers = lookup, closers

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None:
            start_response("404 Not Found", _HEADERS)
            return [b'{"error":"not found"}']
        symbol = match.group(1)
        body = _body(symbol, CONSTANT_QUOTE if self.lookup is None else self.lookup(symbol))
        start_response("200 OK", [*_HEADERS, ("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        """Close the cache's connections (the app cannot serve afterwards)."""
        for close in self.closers:
            close()
        self.closers.clear()


def make_wsgi(variant: str, *, socket_path: str | None = None, redis_url: str | None = None,
              call_log: str | None = None) -> QuoteWSGI:
    """The WSGI app of ``variant`` (one per worker process: the caches connect lazily).

    :raises ValueError: an unknown variant, an asyncio-only one (cashews), or an address
        the variant needs is missing.
    """
    _check(variant, redis_url, socket_path)
    if variant in ASYNC_ONLY:
        raise ValueError(f"{variant} has no synchronous API: it is not served by a WSGI app")
    service = PriceService(call_log)
    closers: list[Callable[[], Any]] = []
    lookup: Callable[[str], dict[str, Any]] | None = None
    if variant.startswith("mtcache"):
        client = Client(socket_path, spawn=False)
        closers.append(client.close)
        eager = EAGER_REFRESH if variant == "mtcache_eager" else None

        def lookup(symbol: str) -> dict[str, Any]:
            return client.get_or_compute(f"quote:{symbol}", lambda: service.quote(symbol),
                                         strategy=CacheStrategy.REALTIME, eager_refresh=eager)
    elif variant == "redis_py":
        import redis

        r = redis.Redis.from_url(redis_url or "")
        closers.append(r.close)

        def lookup(symbol: str) -> dict[str, Any]:
            raw = r.get(f"quote:{symbol}")
            if raw is not None:
                return json.loads(raw)  # type: ignore[no-any-return]
            quote = service.quote(symbol)
            r.set(f"quote:{symbol}", json.dumps(quote), ex=int(TTL))
            return quote
    elif variant == "nocache":
        lookup = service.quote
    return QuoteWSGI(lookup, closers)


class _AsyncLookup:
    """The asyncio caches, built on the worker's event loop at first use."""

    def __init__(self, variant: str, socket_path: str | None, redis_url: str | None, call_log: str | None) -> None:
        self.variant, self.socket_path, self.redis_url = variant, socket_path, redis_url
        self.service = PriceService(call_log)
        self.ready = False
        self.lock: asyncio.Lock | None = None
        self.closers: list[Callable[[], Awaitable[Any]]] = []
        self.fetch: Callable[[str], Awaitable[dict[str, Any]]] = self.service.quote_async

    async def __call__(self, symbol: str) -> dict[str, Any]:
        if not self.ready:
            if self.lock is None:
                self.lock = asyncio.Lock()
            async with self.lock:
                if not self.ready:
                    await self._build()
                    self.ready = True
        return await self.fetch(symbol)

    async def _build(self) -> None:
        service = self.service
        if self.variant.startswith("mtcache"):
            client = AsyncClient(self.socket_path, spawn=False)
            self.closers.append(client.close)
            eager = EAGER_REFRESH if self.variant == "mtcache_eager" else None

            async def fetch(symbol: str) -> dict[str, Any]:
                return await client.get_or_compute(f"quote:{symbol}", lambda: service.quote_async(symbol),
                                                   strategy=CacheStrategy.REALTIME, eager_refresh=eager)
            self.fetch = fetch
        elif self.variant == "redis_py":
            import redis.asyncio

            r = redis.asyncio.Redis.from_url(self.redis_url or "")
            self.closers.append(r.aclose)

            async def fetch(symbol: str) -> dict[str, Any]:
                raw = await r.get(f"quote:{symbol}")
                if raw is not None:
                    return json.loads(raw)  # type: ignore[no-any-return]
                quote = await service.quote_async(symbol)
                await r.set(f"quote:{symbol}", json.dumps(quote), ex=int(TTL))
                return quote
            self.fetch = fetch
        elif self.variant == "cashews":
            from cashews import Cache

            cache = Cache()
            # client_side: a per-process memory tier kept coherent by Redis tracking; protocol 2 because
            # cashews reads the invalidations as RESP2 pub/sub (see bench/peers/adapters_async.py)
            cache.setup(self.redis_url or "", client_side=True, protocol=2)
            await cache.init()
            self.closers.append(cache.close)

            @cache(ttl=TTL, key="quote:{symbol}", lock=True)
            async def fetch(symbol: str) -> dict[str, Any]:
                return await service.quote_async(symbol)
            self.fetch = fetch

    async def close(self) -> None:
        for close in self.closers:
            await close()
        self.closers.clear()
        self.ready = False


def make_asgi(variant: str, *, socket_path: str | None = None, redis_url: str | None = None,
              call_log: str | None = None) -> ASGIApp:
    """The ASGI app of ``variant``; it builds its cache on the worker's loop at first use and
    closes it at lifespan shutdown.

    :raises ValueError: an unknown variant, or an address the variant needs is missing.
    """
    _check(variant, redis_url, socket_path)
    lookup = None if variant == "constant" else _AsyncLookup(variant, socket_path, redis_url, call_log)

    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                  send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if lookup is not None:
                        await lookup.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise ValueError(f"this app serves http only, not {scope['type']!r}")
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            status, body = 404, b'{"error":"not found"}'
        else:
            status, symbol = 200, match.group(1)
            body = _body(symbol, CONSTANT_QUOTE if lookup is None else await lookup(symbol))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _from_env() -> dict[str, Any]:
    return {"socket_path": os.environ.get("HTTPBENCH_SOCKET"), "redis_url": os.environ.get("HTTPBENCH_REDIS_URL"),
            "call_log": os.environ.get("HTTPBENCH_CALL_LOG")}


def wsgi_app() -> QuoteWSGI:
    """The WSGI app of ``$HTTPBENCH_VARIANT`` (gunicorn's factory)."""
    return make_wsgi(os.environ.get("HTTPBENCH_VARIANT", ""), **_from_env())


def asgi_app() -> ASGIApp:
    """The ASGI app of ``$HTTPBENCH_VARIANT`` (uvicorn's ``--factory``)."""
    return make_asgi(os.environ.get("HTTPBENCH_VARIANT", ""), **_from_env())
