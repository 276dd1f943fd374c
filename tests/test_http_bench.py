"""bench/http.py's apps serve what the benchmark assumes: every variant answers the
quote's JSON, and through mtcache a cold symbol asked by many callers at once costs one
call of the price service (no wrk, no timings: the app factories, called in-process)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from bench.httpbench.apps import ASYNC_ONLY, CONSTANT_QUOTE, VARIANTS, make_asgi, make_wsgi
from tests.coordinator_proc import CoordinatorProcess

CALLERS = 8
#: variants that promise one computation of a cold key however many callers ask at once
ONCE = {"mtcache", "mtcache_eager"}


def _calls(log: Path) -> list[str]:
    return log.read_text().split()[::2] if log.exists() else []


def _check_body(variant: str, symbol: str, body: bytes) -> None:
    data = json.loads(body)
    assert data["symbol"] == symbol
    if variant == "constant":
        assert data["quote"] == CONSTANT_QUOTE
        return
    assert data["quote"]["symbol"] == symbol
    assert isinstance(data["quote"]["price"], float)


def test_wsgi_variants_serve_quotes(coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    # one coordinator and Redis for all (a fixture each would triple the test's time): each
    # variant asks for a symbol of its own
    for variant in VARIANTS:
        if variant not in ASYNC_ONLY:
            _check_wsgi(variant, f"COLD-{variant}", coordinator, tmp_path / f"{variant}.log")


def _check_wsgi(variant: str, symbol: str, coordinator: CoordinatorProcess, log: Path) -> None:
    app = make_wsgi(variant, socket_path=coordinator.socket_path, redis_url=coordinator.redis_url, call_log=str(log))
    barrier = threading.Barrier(CALLERS)
    answers: list[tuple[str, bytes]] = []

    def call() -> None:
        status: list[str] = []
        barrier.wait()
        body = b"".join(app({"PATH_INFO": f"/quote/{symbol}", "REQUEST_METHOD": "GET"},
                            lambda s, headers: status.append(s)))
        answers.append((status[0], body))

    try:
        threads = [threading.Thread(target=call) for _ in range(CALLERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        not_found: list[str] = []
        assert app({"PATH_INFO": "/elsewhere"}, lambda s, h: not_found.append(s)) == [b'{"error":"not found"}']
    finally:
        app.close()
    assert len(answers) == CALLERS
    for status, body in answers:
        assert status == "200 OK"
        _check_body(variant, symbol, body)
    assert not_found == ["404 Not Found"]
    calls = _calls(log)
    assert set(calls) <= {symbol}
    if variant == "constant":
        assert calls == []
    elif variant in ONCE:
        assert calls == [symbol], variant
    else:
        assert 1 <= len(calls) <= CALLERS, variant


# cashews' close() calls redis-py's deprecated close()
@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")
async def test_asgi_variants_serve_quotes(coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    for variant in VARIANTS:
        if variant == "cashews" and importlib.util.find_spec("cashews") is None:
            continue  # in the bench extra, not the test extra CI installs
        await _check_asgi(variant, f"COLD-{variant}", coordinator, tmp_path / f"{variant}.log")


async def _check_asgi(variant: str, symbol: str, coordinator: CoordinatorProcess, log: Path) -> None:
    app = make_asgi(variant, socket_path=coordinator.socket_path, redis_url=coordinator.redis_url, call_log=str(log))

    async def call(path: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": path}, receive, send)
        return sent[0]["status"], sent[1]["body"]

    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replies: list[str] = []

    async def send_lifespan(message: dict[str, Any]) -> None:
        replies.append(message["type"])

    life = asyncio.create_task(app({"type": "lifespan"}, lifespan.get, send_lifespan))
    await lifespan.put({"type": "lifespan.startup"})
    try:
        answers = await asyncio.gather(*(call(f"/quote/{symbol}") for _ in range(CALLERS)))
        missing = await call("/elsewhere")
    finally:
        await lifespan.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(life, 30)
    assert replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    for status, body in answers:
        assert status == 200
        _check_body(variant, symbol, body)
    assert missing[0] == 404
    calls = _calls(log)
    assert set(calls) <= {symbol}
    if variant == "constant":
        assert calls == []
    elif variant in ONCE or variant == "cashews":
        assert calls == [symbol], variant
    else:
        assert 1 <= len(calls) <= CALLERS, variant


def test_bad_variants_are_refused() -> None:
    with pytest.raises(ValueError, match="no synchronous API"):
        make_wsgi("cashews", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="unknown variant 'memcached'"):
        make_asgi("memcached")
    with pytest.raises(ValueError, match="needs a coordinator socket path"):
        make_wsgi("mtcache")
    with pytest.raises(ValueError, match="needs a Redis URL"):
        make_asgi("redis_py")
