"""The mtcache demo: one coordinator, several worker processes, a real workload,
live statistics.

    python workers/demo.py [--workers 4] [--seconds 12] [--redis-url URL]

It starts a coordinator (using Redis at ``--redis-url``/``REDIS_URL``/localhost
when one answers, otherwise L1 only, and says which), then worker processes
that serve "quotes" from a slow price service (50 ms per computation) through
``get_or_compute``, update some prices with ``set``, and all ask for one cold
report at the same moment halfway through (a stampede). While they run, a table
shows per-tier hit rates, computations against requests, and latency
percentiles. Everything it started is stopped at the end, also on Ctrl-C.

It never touches data it did not write: it works in a namespace of its own,
``mtcache-demo-<pid>``, and deletes that namespace's keys from Redis when it ends.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import multiprocess as mp
import redis

from mtcache import CacheStrategy, Client, Settings, start_coordinator, stop_coordinator

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


def worker(n: int, socket_path: str, namespace: str, seconds: float, burst_at: float, out: mp.Queue) -> None:
    """One worker process: reads (Zipf-like popularity), a few writes, one stampede."""
    rng = random.Random(n)
    weights = [1 / (i + 1) for i in range(len(SYMBOLS))]
    computes = 0
    latencies: list[float] = []
    requests = 0
    burst_done = False
    deadline = time.monotonic() + seconds
    with Client(socket_path, namespace=namespace, spawn=False) as client:

        def compute(symbol: str):
            def fn() -> dict[str, object]:
                nonlocal computes
                computes += 1
                return price_service(symbol)
            return fn

        last_report = time.monotonic()
        while time.monotonic() < deadline:
            now = time.time()
            if not burst_done and now >= burst_at:
                burst_done = True

                def report() -> str:
                    nonlocal computes
                    computes += 1
                    time.sleep(BURST_COMPUTE_SECONDS)
                    return "quarterly report"

                t0 = time.perf_counter_ns()
                client.get_or_compute("report:q4", report, strategy=CacheStrategy.LONG_TERM)
                latencies.append((time.perf_counter_ns() - t0) / 1000)
                requests += 1
            symbol = rng.choices(SYMBOLS, weights)[0]
            key = f"quote:{symbol}"
            t0 = time.perf_counter_ns()
            if rng.random() < 0.02:
                quote = {"symbol": symbol, "price": round(rng.uniform(10, 500), 2), "at": now}
                client.set(key, quote, strategy=CacheStrategy.REALTIME)
            else:
                client.get_or_compute(key, compute(symbol), strategy=CacheStrategy.REALTIME)
            latencies.append((time.perf_counter_ns() - t0) / 1000)
            requests += 1
            if time.monotonic() - last_report >= 0.5:
                out.put((n, requests, computes, latencies))
                requests, computes, latencies = 0, 0, []
                last_report = time.monotonic()
            time.sleep(0.0005)  # pacing: a web worker does other work between cache calls
        s = client.stats()
        out.put((n, requests, computes, latencies))
        out.put(("near", n, s.near_hits, s.near_misses, s.mirror_hits))


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def render(elapsed: float, seconds: float, totals: dict[str, float], lat: list[float], st) -> str:
    req = totals["requests"]
    rows = [
        f"mtcache demo   {elapsed:5.1f}s / {seconds:.0f}s   workers: {totals['workers']}   mode: {totals['mode']}",
        "",
        f"  requests                 {req:>10,.0f}",
        f"  computations             {totals['computes']:>10,.0f}   "
        f"({totals['computes'] / max(req, 1):.2%} of requests)",
        f"  near hit rate (workers)  {totals['near_rate']:>10.1%}   (workers report near and mirror "
        f"hits at the end)",
        f"  L1 hits: mirror / socket {totals['mirror_hits']:>10,.0f} / {st.l1_hits:,}   "
        f"L1 misses {st.l1_misses:,}",
        f"  L2 hits / misses         {st.l2_hits:>10,} / {st.l2_misses:,}   promotions {st.promotions:,}",
        f"  leases granted           {st.coordinator.get('leases_granted', 0):>10,}   "
        f"coalesced waiters {st.coalesced:,}",
        f"  latency µs p50/p90/p99   {pct(lat, 0.5):>10,.1f} / {pct(lat, 0.9):,.1f} / {pct(lat, 0.99):,.1f}",
    ]
    return "\n".join(rows)


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
    tty = sys.stdout.isatty()
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
            burst_at = time.time() + 2 + args.seconds / 2
            procs = [ctx.Process(target=worker, args=(n, socket_path, namespace, args.seconds, burst_at, out),
                                 daemon=True) for n in range(args.workers)]
            for proc in procs:
                proc.start()
            totals = {"requests": 0.0, "computes": 0.0, "workers": args.workers, "near_rate": 0.0, "mirror_hits": 0.0,
                      "mode": admin.health().mode + ("" if use_redis else " (L1 only)")}
            latencies: list[float] = []
            near = [0, 0]
            start = time.monotonic()
            lines = ticks = 0
            while any(proc.is_alive() for proc in procs) or not out.empty():
                while not out.empty():
                    item = out.get()
                    if item[0] == "near":
                        near[0] += item[2]
                        near[1] += item[3]
                        totals["mirror_hits"] += item[4]
                        continue
                    _, r, c, lat = item
                    totals["requests"] += r
                    totals["computes"] += c
                    latencies.extend(lat)
                totals["near_rate"] = near[0] / max(sum(near), 1)
                text = render(time.monotonic() - start, args.seconds, totals, latencies[-50_000:], admin.stats())
                if tty:
                    sys.stdout.write(("\x1b[F" * lines) + "\x1b[J" + text + "\n")
                    lines = text.count("\n") + 1
                else:
                    ticks += 1
                    if ticks % 4 == 0:  # not a terminal: one progress line every ~2 s
                        print(text.splitlines()[0], f"requests {totals['requests']:,.0f}", flush=True)
                sys.stdout.flush()
                time.sleep(0.5)  # screen refresh interval
            for proc in procs:
                proc.join(timeout=10)
            st = admin.stats()
            print("\nSummary")
            print(render(time.monotonic() - start, args.seconds, totals, latencies, st))
            burst = st.coordinator.get("coalesced", 0)
            print(f"\n{totals['requests']:,.0f} requests cost {totals['computes']:,.0f} calls to the price service; "
                  f"{burst:,} callers waited for another worker's computation instead of repeating it.")
            if latencies:
                print(f"median request {statistics.median(latencies):,.1f} µs")
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
