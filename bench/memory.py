"""Memory of 8 workers sharing a 100 MiB working set: mtcache against per-worker cachetools.

    .venv/bin/python bench/memory.py [--quick] [--out DIR]

The reason one shared L1 exists: eight workers that each cache the working set keep
it eight times. Here 8 worker processes share a working set of 102,400 values of
1 KiB (100 MiB encoded), written through the cache (an eighth by each worker), and
memory is read twice:

1. **read once**: after each worker read every value once (as W4 of ``bench/peers.py``);
2. **hot reads**: after each worker then made 200,000 Zipf(0.99) reads over it.

Peers: mtcache (a coordinator whose L1 holds the working set, Redis as L2) with its
near cache at the default bound, at 16 MiB and off; and per-worker cachetools: an
``LRUCache`` large enough for the working set in each worker, in front of redis-py
(the hand-rolled two-tier cache, sized so that each worker holds what it reads).
Memory as in W4 (:mod:`peers.procmem`): PSS of the workers and servers outside
``/dev/shm``, plus the allocated size of the ``/dev/shm`` files they map, once.

Writes ``MEMORY.md`` and ``memory.json`` into ``bench/`` (``--quick``: 10,240 values,
20,000 hot reads, into a temporary folder unless ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _util import coordinator_process, machine, redis_server_process, versions
from peers import procmem
from peers.common import WORKERS, key_name, make_value, zipf_sequence

BENCH = Path(__file__).resolve().parent
VALUE = 1024
PHASES = ("idle", "read once", "hot reads")
WAIT_S = 600.0


@dataclass(frozen=True)
class Peer:
    """A configuration under test: ``kind`` is "mtcache" or "cachetools"."""

    name: str
    kind: str
    near_max_bytes: int | None = None


PEERS = (
    Peer("mtcache, near cache at its default (128 MiB / 65,536 entries)", "mtcache"),
    Peer("mtcache, near cache 16 MiB", "mtcache", 16 * 2**20),
    Peer("mtcache, no near cache", "mtcache", 0),
    Peer("cachetools per worker (holds the working set) + redis-py", "cachetools"),
)


class _Cachetools:
    """A per-worker ``cachetools.LRUCache`` of decoded values in front of redis-py (msgpack)."""

    def __init__(self, url: str, n_keys: int) -> None:
        import cachetools
        import msgpack
        import redis

        self._r = redis.Redis.from_url(url)
        self._local: cachetools.LRUCache[str, Any] = cachetools.LRUCache(maxsize=n_keys)
        self._pack, self._unpack = msgpack.packb, msgpack.unpackb

    def get(self, key: str) -> Any:
        value = self._local.get(key)
        if value is None:
            raw = self._r.get(key)
            if raw is not None:
                value = self._local[key] = self._unpack(raw)
        return value

    def set(self, key: str, value: Any) -> None:
        self._r.set(key, self._pack(value), ex=3600)
        self._local[key] = value

    def close(self) -> None:
        self._r.close()


class _Mtcache:
    def __init__(self, socket: str, near_max_bytes: int | None) -> None:
        from mtcache import Client

        self._c = Client(socket, spawn=False, near_max_bytes=near_max_bytes)

    def get(self, key: str) -> Any:
        return self._c.get(key)

    def set(self, key: str, value: Any) -> None:
        self._c.set(key, value, ttl=3600)

    def close(self) -> None:
        self._c.close()


def worker(peer: Peer, address: str, index: int, n_keys: int, hot_reads: int, barrier: Any, reports: Any,
           go: list[Any]) -> None:
    """Write an eighth of the values, read each once, then ``hot_reads`` Zipf reads; report the pid
    after each phase and wait for the parent to measure."""
    cache = _Mtcache(address, peer.near_max_bytes) if peer.kind == "mtcache" else _Cachetools(address, n_keys)
    try:
        cache.get("warm-up")  # connected before "idle"
        reports.put(("idle", index, os.getpid(), 0))
        go[0].wait(WAIT_S)
        for kid in range(index, n_keys, WORKERS):
            cache.set(key_name(kid), make_value(kid, 1, VALUE))
        barrier.wait(WAIT_S)
        start = index * n_keys // WORKERS
        misses = sum(cache.get(key_name((start + i) % n_keys)) is None for i in range(n_keys))
        reports.put(("read once", index, os.getpid(), misses))
        go[1].wait(WAIT_S)
        sequence = zipf_sequence(n_keys, hot_reads, seed=100 + index)
        misses = sum(cache.get(key_name(kid)) is None for kid in sequence)
        reports.put(("hot reads", index, os.getpid(), misses))
        go[2].wait(WAIT_S)
    finally:
        cache.close()


@contextlib.contextmanager
def servers(peer: Peer, n_keys: int) -> Iterator[tuple[str, dict[str, int]]]:
    """Redis (and for mtcache a coordinator whose L1 holds the working set): the address the workers use
    and the servers' pids."""
    with redis_server_process() as redis:
        if peer.kind != "mtcache":
            yield redis.address, {"redis-server": redis.pid}
            return
        capacity = 1 << (n_keys * 5 // 4 - 1).bit_length()
        l1_bytes = n_keys * (VALUE + 128) * 3 // 2
        with coordinator_process(redis.address, l1_capacity=capacity, l1_max_bytes=l1_bytes) as coord:
            yield coord.address, {"redis-server": redis.pid, "coordinator": coord.pid}


def run(peer: Peer, n_keys: int, hot_reads: int) -> dict[str, Any]:
    """Memory of ``peer``'s workers and servers at each phase, and the misses workers saw."""
    ctx = multiprocessing.get_context("spawn")
    with servers(peer, n_keys) as (address, pids):
        barrier, reports = ctx.Barrier(WORKERS), ctx.Queue()
        go = [ctx.Event() for _ in PHASES]
        procs = [ctx.Process(target=worker, args=(peer, address, i, n_keys, hot_reads, barrier, reports, go))
                 for i in range(WORKERS)]
        for p in procs:
            p.start()
        out: dict[str, Any] = {}
        try:
            for phase, event in zip(PHASES, go, strict=True):
                seen: dict[int, tuple[int, int]] = {}
                deadline = time.monotonic() + WAIT_S
                while len(seen) < WORKERS:
                    kind, index, pid, misses = reports.get(timeout=max(1.0, deadline - time.monotonic()))
                    if kind != phase:
                        raise RuntimeError(f"worker {index} reported {kind!r} during {phase!r}")
                    seen[index] = (pid, misses)
                workers = procmem.total([procmem.memory_of(pid) for pid, _ in seen.values()])
                server_mem = {name: procmem.memory_of(pid) for name, pid in pids.items()}
                everything = procmem.total([workers, *server_mem.values()])
                out[phase] = {
                    "workers_pss": workers.pss, "workers_rss": workers.rss,
                    "servers_pss": {name: m.pss for name, m in server_mem.items()},
                    "shm_reserved": everything.shm_reserved,
                    "total": everything.fair,
                    "misses": sum(m for _, m in seen.values()),
                }
                print(f"  {phase:10} total {everything.fair / 2**20:8.1f} MiB (workers PSS {workers.pss / 2**20:.1f}, "
                      f"shm {everything.shm_reserved / 2**20:.1f})", flush=True)
                event.set()
            for p in procs:
                p.join(WAIT_S)
                if p.exitcode != 0:
                    raise RuntimeError(f"a worker exited with {p.exitcode}")
        finally:
            for p in procs:
                p.kill()
                p.join()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tenth of the working set; a temporary folder")
    p.add_argument("--out", type=Path, help="output folder (default: bench/)")
    args = p.parse_args(argv)
    n_keys, hot_reads = (10_240, 20_000) if args.quick else (102_400, 200_000)
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join([".venv/bin/python", "bench/memory.py", *(argv or sys.argv[1:])]),
            "machine": machine(), "versions": versions(("mtcache", "redis", "msgpack", "cachetools")),
            "workers": WORKERS, "values": n_keys, "value_bytes": VALUE, "hot_reads": hot_reads,
        },
        "peers": {},
    }
    for peer in PEERS:
        print(peer.name, flush=True)
        results["peers"][peer.name] = run(peer, n_keys, hot_reads)
    out = args.out or (Path(tempfile.gettempdir()) / "mtcache-bench-quick" if args.quick else BENCH)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "MEMORY.md").write_text(render(results))
    print(f"wrote {out / 'MEMORY.md'} and {out / 'memory.json'}")
    return 0


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    mib = 2**20
    peers = results["peers"]
    base = next(v for k, v in peers.items() if k.startswith("cachetools"))
    lines = [
        "# Memory: 8 workers sharing a 100 MiB working set",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}; "
        f"{', '.join(f'{k} {v}' for k, v in meta['versions'].items())}).",
        f"{meta['workers']} workers, {meta['values']:,} values of {meta['value_bytes']:,} B "
        f"({meta['values'] * meta['value_bytes'] / mib:.0f} MiB encoded), {meta['hot_reads']:,} hot reads per worker. "
        "Total memory = PSS of the workers and servers (redis-server, and mtcache's coordinator) outside "
        "`/dev/shm` + the allocated size of the `/dev/shm` files they map (mtcache's version table and L1 "
        "mirror), once. MiB.",
        "",
        "| peer | phase | workers PSS | servers PSS | /dev/shm allocated | total | vs cachetools per worker | misses |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, phases in peers.items():
        for phase in PHASES:
            r = phases[phase]
            servers = ", ".join(f"{k} {v / mib:.1f}" for k, v in r["servers_pss"].items())
            lines.append(f"| {name} | {phase} | {r['workers_pss'] / mib:.1f} | {servers} | "
                         f"{r['shm_reserved'] / mib:.1f} | **{r['total'] / mib:.1f}** | "
                         f"{r['total'] / base[phase]['total']:.2f}x | {r['misses']:,} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
