"""W2 (90/9/1 mix, stale reads counted) of mtcache on one Redis and on a 3-master Redis Cluster, side by side.

    .venv/bin/python bench/cluster_w2.py [--quick] [--rounds N] [--out DIR]

``bench/peers.py``'s W2, the same workers and plan, run for ``mtcache`` and ``mtcache (write-behind)`` on a
fresh redis-server and on a fresh cluster of 3 masters with a replica each (``redis+cluster://``, started on
free loopback ports with ``tests/redis_server.py``'s ``RedisClusterGroup``), alternating the two in each of
``--rounds`` rounds; redis-py direct on the single Redis is the reference. Writes CLUSTER.md and cluster.json
(into bench/ for a full run). Every server sits on this machine: a cluster's masters then share its cores
with the workers, the coordinator and the replicas, so the figure shows what sharding costs in CPU, not
what it gains where each master has a machine of its own.

Worker processes are started with the ``spawn`` context, which imports this file in each of them as
``__mp_main__``: keep everything below the guard.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

PEER_NAMES = ("mtcache", "mtcache (write-behind)", "redis-py")
CLUSTER_PEERS = ("mtcache", "mtcache (write-behind)")


@contextlib.contextmanager
def _cluster() -> Iterator[object]:
    import tempfile

    from _util import Server

    from tests.redis_server import RedisClusterGroup

    with tempfile.TemporaryDirectory(prefix="mtcache-bench-cluster-") as folder, \
            RedisClusterGroup(Path(folder)) as cluster:
        first = cluster.servers[0].proc
        assert first is not None
        yield Server(cluster.url, first.pid)


def _render(results: dict, command: str, meta: dict) -> str:
    lines = [
        "# W2 on a Redis Cluster (`bench/cluster_w2.py`)",
        "",
        f"Run {meta['date']} on {meta['machine']}: `{command}`. Versions: {meta['versions']}.",
        "",
        "`bench/peers.py`'s W2 (90 % get, 9 % set, 1 % delete over 10,000 keys of 200 B, 8 worker processes, "
        "reads staler than the last acknowledged write counted): mtcache on one redis-server and on a Redis "
        "Cluster of 3 masters with a replica each, all on this 2-core machine, alternated in each round. "
        "Medians over the rounds (each round's figure in brackets).",
        "",
        "| peer | Redis | ops/s | get p50 µs | write p50 µs | write p99 µs | stale reads | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (peer, kind), rounds in results.items():
        def med(name: str, rounds: list = rounds) -> str:
            values = [r[name] for r in rounds if name in r]
            return f"{statistics.median(values):,.0f}" if values else "—"
        ops = ", ".join(f"{r.get('ops_per_s', 0):,.0f}" for r in rounds)
        stale = sum(r.get("stale", 0) for r in rounds)
        errors = sum(r.get("errors", 0) for r in rounds)
        failed = [r["failed"] for r in rounds if "failed" in r]
        if failed:
            lines.append(f"| {peer} | {kind} | failed: {failed[0]} | | | | | |")
            continue
        lines.append(f"| {peer} | {kind} | {med('ops_per_s')} ({ops}) | {med('get_p50_us')} | {med('write_p50_us')} "
                     f"| {med('write_p99_us')} | {stale} | {errors} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; exit status 1 if a measurement failed."""
    import argparse
    import datetime as dt
    import json
    import tempfile

    from _util import machine, redis_server_process, versions
    from peers import runner
    from peers.common import Plan
    from peers.pool import Pool
    from peers.registry import peer_named

    parser = argparse.ArgumentParser(prog="bench/cluster_w2.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run; writes to a temporary folder")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each running every variant once")
    parser.add_argument("--out", type=Path, help="output folder (default: bench/ for a full run)")
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick)
    out = args.out or (Path(tempfile.gettempdir()) / "mtcache-bench-quick" if args.quick else BENCH)
    variants = [(name, "single") for name in PEER_NAMES] + [(name, "cluster") for name in CLUSTER_PEERS]
    results: dict[tuple[str, str], list[dict]] = {v: [] for v in variants}
    failures = 0
    for index in range(args.rounds):
        order = variants if index % 2 == 0 else list(reversed(variants))
        for name, kind in order:
            peer = peer_named(name)
            factory = _cluster if kind == "cluster" else redis_server_process
            print(f"round {index + 1}/{args.rounds}: {name} on {kind} Redis", flush=True)
            with Pool() as pool:
                try:
                    figure = runner.w2(pool, peer, plan, redis_factory=factory)
                except Exception as exc:  # one variant's failure is a figure, not the end of the run
                    failures += 1
                    figure = {"failed": f"{type(exc).__name__}: {exc}"}
            results[(name, kind)].append(figure)
    command = " ".join([".venv/bin/python", "bench/cluster_w2.py", *(argv if argv is not None else sys.argv[1:])])
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "versions": ", ".join(f"{k} {v}" for k, v in versions(("mtcache", "redis", "hiredis")).items())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(
        {"meta": {**meta, "command": command, "plan": vars(plan)},
         "results": [{"peer": p, "redis": k, "rounds": r} for (p, k), r in results.items()]}, indent=2) + "\n")
    (out / "CLUSTER.md").write_text(_render(results, command, meta))
    print(f"wrote {out / 'CLUSTER.md'} and {out / 'cluster.json'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
