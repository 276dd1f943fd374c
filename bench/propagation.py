"""Cross-host propagation: how long a write on host A takes to reach a reader on host B.

    .venv/bin/python bench/propagation.py [--n 300] [--warmup 20]

Starts a throwaway redis-server and two coordinators on it ("hosts" A and B). A
client of A in this process writes; a client of B in another process (near cache
on, as a worker would have it) spins on ``get`` of the same key and reports the
moment it first reads each new state. Each write waits until B has seen the
previous one, so every sample is one write alone, and B always holds the previous
value (near and L1) when the write comes: B can read the new state only after its
coordinator applied A's invalidation from the stream.

Rows: ``set`` (A sets key = i while B holds i - 1; B first reads i) and ``delete``
(A deletes the key B holds; B first reads None), timed from just before A's call
to the moment B's read returned the new state; and, for scale, A's own ``set`` call (its round
trip: L1, then L2 write and stream publish in one Redis round trip). Times come
from ``time.perf_counter_ns``, which is CLOCK_MONOTONIC on Linux and so
comparable between processes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import coordinator, machine, percentile, redis_server

from mtcache import Client

KEY = "propagated"
DEADLINE = 10.0
_DONE = "reader done"


def _spin_reader(socket_path: str, stop: Any, seen: Any) -> None:
    """Spin on ``get(KEY)`` through a client of host B; report every change as (value, time)."""
    with Client(socket_path, spawn=False) as client:
        last: Any = object()  # equal to nothing: the first read is always reported
        reads = 0
        while True:
            value = client.get(KEY)
            if value != last:
                seen.put((value, time.perf_counter_ns()))
                last = value
            reads += 1
            if reads % 256 == 0 and stop.is_set():
                stats = client.stats()
                seen.put((_DONE, (reads, stats.near_hits)))
                return


def _wait_for(seen: Any, expected: Any) -> Any:
    """What the reader reported with ``expected``: the time it first read that value (or, for
    ``_DONE``, its final counters). Earlier reports are skipped."""
    deadline = time.monotonic() + DEADLINE
    while True:
        value, at = seen.get(timeout=max(0.01, deadline - time.monotonic()))
        if value == expected:
            return at


def _summary(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {"n": len(ms), "p50": percentile(ms, 0.50), "p90": percentile(ms, 0.90),
            "p99": percentile(ms, 0.99), "max": ms[-1]}


def _table(rows: list[tuple[str, dict[str, float]]]) -> str:
    out = ["| what | n | p50 ms | p90 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        out.append(f"| {name} | {r['n']:.0f} | {r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} | {r['max']:.3f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="measured writes of each kind (default 300)")
    p.add_argument("--warmup", type=int, default=20, help="discarded writes of each kind first (default 20)")
    args = p.parse_args()
    if args.n < 1 or args.warmup < 0:
        p.error("--n must be positive and --warmup not negative")
    ctx = mp.get_context("spawn")
    set_ns: list[int] = []
    delete_ns: list[int] = []
    ack_ns: list[int] = []
    with redis_server() as url, coordinator(url) as host_a, coordinator(url) as host_b:
        stop, seen = ctx.Event(), ctx.Queue()
        reader = ctx.Process(target=_spin_reader, args=(host_b, stop, seen))
        reader.start()
        try:
            with Client(host_a, spawn=False) as writer:
                _wait_for(seen, None)  # the reader runs and the key is missing
                clock = time.perf_counter_ns
                writer.set(KEY, -1)
                _wait_for(seen, -1)
                # sets: B holds the previous value (near and L1) when A writes the next one, so B
                # reads the new value only once its coordinator applied A's stream entry
                for i in range(args.warmup + args.n):
                    t0 = clock()
                    writer.set(KEY, i)
                    t1 = clock()
                    t_seen = _wait_for(seen, i)
                    if i >= args.warmup:
                        ack_ns.append(t1 - t0)
                        set_ns.append(t_seen - t0)
                # deletes: B holds the value; after each delete, a set (not timed) gives it one again
                for i in range(args.warmup + args.n):
                    writer.set(KEY, i)
                    _wait_for(seen, i)
                    t0 = clock()
                    writer.delete(KEY)
                    t_seen = _wait_for(seen, None)
                    if i >= args.warmup:
                        delete_ns.append(t_seen - t0)
            with Client(host_b, spawn=False, near_capacity=0) as probe:
                b_stats = probe.stats().coordinator
            stop.set()
            reads, near_hits = _wait_for(seen, _DONE)
        finally:
            stop.set()
            reader.join(DEADLINE)
            if reader.is_alive():
                reader.kill()
                reader.join()
            seen.close()
            seen.join_thread()
    print(f"# mtcache cross-host propagation\n\nmachine: {machine()}; two coordinators on one local "
          f"redis-server; reader on host B spins on get with its near cache on; "
          f"{args.n} measured writes of each kind after {args.warmup} discarded\n")
    print(_table([
        ("set on A → first read of the new value on B", _summary(set_ns)),
        ("delete on A → first read of None on B", _summary(delete_ns)),
        ("(for scale) A's set call, to its return", _summary(ack_ns)),
    ]))
    print(f"\n(the reader made {reads:,} reads, {near_hits / reads:.1%} of them near hits; "
          f"host B applied {b_stats['invalidations_applied']:,} invalidations, "
          f"{b_stats['invalidation_gaps']} gaps; stream reader lag of the last entry "
          f"{b_stats['stream_reader_lag_ms']} ms)")


if __name__ == "__main__":
    main()
