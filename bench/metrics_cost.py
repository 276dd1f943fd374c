"""What the statistics cost the coordinator and the clients, per operation.

    .venv/bin/python bench/metrics_cost.py [--n 200000]

In-process, no servers: the work added to each request the coordinator serves (a
hot-keys update and a histogram update), to each socket request a client makes (a
histogram update), and to each report (reading it) and each STATS answer (adding up
the reports of 8 and of 1,024 clients). The near-hit path is measured separately by
``bench/micro.py --near-only`` (run it with ``PYTHONPATH`` set to each version).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine, measure

from mtcache.coordinator.hotkeys import TopKeys
from mtcache.coordinator.metrics import CoordinatorMetrics, FleetCollector
from mtcache.fleet import COUNTERS, parse_report
from mtcache.histogram import LatencyHistogram


def _report(client: int, rng: random.Random) -> list[object]:
    counters = {name: rng.randrange(10**9) for name in COUNTERS}
    latency = {"roundtrip": [[i, rng.randrange(1000)] for i in range(40, 120, 2)],
               "compute": [[i, rng.randrange(100)] for i in range(100, 200, 4)]}
    return [{"id": client.to_bytes(8, "big"), "counters": counters, "latency": latency}]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200_000)
    args = p.parse_args()
    n = args.n
    rng = random.Random(1)
    rows: dict[str, dict[str, float]] = {}

    def add(name: str, fn: Callable[[], object], count: int, batch: int = 100) -> None:
        rows[name] = measure(fn, n=count, batch=batch)

    hot = TopKeys(64)
    zipf = [f"quote:SYM{int(rng.paretovariate(1.2)) % 5000:04d}" for _ in range(4096)]
    keys = iter(zipf * (n // len(zipf) + 200))
    add("hot keys: add (Zipf keys)", lambda: hot.add(next(keys)), n)
    uniform = [f"key:{i}" for i in range(1_000_000)]
    keys2 = iter(uniform)
    add("hot keys: add (every key new: evicts each time)", lambda: hot.add(next(keys2)), n)
    hist = LatencyHistogram()
    durations = iter([rng.randrange(1_000, 50_000_000) for _ in range(n + 1000)])
    add("histogram: record one duration", lambda: hist.record_ns(next(durations)), n)
    clock = time.perf_counter_ns
    add("two perf_counter_ns calls (timing a request)", lambda: (clock(), clock()), n)
    report = _report(1, rng)
    add("report: parse (counters + two histograms)", lambda: parse_report(report), n // 20, batch=10)
    for clients in (8, 1024):
        metrics = CoordinatorMetrics()
        fleet: FleetCollector = metrics.fleet
        fleet.max_reporters = clients
        for c in range(clients):
            fleet.report(1000 + c, _report(c, rng))
        add(f"STATS snapshot, {clients:,} clients reporting", lambda m=metrics: m.snapshot(), max(20, n // 2000),
            batch=1)
    print(f"# statistics cost\n\nmachine: {machine()}; n = {n:,}\n")
    print("| operation | p50 µs | p99 µs |\n|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['p50']:.3f} | {r['p99']:.3f} |")


if __name__ == "__main__":
    main()
