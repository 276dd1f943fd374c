"""W5 cross-host: how long after ``set`` returns on host A does host B return
the new value?

mtcache: two coordinators (two "hosts") on one Redis; a writer process on A, a
reader process on B. cashews: its local tier is per process, so two processes
are two hosts to it. The reader polls one key in a loop (yielding the CPU between
polls) and stamps the first time it sees each version; the writer stamps the
moment each ``set`` returned and waits for the reader before the next write
(2-5 ms apart, so the reader holds the old value locally again). Both stamps are
``perf_counter_ns`` (CLOCK_MONOTONIC, shared by the processes of one machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import random
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from _util import coordinator_process, redis_server_process

from .adapters import make_sync
from .adapters_async import make_async
from .common import Env, IntArray, exact_quantiles_us
from .registry import COORDINATOR_SETTINGS

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

__all__ = ["MEASURED", "w5"]

#: The peers W5 measures; the others get a figure by construction or a reason (see the registry).
MEASURED = ("mtcache", "cashews")
KEY = "w5:probe"
WAIT_S = 2.0


@dataclass
class _Shared:
    set_at: IntArray
    seen_at: IntArray
    last_seen: IntArray
    stop: Event
    results: Queue[tuple[str, str]]


@contextlib.contextmanager
def _hosts(peer: str) -> Iterator[tuple[Env, Env]]:
    with redis_server_process() as redis:
        if peer != "mtcache":
            yield Env(redis.address), Env(redis.address)
            return
        with coordinator_process(redis.address, **COORDINATOR_SETTINGS) as a, \
                coordinator_process(redis.address, **COORDINATOR_SETTINGS) as b:
            yield Env(redis.address, a.address), Env(redis.address, b.address)


def w5(peer: str, samples: int) -> dict[str, Any]:
    """Measure ``samples`` writes of ``peer`` (one of :data:`MEASURED`).

    :raises RuntimeError: the writer or reader failed (the message has its traceback).
    """
    ctx = multiprocessing.get_context("spawn")
    shared = _Shared(
        set_at=ctx.Array("q", samples + 1, lock=False),
        seen_at=ctx.Array("q", samples + 1, lock=False),
        last_seen=ctx.Array("q", 1, lock=False),
        stop=ctx.Event(),
        results=ctx.Queue(),
    )
    with _hosts(peer) as (env_a, env_b):
        reader = ctx.Process(target=_reader_main, args=(peer, env_b, shared), daemon=True)
        writer = ctx.Process(target=_writer_main, args=(peer, env_a, samples, shared), daemon=True)
        writer.start()
        reader.start()
        reports: dict[str, str] = {}
        try:
            # the writer finishes first; the reader polls until told to stop
            for timeout in (120 + samples * WAIT_S, 30):
                try:
                    who, report = shared.results.get(timeout=timeout)
                except queue.Empty:
                    raise RuntimeError(f"W5 {peer}: the writer or reader did not report within {timeout} s") from None
                reports[who] = report
                shared.stop.set()
        finally:
            shared.stop.set()
            for proc in (writer, reader):
                proc.join(10)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
    failed = {k: v for k, v in reports.items() if v != "ok"}
    if failed:
        raise RuntimeError("\n".join(f"{k}: {v}" for k, v in failed.items()))
    deltas = [shared.seen_at[v] - shared.set_at[v] for v in range(1, samples + 1)
              if shared.seen_at[v] and shared.set_at[v]]
    p50, p99 = exact_quantiles_us([max(0, d) for d in deltas])
    return {
        "samples": samples,
        "seen": len(deltas),
        "missed": samples - len(deltas),
        "before_return": sum(1 for d in deltas if d < 0),
        "p50_us": p50,
        "p99_us": p99,
        "max_us": max(deltas) / 1000 if deltas else float("nan"),
    }


def _value(version: int) -> dict[str, Any]:
    return {"k": 0, "v": version, "note": "n" * 160}


def _writer_main(peer: str, env: Env, samples: int, shared: _Shared) -> None:
    try:
        if peer == "mtcache":
            _write_sync(peer, env, samples, shared)
        else:
            import uvloop

            uvloop.run(_write_async(peer, env, samples, shared))
        shared.results.put(("writer", "ok"))
    except BaseException:
        shared.results.put(("writer", traceback.format_exc()))


def _reader_main(peer: str, env: Env, shared: _Shared) -> None:
    try:
        if peer == "mtcache":
            _read_sync(peer, env, shared)
        else:
            import uvloop

            uvloop.run(_read_async(peer, env, shared))
        shared.results.put(("reader", "ok"))
    except BaseException:
        shared.results.put(("reader", traceback.format_exc()))


def _caught_up(shared: _Shared, version: int) -> bool:
    deadline = time.monotonic() + WAIT_S
    while shared.last_seen[0] < version:
        if time.monotonic() > deadline or shared.stop.is_set():
            return False
        time.sleep(0.0002)
    return True


def _write_sync(peer: str, env: Env, samples: int, shared: _Shared) -> None:
    cache = make_sync(peer, env)
    rng = random.Random(5)
    try:
        cache.set(KEY, _value(0))
        _caught_up(shared, 0)
        for version in range(1, samples + 1):
            time.sleep(rng.uniform(0.002, 0.005))
            cache.set(KEY, _value(version))
            shared.set_at[version] = time.perf_counter_ns()
            _caught_up(shared, version)
    finally:
        cache.close()


async def _write_async(peer: str, env: Env, samples: int, shared: _Shared) -> None:
    cache = await make_async(peer, env)
    rng = random.Random(5)
    try:
        await cache.set(KEY, _value(0))
        await asyncio.to_thread(_caught_up, shared, 0)
        for version in range(1, samples + 1):
            await asyncio.sleep(rng.uniform(0.002, 0.005))
            await cache.set(KEY, _value(version))
            shared.set_at[version] = time.perf_counter_ns()
            await asyncio.to_thread(_caught_up, shared, version)
    finally:
        await cache.close()


def _read_sync(peer: str, env: Env, shared: _Shared) -> None:
    cache = make_sync(peer, env)
    last = -1
    polls = 0
    try:
        while not (polls & 255 == 0 and shared.stop.is_set()):
            polls += 1
            value = cache.get(KEY)
            if value is not None and value["v"] > last:
                last = value["v"]
                shared.seen_at[last] = time.perf_counter_ns()
                shared.last_seen[0] = last
            os.sched_yield()
    finally:
        cache.close()


async def _read_async(peer: str, env: Env, shared: _Shared) -> None:
    cache = await make_async(peer, env)
    last = -1
    polls = 0
    try:
        while not (polls & 255 == 0 and shared.stop.is_set()):
            polls += 1
            value = await cache.get(KEY)
            if value is not None and value["v"] > last:
                last = value["v"]
                shared.seen_at[last] = time.perf_counter_ns()
                shared.last_seen[0] = last
            await asyncio.sleep(0)  # let the invalidation listener run, as a server's loop would
    finally:
        await cache.close()
