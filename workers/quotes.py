"""The slow price service behind the example servers, and the compute log.

Shared by ``wsgi_app.py``, ``asgi_app.py`` and ``pool.py``. Every computation
appends one line (``pid key unix-time``) to the file named by the environment
variable ``MTCACHE_COMPUTE_LOG``, if set, with ``O_APPEND``, so processes writing
at once never interleave; counting its lines counts the computations of every
process.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from typing import Any

__all__ = ["COMPUTE_SECONDS", "fetch_quote", "fetch_quote_async", "json_body", "quote_symbol", "record_computation"]

#: How long the price service takes for one quote.
COMPUTE_SECONDS = 0.5

_QUOTE_PATH = re.compile(r"/quote/([A-Za-z0-9._-]{1,32})")


def quote_symbol(path: str) -> str | None:
    """The symbol of a ``/quote/<symbol>`` path (letters, digits, ``._-``, at most
    32), upper-cased; None for any other path."""
    match = _QUOTE_PATH.fullmatch(path)
    return match.group(1).upper() if match else None


def record_computation(key: str) -> None:
    """Append ``pid key time`` to ``$MTCACHE_COMPUTE_LOG`` (nothing if unset).

    :raises OSError: the file cannot be opened or written.
    """
    path = os.environ.get("MTCACHE_COMPUTE_LOG")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {key} {time.time():.6f}\n".encode())  # one write: atomic with O_APPEND
    finally:
        os.close(fd)


def _quote(symbol: str) -> dict[str, Any]:
    return {"symbol": symbol, "price": round(random.uniform(10, 500), 2), "computed_by": os.getpid(),
            "computed_at": time.time()}


def fetch_quote(symbol: str, seconds: float = COMPUTE_SECONDS) -> dict[str, Any]:
    """Ask the (slow) price service for ``symbol``: recorded, then ``seconds`` of waiting."""
    record_computation(f"quote:{symbol}")
    time.sleep(seconds)
    return _quote(symbol)


async def fetch_quote_async(symbol: str, seconds: float = COMPUTE_SECONDS) -> dict[str, Any]:
    """:func:`fetch_quote` for an event loop."""
    record_computation(f"quote:{symbol}")
    await asyncio.sleep(seconds)
    return _quote(symbol)


def json_body(data: dict[str, Any]) -> bytes:
    """``data`` as a UTF-8 JSON response body."""
    return json.dumps(data, separators=(",", ":")).encode()
