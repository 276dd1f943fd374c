"""A worker pool on multiprocess: the shape of a celery or RQ worker fleet.

    python workers/pool.py [--workers 4] [--jobs 200] [--keys 10] [--socket PATH]

The master starts the host's coordinator (as gunicorn.conf.py does, Redis from
``REDIS_URL``) unless ``--socket`` names one already running. Worker processes
then take jobs from one queue until they receive a stop sentinel. Every job
needs the quote of one of ``--keys`` symbols and gets it with ``get_or_compute``
over a slow price service (0.1 s); the jobs are shuffled, so several workers
often want the same cold symbol at the same moment. The summary shows, per
worker, the jobs it ran and the computations it made, and per symbol the
computations. Exit status 0 if every distinct symbol was computed exactly once
and every job ran.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

import multiprocess as mp
from quotes import fetch_quote

from mtcache import CacheStrategy, Client, start_coordinator, stop_coordinator

COMPUTE_SECONDS = 0.1
DEADLINE = 120.0  # seconds; the master gives up on workers that hang


def _compute(symbol: str, computed: Counter[str]) -> dict[str, Any]:
    computed[symbol] += 1
    return fetch_quote(symbol, COMPUTE_SECONDS)


def worker(socket_path: str, jobs: Any, results: Any) -> None:
    """One worker process: run jobs until the ``None`` sentinel, then report
    ``(pid, jobs run, computations per symbol, computations made without a coordinator)``."""
    done = 0
    computed: Counter[str] = Counter()
    with Client(socket_path, spawn=False) as cache:
        while (symbol := jobs.get(timeout=DEADLINE)) is not None:
            fn = functools.partial(_compute, symbol, computed)
            cache.get_or_compute(f"quote:{symbol}", fn, strategy=CacheStrategy.SHORT_TERM)
            done += 1
        local = cache.stats().local_computes
    results.put((os.getpid(), done, dict(computed), local))


def run_pool(socket_path: str, workers: int, jobs: int, keys: int) -> int:
    """Run the fleet against the coordinator on ``socket_path``, print the summary
    and return the exit status."""
    run_id = uuid.uuid4().hex[:6].upper()  # fresh symbols: cold even on a coordinator that ran this before
    symbols = [f"P{run_id}-{k:02d}" for k in range(keys)]
    order = [symbols[i % keys] for i in range(jobs)]
    random.Random(run_id).shuffle(order)
    with Client(socket_path, spawn=False) as admin:
        health = admin.health()
    print(f"pool: {workers} workers, {jobs} jobs over {keys} symbols; coordinator on {socket_path} "
          f"(redis {health.redis}, mode {health.mode})")
    ctx = mp.get_context("spawn")
    queue, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(socket_path, queue, results), daemon=True) for _ in range(workers)]
    start = time.monotonic()
    try:
        for proc in procs:
            proc.start()
        for symbol in [*order, *([None] * workers)]:
            queue.put(symbol)
        reports = [results.get(timeout=DEADLINE) for _ in procs]
        for proc in procs:
            proc.join(timeout=DEADLINE)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
    elapsed = time.monotonic() - start

    per_symbol: Counter[str] = Counter()
    for pid, done, computed, local in sorted(reports):
        per_symbol.update(computed)
        extra = f" ({local} without a coordinator)" if local else ""
        print(f"  worker {pid}: {done} jobs, {sum(computed.values())} computations{extra}")
    print("  computations per symbol: " + ", ".join(f"{s} {per_symbol[s]}" for s in symbols))
    total = sum(per_symbol.values())
    once = all(per_symbol[s] == 1 for s in symbols) and total == keys
    print(f"{keys} distinct keys, {total} computations: " + ("one per key" if once else "NOT one per key"))
    print(f"took {elapsed:.2f} s; computing every job would have cost {jobs} x {COMPUTE_SECONDS} s "
          f"= {jobs * COMPUTE_SECONDS:.1f} s of price-service time")
    all_ran = sum(done for _, done, _, _ in reports) == jobs and all(proc.exitcode == 0 for proc in procs)
    return 0 if once and all_ran else 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _terminated(signum: int, frame: object) -> NoReturn:
    # SIGTERM unwinds like Ctrl-C does: the workers and the coordinator are stopped
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, provide a coordinator, run the pool; the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=_positive, default=4, help="worker processes (default 4)")
    p.add_argument("--jobs", type=_positive, default=200, help="jobs in the queue (default 200)")
    p.add_argument("--keys", type=_positive, default=10, help="distinct symbols the jobs ask for (default 10)")
    p.add_argument("--socket", metavar="PATH", help="a running coordinator (default: start one, stop it at the end)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    if args.socket is not None:
        return run_pool(args.socket, args.workers, args.jobs, args.keys)
    folder = Path(tempfile.mkdtemp(prefix="mtcache-pool-"))
    socket_path = str(folder / "coordinator.sock")
    try:
        coordinator = start_coordinator(socket_path, log_level="WARNING")
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        return 1
    try:
        return run_pool(socket_path, args.workers, args.jobs, args.keys)
    except KeyboardInterrupt:
        print("interrupted: stopping the workers and the coordinator", file=sys.stderr)
        return 130
    finally:
        stop_coordinator(coordinator)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
