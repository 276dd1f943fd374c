"""The mtcache demo: one coordinator, several worker processes, a real workload,
live statistics.

    python workers/demo.py [--workers 4] [--seconds 12] [--redis-url URL]

It starts a coordinator (using Redis at ``--redis-url``/``REDIS_URL``/localhost
when one answers, otherwise L1 only, and says which), then worker processes
that serve "quotes" from a slow price service (50 ms per computation) through
``get_or_compute``, update some prices with ``set``, and all ask for one cold
report at the same moment halfway through (a stampede). While they run, the live
view of ``mtcache top`` shows the whole host: reads per tier (the workers' near
hits included), hit rates, latencies, the price-service time saved, the hottest
keys, and the stampede as an event. Everything it started is stopped at the end,
also on Ctrl-C.

It never touches data it did not write: it works in a namespace of its own,
``mtcache-demo-<pid>``, and deletes that namespace's keys from Redis when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import multiprocess as mp
import redis
from rich.console import Console
from rich.live import Live

from mtcache import CacheStrategy, Client, Settings, dashboard, start_coordinator, stop_coordinator

SYMBOLS = [f"SYM{i:03d}" for i in range(300)]
COMPUTE_SECONDS = 0.05
BURST_COMPUTE_SECONDS = 0.3


def price_service(symbol: str) -> dict[str, object]:
    """The slow upstream: what the cache saves us from calling."""
    time.sleep(COMPUTE_SECONDS)
    return {"symbol": symbol, "price": round(random.uniform(10, 500), 2), "at": time.time()}


def redis_answers(url: str) -> bool:
    """True if Redis at ``url`` answers PING within half a second."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def delete_namespace(url: str, namespace: str) -> None:
    """Delete every Redis key of ``namespace`` (values, tombstones, its stream): the
    demo's own, and nothing else. Never raises for Redis."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2.0) as client:
            keys = list(client.scan_iter(match=f"mtcache:{namespace}:*", count=1000))
            for i in range(0, len(keys), 1000):
                client.unlink(*keys[i:i + 1000])
    except (redis.RedisError, OSError) as exc:
        print(f"could not delete the demo's keys (mtcache:{namespace}:*) from Redis: {exc}", file=sys.stderr)


def worker(
    n: int, socket_path: str, namespace: str, seconds: float, start: mp.Value, go: mp.Event, out: mp.Queue
) -> None:
    """One worker process: reads (Zipf-like popularity), a few writes, one stampede halfway."""
    rng = random.Random(n)
    weights = [1 / (i + 1) for i in range(len(SYMBOLS))]
    computes = 0
    latencies: list[float] = []
    requests = 0
    with Client(socket_path, namespace=namespace, spawn=False) as client:

        def compute(symbol: str):
            def fn() -> dict[str, object]:
                nonlocal computes
                computes += 1
                return price_service(symbol)
            return fn

        def report() -> str:
            nonlocal computes
            computes += 1
            time.sleep(BURST_COMPUTE_SECONDS)
            return "quarterly report"

        out.put(("ready", n))
        go.wait()  # every worker starts at the same moment, so the burst is one
        begin = start.value
        burst_at, deadline = begin + seconds / 2, begin + seconds
        burst_done = False
        last_report = time.monotonic()
        while time.time() < deadline:
            if not burst_done and time.time() >= burst_at:
                burst_done = True
                before = computes
                t0 = time.perf_counter_ns()
                client.get_or_compute("report:q4", report, strategy=CacheStrategy.LONG_TERM)
                took = (time.perf_counter_ns() - t0) / 1e9
                out.put(("burst", n, took, computes > before))
            symbol = rng.choices(SYMBOLS, weights)[0]
            key = f"quote:{symbol}"
            t0 = time.perf_counter_ns()
            if rng.random() < 0.02:
                quote = {"symbol": symbol, "price": round(rng.uniform(10, 500), 2), "at": time.time()}
                client.set(key, quote, strategy=CacheStrategy.REALTIME)
            else:
                client.get_or_compute(key, compute(symbol), strategy=CacheStrategy.REALTIME)
            latencies.append((time.perf_counter_ns() - t0) / 1000)
            requests += 1
            if time.monotonic() - last_report >= 0.5:
                out.put(("load", n, requests, computes, latencies))
                requests, computes, latencies = 0, 0, []
                last_report = time.monotonic()
            time.sleep(0.0005)  # pacing: a web worker does other work between cache calls
        out.put(("load", n, requests, computes, latencies))


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Progress:
    """What the workers told the demo: requests, calls to the price service, their latencies
    (near hits included: the application's view), and the stampede."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.requests = 0
        self.computes = 0
        self.latencies: list[float] = []
        self.burst: list[tuple[float, bool]] = []
        self.burst_seen_at: float | None = None

    def take(self, item: tuple, elapsed: float) -> None:
        if item[0] == "load":
            _, _, requests, computes, latencies = item
            self.requests += requests
            self.computes += computes
            self.latencies.extend(latencies)
            del self.latencies[:-50_000]
        elif item[0] == "burst":
            self.burst.append((item[2], item[3]))
            if self.burst_seen_at is None:
                self.burst_seen_at = elapsed

    def events(self) -> list[str]:
        if not self.burst:
            return []
        computed = [took for took, did in self.burst if did]
        waited = [took for took, did in self.burst if not did]
        text = (f"{self.burst_seen_at:4.1f} s  stampede on report:q4: {len(self.burst)} workers at once; "
                f"{len(computed)} computed")
        if computed:
            text += f" ({dashboard.fmt_duration(max(computed))})"
        if waited:
            text += f", {len(waited)} waited (<= {dashboard.fmt_duration(max(waited))})"
        return [text]

    def extras(self) -> list[tuple[str, str]]:
        lat, took = self.latencies, dashboard.fmt_duration
        return [("requests", f"{self.requests:,} made by the workers, {self.computes:,} price-service calls"),
                ("latency", f"p50 {took(pct(lat, 0.5) / 1e6)}, p90 {took(pct(lat, 0.9) / 1e6)}, "
                            f"p99 {took(pct(lat, 0.99) / 1e6)} (per request, near hits included)")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--redis-url", default=None)
    args = p.parse_args(argv)
    if args.workers < 1 or args.seconds <= 0:
        p.error("--workers must be >= 1 and --seconds > 0")

    url = Settings.load(redis_url=args.redis_url).redis_url
    use_redis = redis_answers(url)
    shown = Settings.load(redis_url=url).redacted_redis_url
    print(f"Redis at {shown}: " + ("answers, using it as L2" if use_redis else
                                    "does not answer: running with L1 only (degraded, no L2)"))
    folder = Path(tempfile.mkdtemp(prefix="mtcache-demo-"))
    socket_path = str(folder / "coordinator.sock")
    namespace = f"mtcache-demo-{os.getpid()}"  # this run's own: the demo never touches anyone's data
    procs: list[mp.Process] = []
    coordinator = None
    console = Console(highlight=False)
    try:
        try:
            coordinator = start_coordinator(
                socket_path, namespace=namespace, redis_url=url, use_redis=use_redis, log_level="WARNING"
            )
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        with Client(socket_path, namespace=namespace, spawn=False) as admin:
            ctx = mp.get_context("spawn")
            out: mp.Queue = ctx.Queue()
            start, go = ctx.Value("d", 0.0), ctx.Event()
            procs = [ctx.Process(target=worker, args=(n, socket_path, namespace, args.seconds, start, go, out),
                                 daemon=True) for n in range(args.workers)]
            for proc in procs:
                proc.start()
            ready = 0
            while ready < args.workers and any(proc.is_alive() for proc in procs):
                with contextlib.suppress(queue.Empty):
                    ready += out.get(timeout=0.5)[0] == "ready"
            start.value = time.time() + 0.1
            go.set()
            progress = Progress(args.workers)
            mode = "Redis as L2" if use_redis else "L1 only (no Redis)"

            def look(previous: dashboard.Sample | None) -> tuple[dashboard.Sample, object]:
                elapsed = min(max(0.0, time.time() - start.value), args.seconds)
                while not out.empty():
                    progress.take(out.get(), elapsed)
                sample = dashboard.take_sample(admin)
                title = f"mtcache demo   {elapsed:4.1f} s / {args.seconds:.0f} s   {args.workers} workers   {mode}"
                view = dashboard.render_dashboard(sample, previous, title=title, events=progress.events(),
                                        extras=progress.extras())
                return sample, view

            previous: dashboard.Sample | None = None
            ticks = 0
            with Live(console=console, auto_refresh=False) if console.is_terminal else contextlib.nullcontext() \
                    as live:
                while any(proc.is_alive() for proc in procs) or not out.empty():
                    sample, view = look(previous)
                    if live is not None:
                        live.update(view, refresh=True)
                    else:
                        ticks += 1
                        if ticks % 4 == 0:  # not a terminal: one progress line every ~2 s
                            fleet = sample.stats["fleet"]
                            print(f"mtcache demo {time.time() - start.value:4.1f} s: {progress.requests:,} requests, "
                                  f"near copies served {fleet['served']['near']:.1%}, computed "
                                  f"{fleet['served']['compute']:.1%}", flush=True)
                    previous = sample
                    time.sleep(0.5)  # screen refresh interval
            for proc in procs:
                proc.join(timeout=10)
            sample, view = look(None)
            print("\nSummary")
            console.print(view)
            fleet = sample.stats["fleet"]
            burst = sample.stats["coordinator"].get("coalesced", 0)
            print(f"\n{progress.requests:,} requests cost {progress.computes:,} calls to the price service "
                  f"(about {dashboard.fmt_duration(fleet['source_seconds_saved'])} of its time saved); "
                  f"{burst:,} callers "
                  f"waited for another worker's computation instead of repeating it.")
            if progress.latencies:
                print(f"median request {statistics.median(progress.latencies):,.1f} µs")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping workers and the coordinator")
        return 130
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        if coordinator is not None:
            stop_coordinator(coordinator)
            if use_redis:
                delete_namespace(url, namespace)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
