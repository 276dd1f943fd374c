"""Writes acknowledged while Redis did not answer are replayed when it does, so the
value Redis still held never comes back (review finding)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mtcache.config import Settings
from mtcache.coordinator.cache import CacheEngine
from mtcache.coordinator.l2 import L2Tier
from mtcache.protocol import Status
from mtcache.shm import VersionTable
from tests.redis_server import RedisServer

WAIT = 20.0


@pytest.fixture
async def engine(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[CacheEngine]:
    settings = Settings.load(
        redis_url=redis_server.url, socket_path=str(tmp_path / "x.sock"), environ={}, cwd=tmp_path,
        redis_timeout=0.2,
    )
    table = VersionTable.create(1024, directory=tmp_path)
    eng = CacheEngine(settings, table, L2Tier(redis_server.url, settings.namespace, timeout=0.2))
    await eng.start()
    try:
        yield eng
    finally:
        await eng.close()
        table.close()


async def _until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait


@pytest.mark.parametrize("write", ["delete", "set", "clear"])
async def test_a_write_made_while_redis_hung_is_replayed(
    engine: CacheEngine, redis_server: RedisServer, write: str
) -> None:
    await engine.set("k", b"OLD", 600)
    redis_server.pause()  # Redis keeps its data but stops answering
    try:
        if write == "delete":
            await engine.delete("k")
        elif write == "set":
            await engine.set("k", b"NEW", 600)
        else:
            await engine.clear()
        assert not engine.l2_up
        assert engine.backlog.covers("k")
        if write == "set":
            engine.store.delete("k")  # evicted meanwhile: the next read must not find OLD in Redis
        reply = await engine.get_miss("k")
        assert reply[0] == Status.MISS  # not OLD, although Redis has it
    finally:
        redis_server.resume()
    await _until(lambda: engine.l2_up, "Redis to be used again")
    assert not engine.backlog.covers("k")
    with redis_server.client() as r:
        stored = r.get(engine.l2.key("k")) if engine.l2 is not None else None  # type: ignore[union-attr]
    assert stored is None or b"OLD" not in stored
    reply = await engine.get_miss("k")
    assert reply[0] == Status.MISS or reply[1] != b"OLD"
