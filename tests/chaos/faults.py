"""Applying and healing the faults of a schedule on a :class:`~tests.chaos.cluster.Cluster`.

Every fault is logged to ``faults.jsonl`` twice: ``apply`` stamped just *before* it is applied and
``heal`` just *after* it is healed (for an instantaneous fault, after it was applied), so the logged
window covers everything the fault did.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.chaos.cluster import Cluster
from tests.chaos.history import append_json
from tests.chaos.schedule import Window
from tests.redis_server import CLUSTER_DEADLINE, CLUSTER_SLOTS, RedisClusterGroup, SentinelGroup
from tests.tcp_proxy import FaultProxy

#: How far above the memory Redis uses the maxmemory faults set the limit.
MAXMEMORY_MARGIN = 32 * 1024

#: Heals a fault; may return details for the log.
Heal = Callable[[], Any]


class FaultInjector:
    """Applies one window at a time (windows never overlap) and remembers how to heal it."""

    def __init__(self, cluster: Cluster, log: Path) -> None:
        self.cluster = cluster
        self.log = log
        self.active: Window | None = None
        self._heal: Heal | None = None

    def _record(self, window: Window, phase: str, t: int, detail: dict[str, Any]) -> None:
        append_json(self.log, {"i": window.index, "kind": window.kind, "target": window.target, "phase": phase,
                               "t": t, "detail": detail})

    def apply(self, window: Window) -> None:
        """Apply ``window``'s fault; an instantaneous one is logged as healed at once."""
        if self.active is not None:
            self.heal()
        detail: dict[str, Any] = {}
        t = time.monotonic_ns()
        try:
            heal = getattr(self, f"_{window.kind}")(window, detail)
        except (redis.RedisError, OSError, RuntimeError) as exc:
            detail["error"] = f"{type(exc).__name__}: {exc}"
            heal = None
        self._record(window, "apply", t, detail)
        if heal is None:
            self._record(window, "heal", time.monotonic_ns(), {})
        else:
            self.active, self._heal = window, heal

    def heal(self) -> None:
        """Heal the active fault, if any (also what cleanup calls)."""
        window, heal = self.active, self._heal
        if window is None or heal is None:
            return
        self.active = self._heal = None
        detail: dict[str, Any] = {}
        try:
            extra = heal()
            if isinstance(extra, dict):
                detail.update(extra)
        except (redis.RedisError, OSError, RuntimeError) as exc:
            detail["error"] = f"{type(exc).__name__}: {exc}"
        self._record(window, "heal", time.monotonic_ns(), detail)

    # -- Redis -------------------------------------------------------------------------------------

    def _redis_restart_empty(self, w: Window, detail: dict[str, Any]) -> Heal:
        self.cluster.server.kill()

        def start() -> dict[str, Any]:
            if not w.param:
                self.cluster.server.start()
                return {}
            # the foreign entry is in the stream before any coordinator reaches the new Redis
            for host in self.cluster.hosts:
                self._proxy(host.index).cut()
            try:
                self.cluster.server.start()
                return {"foreign_first": self._foreign_entry()}
            finally:
                for host in self.cluster.hosts:
                    self._proxy(host.index).heal()
        return start

    def _foreign_entry(self) -> str:
        with self.cluster.admin() as r:
            return r.xadd(self.cluster.stream, {"foo": "bar"}).decode()

    def _client_pause_write(self, w: Window, detail: dict[str, Any]) -> Heal:
        with self.cluster.admin() as r:
            r.execute_command("CLIENT", "PAUSE", int(w.duration * 1000) + 1000, "WRITE")

        def unpause() -> None:
            with self.cluster.admin() as r:
                r.execute_command("CLIENT", "UNPAUSE")
        return unpause

    def _maxmemory(self, policy: str, detail: dict[str, Any]) -> Heal:
        with self.cluster.admin() as r:
            before = r.config_get("maxmemory")["maxmemory"], r.config_get("maxmemory-policy")["maxmemory-policy"]
            used = int(r.info("memory")["used_memory"])
            r.config_set("maxmemory-policy", policy)
            r.config_set("maxmemory", used + MAXMEMORY_MARGIN)
        detail.update(used=used, limit=used + MAXMEMORY_MARGIN)

        def restore() -> None:
            with self.cluster.admin() as r:
                r.config_set("maxmemory", before[0])
                r.config_set("maxmemory-policy", before[1])
        return restore

    def _maxmemory_noeviction(self, w: Window, detail: dict[str, Any]) -> Heal:
        return self._maxmemory("noeviction", detail)

    def _maxmemory_allkeys_lru(self, w: Window, detail: dict[str, Any]) -> Heal:
        return self._maxmemory("allkeys-lru", detail)

    def _stream_trim(self, w: Window, detail: dict[str, Any]) -> None:
        with self.cluster.admin() as r:
            detail["trimmed"] = r.xtrim(self.cluster.stream, maxlen=0, approximate=False)

    def _stream_foreign(self, w: Window, detail: dict[str, Any]) -> None:
        detail["id"] = self._foreign_entry()

    # -- links -------------------------------------------------------------------------------------

    def _proxy(self, host: int) -> FaultProxy:
        proxy = self.cluster.hosts[host].proxy
        if proxy is None:
            raise RuntimeError("no proxy on a Redis Cluster or Sentinel: the link faults need one redis-server")
        return proxy

    def _link_cut(self, w: Window, detail: dict[str, Any]) -> Heal:
        proxy = self._proxy(w.host or 0)
        proxy.cut()
        return proxy.heal

    def _link_slow(self, w: Window, detail: dict[str, Any]) -> Heal:
        proxy = self._proxy(w.host or 0)
        proxy.delay(w.param or 0.1)
        return proxy.heal

    def _link_reset(self, w: Window, detail: dict[str, Any]) -> None:
        self._proxy(w.host or 0).reset()

    # -- processes ---------------------------------------------------------------------------------

    def _coordinator_kill(self, w: Window, detail: dict[str, Any]) -> Heal:
        coordinator = self.cluster.hosts[w.host or 0].coordinator
        detail["pid"] = coordinator.pid
        # what dies with it: the periods in which it worked without Redis (see History.down)
        detail["l2_down_periods"] = self.cluster.host_stats(w.host or 0).get("l2_down_periods", [])
        coordinator.kill()
        return coordinator.start

    def _coordinator_stop(self, w: Window, detail: dict[str, Any]) -> Heal:
        pid = self.cluster.hosts[w.host or 0].coordinator.pid
        os.kill(pid, signal.SIGSTOP)
        return lambda: os.kill(pid, signal.SIGCONT)

    def _worker_kill(self, w: Window, detail: dict[str, Any]) -> None:
        detail["killed"], detail["started"] = self.cluster.kill_worker(w.host or 0, w.slot or 0)

    # -- Redis Cluster -----------------------------------------------------------------------------

    def _master(self, w: Window, detail: dict[str, Any]) -> tuple[RedisClusterGroup, int, list[int]]:
        """The master ``w.param`` names (by the order of the slots), with a live replica (a node's view
        of which nodes replicate which may lag a settled cluster by a moment: polled, with a deadline),
        and those replicas; the master's port, replicas and slots go in ``detail``."""
        group = self.cluster.redis_cluster
        deadline = time.monotonic() + CLUSTER_DEADLINE
        while True:
            masters = group.master_ports()
            port = masters[int(w.param or 0) % len(masters)]
            replicas = group.replicas_of(port)
            if replicas:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the master on {port} has had no live replica for {CLUSTER_DEADLINE:g} s")
            time.sleep(0.02)  # polling interval of a deadline-bounded wait
        detail.update(master=port, replicas=replicas, slots=_slots_of(group, port))
        return group, port, replicas

    def _cluster_failover(self, w: Window, detail: dict[str, Any]) -> None:
        """``CLUSTER FAILOVER`` on a replica of the master; returns once the cluster has settled (the
        replica master, the old master its replica): a manual failover loses nothing."""
        group, port, _ = self._master(w, detail)
        detail["new_master"] = group.failover(port)[1]

    def _master_kill(self, w: Window, detail: dict[str, Any]) -> Heal:
        """SIGKILL the master (on a cluster, the one ``w.param`` names; on Sentinel, the one the
        sentinels name, once the group has settled); returns once a replica of it has taken its place
        (the cluster has settled; the sentinels name the promoted replica, which answers as master).
        ``killed_at``: when the SIGKILL was sent (the replication loss is counted from it), ``slots``:
        what the master served (on Sentinel every slot: the loss record covers every key). Its heal
        restarts the node, which comes back as the new master's replica (empty, then fully synced): on
        a cluster by its ``nodes.conf``, on Sentinel started as a replica of the master the sentinels
        name (see :meth:`tests.redis_server.SentinelGroup.restart`)."""
        deployment = self.cluster.redis
        replaced: Callable[[], int]
        if isinstance(deployment, SentinelGroup):
            group = deployment
            port = group.wait_settled("the group to settle before the kill")
            detail.update(master=port, replicas=[group.other(port).port], slots=[[0, CLUSTER_SLOTS - 1]])
            replaced = functools.partial(group.wait_new_master, port)
            rejoin: Callable[[int], object] = group.restart
        else:
            cluster, port, replicas = self._master(w, detail)
            replaced = functools.partial(cluster.wait_replaced, port, replicas)
            rejoin = cluster.restart
        detail["killed_at"] = time.monotonic_ns()
        deployment.server_on(port).kill()

        def restart() -> dict[str, Any]:
            rejoin(port)
            return {"restarted": port}
        try:
            detail["new_master"] = replaced()
            detail["replaced_after"] = round((time.monotonic_ns() - detail["killed_at"]) / 1e9, 3)
        except RuntimeError as exc:  # still restarted at the window's end
            detail["error"] = f"{type(exc).__name__}: {exc}"
        return restart

    # -- Redis Sentinel ----------------------------------------------------------------------------

    def _sentinel_failover(self, w: Window, detail: dict[str, Any]) -> None:
        """``SENTINEL FAILOVER`` once the group has settled; returns once the sentinels name the replica
        master, it answers as one, and the old master is its replica (no data loss), with its link up.
        Seconds after the command: ``promoted_after`` (sentinel 0 names the new master),
        ``demoted_after`` (the old master is a replica: until then it is a master too, and takes the
        writes of whoever is still connected to it), ``settled_after``."""
        group = self.cluster.sentinel_group
        old = detail["master"] = group.wait_settled("the group to settle before the failover")
        t = time.monotonic()
        with group.sentinel() as s:
            s.execute_command("SENTINEL", "FAILOVER", group.service)
        while group.master_port() in (None, old):
            if time.monotonic() - t > CLUSTER_DEADLINE:
                raise RuntimeError(f"the sentinels still name {old} {CLUSTER_DEADLINE:g} s after SENTINEL FAILOVER")
            time.sleep(0.02)  # polling interval of a deadline-bounded wait
        detail["promoted_after"] = round(time.monotonic() - t, 3)
        detail["new_master"] = group.wait_new_master(old)
        detail["demoted_after"] = round(time.monotonic() - t, 3)
        group.wait_settled("the old master to be the new one's synced replica")
        detail["settled_after"] = round(time.monotonic() - t, 3)


def _slots_of(group: RedisClusterGroup, port: int) -> list[list[int]]:
    """The slot ranges (``[first, last]``, inclusive) the master on ``port`` serves, by ``CLUSTER NODES``
    of a live node."""
    errors = []
    for server in group.live():
        try:
            with server.client() as c:
                raw = c.execute_command("CLUSTER", "NODES")
        except redis.RedisError as exc:
            errors.append(exc)
            continue
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 8 and int(fields[1].split("@")[0].rsplit(":", 1)[1]) == port:
                ranges = [f.split("-") for f in fields[8:] if not f.startswith("[")]
                return [[int(r[0]), int(r[-1])] for r in ranges]
    raise RuntimeError(f"no live node names the slots of {port}: {errors}")
