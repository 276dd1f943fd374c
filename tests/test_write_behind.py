"""write_mode="behind": a write is acknowledged once this host's coordinator holds it; Redis and the other
hosts follow, ordered with every other write by its stamp (issue 15, point 2).

Two "hosts" (coordinator processes) on one real redis-server. Waits are deadline-bounded polls; nothing
asserts on timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mtcache import AsyncClient, Client
from mtcache.coordinator.l2 import key_prefix
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer

DEADLINE = 30.0
RECORD = key_prefix("default") + "k:"

T = TypeVar("T")


def poll(check: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + DEADLINE
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE:g}s waiting for {what}")
        time.sleep(0.01)  # poll interval of a deadline-bounded wait


@pytest.fixture
def hosts(short_tmp: Path, redis_server: RedisServer) -> Iterator[tuple[CoordinatorProcess, CoordinatorProcess]]:
    a = CoordinatorProcess(short_tmp / "a.sock", redis_url=redis_server.url)
    b = CoordinatorProcess(short_tmp / "b.sock", redis_url=redis_server.url)
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def _record(redis_server: RedisServer, key: str) -> bytes | None:
    with redis_server.client() as r:
        data: Any = r.get(RECORD + key)
        return data


def test_a_write_behind_is_seen_by_the_host_at_once_and_reaches_redis_and_other_hosts(
    hosts: tuple[CoordinatorProcess, CoordinatorProcess], redis_server: RedisServer
) -> None:
    a, b = hosts
    with Client(a.socket_path, spawn=False, write_mode="behind") as writer, \
            Client(a.socket_path, spawn=False, near_capacity=0) as same_host, \
            Client(b.socket_path, spawn=False, near_capacity=0) as other_host:
        assert other_host.get("k") is None
        assert writer.set("k", {"v": 1}, ttl=60) is True
        assert same_host.get("k") == {"v": 1}  # this host holds it from the moment set returned
        poll(lambda: _record(redis_server, "k"), "the write-behind to reach Redis")
        poll(lambda: other_host.get("k") == {"v": 1}, "host B to serve the write")
        assert writer.delete("k") is True
        assert same_host.get("k") is None
        poll(lambda: other_host.get("k") is None, "host B to see the delete-behind")
        assert (_record(redis_server, "k") or b"").startswith(b"T")  # a tombstone
        assert writer.stats().coordinator["writes_behind"] == 2


def test_a_held_write_behind_never_replaces_a_newer_write_from_another_host(
    hosts: tuple[CoordinatorProcess, CoordinatorProcess], redis_server: RedisServer
) -> None:
    """A's write-behind is held (up to 1 s); B writes the key after it. A's write is older by stamp: once
    it lands, it changes nothing, and both hosts serve B's value."""
    a, b = hosts
    with Client(a.socket_path, spawn=False, write_mode="behind", write_behind_max_delay=1.0) as writer, \
            Client(a.socket_path, spawn=False, near_capacity=0) as host_a, \
            Client(b.socket_path, spawn=False, near_capacity=0) as host_b:
        assert writer.set("k", "from A") is True
        assert host_b.set("k", "from B") is True
        poll(lambda: host_a.get("k") == "from B", "host A to serve B's newer write")
        poll(lambda: _record(redis_server, "k") is not None and b"from B" in (_record(redis_server, "k") or b""),
             "Redis to hold B's write")
        # A's held write has been sent by now (its delay is past): Redis still holds B's
        poll(lambda: host_a.stats().coordinator["writes_superseded"] >= 1, "A's write-behind to be refused")
        assert host_a.get("k") == "from B" and host_b.get("k") == "from B"


def test_a_coordinator_that_stops_sends_its_held_writes_first(
    short_tmp: Path, redis_server: RedisServer
) -> None:
    a = CoordinatorProcess(short_tmp / "a.sock", redis_url=redis_server.url)
    a.start()
    try:
        with Client(a.socket_path, spawn=False, write_mode="behind", write_behind_max_delay=1.0) as writer:
            assert writer.set("k", "kept") is True
    finally:
        assert a.stop() == 0
    assert b"kept" in (_record(redis_server, "k") or b"")


async def test_the_async_client_writes_behind_too(
    hosts: tuple[CoordinatorProcess, CoordinatorProcess], redis_server: RedisServer
) -> None:
    a, _ = hosts
    async with AsyncClient(a.socket_path, spawn=False, write_mode="behind") as writer:
        assert await writer.set("k", [1, 2]) is True
        assert await writer.get("k") == [1, 2]
        poll(lambda: _record(redis_server, "k"), "the write-behind to reach Redis")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"write_mode": "sideways"}, "write_mode must be one of 'through', 'behind'"),
        ({"write_mode": "behind", "write_behind_max_delay": -1}, "write_behind_max_delay"),
        ({"write_behind_max_delay": 5}, "write_behind_max_delay"),
        ({"write_behind_max_delay": True}, "write_behind_max_delay"),
    ],
)
def test_bad_write_mode_arguments_are_refused_by_name(short_tmp: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Client(str(short_tmp / "none.sock"), spawn=False, **kwargs)
    with pytest.raises(ValueError, match=match):
        Client(local=True, **kwargs)
