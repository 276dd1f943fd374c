"""The seeded fault schedule: which fault, when, for how long, on what.

The fault phase is cut into equal slots, one window per slot, each window ending at least
``MIN_GAP`` before its slot does, so windows never overlap and every violation happens under at
most one fault (or in the quiet after it). Kinds are dealt from a shuffled deck of all kinds,
reshuffled when it runs out, so a run of N >= len(kinds) windows sees every kind.

On a Redis Cluster (``RunConfig.redis == "cluster"``) the kinds are :data:`CLUSTER_KINDS`: a failover
on a master the seed picks (``cluster_failover``, ``master_kill``) and the process faults. A failover
goes on past its window's planned end (the harness waits until the cluster has settled), so a kind
of :data:`SETTLE` also keeps that long free before the next window, on top of ``MIN_GAP``.

On Redis Sentinel (``RunConfig.redis == "sentinel"``: a master, a replica, three sentinels) the kinds
are :data:`SENTINEL_KINDS`: ``SENTINEL FAILOVER`` (``sentinel_failover``), the master SIGKILLed
(``master_kill``, as on a cluster) and the process faults. There is one master, so a failover's
window names none (``param`` None), and :data:`SENTINEL_SETTLE` and :data:`SENTINEL_DURATIONS` take
the place of :data:`SETTLE` and :data:`DURATIONS` for the kinds they name.
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

#: Faults of Redis Sentinel: ``SENTINEL FAILOVER`` (the sentinels promote the replica and turn the old
#: master into its replica: no data loss), and the master SIGKILLed, the sentinels promoting the replica,
#: the killed node restarted at the window's end as the new master's replica.
SENTINEL_FAULTS = ("sentinel_failover", "master_kill")

#: The kinds of a run on Redis Sentinel: its faults and the process faults (the others need a proxy
#: or the one redis-server, as on a cluster).
SENTINEL_KINDS = (*SENTINEL_FAULTS, "coordinator_kill", "coordinator_stop", "worker_kill")

#: Every kind :func:`make_schedule` knows.
ALL_KINDS = (*KINDS, *CLUSTER_FAULTS, "sentinel_failover")

#: The Redis deployments a schedule is for (``RunConfig.redis``).
DEPLOYMENTS = ("single", "cluster", "sentinel")

#: How many masters a cluster run has (:class:`tests.redis_server.RedisClusterGroup`'s default).
CLUSTER_MASTERS = 3

#: Faults that happen at one instant (their window has no duration).
INSTANT = frozenset({"link_reset", "worker_kill", "stream_trim", "stream_foreign", "cluster_failover",
                     "sentinel_failover"})

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

#: On Sentinel, in place of :data:`DURATIONS`: the sentinels promote the replica of a killed master
#: 3-4 s after the SIGKILL on loopback (``down-after-milliseconds`` 2 s, see
#: :data:`tests.chaos.cluster.SENTINEL_DOWN_AFTER_MS`, then their agreement, the election and the
#: promotion); the node is restarted at the window's end, or once the replica has taken over.
SENTINEL_DURATIONS = {"master_kill": (3.0, 4.5)}

#: On Sentinel, in place of :data:`SETTLE`: ``SENTINEL FAILOVER`` is over once the old master is the new
#: one's replica, which the sentinels make it only 8 s (four hello periods) after the promotion, at their
#: next INFO to it (every 10 s): 11-12.5 s on loopback; a killed master's node, restarted as a replica,
#: is synced ~1 s after the window's end, which may itself come late (a promotion slower than the
#: window).
SENTINEL_SETTLE = {"sentinel_failover": 12.5, "master_kill": 2.5}


@dataclass(frozen=True)
class Window:
    """One planned fault: ``start`` seconds after the load began, for ``duration`` seconds (0 for
    an instantaneous fault), on ``host`` (and ``slot``, the worker, for ``worker_kill``).
    ``param``: the added latency of ``link_slow``; for ``redis_restart_empty``, 1 when a foreign
    entry is added to the invalidation stream as Redis comes back, while every host's link is held
    (so the newest entry a reconnecting reader finds is likely not mtcache's), else 0; for
    ``cluster_failover`` and ``master_kill`` on a cluster, the master: its index among the masters in
    the order of their slots (modulo how many there are); None on Sentinel (one master)."""

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
            extra = "" if self.param is None else f" master #{int(self.param)}"
        return f"#{self.index} {self.start:7.2f}s +{self.duration:.2f}s {self.kind}{where}{extra}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_schedule(seed: int, *, count: int, begin: float, end: float, hosts: int, workers: int,
                  kinds: tuple[str, ...] = KINDS, redis: str = "single") -> list[Window]:
    """``count`` windows between ``begin`` and ``end`` seconds, the same for the same arguments.

    ``redis``: the deployment (one of :data:`DEPLOYMENTS`). On ``"sentinel"`` the settling times and
    durations are those of :data:`SENTINEL_SETTLE` and :data:`SENTINEL_DURATIONS`, a failover names no
    master, and the slots are not equal: the kinds are dealt first, and each window's slot is as long as
    its kind needs (its longest duration, its settling time, ``MIN_GAP`` and 0.5 s), all of them
    stretched alike to fill ``[begin, end]`` (a ``SENTINEL FAILOVER`` needs 14 s, a worker kill 1.5 s:
    equal slots would each need the 14 s).

    :raises ValueError: an unknown kind or deployment, or slots too short for a window and its gap (and
        its settling time, see :data:`SETTLE`); on Sentinel, whatever the seed deals (every full deck,
        and the kinds needing the most for the rest).
    """
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
    if redis not in DEPLOYMENTS:
        raise ValueError(f"unknown Redis deployment {redis!r}: one of {list(DEPLOYMENTS)}")
    if count <= 0 or not kinds:
        return []
    sentinel = redis == "sentinel"
    settle = {**SETTLE, **SENTINEL_SETTLE} if sentinel else SETTLE
    durations = {**DURATIONS, **SENTINEL_DURATIONS} if sentinel else DURATIONS
    slot_len = (end - begin) / count
    rng = random.Random(f"mtcache-chaos-schedule/{seed}")
    deck: list[str] = []

    def deal() -> str:
        nonlocal deck
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
        return deck.pop()

    dealt: list[str] = []
    slots: list[tuple[float, float]] = []  # (start, length) of each window's slot, on Sentinel
    if sentinel:
        def need_of(kind: str) -> float:
            longest = 0.0 if kind in INSTANT else durations.get(kind, (0.0, 0.0))[1]
            return MIN_GAP + 0.5 + settle.get(kind, 0.0) + longest

        full, rest = divmod(count, len(kinds))
        worst = full * sum(map(need_of, kinds)) + sum(sorted(map(need_of, kinds))[len(kinds) - rest:])
        if worst > end - begin:
            raise ValueError(f"{count} windows do not fit in {end - begin:g}s (they may need {worst:g}s)")
        dealt = [deal() for _ in range(count)]
        stretch = (end - begin) / sum(map(need_of, dealt))
        at = begin
        for kind in dealt:
            slots.append((at, need_of(kind) * stretch))
            at += need_of(kind) * stretch
    else:
        need = MIN_GAP + 0.5 + max(settle.get(k, 0.0) for k in kinds)
        if slot_len < need:
            raise ValueError(f"{count} windows do not fit in {end - begin:g}s (each needs {need:g}s)")
    out = []
    for i in range(count):
        kind = dealt[i] if sentinel else deal()
        slot_start, length = slots[i] if sentinel else (begin + i * slot_len, slot_len)
        room = length - MIN_GAP - settle.get(kind, 0.0)
        low, high = durations.get(kind, (0.0, 0.0))
        duration = 0.0 if kind in INSTANT else rng.uniform(min(low, room), min(high, room))
        start = slot_start + rng.uniform(0.0, room - duration)
        host = rng.randrange(hosts) if kind in PER_HOST or kind == "worker_kill" else None
        slot = rng.randrange(workers) if kind == "worker_kill" else None
        param = round(rng.uniform(0.05, 0.2), 3) if kind == "link_slow" else None
        if kind == "redis_restart_empty":
            param = float(rng.random() < 0.5)
        if kind in CLUSTER_FAULTS and not sentinel:
            param = float(rng.randrange(CLUSTER_MASTERS))
        out.append(Window(i, kind, round(start, 3), round(duration, 3), host, slot, param))
    return out
