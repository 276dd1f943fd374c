"""Never hang a worker (issue 11): a coordinator that is stopped but not dead (SIGSTOP, a long pause)
costs a call at most about one stall timeout, a lease wait ends as soon as the coordinator stops
beating, and a slow computation keeps its lease (renewed while its holder lives) and is cached,
also across hosts.

The bound asserted here is a hang bound, not a speed: ``BOUND`` is twice the stall timeout plus
slack for a loaded machine, against the 5 to 65 s waits these calls had before."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mtcache import AsyncClient, Client
from mtcache.shm import STALL_MS
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer

#: The longest any call may block on a stopped coordinator: max(2 x the stall timeout, ...) + slack.
BOUND = 2 * STALL_MS / 1000 + 1.0
DEADLINE = 30.0


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


@pytest.fixture
def stopped(coordinator: CoordinatorProcess) -> Iterator[Callable[[], None]]:
    """Call it to SIGSTOP the coordinator; it is continued at teardown."""
    state = {"stopped": False}

    def stop() -> None:
        os.kill(coordinator.pid, signal.SIGSTOP)
        state["stopped"] = True

    yield stop
    if state["stopped"]:
        os.kill(coordinator.pid, signal.SIGCONT)


def test_a_stopped_coordinator_blocks_no_call_longer_than_the_bound(
    coordinator: CoordinatorProcess, stopped: Callable[[], None]
) -> None:
    # issue 11: a sync worker was blocked 16.5 s out of 20, get_or_compute took 65 s
    with Client(coordinator.socket_path, spawn=False) as client:
        client.set("cached", "v")
        assert client.get("cached") == "v"
        stopped()
        durations: list[float] = []
        computed = 0
        end = time.monotonic() + 4 * STALL_MS / 1000
        i = 0
        while time.monotonic() < end:
            i += 1
            _, took = _timed(lambda i=i: client.get(f"missing{i}"))  # type: ignore[misc]
            durations.append(took)
            ok, took = _timed(lambda i=i: client.set(f"k{i}", i))  # type: ignore[misc]
            durations.append(took)
            assert ok is False  # not acknowledged: skipped or unknown
            value, took = _timed(lambda i=i: client.get_or_compute(f"c{i}", lambda: "computed", timeout=30))  # type: ignore[misc]
            durations.append(took)
            computed += value == "computed"
        assert computed == i  # fn is called when no coordinator answers
        assert max(durations) < BOUND, max(durations)
        assert sum(durations) < 2 * BOUND  # only the first call waits: the others see the stall at once


async def test_concurrent_async_calls_on_a_stopped_coordinator_end_within_the_bound(
    coordinator: CoordinatorProcess, stopped: Callable[[], None]
) -> None:
    # issue 11: 50 concurrent AsyncClient.get calls each waited 5 s
    async with AsyncClient(coordinator.socket_path, spawn=False) as client:
        await client.set("k", "v")
        stopped()
        start = time.monotonic()
        results = await asyncio.gather(*(client.get(f"missing{i}", "default") for i in range(50)))
        assert results == ["default"] * 50
        assert time.monotonic() - start < BOUND


def test_a_lease_wait_ends_when_the_coordinator_stops_beating(
    coordinator: CoordinatorProcess, stopped: Callable[[], None]
) -> None:
    holder_started, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def hold() -> None:
        with Client(coordinator.socket_path, spawn=False) as client:
            def slow() -> str:
                holder_started.set()
                release.wait(DEADLINE)
                return "holder"

            results["holder"] = client.get_or_compute("k", slow, timeout=60)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holder_started.wait(DEADLINE)
        with Client(coordinator.socket_path, spawn=False) as waiter:
            result: list[Any] = []
            timer = threading.Timer(0.5, stopped)  # once the waiter is waiting on the lease
            timer.start()
            value, took = _timed(lambda: waiter.get_or_compute("k", lambda: "waiter", timeout=60))
            timer.join()
            result.append(value)
        assert result == ["waiter"]  # it computed itself instead of waiting up to 60 s
        assert took < 0.5 + BOUND
    finally:
        release.set()
        thread.join(DEADLINE)


def test_calls_reach_the_coordinator_again_once_it_continues(coordinator: CoordinatorProcess) -> None:
    with Client(coordinator.socket_path, spawn=False) as client:
        client.set("k", "before")
        os.kill(coordinator.pid, signal.SIGSTOP)
        try:
            assert client.set("k", "during") is False
        finally:
            os.kill(coordinator.pid, signal.SIGCONT)
        deadline = time.monotonic() + DEADLINE
        while not client.set("k", "after"):
            assert time.monotonic() < deadline, "the client never used the coordinator again"
            time.sleep(0.05)  # poll interval of a deadline-bounded wait (the client backs off meanwhile)
        assert client.get("k") == "after"


# -- leases that match the work -----------------------------------------------------------------------


def test_a_computation_slower_than_the_lease_ttl_is_computed_once_and_cached(
    short_tmp: Path, redis_server: RedisServer
) -> None:
    # issue 11: TTL 2 s, fn 2.5 s: three calls, three computes, nothing stored
    coordinator = CoordinatorProcess(short_tmp / "c.sock", redis_url=redis_server.url,
                                     env={"MTCACHE_LEASE_TTL": "1"})
    coordinator.start()
    try:
        calls: list[int] = []

        def slow() -> str:
            calls.append(1)
            time.sleep(2.5)  # the computation itself: longer than the lease TTL
            return "slow value"

        results: list[Any] = []

        def caller() -> None:
            with Client(coordinator.socket_path, spawn=False) as client:
                results.append(client.get_or_compute("k", slow, timeout=20))

        threads = [threading.Thread(target=caller) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        assert results == ["slow value"] * 3
        assert len(calls) == 1
        with Client(coordinator.socket_path, spawn=False) as probe:
            assert probe.get("k") == "slow value"  # stored, not thrown away
            assert probe.stats().coordinator["leases_renewed"] >= 1
    finally:
        coordinator.stop()


def test_a_waiter_on_another_host_gets_a_slow_computation_instead_of_a_timeout(
    short_tmp: Path, redis_server: RedisServer
) -> None:
    # issue 11: a waiter on another host with timeout=20 got CacheTimeout after 2.1 s
    env = {"MTCACHE_LEASE_TTL": "1"}
    a = CoordinatorProcess(short_tmp / "a.sock", redis_url=redis_server.url, env=env)
    b = CoordinatorProcess(short_tmp / "b.sock", redis_url=redis_server.url, env=env)
    a.start()
    b.start()
    try:
        started = threading.Event()
        calls: list[str] = []
        results: dict[str, Any] = {}

        def on_a() -> None:
            with Client(a.socket_path, spawn=False) as client:
                def slow() -> str:
                    calls.append("a")
                    started.set()
                    time.sleep(3.0)  # the computation itself: three lease TTLs
                    return "from a"

                results["a"] = client.get_or_compute("k", slow, timeout=20)

        thread = threading.Thread(target=on_a)
        thread.start()
        assert started.wait(DEADLINE)
        with Client(b.socket_path, spawn=False) as client_b:
            results["b"] = client_b.get_or_compute("k", lambda: calls.append("b") or "from b", timeout=20)
        thread.join(DEADLINE)
        assert results == {"a": "from a", "b": "from a"}
        assert calls == ["a"]
    finally:
        a.stop()
        b.stop()
