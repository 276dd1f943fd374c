"""Tags (issue 13): ``invalidate_tags`` makes every entry carrying a tag a miss on every tier and
host, at once here and within the propagation bound elsewhere, also for a coordinator that never
saw the invalidation (the tag's stamp lives in Redis), and a computation that began before it is
not stored. Real coordinators and redis-server."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mtcache import Client
from tests.coordinator_proc import CoordinatorProcess
from tests.handles import Handle
from tests.redis_server import RedisServer
from tests.test_cross_host import poll, wait_reader_connected


@pytest.fixture(params=["sync", "async"])
async def handle(request: pytest.FixtureRequest, coordinator: CoordinatorProcess) -> AsyncIterator[Handle]:
    h = Handle(str(request.param), coordinator.socket_path)
    yield h
    await h.close()


@pytest.fixture
def start_host(short_tmp: Path, redis_server: RedisServer) -> Iterator[Callable[[str], Client]]:
    """Starts a coordinator named ``name`` on the test's redis-server; a client on it."""
    procs: list[CoordinatorProcess] = []
    clients: list[Client] = []

    def start(name: str) -> Client:
        proc = CoordinatorProcess(short_tmp / f"{name}.sock", redis_url=redis_server.url)
        proc.start()
        procs.append(proc)
        wait_reader_connected(proc)
        client = Client(proc.socket_path, spawn=False)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for proc in procs:
        proc.stop()


async def test_invalidating_a_tag_kills_its_entries_here_at_once(handle: Handle) -> None:
    await handle.set("user:1", "ada", tags=["users"])
    await handle.set("user:2", "bob", tags=["users", "admins"])
    await handle.set("plain", "kept")
    await handle.set_many({"a": 1, "b": 2}, tags=["batch"])
    await handle.add("c", 3, tags=["batch"])
    assert await handle.get("user:1") == "ada"  # a near copy now
    await handle.invalidate_tags("users", "batch")
    assert await handle.get_many(["user:1", "user:2", "plain", "a", "b", "c"]) == {"plain": "kept"}
    await handle.set("user:1", "ada again", tags=["users"])  # written after: alive
    assert await handle.get("user:1") == "ada again"


async def test_a_computed_value_carries_its_tags(handle: Handle) -> None:
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return f"report {len(calls)}"

    assert await handle.get_or_compute("report", compute, tags=["reports"]) == "report 1"
    assert await handle.get_or_compute("report", compute, tags=["reports"]) == "report 1"
    await handle.invalidate_tags("reports")
    assert await handle.get_or_compute("report", compute, tags=["reports"]) == "report 2"


async def test_bad_tags_are_refused_before_anything_is_written(handle: Handle) -> None:
    with pytest.raises(TypeError, match="single string"):
        await handle.set("k", 1, tags="users")
    with pytest.raises(ValueError, match="256"):
        await handle.set("k", 1, tags=["x" * 300])
    with pytest.raises(ValueError, match="tag"):
        await handle.invalidate_tags("")
    assert await handle.get("k") is None


def test_other_hosts_drop_the_entries_of_an_invalidated_tag(start_host: Callable[[str], Client]) -> None:
    a, b = start_host("a"), start_host("b")
    a.set("user:1", "ada", tags=["users"])
    poll(lambda: b.get("user:1") == "ada" or None, "host b to read the entry")  # b holds a copy
    a.invalidate_tags("users")
    poll(lambda: b.get("user:1") is None or None, "host b to drop the entry")


def test_a_host_that_never_saw_the_invalidation_reads_the_tag_from_redis(
    start_host: Callable[[str], Client],
) -> None:
    a = start_host("a")
    a.set("user:1", "ada", tags=["users"])
    a.set("other", "kept", tags=["others"])
    a.invalidate_tags("users")
    late = start_host("late")  # started after: it never read that stream entry
    assert late.get("user:1") is None
    assert late.get("other") == "kept"


def test_a_computation_that_began_before_the_invalidation_is_not_stored(coordinator: CoordinatorProcess) -> None:
    started, go = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        go.wait(30)
        return "computed from the old source"

    with Client(coordinator.socket_path, spawn=False) as c, \
            Client(coordinator.socket_path, spawn=False, near_capacity=0) as other:
        results: list[Any] = []
        worker = threading.Thread(target=lambda: results.append(c.get_or_compute("k", slow, tags=["t"])))
        worker.start()
        assert started.wait(30)
        other.invalidate_tags("t")
        go.set()
        worker.join()
        assert results == ["computed from the old source"]  # its caller gets it
        assert other.get("k") is None  # nobody else does: it is not stored
        assert other.get_or_compute("k", lambda: "fresh", tags=["t"]) == "fresh"


def test_the_decorator_takes_tags(coordinator: CoordinatorProcess) -> None:
    calls: list[int] = []
    with Client(coordinator.socket_path, spawn=False) as c:
        @c.cached(ttl=60, tags=("prices",))
        def price(symbol: str) -> int:
            calls.append(1)
            return len(calls)

        assert price("ACME") == 1
        assert price("ACME") == 1
        c.invalidate_tags("prices")
        assert price("ACME") == 2
