"""What mtcache's statistics say to a person: the ``mtcache stats`` summary (plain text)
and the live view of ``mtcache top`` and the demo (rich).

Both read ``Stats.as_dict()`` (and ``Health.as_dict()`` for the live view): the whole
host's figures (``fleet``: every worker's near and mirror reads with the coordinator's
tiers), not the asking client's own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mtcache.stats import TIERS

__all__ = ["Sample", "fmt_bytes", "fmt_duration", "render_dashboard", "render_stats"]

_TIER_NAMES = {"near": "near", "mirror": "mirror", "l1": "L1", "l2": "L2", "compute": "computed",
               "waited": "waited", "miss": "miss"}
#: The latency histogram shown on each tier's row (near and mirror hits are not timed).
_TIER_LATENCY = {"l1": "l1", "l2": "l2", "compute": "compute"}
HOT_SHOWN = 5


def fmt_duration(seconds: float | None) -> str:
    """``6 µs``, ``1.2 ms``, ``50 ms``, ``1.20 s``, ``5m 12s``, ``1h 02m``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 0.1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_bytes(n: float) -> str:
    """``512 B``, ``12.3 KiB``, ``64.0 MiB``, ``1.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _coordinator(stats: dict[str, Any]) -> dict[str, Any]:
    c = stats.get("coordinator")
    return c if isinstance(c, dict) else {}


def _latency(fleet: dict[str, Any], name: str) -> dict[str, Any]:
    return (fleet.get("latency") or {}).get(name) or {}


def _tier_rows(stats: dict[str, Any], rates: dict[str, float] | None) -> list[list[str]]:
    """One row per tier: name, reads (or reads/s), share, hit rate, p50, p99."""
    fleet = stats.get("fleet") or {}
    answered = fleet.get("answered") or {}
    served = fleet.get("served") or {}
    hit_rates = fleet.get("hit_rates") or {}
    rows = []
    for tier in TIERS:
        lat = _latency(fleet, _TIER_LATENCY[tier]) if tier in _TIER_LATENCY else {}
        count = rates[tier] if rates is not None else answered.get(tier, 0)
        rows.append([
            _TIER_NAMES[tier], _n(count), _pct(served.get(tier, 0.0)),
            _pct(hit_rates[tier]) if tier in hit_rates else "",
            fmt_duration(lat.get("p50")) if lat else "", fmt_duration(lat.get("p99")) if lat else "",
        ])
    return rows


def _state_lines(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """Label and text of each line below the tiers (each short enough for 80 columns)."""
    c = _coordinator(stats)
    fleet = stats.get("fleet") or {}
    l1 = c.get("l1") or {}
    mirror = c.get("mirror") or {}
    trip = _latency(fleet, "roundtrip")
    write = _latency(fleet, "write")
    lease = _latency(fleet, "lease")
    reader = c.get("stream_reader")
    lag = c.get("stream_reader_lag_ms")
    redis = f"{c.get('redis', 'unknown')}, {_n(c.get('l2_errors', 0))} errors"
    if reader is not None:
        redis += f"; stream reader {reader}" + (f", lag {lag:.1f} ms" if isinstance(lag, (int, float)) else "")
    lines = [
        ("Redis", redis),
        ("leases", f"{_n(c.get('inflight_leases', 0))} in flight, {_n(c.get('lease_waiters', 0))} waiting; "
                   f"{_n(c.get('coalesced', 0))} waited so far (p99 {fmt_duration(lease.get('p99'))})"),
        ("L1", f"{_n(l1.get('size', 0))} / {_n(l1.get('capacity', 0))} entries, {fmt_bytes(l1.get('bytes', 0))} / "
               f"{fmt_bytes(l1.get('max_bytes', 0))}, {_n(l1.get('evictions', 0))} evicted"),
        ("mirror", f"{_n(mirror.get('entries', 0))} entries, {fmt_bytes(mirror.get('arena_used', 0))} / "
                   f"{fmt_bytes(mirror.get('arena_size', 0))}" if mirror else "none"),
        ("writes", f"{_n(c.get('writes_in_flight', 0))} in flight (p50 {fmt_duration(write.get('p50'))}, p99 "
                   f"{fmt_duration(write.get('p99'))}); backlog {_n(c.get('l2_backlog', 0))} "
                   f"({fmt_bytes(c.get('l2_backlog_bytes', 0))})"),
        ("round trip", f"p50 {fmt_duration(trip.get('p50'))}, p99 {fmt_duration(trip.get('p99'))} "
                       f"(workers' socket requests)"),
    ]
    computes = fleet.get("computes", 0)
    if computes:
        spent = fleet.get("compute_seconds", 0.0)
        lines.append(("source", f"{_n(computes)} computed in {fmt_duration(spent)}; ≈ "
                                f"{fmt_duration(fleet.get('source_seconds_saved', 0.0))} saved "
                                f"(mean {fmt_duration(spent / computes)})"))
    return lines


def _hit_rate(stats: dict[str, Any]) -> float:
    fleet = stats.get("fleet") or {}
    answered = fleet.get("answered") or {}
    reads = fleet.get("reads", 0)
    return 1 - (answered.get("compute", 0) + answered.get("miss", 0)) / reads if reads else 0.0


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                  strict=True)))
            .rstrip() for row in rows]


def render_stats(stats: dict[str, Any]) -> str:
    """The human ``mtcache stats`` summary of ``stats`` (``Stats.as_dict()``): the whole
    host's reads per tier with shares, hit rates and latencies, then leases, L1, mirror,
    writes, the time the source was spared, the hottest keys, and each worker when the
    statistics carry them (``stats(workers=True)``)."""
    c = _coordinator(stats)
    if not c:
        return "no coordinator answered"
    fleet = stats.get("fleet") or {}
    out = [f"whole host (clients reporting: {fleet.get('workers', 0)}); coordinator up {fmt_duration(c.get('uptime'))}",
           f"reads {_n(fleet.get('reads', 0))}, cache hit rate {_pct(_hit_rate(stats))}", ""]
    out += _columns([["tier", "reads", "share", "hit rate", "p50", "p99"], *_tier_rows(stats, None)])
    out.append("")
    width = max(len(label) for label, _ in _state_lines(stats))
    out += [f"{label.ljust(width)}  {text}" for label, text in _state_lines(stats)]
    hot = stats.get("hot_keys") or []
    if hot:
        out.append("")
        out.append("hottest keys (requests reaching the coordinator lately)")
        out += _columns([[f"  {h['key']}", _n(h["requests"])] for h in hot[:HOT_SHOWN]])
    workers = fleet.get("per_worker") or []
    if workers:
        out.append("")
        rows = [["pid", "near hit rate", "near hits", "mirror hits", "requests", "computes", "reported"]]
        for w in workers:
            lookups = w["near_hits"] + w["near_misses"]
            rows.append([str(w["pid"]), _pct(w["near_hits"] / lookups if lookups else 0.0), _n(w["near_hits"]),
                         _n(w["mirror_hits"]), _n(w["requests"]), _n(w["computes"]),
                         f"{fmt_duration(w['age'])} ago"])
        out += _columns(rows)
    return "\n".join(out)


@dataclass(frozen=True)
class Sample:
    """One look at a coordinator: ``Stats.as_dict()``, ``Health.as_dict()``, and when
    (``time.monotonic()``)."""

    at: float
    stats: dict[str, Any]
    health: dict[str, Any] = field(default_factory=dict)


def take_sample(client: Any) -> Sample:
    """One look at the coordinator of ``client`` (a sync :class:`~mtcache.Client`)."""
    stats = client.stats().as_dict()
    health = client.health().as_dict()
    return Sample(time.monotonic(), stats, health)


def _rates(current: Sample, previous: Sample | None) -> dict[str, float] | None:
    if previous is None or current.at <= previous.at:
        return None
    now = (current.stats.get("fleet") or {}).get("answered") or {}
    before = (previous.stats.get("fleet") or {}).get("answered") or {}
    dt = current.at - previous.at
    return {tier: max(0, now.get(tier, 0) - before.get(tier, 0)) / dt for tier in TIERS}


def _headline(sample: Sample) -> str:
    details = sample.health.get("details") or {}
    c = _coordinator(sample.stats)
    fleet = sample.stats.get("fleet") or {}
    return (f"namespace {details.get('namespace', '?')} · pid {details.get('pid', '?')} · up "
            f"{fmt_duration(c.get('uptime'))} · mode {sample.health.get('mode', '?')} · "
            f"clients reporting: {fleet.get('workers', 0)}")


def render_dashboard(
    current: Sample,
    previous: Sample | None = None,
    *,
    title: str = "mtcache top",
    events: Sequence[str] = (),
    extras: Sequence[tuple[str, str]] = (),
) -> Any:
    """The live view (a rich renderable): the whole host's reads per tier (per second over
    the time since ``previous``; totals without it), shares, hit rates and latencies; leases
    in flight and waiters; Redis and the stream reader with its lag; L1 and mirror use; the
    writes in flight and the backlog; the time the source was spared; the hottest keys.
    ``extras`` adds labelled lines (the demo's own figures), ``events`` a list of what
    happened (the demo's stampede)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if not _coordinator(current.stats):
        return Group(Text(title, style="bold"), Text("no coordinator answers", style="bold red"))
    rates = _rates(current, previous)
    tiers = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    tiers.add_column("tier")
    tiers.add_column("reads/s" if rates is not None else "reads", justify="right")
    for name in ("share", "hit rate", "p50", "p99"):
        tiers.add_column(name, justify="right")
    for row in _tier_rows(current.stats, rates):
        tiers.add_row(*row)
    fleet = current.stats.get("fleet") or {}
    tiers.caption = f"{_n(fleet.get('reads', 0))} reads, cache hit rate {_pct(_hit_rate(current.stats))}"
    state = Table.grid(padding=(0, 2))
    state.add_column(style="bold")
    state.add_column()
    for label, text in [*_state_lines(current.stats), *extras]:
        state.add_row(label, text)
    parts: list[Any] = [Text(title, style="bold"), Text(_headline(current)), tiers, state]
    hot = current.stats.get("hot_keys") or []
    if hot:
        keys = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        keys.add_column("hottest keys (at the coordinator, lately)", overflow="ellipsis", max_width=56)
        keys.add_column("requests", justify="right")
        for h in hot[:HOT_SHOWN]:
            keys.add_row(h["key"], _n(h["requests"]))
        parts.append(keys)
    if events:
        parts.append(Text("events", style="bold"))
        parts.extend(Text(f"  {event}") for event in events)
    return Group(*parts)
