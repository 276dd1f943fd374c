"""The parent side of W1-W4: fresh servers per run, the workers of a
:class:`~.pool.Pool`, their reports folded into one figure per peer."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _util import Server, coordinator_process, redis_server_process

from . import procmem
from .common import MEMORY_VALUE, THREADS, WORKERS, Env, Job, Plan, exact_quantiles_us, quantiles_us
from .pool import MAX_STAMPEDE_KEYS, Pool
from .registry import COORDINATOR_SETTINGS, Peer
from .worker import Shared

__all__ = ["Servers", "servers_for", "w1", "w2", "w3", "w4"]


@dataclass
class Servers:
    """A peer's environment and the pids of the servers it started."""

    env: Env
    pids: dict[str, int] = field(default_factory=dict)


#: what starts a fresh Redis for a run: a redis-server by default (``bench/cluster_w2.py`` gives a cluster)
RedisFactory = Callable[[], contextlib.AbstractContextManager[Server]]


@contextlib.contextmanager
def servers_for(peer: Peer, redis_factory: RedisFactory = redis_server_process) -> Iterator[Servers]:
    """A fresh Redis (from ``redis_factory``), coordinator and/or directory, as ``peer`` needs."""
    with contextlib.ExitStack() as stack:
        url = sock = folder = None
        pids: dict[str, int] = {}
        if peer.redis:
            redis = stack.enter_context(redis_factory())
            url, pids["redis-server"] = redis.address, redis.pid
        if peer.coordinator:
            coord = stack.enter_context(coordinator_process(url, **COORDINATOR_SETTINGS))
            sock, pids["coordinator"] = coord.address, coord.pid
        if peer.directory:
            folder = tempfile.mkdtemp(prefix="mtcache-bench-disk-")
            stack.callback(shutil.rmtree, folder, True)
        yield Servers(Env(url, sock, folder), pids)


def _latency(chunks: list[bytes], prefix: str = "") -> dict[str, float]:
    p50, p90, p99 = quantiles_us(chunks)
    return {f"{prefix}p50_us": p50, f"{prefix}p90_us": p90, f"{prefix}p99_us": p99}


def w1(pool: Pool, peer: Peer, plan: Plan, size: int) -> dict[str, Any]:
    """W1 hot reads: aggregate ops/s and per-read latency after a discarded warm-up."""
    with servers_for(peer) as servers:
        job = Job("w1", peer.name, servers.env, value_size=size, n_keys=plan.n_keys, settle_s=plan.settle_s,
                  warmup_s=plan.warmup_s, measure_s=plan.measure_s)
        parts, _ = pool.run(job, timeout=plan.settle_s + plan.warmup_s + plan.measure_s + 180)
    ops = sum(p["ops"] for p in parts)
    out: dict[str, Any] = {
        "ops_per_s": sum(p["ops"] / (p["elapsed_ns"] / 1e9) for p in parts),
        "ops": ops,
        "misses": sum(p["misses"] for p in parts),
        **_latency([p["lat"] for p in parts]),
    }
    local = [p["local"] for p in parts if p["local"]]
    if local:
        hits, misses, mirror = (sum(x[i] for x in local) for i in range(3))
        out["local_hit_ratio"] = hits / max(1, hits + misses)
        out["mirror_hit_ratio"] = mirror / max(1, hits + misses)
    return out


_W2_COUNTS = ("ops", "gets", "sets", "deletes", "misses", "wrong", "errors", "dropped")


def w2(pool: Pool, peer: Peer, plan: Plan, redis_factory: RedisFactory = redis_server_process) -> dict[str, Any]:
    """W2 mixed 90/9/1: ops/s, latency, and reads staler than the last acknowledged write (on the Redis
    ``redis_factory`` starts)."""
    with servers_for(peer, redis_factory) as servers:
        job = Job("w2", peer.name, servers.env, n_keys=plan.n_keys, settle_s=plan.settle_s, warmup_s=plan.warmup_s,
                  measure_s=plan.measure_s)
        parts, _ = pool.run(job, timeout=plan.settle_s + plan.warmup_s + plan.measure_s + 180)
    gets = sum(p["gets"] for p in parts)
    stale = sum(p["stale"] for p in parts)
    return {
        "ops_per_s": sum(p["ops"] / (p["elapsed_ns"] / 1e9) for p in parts),
        **{k: sum(p[k] for p in parts) for k in _W2_COUNTS},
        "stale": stale,
        "stale_pct": 100 * stale / max(1, gets),
        **_latency([c for p in parts for c in (p["get_lat"], p["write_lat"])]),
        **_latency([p["get_lat"] for p in parts], "get_"),
        **_latency([p["write_lat"] for p in parts], "write_"),
    }


def w3(pool: Pool, peer: Peer, plan: Plan) -> dict[str, Any]:
    """W3 stampede: 8 processes x 16 callers ask for the same cold keys, in the same
    order, at once; how often each value was computed, and how long callers waited."""
    n = min(plan.stampede_keys, MAX_STAMPEDE_KEYS)
    with servers_for(peer) as servers:
        job = Job("w3", peer.name, servers.env, stampede_keys=n)
        started = time.perf_counter()
        parts, shared = pool.run(job, timeout=60 + n * 10)
        wall = time.perf_counter() - started
    computes = [shared.computes[i] for i in range(n)]
    latencies = [ns for p in parts for ns in p["latencies_ns"]]
    p50, p99 = exact_quantiles_us(latencies)
    errors = sum(p["errors"] for p in parts)
    return {
        "keys": n,
        "callers": WORKERS * THREADS,
        "computes_total": sum(computes),
        "computes_mean": sum(computes) / n,
        "computes_max": max(computes),
        "computes_min": min(computes),
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "calls": len(latencies),
        "errors": errors,
        "wrong": sum(p["wrong"] for p in parts),
        "first_error": next((p["first_error"] for p in parts if p["first_error"]), ""),
        "wall_s": wall,
    }


def w4(peer: Peer, plan: Plan) -> dict[str, Any]:
    """W4 memory: RSS and PSS of the workers (idle, and after each read every
    1 KiB value once through the cache) and of the servers the peer needs, and
    the ``/dev/shm`` files they map (see :mod:`.procmem`)."""
    with servers_for(peer) as servers:
        job = Job("w4", peer.name, servers.env, value_size=MEMORY_VALUE, n_keys=plan.memory_keys)
        seen: dict[str, dict[int, int]] = {"idle": {}, "ready": {}}
        taken: dict[str, procmem.Memory] = {}
        disk = 0

        def on_message(kind: str, index: int, pid: Any, shared: Shared) -> None:
            nonlocal disk
            seen[kind][index] = int(pid)
            if len(seen[kind]) < WORKERS:
                return
            taken[kind] = procmem.total([procmem.memory_of(p) for p in seen[kind].values()])
            if kind == "idle":
                shared.go.set()
                return
            for name, server_pid in servers.pids.items():
                taken[name] = procmem.memory_of(server_pid)
            if servers.env.directory:
                disk = _disk_usage(Path(servers.env.directory))
            shared.release.set()

        with Pool() as pool:  # fresh processes: their memory is what is measured
            parts, _ = pool.run(job, timeout=300, on_message=on_message)
    idle, ready = taken.pop("idle"), taken.pop("ready")
    everything = procmem.total([ready, *taken.values()])
    out: dict[str, Any] = {
        "keys": plan.memory_keys,
        "value_bytes": MEMORY_VALUE,
        "misses": sum(p["misses"] for p in parts),
        "workers_idle_rss": idle.rss, "workers_idle_pss": idle.pss,
        "workers_rss": ready.rss, "workers_pss": ready.pss,
        "servers": {name: {"rss": m.rss, "pss": m.pss} for name, m in taken.items()},
        "shm_reserved": everything.shm_reserved,
        "shm_files": len(everything.shm_files),
        "total_rss": everything.rss,
        "total_pss": everything.pss,
        "total": everything.fair,
    }
    if disk:
        out["disk_bytes"] = disk
    return out


def _disk_usage(folder: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())

