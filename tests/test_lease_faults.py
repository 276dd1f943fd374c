"""Leases under faults (issue 10): a Redis that refuses writes, a wait for another host's lease that
outlives the local lease TTL, a lost Redis lease on a local handover, fill notices that reach every
waiter, and version moves on every L1 change. Engines in one event loop, on a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mtcache.config import Settings
from mtcache.coordinator.cache import CacheEngine
from mtcache.coordinator.l2 import L2Tier
from mtcache.protocol import Status
from mtcache.shm import VersionTable
from tests.redis_server import RedisServer

WAIT = 20.0
TTL = 600.0
KEY = "k"

MakeEngine = Callable[..., Awaitable[CacheEngine]]


@pytest.fixture
async def make_engine(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[MakeEngine]:
    made: list[tuple[CacheEngine, VersionTable]] = []

    async def make(**settings: Any) -> CacheEngine:
        loaded = Settings.load(redis_url=redis_server.url, socket_path=str(tmp_path / "x.sock"), environ={},
                               cwd=tmp_path, redis_timeout=0.5, **settings)
        table = VersionTable.create(1024, directory=tmp_path)
        engine = CacheEngine(loaded, table, L2Tier(redis_server.url, loaded.namespace, timeout=0.5))
        made.append((engine, table))
        await engine.start()
        await _until(lambda: engine.inval is not None and engine.inval.connected, "the stream reader")
        return engine

    yield make
    for engine, table in reversed(made):
        await engine.close()
        table.close()


async def _until(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait


@pytest.mark.parametrize("refusal", ["oom", "client-pause-write"])
async def test_a_redis_that_refuses_writes_sends_the_lease_path_degraded_not_to_an_error(
    make_engine: MakeEngine, redis_server: RedisServer, refusal: str
) -> None:
    # review finding: DistributedLeases called redis-py directly; a refused SET NX raised a raw redis
    # exception, the server answered "ERROR internal", and workers treated the coordinator as gone
    engine = await make_engine()
    with redis_server.client() as r:
        if refusal == "oom":
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", 1)
        else:
            r.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
        try:
            reply = await asyncio.wait_for(engine.lease_miss("holder", KEY, 5.0), WAIT)
        finally:
            r.config_set("maxmemory", 0)
            if refusal != "oom":
                r.execute_command("CLIENT", "UNPAUSE")
    assert reply[0] == Status.GRANTED  # per-host lease: the caller computes
    assert engine.counters["l2_errors"] >= 1
    assert not engine.l2_up  # degraded, reconnecting
    fill = await engine.fill(KEY, reply[1], b"computed", TTL)
    assert fill[0] == Status.OK
    await _until(lambda: engine.l2_up, "Redis to be used again")


async def test_a_wait_for_another_hosts_lease_outlives_the_local_lease_ttl(make_engine: MakeEngine) -> None:
    # review finding: the local lease timer ran while the host waited for another host's Redis lease:
    # CacheTimeout after about the lease TTL although the caller allowed much longer
    a = await make_engine(lease_ttl=30.0)
    b = await make_engine(lease_ttl=0.5, lease_max=1.0, staleness_bound=0.5, tombstone_ttl=5.0)
    granted = await a.lease_miss("a-holder", KEY, 5.0)
    assert granted[0] == Status.GRANTED
    waiting = asyncio.create_task(b.lease_miss("b-holder", KEY, 10.0))
    await _until(lambda: b.counters["cross_host_lease_waits"] == 1, "B to wait for A")
    deadline = time.monotonic() + 1.5  # three lease TTLs of B
    while time.monotonic() < deadline:
        assert not waiting.done(), waiting.result()
        await asyncio.sleep(0.05)  # A computes meanwhile: B's caller allowed 10 s
    await a.fill(KEY, granted[1], b"computed", TTL)
    reply = await asyncio.wait_for(waiting, WAIT)
    assert reply[:2] == [Status.OK, b"computed"]
    assert b.leases.stats().expired == 0


async def test_a_local_handover_that_lost_the_redis_lease_takes_it_again(
    make_engine: MakeEngine, redis_server: RedisServer
) -> None:
    # review finding: the result of renew was ignored, so a new local holder computed without the
    # Redis lease while another host held it
    a, b = await make_engine(), await make_engine()
    first = await a.lease_miss("a1", KEY, 5.0)
    assert first[0] == Status.GRANTED
    second = asyncio.create_task(a.lease_miss("a2", KEY, 10.0))
    await _until(lambda: a.leases.stats().coalesced == 1, "a second caller on A")
    assert a.dist is not None and b.dist is not None
    with redis_server.client() as r:
        r.delete(a.dist.key(KEY))  # A's Redis lease expired...
    assert await b.dist.take(KEY)  # ... and B took it
    a.drop_connection("a1")  # A's holder dies: its local lease passes to a2
    await _until(lambda: a.counters["cross_host_lease_waits"] == 1, "a2 to wait for B instead of computing")
    assert not second.done()
    await b.dist.release(KEY)
    reply = await asyncio.wait_for(second, WAIT)
    assert reply[0] == Status.GRANTED  # now it holds the Redis lease again
    assert KEY in a.dist.held
    await a.fail(KEY, reply[1], "RuntimeError", "test over")


async def test_every_waiter_for_another_hosts_fill_is_woken(make_engine: MakeEngine) -> None:
    # review finding: a superseded waiter's cleanup removed the fill event of the waiter after it
    engine = await make_engine()
    dist = engine.dist
    assert dist is not None
    first = asyncio.create_task(dist.wait_for_fill(KEY, WAIT))
    second = asyncio.create_task(dist.wait_for_fill(KEY, WAIT))
    await asyncio.sleep(0)  # let both register
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    dist.filled(KEY)
    await asyncio.wait_for(second, 1.0)


async def test_every_change_to_an_l1_entry_moves_its_version(make_engine: MakeEngine) -> None:
    # review finding: a promotion or a fill could replace an L1 entry without a version bump
    engine = await make_engine()
    local = engine.local
    before = local.version_of(KEY)
    local.put(KEY, b"one", TTL, 1 << 32 | 1)
    after_first = local.version_of(KEY)
    local.put(KEY, b"two", TTL, 2 << 32 | 1)  # a promotion or fill over an entry
    assert before != after_first != local.version_of(KEY)
