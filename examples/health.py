"""Health and statistics of a running coordinator, for people.

    python examples/health.py [--socket PATH]

With ``--socket`` it reads the health and statistics of the coordinator serving
there and changes nothing (no key is written, no coordinator started). Without,
it starts its own coordinator, sends it a little traffic so the counters move,
and reports on that. Exit status 0 when the coordinator answers (even degraded,
without Redis), 1 when it does not.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from _support import Target, parser, run

from mtcache import Client, Health

#: The coordinator's counters in groups, each with its label; any other counter is listed under "other".
GROUPS: dict[str, tuple[tuple[str, str], ...]] = {
    "L2 (Redis)": (("l2_hits", "hits"), ("l2_misses", "misses"), ("promotions", "promoted to L1"),
                   ("l2_errors", "errors"), ("l2_skipped", "calls skipped")),
    "writes": (("sets", "sets"), ("deletes", "deletes"), ("clears", "clears")),
    "leases": (("leases_granted", "granted"), ("coalesced", "waiters served"), ("lease_handovers", "handed over"),
               ("leases_expired", "expired"), ("inflight_leases", "in flight"), ("lease_timeouts", "wait timeouts"),
               ("compute_errors", "compute errors")),
    "across hosts": (("redis_leases_taken", "Redis leases taken"), ("cross_host_lease_waits", "waits on other hosts"),
                     ("invalidations_sent", "invalidations sent"), ("invalidations_received", "received"),
                     ("invalidations_applied", "applied"), ("invalidation_gaps", "gaps"),
                     ("fill_notices_received", "fill notices"), ("staleness_drops", "L1 drops after outages")),
    "stream reader": (("stream_reader", "state"), ("stream_reader_lag_ms", "lag ms")),
    "fills": (("fills", "received"), ("fills_discarded", "discarded (a newer write won)")),
    "connections": (("connections", "open"), ("refused", "refused"), ("protocol_errors", "protocol errors")),
}


def size(n: int) -> str:
    """Bytes for people: ``132 B``, ``1.5 KiB``, ``64.0 MiB``."""
    if n < 1024:
        return f"{n:,} B"
    if n < 1024 * 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n / (1024 * 1024):,.1f} MiB"


def pairs(data: dict[str, Any], names: Iterable[tuple[str, str]]) -> str:
    """``label value, label value`` for the counters present in ``data``."""
    shown = [f"{label} {value:,}" if isinstance(value, (int, float)) else f"{label} {value}"
             for name, label in names if (value := data.get(name)) is not None]
    return ", ".join(shown) or "-"


def report(socket_path: str, health: Health, coordinator: dict[str, Any]) -> list[str]:
    """The lines to print for one coordinator's health and counters."""
    d = health.details
    lines = [f"coordinator on {socket_path}", "health"]
    lines.append(f"  {'coordinator':<13} {health.coordinator}"
                 + (f" (pid {d['pid']}, up {d['uptime']:,.1f} s, namespace {d['namespace']!r})" if "pid" in d else ""))
    lines.append(f"  {'redis':<13} {health.redis}" + (f" ({d['redis_url']})" if d.get("redis_url") else ""))
    lines.append(f"  {'mode':<13} {health.mode}"
                 + ("" if health.mode == "ok" else "  (serving from L1; computations still run)"))
    if not coordinator:
        return lines
    l1 = coordinator.get("l1", {})
    lookups = l1.get("hits", 0) + l1.get("misses", 0)
    rate = f" ({l1.get('hits', 0) / lookups:.1%} hits)" if lookups else ""
    lines.append("statistics")
    lines.append(f"  {'L1':<13} {l1.get('size', 0):,} of {l1.get('capacity', 0):,} entries, "
                 f"{size(l1.get('bytes', 0))} of {size(l1.get('max_bytes', 0))}")
    l1_counters = (("hits", "hits"), ("misses", "misses"))
    lines.append(f"  {'':<13} {pairs(l1, l1_counters)}{rate}, {pairs(l1, (('evictions', 'evictions'),))}, "
                 f"{pairs(l1, (('expirations', 'expirations'),))}")
    listed = {"l1", "l2", "stream_last_id"}
    for group, names in GROUPS.items():
        listed.update(name for name, _ in names)
        if any(name in coordinator for name, _ in names):
            lines.append(f"  {group:<13} {pairs(coordinator, names)}")
    other = sorted(name for name, value in coordinator.items() if name not in listed and not isinstance(value, dict))
    if other:
        lines.append(f"  {'other':<13} {pairs(coordinator, ((name, name) for name in other))}")
    return lines


def traffic(socket_path: str) -> None:
    """A little of everything, so the counters of a fresh coordinator move."""
    with Client(socket_path, spawn=False) as writer, Client(socket_path, spawn=False, near_capacity=0) as reader:
        for n in range(5):
            writer.set(f"example:health:{n}", {"n": n}, ttl=60)
        for n in range(8):  # no near cache in this client: every read reaches the coordinator
            reader.get(f"example:health:{n}")
        for _ in range(3):
            reader.get_or_compute("example:health:computed", lambda: "value", ttl=60)
        writer.delete("example:health:0")


def main(target: Target, args: argparse.Namespace) -> int:
    if target.started:
        traffic(target.socket_path)
    with Client(target.socket_path, spawn=False) as cache:
        health = cache.health()
        stats = cache.stats()
    print("\n".join(report(target.socket_path, health, stats.coordinator)))
    return 0 if health.coordinator == "ok" else 1


if __name__ == "__main__":
    run(main, parser(__doc__))
