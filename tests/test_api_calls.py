"""The calls users of other caches look for first (issue 13): batches, add, incr/decr, touch, ttl,
exists, FOREVER and the positional-TTL error. Both clients on a real coordinator and redis-server;
add, incr and delete_many also across two hosts (two coordinators on one Redis)."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mtcache import FOREVER, Client, CoordinatorUnavailable, L2Error
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
def two_hosts(short_tmp: Path, redis_server: RedisServer) -> Iterator[tuple[Client, Client]]:
    """A client on each of two coordinators sharing one redis-server."""
    procs = [CoordinatorProcess(short_tmp / f"{name}.sock", redis_url=redis_server.url) for name in "ab"]
    clients: list[Client] = []
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            wait_reader_connected(proc)
        clients = [Client(proc.socket_path, spawn=False) for proc in procs]
        yield clients[0], clients[1]
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            proc.stop()


# -- batches --------------------------------------------------------------------------------------


async def test_get_many_returns_what_is_there_in_the_order_asked(handle: Handle) -> None:
    assert await handle.set_many({"a": 1, "b": [2], "c": {"x": 3}}) is True
    assert await handle.get_many(["c", "missing", "a", "b", "a"]) == {"c": {"x": 3}, "a": 1, "b": [2]}
    assert list((await handle.get_many(["c", "a"])).keys()) == ["c", "a"]
    assert await handle.get_many([]) == {}


async def test_set_many_checks_every_value_before_writing_any(handle: Handle) -> None:
    with pytest.raises(TypeError, match="object"):
        await handle.set_many({"good": 1, "bad": object()})
    assert await handle.get("good") is None
    with pytest.raises(TypeError, match="mapping"):
        await handle.set_many([("a", 1)])
    with pytest.raises(TypeError, match="single string"):
        await handle.get_many("abc")


async def test_set_many_takes_a_ttl_and_delete_many_counts_what_was_held(handle: Handle) -> None:
    await handle.set_many({"a": 1, "b": 2}, ttl=30)
    assert 0 < await handle.ttl("a") <= 30
    assert await handle.delete_many(["a", "b", "never", "a"]) == 2
    assert await handle.get_many(["a", "b"]) == {}


# -- add, incr, touch, ttl, exists ----------------------------------------------------------------


async def test_add_stores_only_when_absent(handle: Handle) -> None:
    assert await handle.add("k", "first") is True
    assert await handle.add("k", "second") is False
    assert await handle.get("k") == "first"
    await handle.delete("k")
    assert await handle.add("k", "third", ttl=60) is True
    assert await handle.get("k") == "third"


async def test_add_over_an_expired_value_stores(handle: Handle) -> None:
    await handle.set("k", "old", ttl=0.05)
    deadline = asyncio.get_running_loop().time() + 20
    while not await handle.add("k", "new"):
        assert asyncio.get_running_loop().time() < deadline, "add never stored over the expired value"
        await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait for the 50 ms TTL
    assert await handle.get("k") == "new"


async def test_incr_and_decr_count_from_zero_and_keep_no_expiry(handle: Handle) -> None:
    assert await handle.incr("n") == 1
    assert await handle.incr("n", 41) == 42
    assert await handle.decr("n", 2) == 40
    assert await handle.get("n") == 40
    assert await handle.ttl("n") == math.inf
    await handle.set("m", 10, ttl=120)
    assert await handle.incr("m", -3) == 7
    assert 100 < await handle.ttl("m") <= 120  # a live counter keeps its TTL


async def test_incr_refuses_what_is_not_an_integer(handle: Handle) -> None:
    await handle.set("s", "text")
    with pytest.raises(TypeError, match="not an integer"):
        await handle.incr("s")
    await handle.set("f", 1.5)
    with pytest.raises(TypeError, match="not an integer"):
        await handle.incr("f")
    with pytest.raises(TypeError, match="delta"):
        await handle.incr("n", 1.0)
    with pytest.raises(TypeError, match="delta"):
        await handle.incr("n", True)
    with pytest.raises(ValueError, match="2\\*\\*53"):
        await handle.incr("n", 2**60)
    await handle.set("big", 2**53 - 1)
    with pytest.raises(ValueError, match="range"):
        await handle.incr("big", 5)
    assert await handle.get("s") == "text"


async def test_touch_ttl_and_exists(handle: Handle) -> None:
    assert await handle.exists("k") is False
    assert await handle.ttl("k") is None
    assert await handle.touch("k", ttl=10) is False
    await handle.set("k", "v", ttl=10)
    assert await handle.exists("k") is True
    assert await handle.touch("k", ttl=FOREVER) is True
    assert await handle.ttl("k") == math.inf
    assert await handle.touch("k", ttl=500) is True
    assert 490 < await handle.ttl("k") <= 500


async def test_forever_means_no_expiry_in_redis(handle: Handle, redis_server: RedisServer) -> None:
    await handle.set("k", "v", ttl=FOREVER)
    with redis_server.client() as r:
        assert r.pttl("mtcache:default:v2:k:k") == -1
    assert await handle.get("k") == "v"
    assert await handle.ttl("k") == math.inf


async def test_a_positional_ttl_says_to_pass_it_by_keyword(handle: Handle) -> None:
    with pytest.raises(TypeError, match=r"ttl=60"):
        await handle.set("k", "v", 60)
    with pytest.raises(TypeError, match=r"ttl=60"):
        await handle.add("k", "v", 60)
    assert await handle.get("k") is None


# -- across hosts ---------------------------------------------------------------------------------


def test_one_add_of_a_key_wins_across_hosts(two_hosts: tuple[Client, Client]) -> None:
    a, b = two_hosts
    for round_ in range(20):
        key = f"lock:{round_}"
        results: list[bool] = []
        barrier = threading.Barrier(4)

        def attempt(client: Client, value: str, key: str = key, barrier: threading.Barrier = barrier,
                    results: list[bool] = results) -> None:
            barrier.wait()
            results.append(client.add(key, value))

        threads = [threading.Thread(target=attempt, args=(c, f"{i}")) for i, c in enumerate((a, b, a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, False, False, True]


def test_incr_is_exact_across_hosts(two_hosts: tuple[Client, Client]) -> None:
    a, b = two_hosts

    def bump(client: Client) -> None:
        for _ in range(200):
            client.incr("hits")

    threads = [threading.Thread(target=bump, args=(c,)) for c in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.incr("hits", 0) == 800
    poll(lambda: b.get("hits") == 800 or None, "host b to see the counter")


def test_get_many_reads_what_another_host_wrote_in_batches(two_hosts: tuple[Client, Client]) -> None:
    a, b = two_hosts
    items = {f"k{i}": i for i in range(1500)}  # more than one request's worth (1,000 keys)
    assert a.set_many(items) is True
    # b's L1 had none of them: read from Redis and promoted (a read that a's stream entry for the
    # key overtakes is a miss, so read until every key came)
    poll(lambda: b.get_many(list(items)) == items or None, "host b to read a's 1,500 writes")
    assert b.stats().coordinator["promotions"] >= 1500


def test_delete_many_on_one_host_removes_the_keys_on_the_other(two_hosts: tuple[Client, Client]) -> None:
    a, b = two_hosts
    a.set_many({"x": 1, "y": 2, "z": 3})
    # b holds copies now (a read that a's stream entry overtakes is a miss: read again)
    poll(lambda: b.get_many(["x", "y", "z"]) == {"x": 1, "y": 2, "z": 3} or None, "host b to read a's writes")
    assert a.delete_many(["x", "y"]) == 2
    poll(lambda: b.get_many(["x", "y", "z"]) == {"z": 3} or None, "host b to drop x and y")


def test_incr_without_redis_is_refused_not_counted_locally(short_tmp: Path) -> None:
    proc = CoordinatorProcess(short_tmp / "nored.sock", redis_url="redis://127.0.0.1:1/0")
    proc.start()
    try:
        with Client(proc.socket_path, spawn=False) as c:
            with pytest.raises(L2Error, match="needs Redis"):
                c.incr("n")
            assert c.add("k", 1) is True  # decided by this host while Redis is away
            assert c.add("k", 2) is False
    finally:
        proc.stop()


def test_incr_without_a_coordinator_raises(short_tmp: Path) -> None:
    with Client(str(short_tmp / "nobody.sock"), spawn=False) as c:
        with pytest.raises(CoordinatorUnavailable, match="incr"):
            c.incr("n")
        assert c.get_many(["a"]) == {}
        assert c.set_many({"a": 1}) is False


# -- errors that say what to do -------------------------------------------------------------------


def test_a_value_the_codec_refuses_is_the_same_type_error_for_every_waiter(coordinator: CoordinatorProcess) -> None:
    go = threading.Event()
    errors: dict[str, BaseException] = {}

    def unencodable() -> object:
        go.wait(30)
        return object()

    with Client(coordinator.socket_path, spawn=False) as holder, \
            Client(coordinator.socket_path, spawn=False) as waiter:
        def call(name: str, client: Client) -> None:
            try:
                client.get_or_compute("k", unencodable)
            except BaseException as exc:  # recorded for the assertions below
                errors[name] = exc

        threads = [threading.Thread(target=call, args=("holder", holder))]
        threads[0].start()
        poll(lambda: holder.stats().coordinator["leases_granted"] >= 1 or None, "the holder's lease")
        threads.append(threading.Thread(target=call, args=("waiter", waiter)))
        threads[1].start()
        poll(lambda: holder.stats().coordinator["coalesced"] >= 1 or None, "the waiter to queue")
        go.set()
        for t in threads:
            t.join()
    assert type(errors["holder"]) is TypeError and type(errors["waiter"]) is TypeError
    assert str(errors["waiter"]) == str(errors["holder"])


def test_a_coroutine_function_on_the_sync_client_says_use_async_client(coordinator: CoordinatorProcess) -> None:
    async def fetch() -> int:
        return 1

    with Client(coordinator.socket_path, spawn=False) as c:
        with pytest.raises(TypeError, match="AsyncClient"):
            c.get_or_compute("k", fetch)
        with pytest.raises(TypeError, match="AsyncClient"):
            c.get_or_compute("k2", lambda: fetch())
        assert c.get("k2") is None
