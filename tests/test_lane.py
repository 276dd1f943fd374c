"""The L2 tier's lane: a batch sent from its caller's own call, replies in order, its bound, retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mtcache.config import Settings
from mtcache.coordinator.cache import CacheEngine
from mtcache.coordinator.l2 import L2Tier, WriteResult
from mtcache.coordinator.lane import Batch, Lane, _Replies
from mtcache.coordinator.stamps import HybridClock
from mtcache.errors import L2Error
from mtcache.protocol import Status
from mtcache.shm import VersionTable
from tests.redis_server import RedisServer

# short enough for the paused-Redis test, long enough for a loaded CI machine to answer a live Redis
BOUND = 1.0


@pytest.fixture
async def tier(redis_server: RedisServer) -> AsyncIterator[L2Tier]:
    tier = L2Tier(redis_server.url, "lane", timeout=BOUND / 2)
    yield tier
    await tier.aclose()


@pytest.fixture
def clock() -> HybridClock:
    return HybridClock(node=3)


def _lane(tier: L2Tier) -> Lane:
    lane = tier._lane
    assert isinstance(lane, Lane)
    return lane


async def _answer(tier: L2Tier, build: Any) -> Any:
    """What send_now hands its callback, awaited."""
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    tier.send_now("write", build, answer.set_result)
    return await answer


async def test_a_batch_is_written_from_its_callers_call_and_answered_later(tier: L2Tier, clock: HybridClock) -> None:
    assert not tier.can_send_now()  # no connection yet: the first batch opens it
    assert await tier.write("k", b"v1", 60, clock.now()) == WriteResult.STORED
    assert tier.can_send_now()
    lane = _lane(tier)
    tasks = asyncio.all_tasks()
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    tier.send_now("write", lambda pipe: tier.queue_write(pipe, "k", b"v2", 60, clock.now()), answer.set_result)
    pipe = lane._pipe
    assert isinstance(pipe, _Replies) and pipe.busy  # sent, its reply not read yet
    assert not answer.done() and not tier.can_send_now()
    assert asyncio.all_tasks() == tasks  # no task was started for it
    assert await answer == [WriteResult.REPLACED]
    assert tier.can_send_now()
    found = await tier.get("k")
    assert found is not None and found.value == b"v2"


async def test_batches_take_turns_in_the_order_they_come(tier: L2Tier, clock: HybridClock) -> None:
    assert await tier.write("k", b"v0", 60, clock.now()) == WriteResult.STORED
    first: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    tier.send_now("write", lambda pipe: pipe.command("SET", "plain", "1"), first.set_result)

    def setter(value: str) -> Any:
        batch = Batch()
        batch.command("SET", "plain", value)
        batch.command("GET", "plain")
        return _lane(tier).run(batch)

    replies = await asyncio.gather(*(setter(str(i)) for i in range(2, 7)))
    assert await first == [b"OK"]
    assert [reply[1] for reply in replies] == [b"2", b"3", b"4", b"5", b"6"]


async def test_a_batch_past_the_bound_fails_and_the_next_goes_on_a_new_connection(
    redis_server: RedisServer, tier: L2Tier, clock: HybridClock
) -> None:
    assert await tier.write("k", b"v1", 60, clock.now()) == WriteResult.STORED
    old = _lane(tier)._pipe
    redis_server.pause()
    try:
        outcome = await _answer(tier, lambda pipe: tier.queue_write(pipe, "k", b"v2", 60, clock.now()))
    finally:
        redis_server.resume()
    assert isinstance(outcome, L2Error) and "no answer within" in str(outcome)
    assert old is not None and not old.open  # its replies would be out of step
    assert await tier.write("k", b"v3", 60, clock.now()) in (WriteResult.REPLACED, WriteResult.STORED)
    assert _lane(tier)._pipe is not old
    found = await tier.get("k")
    assert found is not None and found.value == b"v3"


async def test_a_batch_on_a_connection_redis_dropped_is_sent_again_on_a_new_one(
    redis_server: RedisServer, tier: L2Tier, clock: HybridClock
) -> None:
    assert await tier.write("k", b"v1", 60, clock.now()) == WriteResult.STORED
    old = _lane(tier)._pipe
    redis_server.client().client_kill_filter(_type="normal")  # the lane has not heard of it yet
    assert tier.can_send_now()
    outcome = await _answer(tier, lambda pipe: tier.queue_write(pipe, "k", b"v2", 60, clock.now()))
    assert outcome == [WriteResult.REPLACED]
    assert _lane(tier)._pipe is not old


async def test_scripts_redis_forgot_go_again_as_eval(
    redis_server: RedisServer, tier: L2Tier, clock: HybridClock
) -> None:
    assert await tier.write("k", b"v1", 60, clock.now()) == WriteResult.STORED
    redis_server.client().script_flush()
    outcome = await _answer(tier, lambda pipe: tier.queue_write(pipe, "k", b"v2", 60, clock.now()))
    assert outcome == [WriteResult.REPLACED]


async def test_an_error_reply_fails_the_batch_with_an_l2_error_and_the_lane_goes_on(
    tier: L2Tier, clock: HybridClock
) -> None:
    assert await tier.write("k", b"v1", 60, clock.now()) == WriteResult.STORED
    outcome = await _answer(tier, lambda pipe: pipe.command("INCR", tier.key("k")))  # not an integer
    assert isinstance(outcome, L2Error) and "ResponseError" in str(outcome)
    assert tier.can_send_now()
    assert await tier.write("k", b"v2", 60, clock.now()) == WriteResult.REPLACED


async def test_closing_the_lane_lets_the_batch_in_flight_end(tier: L2Tier, clock: HybridClock) -> None:
    assert await tier.write("k", b"v1", 60, clock.now()) == WriteResult.STORED
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    tier.send_now("write", lambda pipe: tier.queue_write(pipe, "k", b"v2", 60, clock.now()), answer.set_result)
    await _lane(tier).aclose()
    assert answer.done() and answer.result() == [WriteResult.REPLACED]


# --- a worker's set and delete through the engine, without a task ----------------------------------------------

WAIT = 10.0  # the longest any awaited step may take (a bound against hangs, never a timing assertion)


@pytest.fixture
async def engine(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[CacheEngine]:
    """A started engine (its own version table) whose lane is open: one write went through it."""
    settings = Settings.load(redis_url=redis_server.url, namespace="lane", socket_path=str(tmp_path / "unused.sock"),
                             redis_timeout=BOUND / 2, environ={}, cwd=tmp_path)
    table = VersionTable.create(1024, directory=tmp_path)
    engine = CacheEngine(settings, table, L2Tier(redis_server.url, "lane", timeout=BOUND / 2))
    await engine.start()
    try:
        # the reader's first connection drops whatever L1 took in before it: let it happen first
        deadline = time.monotonic() + WAIT
        while engine.inval is None or not engine.inval.connected:
            assert time.monotonic() < deadline, "the stream reader did not connect"
            await asyncio.sleep(0.005)  # poll interval of a deadline-bounded wait
        assert (await engine.set("warm", b"w", 60.0))[0] == Status.OK
        assert engine.writes_now()
        yield engine
    finally:
        await engine.close()
        table.close()


def _l1(engine: CacheEngine, key: str) -> bytes | None:
    found = engine.local.peek(key)
    return None if found is None else found[0]


async def _l2(engine: CacheEngine, key: str) -> Any:
    assert engine.l2 is not None
    found = await engine.l2.get(key)
    return None if found is None else (None if found.tombstone else found.value)


async def test_a_set_is_held_in_l1_by_its_call_and_sent_without_a_task(engine: CacheEngine) -> None:
    assert engine.writes is not None
    tasks = asyncio.all_tasks()
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    engine.set_now("k", b"v", 60.0, [], reply=answer.set_result)
    assert _l1(engine, "k") == b"v"  # before the reply: a worker's next read on this host sees it
    assert not answer.done()
    await asyncio.sleep(0)  # the end of this loop turn: the write goes
    assert engine.writes._in_flight and not answer.done()
    assert asyncio.all_tasks() == tasks  # no task was started for it
    reply = await asyncio.wait_for(answer, WAIT)
    assert reply == [Status.OK, engine.local.version_of("k"), True]
    assert await _l2(engine, "k") == b"v"


async def test_the_writes_of_one_loop_turn_share_a_round_trip(engine: CacheEngine) -> None:
    assert engine.writes is not None
    before = engine.writes.batches
    answers = [asyncio.get_running_loop().create_future() for _ in range(5)]
    for i, answer in enumerate(answers):
        engine.set_now(f"k{i}", b"v", 60.0, [], reply=answer.set_result)
    replies = await asyncio.wait_for(asyncio.gather(*answers), WAIT)
    assert [reply[0] for reply in replies] == [Status.OK] * 5
    assert engine.writes.batches - before == 1


async def test_a_set_that_finds_the_lane_busy_goes_after_the_round_trip_in_flight(
    redis_server: RedisServer, engine: CacheEngine
) -> None:
    assert engine.l2 is not None and engine.writes is not None
    redis_server.pause()
    try:
        other = asyncio.ensure_future(engine.l2.pipeline("test", lambda pipe: pipe.command("PING")))
        await asyncio.sleep(0)  # the other caller's round trip is sent: the lane is busy
        assert not engine.l2.can_send_now()
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        engine.set_now("k", b"v", 60.0, [], reply=answer.set_result)
        await asyncio.sleep(0)
        assert engine.writes._task is not None  # it waits for its turn in a task
    finally:
        redis_server.resume()
    assert await asyncio.wait_for(other, WAIT) == [b"PONG"]
    assert (await asyncio.wait_for(answer, WAIT))[0] == Status.OK
    assert await _l2(engine, "k") == b"v"


async def test_a_set_that_another_host_overtook_is_dropped_from_l1(engine: CacheEngine) -> None:
    assert engine.l2 is not None
    other = HybridClock(node=99, wall_us=lambda: time.time_ns() // 1000 + 60_000_000)  # a minute ahead
    assert await engine.l2.write("k", b"theirs", 60.0, other.now()) == WriteResult.STORED
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    engine.set_now("k", b"mine", 60.0, [], reply=answer.set_result)
    assert (await asyncio.wait_for(answer, WAIT))[2] is False  # no near copy of it may be kept
    assert _l1(engine, "k") is None
    assert await _l2(engine, "k") == b"theirs"


async def test_a_set_whose_round_trip_fails_waits_in_the_backlog(
    redis_server: RedisServer, engine: CacheEngine
) -> None:
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    redis_server.pause()
    try:
        engine.set_now("k", b"v", 60.0, [], reply=answer.set_result)
        reply = await asyncio.wait_for(answer, WAIT)
        assert not engine.l2_up and len(engine.backlog) == 1
    finally:
        redis_server.resume()
    assert reply[0] == Status.OK and _l1(engine, "k") == b"v"


async def test_a_delete_is_dropped_from_l1_by_its_call_and_answered_later(engine: CacheEngine) -> None:
    assert (await engine.set("k", b"v", 60.0))[0] == Status.OK
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    engine.delete_now("k", reply=answer.set_result)
    assert _l1(engine, "k") is None
    assert await asyncio.wait_for(answer, WAIT) == [Status.OK, True]
    assert await _l2(engine, "k") is None


async def test_writes_that_come_while_one_is_in_flight_go_after_it(engine: CacheEngine) -> None:
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    engine.set_now("k", b"first", 60.0, [], reply=answer.set_result)
    later = await asyncio.wait_for(engine.set("k", b"second", 60.0), WAIT)  # queued, sent once the first is in
    assert answer.done() and answer.result()[2] is True and later[2] is True
    assert _l1(engine, "k") == b"second"
    assert await _l2(engine, "k") == b"second"


# --- a worker's L1 miss through the engine, without a task ------------------------------------------------------


async def test_an_l1_miss_is_read_from_l2_and_promoted_without_a_task(engine: CacheEngine, clock: HybridClock) -> None:
    assert engine.l2 is not None
    assert await engine.l2.write("k", b"v", 60.0, clock.now()) == WriteResult.STORED  # another host's write
    tasks = asyncio.all_tasks()
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    engine.get_miss_now("k", reply=answer.set_result)
    assert not answer.done()
    reply = await asyncio.wait_for(answer, WAIT)
    assert reply[:2] == [Status.OK, b"v"]
    assert _l1(engine, "k") == b"v"
    assert asyncio.all_tasks() == tasks


async def test_an_l1_miss_of_a_key_whose_write_is_on_its_way_is_a_miss(engine: CacheEngine) -> None:
    written: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    engine.set_now("k", b"v", 60.0, [], reply=written.set_result)
    engine.local.delete("k")  # as if L1 had evicted it at once: L2 may still hold what the write replaces
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    engine.get_miss_now("k", reply=answer.set_result)
    assert (await asyncio.wait_for(answer, WAIT))[0] == Status.MISS
    assert (await asyncio.wait_for(written, WAIT))[0] == Status.OK


async def test_an_l1_miss_of_a_record_with_tags_this_host_does_not_know_is_finished_by_a_task(
    engine: CacheEngine, clock: HybridClock
) -> None:
    assert engine.l2 is not None
    assert await engine.l2.write("k", b"v", 60.0, clock.now(), tags=["t"]) == WriteResult.STORED
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    engine.get_miss_now("k", reply=answer.set_result)
    assert (await asyncio.wait_for(answer, WAIT))[:2] == [Status.OK, b"v"]
    assert not engine.tag_stamps.unknown(("t",))


async def test_an_l1_miss_whose_round_trip_fails_is_a_miss_and_redis_counts_as_down(
    redis_server: RedisServer, engine: CacheEngine
) -> None:
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    redis_server.pause()
    try:
        engine.get_miss_now("k", reply=answer.set_result)
        reply = await asyncio.wait_for(answer, WAIT)
        assert not engine.l2_up
    finally:
        redis_server.resume()
    assert reply[0] == Status.MISS
