"""Many worker processes against one coordinator: stampedes, coherence, leases, spawning, fork.

Workers are ``multiprocess`` processes from a ``forkserver`` context (a fork of
pytest would inherit its threads); the fork test forks on purpose. Processes
synchronise on Barriers, Events, Pipes and Queues, every wait bounded by a
deadline; nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import multiprocess as mp
import pytest

from mtcache import AsyncClient, Client
from tests.coordinator_proc import CoordinatorProcess, kill_spawned, lock_holders
from tests.redis_server import RedisServer
from tests.waiting import wait_for_waiters, wait_for_waiters_async

#: Longest wait for anything in these tests; generous for a loaded 2-core machine.
DEADLINE = 30.0
PROCS = 8
THREADS = 4
TASKS = 8
KEY = "the-key"
VALUE = {"answer": 42, "items": [1, 2, 3]}


def context() -> Any:
    """A forkserver context whose server has mtcache imported already (cheap workers)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mtcache", "tests.waiting", "tests.test_stampede"])
    return ctx




def error(exc: BaseException) -> tuple[str, str]:
    """An outcome that names an exception (sent back to the test through a queue)."""
    return ("error", f"{type(exc).__name__}: {exc}")


def collect(results: Any, count: int) -> list[Any]:
    """``count`` items from ``results``, each within the deadline."""
    out = []
    for i in range(count):
        try:
            out.append(results.get(timeout=DEADLINE * 2))
        except Exception as exc:  # queue.Empty: a worker died or hung
            pytest.fail(f"only {i} of {count} workers reported: {exc!r}")
    return out


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Worker processes a test starts (append them); any still alive at teardown are killed."""
    procs: list[Any] = []
    yield procs
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(DEADLINE)


def joined(procs: list[Any]) -> list[int | None]:
    """Join every process (bounded) and return their exit codes."""
    for p in procs:
        p.join(DEADLINE)
    return [p.exitcode for p in procs]


# -- a stampede on one missing key -------------------------------------------------


def _stampede_sync_worker(path: str, barrier: Any, computes: Any, overlapped: Any, results: Any) -> None:
    outcomes: list[Any] = []
    lock = threading.Lock()
    with Client(path, spawn=False) as client:

        def compute() -> dict[str, Any]:
            with computes.get_lock():
                computes.value += 1
            # the overlap made real: every other process waits on the coordinator for this key
            overlapped.value = wait_for_waiters(path, PROCS - 1)
            return VALUE

        def call() -> None:
            try:
                barrier.wait(DEADLINE)
                out: Any = ("ok", client.get_or_compute(KEY, compute, timeout=DEADLINE))
            except Exception as exc:
                out = error(exc)
            with lock:
                outcomes.append(out)

        threads = [threading.Thread(target=call) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE * 2)
    results.put(outcomes)


def test_stampede_of_threads_in_many_processes_computes_once(
    coordinator: CoordinatorProcess, processes: list[Any]
) -> None:
    ctx = context()
    barrier, results = ctx.Barrier(PROCS * THREADS), ctx.Queue()
    computes, overlapped = ctx.Value("i", 0), ctx.Value("b", False)
    for _ in range(PROCS):
        p = ctx.Process(target=_stampede_sync_worker,
                        args=(coordinator.socket_path, barrier, computes, overlapped, results))
        p.start()
        processes.append(p)
    outcomes = [o for batch in collect(results, PROCS) for o in batch]
    assert joined(processes) == [0] * PROCS
    assert outcomes == [("ok", VALUE)] * (PROCS * THREADS)
    assert computes.value == 1
    assert overlapped.value  # the others really were waiting while fn ran
    with Client(coordinator.socket_path, spawn=False) as probe:
        assert probe.stats().coordinator["leases_granted"] == 1


def _stampede_async_worker(path: str, barrier: Any, computes: Any, overlapped: Any, results: Any) -> None:
    async def main() -> list[Any]:
        async with AsyncClient(path, spawn=False) as client:

            async def compute() -> dict[str, Any]:
                with computes.get_lock():
                    computes.value += 1
                overlapped.value = await wait_for_waiters_async(path, PROCS - 1)
                return VALUE

            async def call() -> Any:
                try:
                    return ("ok", await client.get_or_compute(KEY, compute, timeout=DEADLINE))
                except Exception as exc:
                    return error(exc)

            await asyncio.to_thread(barrier.wait, DEADLINE)
            return list(await asyncio.gather(*(call() for _ in range(TASKS))))

    try:
        outcomes = asyncio.run(main())
    except Exception as exc:
        outcomes = [error(exc)]
    results.put(outcomes)


def test_stampede_of_tasks_in_many_processes_computes_once(
    coordinator: CoordinatorProcess, processes: list[Any]
) -> None:
    ctx = context()
    barrier, results = ctx.Barrier(PROCS), ctx.Queue()
    computes, overlapped = ctx.Value("i", 0), ctx.Value("b", False)
    for _ in range(PROCS):
        p = ctx.Process(target=_stampede_async_worker,
                        args=(coordinator.socket_path, barrier, computes, overlapped, results))
        p.start()
        processes.append(p)
    outcomes = [o for batch in collect(results, PROCS) for o in batch]
    assert joined(processes) == [0] * PROCS
    assert outcomes == [("ok", VALUE)] * (PROCS * TASKS)
    assert computes.value == 1
    assert overlapped.value
    with Client(coordinator.socket_path, spawn=False) as probe:
        assert probe.stats().coordinator["leases_granted"] == 1


# -- no stale near read after another process's write --------------------------------

ROUNDS = 2_000


def _ping_pong_worker(path: str, conn: Any, writes_first: bool, results: Any) -> None:
    stale: list[tuple[int, Any]] = []
    try:
        with Client(path, spawn=False) as client:  # near cache on: the default
            for i in range(ROUNDS):
                if (i % 2 == 0) == writes_first:
                    client.set(KEY, i)
                    conn.send(i)
                    if not conn.poll(DEADLINE):
                        raise TimeoutError(f"no ack for round {i}")
                    conn.recv()
                else:
                    if not conn.poll(DEADLINE):
                        raise TimeoutError(f"no write signalled for round {i}")
                    written = conn.recv()
                    for _ in range(2):  # the first read sees the new value, the second is a near hit
                        got = client.get(KEY)
                        if got != written:
                            stale.append((written, got))
                    conn.send("ack")
            near_hits = client.stats().near_hits
        results.put(("ok", stale, near_hits))
    except Exception as exc:
        results.put((*error(exc), 0))


def test_a_write_is_never_followed_by_a_stale_near_read_in_another_process(
    coordinator: CoordinatorProcess, processes: list[Any]
) -> None:
    ctx = context()
    results = ctx.Queue()
    end_a, end_b = ctx.Pipe()
    for end, first in ((end_a, True), (end_b, False)):
        p = ctx.Process(target=_ping_pong_worker, args=(coordinator.socket_path, end, first, results))
        p.start()
        processes.append(p)
    end_a.close()
    end_b.close()
    reports = collect(results, 2)
    assert joined(processes) == [0, 0]
    for status, stale, near_hits in reports:
        assert status == "ok", stale
        assert stale == []  # each process read ROUNDS/2 writes of the other, twice each
        assert near_hits >= ROUNDS // 2  # the near cache was in play


# -- a lease holder that dies or hangs ------------------------------------------------


def _hanging_holder(path: str, computing: Any) -> None:
    with Client(path, spawn=False) as client:

        def compute() -> str:
            computing.set()
            # hangs until the test kills this process (never on an mp primitive: a waiter
            # killed inside one leaves it unusable for whoever signals it next)
            threading.Event().wait(DEADLINE * 2)
            return "holder"

        client.get_or_compute(KEY, compute, timeout=DEADLINE)


def test_lease_passes_to_a_waiter_when_the_holder_is_killed(
    coordinator: CoordinatorProcess, processes: list[Any]
) -> None:
    path = coordinator.socket_path
    ctx = context()
    computing = ctx.Event()
    holder = ctx.Process(target=_hanging_holder, args=(path, computing))
    holder.start()
    processes.append(holder)
    assert computing.wait(DEADLINE)
    calls: list[str] = []

    def waiter_fn() -> str:
        calls.append("waiter")
        return "waiter's value"

    with Client(path, spawn=False) as waiter, ThreadPoolExecutor(1) as pool:
        outcome = pool.submit(waiter.get_or_compute, KEY, waiter_fn, timeout=DEADLINE)
        assert wait_for_waiters(path, 1)
        holder.kill()  # SIGKILL mid-compute
        assert outcome.result(timeout=DEADLINE) == "waiter's value"
    assert joined([holder]) == [-signal.SIGKILL]
    assert calls == ["waiter"]
    with Client(path, spawn=False, near_capacity=0) as probe:
        assert probe.get(KEY) == "waiter's value"
        stats = probe.stats()
        assert stats.coordinator["lease_handovers"] == 1
        assert stats.inflight_leases == 0


def test_lease_passes_to_a_waiter_when_a_hung_holder_overruns_the_longest_lease(
    short_tmp: Path, redis_server: RedisServer
) -> None:
    # a holder that lives but hangs keeps renewing its lease, up to MTCACHE_LEASE_MAX
    coordinator = CoordinatorProcess(short_tmp / "lease.sock", redis_url=redis_server.url, args=("--lease-ttl", "1"),
                                     env={"MTCACHE_LEASE_MAX": "2"})
    coordinator.start()
    path = coordinator.socket_path
    computing, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def hung() -> str:
        calls.append("holder")
        computing.set()
        release.wait(DEADLINE)  # hangs until the test is done with the waiter
        return "late holder value"

    def waiter_fn() -> str:
        calls.append("waiter")
        return "waiter's value"

    def call(fn: Callable[[], str]) -> str:
        with Client(path, spawn=False) as client:
            return client.get_or_compute(KEY, fn, timeout=DEADLINE)

    try:
        with ThreadPoolExecutor(2) as pool:
            holder = pool.submit(call, hung)
            try:
                assert computing.wait(DEADLINE)
                waiter = pool.submit(call, waiter_fn)
                assert waiter.result(timeout=DEADLINE * 2) == "waiter's value"
            finally:
                release.set()
            assert holder.result(timeout=DEADLINE) == "late holder value"
        assert calls == ["holder", "waiter"]
        with Client(path, spawn=False, near_capacity=0) as probe:
            # the expired holder's late fill is discarded (None only if the waiter itself stalled
            # past a second lease TTL before its fill, and lost the lease in turn)
            assert probe.get(KEY) in ("waiter's value", None)
            stats = probe.stats()
            assert stats.coordinator["leases_expired"] >= 1
            assert stats.inflight_leases == 0
    finally:
        coordinator.stop()


# -- no coordinator: concurrent clients start exactly one ---------------------------------


def _spawning_worker(path: str, redis_url: str, barrier: Any, computes: Any, results: Any) -> None:
    try:
        with Client(path, spawn=True, redis_url=redis_url) as client:

            def compute() -> dict[str, Any]:
                with computes.get_lock():
                    computes.value += 1
                wait_for_waiters(path, PROCS - 1, timeout=5.0)  # best effort: let the others pile up
                return VALUE

            barrier.wait(DEADLINE)
            value = client.get_or_compute(KEY, compute, timeout=DEADLINE)
            pid = client.health().details.get("pid")
        results.put(("ok", value, pid))
    except Exception as exc:
        results.put((*error(exc), None))


def test_concurrent_clients_without_a_coordinator_spawn_exactly_one(
    short_tmp: Path, redis_server: RedisServer, processes: list[Any]
) -> None:
    path = str(short_tmp / "spawned.sock")
    ctx = context()
    barrier, results, computes = ctx.Barrier(PROCS), ctx.Queue(), ctx.Value("i", 0)
    try:
        for _ in range(PROCS):
            p = ctx.Process(target=_spawning_worker, args=(path, redis_server.url, barrier, computes, results))
            p.start()
            processes.append(p)
        reports = collect(results, PROCS)
        assert joined(processes) == [0] * PROCS
        holders = lock_holders(path)
    finally:
        lock = Path(f"{path}.lock")
        segment = lock.read_text().strip() if lock.exists() else ""
        kill_spawned(path)
        if segment.startswith("/dev/shm/mtcache-"):  # a SIGKILLed coordinator leaves its segment behind
            Path(segment).unlink(missing_ok=True)
    assert [r[:2] for r in reports] == [("ok", VALUE)] * PROCS, reports
    pids = {r[2] for r in reports}
    assert len(pids) == 1, pids  # every client talked to the same coordinator
    assert holders == list(pids)  # and it is the only one running
    assert computes.value == 1


# -- fork -------------------------------------------------------------------------------


def test_a_client_keeps_working_across_fork(coordinator: CoordinatorProcess) -> None:
    ctx = mp.get_context("fork")
    with Client(coordinator.socket_path, spawn=False) as client:
        client.set("parent", {"from": "parent"})
        assert client.get("parent") == {"from": "parent"}

        def child() -> None:
            # the child's first call: the parent's value, over a connection of its own
            assert client.get("parent") == {"from": "parent"}
            client.set("child", {"from": "child"})
            assert client.get("child") == {"from": "child"}
            assert client.stats().coordinator["connections"] == 2  # the parent's and this one

        p = ctx.Process(target=child)
        p.start()
        p.join(DEADLINE)
        if p.is_alive():
            p.kill()
            p.join(DEADLINE)
        assert p.exitcode == 0
        assert client.get("child") == {"from": "child"}
        client.set("after", "fork")
        with Client(coordinator.socket_path, spawn=False, near_capacity=0) as other:
            assert other.get("after") == "fork"
        assert client.stats().coordinator_errors == 0  # the child left the parent's connection alone
