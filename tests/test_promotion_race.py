"""Promotions and fills that race with writes, constructed deterministically in one event loop.

Each test builds a :class:`~mtcache.coordinator.cache.CacheEngine` on a real version table and a real
redis-server, with an L2 tier whose ``get`` can be held after Redis answered: the test then runs what
the invalidation stream reader runs for another host's write (``engine._invalidated``), or a local write,
while the read is "in flight", releases the read, and checks what L1 (and a near copy made from the
reply) would serve. No sleeps: the tests wait on events, with bounds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mtcache.client.near import NearCache
from mtcache.config import Settings
from mtcache.coordinator.cache import CacheEngine
from mtcache.coordinator.l2 import Envelope, L2Tier
from mtcache.coordinator.stamps import HybridClock
from mtcache.errors import L2Error
from mtcache.protocol import Status
from mtcache.shm import VersionTable
from tests.redis_server import RedisServer

#: the longest any awaited step may take (a bound against hangs, never a timing assertion)
WAIT = 10.0
KEY = "race-key"
OLD, NEW, COMPUTED = b"old-value", b"new-value", b"computed-value"
TTL = 60.0
NAMESPACE = "race"


class HeldL2(L2Tier):
    """An L2 tier whose ``get`` can be held after Redis answered, before the caller sees the answer.

    :meth:`hold` arms it for the next ``get``: :attr:`in_flight` is set once Redis has answered, and the
    answer is returned only after :meth:`release`.
    """

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__(url, namespace, timeout=2.0)
        self._armed = False
        self._gate = asyncio.Event()
        self.in_flight = asyncio.Event()

    def hold(self) -> None:
        """Hold the next ``get`` (one only)."""
        self._armed = True
        self._gate.clear()
        self.in_flight.clear()

    def release(self) -> None:
        """Let the held ``get`` return what Redis answered."""
        self._gate.set()

    async def get(self, key: str) -> Envelope | None:
        found = await super().get(key)
        if self._armed:
            self._armed = False
            self.in_flight.set()
            await self._gate.wait()
        return found


Host = tuple[CacheEngine, HeldL2]


@pytest.fixture
async def make_host(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[Host]]]:
    """Builds started engines ("hosts": each its own version table and origin) on one redis-server;
    closes them and their tables at teardown."""
    made: list[tuple[CacheEngine, VersionTable]] = []

    async def make() -> Host:
        settings = Settings.load(
            redis_url=redis_server.url, namespace=NAMESPACE, socket_path=str(tmp_path / "unused.sock"),
            environ={}, cwd=tmp_path,
        )
        table = VersionTable.create(1024, directory=tmp_path)
        l2 = HeldL2(redis_server.url, NAMESPACE)
        engine = CacheEngine(settings, table, l2)
        made.append((engine, table))
        await engine.start()
        assert engine.l2_up, "Redis did not answer the engine's ping"
        # the reader's first connection drops whatever L1 took in before it: let it happen first
        await _until(lambda: engine.inval is not None and engine.inval.connected, "the stream reader to connect")
        return engine, l2

    yield make
    for engine, table in reversed(made):
        await engine.close()
        table.close()


async def _in_flight(l2: HeldL2) -> None:
    await asyncio.wait_for(l2.in_flight.wait(), WAIT)


async def _until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` in the event loop until it holds (fail after :data:`WAIT`)."""
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)  # poll interval of a deadline-bounded wait


def _near_would_serve(engine: CacheEngine, reply: list[Any]) -> bytes | None:
    """What a worker's near cache would serve after keeping the value a reply carries, as the client
    does (with the version in the reply), checked against the engine's version table now."""
    if reply[0] != Status.OK:
        return None
    near = NearCache(16, 1 << 20, 60.0)
    near.table = engine.table
    engine.table.beat()  # what the coordinator's sweeper does: a table that does not beat is not trusted
    near.put(KEY, reply[1], reply[1], reply[2], reply[3])
    served = near.get(KEY)
    return None if served is NearCache.MISSING else served


async def _l2_value(l2: L2Tier) -> bytes | None:
    found = await l2.get(KEY)
    return None if found is None or found.tombstone else found.value


def _l1_value(engine: CacheEngine) -> bytes | None:
    found = engine.local.peek(KEY)
    return None if found is None else found[0]


def _newer(engine: CacheEngine) -> int:
    """A stamp of another host, issued after everything ``engine`` stamped so far."""
    clock = HybridClock()
    clock.observe(engine.clock.now())
    return clock.now()


async def _old_value_in_l2(engine: CacheEngine, l2: L2Tier) -> None:
    """What another host wrote before the test: OLD in L2."""
    await l2.write(KEY, OLD, TTL, _newer(engine))


# -- a promotion (L2 hit copied into L1) racing with a write ---------------------------------------


async def _other_host_set(engine: CacheEngine, l2: L2Tier) -> None:
    # what another host's set does here: the new value is in L2, and the stream reader applies it
    stamp = _newer(engine)
    await l2.write(KEY, NEW, TTL, stamp)
    engine._invalidated(KEY, stamp)


async def _other_host_delete(engine: CacheEngine, l2: L2Tier) -> None:
    stamp = _newer(engine)
    await l2.write(KEY, None, TTL, stamp)
    engine._invalidated(KEY, stamp)


async def _other_host_clear(engine: CacheEngine, l2: L2Tier) -> None:
    stamp = _newer(engine)
    await l2.pipeline("clear", lambda pipe: l2.queue_raise_floor(pipe, stamp))
    await l2.purge(stamp)
    engine._cleared_elsewhere(stamp)


async def _local_set(engine: CacheEngine, l2: L2Tier) -> None:
    await engine.set(KEY, NEW, TTL)


async def _local_delete(engine: CacheEngine, l2: L2Tier) -> None:
    await engine.delete(KEY)


#: race -> (the write, what L1 holds after it, what the key's value is after it)
RACES = {
    "other-host-set": (_other_host_set, None, NEW),
    "other-host-delete": (_other_host_delete, None, None),
    "other-host-clear": (_other_host_clear, None, None),
    "local-set": (_local_set, NEW, NEW),
    "local-delete": (_local_delete, None, None),
}


@pytest.mark.parametrize("race", list(RACES))
async def test_promotion_racing_a_write_never_leaves_the_old_value(
    make_host: Callable[[], Awaitable[Host]], race: str
) -> None:
    write, in_l1, current = RACES[race]
    engine, l2 = await make_host()
    await _old_value_in_l2(engine, l2)
    l2.hold()
    read = asyncio.create_task(engine.get_miss(KEY))
    await _in_flight(l2)  # Redis answered OLD; the engine has not seen it yet
    await write(engine, l2)
    l2.release()
    reply = await asyncio.wait_for(read, WAIT)
    assert _l1_value(engine) == in_l1
    assert _near_would_serve(engine, reply) in (current, None)
    assert await _l2_value(l2) == current
    # and the next read serves the state after the write, never OLD
    later = engine.get_l1(KEY) or await engine.get_miss(KEY)
    assert (later[1] if later[0] == Status.OK else None) == current


async def test_promotion_without_a_race_is_kept(make_host: Callable[[], Awaitable[Host]]) -> None:
    # the control: the same held read with no write in between does promote (so the tests above
    # would see OLD in L1 if the version check were missing)
    engine, l2 = await make_host()
    await _old_value_in_l2(engine, l2)
    l2.hold()
    read = asyncio.create_task(engine.get_miss(KEY))
    await _in_flight(l2)
    l2.release()
    reply = await asyncio.wait_for(read, WAIT)
    assert reply[:2] == [Status.OK, OLD]
    assert _l1_value(engine) == OLD
    assert engine.counters["promotions"] == 1
    assert _near_would_serve(engine, reply) == OLD


async def test_lease_holder_read_racing_an_invalidation_is_not_promoted(
    make_host: Callable[[], Awaitable[Host]],
) -> None:
    engine, l2 = await make_host()
    await _old_value_in_l2(engine, l2)
    l2.hold()
    holder = object()
    lease = asyncio.create_task(engine.lease_miss(holder, KEY, WAIT))
    await _in_flight(l2)
    await _other_host_delete(engine, l2)
    l2.release()
    reply = await asyncio.wait_for(lease, WAIT)
    assert _l1_value(engine) is None
    assert reply[0] == Status.GRANTED  # the key is gone everywhere: the caller computes
    await engine.fail(KEY, reply[1], "RuntimeError", "test over")


async def test_invalidation_from_the_stream_during_a_read_is_not_promoted(
    make_host: Callable[[], Awaitable[Host]],
) -> None:
    # the same race, with the invalidation delivered by the real stream reader from another engine
    engine, l2 = await make_host()
    other, _ = await make_host()
    await _old_value_in_l2(engine, l2)
    assert engine.inval is not None
    await _until(lambda: engine.inval is not None and engine.inval.connected, "the stream reader")
    applied = engine.inval.counters["invalidations_applied"]
    l2.hold()
    read = asyncio.create_task(engine.get_miss(KEY))
    await _in_flight(l2)
    await other.set(KEY, NEW, TTL)
    await _until(lambda: engine.inval is not None and engine.inval.counters["invalidations_applied"] > applied,
                 "the other host's set to arrive through the stream")
    l2.release()
    reply = await asyncio.wait_for(read, WAIT)
    assert _l1_value(engine) != OLD
    assert _near_would_serve(engine, reply) != OLD
    assert (await engine.get_miss(KEY))[1] == NEW


# -- a fill (a computed value) racing with a write ------------------------------------------------


async def test_fill_after_an_invalidation_is_discarded_and_l2_keeps_the_newer_value(
    make_host: Callable[[], Awaitable[Host]],
) -> None:
    engine, l2 = await make_host()
    granted = await engine.lease_miss(object(), KEY, WAIT)
    assert granted[0] == Status.GRANTED
    token = granted[1]
    await _other_host_set(engine, l2)  # while the holder computes, another host sets NEW
    reply = await engine.fill(KEY, token, COMPUTED, TTL)
    assert reply[0] == Status.OK and reply[2] is False  # not stored
    assert engine.counters["fills_discarded"] == 1
    assert _l1_value(engine) is None
    assert await _l2_value(l2) == NEW
    assert (await engine.get_miss(KEY))[1] == NEW


@pytest.mark.parametrize("newer", [NEW, None], ids=["set", "delete"])
async def test_fill_never_overwrites_a_newer_l2_value(
    make_host: Callable[[], Awaitable[Host]], newer: bytes | None
) -> None:
    # another host's set (or delete) reached L2 but its invalidation has not reached us yet: our fill
    # carries the stamp of its grant, older than that write, so Redis keeps the newer record and our
    # L1 does not keep the fill either; the invalidation, when it comes, changes nothing more
    engine, l2 = await make_host()
    granted = await engine.lease_miss(object(), KEY, WAIT)
    assert granted[0] == Status.GRANTED
    stamp = _newer(engine)
    await l2.write(KEY, newer, TTL, stamp)
    reply = await engine.fill(KEY, granted[1], COMPUTED, TTL)
    assert reply[0] == Status.OK and reply[2] is False
    assert await _l2_value(l2) == newer
    assert _l1_value(engine) is None
    engine._invalidated(KEY, stamp)
    assert _l1_value(engine) is None
    found = await engine.get_miss(KEY)
    assert (found[1] if found[0] == Status.OK else None) == newer


@pytest.mark.parametrize("race", ["other-host-set", "local-delete"])
async def test_waiters_of_a_discarded_fill_cannot_near_cache_the_stale_value(
    make_host: Callable[[], Awaitable[Host]], race: str
) -> None:
    engine, l2 = await make_host()
    granted = await engine.lease_miss("holder", KEY, WAIT)
    assert granted[0] == Status.GRANTED
    waiter = asyncio.create_task(engine.lease_miss("waiter", KEY, WAIT))
    await _until(lambda: engine.leases.stats().coalesced == 1, "the waiter to queue on the lease")
    write = RACES[race][0]
    await write(engine, l2)  # the holder computed from the state before this write
    await engine.fill(KEY, granted[1], COMPUTED, TTL)
    reply = await asyncio.wait_for(waiter, WAIT)
    assert engine.counters["fills_discarded"] == 1
    # the waiter may return COMPUTED to its caller, but must not keep serving it after the write
    assert _near_would_serve(engine, reply) != COMPUTED


# -- the cross-host lease racing with another host's fill ------------------------------------------


async def test_lease_taken_after_another_hosts_fill_serves_that_fill(
    make_host: Callable[[], Awaitable[Host]],
) -> None:
    a, _ = await make_host()
    b, b_l2 = await make_host()
    granted = await a.lease_miss("a-holder", KEY, WAIT)
    assert granted[0] == Status.GRANTED
    assert a.counters["redis_leases_taken"] == 1
    b_l2.hold()
    b_lease = asyncio.create_task(b.lease_miss("b-holder", KEY, WAIT))
    await _in_flight(b_l2)  # B's L2 read missed; B has not acted on it yet
    await a.fill(KEY, granted[1], COMPUTED, TTL)  # A's value is in L2, its Redis lease released
    b_l2.release()
    reply = await asyncio.wait_for(b_lease, WAIT)
    if reply[0] == Status.GRANTED:
        await b.fail(KEY, reply[1], "RuntimeError", "test over")
    assert reply[:2] == [Status.OK, COMPUTED]  # B must not compute again
    # a lease B took only to find A's fill is not counted as one taken to compute (CI saw 2 for 1 compute)
    assert b.counters["redis_leases_taken"] == 0


@pytest.mark.parametrize("write", ["delete", "clear"])
async def test_read_while_a_local_delete_is_on_its_way_to_redis_is_not_promoted(
    make_host: Callable[[], Awaitable[Host]], monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    # found by bench/peers.py (W2 stale reads): a delete bumps the version at once but
    # reaches Redis one round trip later; a read missing L1 in between found the old
    # value in L2, saw an unchanged version and promoted it for good
    engine, l2 = await make_host()
    await engine.set(KEY, OLD, TTL)
    gate = asyncio.Event()
    entered = asyncio.Event()
    pipeline = l2.pipeline

    async def held_pipeline(op: str, build: Callable[[Any], None]) -> list[Any]:
        entered.set()
        await gate.wait()
        return await pipeline(op, build)

    monkeypatch.setattr(l2, "pipeline", held_pipeline)
    monkeypatch.setattr(l2, "can_send_now", lambda: False)  # every write goes through pipeline, held here
    pending = asyncio.create_task(engine.delete(KEY) if write == "delete" else engine.clear())
    await asyncio.wait_for(entered.wait(), WAIT)
    assert await _l2_value(l2) == OLD  # Redis still holds the old value
    reply = await engine.get_miss(KEY)
    assert reply[0] == Status.MISS
    assert _l1_value(engine) is None
    gate.set()
    await asyncio.wait_for(pending, WAIT)
    assert await _l2_value(l2) is None
    assert engine.get_l1(KEY) is None




@pytest.mark.parametrize("sent_from", ["a task", "a callback"])
async def test_read_as_a_local_delete_fails_to_reach_redis_is_not_promoted(
    make_host: Callable[[], Awaitable[Host]], monkeypatch: pytest.MonkeyPatch, sent_from: str
) -> None:
    # found by the chaos checker (short, seed 14, maxmemory_noeviction): a delete whose Redis write
    # failed went to the backlog only when its own task resumed, one loop turn after the write
    # queue had released the key; a read missing L1 in that turn found the old value in L2 and
    # promoted it, so the host served what it had just deleted
    engine, l2 = await make_host()
    await engine.set(KEY, OLD, TTL)
    readers: list[asyncio.Task[Any]] = []

    async def failing_pipeline(op: str, build: Callable[[Any], None]) -> list[Any]:
        readers.append(asyncio.get_running_loop().create_task(engine.get_miss(KEY)))  # runs before delete resumes
        raise L2Error("injected: OOM command not allowed when used memory > 'maxmemory'")

    def failing_send_now(op: str, build: Callable[[Any], None], done: Callable[[Any], None]) -> None:
        readers.append(asyncio.get_running_loop().create_task(engine.get_miss(KEY)))
        asyncio.get_running_loop().call_soon(done, L2Error("injected: OOM command not allowed"))

    monkeypatch.setattr(l2, "pipeline", failing_pipeline)
    monkeypatch.setattr(l2, "send_now", failing_send_now)
    monkeypatch.setattr(l2, "can_send_now", lambda: sent_from == "a callback")
    await asyncio.wait_for(engine.delete(KEY), WAIT)
    reply = await asyncio.wait_for(readers[0], WAIT)
    assert reply[0] == Status.MISS
    assert engine.get_l1(KEY) is None
    assert await _l2_value(l2) == OLD  # the delete waits in the backlog
