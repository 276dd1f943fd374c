"""What a call through the coordinator costs, against its floor and redis-py, side by side in one run.

    .venv/bin/python bench/paths.py [--n 5000] [--seconds 5] [--procs 8] [--json bench/paths.json]

Starts its own redis-server and coordinators. A ~200-byte value, near cache off (every call goes to the
coordinator). One process:

* the floor of a write: a coordinator round trip that does no work (PING) plus one pipelined
  SET + XADD from redis-py (what a write and its stream entry cost Redis);
* the floor of an L2 hit: the same round trip plus a redis-py GET;
* mtcache ``set`` / ``delete`` (the coordinator answers once Redis holds the write) and ``get`` of an L2
  hit (L1 holds one entry and two keys are read alternately, so every read comes from Redis);
* redis-py ``SET`` / ``DEL`` / ``GET`` on the same Redis.

Then ``--procs`` processes at once for ``--seconds``: aggregate ``set`` ops/s (distinct keys per process)
and aggregate L2-hit ``get`` ops/s, mtcache against redis-py (one connection per process).
Each p50 is the median of the per-round p50s over ``--rounds`` alternated rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import coordinator, machine, measure, redis_server

from mtcache import Client
from mtcache.protocol import Op

VALUE = {"symbol": "ACME", "price": 123.45, "bid": 123.40, "ask": 123.50, "volume": 1_234_567,
         "exchange": "XNYS", "currency": "USD", "history": [120.1, 121.3, 122.8, 123.0, 123.45],
         "updated": "2026-11-27T10:00:00Z", "note": "x" * 40}
PACKED = msgpack.packb(VALUE)


def one_process(url: str, n: int) -> dict[str, float]:
    """p50 µs of every single-process row."""
    out: dict[str, float] = {}

    def add(name: str, fn: Callable[[], object]) -> None:
        out[name] = measure(fn, n=n)["p50"]

    with redis.Redis.from_url(url) as raw:
        counter = itertools.count()
        add("redis-py SET", lambda: raw.set(f"raw:{next(counter) % 1000}", PACKED))
        add("redis-py GET", lambda: raw.get(f"raw:{next(counter) % 1000}"))
        add("redis-py DEL", lambda: raw.delete(f"raw:{next(counter) % 1000}"))

        def set_and_xadd() -> None:
            pipe = raw.pipeline(transaction=False)
            pipe.set(f"raw:{next(counter) % 1000}", PACKED)
            pipe.xadd("raw:stream", {"op": "set", "key": "k"}, maxlen=10_000, approximate=True)
            pipe.execute()

        add("redis-py pipelined SET+XADD", set_and_xadd)
    with coordinator(url) as sock, Client(sock, spawn=False, near_capacity=0) as c:
        c.set("warm", VALUE)
        add("coordinator round trip (PING)", lambda: c._request(Op.PING))
        keys = itertools.cycle([f"k{i}" for i in range(1000)])
        add("mtcache set", lambda: c.set(next(keys), VALUE))
        add("mtcache delete", lambda: c.delete(next(keys)))
    with coordinator(url, l1_capacity=1, l1_shm_bytes=0) as sock, \
            Client(sock, spawn=False, near_capacity=0) as c:
        c.set("a", VALUE)
        c.set("b", VALUE)
        ab = itertools.cycle(["a", "b"])
        add("mtcache get, L2 hit", lambda: c.get(next(ab)))
    out["floor: set/delete (PING + SET+XADD)"] = out["coordinator round trip (PING)"] + out[
        "redis-py pipelined SET+XADD"]
    out["floor: L2 hit (PING + GET)"] = out["coordinator round trip (PING)"] + out["redis-py GET"]
    return out


def _worker(kind: str, target: str, seconds: float, index: int, start: mp.Event, counts: mp.Queue) -> None:
    done = 0
    if kind.startswith("mtcache"):
        c = Client(target, spawn=False, near_capacity=0)
        c.set("a", VALUE)
        if kind == "mtcache set":
            keys = itertools.cycle([f"w{index}:{i}" for i in range(1000)])
            op: Callable[[], object] = lambda: c.set(next(keys), VALUE)  # noqa: E731
        else:
            ab = itertools.cycle(["a", "b"])
            op = lambda: c.get(next(ab))  # noqa: E731
    else:
        r = redis.Redis.from_url(target)
        r.set("raw:a", PACKED)
        if kind == "redis-py SET":
            raw_keys = itertools.cycle([f"raw:w{index}:{i}" for i in range(1000)])
            op = lambda: r.set(next(raw_keys), PACKED)  # noqa: E731
        else:
            op = lambda: r.get("raw:a")  # noqa: E731
    op()
    start.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(20):
            op()
        done += 20
    counts.put(done)


def many_processes(kind: str, target: str, procs: int, seconds: float) -> float:
    """Aggregate ops/s of ``procs`` processes doing ``kind`` for ``seconds``."""
    ctx = mp.get_context("fork")
    start, counts = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(kind, target, seconds, i, start, counts)) for i in range(procs)]
    for w in workers:
        w.start()
    time.sleep(0.5)  # let every process connect before the clock starts
    start.set()
    total = sum(counts.get(timeout=seconds + 60) for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


def aggregate(url: str, procs: int, seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    with coordinator(url) as sock:
        out["mtcache set"] = many_processes("mtcache set", sock, procs, seconds)
    with coordinator(url, l1_capacity=1, l1_shm_bytes=0) as sock:
        with Client(sock, spawn=False, near_capacity=0) as c:
            c.set("b", VALUE)
        out["mtcache get, L2 hit"] = many_processes("mtcache get", sock, procs, seconds)
    out["redis-py SET"] = many_processes("redis-py SET", url, procs, seconds)
    out["redis-py GET"] = many_processes("redis-py GET", url, procs, seconds)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=5000, help="calls per single-process row and round")
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds (medians are quoted)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each multi-process run")
    p.add_argument("--procs", type=int, default=8)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    singles: list[dict[str, float]] = []
    aggregates: list[dict[str, float]] = []
    with redis_server() as url:
        for _ in range(args.rounds):
            singles.append(one_process(url, args.n))
            aggregates.append(aggregate(url, args.procs, args.seconds))
    single = {k: statistics.median(r[k] for r in singles) for k in singles[0]}
    multi = {k: statistics.median(r[k] for r in aggregates) for k in aggregates[0]}
    print(machine())
    print(f"\none process, p50 µs (median of {args.rounds} rounds, {args.n} calls each)")
    for name, value in single.items():
        print(f"  {name:<40} {value:>9.1f}")
    set_floor = single["floor: set/delete (PING + SET+XADD)"]
    get_floor = single["floor: L2 hit (PING + GET)"]
    print(f"  set / floor {single['mtcache set'] / set_floor:.2f}x, "
          f"delete / floor {single['mtcache delete'] / set_floor:.2f}x, "
          f"L2 hit / floor {single['mtcache get, L2 hit'] / get_floor:.2f}x")
    print(f"\n{args.procs} processes, aggregate ops/s (median of {args.rounds} runs of {args.seconds:g} s)")
    for name, value in multi.items():
        print(f"  {name:<40} {value:>9.0f}")
    print(f"  set: mtcache / redis-py {multi['mtcache set'] / multi['redis-py SET']:.2f}x, "
          f"L2 hit get: mtcache / redis-py {multi['mtcache get, L2 hit'] / multi['redis-py GET']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "one_process_p50_us": single,
                                         "aggregate_ops_per_s": multi, "args": vars(args) | {"json": str(args.json)}},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
