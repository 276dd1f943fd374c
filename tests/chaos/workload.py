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

#: TTL of every set (and of every get_or_compute without fail-safe): far longer than any run, so
#: nothing expires during one.
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
    #: fail-safe seconds of get_or_compute (0: off; then every call is as before: ``TTL`` and no
    #: fail-safe argument). On, each call gets a short TTL, a fail-safe uniform in
    #: [fail_safe_min, fail_safe] (``fail_safe_min`` 0: ``fail_safe``), the throttle below, and
    #: now and then a soft and / or a hard timeout (see :func:`plans`)
    fail_safe: float = 0.0
    fail_safe_min: float = 0.0
    fail_safe_throttle: float = 1.0
    #: the TTL of each get_or_compute with fail-safe on: uniform in [goc_ttl_min, goc_ttl_max]
    goc_ttl_min: float = 0.3
    goc_ttl_max: float = 2.0
    #: chance that a get_or_compute with fail-safe on has a soft timeout (2-10 ms), a hard one (12-30 ms)
    soft_prob: float = 0.2
    hard_prob: float = 0.2
    #: with fail-safe on, the upper half of the keys is mostly left to get_or_compute (computed
    #: values must live long enough to go stale): a set or delete drawn on one of them moves to a
    #: key of the lower half, but for this share of them (so they are still written now and then)
    write_share: float = 0.01
    #: with fail-safe on, the last ``cold_keys`` keys are read rarely: a get or get_or_compute drawn
    #: on one of them moves to another key of the upper half but for ``cold_share`` of them, so
    #: their values sit stale for a while and are served stale at any age, not just as they expire
    cold_keys: int = 2
    cold_share: float = 0.03


@dataclass(frozen=True)
class Plan:
    """One operation to do. ``fn_seconds`` is how long the compute function takes if it runs
    (longer than the lease TTL when ``slow``); ``cancel_after`` is the deliberate cancellation
    deadline of an async ``get_or_compute`` (None: not cancelled); ``think`` the pause after it
    (now and then a long idle pause). ``ttl`` is the TTL of the write (``TTL`` but for a
    get_or_compute with fail-safe on); ``fail_safe``, ``soft`` and ``hard`` the fail-safe (0:
    none) and timeouts (None: none) of a get_or_compute."""

    index: int
    op: str
    key: str
    fn_seconds: float
    slow: bool
    fail: bool
    cancel_after: float | None
    think: float
    ttl: float = TTL
    soft: float | None = None
    hard: float | None = None
    fail_safe: float = 0.0


def plans(seed: int, worker_id: int, settings: WorkloadSettings) -> Iterator[Plan]:
    """The endless, reproducible sequence of a worker's operations (``index`` from 1).

    With fail-safe on, the TTL, fail-safe and timeouts of each get_or_compute, and the keys that
    writes and reads move to (see ``write_share`` and ``cold_keys``), come from a second generator
    (drawn for every plan), so the operations are otherwise those of the same seed without it."""
    half = settings.keys // 2
    cold = max(half, settings.keys - settings.cold_keys)
    rng = random.Random(f"mtcache-chaos/{seed}/{worker_id}")
    safe = random.Random(f"mtcache-chaos/{seed}/{worker_id}/fail-safe")
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
        ttl, soft, hard, fail_safe = TTL, None, None, 0.0
        if settings.fail_safe > 0:
            short = safe.uniform(settings.goc_ttl_min, settings.goc_ttl_max)
            safe_seconds = safe.uniform(settings.fail_safe_min or settings.fail_safe, settings.fail_safe)
            with_soft, soft_seconds = safe.random() < settings.soft_prob, safe.uniform(0.002, 0.010)
            with_hard, hard_seconds = safe.random() < settings.hard_prob, safe.uniform(0.012, 0.030)
            kept, moved = safe.random() < settings.write_share, f"k{safe.randrange(max(1, half))}"
            warm, warmer = safe.random() < settings.cold_share, f"k{safe.randrange(half, max(half + 1, cold))}"
            if op in ("set", "delete") and int(key[1:]) >= half and not kept:
                key = moved
            elif op in ("get", "goc") and int(key[1:]) >= cold and not warm:
                key = warmer
            if op == "goc":
                ttl, fail_safe = short, safe_seconds
                soft = soft_seconds if with_soft else None
                hard = hard_seconds if with_hard else None
        yield Plan(index, op, key, settings.lease_ttl + slow_extra if slow else fast, slow, fail,
                   cancel_after if cancel else None, idle_seconds if idle else think, ttl, soft, hard, fail_safe)


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
