"""Behaviour of the one-host cache seen from the outside, as a user sees it.

Every test talks to a real coordinator process (backed by a real redis-server)
through the public API only: near cache, TTL, bad input, strategies and
statistics, clear, a compute that raises, and a coordinator killed under load.
Checks that are cheap to run twice go through :class:`Handle`, which puts the
sync ``Client`` and the ``AsyncClient`` behind the same coroutine methods.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mtcache import FOREVER, AsyncClient, CacheStrategy, Client, ComputeError, Health, Stats
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer
from tests.waiting import wait_for_waiters, wait_for_waiters_async

#: Longest wait for anything in these tests; generous for a loaded 2-core machine.
DEADLINE = 20.0


class Handle:
    """A sync ``Client`` or an ``AsyncClient`` (``kind``) behind coroutine methods.

    The sync client's calls run inline; ``get_or_compute`` hands the async client a
    coroutine function wrapping ``fn``, so both kinds of ``fn`` are exercised.
    """

    def __init__(self, kind: str, socket_path: str, **options: Any) -> None:
        self.kind = kind
        self.client: Client | AsyncClient
        if kind == "sync":
            self.client = Client(socket_path, spawn=False, **options)
        else:
            self.client = AsyncClient(socket_path, spawn=False, **options)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, name)(*args, **kwargs)
        return await result if self.kind == "async" else result

    async def get(self, key: Any, default: Any = None) -> Any:
        return await self._call("get", key, default)

    async def set(self, key: Any, value: Any, **kwargs: Any) -> None:
        await self._call("set", key, value, **kwargs)

    async def delete(self, key: Any) -> bool:
        return bool(await self._call("delete", key))

    async def get_or_compute(self, key: Any, fn: Any, **kwargs: Any) -> Any:
        if self.kind == "async" and callable(fn):
            plain = fn

            async def fn() -> Any:
                return plain()

        return await self._call("get_or_compute", key, fn, **kwargs)

    async def stats(self) -> Stats:
        return await self._call("stats")

    async def health(self) -> Health:
        return await self._call("health")

    async def clear(self) -> None:
        await self._call("clear")

    async def close(self) -> None:
        await self._call("close")


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which client a parametrised test drives."""
    return str(request.param)


@pytest.fixture
async def open_handle(kind: str, coordinator: CoordinatorProcess) -> AsyncIterator[Callable[..., Handle]]:
    """A factory of :class:`Handle` objects on the test's coordinator; all closed at teardown."""
    handles: list[Handle] = []

    def make(**options: Any) -> Handle:
        handle = Handle(kind, coordinator.socket_path, **options)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        await handle.close()




# -- near cache -----------------------------------------------------------------


async def test_near_hit_is_counted_and_returns_the_held_object(open_handle: Callable[..., Handle]) -> None:
    c = open_handle()
    await c.set("k", {"a": [1, 2]})
    before = (await c.stats()).near_hits
    first = await c.get("k")
    second = await c.get("k")
    assert first == {"a": [1, 2]}
    assert second is first  # without copy_on_read the near cache hands out the object it holds
    assert (await c.stats()).near_hits - before == 2


async def test_near_capacity_zero_disables_the_near_cache(open_handle: Callable[..., Handle]) -> None:
    c = open_handle(near_capacity=0)
    await c.set("k", [1, 2, 3])
    before = await c.stats()
    assert await c.get("k") == [1, 2, 3]
    assert await c.get("k") == [1, 2, 3]
    after = await c.stats()
    assert after.near_hits == 0
    # both reads went to the coordinator's L1: its shared-memory mirror or its socket
    assert (after.l1_hits + after.mirror_hits) - (before.l1_hits + before.mirror_hits) == 2


async def test_copy_on_read_returns_equal_but_distinct_objects(open_handle: Callable[..., Handle]) -> None:
    c = open_handle(copy_on_read=True)
    await c.set("k", {"items": [1, 2]})
    first = await c.get("k")
    second = await c.get("k")
    assert first == second == {"items": [1, 2]}
    assert first is not second
    first["items"].append(3)  # a caller mutating its copy changes nobody else's
    assert await c.get("k") == {"items": [1, 2]}
    assert (await c.stats()).near_hits >= 2


async def test_write_by_another_client_invalidates_the_near_copy(open_handle: Callable[..., Handle]) -> None:
    writer, reader = open_handle(), open_handle()
    await writer.set("k", "v1")
    assert await reader.get("k") == "v1"
    hits = (await reader.stats()).near_hits
    assert await reader.get("k") == "v1"
    assert (await reader.stats()).near_hits == hits + 1  # the reader holds a near copy now
    await writer.set("k", "v2")
    assert await reader.get("k") == "v2"
    assert await writer.delete("k") is True
    assert await reader.get("k", "gone") == "gone"
    assert await writer.delete("k") is False


async def test_value_expires_after_its_ttl(open_handle: Callable[..., Handle]) -> None:
    c, fresh = open_handle(), open_handle(near_capacity=0)
    await c.set("short", "brief", ttl=0.2)
    await c.set("long", "stays", ttl=timedelta(minutes=5))
    deadline = time.monotonic() + DEADLINE
    while await c.get("short") is not None:
        assert time.monotonic() < deadline, "a value set with ttl=0.2 never expired"
        await asyncio.sleep(0.05)  # poll interval of a deadline-bounded wait
    assert await fresh.get("short") is None  # gone from L1 and L2 too, not only from the near cache
    assert await c.get("long") == "stays"
    assert await fresh.get("long") == "stays"


# -- bad input ------------------------------------------------------------------


BAD_KEYS: list[tuple[Any, type[Exception]]] = [
    ("", ValueError),
    (123, TypeError),
    (b"bytes", TypeError),
    (None, TypeError),
    ("x" * 2000, ValueError),
]


async def test_invalid_keys_are_refused(open_handle: Callable[..., Handle]) -> None:
    c = open_handle()
    for key, error in BAD_KEYS:
        with pytest.raises(error):
            await c.get(key)
        with pytest.raises(error):
            await c.set(key, 1)
        with pytest.raises(error):
            await c.delete(key)
        with pytest.raises(error):
            await c.get_or_compute(key, lambda: 1)
    stats = await c.stats()
    assert (stats.coordinator["sets"], stats.coordinator["leases_granted"]) == (0, 0)


async def test_invalid_ttl_is_refused(open_handle: Callable[..., Handle]) -> None:
    c = open_handle()
    for ttl in (0, -1, float("nan"), float("-inf"), timedelta(0)):
        with pytest.raises(ValueError, match="ttl"):
            await c.set("k", 1, ttl=ttl)
        with pytest.raises(ValueError, match="ttl"):
            await c.get_or_compute("k", lambda: 1, ttl=ttl)
    with pytest.raises(TypeError, match="ttl"):
        await c.set("k", 1, ttl="10")
    assert await c.get("k") is None


async def test_strategy_and_ttl_together_are_refused(open_handle: Callable[..., Handle]) -> None:
    c = open_handle()
    with pytest.raises(ValueError, match="strategy"):
        await c.set("k", 1, strategy=CacheStrategy.REALTIME, ttl=5)
    with pytest.raises(TypeError, match="CacheStrategy"):
        await c.set("k", 1, strategy="realtime")
    assert await c.get("k") is None


async def test_unencodable_value_is_refused_and_the_cache_is_unchanged(open_handle: Callable[..., Handle]) -> None:
    c, other = open_handle(), open_handle(near_capacity=0)
    await c.set("k", "before")
    with pytest.raises(TypeError, match="object"):
        await c.set("k", object())
    with pytest.raises(TypeError, match="object"):
        await c.set("k", {"nested": [object()]})
    assert await c.get("k") == "before"
    assert await other.get("k") == "before"
    assert (await other.stats()).coordinator["sets"] == 1


async def test_non_callable_fn_is_refused(open_handle: Callable[..., Handle]) -> None:
    c = open_handle()
    with pytest.raises(TypeError, match="callable"):
        await c.get_or_compute("k", 42)
    assert (await c.stats()).coordinator["leases_granted"] == 0


async def test_unencodable_result_raises_and_releases_the_lease(open_handle: Callable[..., Handle]) -> None:
    c, other = open_handle(), open_handle()
    with pytest.raises(TypeError, match="object"):
        await c.get_or_compute("k", object)
    assert await other.get("k") is None
    # a lease still held would make these wait for it and raise CacheTimeout
    assert await other.get_or_compute("k", lambda: "good", timeout=DEADLINE) == "good"
    assert await c.get_or_compute("k", lambda: "not called", timeout=DEADLINE) == "good"
    assert (await c.stats()).inflight_leases == 0


# -- strategies and statistics ----------------------------------------------------


async def test_every_strategy_is_accepted(open_handle: Callable[..., Handle]) -> None:
    c, fresh = open_handle(), open_handle(near_capacity=0)
    strategies = [
        CacheStrategy.REALTIME,
        CacheStrategy.SHORT_TERM,
        CacheStrategy.MEDIUM_TERM,
        CacheStrategy.LONG_TERM,
        CacheStrategy.DEFAULT,
        CacheStrategy.custom(timedelta(seconds=42)),
    ]
    for strategy in strategies:
        await c.set(f"set-{strategy.name}", strategy.name, strategy=strategy)
        computed = await c.get_or_compute(f"goc-{strategy.name}", lambda s=strategy: s.ttl, strategy=strategy)
        assert computed == strategy.ttl
    for strategy in strategies:
        assert await fresh.get(f"set-{strategy.name}") == strategy.name
        assert await fresh.get(f"goc-{strategy.name}") == strategy.ttl


async def test_l1_hits_and_misses_are_counted_once(open_handle: Callable[..., Handle]) -> None:
    c = open_handle(near_capacity=0)
    await c.set("k", 1)
    before = await c.stats()
    assert await c.get("k") == 1
    assert await c.get("k") == 1
    assert await c.get("missing") is None
    after = await c.stats()
    assert (after.l1_hits + after.mirror_hits) - (before.l1_hits + before.mirror_hits) == 2
    assert after.l1_misses - before.l1_misses == 1
    assert after.l2_misses - before.l2_misses == 1
    assert after.l2_hits == before.l2_hits


async def test_l2_value_comes_back_after_a_coordinator_restart_and_is_promoted_once(
    kind: str, coordinator: CoordinatorProcess
) -> None:
    first = Handle(kind, coordinator.socket_path)
    try:
        await first.set("k", {"kept": "in redis"})
        await first.set("k2", "also in redis")
    finally:
        await first.close()
    coordinator.restart()  # same socket, same Redis: L1 is gone, L2 is not
    c = Handle(kind, coordinator.socket_path, near_capacity=0)
    try:
        assert (await c.stats()).l2_hits == 0
        assert await c.get("k") == {"kept": "in redis"}
        stats = await c.stats()
        assert stats.l2_hits == 1  # one read, counted once
        assert stats.promotions == 1
        assert await c.get("k") == {"kept": "in redis"}  # now an L1 hit
        stats = await c.stats()
        assert stats.l2_hits == 1
        assert stats.l1_hits + stats.mirror_hits == 1
        calls: list[int] = []
        assert await c.get_or_compute("k2", lambda: calls.append(1)) == "also in redis"
        assert calls == []
        stats = await c.stats()
        assert stats.l2_hits == 2
        assert stats.promotions == 2
    finally:
        await c.close()


# -- clear ----------------------------------------------------------------------------


def value_keys(keys: list[bytes]) -> list[bytes]:
    """The Redis keys among ``keys`` that hold values (records), leaving out the invalidation stream and the
    namespace floor."""
    return [k for k in keys if b":k:" in k]


async def test_clear_empties_every_tier_of_the_namespace(
    open_handle: Callable[..., Handle], redis_server: RedisServer
) -> None:
    c, other = open_handle(), open_handle()
    for key in ("a", "b", "c"):
        await c.set(key, key.upper())
        assert await other.get(key) == key.upper()  # a near copy in the other client
    with redis_server.client() as r:
        r.set("mtcache:other:v2:k:a", b"another namespace's")
        assert len(value_keys(r.keys("mtcache:default:*"))) == 3
        await c.clear()
        # the cross-host invalidation stream's own keys stay: the clear travels through it
        assert value_keys(r.keys("mtcache:default:*")) == []
        assert r.get("mtcache:other:v2:k:a") == b"another namespace's"
    for key in ("a", "b", "c"):
        assert await other.get(key) is None
        assert await c.get(key) is None
    assert await other.get_or_compute("a", lambda: "recomputed") == "recomputed"


# -- a compute that raises --------------------------------------------------------------

WAITERS = 3


def test_compute_error_reaches_the_holder_and_every_waiter_sync(coordinator: CoordinatorProcess) -> None:
    path = coordinator.socket_path
    computing = threading.Event()
    calls: list[str] = []

    def boom() -> str:
        calls.append("holder")
        computing.set()
        if not wait_for_waiters(path, WAITERS):
            raise RuntimeError("the waiters never reached the coordinator")
        raise ValueError("boom")

    def waiter_fn() -> str:
        calls.append("waiter")
        return "waiter computed"

    def call(fn: Callable[[], str]) -> object:
        with Client(path, spawn=False) as client:
            try:
                return client.get_or_compute("k", fn, timeout=DEADLINE)
            except ComputeError as exc:
                return exc

    with ThreadPoolExecutor(WAITERS + 1) as pool:
        holder = pool.submit(call, boom)
        assert computing.wait(DEADLINE)
        waiters = [pool.submit(call, waiter_fn) for _ in range(WAITERS)]
        outcomes = [f.result(timeout=DEADLINE * 2) for f in (holder, *waiters)]

    for outcome in outcomes:
        assert isinstance(outcome, ComputeError), outcome
        assert (outcome.exc_type, outcome.exc_message) == ("ValueError", "boom")
    assert isinstance(outcomes[0].__cause__, ValueError)
    assert calls == ["holder"]
    with Client(path, spawn=False) as client:
        assert client.get("k") is None
        assert client.get_or_compute("k", lambda: calls.append("again") or "second") == "second"
        assert client.get("k") == "second"
    assert calls == ["holder", "again"]


async def test_compute_error_reaches_the_holder_and_every_waiter_async(coordinator: CoordinatorProcess) -> None:
    path = coordinator.socket_path
    computing = asyncio.Event()
    calls: list[str] = []

    async def boom() -> str:
        calls.append("holder")
        computing.set()
        if not await wait_for_waiters_async(path, WAITERS):
            raise RuntimeError("the waiters never reached the coordinator")
        raise ValueError("boom")

    async def waiter_fn() -> str:
        calls.append("waiter")
        return "waiter computed"

    async def call(fn: Callable[[], Any]) -> object:
        async with AsyncClient(path, spawn=False) as client:
            try:
                return await client.get_or_compute("k", fn, timeout=DEADLINE)
            except ComputeError as exc:
                return exc

    holder = asyncio.create_task(call(boom))
    await asyncio.wait_for(computing.wait(), DEADLINE)
    waiters = [asyncio.create_task(call(waiter_fn)) for _ in range(WAITERS)]
    outcomes = await asyncio.wait_for(asyncio.gather(holder, *waiters), DEADLINE * 2)

    for outcome in outcomes:
        assert isinstance(outcome, ComputeError), outcome
        assert (outcome.exc_type, outcome.exc_message) == ("ValueError", "boom")
    assert isinstance(outcomes[0].__cause__, ValueError)
    assert calls == ["holder"]

    async def again() -> str:
        calls.append("again")
        return "second"

    async with AsyncClient(path, spawn=False) as client:
        assert await client.get("k") is None
        assert await client.get_or_compute("k", again) == "second"
        assert await client.get("k") == "second"
    assert calls == ["holder", "again"]


# -- the coordinator killed under load -----------------------------------------------------

LOOPS = 4


def expected(key: str) -> dict[str, Any]:
    """The one value every loop stores or computes for ``key``."""
    return {"key": key, "length": len(key)}


class Load:
    """Per-loop progress and every problem a loop saw (an exception, a wrong value)."""

    def __init__(self) -> None:
        self.done = [0] * LOOPS
        self.problems: list[str] = []

    def check(self, what: str, got: Any, allowed: tuple[Any, ...]) -> None:
        if not any(got == a for a in allowed):
            self.problems.append(f"{what} returned {got!r}")

    def target(self, more: int) -> list[int]:
        return [n + more for n in self.done]

    def reached(self, target: list[int]) -> bool:
        return all(n >= t for n, t in zip(self.done, target, strict=True))


def _load_loop_sync(client: Client, i: int, load: Load, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        key, fresh = f"s{i}-{n % 5}", f"c{i}-{n}"
        try:
            client.set(key, expected(key))
            load.check(f"get({key})", client.get(key), (None, expected(key)))
            load.check(f"get_or_compute({fresh})", client.get_or_compute(fresh, lambda k=fresh: expected(k)),
                       (expected(fresh),))
        except Exception as exc:  # nothing may reach the caller
            load.problems.append(f"{type(exc).__name__}: {exc}")
            return
        n += 1
        load.done[i] = n


def test_coordinator_killed_under_load_sync(coordinator: CoordinatorProcess) -> None:
    path = coordinator.socket_path
    load, stop = Load(), threading.Event()

    def wait(target: list[int]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not load.reached(target) and not load.problems:
            assert time.monotonic() < deadline, f"the loops stalled at {load.done}"
            time.sleep(0.01)  # poll interval of a deadline-bounded wait

    with Client(path, spawn=False) as client:
        threads = [threading.Thread(target=_load_loop_sync, args=(client, i, load, stop)) for i in range(LOOPS)]
        for t in threads:
            t.start()
        try:
            wait(load.target(20))
            coordinator.kill()
            wait(load.target(20))
            health = client.health()
            assert (health.coordinator, health.mode) == ("unavailable", "degraded")
            coordinator.start()  # a new coordinator on the same socket
            deadline = time.monotonic() + DEADLINE
            while client.health().coordinator != "ok":
                assert time.monotonic() < deadline, "the client never reconnected"
                time.sleep(0.05)  # poll interval of a deadline-bounded wait
            client.set("round-trip", [1, 2, 3])
            with Client(path, spawn=False, near_capacity=0) as other:
                assert other.get("round-trip") == [1, 2, 3]
            wait(load.target(5))
        finally:
            stop.set()
            for t in threads:
                t.join(DEADLINE)
        assert load.problems == []
        assert not any(t.is_alive() for t in threads)
        stats = client.stats()
        assert stats.local_computes >= 1  # get_or_compute ran fn itself while the coordinator was gone
        assert stats.coordinator_errors >= 1
        assert stats.coordinator["connections"] >= 1


async def _load_loop_async(client: AsyncClient, i: int, load: Load, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        key, fresh = f"s{i}-{n % 5}", f"c{i}-{n}"

        async def compute(k: str = fresh) -> dict[str, Any]:
            return expected(k)

        try:
            await client.set(key, expected(key))
            load.check(f"get({key})", await client.get(key), (None, expected(key)))
            load.check(f"get_or_compute({fresh})", await client.get_or_compute(fresh, compute), (expected(fresh),))
        except Exception as exc:  # nothing may reach the caller
            load.problems.append(f"{type(exc).__name__}: {exc}")
            return
        n += 1
        load.done[i] = n
        await asyncio.sleep(0)  # without a coordinator nothing awaits: let the other loops run


async def test_coordinator_killed_under_load_async(coordinator: CoordinatorProcess) -> None:
    path = coordinator.socket_path
    load, stop = Load(), asyncio.Event()

    async def wait(target: list[int]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not load.reached(target) and not load.problems:
            assert time.monotonic() < deadline, f"the loops stalled at {load.done}"
            await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait

    async with AsyncClient(path, spawn=False) as client:
        tasks = [asyncio.create_task(_load_loop_async(client, i, load, stop)) for i in range(LOOPS)]
        try:
            await wait(load.target(20))
            await asyncio.to_thread(coordinator.kill)
            await wait(load.target(20))
            health = await client.health()
            assert (health.coordinator, health.mode) == ("unavailable", "degraded")
            await asyncio.to_thread(coordinator.start)
            deadline = time.monotonic() + DEADLINE
            while (await client.health()).coordinator != "ok":
                assert time.monotonic() < deadline, "the client never reconnected"
                await asyncio.sleep(0.05)  # poll interval of a deadline-bounded wait
            await client.set("round-trip", [1, 2, 3])
            async with AsyncClient(path, spawn=False, near_capacity=0) as other:
                assert await other.get("round-trip") == [1, 2, 3]
            await wait(load.target(5))
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
        assert load.problems == []
        stats = await client.stats()
        assert stats.local_computes >= 1
        assert stats.coordinator_errors >= 1
        assert stats.coordinator["connections"] >= 1


def test_a_strategy_holds_on_every_tier_and_the_tier_defaults_serve_calls_that_give_none(
    short_tmp: Path, redis_server: RedisServer
) -> None:
    # issue 13: LONG_TERM (3 h) used to live min(ttl, MTCACHE_L2_TTL) in Redis (1 h) and 5 min in L1
    proc = CoordinatorProcess(
        short_tmp / "ttl.sock", redis_url=redis_server.url, env={"MTCACHE_L2_TTL": "120", "MTCACHE_L1_TTL": "60"}
    )
    proc.start()
    try:
        with Client(proc.socket_path, spawn=False, near_capacity=0) as c:
            c.set("long", "v", strategy=CacheStrategy.LONG_TERM)
            c.set("short", "v", ttl=30)
            c.set("default", "v")
            c.set("forever", "v", ttl=FOREVER)
            assert 10_700 < c.ttl("long") <= 10_800  # L1 keeps it 3 h too
            assert 50 < c.ttl("default") <= 60  # MTCACHE_L1_TTL
            assert c.ttl("forever") == math.inf
        with redis_server.client() as r:
            assert 10_790_000 < r.pttl("mtcache:default:v2:k:long") <= 10_800_000
            assert 20_000 < r.pttl("mtcache:default:v2:k:short") <= 30_000
            assert 110_000 < r.pttl("mtcache:default:v2:k:default") <= 120_000  # MTCACHE_L2_TTL
            assert r.pttl("mtcache:default:v2:k:forever") == -1  # no expiry
    finally:
        proc.stop()


def test_a_threads_connection_is_closed_when_the_thread_ends(coordinator: CoordinatorProcess) -> None:
    """Found from the outside: every thread that ever made a request kept its connection to the coordinator
    open until the client closed (a server with a thread per request ran out of file descriptors)."""
    import os

    with Client(coordinator.socket_path, spawn=False) as client:
        client.set("k", "main")
        fds = len(os.listdir("/proc/self/fd"))
        for i in range(20):
            thread = threading.Thread(target=client.set, args=("k", f"thread {i}"))
            thread.start()
            thread.join()
        deadline = time.monotonic() + 10
        while len(client._conns) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # polls the condition under a deadline
        assert len(client._conns) == 1, f"{len(client._conns)} connections kept for 1 live thread"
        assert len(os.listdir("/proc/self/fd")) <= fds
        assert client.get("k") == "thread 19"  # the main thread's connection still serves
        worker = threading.Thread(target=client.set, args=("k", "again"))
        worker.start()
        worker.join()
        assert client.get("k") == "again"
