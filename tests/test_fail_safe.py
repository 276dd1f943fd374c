"""Keep serving when the source fails (issue 12): fail-safe, soft and hard timeouts, throttling,
eager refresh, jitter and cache_none, on real coordinators and Redis, some across two hosts."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import multiprocess as mp
import pytest

from mtcache import AsyncClient, CacheTimeout, Client, ComputeError
from mtcache.coordinator.l2 import key_prefix
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer
from tests.tcp_proxy import FaultProxy

DEADLINE = 30.0
T = TypeVar("T")


class SourceDown(Exception):
    """The source failed."""


def down() -> Any:
    raise SourceDown("the price service is down")


def poll(check: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # poll interval of a deadline-bounded wait
    return result


def stale(client: Client, key: str) -> None:
    """Wait until ``key``'s value is past its TTL (a plain get no longer returns it)."""
    poll(lambda: client.get(key) is None, f"{key} to go stale")


@pytest.fixture
def hosts(short_tmp: Path, redis_server: RedisServer) -> Iterator[list[CoordinatorProcess]]:
    procs = [CoordinatorProcess(short_tmp / f"{n}.sock", redis_url=redis_server.url) for n in "ab"]
    for proc in procs:
        proc.start()
    yield procs
    for proc in procs:
        proc.stop()


def test_a_failing_source_gives_the_stale_value_and_counts_it(coordinator: CoordinatorProcess) -> None:
    with Client(coordinator.socket_path, spawn=False) as client:
        assert client.get_or_compute("k", lambda: "v1", ttl=0.5, fail_safe=60) == "v1"
        stale(client, "k")
        assert client.get_or_compute("k", down, ttl=0.5, fail_safe=60) == "v1"
        stats = client.stats()
        assert (stats.stale_served, stats.fail_safe_activations) == (1, 1)
        assert stats.coordinator["fail_safe_activations"] == 1
        # without fail-safe the same failure is an error
        assert client.get_or_compute("other", lambda: "o", ttl=0.5) == "o"
        stale(client, "other")
        with pytest.raises(ComputeError, match="price service is down"):
            client.get_or_compute("other", down, ttl=0.5)


def test_past_its_fail_safe_window_a_stale_value_is_not_served(
    coordinator: CoordinatorProcess, redis_server: RedisServer
) -> None:
    with Client(coordinator.socket_path, spawn=False) as client, redis_server.client() as r:
        client.get_or_compute("k", lambda: "v1", ttl=0.3, fail_safe=0.3)
        # TTL + fail_safe later every tier has let it go
        poll(lambda: client.stats().coordinator["l1"]["size"] == 0 and not r.exists(key_prefix("default") + "k:k"),
             "the stale window to end")
        with pytest.raises(ComputeError):
            client.get_or_compute("k", down, ttl=0.3, fail_safe=0.3)


def test_a_hard_timeout_abandons_the_source(coordinator: CoordinatorProcess) -> None:
    release = threading.Event()

    def hung() -> str:
        release.wait(DEADLINE)
        return "late"

    try:
        with Client(coordinator.socket_path, spawn=False) as client:
            with pytest.raises(CacheTimeout, match="hard timeout"):
                client.get_or_compute("fresh", hung, hard_timeout=0.3)  # nothing stale to stand in
            client.get_or_compute("k", lambda: "v1", ttl=0.5, fail_safe=60)
            stale(client, "k")
            assert client.get_or_compute("k", hung, ttl=0.5, fail_safe=60, hard_timeout=0.3) == "v1"
            assert client.stats().stale_served == 1
    finally:
        release.set()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_soft_timeout_serves_stale_at_once_and_the_result_reaches_every_tier_and_host(
    hosts: list[CoordinatorProcess], redis_server: RedisServer, kind: str
) -> None:
    a, b = hosts
    release = threading.Event()

    def slow() -> str:
        release.wait(DEADLINE)
        return "v2"

    with Client(a.socket_path, spawn=False) as client, Client(b.socket_path, spawn=False) as other:
        client.get_or_compute("k", lambda: "v1", ttl=0.5, fail_safe=60)
        stale(client, "k")
        if kind == "sync":
            assert client.get_or_compute("k", slow, ttl=60, fail_safe=60, soft_timeout=0.2) == "v1"
        else:
            import asyncio

            async def soft() -> Any:
                async with AsyncClient(a.socket_path, spawn=False) as aclient:
                    async def aslow() -> str:
                        await asyncio.to_thread(release.wait, DEADLINE)
                        return "v2"

                    got = await aclient.get_or_compute("k", aslow, ttl=60, fail_safe=60, soft_timeout=0.2)
                    release.set()
                    # the computation goes on as a task of this client: let it land before closing
                    deadline = time.monotonic() + DEADLINE
                    while await aclient.get("k") != "v2":
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.02)  # poll interval of a deadline-bounded wait
                    return got

            assert asyncio.run(soft()) == "v1"
        release.set()
        poll(lambda: client.get("k") == "v2", "the background result on this host")
        poll(lambda: other.get("k") == "v2", "the background result on the other host")
        with redis_server.client() as r:
            assert r.exists(key_prefix("default") + "k:k")


def _hammer(path: str, key: str, calls_file: str, until: float, ready: Any, results: Any) -> None:
    """A worker process: call get_or_compute with a failing source until ``until``; put how many stale
    values it was served."""
    def failing() -> Any:
        fd = os.open(calls_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"call\n")
        finally:
            os.close(fd)
        raise SourceDown("down")

    served = 0
    with Client(path, spawn=False) as client:
        ready.wait(DEADLINE)
        while time.time() < until:
            if client.get_or_compute(key, failing, ttl=0.5, fail_safe=600, fail_safe_throttle=30) == "v1":
                served += 1
    results.put(served)


def test_a_failing_source_is_asked_once_per_throttle_window_across_workers_and_hosts(
    hosts: list[CoordinatorProcess], tmp_path: Path
) -> None:
    a, b = hosts
    with Client(a.socket_path, spawn=False) as client:
        client.get_or_compute("k", lambda: "v1", ttl=0.5, fail_safe=600)
        stale(client, "k")
    calls = tmp_path / "calls"
    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    until = time.time() + 6
    workers = [ctx.Process(target=_hammer, args=(host.socket_path, "k", str(calls), until, ready, results))
               for host in (a, b) for _ in range(4)]
    for worker in workers:
        worker.start()
    ready.set()
    try:
        served = [results.get(timeout=DEADLINE) for _ in workers]
    finally:
        for worker in workers:
            worker.join(DEADLINE)
    assert all(n > 0 for n in served)  # every worker kept getting the stale value
    assert calls.read_text().count("call") == 1  # the source was asked once in the window


def test_eager_refresh_computes_once_fleet_wide_and_no_caller_misses(
    hosts: list[CoordinatorProcess],
) -> None:
    a, b = hosts
    calls: list[str] = []
    lock = threading.Lock()

    def source() -> int:
        with lock:
            calls.append(f"{time.monotonic():.3f} {threading.current_thread().name}")
            return len(calls)

    clients = [Client(host.socket_path, spawn=False) for host in (a, b) for _ in range(2)]
    try:
        assert clients[0].get_or_compute("k", source, ttl=2.0, eager_refresh=0.5) == 1
        end = time.monotonic() + 2.5
        seen: set[int] = set()
        while time.monotonic() < end:
            for client in clients:
                value = client.get_or_compute("k", source, ttl=2.0, eager_refresh=0.5)
                assert value is not None
                seen.add(value)
            time.sleep(0.01)  # the callers' pace, not synchronisation
        assert seen >= {1, 2}  # the refreshed value replaced the first everywhere...
        assert len(calls) in (2, 3), calls  # ...computed once per refresh period (2 s), fleet-wide
        misses = sum(c.stats().local_computes for c in clients)
        assert misses == 0
        assert sum(c._core.counters["eager_refreshes"] for c in clients) >= 1
    finally:
        for client in clients:
            client.close()


def test_jitter_spreads_expiries(coordinator: CoordinatorProcess, redis_server: RedisServer) -> None:
    with Client(coordinator.socket_path, spawn=False, near_capacity=0) as client:
        for i in range(1000):
            client.get_or_compute(f"j{i}", lambda: 1, ttl=100, jitter=0.5)
    prefix = key_prefix("default") + "k:"
    with redis_server.client() as r:
        pipe = r.pipeline()
        for i in range(1000):
            pipe.pttl(f"{prefix}j{i}")
        ttls = [t / 1000 for t in pipe.execute()]
    assert all(0 < t <= 100 for t in ttls)
    assert max(ttls) - min(ttls) > 25  # uniform over [50, 100]: the spread is ~50 s
    assert sum(t < 75 for t in ttls) > 200  # and not all at one end


def test_cache_none_false_leaves_none_uncached(coordinator: CoordinatorProcess) -> None:
    calls: list[int] = []

    def nothing() -> None:
        calls.append(1)

    with Client(coordinator.socket_path, spawn=False) as client:
        assert client.get_or_compute("n", nothing, cache_none=False) is None
        assert client.get_or_compute("n", nothing, cache_none=False) is None
        assert len(calls) == 2
        assert client.get_or_compute("m", nothing) is None
        assert client.get_or_compute("m", nothing) is None
        assert len(calls) == 3  # the default caches None


def test_with_redis_down_a_stale_l1_value_stands_in_for_a_failing_source(
    coordinator: CoordinatorProcess, redis_server: RedisServer
) -> None:
    with Client(coordinator.socket_path, spawn=False) as client:
        client.get_or_compute("k", lambda: "v1", ttl=0.5, fail_safe=60)
        redis_server.kill()
        stale(client, "k")
        assert client.get_or_compute("k", down, ttl=0.5, fail_safe=60) == "v1"


def test_with_the_coordinator_gone_a_near_copy_stands_in_only_if_the_call_asks(
    coordinator: CoordinatorProcess,
) -> None:
    with Client(coordinator.socket_path, spawn=False) as client:
        assert client.get_or_compute("k", lambda: "v1", ttl=0.3) == "v1"
        coordinator.kill()
        poll(lambda: client._core.near.freshness("k")[1] < 0, "the near copy to go past its TTL")  # type: ignore[index]
        with pytest.raises(ComputeError):
            client.get_or_compute("k", down, ttl=0.3)  # the client's default asks nothing
        assert client.get_or_compute("k", down, ttl=0.3, fail_safe=60) == "v1"


def _refresher(path: str, started: Any) -> None:
    """A worker whose eager refresh hangs (it is SIGKILLed while it holds the lease)."""
    with Client(path, spawn=False) as client:
        def hang() -> int:
            started.set()
            time.sleep(DEADLINE)  # the refresh that never ends: this process is killed meanwhile
            return 0

        client.get_or_compute("k", hang, ttl=1.0, eager_refresh=0.1)
        threading.Event().wait(DEADLINE)  # stay alive (holding the lease in the background) until killed


def test_a_background_refresh_whose_worker_is_killed_hands_the_lease_on(coordinator: CoordinatorProcess) -> None:
    with Client(coordinator.socket_path, spawn=False) as client:
        client.get_or_compute("k", lambda: 1, ttl=1.0)
        ctx = mp.get_context("spawn")
        started = ctx.Event()
        worker = ctx.Process(target=_refresher, args=(coordinator.socket_path, started))
        worker.start()
        try:
            assert started.wait(DEADLINE)
            assert client.stats().inflight_leases == 1
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(DEADLINE)
            poll(lambda: client.stats().inflight_leases == 0, "the killed worker's lease to be handed on")
            stale(client, "k")
            assert client.get_or_compute("k", lambda: 2, ttl=1.0, timeout=5) == 2
        finally:
            if worker.is_alive():
                worker.kill()


def test_a_computation_finishing_in_the_background_is_not_started_again(coordinator: CoordinatorProcess) -> None:
    # found by the chaos checker: the same client asking again for a key whose computation went on
    # in the background (past its soft timeout) lost that computation's lease, and fn ran twice at once
    running, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        running.set()
        release.wait(DEADLINE)
        return "v2"

    try:
        with Client(coordinator.socket_path, spawn=False) as client:
            client.get_or_compute("k", lambda: "v1", ttl=0.3, fail_safe=60)
            stale(client, "k")
            assert client.get_or_compute("k", slow, ttl=60, fail_safe=60, soft_timeout=0.1) == "v1"
            assert running.wait(DEADLINE)
            # asked again while the first computation still runs: it waits (at most its soft timeout)
            assert client.get_or_compute("k", slow, ttl=60, fail_safe=60, soft_timeout=0.1) == "v1"
            release.set()
            poll(lambda: client.get("k") == "v2", "the background result")
            assert len(calls) == 1
            assert client.stats().stale_served == 2  # each caller handed the stale value, counted once
    finally:
        release.set()


def test_a_fail_safe_activation_never_brings_an_old_value_back_over_a_newer_write(
    short_tmp: Path, redis_server: RedisServer
) -> None:
    # found by the chaos checker: the stale value was stored again with the new lease's stamp, so it
    # beat a write acknowledged earlier on another host whose entry reached Redis later (a replay)
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        env = {"MTCACHE_REDIS_TIMEOUT": "0.3", "MTCACHE_STALENESS_BOUND": "1"}
        a = CoordinatorProcess(short_tmp / "a.sock", redis_url=redis_server.url, env=env)
        b = CoordinatorProcess(short_tmp / "b.sock", redis_url=proxy.url(), env=env)
        a.start()
        b.start()
        try:
            with Client(a.socket_path, spawn=False) as ca, Client(b.socket_path, spawn=False) as cb:
                ca.get_or_compute("k", lambda: "old", ttl=0.3, fail_safe=60)
                proxy.cut()
                assert cb.set("k", "newer", ttl=60)  # acknowledged by B, waiting to be replayed
                poll(lambda: cb.health().details["redis"] == "down", "B to notice the cut")
                stale(ca, "k")
                # A's source fails after B's write: fail-safe keeps the old value fresh a while on A
                assert ca.get_or_compute("k", down, ttl=0.3, fail_safe=60) == "old"
                proxy.heal()
                poll(lambda: ca.get("k") == "newer", "B's write to win everywhere once replayed")
                assert cb.get("k") == "newer"
        finally:
            a.stop()
            b.stop()


def test_waiters_of_a_computation_past_its_hard_timeout_get_cache_timeout_too(
    coordinator: CoordinatorProcess,
) -> None:
    release = threading.Event()
    started = threading.Event()
    errors: list[BaseException] = []

    def hung() -> str:
        started.set()
        release.wait(DEADLINE)
        return "late"

    def holder() -> None:
        with Client(coordinator.socket_path, spawn=False) as client:
            try:
                client.get_or_compute("k", hung, hard_timeout=1.0)
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert started.wait(DEADLINE)
        with Client(coordinator.socket_path, spawn=False) as waiter, pytest.raises(CacheTimeout):
            waiter.get_or_compute("k", lambda: "waiter", timeout=10)
    finally:
        release.set()
        thread.join(DEADLINE)
    assert len(errors) == 1 and isinstance(errors[0], CacheTimeout)


def test_a_worker_refused_an_eager_refresh_does_not_ask_again_for_the_same_copy(
    coordinator: CoordinatorProcess,
) -> None:
    """While worker A refreshes a key (its source held on an Event), worker B's hits past the refresh point
    ask the coordinator once, are told it is busy, and serve their copy without asking again."""
    release, started = threading.Event(), threading.Event()
    values = iter([1, 2])

    def source() -> int:
        value = next(values)
        if value == 2:
            started.set()
            release.wait(DEADLINE)
        return value

    with Client(coordinator.socket_path, spawn=False) as a, Client(coordinator.socket_path, spawn=False) as b:
        assert a.get_or_compute("k", source, ttl=1.0, eager_refresh=0.1) == 1
        assert b.get_or_compute("k", source, ttl=1.0, eager_refresh=0.1) == 1
        deadline = time.monotonic() + DEADLINE
        while not started.is_set():  # past 10 % of the TTL, A's hit starts the refresh
            assert time.monotonic() < deadline, "A's eager refresh never started"
            a.get_or_compute("k", source, ttl=1.0, eager_refresh=0.1)
            time.sleep(0.01)  # the caller's pace, not synchronisation
        for _ in range(50):
            assert b.get_or_compute("k", source, ttl=1.0, eager_refresh=0.1) == 1
        deadline = time.monotonic() + DEADLINE
        while b._core.counters["eager_refreshes"] == 0 or b._core._refreshing:
            assert time.monotonic() < deadline, "B's refresh request never came back"
            time.sleep(0.01)  # poll interval of a deadline-bounded wait
        asked = b._core.counters["eager_refreshes"]
        for _ in range(50):
            assert b.get_or_compute("k", source, ttl=1.0, eager_refresh=0.1) == 1
        assert asked == 1 and b._core.counters["eager_refreshes"] == 1
        release.set()
