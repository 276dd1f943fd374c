"""The seeded fault schedule: which fault, when, for how long, on what.

The fault phase is cut into equal slots, one window per slot, each window ending at least
``MIN_GAP`` before its slot does, so windows never overlap and every violation happens under at
most one fault (or in the quiet after it). Kinds are dealt from a shuffled deck of all kinds,
reshuffled when it runs out, so a run of N >= len(kinds) windows sees every kind.
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

#: Faults that happen at one instant (their window has no duration).
INSTANT = frozenset({"link_reset", "worker_kill", "stream_trim", "stream_foreign"})

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
}

#: Quiet time after each window before the next slot begins.
MIN_GAP = 1.0


@dataclass(frozen=True)
class Window:
    """One planned fault: ``start`` seconds after the load began, for ``duration`` seconds (0 for
    an instantaneous fault), on ``host`` (and ``slot``, the worker, for ``worker_kill``).
    ``param``: the added latency of ``link_slow``; for ``redis_restart_empty``, 1 when a foreign
    entry is added to the invalidation stream as Redis comes back, while every host's link is held
    (so the newest entry a reconnecting reader finds is likely not mtcache's), else 0."""

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
        return f"#{self.index} {self.start:7.2f}s +{self.duration:.2f}s {self.kind}{where}{extra}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_schedule(seed: int, *, count: int, begin: float, end: float, hosts: int, workers: int,
                  kinds: tuple[str, ...] = KINDS) -> list[Window]:
    """``count`` windows between ``begin`` and ``end`` seconds, the same for the same arguments.

    :raises ValueError: an unknown kind, or slots too short for a window and its gap.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
    if count <= 0 or not kinds:
        return []
    slot_len = (end - begin) / count
    if slot_len < MIN_GAP + 0.5:
        raise ValueError(f"{count} windows do not fit in {end - begin:g}s (each needs {MIN_GAP + 0.5:g}s)")
    rng = random.Random(f"mtcache-chaos-schedule/{seed}")
    deck: list[str] = []
    out = []
    for i in range(count):
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
        kind = deck.pop()
        room = slot_len - MIN_GAP
        low, high = DURATIONS.get(kind, (0.0, 0.0))
        duration = 0.0 if kind in INSTANT else rng.uniform(min(low, room), min(high, room))
        start = begin + i * slot_len + rng.uniform(0.0, room - duration)
        host = rng.randrange(hosts) if kind in PER_HOST or kind == "worker_kill" else None
        slot = rng.randrange(workers) if kind == "worker_kill" else None
        param = round(rng.uniform(0.05, 0.2), 3) if kind == "link_slow" else None
        if kind == "redis_restart_empty":
            param = float(rng.random() < 0.5)
        out.append(Window(i, kind, round(start, 3), round(duration, 3), host, slot, param))
    return out
