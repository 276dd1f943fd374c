"""The stream helpers through the cache clients (they share the client's namespace
and settings, and talk to Redis directly)."""

from __future__ import annotations

import pytest

from mtcache import AsyncClient, Client
from tests.redis_server import RedisServer


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
