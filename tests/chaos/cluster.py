"""The chaos topology: one redis-server, and H "hosts", each a coordinator process that reaches
Redis through its own :class:`~tests.tcp_proxy.FaultProxy`, with W worker processes of its own.

With ``redis="cluster"`` Redis is a Redis Cluster (:class:`~tests.redis_server.RedisClusterGroup`:
3 masters with a replica each) and each coordinator gets its ``redis+cluster://`` URL directly: a
cluster client connects to the node addresses the cluster announces, so no proxy can sit between.
With ``redis="sentinel"`` Redis is a master, its replica and three sentinels
(:class:`~tests.redis_server.SentinelGroup`) and each coordinator gets its ``redis+sentinel://`` URL
directly: the sentinels name the data nodes' own addresses, so no proxy there either.

Everything started here is stopped by :meth:`Cluster.close` (workers SIGKILLed, coordinators
continued if stopped and then SIGTERMed, proxies and Redis stopped, temporary folders removed),
which is safe to call at any point and more than once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import redis

from mtcache import Client
from mtcache.coordinator.l2 import CLUSTER_GROUPS, Layout, decode_envelope, key_prefix
from mtcache.shm import remove_orphans
from tests.chaos.history import append_json
from tests.chaos.workload import WorkloadSettings
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisClusterGroup, RedisServer, SentinelGroup
from tests.tcp_proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
READY_DEADLINE = 30.0
STOP_DEADLINE = 20.0

#: How long the sentinels of a chaos run wait for a master's answer before they call it down (ms).
#: Not SentinelGroup's 1000: a sentinel pings every second, and right after a failover it can take a
#: second to hear the new master (its link to it is new), so with 1000 the sentinels now and then call
#: a master they have just promoted down and fail over again, unplanned (seen in seeds 4 of
#: short-sentinel: a second failover 1 s after the planned one, the first new master left a master for
#: the 10 s until the sentinels turned it into a replica, with writes made on it lost).
SENTINEL_DOWN_AFTER_MS = 2000

#: The Redis each deployment runs on.
REDIS_TYPES: dict[str, type] = {"single": RedisServer, "cluster": RedisClusterGroup, "sentinel": SentinelGroup}

Redis = RedisServer | RedisClusterGroup | SentinelGroup


def sentinel_group(workdir: Path) -> SentinelGroup:
    """A Sentinel group as a chaos run uses it (see :data:`SENTINEL_DOWN_AFTER_MS`), not started."""
    # as the README advises: a master left without its replica (the old one, once SENTINEL FAILOVER promoted
    # the replica) refuses writes, which mtcache keeps in its backlog and replays on the new master
    return SentinelGroup(workdir, down_after_ms=SENTINEL_DOWN_AFTER_MS, min_replicas_to_write=1)


@dataclass(frozen=True)
class ClusterSettings:
    """The topology and the coordinators' settings (the quick-fault ones by default)."""

    hosts: int = 2
    workers: int = 3
    async_workers: int = 1
    seed: int = 1
    namespace: str = "chaos"
    staleness_bound: float = 1.0
    redis_timeout: float = 0.3
    lease_ttl: float = 3.0
    workload: WorkloadSettings = field(default_factory=WorkloadSettings)
    #: ``"single"``: one redis-server, each host behind a proxy; ``"cluster"``: a Redis Cluster, no proxies;
    #: ``"sentinel"``: a master, a replica and three sentinels, no proxies
    redis: str = "single"

    def coordinator_env(self) -> dict[str, str]:
        return {"MTCACHE_STALENESS_BOUND": f"{self.staleness_bound:g}",
                "MTCACHE_REDIS_TIMEOUT": f"{self.redis_timeout:g}",
                "MTCACHE_LEASE_TTL": f"{self.lease_ttl:g}"}


@dataclass
class WorkerProc:
    id: int
    host: int
    slot: int
    mode: str
    popen: subprocess.Popen[bytes]


@dataclass
class Host:
    index: int
    proxy: FaultProxy | None  # None on a cluster or Sentinel
    coordinator: CoordinatorProcess
    workers: list[WorkerProc] = field(default_factory=list)


class Cluster:
    """Start with :meth:`start`; ``history`` is where workers and the harness record."""

    def __init__(self, settings: ClusterSettings, history: Path, *, redis_server: Redis | None = None) -> None:
        """``redis_server``: a server (``redis="single"``), a cluster (``redis="cluster"``) or a Sentinel
        group (``redis="sentinel"``) to use, started here if it is not yet and left running by
        :meth:`close`; None: one of this cluster's own."""
        if settings.redis not in REDIS_TYPES:
            raise ValueError(f"redis must be one of {sorted(REDIS_TYPES)}, not {settings.redis!r}")
        wanted = REDIS_TYPES[settings.redis]
        if redis_server is not None and not isinstance(redis_server, wanted):
            raise ValueError(f"redis={settings.redis!r} runs on a {wanted.__name__}, "
                             f"not a {type(redis_server).__name__}")
        self.settings = settings
        self.history = history
        self.hosts: list[Host] = []
        self.stop_file = history / "STOP"
        self.stream = key_prefix(settings.namespace) + "inval"
        self._own_redis = redis_server is None
        self._tmp: list[Path] = []
        self.redis: Redis
        if redis_server is not None:
            self.redis = redis_server
        elif settings.redis == "cluster":
            self.redis = RedisClusterGroup(self._mkdtemp("mtc-cluster-"))
        elif settings.redis == "sentinel":
            self.redis = sentinel_group(self._mkdtemp("mtc-sentinel-"))
        else:
            self.redis = RedisServer(self._mkdtemp("mtc-redis-"))
        self._next_id = 1

    @property
    def server(self) -> RedisServer:
        """The one redis-server (``redis="single"``)."""
        if not isinstance(self.redis, RedisServer):
            raise RuntimeError(f"this chaos run is on a {type(self.redis).__name__}: there is no one redis-server")
        return self.redis

    @property
    def redis_cluster(self) -> RedisClusterGroup:
        """The Redis Cluster (``redis="cluster"``)."""
        if not isinstance(self.redis, RedisClusterGroup):
            raise RuntimeError(f"this chaos run is on a {type(self.redis).__name__}, not a Redis Cluster")
        return self.redis

    @property
    def sentinel_group(self) -> SentinelGroup:
        """The Sentinel group (``redis="sentinel"``)."""
        if not isinstance(self.redis, SentinelGroup):
            raise RuntimeError(f"this chaos run is on a {type(self.redis).__name__}, not Redis Sentinel")
        return self.redis

    def _mkdtemp(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self._tmp.append(path)
        return path

    # -- starting --------------------------------------------------------------------------------

    def start(self) -> None:
        """Redis, then per host a proxy (only on one redis-server) and a coordinator, then every worker;
        returns once every worker is connected (or the readiness deadline passes: RuntimeError)."""
        self.history.mkdir(parents=True, exist_ok=True)
        if isinstance(self.redis, RedisClusterGroup):
            if not self.redis.live():
                self.redis.start()
        elif isinstance(self.redis, SentinelGroup):
            if not self.redis.sentinels:
                self.redis.start()
        elif self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        sockets = self._mkdtemp("mtc-")
        for i in range(self.settings.hosts):
            proxy: FaultProxy | None = None
            if isinstance(self.redis, RedisClusterGroup | SentinelGroup):
                url = self.redis.url
            else:
                proxy = FaultProxy("127.0.0.1", self.redis.port)
                proxy.start()
                url = proxy.url()
            coordinator = CoordinatorProcess(sockets / f"h{i}.sock", redis_url=url,
                                             namespace=self.settings.namespace, env=self.settings.coordinator_env())
            self.hosts.append(Host(i, proxy, coordinator))
            coordinator.start()
        for host in self.hosts:
            host.workers = [self._spawn(host.index, slot) for slot in range(self.settings.workers)]
        self.wait_ready([w for h in self.hosts for w in h.workers])

    def _spawn(self, host: int, slot: int) -> WorkerProc:
        s, wl = self.settings, self.settings.workload
        wid, self._next_id = self._next_id, self._next_id + 1
        mode = "async" if slot < s.async_workers else "sync"
        cmd = [sys.executable, "-m", "tests.chaos.worker", "--socket", self.hosts[host].coordinator.socket_path,
               "--namespace", s.namespace, "--host", str(host), "--id", str(wid), "--mode", mode,
               "--seed", str(s.seed), "--out", str(self.history), "--stop-file", str(self.stop_file),
               "--keys", str(wl.keys), "--slow-prob", str(wl.slow_prob), "--fail-prob", str(wl.fail_prob),
               "--cancel-prob", str(wl.cancel_prob), "--lease-ttl", str(wl.lease_ttl), "--think-ms", str(wl.think_ms),
               "--idle-prob", str(wl.idle_prob)]
        if wl.fail_safe > 0:
            cmd += ["--fail-safe", str(wl.fail_safe), "--fail-safe-min", str(wl.fail_safe_min),
                    "--fail-safe-throttle", str(wl.fail_safe_throttle),
                    "--goc-ttl-min", str(wl.goc_ttl_min), "--goc-ttl-max", str(wl.goc_ttl_max),
                    "--soft-prob", str(wl.soft_prob), "--hard-prob", str(wl.hard_prob),
                    "--write-share", str(wl.write_share), "--cold-keys", str(wl.cold_keys),
                    "--cold-share", str(wl.cold_share)]
        with open(self.history / f"worker-{wid}.log", "ab") as log:
            popen = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        append_json(self.history / "workers.jsonl", {"event": "start", "w": wid, "host": host, "slot": slot,
                                                     "mode": mode, "pid": popen.pid, "t": time.monotonic_ns()})
        return WorkerProc(wid, host, slot, mode, popen)

    def wait_ready(self, workers: list[WorkerProc], deadline: float = READY_DEADLINE) -> None:
        """Poll until each worker has connected (its ready file), with a deadline."""
        end = time.monotonic() + deadline
        pending = list(workers)
        while pending:
            pending = [w for w in pending if not (self.history / f"ready-{w.id}").exists()]
            for w in pending:
                if w.popen.poll() is not None:
                    raise RuntimeError(f"worker {w.id} exited with {w.popen.returncode} before it was ready: "
                                       + (self.history / f"worker-{w.id}.log").read_text(errors="replace")[-2000:])
            if pending and time.monotonic() > end:
                raise RuntimeError(f"workers {[w.id for w in pending]} not ready within {deadline:g}s")
            time.sleep(0.02)  # readiness poll with a deadline

    # -- workers during the run ------------------------------------------------------------------

    def kill_worker(self, host: int, slot: int) -> tuple[int, int]:
        """SIGKILL a worker and start its replacement (a new id); ``(old id, new id)``."""
        old = self.hosts[host].workers[slot]
        t = time.monotonic_ns()
        with contextlib.suppress(ProcessLookupError):
            old.popen.send_signal(signal.SIGKILL)
        old.popen.wait(timeout=10)
        append_json(self.history / "workers.jsonl",
                    {"event": "killed", "w": old.id, "host": host, "slot": slot, "t": t})
        new = self.hosts[host].workers[slot] = self._spawn(host, slot)
        return old.id, new.id

    def reap(self) -> list[int]:
        """Restart any worker that exited on its own (recorded as ``exited``); their ids."""
        gone: list[int] = []
        if self.stop_file.exists():
            return gone
        for host in self.hosts:
            for slot, w in enumerate(host.workers):
                if w.popen.poll() is not None:
                    append_json(self.history / "workers.jsonl", {"event": "exited", "w": w.id, "host": host.index,
                                                                 "code": w.popen.returncode, "t": time.monotonic_ns()})
                    host.workers[slot] = self._spawn(host.index, slot)
                    gone.append(w.id)
        return gone

    def stop_workers(self) -> dict[int, int | None]:
        """The stop file, then a deadline (SIGTERM, then SIGKILL for laggards); exit codes by id."""
        self.stop_file.touch()
        workers = [w for h in self.hosts for w in h.workers]
        end = time.monotonic() + STOP_DEADLINE
        while any(w.popen.poll() is None for w in workers) and time.monotonic() < end:
            time.sleep(0.02)  # waiting for the workers to finish their current call, with a deadline
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for w in workers:
                if w.popen.poll() is None:
                    w.popen.send_signal(sig)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        w.popen.wait(timeout=5)
        codes = {w.id: w.popen.returncode for w in workers}
        for w in workers:
            append_json(self.history / "workers.jsonl", {"event": "exited", "w": w.id, "host": w.host,
                                                         "code": codes[w.id], "t": time.monotonic_ns()})
        return codes

    # -- probes ----------------------------------------------------------------------------------

    def admin(self) -> redis.Redis:
        """A direct connection to the one redis-server (not through a proxy); the caller closes it."""
        return self.server.client()

    def final_reads(self, keys: list[str], interval: float = 1.0) -> dict[int, dict[str, list[Any]]]:
        """Every key on every host, twice, ``interval`` apart, through fresh clients without near copies."""
        clients = [Client(h.coordinator.socket_path, namespace=self.settings.namespace, spawn=False, near_capacity=0)
                   for h in self.hosts]
        try:
            out: dict[int, dict[str, list[Any]]] = {h.index: {k: [] for k in keys} for h in self.hosts}
            for round_ in range(2):
                if round_:
                    time.sleep(interval)  # the second read is the stability check, 1 s later by design
                for host, client in zip(self.hosts, clients, strict=True):
                    for key in keys:
                        out[host.index][key].append(client.get(key))
            return out
        finally:
            for client in clients:
                client.close()

    def redis_records(self, keys: list[str]) -> dict[str, Any]:
        """What Redis holds for each key after the run, for diagnosis (a ``not_converged`` names no
        tier): the record's stamp, whether it is a tombstone, and its value (msgpack-decoded if it
        can be, else its bytes' repr); None if there is no record; ``{"error": ...}`` if Redis did
        not answer."""
        groups = CLUSTER_GROUPS if isinstance(self.redis, RedisClusterGroup) else 1
        layout = Layout(key_prefix(self.settings.namespace), self.settings.namespace, groups)
        out: dict[str, Any] = {}
        try:
            with self.redis.client() as r:
                for key in keys:
                    raw = r.get(layout.record(key))
                    if raw is None:
                        out[key] = None
                        continue
                    try:
                        env = decode_envelope(raw)
                    except ValueError as exc:
                        out[key] = {"malformed": f"{exc}: {raw!r}"[:300]}
                        continue
                    try:
                        value: Any = msgpack.unpackb(env.value, raw=False) if env.value else None
                    except (ValueError, TypeError, msgpack.ExtraData):
                        value = repr(env.value)[:200]
                    out[key] = {"stamp": env.stamp, "tombstone": env.tombstone, "value": value}
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError, RuntimeError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return out

    def coordinator_stats(self) -> dict[int, dict[str, Any]]:
        """Each host's coordinator counters (STATS), for the report; empty if it does not answer."""
        return {host.index: self.host_stats(host.index) for host in self.hosts}

    def host_stats(self, index: int) -> dict[str, Any]:
        """One host's coordinator counters (STATS); empty if it does not answer."""
        with Client(self.hosts[index].coordinator.socket_path, namespace=self.settings.namespace, spawn=False,
                    near_capacity=0) as probe:
            return probe.stats().coordinator or {}

    def rss_kib(self) -> dict[int, int | None]:
        """Each host's coordinator resident set (VmRSS, KiB); None if it is not running."""
        out: dict[int, int | None] = {}
        for host in self.hosts:
            proc = host.coordinator.proc
            out[host.index] = None
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            out[host.index] = int(line.split()[1])
        return out

    # -- teardown --------------------------------------------------------------------------------

    def _keep_redis_logs(self) -> None:
        """Copy the Redis and sentinel logs (what the sentinels did and when, for diagnosing a failover)
        to ``redis-logs/`` in the history (idempotent; a missing file is skipped)."""
        for log in sorted(self.redis.workdir.glob("**/*.log")):
            name = "-".join(log.relative_to(self.redis.workdir).parts)
            with contextlib.suppress(OSError):
                (self.history / "redis-logs").mkdir(exist_ok=True)
                shutil.copyfile(log, self.history / "redis-logs" / name)

    def close(self) -> None:
        """Stop everything this cluster started and remove its temporary folders (idempotent)."""
        for host in self.hosts:
            for w in host.workers:
                if w.popen.poll() is None:
                    w.popen.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        w.popen.wait(timeout=10)
        for host in self.hosts:
            proc = host.coordinator.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            host.coordinator.stop()
            with contextlib.suppress(OSError):
                shutil.copyfile(host.coordinator.log_path, self.history / f"coordinator-{host.index}.log")
            if host.proxy is not None:
                host.proxy.stop()
        if self._own_redis:
            self.redis.stop()
        self._keep_redis_logs()
        for path in self._tmp:
            shutil.rmtree(path, ignore_errors=True)
        self._tmp = []
        remove_orphans()  # shared memory of coordinators killed with SIGKILL
