"""The human summaries of ``mtcache stats`` and ``mtcache health`` (mtcache/summary.py), on
plain data: units, rates with their lookups, and the reason when something is down."""

from __future__ import annotations

from mtcache.summary import format_bytes, format_duration, render_health, render_stats


def test_units() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1536, 64 * 2**20, 3 * 2**30)] == [
        "0 B", "1,023 B", "1.5 KiB", "64.0 MiB", "3.0 GiB"]
    assert [format_duration(s) for s in (0.4, 59, 200, 7500, 300_000)] == [
        "0 s", "59 s", "3 min 20 s", "2 h 05 min", "3 d 11 h"]


def test_render_stats_is_the_whole_hosts_summary_under_a_title() -> None:
    assert render_stats({"coordinator": {}}, title="mtcache stats (s)") == "mtcache stats (s)\nno coordinator answered"
    out = render_stats({"coordinator": {"uptime": 5}, "fleet": {"workers": 3, "reads": 10}}, title="t")
    assert out.splitlines()[0] == "t"
    assert "whole host (clients reporting: 3)" in out


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
