"""The seeded fault schedule: which fault, when, for how long, on what.

The fault phase is cut into equal slots, one window per slot, each window ending at least
``MIN_GAP`` before its slot does, so windows never overlap and every violation happens under at
most one fault (or in the quiet after it). Kinds are dealt from a shuffled deck of all kinds,
reshuffled when it runs out, so a run of N >= len(kinds) windows sees every kind.

On a Redis Cluster (``RunConfig.redis == "cluster"``) the kinds are :data:`CLUSTER_KINDS`: a failover
on a master the seed picks (``cluster_failover``, ``master_kill``) and the process faults. A failover
goes on past its window's planned end (the harness waits until the cluster has settled), so a kind
of :data:`SETTLE` also keeps that long free before the next window, on top of ``MIN_GAP``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

KINDS = (
    "redis_restart_empty",
    "client_pause_write",
    "maxmemory_noeviction",
    "maxmemory_allkeys_lru",
    "link_cut",
    "link_slow",
    "link_reset",
    "coordinator_kill",
    "coordinator_stop",
    "worker_kill",
    "stream_trim",
    "stream_foreign",
)

#: Faults of a Redis Cluster: ``CLUSTER FAILOVER`` on a replica of a master (no data loss), and a
#: master SIGKILLed, a replica of it taking its place, the killed node restarted at the window's end
#: (it rejoins as a replica). The master is ``param``: its index in the order of the slots.
CLUSTER_FAULTS = ("cluster_failover", "master_kill")

#: The kinds of a run on a Redis Cluster: its faults and the process faults. The others need a proxy
#: between a coordinator and Redis (a cluster client reaches the nodes the cluster announces) or the
#: one redis-server (restart, pause, maxmemory, the one invalidation stream).
CLUSTER_KINDS = (*CLUSTER_FAULTS, "coordinator_kill", "coordinator_stop", "worker_kill")

#: Every kind :func:`make_schedule` knows.
ALL_KINDS = (*KINDS, *CLUSTER_FAULTS)

#: How many masters a cluster run has (:class:`tests.redis_server.RedisClusterGroup`'s default).
CLUSTER_MASTERS = 3

#: Faults that happen at one instant (their window has no duration).
INSTANT = frozenset({"link_reset", "worker_kill", "stream_trim", "stream_foreign", "cluster_failover"})

#: Faults aimed at one host (the others at Redis, or at one worker of a host).
PER_HOST = frozenset({"link_cut", "link_slow", "link_reset", "coordinator_kill", "coordinator_stop"})

#: Shortest and longest duration of each kind with a duration, in seconds.
DURATIONS = {
    "redis_restart_empty": (0.2, 2.5),
    "client_pause_write": (0.2, 2.0),
    "maxmemory_noeviction": (0.5, 2.5),
    "maxmemory_allkeys_lru": (0.5, 2.5),
    "link_cut": (0.3, 2.5),
    "link_slow": (0.5, 2.5),
    "coordinator_kill": (0.1, 2.0),
    "coordinator_stop": (0.2, 2.5),
    # the killed master's replica takes its place within it (~2.5 s on loopback: the 1 s node
    # timeout, then the election); a shorter window restarts the node as soon as it has
    "master_kill": (1.5, 3.0),
}

#: Quiet time after each window before the next slot begins.
MIN_GAP = 1.0

#: How long a fault may go on past its planned end, kept free before the next slot too: the wait for
#: a failover to settle (``cluster_failover``: the replica takes over, ~0.1 s on loopback, more under
#: load), for a killed master's replica to take over past a short window and for the restarted node
#: to rejoin (``master_kill``: ~0.2 s). :class:`tests.redis_server.RedisClusterGroup` waits up to 30 s;
#: the runner never starts a window less than ``MIN_GAP`` after the previous one was over.
SETTLE = {"cluster_failover": 1.0, "master_kill": 1.0}


@dataclass(frozen=True)
class Window:
    """One planned fault: ``start`` seconds after the load began, for ``duration`` seconds (0 for
    an instantaneous fault), on ``host`` (and ``slot``, the worker, for ``worker_kill``).
    ``param``: the added latency of ``link_slow``; for ``redis_restart_empty``, 1 when a foreign
    entry is added to the invalidation stream as Redis comes back, while every host's link is held
    (so the newest entry a reconnecting reader finds is likely not mtcache's), else 0; for
    ``cluster_failover`` and ``master_kill``, the master: its index among the masters in the order
    of their slots (modulo how many there are)."""

    index: int
    kind: str
    start: float
    duration: float
    host: int | None = None
    slot: int | None = None
    param: float | None = None

    @property
    def target(self) -> Any:
        """What the fault hits, for logs: a host, ``[host, slot]``, or None (Redis)."""
        return [self.host, self.slot] if self.slot is not None else self.host

    def describe(self) -> str:
        where = "" if self.host is None else f" host {self.host}" + ("" if self.slot is None else f" slot {self.slot}")
        extra = "" if self.param is None else f" ({self.param:g})"
        if self.kind == "redis_restart_empty":
            extra = " (then a foreign stream entry)" if self.param else ""
        if self.kind in CLUSTER_FAULTS:
            extra = f" master #{int(self.param or 0)}"
        return f"#{self.index} {self.start:7.2f}s +{self.duration:.2f}s {self.kind}{where}{extra}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_schedule(seed: int, *, count: int, begin: float, end: float, hosts: int, workers: int,
                  kinds: tuple[str, ...] = KINDS) -> list[Window]:
    """``count`` windows between ``begin`` and ``end`` seconds, the same for the same arguments.

    :raises ValueError: an unknown kind, or slots too short for a window and its gap (and its
        settling time, see :data:`SETTLE`).
    """
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
    if count <= 0 or not kinds:
        return []
    slot_len = (end - begin) / count
    need = MIN_GAP + 0.5 + max(SETTLE.get(k, 0.0) for k in kinds)
    if slot_len < need:
        raise ValueError(f"{count} windows do not fit in {end - begin:g}s (each needs {need:g}s)")
    rng = random.Random(f"mtcache-chaos-schedule/{seed}")
    deck: list[str] = []
    out = []
    for i in range(count):
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
        kind = deck.pop()
        room = slot_len - MIN_GAP - SETTLE.get(kind, 0.0)
        low, high = DURATIONS.get(kind, (0.0, 0.0))
        duration = 0.0 if kind in INSTANT else rng.uniform(min(low, room), min(high, room))
        start = begin + i * slot_len + rng.uniform(0.0, room - duration)
        host = rng.randrange(hosts) if kind in PER_HOST or kind == "worker_kill" else None
        slot = rng.randrange(workers) if kind == "worker_kill" else None
        param = round(rng.uniform(0.05, 0.2), 3) if kind == "link_slow" else None
        if kind == "redis_restart_empty":
            param = float(rng.random() < 0.5)
        if kind in CLUSTER_FAULTS:
            param = float(rng.randrange(CLUSTER_MASTERS))
        out.append(Window(i, kind, round(start, 3), round(duration, 3), host, slot, param))
    return out
