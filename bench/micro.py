"""Micro-benchmark of one read at each tier, side by side in one run.

    .venv/bin/python bench/micro.py [--n 20000]

Starts its own redis-server and coordinators. For a ~200-byte dict and a
~10 KiB value (a list of 44 dicts), one row per way of reading it:

* dict get: the floor;
* near hit: the worker's own copy (and of a value with two tags: a hit never looks a tag up), by ``get``
  and by ``get_or_compute`` (with and without an eager refresh to check for);
* mirror hit: the coordinator's L1 read from shared memory (near cache off),
  decoded;
* L1 hit via socket: near cache off, coordinator started without the mirror;
* L2 hit via coordinator: L1 capacity 1 and two keys read alternately, so every
  read misses L1 and comes from Redis;
* diskcache get: ``diskcache.Cache`` in a temporary folder (SQLite), decoded;
* redis-py GET + unpackb: the same bytes from the same Redis, no cache.

Then 100 keys in one call: ``get_many`` through the coordinator (L1 hits, and L2
hits), redis-py ``MGET``, and cashews ``get_many``.

Needs the ``bench`` extra (diskcache, cashews).

``--near-only`` times just the dict and near-hit rows (no Redis, no peers): to compare
the near-hit path of two versions, run it with ``PYTHONPATH`` set to each checkout.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import msgpack
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import coordinator, machine, measure, redis_server

from mtcache import Client

SMALL = {"symbol": "ACME", "price": 123.45, "bid": 123.40, "ask": 123.50, "volume": 1_234_567,
         "exchange": "XNYS", "currency": "USD", "history": [120.1, 121.3, 122.8, 123.0, 123.45],
         "updated": "2026-11-27T10:00:00Z", "note": "x" * 40}
LARGE = [dict(SMALL, seq=i) for i in range(44)]
VALUES = {"200 B": SMALL, "10 KiB": LARGE}
BASELINE = "redis-py GET + unpackb"


def rows_for(value: object, url: str | None, n: int, near_only: bool = False) -> dict[str, dict[str, float]]:
    """Every row of the table for one value (the dict and near rows only, with ``near_only``)."""
    import diskcache

    out: dict[str, dict[str, float]] = {}
    fast = n * 10

    def add(name: str, fn: Callable[[], object], count: int, batch: int = 1) -> None:
        out[name] = measure(fn, n=count, batch=batch)

    d = {"k": value}
    add("dict get", lambda: d["k"], fast, 100)
    with coordinator(url) as sock:
        with Client(sock, spawn=False) as near:
            near.set("k", value)
            near.get("k")
            add("near hit", lambda: near.get("k"), fast, 100)
            near.set("tagged", value, tags=["prices", "tenant:7"])
            near.get("tagged")
            add("near hit, tagged value", lambda: near.get("tagged"), fast, 100)
            add("near hit, get_or_compute", lambda: near.get_or_compute("k", lambda: value), fast, 100)
            add("near hit, get_or_compute(eager_refresh=0.8)",
                lambda: near.get_or_compute("k", lambda: value, eager_refresh=0.8), fast, 100)
        if near_only:
            return out
        with Client(sock, spawn=False, near_capacity=0) as c:
            c.get("k")
            add("mirror hit (near off)", lambda: c.get("k"), fast, 10)
    with coordinator(url, l1_shm_bytes=0) as sock, Client(sock, spawn=False, near_capacity=0) as c:
        c.set("k", value)
        add("L1 hit via coordinator socket (no mirror)", lambda: c.get("k"), n)
    with coordinator(url, l1_capacity=1, l1_shm_bytes=0) as sock, \
            Client(sock, spawn=False, near_capacity=0) as c:
        c.set("a", value)
        c.set("b", value)
        keys = itertools.cycle(["a", "b"])
        add("L2 hit via coordinator (Redis)", lambda: c.get(next(keys)), n)
    folder = tempfile.mkdtemp(prefix="mtcache-bench-dc-")
    try:
        with diskcache.Cache(folder) as dc:
            dc.set("k", msgpack.packb(value))
            add("diskcache get + unpackb", lambda: msgpack.unpackb(dc.get("k")), n)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    with redis.Redis.from_url(url) as raw:
        raw.set("raw", msgpack.packb(value))
        add(BASELINE, lambda: msgpack.unpackb(raw.get("raw")), n)
    return out


BATCH_KEYS = [f"b{i}" for i in range(100)]
BATCH_BASELINE = "redis-py MGET + unpackb"


def batch_rows(url: str, n: int) -> dict[str, dict[str, float]]:
    """Reading 100 keys of SMALL in one call: mtcache's get_many through the coordinator (near cache
    and mirror off: L1 hits, and L2 hits), redis-py MGET, cashews get_many (on its own event loop)."""
    import asyncio

    from cashews import Cache

    out: dict[str, dict[str, float]] = {}
    items = {key: SMALL for key in BATCH_KEYS}
    with coordinator(url, l1_shm_bytes=0) as sock, Client(sock, spawn=False, near_capacity=0) as c:
        c.set_many(items)
        out["mtcache get_many, L1 hits"] = measure(lambda: c.get_many(BATCH_KEYS), n=n)
    with coordinator(url, l1_capacity=1, l1_shm_bytes=0) as sock, \
            Client(sock, spawn=False, near_capacity=0) as c:
        c.set_many(items)
        out["mtcache get_many, L2 hits (Redis)"] = measure(lambda: c.get_many(BATCH_KEYS), n=n)
    with redis.Redis.from_url(url) as raw:
        raw.mset({f"raw:{key}": msgpack.packb(SMALL) for key in BATCH_KEYS})
        raw_keys = [f"raw:{key}" for key in BATCH_KEYS]
        out[BATCH_BASELINE] = measure(lambda: [msgpack.unpackb(v) for v in raw.mget(raw_keys)], n=n)
    loop = asyncio.new_event_loop()
    try:
        cache = Cache()
        cache.setup(url, client_side=False)
        loop.run_until_complete(cache.set_many({f"cw:{key}": SMALL for key in BATCH_KEYS}, expire=600))
        cw_keys = [f"cw:{key}" for key in BATCH_KEYS]
        out["cashews get_many (event loop included)"] = measure(
            lambda: loop.run_until_complete(cache.get_many(*cw_keys)), n=n)
        loop.run_until_complete(cache.close())
    finally:
        loop.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--near-only", action="store_true", help="only the dict and near-hit rows (no Redis)")
    args = p.parse_args()
    if args.near_only:
        import mtcache

        print(f"# near hits ({mtcache.__file__}); machine: {machine()}; n = {args.n * 10:,}\n")
        print("| read | value | p50 µs | p90 µs | p99 µs |\n|---|---|---:|---:|---:|")
        for label, value in VALUES.items():
            for name, r in rows_for(value, None, args.n, near_only=True).items():
                print(f"| {name} | {label} | {r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} |")
        return
    results: dict[str, dict[str, dict[str, float]]] = {}
    with redis_server() as url:
        for label, value in VALUES.items():
            results[label] = rows_for(value, url, args.n)
        batches = batch_rows(url, max(500, args.n // 20))
    sizes = {label: len(msgpack.packb(v)) for label, v in VALUES.items()}
    print(f"# mtcache micro-benchmark\n\nmachine: {machine()}; values: "
          + ", ".join(f"{label} = {size:,} bytes msgpack" for label, size in sizes.items())
          + f"; n = {args.n:,} (x10 for sub-microsecond rows)\n")
    head = "| read | " + " | ".join(f"{label} p50 µs | p99 µs | vs Redis" for label in VALUES) + " |"
    print(head)
    print("|---|" + "---:|---:|---:|" * len(VALUES))
    for name in results["200 B"]:
        cells = []
        for label in VALUES:
            r, base = results[label][name], results[label][BASELINE]
            cells.append(f"{r['p50']:.2f} | {r['p99']:.2f} | {r['p50'] / base['p50']:.3f}x")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for label in VALUES:
        mirror = results[label]["mirror hit (near off)"]["p50"]
        disk = results[label]["diskcache get + unpackb"]["p50"]
        redis_p50 = results[label][BASELINE]["p50"]
        print(f"\n{label}: mirror hit = {mirror / disk:.2f}x diskcache get, {mirror / redis_p50:.3f}x redis-py GET "
              f"(1/{redis_p50 / mirror:.0f})")
    print("\n| 100 keys of 200 B in one call | p50 µs | p99 µs | vs MGET |\n|---|---:|---:|---:|")
    base = batches[BATCH_BASELINE]["p50"]
    for name, r in batches.items():
        print(f"| {name} | {r['p50']:.1f} | {r['p99']:.1f} | {r['p50'] / base:.2f}x |")


if __name__ == "__main__":
    main()
