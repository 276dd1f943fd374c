"""Micro-benchmark of one read at each tier, side by side in one run.

    .venv/bin/python bench/micro.py [--n 20000]

Starts its own redis-server and coordinators. Rows: a plain dict get; a near
hit; an L1 hit through the coordinator's socket (near cache off); an L2 hit
through the coordinator (L1 capacity 1 and two keys read alternately, so each
read misses L1 and is served from Redis); a raw redis-py GET of the same bytes
on the same server. Value: a ~200-byte dict.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import msgpack
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import coordinator, machine, measure, redis_server, table

from mtcache import Client

VALUE = {"symbol": "ACME", "price": 123.45, "bid": 123.40, "ask": 123.50, "volume": 1_234_567,
         "exchange": "XNYS", "currency": "USD", "history": [120.1, 121.3, 122.8, 123.0, 123.45],
         "updated": "2026-11-27T10:00:00Z", "note": "x" * 40}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20_000)
    args = p.parse_args()
    n = args.n
    rows = []
    print(f"# mtcache micro-benchmark\n\nmachine: {machine()}; value: {len(msgpack.packb(VALUE))} bytes "
          f"msgpack; n = {n:,}\n")
    d = {"k": VALUE}
    rows.append(("dict get", measure(lambda: d["k"], n=n * 10, batch=100)))
    with redis_server() as url:
        with coordinator(url) as sock:
            with Client(sock, spawn=False) as near:
                near.set("k", VALUE)
                near.get("k")
                rows.append(("near hit", measure(lambda: near.get("k"), n=n * 10, batch=100)))
            with Client(sock, spawn=False, near_capacity=0) as c:
                rows.append(("L1 hit via coordinator socket", measure(lambda: c.get("k"), n=n)))
        with coordinator(url, "--l1-capacity", "1") as sock, Client(sock, spawn=False, near_capacity=0) as c:
            c.set("a", VALUE)
            c.set("b", VALUE)
            keys = itertools.cycle(["a", "b"])
            rows.append(("L2 hit via coordinator (Redis)", measure(lambda: c.get(next(keys)), n=n)))
            l2_hits = c.stats().l2_hits
        raw = redis.Redis.from_url(url)
        raw.set("raw", msgpack.packb(VALUE))
        rows.append(("redis-py GET + unpackb", measure(lambda: msgpack.unpackb(raw.get("raw")), n=n)))
        raw.close()
    print(table(rows, baseline="redis-py GET + unpackb"))
    print(f"\n(L2 row: {l2_hits:,} L2 hits counted by the coordinator)")


if __name__ == "__main__":
    main()
