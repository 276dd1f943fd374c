"""Micro-benchmark of the shared-memory L1 mirror, side by side with a dict.

    .venv/bin/python bench/mirror_bench.py [--n 200000]

A writer process (the coordinator's role) owns the mirror and holds two values:
a ~200-byte msgpack dict and a ~10 KiB list of 44 such dicts. This process
attaches a reader and times, for each value: a plain ``dict`` get of the decoded
object, a mirror get (raw bytes), ``msgpack.unpackb`` alone, a mirror get +
``unpackb``, the same while the writer rewrites both keys 1,000 times a second,
a mirror miss, and ``MirrorWriter.put`` (in this process, on a mirror of its
own). Times are per call in µs over batches of calls, after a discarded warm-up.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine, measure

from mtcache.mirror import MirrorReader, MirrorWriter


def decode_or_none(value: bytes | None) -> Any:
    """A miss (a read that met the writer three times) is what the client sends to the socket."""
    return None if value is None else msgpack.unpackb(value)

ITEM = {"symbol": "ACME", "price": 123.45, "bid": 123.40, "ask": 123.50, "volume": 1_234_567,
        "exchange": "XNYS", "currency": "USD", "history": [120.1, 121.3, 122.8, 123.0, 123.45],
        "updated": "2026-11-27T10:00:00Z", "note": "x" * 40}
VALUES = {"small": msgpack.packb(ITEM), "large": msgpack.packb([dict(ITEM, volume=i) for i in range(44)])}


def writer_process(paths: Any, busy: Any, stop: Any) -> None:
    """Own a mirror holding VALUES; rewrite them at 1 kHz while ``busy`` is set."""
    with MirrorWriter.create(prefix="mtcache-bench") as w:
        for key, value in VALUES.items():
            w.put(key, value, math.inf)
        paths.put(w.path)
        while not stop.is_set():
            if busy.wait(0.05):
                for key, value in VALUES.items():
                    w.put(key, value, math.inf)
                time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000, help="calls timed per row")
    n = parser.parse_args().n
    ctx = multiprocessing.get_context("spawn")
    paths, busy, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=writer_process, args=(paths, busy, stop))
    proc.start()
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        with MirrorReader.attach(paths.get(timeout=60)) as r:
            get, unpackb = r.get, msgpack.unpackb
            for key, raw in VALUES.items():
                decoded = {key: unpackb(raw)}
                row = results.setdefault(key, {})
                row["dict get"] = measure(lambda k=key, d=decoded: d[k], n=n, batch=100)
                row["mirror get (raw bytes)"] = measure(lambda k=key: get(k), n=n, batch=100)
                row["msgpack.unpackb alone"] = measure(lambda b=raw: unpackb(b), n=n, batch=100)
                row["mirror get + unpackb"] = measure(lambda k=key: unpackb(get(k)), n=n, batch=100)
                busy.set()
                row["mirror get + unpackb, writer at 1 kHz"] = measure(lambda k=key: decode_or_none(get(k)), n=n,
                                                                       batch=100)
                busy.clear()
                row["mirror miss"] = measure(lambda: get("absent"), n=n, batch=100)
            reads = (r.hits, r.misses, r.torn_retries)
    finally:
        stop.set()
        proc.join(30)
        paths.close()
        paths.join_thread()
    with MirrorWriter.create(prefix="mtcache-bench") as w:
        for key, raw in VALUES.items():
            results[key]["MirrorWriter.put"] = measure(lambda k=key, b=raw: w.put(k, b, math.inf), n=n // 4,
                                                       batch=100)

    sizes = {key: len(raw) for key, raw in VALUES.items()}
    print(f"# mtcache shared-memory mirror\n\nmachine: {machine()}; n = {n:,} calls per row, batches of 100\n")
    print(f"| what | {sizes['small']} B p50 µs | p99 µs | ops/s | {sizes['large']:,} B p50 µs | p99 µs | ops/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for what in results["small"]:
        cells = []
        for key in VALUES:
            m = results[key][what]
            cells.append(f"{m['p50']:.3f} | {m['p99']:.3f} | {m['ops']:,.0f}")
        print(f"| {what} | {' | '.join(cells)} |")
    print(f"\nreader counters: hits {reads[0]:,}, misses {reads[1]:,}, torn retries {reads[2]:,}")


if __name__ == "__main__":
    main()
