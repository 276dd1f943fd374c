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

Where the time goes: for every row, the CPU time (user + system, from ``/proc/<pid>/stat`` and
``os.times``) that each process spent per operation — the calling processes, the coordinator and
redis-server — and Redis's CPU per write, pipelined, for mtcache's conditional write script with its
stream entry against a plain ``SET`` + ``XADD``; so the cost of the second hop is measured, not guessed:
on a machine with as few cores as this one, an aggregate rate is bounded by the CPU all of them need
per operation.
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
from typing import Any

import msgpack
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import coordinator_process, cpu_seconds, machine, measure, own_cpu_seconds, redis_server_process

from mtcache import Client
from mtcache.coordinator.l2 import Batch, L2Tier
from mtcache.protocol import Op

VALUE = {"symbol": "ACME", "price": 123.45, "bid": 123.40, "ask": 123.50, "volume": 1_234_567,
         "exchange": "XNYS", "currency": "USD", "history": [120.1, 121.3, 122.8, 123.0, 123.45],
         "updated": "2026-11-27T10:00:00Z", "note": "x" * 40}
PACKED = msgpack.packb(VALUE)


WARMUP = 200  # calls measure() makes before it times any


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each process of ``pids`` (name: pid)."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_per_op(before: dict[str, float], after: dict[str, float], ops: int) -> dict[str, float]:
    """CPU µs per operation of each process between two :func:`cpu_now` snapshots."""
    return {name: (after[name] - before[name]) * 1e6 / ops for name in before}


def one_process(url: str, redis_pid: int, n: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """p50 µs of every single-process row, and CPU µs per call of each process for each row."""
    out: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}
    redis_only = {"redis-server": redis_pid}

    def add(name: str, fn: Callable[[], object], pids: dict[str, int] = redis_only) -> None:
        before = {"caller": own_cpu_seconds(), **cpu_now(pids)}
        out[name] = measure(fn, n=n, warmup=WARMUP)["p50"]
        cpu[name] = cpu_per_op(before, {"caller": own_cpu_seconds(), **cpu_now(pids)}, n + WARMUP)

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
    with coordinator_process(url) as co, Client(co.address, spawn=False, near_capacity=0) as c:
        pids = {"coordinator": co.pid, "redis-server": redis_pid}
        c.set("warm", VALUE)
        add("coordinator round trip (PING)", lambda: c._request(Op.PING), pids)
        keys = itertools.cycle([f"k{i}" for i in range(1000)])
        add("mtcache set", lambda: c.set(next(keys), VALUE), pids)
        add("mtcache delete", lambda: c.delete(next(keys)), pids)
    with coordinator_process(url, l1_capacity=1, l1_shm_bytes=0) as co, \
            Client(co.address, spawn=False, near_capacity=0) as c:
        pids = {"coordinator": co.pid, "redis-server": redis_pid}
        c.set("a", VALUE)
        c.set("b", VALUE)
        ab = itertools.cycle(["a", "b"])
        add("mtcache get, L2 hit", lambda: c.get(next(ab)), pids)
    out["floor: set/delete (PING + SET+XADD)"] = out["coordinator round trip (PING)"] + out[
        "redis-py pipelined SET+XADD"]
    out["floor: L2 hit (PING + GET)"] = out["coordinator round trip (PING)"] + out["redis-py GET"]
    return out, cpu


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
    cpu = own_cpu_seconds()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(20):
            op()
        done += 20
    counts.put((done, own_cpu_seconds() - cpu))


def redis_cpu_per_write(url: str, redis_pid: int, n: int = 20_000, per: int = 200) -> dict[str, float]:
    """redis-server's CPU µs per write, ``per`` writes to a pipeline: mtcache's conditional write and its stream
    entry in one script call, as the coordinator sends it, against a plain ``SET`` + ``XADD``."""
    tier = L2Tier(url, "paths", timeout=5.0)
    stamp = time.time_ns() << 16
    batch = Batch()
    for i in range(n):
        tier.queue_write(batch, f"k{i % 1000}", PACKED, 60.0, stamp + i,
                         entry=("mtcache:paths:stream", [1000, "paths", "set", f"k{i % 1000}", stamp + i]))
    plain = [c for i in range(n) for c in (("SET", f"raw:{i % 1000}", PACKED, "PX", 60_000),
                                             ("XADD", "raw:stream", "MAXLEN", "~", 1000, "*", "op", "set",
                                              "key", f"k{i % 1000}", "stamp", stamp + i))]
    out = {}
    with redis.Redis.from_url(url) as raw:
        sha = raw.script_load(batch.commands[0][0])
        scripted: list[tuple[Any, ...]] = [("EVALSHA", sha, numkeys, *args) for _, numkeys, args in batch.commands]
        for name, commands, step in (("mtcache write script (EVALSHA)", scripted, per),
                                     ("SET + XADD", plain, 2 * per)):
            before = cpu_seconds(redis_pid)
            for start in range(0, len(commands), step):
                pipe = raw.pipeline(transaction=False)
                for command in commands[start:start + step]:
                    pipe.execute_command(*command)
                pipe.execute()
            out[name] = (cpu_seconds(redis_pid) - before) * 1e6 / n
    return out


def many_processes(
    kind: str, target: str, procs: int, seconds: float, pids: dict[str, int]
) -> tuple[float, dict[str, float]]:
    """Aggregate ops/s of ``procs`` processes doing ``kind`` for ``seconds``, and the CPU µs per operation
    of the callers together and of each server in ``pids`` (name: pid)."""
    ctx = mp.get_context("fork")
    start, counts = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(kind, target, seconds, i, start, counts)) for i in range(procs)]
    for w in workers:
        w.start()
    time.sleep(0.5)  # let every process connect before the clock starts
    before = cpu_now(pids)
    start.set()
    results = [counts.get(timeout=seconds + 60) for _ in workers]
    after = cpu_now(pids)
    for w in workers:
        w.join()
    total = sum(done for done, _ in results)
    return total / seconds, {"callers": sum(used for _, used in results) * 1e6 / total,
                             **cpu_per_op(before, after, total)}


def aggregate(
    url: str, redis_pid: int, procs: int, seconds: float
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Aggregate ops/s of each multi-process row, and CPU µs per operation of each process for each row."""
    out: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}
    with coordinator_process(url) as co:
        pids = {"coordinator": co.pid, "redis-server": redis_pid}
        out["mtcache set"], cpu["mtcache set"] = many_processes("mtcache set", co.address, procs, seconds, pids)
    with coordinator_process(url, l1_capacity=1, l1_shm_bytes=0) as co:
        with Client(co.address, spawn=False, near_capacity=0) as c:
            c.set("b", VALUE)
        pids = {"coordinator": co.pid, "redis-server": redis_pid}
        out["mtcache get, L2 hit"], cpu["mtcache get, L2 hit"] = many_processes(
            "mtcache get", co.address, procs, seconds, pids)
    for kind in ("redis-py SET", "redis-py GET"):
        out[kind], cpu[kind] = many_processes(kind, url, procs, seconds, {"redis-server": redis_pid})
    return out, cpu


def _median_cpu(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {row: {proc: statistics.median(r[row][proc] for r in rounds) for proc in rounds[0][row]}
            for row in rounds[0]}


def _print_cpu(cpu: dict[str, dict[str, float]]) -> None:
    for row, procs in cpu.items():
        parts = ", ".join(f"{proc} {us:.0f}" for proc, us in procs.items())
        print(f"    {row:<38} {parts}; total {sum(procs.values()):.0f}")


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
    single_cpus: list[dict[str, dict[str, float]]] = []
    multi_cpus: list[dict[str, dict[str, float]]] = []
    with redis_server_process() as redis_proc:
        for _ in range(args.rounds):
            times, cpu = one_process(redis_proc.address, redis_proc.pid, args.n)
            singles.append(times)
            single_cpus.append(cpu)
            rates, cpu = aggregate(redis_proc.address, redis_proc.pid, args.procs, args.seconds)
            aggregates.append(rates)
            multi_cpus.append(cpu)
        script_cpu = redis_cpu_per_write(redis_proc.address, redis_proc.pid)
    single = {k: statistics.median(r[k] for r in singles) for k in singles[0]}
    multi = {k: statistics.median(r[k] for r in aggregates) for k in aggregates[0]}
    single_cpu, multi_cpu = _median_cpu(single_cpus), _median_cpu(multi_cpus)
    print(machine())
    print(f"\none process, p50 µs (median of {args.rounds} rounds, {args.n} calls each)")
    for name, value in single.items():
        print(f"  {name:<40} {value:>9.1f}")
    set_floor = single["floor: set/delete (PING + SET+XADD)"]
    get_floor = single["floor: L2 hit (PING + GET)"]
    print(f"  set / floor {single['mtcache set'] / set_floor:.2f}x, "
          f"delete / floor {single['mtcache delete'] / set_floor:.2f}x, "
          f"L2 hit / floor {single['mtcache get, L2 hit'] / get_floor:.2f}x")
    print("  CPU µs per call (user + system) of each process:")
    _print_cpu(single_cpu)
    print(f"\n{args.procs} processes, aggregate ops/s (median of {args.rounds} runs of {args.seconds:g} s)")
    for name, value in multi.items():
        print(f"  {name:<40} {value:>9.0f}")
    print(f"  set: mtcache / redis-py {multi['mtcache set'] / multi['redis-py SET']:.2f}x, "
          f"L2 hit get: mtcache / redis-py {multi['mtcache get, L2 hit'] / multi['redis-py GET']:.2f}x")
    print(f"  CPU µs per operation (user + system; callers: the {args.procs} processes together):")
    _print_cpu(multi_cpu)
    print("\nredis-server CPU µs per write, 200 writes per pipeline")
    for name, value in script_cpu.items():
        print(f"  {name:<40} {value:>9.1f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "one_process_p50_us": single,
                                         "one_process_cpu_us_per_call": single_cpu,
                                         "aggregate_ops_per_s": multi, "aggregate_cpu_us_per_op": multi_cpu,
                                         "redis_cpu_us_per_write": script_cpu,
                                         "args": vars(args) | {"json": str(args.json)}},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
