"""Applying and healing the faults of a schedule on a :class:`~tests.chaos.cluster.Cluster`.

Every fault is logged to ``faults.jsonl`` twice: ``apply`` stamped just *before* it is applied and
``heal`` just *after* it is healed (for an instantaneous fault, after it was applied), so the logged
window covers everything the fault did.
"""

from __future__ import annotations

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
        self.cluster.redis.kill()

        def start() -> dict[str, Any]:
            if not w.param:
                self.cluster.redis.start()
                return {}
            # the foreign entry is in the stream before any coordinator reaches the new Redis
            for host in self.cluster.hosts:
                host.proxy.cut()
            try:
                self.cluster.redis.start()
                return {"foreign_first": self._foreign_entry()}
            finally:
                for host in self.cluster.hosts:
                    host.proxy.heal()
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

    def _link_cut(self, w: Window, detail: dict[str, Any]) -> Heal:
        proxy = self.cluster.hosts[w.host or 0].proxy
        proxy.cut()
        return proxy.heal

    def _link_slow(self, w: Window, detail: dict[str, Any]) -> Heal:
        proxy = self.cluster.hosts[w.host or 0].proxy
        proxy.delay(w.param or 0.1)
        return proxy.heal

    def _link_reset(self, w: Window, detail: dict[str, Any]) -> None:
        self.cluster.hosts[w.host or 0].proxy.reset()

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
