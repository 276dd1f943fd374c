"""A stampede: many processes and threads ask for one cold key at the same moment.

    python examples/stampede.py [--socket PATH] [--processes 4] [--threads 4]

Every thread of every process waits at one barrier, then calls
``get_or_compute`` on the same missing key with a slow function (0.5 s). The
function runs once: threads of one process share their process's request, and
the processes wait on the coordinator for the one that holds the lease. Prints
the counts; exit status 0 if the function ran exactly once and every caller got
the same value.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from typing import Any

import multiprocess as mp
from _support import Target, parser, run

from mtcache import CacheStrategy, Client

COMPUTE_SECONDS = 0.5
DEADLINE = 60.0  # seconds; the example gives up on a caller process that hangs


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def caller_process(socket_path: str, key: str, threads: int, barrier: Any, runs: Any, results: Any) -> None:
    """One worker process: ``threads`` threads call ``get_or_compute(key)`` together."""
    values: list[Any] = []
    with Client(socket_path, spawn=False) as cache:

        def build_report() -> dict[str, Any]:
            with runs.get_lock():
                runs.value += 1
            time.sleep(COMPUTE_SECONDS)  # the slow part: a database, an upstream API
            return {"report": "quarterly", "built_by_pid": os.getpid(), "id": uuid.uuid4().hex}

        def one_caller() -> None:
            barrier.wait()
            values.append(cache.get_or_compute(key, build_report, strategy=CacheStrategy.SHORT_TERM))

        pool = [threading.Thread(target=one_caller) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        results.put((os.getpid(), values, cache.stats().local_coalesced))


def main(target: Target, args: argparse.Namespace) -> int:
    processes, threads = args.processes, args.threads
    key = f"example:stampede:{uuid.uuid4().hex}"  # cold for certain, even on a shared coordinator
    ctx = mp.get_context("spawn")
    callers = processes * threads
    barrier = ctx.Barrier(callers)
    runs = ctx.Value("i", 0)
    results = ctx.Queue()
    with Client(target.socket_path, spawn=False) as cache:
        before = cache.stats().coordinator
        procs = [ctx.Process(target=caller_process, args=(target.socket_path, key, threads, barrier, runs, results))
                 for _ in range(processes)]
        try:
            for proc in procs:
                proc.start()
            print(f"{callers} callers ({processes} processes x {threads} threads) ask for {key!r} at once")
            reports = [results.get(timeout=DEADLINE) for _ in procs]
            for proc in procs:
                proc.join(timeout=DEADLINE)
        finally:  # interrupted or timed out: stop the callers still running
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=10)
        after = cache.stats().coordinator
        cache.delete(key)

    values = [value for _, got, _ in reports for value in got]
    distinct = {value["id"] for value in values}
    local = sum(shared for _, _, shared in reports)
    print(f"the function ran {runs.value} time(s) for {len(values)} callers")
    print(f"distinct values received: {len(distinct)}")
    print(f"leases granted by the coordinator: {after['leases_granted'] - before['leases_granted']}")
    print(f"callers that waited on the coordinator for another process: {after['coalesced'] - before['coalesced']}")
    print(f"threads that shared their own process's request: {local}")
    ok = runs.value == 1 and len(values) == callers and len(distinct) == 1 and all(p.exitcode == 0 for p in procs)
    print("stampede: ok, computed once" if ok else "stampede: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    options = parser(__doc__)
    options.add_argument("--processes", type=positive, default=4, help="caller processes (default 4)")
    options.add_argument("--threads", type=positive, default=4, help="threads per process (default 4)")
    run(main, options)
