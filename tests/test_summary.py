"""The human summaries of ``mtcache stats`` and ``mtcache health`` (mtcache/summary.py), on
plain data: units, rates with their lookups, and the reason when something is down."""

from __future__ import annotations

from mtcache.summary import format_bytes, format_duration, format_rate, render_health, render_stats


def test_units() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1536, 64 * 2**20, 3 * 2**30)] == [
        "0 B", "1,023 B", "1.5 KiB", "64.0 MiB", "3.0 GiB"]
    assert [format_duration(s) for s in (0.4, 59, 200, 7500, 300_000)] == [
        "0 s", "59 s", "3 min 20 s", "2 h 05 min", "3 d 11 h"]
    assert format_rate(92, 8) == "92.0 % of 100"
    assert format_rate(0, 0) == "-"


def test_render_stats() -> None:
    stats = {
        "near_hits": 0, "near_misses": 0, "mirror_hits": 900, "mirror_misses": 100, "l1_hits": 30,
        "l1_misses": 10, "l2_hits": 5, "l2_misses": 5, "promotions": 5, "coordinator_errors": 0,
        "coordinator": {"l1": {"size": 1500, "capacity": 2000, "bytes": 3 * 2**20, "max_bytes": 64 * 2**20,
                               "evictions": 7}, "leases_granted": 12, "coalesced": 88, "inflight_leases": 1,
                        "sets": 4, "deletes": 2, "clears": 0, "l2_backlog": 0, "l2_errors": 0,
                        "protocol_errors": 0, "connections": 9},
    }
    out = render_stats(stats, title="mtcache stats (s)")
    assert out.splitlines()[0] == "mtcache stats (s)"
    assert "  L1 mirror     90.0 % of 1,000" in out
    assert "  L1 socket     75.0 % of 40" in out
    assert "  L1 holds      1,500 of 2,000 entries, 3.0 MiB of 64.0 MiB   evictions 7" in out
    assert "callers who waited instead 88" in out
    assert render_stats({"coordinator": {}}).endswith("coordinator   not answering")


def test_render_health_says_why() -> None:
    down = {"coordinator": "ok", "redis": "down", "mode": "degraded",
            "details": {"pid": 7, "uptime": 3700, "namespace": "default", "redis_url": "redis://h:6379",
                        "redis_reason": "authentication refused (bad): check it", "stream_reader": "connecting",
                        "stream_reader_lag_ms": 0.0, "log": "/run/x.sock.log", "warnings": ["w1"]}}
    out = render_health(down, title="mtcache health (s)")
    assert out.splitlines() == [
        "mtcache health (s): degraded",
        "  coordinator   ok (pid 7, up 1 h 01 min, namespace 'default')",
        "  redis         down at redis://h:6379: authentication refused (bad): check it",
        "  stream        reader connecting, lag 0.0 ms",
        "  log           /run/x.sock.log",
        "  warning       w1",
    ]
    gone = {"coordinator": "unavailable", "redis": "unknown", "mode": "degraded",
            "details": {"socket": "/s", "reason": "refusing the coordinator socket served by pid 9 running as uid 1"}}
    assert render_health(gone).splitlines()[1] == (
        "  coordinator   unavailable: refusing the coordinator socket served by pid 9 running as uid 1")
