"""The seeded workload: what each worker does, decided before it runs.

Every random choice of an operation is drawn whatever the operation turns out to be, so a
worker's sequence of plans depends only on ``(seed, worker id)``: the same seed replays the same
operations, whatever the faults did to their outcomes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Operation mix: get 50 %, set 20 %, delete 8 %, get_or_compute 22 %.
MIX = (("get", 0.50), ("set", 0.20), ("delete", 0.08), ("goc", 0.22))

#: TTL of every write: far longer than any run, so nothing expires during one.
TTL = 3600.0


class InjectedFailure(Exception):
    """Raised on purpose by a worker's compute function (a planned failure, not a bug)."""


@dataclass(frozen=True)
class WorkloadSettings:
    """What shapes a worker's plans."""

    keys: int = 8
    slow_prob: float = 0.003
    fail_prob: float = 0.05
    cancel_prob: float = 0.1
    lease_ttl: float = 3.0
    think_ms: float = 3.0
    #: chance that a worker goes idle (0.5-3 s) after an operation, as a server worker does
    #: between requests: its near copies then outlive events it has not heard of
    idle_prob: float = 0.0005


@dataclass(frozen=True)
class Plan:
    """One operation to do. ``fn_seconds`` is how long the compute function takes if it runs
    (longer than the lease TTL when ``slow``); ``cancel_after`` is the deliberate cancellation
    deadline of an async ``get_or_compute`` (None: not cancelled); ``think`` the pause after it
    (now and then a long idle pause)."""

    index: int
    op: str
    key: str
    fn_seconds: float
    slow: bool
    fail: bool
    cancel_after: float | None
    think: float


def plans(seed: int, worker_id: int, settings: WorkloadSettings) -> Iterator[Plan]:
    """The endless, reproducible sequence of a worker's operations (``index`` from 1)."""
    rng = random.Random(f"mtcache-chaos/{seed}/{worker_id}")
    index = 0
    while True:
        index += 1
        pick, key = rng.random(), f"k{rng.randrange(settings.keys)}"
        fast, slow_extra = rng.uniform(0.0, 0.020), rng.uniform(0.5, 1.5)
        slow, fail = rng.random() < settings.slow_prob, rng.random() < settings.fail_prob
        cancel, cancel_after = rng.random() < settings.cancel_prob, rng.uniform(0.001, 0.015)
        think = rng.uniform(0.0, settings.think_ms / 1000.0)
        idle, idle_seconds = rng.random() < settings.idle_prob, rng.uniform(0.5, 3.0)
        op, edge = MIX[-1][0], 0.0
        for name, share in MIX:
            edge += share
            if pick < edge:
                op = name
                break
        yield Plan(index, op, key, settings.lease_ttl + slow_extra if slow else fast, slow, fail,
                   cancel_after if cancel else None, idle_seconds if idle else think)


def written_value(worker_id: int, index: int) -> dict[str, int]:
    """The value a ``set`` writes: it names its write."""
    return {"w": worker_id, "s": index}


def computed_value(worker_id: int, index: int) -> dict[str, int]:
    """The value a compute function returns: it names its fill."""
    return {"w": worker_id, "s": index, "c": 1}


ValueId = tuple[int, int, int]


def value_id(value: Any) -> ValueId | None:
    """``(worker, index, computed)`` of a value written by this workload, None for None.

    :raises ValueError: the value is not one this workload writes.
    """
    if value is None:
        return None
    if isinstance(value, dict) and set(value) in ({"w", "s"}, {"w", "s", "c"}):
        w, s, c = value["w"], value["s"], value.get("c", 0)
        if all(isinstance(x, int) and not isinstance(x, bool) for x in (w, s, c)) and c in (0, 1):
            return (w, s, c)
    raise ValueError(f"not a value of this workload: {value!r}")
