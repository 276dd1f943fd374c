"""The write queue over a real redis-server: the writes of a loop turn are sent at its end from a callback,
not a task, writes that come meanwhile follow them in order, and a write is settled, its key released, once
Redis has run it or failed, whatever happens to its caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mtcache.coordinator.l2 import Batch, L2Tier, WriteResult
from mtcache.coordinator.stamps import HybridClock
from mtcache.coordinator.writes import WriteQueue
from mtcache.errors import L2Error
from tests.redis_server import RedisServer

# long enough for a loaded CI machine to answer a live Redis
TIMEOUT = 1.0


@pytest.fixture
async def tier(redis_server: RedisServer) -> AsyncIterator[L2Tier]:
    tier = L2Tier(redis_server.url, "wq", timeout=TIMEOUT)
    yield tier
    await tier.aclose()


def _write(tier: L2Tier, key: str, value: bytes, stamp: int) -> tuple[str, object]:
    def build(pipe: Batch) -> None:
        tier.queue_write(pipe, key, value, 60.0, stamp)

    return key, build


async def test_a_lone_write_is_sent_from_a_callback_not_a_task(tier: L2Tier) -> None:
    queue = WriteQueue(tier)
    clock = HybridClock(node=3)
    assert await queue.write(*_write(tier, "warm", b"w", clock.now())) == [WriteResult.STORED]  # opens the lane
    queue._task = None
    key, build = _write(tier, "k", b"v1", clock.now())
    replies = await queue.write(key, build)
    assert replies == [WriteResult.STORED]
    assert queue._task is None  # no task was started for it
    assert not queue.busy("k")
    found = await tier.get("k")
    assert found is not None and found.value == b"v1"


async def test_a_write_waits_for_the_requests_that_came_with_it(tier: L2Tier) -> None:
    # two requests of one loop turn: the first to run sees the other yet to start, so it does not lead, and
    # the flush task sends both in one round trip
    queue = WriteQueue(tier)
    clock = HybridClock(node=3)
    asked = []
    queue.others_waiting = lambda: not asked and not asked.append(True)  # True the first time only
    first = asyncio.ensure_future(queue.write(*_write(tier, "a", b"v1", clock.now())))
    second = asyncio.ensure_future(queue.write(*_write(tier, "b", b"w1", clock.now())))
    assert await first == [WriteResult.STORED] and await second == [WriteResult.STORED]
    assert queue.batches == 1  # one round trip carried both


async def test_writes_that_come_during_a_leaders_round_trip_follow_it_in_order(tier: L2Tier) -> None:
    queue = WriteQueue(tier)
    clock = HybridClock(node=3)
    stamps = [clock.now() for _ in range(12)]
    leader = asyncio.ensure_future(queue.write(*_write(tier, "k", b"v0", stamps[0])))
    await asyncio.sleep(0)  # the leader sends its round trip; the others queue behind it
    assert queue.busy("k")
    followers = [asyncio.ensure_future(queue.write(*_write(tier, "k", f"v{i}".encode(), stamps[i])))
                 for i in range(1, 12)]
    results = await asyncio.gather(leader, *followers)
    # a write that reached Redis after a newer one of its key would answer OLDER
    assert [r[0] for r in results] == [WriteResult.STORED] + [WriteResult.REPLACED] * 11
    assert queue.batches < 12  # the followers shared round trips
    found = await tier.get("k")
    assert found is not None and found.value == b"v11"
    assert not queue.busy("k")


async def test_a_write_whose_caller_is_cancelled_still_goes_and_keeps_its_key_busy_until_it_has(
    redis_server: RedisServer, tier: L2Tier
) -> None:
    queue = WriteQueue(tier)
    clock = HybridClock(node=3)
    await queue.write(*_write(tier, "k", b"v0", clock.now()))
    redis_server.pause()
    try:
        first = asyncio.ensure_future(queue.write(*_write(tier, "k", b"v1", clock.now())))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # its round trip is sent
        assert queue._in_flight
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert queue.busy("k")  # Redis may yet run it: L2 cannot be read for this key
        follower = asyncio.ensure_future(queue.write(*_write(tier, "j", b"w1", clock.now())))
    finally:
        redis_server.resume()
    assert (await follower) == [WriteResult.STORED]
    assert not queue.busy("k")
    found = await tier.get("k")
    assert found is not None and found.value == b"v1"


async def test_a_failed_leader_is_told_before_its_key_is_released(redis_server: RedisServer, tier: L2Tier) -> None:
    queue = WriteQueue(tier)
    clock = HybridClock(node=3)
    busy_when_told: list[bool] = []
    redis_server.kill()
    key, build = _write(tier, "k", b"v1", clock.now())
    with pytest.raises(L2Error):
        await queue.write(key, build, failed=lambda exc: busy_when_told.append(queue.busy("k")))
    assert busy_when_told == [True]
    assert not queue.busy("k")
