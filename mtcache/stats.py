"""Statistics and health snapshots (frozen dataclasses, not live dicts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mtcache.histogram import percentile

__all__ = ["TIERS", "FleetStats", "Health", "HotKey", "Latency", "Stats", "WorkerStats"]

#: The tiers a read can be answered by, in the order it tries them ("waited": another
#: caller's computation; "miss": nothing found and nothing computed, a plain ``get``).
TIERS = ("near", "mirror", "l1", "l2", "compute", "waited", "miss")


def _rate(hits: int, misses: int) -> float:
    total = hits + misses
    return hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency histogram summed up: how many durations, their mean and percentiles in
    seconds (None when there were none). Percentiles come from log-linear buckets and are
    within 12.5 % (see :mod:`mtcache.histogram`)."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def from_wire(cls, data: object) -> Latency:
        """From a coordinator's ``{"buckets": [[index, count], ...], "sum_us": n}`` (anything
        else: an empty summary)."""
        if not isinstance(data, dict) or not isinstance(data.get("buckets"), list):
            return cls()
        buckets: Sequence[Sequence[int]] = data["buckets"]
        count = sum(pair[1] for pair in buckets)
        if not count:
            return cls()

        def q(x: float) -> float | None:
            value = percentile(buckets, x)
            return None if value is None else value / 1e6

        return cls(count, data.get("sum_us", 0) / count / 1e6, q(0.5), q(0.9), q(0.99))


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One reporting client's counters (``mtcache stats --workers``), as of its last report,
    ``age`` seconds ago."""

    pid: int
    near_hits: int = 0
    near_misses: int = 0
    mirror_hits: int = 0
    mirror_misses: int = 0
    requests: int = 0
    computes: int = 0
    age: float = 0.0

    @property
    def near_hit_rate(self) -> float:
        """Near hits over near lookups of this client."""
        return _rate(self.near_hits, self.near_misses)


@dataclass(frozen=True, slots=True)
class HotKey:
    """A key among the most requested at the coordinator lately: ``requests`` (halved every
    minute) overcounts by at most ``error`` (space-saving, see
    :mod:`mtcache.coordinator.hotkeys`). Near and mirror hits never reach the coordinator and
    are not counted here."""

    key: str
    requests: int
    error: int = 0


@dataclass(frozen=True, slots=True)
class FleetStats:
    """The whole host: every reporting worker's near and mirror counters (each at most a
    second or two old) and the coordinator's tiers. ``reads`` is every read that reached
    a tier; :attr:`served` says which tier answered what share of them and
    :attr:`hit_rates` how often each tier had what it was asked for. ``latency``
    summarises the histograms: ``l1`` (requests the coordinator answered from L1), ``l2``
    (reads it answered after an L1 miss: Redis), ``lease`` (lease requests after an L1
    miss, waits for computations included), ``write`` (writes until acknowledged), and
    from the workers ``roundtrip`` (their socket requests, lease requests excepted) and
    ``compute`` (their runs of ``fn``). Near and mirror hits are not timed: timing a 0.5 µs
    hit would double its cost."""

    workers: int = 0
    near_hits: int = 0
    near_misses: int = 0
    mirror_hits: int = 0
    mirror_misses: int = 0
    l1_hits: int = 0
    l1_misses: int = 0
    l2_hits: int = 0
    l2_misses: int = 0
    computes: int = 0
    coalesced: int = 0
    compute_seconds: float = 0.0
    latency: dict[str, Latency] = field(default_factory=dict)
    per_worker: tuple[WorkerStats, ...] = ()

    @property
    def reads(self) -> int:
        """Reads answered by some tier: near and mirror hits, and every L1 lookup."""
        return self.near_hits + self.mirror_hits + self.l1_hits + self.l1_misses

    def answered(self) -> dict[str, int]:
        """Reads per answering tier (see :data:`TIERS`)."""
        out = {"near": self.near_hits, "mirror": self.mirror_hits, "l1": self.l1_hits, "l2": self.l2_hits,
               "compute": self.computes, "waited": self.coalesced}
        out["miss"] = max(0, self.reads - sum(out.values()))
        return out

    @property
    def served(self) -> dict[str, float]:
        """The share of :attr:`reads` each tier answered (they add up to 1 when there were reads)."""
        reads = self.reads
        return {tier: (n / reads if reads else 0.0) for tier, n in self.answered().items()}

    @property
    def hit_rates(self) -> dict[str, float]:
        """Per tier, hits over lookups at that tier."""
        return {"near": _rate(self.near_hits, self.near_misses), "mirror": _rate(self.mirror_hits, self.mirror_misses),
                "l1": _rate(self.l1_hits, self.l1_misses), "l2": _rate(self.l2_hits, self.l2_misses)}

    @property
    def source_seconds_saved(self) -> float:
        """An estimate of the time the source was spared: reads not computed times the mean
        computation (0.0 before the first computation)."""
        if not self.computes:
            return 0.0
        return max(0, self.reads - self.computes) * self.compute_seconds / self.computes

    def as_dict(self) -> dict[str, Any]:
        """Every field plus the shares, hit rates and the time saved, as plain data."""
        out = asdict(self)
        out["reads"] = self.reads
        out["answered"] = self.answered()
        out["served"] = self.served
        out["hit_rates"] = self.hit_rates
        out["source_seconds_saved"] = self.source_seconds_saved
        return out


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters of one client (near tier, shared-memory mirror reads, computes in
    this process) and of its coordinator (L1, L2, leases, mirror writes), each event
    counted once. ``l1_hits`` counts hits served through the socket; a hit in the
    shared-memory mirror is an L1 hit too, counted in ``mirror_hits``.

    ``fleet`` is the whole host (every worker's near and mirror reads, see
    :class:`FleetStats`); ``hot_keys`` the keys most requested at the coordinator lately.
    ``coordinator`` holds the coordinator's raw counters ({} when it is unreachable).
    """

    near_hits: int = 0
    near_misses: int = 0
    l1_hits: int = 0
    l1_misses: int = 0
    l2_hits: int = 0
    l2_misses: int = 0
    promotions: int = 0
    computes: int = 0
    local_computes: int = 0
    coalesced: int = 0
    local_coalesced: int = 0
    inflight_leases: int = 0
    evictions: int = 0
    l2_errors: int = 0
    coordinator_errors: int = 0
    #: stale values handed to callers of get_or_compute whose source failed (fail-safe)
    stale_served: int = 0
    #: failures of the source that fail-safe answered (the stale value made fresh again for a while)
    fail_safe_activations: int = 0
    mirror_hits: int = 0
    mirror_misses: int = 0
    mirror_torn_retries: int = 0
    mirror_not_mirrored: int = 0
    mirror_arena_used: int = 0
    fleet: FleetStats = field(default_factory=FleetStats)
    hot_keys: tuple[HotKey, ...] = ()
    coordinator: dict[str, Any] = field(default_factory=dict)

    @property
    def near_hit_rate(self) -> float:
        """Near hits over near lookups (0.0 when there were none)."""
        return _rate(self.near_hits, self.near_misses)

    @property
    def l1_hit_rate(self) -> float:
        """L1 hits over L1 lookups at the coordinator."""
        return _rate(self.l1_hits, self.l1_misses)

    @property
    def l2_hit_rate(self) -> float:
        """L2 hits over L2 lookups at the coordinator."""
        return _rate(self.l2_hits, self.l2_misses)

    def as_dict(self) -> dict[str, Any]:
        """Every field plus the hit rates, as plain data."""
        out = asdict(self)
        out["near_hit_rate"] = self.near_hit_rate
        out["l1_hit_rate"] = self.l1_hit_rate
        out["l2_hit_rate"] = self.l2_hit_rate
        out["fleet"] = self.fleet.as_dict()
        return out


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the cache is whole.

    ``coordinator`` is ``"ok"`` or ``"unavailable"``; ``redis`` is ``"ok"``,
    ``"down"``, ``"disabled"`` or ``"unknown"`` (no coordinator to ask); ``mode`` is
    ``"ok"`` only when both are ok, else ``"degraded"``.
    """

    coordinator: str
    redis: str
    mode: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain data."""
        return asdict(self)
