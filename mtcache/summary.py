"""Short human summaries of ``stats()`` and ``health()``, as ``mtcache stats`` and
``mtcache health`` print them by default (``--json`` prints everything instead).

Pure functions of the plain data (``Stats.as_dict()``, ``Health.as_dict()``): no
I/O, so they are tested on dicts and shared by every command that shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_bytes", "format_duration", "render_health", "render_stats"]


def format_bytes(n: float) -> str:
    """``n`` bytes with a binary unit: ``512 B``, ``1.5 KiB``, ``64.0 MiB``."""
    units = ("B", "KiB", "MiB", "GiB")
    value, i = float(n), 0
    while abs(value) >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{value:,.0f} B" if i == 0 else f"{value:,.1f} {units[i]}"


def format_duration(seconds: float) -> str:
    """``seconds`` as ``42 s``, ``3 min 20 s``, ``2 h 05 min`` or ``3 d 04 h``."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def render_stats(stats: Mapping[str, Any], *, title: str = "mtcache stats") -> str:
    """``title``, then the whole host's summary (:func:`mtcache.dashboard.render_stats`:
    reads per tier from every reporting worker, L1, leases, writes, hot keys)."""
    from mtcache.dashboard import render_stats as host_summary

    return f"{title}\n{host_summary(dict(stats))}"


def render_health(health: Mapping[str, Any], *, title: str = "mtcache health") -> str:
    """A few lines: the mode, the coordinator (pid, uptime, namespace, its log), Redis
    (URL, stream reader, lag, clock skew) and every warning; or, when no
    coordinator answers, why (the reason the client recorded). ``health`` is
    :meth:`mtcache.Health.as_dict`."""
    d: Mapping[str, Any] = health.get("details") or {}
    lines = [f"{title}: {health.get('mode', 'unknown')}"]
    if health.get("coordinator") != "ok":
        reason = d.get("reason") or "no coordinator answers"
        lines.append(f"  coordinator   {health.get('coordinator', 'unavailable')}: {reason}")
        if d.get("socket"):
            lines.append(f"  socket        {d['socket']}")
        return "\n".join(lines)
    uptime = d.get("uptime")
    up = f", up {format_duration(uptime)}" if isinstance(uptime, (int, float)) else ""
    lines.append(f"  coordinator   ok (pid {d.get('pid', '?')}{up}, namespace {d.get('namespace', '?')!r})")
    redis = health.get("redis", "unknown")
    if redis == "disabled":
        lines.append("  redis         disabled (L1 only)")
    else:
        where = f" at {d['redis_url']}" if d.get("redis_url") else ""
        reason = f": {d['redis_reason']}" if redis != "ok" and d.get("redis_reason") else ""
        lines.append(f"  redis         {redis}{where}{reason}")
        lag, skew = d.get("stream_reader_lag_ms"), d.get("clock_skew_ms")
        reader = f"  stream        reader {d.get('stream_reader', 'unknown')}"
        if isinstance(lag, (int, float)):
            reader += f", lag {lag:,.1f} ms"
        if isinstance(skew, (int, float)):
            reader += f"; clock skew against Redis {skew:,.1f} ms"
        lines.append(reader)
    if d.get("log"):
        lines.append(f"  log           {d['log']}")
    lines += [f"  warning       {warning}" for warning in d.get("warnings") or ()]
    return "\n".join(lines)
