"""Statistics and health snapshots (frozen dataclasses, not live dicts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Health", "Stats"]


def _rate(hits: int, misses: int) -> float:
    total = hits + misses
    return hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters of one client (near tier, shared-memory mirror reads, computes in
    this process) and of its coordinator (L1, L2, leases, mirror writes), each event
    counted once. ``l1_hits`` counts hits served through the socket; a hit in the
    shared-memory mirror is an L1 hit too, counted in ``mirror_hits``.

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
