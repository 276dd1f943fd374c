"""A small WSGI app that serves quotes through mtcache, for gunicorn.

    MTCACHE_SOCKET=/tmp/app/mtcache.sock REDIS_URL=redis://127.0.0.1:6379 \
        gunicorn -c workers/gunicorn.conf.py workers.wsgi_app:app

``GET /quote/<symbol>`` answers ``{"symbol", "value", "pid"}``: ``value`` comes
from ``get_or_compute`` over a slow price service (0.5 s, each computation
appended to ``$MTCACHE_COMPUTE_LOG``), so however many workers ask for a cold
symbol at once, the service is called once; ``pid`` is the worker that answered.
Any other path answers 404. A failing computation answers 502, a lease wait that
passes its deadline 504.

The client is built at import, which is safe with ``preload_app``: it connects on
first use, in the worker, and drops anything inherited from the master after a
fork. It does not start a coordinator (``spawn=False``): ``gunicorn.conf.py``
owns it. Without one, requests still answer, each worker computing for itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from mtcache import CacheStrategy, CacheTimeout, Client, ComputeError
from workers.quotes import fetch_quote, json_body, quote_symbol

__all__ = ["app"]

cache = Client(spawn=False)  # MTCACHE_SOCKET or the per-user default, as gunicorn.conf.py resolves it

_REASONS = {200: "200 OK", 404: "404 Not Found", 405: "405 Method Not Allowed", 502: "502 Bad Gateway",
            504: "504 Gateway Timeout"}


def quote(symbol: str) -> dict[str, Any]:
    """The cached quote of ``symbol`` (computed at most once per REALTIME period).

    :raises ComputeError: the price service failed.
    :raises CacheTimeout: another worker's computation took too long.
    """
    return cache.get_or_compute(f"quote:{symbol}", lambda: fetch_quote(symbol), strategy=CacheStrategy.REALTIME)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI callable."""
    status, data = _handle(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""))
    body = json_body({**data, "pid": os.getpid()})
    start_response(_REASONS[status], [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _handle(method: str, path: str) -> tuple[int, dict[str, Any]]:
    symbol = quote_symbol(path)
    if symbol is None:
        return 404, {"error": f"no such resource: {path}"}
    if method not in ("GET", "HEAD"):
        return 405, {"error": f"{method} is not allowed"}
    try:
        return 200, {"symbol": symbol, "value": quote(symbol)}
    except ComputeError as exc:
        return 502, {"error": str(exc)}
    except CacheTimeout as exc:
        return 504, {"error": str(exc)}
