"""Writes acknowledged while Redis did not answer: kept as writes, replayed with the conditional
script, so an outage never loses an acknowledged write and never undoes a newer one (issue 10)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mtcache.config import Settings
from mtcache.coordinator.backlog import Write, WriteBacklog
from mtcache.coordinator.cache import CacheEngine
from mtcache.coordinator.l2 import L2Tier
from mtcache.errors import L2Error
from mtcache.protocol import Status
from mtcache.shm import VersionTable
from tests.redis_server import RedisServer

WAIT = 20.0
TTL = 600.0

MakeEngine = Callable[..., Awaitable[CacheEngine]]


@pytest.fixture
async def make_engine(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[MakeEngine]:
    """Started engines ("hosts") on one redis-server; closed at teardown."""
    made: list[tuple[CacheEngine, VersionTable]] = []

    async def make(**settings: Any) -> CacheEngine:
        loaded = Settings.load(
            redis_url=redis_server.url, socket_path=str(tmp_path / "x.sock"), environ={}, cwd=tmp_path,
            redis_timeout=0.2, **settings,
        )
        table = VersionTable.create(1024, directory=tmp_path)
        engine = CacheEngine(loaded, table, L2Tier(redis_server.url, loaded.namespace, timeout=0.2))
        made.append((engine, table))
        await engine.start()
        await _until(lambda: engine.inval is not None and engine.inval.connected, "the stream reader")
        return engine

    yield make
    for engine, table in reversed(made):
        await engine.close()
        table.close()


@pytest.fixture
async def engine(make_engine: MakeEngine) -> CacheEngine:
    return await make_engine()


async def _until(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait


def _l1(engine: CacheEngine, key: str) -> bytes | None:
    found = engine.local.peek(key)
    return None if found is None else found[0]


async def _read(engine: CacheEngine, key: str) -> bytes | None:
    reply = engine.get_l1(key) or await engine.get_miss(key)
    return reply[1] if reply[0] == Status.OK else None


async def _in_redis(engine: CacheEngine, key: str) -> bytes | None:
    assert engine.l2 is not None
    found = await engine.l2.get(key)
    return None if found is None or found.tombstone else found.value


class Outage:
    """Cuts one engine off Redis (its own link, not Redis itself: other engines go on) until :meth:`heal`."""

    def __init__(self, engine: CacheEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine = engine
        self.healed = asyncio.Event()
        assert engine.l2 is not None
        ping = engine.l2.ping

        async def cut_ping() -> bool:
            return await ping() if self.healed.is_set() else False

        monkeypatch.setattr(engine.l2, "ping", cut_ping)
        engine.l2_failed(L2Error("the link is cut (test)"))

    def heal(self) -> None:
        self.healed.set()


@pytest.mark.parametrize("write", ["delete", "set", "clear"])
async def test_a_write_made_while_redis_hung_is_replayed(
    engine: CacheEngine, redis_server: RedisServer, write: str
) -> None:
    await engine.set("k", b"OLD", TTL)
    redis_server.pause()  # Redis keeps its data but stops answering
    try:
        if write == "delete":
            await engine.delete("k")
        elif write == "set":
            await engine.set("k", b"NEW", TTL)
        else:
            await engine.clear()
        assert not engine.l2_up
        assert engine.backlog.covers("k")
        if write == "set":
            engine.local.delete("k")  # evicted meanwhile: the next read must not find OLD in Redis
        reply = await engine.get_miss("k")
        assert reply[0] == Status.MISS  # not OLD, although Redis has it
    finally:
        redis_server.resume()
    await _until(lambda: engine.l2_up, "Redis to be used again")
    assert not engine.backlog.covers("k")
    expected = b"NEW" if write == "set" else None
    assert await _in_redis(engine, "k") == expected  # the write itself was kept, not a pointer into L1
    assert await _read(engine, "k") == expected


async def test_an_outage_replay_never_undoes_another_hosts_newer_write(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await make_engine(), await make_engine()
    await a.set("k1", b"before", TTL)
    outage = Outage(a, monkeypatch)
    await a.set("k1", b"A-outage", TTL)  # acknowledged by A while cut off
    await a.set("k2", b"A-only", TTL)
    b.clock.observe(a.clock.now())  # B's write comes after A's (as it would a moment later)
    await b.set("k1", b"B-newer", TTL)
    # A's reader still hears B here (only A's writes are cut off): A drops its older write, and
    # never serves what it replaced
    assert await _read(a, "k1") in (b"A-outage", None)
    outage.heal()
    await _until(lambda: a.l2_up, "A to replay and use Redis again")
    assert a.counters["writes_superseded"] == 1
    assert await _in_redis(a, "k1") == b"B-newer"
    assert await _in_redis(a, "k2") == b"A-only"
    assert _l1(a, "k1") is None  # A's older write lost: A dropped it from L1
    assert await _read(a, "k1") == b"B-newer"
    assert await _read(a, "k2") == b"A-only"


async def test_an_outage_write_newer_than_another_hosts_write_wins_the_replay(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await make_engine(), await make_engine()
    await b.set("k", b"B-older", TTL)
    outage = Outage(a, monkeypatch)
    a.clock.observe(b.clock.now())
    await a.set("k", b"A-newer", TTL)
    outage.heal()
    await _until(lambda: a.l2_up, "A to replay")
    assert await _in_redis(b, "k") == b"A-newer"
    await _until(lambda: _l1(b, "k") is None, "B to drop its older copy through the stream")
    assert await _read(b, "k") == b"A-newer"


async def test_a_write_made_while_its_replay_is_in_flight_is_not_lost(
    engine: CacheEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # review finding: the key was removed from the backlog after its replay batch returned, also when
    # a newer write of it had been recorded meanwhile
    outage = Outage(engine, monkeypatch)
    await engine.delete("k")
    assert engine.writes is not None
    gate, entered = asyncio.Event(), asyncio.Event()
    write = engine.writes.write

    async def held_write(key: str | None, build: Callable[[Any], None]) -> list[Any]:
        if not gate.is_set():
            entered.set()
            await gate.wait()
        return await write(key, build)

    monkeypatch.setattr(engine.writes, "write", held_write)
    outage.heal()
    await asyncio.wait_for(entered.wait(), WAIT)  # the replay of the delete is in flight
    await engine.set("k", b"NEWER", TTL)  # Redis is still not in use: this goes to the backlog
    gate.set()
    await _until(lambda: engine.l2_up, "the replay to finish")
    assert await _in_redis(engine, "k") == b"NEWER"
    assert await _read(engine, "k") == b"NEWER"


async def test_writes_after_a_clear_during_an_outage_reach_redis(
    engine: CacheEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # review finding: a clear during an outage made every later outage write never reach Redis
    await engine.set("old", b"1", TTL)
    outage = Outage(engine, monkeypatch)
    await engine.set("before-clear", b"2", TTL)
    await engine.clear()
    await engine.set("after-clear", b"3", TTL)
    outage.heal()
    await _until(lambda: engine.l2_up, "the replay")
    assert await _in_redis(engine, "old") is None
    assert await _in_redis(engine, "before-clear") is None
    assert await _in_redis(engine, "after-clear") == b"3"


async def test_an_overflowing_backlog_clears_the_namespace_on_every_host(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await make_engine(backlog_max_bytes=4096), await make_engine()
    await b.set("elsewhere", b"kept?", TTL)
    assert await _read(a, "elsewhere") == b"kept?"
    outage = Outage(a, monkeypatch)
    for i in range(40):
        await a.set(f"k{i}", b"x" * 200, TTL)
    assert a.backlog.overflowed
    assert a.backlog.dropped > 0
    assert any("overflowed" in w for w in a.health()["warnings"])
    outage.heal()
    await _until(lambda: a.l2_up, "the replay")
    assert a.counters["backlog_overflows"] == 1
    # nobody serves a value older than the clear: not what A wrote, not what B had
    assert await _in_redis(a, "k0") is None
    assert await _in_redis(a, "elsewhere") is None
    assert await _read(a, "k39") is None
    await _until(lambda: _l1(b, "elsewhere") is None, "B to apply the clear")


async def test_the_staleness_drop_keeps_this_hosts_own_outage_writes(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # finding: the staleness drop emptied L1, and the host served None for its own acknowledged write
    engine = await make_engine(staleness_bound=0.3, lease_ttl=0.1, lease_max=0.2, tombstone_ttl=1.0)
    await engine.set("theirs", b"promoted", TTL)
    engine.backlog.reset()
    Outage(engine, monkeypatch)
    await engine.set("mine", b"acknowledged", TTL)
    assert engine.inval is not None
    engine.inval.last_ok = time.monotonic() - 1.0  # the reader has not heard from Redis for longer than the bound
    engine.sweep()
    assert engine.counters["staleness_drops"] == 1
    assert _l1(engine, "theirs") is None  # could be stale: dropped
    assert _l1(engine, "mine") == b"acknowledged"  # its own write, waiting to be replayed: kept


def test_the_backlog_keeps_the_newest_write_per_key_and_is_bounded_by_bytes() -> None:
    backlog = WriteBacklog(max_bytes=1000)
    backlog.add(Write("k", b"1", 60, stamp=10))
    backlog.add(Write("k", b"2", 60, stamp=20))
    backlog.add(Write("k", b"late", 60, stamp=15))  # older than what it holds: ignored
    assert [w.value for w in backlog.batch(10)] == [b"2"]
    assert backlog.holds("k", 20) and not backlog.holds("k", 10)
    first = backlog.batch(10)[0]
    backlog.add(Write("k", None, 60, stamp=30))
    backlog.done(first)  # replayed, but a newer write came meanwhile: that one stays
    assert backlog.covers("k") and backlog.holds("k", 30)
    backlog.add(Write("", None, 60, stamp=40, clear=True))
    assert not backlog.holds("k", 30) and backlog.clear is not None  # a clear supersedes what came before
    backlog.add(Write("big", b"x" * 2000, 60, stamp=50))
    assert backlog.overflowed and backlog.covers("anything")
    assert backlog.dropped >= 1


async def test_redis_failing_again_while_the_reconnect_finishes_is_reconnected_too(
    engine: CacheEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # found by the chaos checker (seed 9): Redis refused a write (maxmemory) while the reconnect task
    # was past its loop, inspecting Redis; l2_failed saw that task still running and started none,
    # and the coordinator served L1 only, its writes backlogged, until it was stopped
    inspect = engine._inspect_redis
    failed_again = False

    async def fails_meanwhile() -> None:
        nonlocal failed_again
        if not failed_again:
            failed_again = True
            engine.l2_failed(L2Error("OOM command not allowed when used memory > 'maxmemory' (test)"))
        await inspect()

    monkeypatch.setattr(engine, "_inspect_redis", fails_meanwhile)
    engine.l2_failed(L2Error("the link is cut (test)"))
    await _until(lambda: failed_again, "the reconnect to inspect Redis")
    await _until(lambda: engine.l2_up, "Redis to be used again")
    await engine.set("k", b"NEW", TTL)
    assert await _in_redis(engine, "k") == b"NEW"
    assert not engine.backlog
    assert all(end is not None for _start, end in engine.down_periods)
