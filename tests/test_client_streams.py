"""The stream helpers through the cache clients (they share the client's namespace
and settings, and talk to Redis directly)."""

from __future__ import annotations

import time

import pytest
import redis

from mtcache import AsyncClient, Client
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def test_client_publishes_and_reads_under_its_namespace(redis_server: RedisServer, short_tmp) -> None:
    with Client(str(short_tmp / "none.sock"), spawn=False, namespace="ticks", redis_url=redis_server.url) as c:
        first = c.publish_to_stream("prices", {"sym": "ACME", "px": 1.5})
        c.publish_to_stream("prices", {"sym": "ACME", "px": 1.6})
        latest = c.read_stream_latest("prices", count=1)
        assert latest[0][1] == {"sym": "ACME", "px": "1.6"}
        assert [e[0] for e in c.read_stream("prices", last_id=first)] == [latest[0][0]]
        assert c.create_consumer_group("prices", "g", start_id="0") is True
        assert c.create_consumer_group("prices", "g", start_id="0") is False
        got = c.read_group("prices", "g", "w1", count=10)
        assert len(got) == 2
        assert c.ack("prices", "g", *(e[0] for e in got)) == 2
        with redis_server.client() as r:
            assert r.xlen("mtcache:ticks:stream:prices") == 2
        with pytest.raises(TypeError, match="px"):
            c.publish_to_stream("prices", {"px": [1]})  # type: ignore[dict-item]


async def test_async_client_streams(redis_server: RedisServer, short_tmp) -> None:
    async with AsyncClient(str(short_tmp / "none.sock"), spawn=False, redis_url=redis_server.url) as c:
        entry_id = await c.publish_to_stream("s", {"a": "1"}, maxlen=5, approximate=False)
        assert (await c.read_stream_latest("s"))[0][0] == entry_id
        assert await c.read_stream("s", last_id="$", block_ms=50) == []


def test_blocking_stream_read_does_not_delay_cache_calls_on_the_same_client(
    coordinator: CoordinatorProcess,
) -> None:
    import threading

    with Client(coordinator.socket_path, spawn=False, redis_url=coordinator.redis_url) as c:
        c.publish_to_stream("s", {"a": "0"})
        order: list[str] = []
        blocked = threading.Thread(target=lambda: (c.read_stream("s", block_ms=2000), order.append("read")))
        blocked.start()
        with redis_client(coordinator.redis_url) as r:  # wait until Redis shows the read blocked
            deadline = time.monotonic() + 10
            while not any(client.get("cmd") == "xread" for client in r.client_list()):
                assert time.monotonic() < deadline, "the stream read never blocked"
                time.sleep(0.005)  # poll interval of a deadline-bounded wait
        for i in range(50):
            c.set(f"k{i}", i)
            assert c.get(f"k{i}") == i
        order.append("cache calls")
        blocked.join(timeout=10)
        assert order == ["cache calls", "read"]
