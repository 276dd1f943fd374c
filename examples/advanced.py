"""Beyond the basics: codecs, copy_on_read, the AsyncClient, custom TTLs and errors.

    python examples/advanced.py [--socket PATH]

1. Codecs: the JSON codec, and a codec object of your own (JSON compressed with
   zlib). Every client that reads a key must use the codec that wrote it: a value
   another codec cannot decode is a miss (counted and logged), never an error.
2. copy_on_read: by default a near-cache hit returns the object the cache holds
   (as functools.lru_cache does), so mutating it changes what the next hit sees
   in that process; ``copy_on_read=True`` decodes a fresh copy on every hit.
3. The AsyncClient: ten tasks ask for one key with a coroutine function; it runs once.
4. Errors: the function raising (ComputeError, nothing cached), a value the codec
   cannot carry, a wait that passes its timeout (CacheTimeout), bad keys, and a
   coordinator that is not there (the call still answers).

Lifetimes are given throughout in each form the API takes: seconds (``ttl=60``),
a ``timedelta`` and ``CacheStrategy.custom(...)``. Exit status 0 if everything
behaved as documented.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import threading
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

from _support import Target, parser, run

from mtcache import AsyncClient, CacheStrategy, CacheTimeout, Client, ComputeError

PREFIX = "example:advanced:"


class CompressedJsonCodec:
    """A codec of our own: JSON, compressed with zlib. A codec is any object with
    ``name``, ``max_bytes``, ``encode(value) -> bytes`` and ``decode(bytes)``."""

    name = "zjson"

    def __init__(self, max_bytes: int = 1024 * 1024) -> None:
        self.max_bytes = max_bytes

    def encode(self, value: Any) -> bytes:
        """JSON, then zlib.

        :raises TypeError: JSON cannot carry ``value``.
        :raises ValueError: the result is larger than ``max_bytes``.
        """
        try:
            text = json.dumps(value, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot encode a value of type {type(value).__qualname__}: {exc}") from exc
        data = zlib.compress(text.encode(), 6)
        if len(data) > self.max_bytes:
            raise ValueError(f"encoded value is {len(data):,} bytes, over {self.max_bytes:,}")
        return data

    def decode(self, data: bytes) -> Any:
        """The value :meth:`encode` encoded."""
        return json.loads(zlib.decompress(data))


def codecs(socket_path: str) -> list[bool]:
    print("1. codecs")
    checks: list[bool] = []
    with Client(socket_path, spawn=False, codec="json") as cache:
        cache.set(PREFIX + "json", {"point": (1, 2), "ok": True}, ttl=60)
        value = cache.get(PREFIX + "json")
        print(f"   json codec: set {{'point': (1, 2), 'ok': True}} -> get {value!r}  (a tuple comes back as a list)")
        checks.append(value == {"point": [1, 2], "ok": True})
        try:
            cache.set(PREFIX + "json", {1, 2, 3})
        except TypeError as exc:
            print(f"   json codec: set a set -> TypeError: {exc}")
            checks.append(True)
        else:
            checks.append(False)

    rows = [{"symbol": f"SYM{i % 20:03d}", "price": 100 + i % 7, "currency": "EUR"} for i in range(2000)]
    codec = CompressedJsonCodec()
    with Client(socket_path, spawn=False, codec=codec) as cache:
        cache.set(PREFIX + "zjson", rows, ttl=timedelta(minutes=10))
        back = cache.get(PREFIX + "zjson")
        plain, packed = len(json.dumps(rows, separators=(",", ":"))), len(codec.encode(rows))
        print(f"   custom codec: {len(rows)} rows stored as {packed:,} bytes instead of {plain:,}; "
              f"read back equal: {back == rows}")
        checks.append(back == rows)
    return checks


def copy_on_read(socket_path: str) -> list[bool]:
    print("2. copy_on_read")
    key = PREFIX + "settings"
    with Client(socket_path, spawn=False) as shared, Client(socket_path, spawn=False, copy_on_read=True) as copying:
        shared.set(key, {"theme": "dark", "tags": ["a"]}, ttl=60)
        first, second = shared.get(key), shared.get(key)
        first["tags"].append("mutated")
        print(f"   default: two hits are the same object: {first is second}; "
              f"after mutating one, the next hit shows {shared.get(key)['tags']!r}")
        mine, again = copying.get(key), copying.get(key)
        mine["tags"].append("mutated")
        print(f"   copy_on_read=True: the same object: {mine is again}; "
              f"after mutating one, the next hit shows {copying.get(key)['tags']!r}")
        checks = [first is second, mine is not again, copying.get(key)["tags"] == ["a"]]
        shared.delete(key)
    return checks


async def async_client(socket_path: str) -> list[bool]:
    print("3. AsyncClient")
    key = PREFIX + "profile"
    calls = 0

    async def load_profile() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)  # an awaited database query
        return {"user": 42, "plan": "pro"}

    async with AsyncClient(socket_path, spawn=False) as cache:
        await cache.delete(key)
        profiles = await asyncio.gather(
            *(cache.get_or_compute(key, load_profile, strategy=CacheStrategy.custom(timedelta(minutes=5)))
              for _ in range(10))
        )
        print(f"   10 concurrent tasks, one coroutine function: it ran {calls} time(s); "
              f"all got {profiles[0]!r}: {all(p == profiles[0] for p in profiles)}")
        plain = await cache.get_or_compute(PREFIX + "plain", lambda: 7, ttl=30)
        print(f"   a plain callable works too: {plain!r}")
        await cache.delete(key)
        await cache.delete(PREFIX + "plain")
    return [calls == 1, all(p == {"user": 42, "plan": "pro"} for p in profiles), plain == 7]


def errors(socket_path: str) -> list[bool]:
    print("4. errors")
    checks: list[bool] = []
    with Client(socket_path, spawn=False) as cache:
        key = PREFIX + "flaky"
        cache.delete(key)

        def flaky() -> str:
            raise ConnectionResetError("upstream hung up")

        try:
            cache.get_or_compute(key, flaky, ttl=60)
        except ComputeError as exc:
            print(f"   fn raised -> ComputeError: {exc}")
            print(f"      exc_type={exc.exc_type!r} exc_message={exc.exc_message!r} cause={exc.__cause__!r}")
            checks.append(exc.exc_type == "ConnectionResetError" and isinstance(exc.__cause__, ConnectionResetError))
        else:
            checks.append(False)
        retried = cache.get_or_compute(key, lambda: "second try", ttl=60)
        print(f"   nothing was cached, so the next call computes again -> {retried!r}")
        checks.append(retried == "second try")
        cache.delete(key)

        try:
            cache.get_or_compute(PREFIX + "unencodable", lambda: {1, 2}, ttl=60)
        except TypeError as exc:
            print(f"   fn returned a set (msgpack cannot carry it) -> TypeError: {exc}")
            checks.append(cache.get(PREFIX + "unencodable") is None)
        else:
            checks.append(False)

        for bad_key in ("", 42):
            try:
                cache.get(bad_key)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                print(f"   get({bad_key!r}) -> {type(exc).__name__}: {exc}")
                checks.append(True)
            else:
                checks.append(False)

    checks.append(lease_wait_timeout(socket_path))
    checks.append(no_coordinator())
    return checks


def lease_wait_timeout(socket_path: str) -> bool:
    """A worker computes slowly; another waits at most 0.2 s for it (CacheTimeout)."""
    key = PREFIX + "slow"
    holding, release = threading.Event(), threading.Event()
    with Client(socket_path, spawn=False) as holder, Client(socket_path, spawn=False) as waiter:
        holder.delete(key)

        def slow() -> str:
            holding.set()  # we hold the lease now
            release.wait(timeout=30)
            return "finally"

        thread = threading.Thread(target=lambda: holder.get_or_compute(key, slow, ttl=60))
        thread.start()
        holding.wait(timeout=30)
        try:
            waiter.get_or_compute(key, lambda: "never runs", ttl=60, timeout=0.2)
        except CacheTimeout as exc:
            print(f"   another worker holds the lease, we wait 0.2 s -> CacheTimeout: {exc}")
            timed_out = True
        else:
            timed_out = False
        release.set()
        thread.join(timeout=30)
        value = waiter.get(key)
        print(f"   once the holder finishes, everyone gets its value -> {value!r}")
        holder.delete(key)
    return timed_out and value == "finally"


def no_coordinator() -> bool:
    """No coordinator answers: calls still answer (computing locally), nothing raises."""
    with tempfile.TemporaryDirectory(prefix="mtcache-nobody-") as folder:
        nowhere = str(Path(folder) / "nobody.sock")
        with Client(nowhere, spawn=False) as cache:
            got = cache.get("k", "default")
            computed = cache.get_or_compute("k", lambda: "computed here", ttl=60)
            mode = cache.health().mode
    print(f"   no coordinator: get -> {got!r}, get_or_compute -> {computed!r}, health mode {mode!r}")
    return got == "default" and computed == "computed here" and mode == "degraded"


def main(target: Target, args: argparse.Namespace) -> int:
    # the client logs one warning when its coordinator is unreachable (section 4)
    logging.basicConfig(level=logging.WARNING, format="   (log) %(name)s: %(message)s", stream=sys.stdout)
    checks = codecs(target.socket_path)
    checks += copy_on_read(target.socket_path)
    checks += asyncio.run(async_client(target.socket_path))
    checks += errors(target.socket_path)
    ok = all(checks)
    print("advanced: ok" if ok else "advanced: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    run(main, parser(__doc__))
