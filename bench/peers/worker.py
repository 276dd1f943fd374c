"""What runs in each of the worker processes of W1-W4.

A worker builds its peer's client, plays its part of the workload between the
shared barriers, and puts ``(kind, index, payload)`` messages on the results
queue: ``"idle"`` and ``"ready"`` (W4, when its memory may be read), then
``"result"`` or ``"error"`` (with the traceback).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import loops
from .adapters import SyncCache, make_sync
from .adapters_async import AsyncCache, make_async
from .common import COMPUTE_S, SMALL, THREADS, WORKERS, IntArray, Job, key_name, make_value
from .registry import peer_named

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.sharedctypes import SynchronizedArray
    from multiprocessing.synchronize import Barrier, Event

__all__ = ["Shared", "serve", "worker_main"]

#: The longest a worker waits at a barrier or for the parent before giving up.
WAIT_S = 300.0


@dataclass
class Shared:
    """The objects every worker of one job shares with the parent."""

    barrier: Barrier
    results: Queue[tuple[str, int, Any]]
    versions: IntArray
    computes: SynchronizedArray[int]
    go: Event
    release: Event


def serve(index: int, inbox: Queue[Job | None], shared: Shared) -> None:
    """Worker ``index`` of a pool: run the jobs from ``inbox`` until it says None."""
    while (job := inbox.get()) is not None:
        worker_main(job, index, shared)


def worker_main(job: Job, index: int, shared: Shared) -> None:
    """Run worker ``index`` of ``job``; report through ``shared.results``. Never raises."""
    try:
        if peer_named(job.peer).is_async:
            import uvloop

            payload = uvloop.run(_run_async(job, index, shared))
        else:
            payload = _run_sync(job, index, shared)
        shared.results.put(("result", index, payload))
    except BaseException:
        shared.barrier.abort()
        shared.results.put(("error", index, traceback.format_exc()))


# -- synchronous peers ------------------------------------------------------


def _run_sync(job: Job, index: int, shared: Shared) -> dict[str, Any]:
    cache = make_sync(job.peer, job.env)
    try:
        if job.workload == "w1":
            return _w1_sync(cache, job, index, shared)
        if job.workload == "w2":
            return _w2_sync(cache, job, index, shared)
        if job.workload == "w3":
            return _w3_sync(cache, job, shared)
        if job.workload == "w4":
            return _w4_sync(cache, job, index, shared)
        raise ValueError(f"unknown workload {job.workload!r}")
    finally:
        cache.close()


def _populate_sync(cache: SyncCache, job: Job, index: int, shared: Shared) -> None:
    for kid in range(index, job.n_keys, WORKERS):
        cache.set(key_name(kid), make_value(kid, 1, job.value_size))
        shared.versions[kid] = 1


def _sweep_order(job: Job, index: int) -> list[str]:
    # every key once, each worker starting elsewhere: local tiers start the warm-up full
    start = index * job.n_keys // WORKERS
    return [key_name((start + i) % job.n_keys) for i in range(job.n_keys)]


def _sweep_sync(cache: SyncCache, job: Job, index: int) -> None:
    for key in _sweep_order(job, index):
        cache.get(key)


def _w1_sync(cache: SyncCache, job: Job, index: int, shared: Shared) -> dict[str, Any]:
    plan = loops.ReadPlan.make(job, index)
    _populate_sync(cache, job, index, shared)
    shared.barrier.wait(WAIT_S)
    time.sleep(job.settle_s)
    _sweep_sync(cache, job, index)
    loops.reads_sync(cache.get, plan, job.warmup_s, None)
    shared.barrier.wait(WAIT_S)
    lat = array("q")
    ops, misses, elapsed = loops.reads_sync(cache.get, plan, job.measure_s, lat)
    return loops.read_result(ops, misses, elapsed, lat, _local_stats_sync(cache))


def _w2_sync(cache: SyncCache, job: Job, index: int, shared: Shared) -> dict[str, Any]:
    plan = loops.MixPlan.make(job, index)
    _populate_sync(cache, job, index, shared)
    shared.barrier.wait(WAIT_S)
    time.sleep(job.settle_s)
    _sweep_sync(cache, job, index)
    loops.mix_sync(cache, plan, shared.versions, job.warmup_s, record=False)
    shared.barrier.wait(WAIT_S)
    return loops.mix_sync(cache, plan, shared.versions, job.measure_s, record=True).result()


def _w3_sync(cache: SyncCache, job: Job, shared: Shared) -> dict[str, Any]:
    n = job.stampede_keys
    computes = shared.computes

    def compute_of(kid: int) -> Callable[[], Any]:
        def fn() -> Any:
            with computes.get_lock():
                computes[kid] += 1
            time.sleep(COMPUTE_S)
            return make_value(kid, 1, SMALL)

        return fn

    fns = [compute_of(kid) for kid in range(n)]
    start = threading.Barrier(THREADS + 1)
    out = _StampedeOut()

    def caller() -> None:
        start.wait(WAIT_S)
        for kid in range(n):
            t0 = time.perf_counter_ns()
            try:
                value = cache.get_or_compute(f"st:{kid}", fns[kid])
            except Exception as exc:  # the point is to count what each peer does, errors included
                out.error(exc)
                continue
            out.add(time.perf_counter_ns() - t0, value, kid)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    try:
        shared.barrier.wait(WAIT_S)
    except BaseException:
        start.abort()
        raise
    start.wait(WAIT_S)
    for t in threads:
        t.join()
    return out.result()


def _w4_sync(cache: SyncCache, job: Job, index: int, shared: Shared) -> dict[str, Any]:
    cache.get("warm-up")  # connect first, so "idle" includes the connection
    shared.results.put(("idle", index, os.getpid()))
    _wait(shared.go)
    _populate_sync(cache, job, index, shared)
    shared.barrier.wait(WAIT_S)
    misses = sum(1 for kid in range(job.n_keys) if cache.get(key_name(kid)) is None)
    shared.results.put(("ready", index, os.getpid()))
    _wait(shared.release)
    return {"misses": misses}


def _local_stats_sync(cache: SyncCache) -> list[int] | None:
    stats: Callable[[], list[int]] | None = getattr(cache, "local_stats", None)
    return stats() if stats else None


# -- asyncio peers ----------------------------------------------------------


async def _run_async(job: Job, index: int, shared: Shared) -> dict[str, Any]:
    cache = await make_async(job.peer, job.env)
    try:
        if job.workload == "w1":
            return await _w1_async(cache, job, index, shared)
        if job.workload == "w2":
            return await _w2_async(cache, job, index, shared)
        if job.workload == "w3":
            return await _w3_async(cache, job, shared)
        if job.workload == "w4":
            return await _w4_async(cache, job, index, shared)
        raise ValueError(f"unknown workload {job.workload!r}")
    finally:
        await cache.close()


async def _populate_async(cache: AsyncCache, job: Job, index: int, shared: Shared) -> None:
    for kid in range(index, job.n_keys, WORKERS):
        await cache.set(key_name(kid), make_value(kid, 1, job.value_size))
        shared.versions[kid] = 1


# Blocking on a barrier inside the loop is deliberate: nothing else may run in
# this worker until every worker has arrived.


async def _sweep_async(cache: AsyncCache, job: Job, index: int) -> None:
    for key in _sweep_order(job, index):
        await cache.get(key)


async def _w1_async(cache: AsyncCache, job: Job, index: int, shared: Shared) -> dict[str, Any]:
    plan = loops.ReadPlan.make(job, index)
    await _populate_async(cache, job, index, shared)
    shared.barrier.wait(WAIT_S)
    await asyncio.sleep(job.settle_s)  # idle: background tasks (invalidation listeners) catch up
    await _sweep_async(cache, job, index)
    await loops.reads_async(cache.get, plan, job.warmup_s, None)
    shared.barrier.wait(WAIT_S)
    lat = array("q")
    ops, misses, elapsed = await loops.reads_async(cache.get, plan, job.measure_s, lat)
    return loops.read_result(ops, misses, elapsed, lat, await _local_stats_async(cache))


async def _w2_async(cache: AsyncCache, job: Job, index: int, shared: Shared) -> dict[str, Any]:
    plan = loops.MixPlan.make(job, index)
    await _populate_async(cache, job, index, shared)
    shared.barrier.wait(WAIT_S)
    await asyncio.sleep(job.settle_s)
    await _sweep_async(cache, job, index)
    await loops.mix_async(cache, plan, shared.versions, job.warmup_s, record=False)
    shared.barrier.wait(WAIT_S)
    return (await loops.mix_async(cache, plan, shared.versions, job.measure_s, record=True)).result()


async def _w3_async(cache: AsyncCache, job: Job, shared: Shared) -> dict[str, Any]:
    n = job.stampede_keys
    computes = shared.computes

    def compute_of(kid: int) -> Callable[[], Awaitable[Any]]:
        async def fn() -> Any:
            with computes.get_lock():
                computes[kid] += 1
            await asyncio.sleep(COMPUTE_S)
            return make_value(kid, 1, SMALL)

        return fn

    fns = [compute_of(kid) for kid in range(n)]
    out = _StampedeOut()

    async def caller() -> None:
        for kid in range(n):
            t0 = time.perf_counter_ns()
            try:
                value = await cache.get_or_compute(f"st:{kid}", fns[kid])
            except Exception as exc:  # the point is to count what each peer does, errors included
                out.error(exc)
                continue
            out.add(time.perf_counter_ns() - t0, value, kid)

    shared.barrier.wait(WAIT_S)
    await asyncio.gather(*(caller() for _ in range(THREADS)))
    return out.result()


async def _w4_async(cache: AsyncCache, job: Job, index: int, shared: Shared) -> dict[str, Any]:
    await cache.get("warm-up")
    shared.results.put(("idle", index, os.getpid()))
    await asyncio.to_thread(_wait, shared.go)
    await _populate_async(cache, job, index, shared)
    shared.barrier.wait(WAIT_S)
    misses = 0
    for kid in range(job.n_keys):
        if await cache.get(key_name(kid)) is None:
            misses += 1
    shared.results.put(("ready", index, os.getpid()))
    await asyncio.to_thread(_wait, shared.release)
    return {"misses": misses}


async def _local_stats_async(cache: AsyncCache) -> list[int] | None:
    stats: Callable[[], Awaitable[list[int]]] | None = getattr(cache, "local_stats", None)
    return await stats() if stats else None


# -- helpers ----------------------------------------------------------------


def _wait(event: Event) -> None:
    if not event.wait(WAIT_S):
        raise TimeoutError("the parent did not answer")


class _StampedeOut:
    """Latencies and errors of one worker's callers in W3 (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latencies: list[int] = []
        self.errors = 0
        self.wrong = 0
        self.first_error = ""

    def add(self, ns: int, value: Any, kid: int) -> None:
        with self._lock:
            self.latencies.append(ns)
            if not isinstance(value, dict) or value.get("k") != kid:
                self.wrong += 1

    def error(self, exc: Exception) -> None:
        with self._lock:
            self.errors += 1
            if not self.first_error:
                self.first_error = f"{type(exc).__name__}: {exc}"

    def result(self) -> dict[str, Any]:
        return {"latencies_ns": self.latencies, "errors": self.errors, "wrong": self.wrong,
                "first_error": self.first_error}
