"""Host-wide statistics against live coordinators: workers' reports (and the coordinator
ignoring malformed ones), the Prometheus endpoint scraped and parsed, the OpenTelemetry
instruments, and ``mtcache top`` in a pseudo-terminal."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mtcache import AsyncClient, Client
from mtcache.dashboard import Sample, render_dashboard
from mtcache.metrics import METRICS
from mtcache.protocol import PROTOCOL_VERSION, FrameDecoder, Op, Status, encode_frame
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer, free_port
from tests.terminal import run_in_pty

DEADLINE = 30.0


def _poll(probe: Client, check: Any, timeout: float = DEADLINE) -> Any:
    """``probe.stats()`` once ``check(stats)`` holds (fails the test after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = probe.stats()
        if check(stats):
            return stats
        assert time.monotonic() < deadline, f"not within {timeout}s: {stats.fleet}"
        time.sleep(0.05)  # poll interval of a deadline-bounded wait


# -- reports ---------------------------------------------------------------------------------


def test_near_hits_of_an_otherwise_idle_worker_reach_the_host_figures(
    coordinator_no_redis: CoordinatorProcess,
) -> None:
    # the worker makes one request, then serves 200 reads from its near copy and asks nothing more:
    # its report timer sends them (no request carries them)
    with Client(coordinator_no_redis.socket_path, spawn=False) as worker:
        worker.set("hot", {"v": 1})
        for _ in range(200):
            assert worker.get("hot") == {"v": 1}
        with Client(coordinator_no_redis.socket_path, spawn=False, near_capacity=0) as probe:
            stats = _poll(probe, lambda s: s.fleet.near_hits >= 200)
            assert stats.near_hits == 0  # the probe's own counters stay its own
            assert stats.fleet.workers == 2
            assert stats.fleet.served["near"] > 0.9
            assert stats.coordinator["connections"] == 2  # the timer borrowed the worker's connection


async def test_the_async_client_reports_too(coordinator_no_redis: CoordinatorProcess) -> None:
    async with AsyncClient(coordinator_no_redis.socket_path, spawn=False) as worker:
        await worker.set("hot", 1)
        for _ in range(50):
            assert await worker.get("hot") == 1
        with Client(coordinator_no_redis.socket_path, spawn=False, near_capacity=0) as probe:
            deadline = time.monotonic() + DEADLINE
            while probe.stats().fleet.near_hits < 50:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)  # poll interval of a deadline-bounded wait (the loop runs the timer)
        assert (await worker.stats(workers=True)).fleet.per_worker[0].near_hits == 50


def test_closed_clients_stay_counted(coordinator_no_redis: CoordinatorProcess) -> None:
    for n in range(3):
        with Client(coordinator_no_redis.socket_path, spawn=False) as worker:
            worker.get_or_compute(f"k{n}", lambda: 1)
            worker.get(f"k{n}")
    with Client(coordinator_no_redis.socket_path, spawn=False) as probe:
        stats = probe.stats(workers=True)
        assert stats.fleet.computes == 3 and stats.fleet.near_hits == 3
        assert stats.fleet.workers == 1 and len(stats.fleet.per_worker) == 1  # only the probe reports now
        assert stats.fleet.latency["compute"].count == 3
        assert {key.key for key in stats.hot_keys} == {"k0", "k1", "k2"}


def test_a_new_coordinator_counts_from_its_start(short_tmp: Path) -> None:
    proc = CoordinatorProcess(short_tmp / "c.sock", redis_url=None)
    proc.start()
    try:
        with Client(proc.socket_path, spawn=False) as worker:
            worker.set("k", 1)
            for _ in range(10):
                worker.get("k")
            assert worker.stats().fleet.near_hits == 10
            proc.stop()
            proc.start()
            deadline = time.monotonic() + DEADLINE
            while not worker.stats().coordinator:  # reconnects after its back-off
                assert time.monotonic() < deadline
                time.sleep(0.05)  # poll interval of a deadline-bounded wait
            worker.set("k", 2)
            for _ in range(3):
                assert worker.get("k") == 2
            assert worker.stats().fleet.near_hits == 3
            assert worker.stats().near_hits == 13  # the client's own counters go on
    finally:
        proc.stop()


def _raw_session(path: str) -> tuple[socket.socket, FrameDecoder]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(encode_frame([Op.HELLO, 1, PROTOCOL_VERSION, "default", os.getpid()]))
    decoder = FrameDecoder()
    assert _reply(sock, decoder)[1] == Status.OK
    return sock, decoder


def _reply(sock: socket.socket, decoder: FrameDecoder) -> list[Any]:
    while True:
        data = sock.recv(65536)
        assert data, "the coordinator closed the connection"
        replies = decoder.feed(data)
        if replies:
            return replies[0]


MALFORMED_REPORTS: list[list[Any]] = [
    [Op.REPORT, 2],
    [Op.REPORT, 3, "junk"],
    [Op.REPORT, 4, {"id": b"12345678", "counters": {"near_hits": -5}}],
    [Op.REPORT, 5, {"id": b"12345678", "counters": {"near_hits": "many"}}],
    [Op.REPORT, 6, {"id": b"1", "counters": {}}],
    [Op.REPORT, 7, {"id": b"12345678", "counters": {}, "latency": {"compute": [[10**6, 1]]}}],
    [Op.REPORT, 8, {"id": b"12345678", "counters": {}, "latency": {"compute": [[1, 2, 3]] * 5000}}],
    [Op.REPORT, 9, {"id": b"12345678", "counters": [1, 2]}, {"extra": True}],
    [Op.REPORT, 10, None],
]


def test_malformed_reports_are_ignored_and_the_connection_lives(coordinator_no_redis: CoordinatorProcess) -> None:
    sock, decoder = _raw_session(coordinator_no_redis.socket_path)
    try:
        for message in MALFORMED_REPORTS:
            sock.sendall(encode_frame(message))
        # a good report on the same connection still counts
        sock.sendall(encode_frame([Op.REPORT, 11, {"id": b"goodgood", "counters": {"near_hits": 7}}]))
        sock.sendall(encode_frame([Op.STATS, 12]))
        reply = _reply(sock, decoder)
        assert reply[:2] == [12, Status.OK]  # no reply to any report: the next reply is the STATS one
        stats = reply[2]
        assert stats["reports"] == {"accepted": 1, "ignored": len(MALFORMED_REPORTS), "refused": 0}
        assert stats["fleet"]["near_hits"] == 7 and stats["protocol_errors"] == 0
    finally:
        sock.close()
    with Client(coordinator_no_redis.socket_path, spawn=False) as client:
        assert client.set("still", "serving") and client.get("still") == "serving"


def test_an_inspecting_client_does_not_report(coordinator_no_redis: CoordinatorProcess) -> None:
    from mtcache.cli import main

    with Client(coordinator_no_redis.socket_path, spawn=False) as client:
        client.set("k", 1)
        assert main(["stats", "--socket", coordinator_no_redis.socket_path]) == 0
        assert client.stats().fleet.workers == 1  # this client; not the command's


# -- Prometheus ------------------------------------------------------------------------------------


def _scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], name: str, suffix: str = "", **labels: str) -> float:
    family = families[name]
    found = [s.value for s in family.samples if s.name == name + suffix
             and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, family.samples)
    return float(found[0])


def test_prometheus_scrape_of_a_live_coordinator(short_tmp: Path, redis_server: RedisServer) -> None:
    port = free_port()
    proc = CoordinatorProcess(short_tmp / "c.sock", redis_url=redis_server.url, namespace="shop",
                              args=("--metrics", f"127.0.0.1:{port}"))
    proc.start()
    try:
        with Client(proc.socket_path, spawn=False, namespace="shop") as worker:
            for n in range(5):
                worker.get_or_compute(f"k{n}", lambda: "v")
            for _ in range(20):
                worker.get("k0")
            worker.set("written", 1)
            stats = worker.stats()
        families = _scrape(port)
        # every metric defined is exported (this coordinator has Redis, so the Redis gauges too),
        # every sample carries the namespace
        for metric in METRICS:
            name = metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name
            assert name in families, name
            assert families[name].type == metric.kind
            assert families[name].unit == "" or metric.unit
            assert all(sample.labels["namespace"] == "shop" for sample in families[name].samples)
        assert _value(families, "mtcache_hits", "_total", tier="near") == stats.fleet.near_hits >= 20
        assert _value(families, "mtcache_misses", "_total", tier="l1") == stats.fleet.l1_misses >= 5
        assert _value(families, "mtcache_computes", "_total") == 5
        assert _value(families, "mtcache_writes", "_total", op="set") == 1
        assert _value(families, "mtcache_writes", "_total", op="fill") == 5
        assert _value(families, "mtcache_redis_up") == 1
        assert _value(families, "mtcache_l1_entries") == 6
        assert _value(families, "mtcache_l1_max_size_bytes") == 64 * 1024 * 1024
        # histograms: cumulative buckets ending in +Inf at the count, with a sum
        leases = [s for s in families["mtcache_request_duration_seconds"].samples
                  if s.labels.get("tier") == "lease" and s.name.endswith("_bucket")]
        counts = [s.value for s in leases]
        assert counts == sorted(counts) and leases[-1].labels["le"] == "+Inf" and counts[-1] == 5
        assert _value(families, "mtcache_request_duration_seconds", "_count", tier="lease") == 5
        assert _value(families, "mtcache_compute_duration_seconds", "_count") == 5
        assert _value(families, "mtcache_compute_duration_seconds", "_sum") > 0
    finally:
        assert proc.stop() == 0  # the metrics thread does not keep it from stopping


def test_a_metrics_port_in_use_refuses_to_start(short_tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sock = short_tmp / "c.sock"
        run = subprocess.run(
            [sys.executable, "-m", "mtcache.coordinator", "--socket", str(sock), "--no-redis",
             "--metrics", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60, check=False,
        )
    assert run.returncode == 2, run.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in run.stderr
    assert not sock.exists()


# -- OpenTelemetry -----------------------------------------------------------------------------------


def test_opentelemetry_instruments_read_the_same_snapshot(coordinator_no_redis: CoordinatorProcess) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from mtcache.otel import instrument

    with Client(coordinator_no_redis.socket_path, spawn=False) as worker:
        worker.get_or_compute("k", lambda: 1)
        for _ in range(4):
            worker.get("k")
        snapshot = worker.stats().coordinator
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    calls = []

    def source() -> dict[str, Any]:
        calls.append(1)
        return snapshot

    instrument(source, namespace="default", meter_provider=provider)
    data = reader.get_metrics_data()
    assert data is not None
    points = {(metric.name, tuple(sorted(point.attributes.items()))): point.value
              for resource in data.resource_metrics for scope in resource.scope_metrics
              for metric in scope.metrics for point in metric.data.data_points}
    near = ("mtcache_hits", (("namespace", "default"), ("tier", "near")))
    assert points[near] == snapshot["fleet"]["near_hits"] == 4
    assert points[("mtcache_computes", (("namespace", "default"),))] == 1
    assert points[("mtcache_l1_entries", (("namespace", "default"),))] == 1
    assert points[("mtcache_compute_duration_seconds_count", (("namespace", "default"),))] == 1
    assert ("mtcache_compute_duration_seconds", (("namespace", "default"), ("quantile", "0.99"))) in points
    assert len(calls) == 1  # one snapshot for every instrument of a collection
    provider.shutdown()


def test_the_coordinator_starts_with_otel(short_tmp: Path) -> None:
    proc = CoordinatorProcess(short_tmp / "c.sock", redis_url=None, args=("--otel",))
    proc.start()
    try:
        with Client(proc.socket_path, spawn=False) as client:
            assert client.set("k", 1)
    finally:
        assert proc.stop() == 0


# -- mtcache top -----------------------------------------------------------------------------------


def test_top_in_a_terminal(coordinator: CoordinatorProcess) -> None:
    with Client(coordinator.socket_path, spawn=False) as worker:
        for _ in range(3):
            worker.get_or_compute("quote:ACME", lambda: 12.5)  # computed once, then near hits
            assert worker.get("absent") is None  # each one asks the coordinator: its hottest key
        worker.set("written", 1)
        worker.stats()  # its report is in
        mtcache = Path(sys.executable).parent / "mtcache"
        code, text = run_in_pty([str(mtcache), "top", "--iterations", "2", "--interval", "0.2",
                                  "--socket", coordinator.socket_path])
    assert code == 0, text
    assert "mtcache top" in text
    assert re.search(r"namespace default · pid \d+ · up .* · mode ok · clients reporting: 1", text), text
    assert re.search(r"tier\s+reads/s\s+share\s+hit rate\s+p50\s+p99", text)
    # 6 reads: 2 near hits (of 6 near lookups), 1 computed, 3 misses (nothing read meanwhile: 0 per second)
    assert re.search(r"near\s+0\s+33\.3 %\s+33\.3 %", text), text
    assert re.search(r"computed\s+0\s+16\.7 %", text)
    assert re.search(r"miss\s+0\s+50\.0 %", text)
    assert re.search(r"Redis\s+ok, 0 errors; stream reader connected", text)
    assert re.search(r"leases\s+0 in flight, 0 waiting", text)
    assert re.search(r"L1\s+2 / 2,000 entries", text)
    assert re.search(r"hottest keys.*\n.*\n\s*absent\s+3", text), text


def test_top_once_without_a_coordinator(short_tmp: Path) -> None:
    mtcache = Path(sys.executable).parent / "mtcache"
    code, text = run_in_pty([str(mtcache), "top", "--once", "--interval", "0.1",
                              "--socket", str(short_tmp / "none.sock")])
    assert code == 1
    assert "no coordinator answers" in text


def test_the_live_view_shows_reads_per_second() -> None:
    from rich.console import Console

    def stats(near: int, computes: int) -> dict[str, Any]:
        fleet = {"workers": 2, "reads": near + computes, "answered": {"near": near, "compute": computes},
                 "served": {"near": near / (near + computes), "compute": computes / (near + computes)},
                 "hit_rates": {"near": 1.0}, "latency": {}}
        return {"coordinator": {"uptime": 5.0, "l1": {}, "inflight_leases": 2, "lease_waiters": 7},
                "fleet": fleet, "hot_keys": [{"key": "quote:ACME", "requests": 42, "error": 0}]}

    console = Console(record=True, width=100)
    console.print(render_dashboard(Sample(12.0, stats(3000, 20)), Sample(10.0, stats(1000, 10)),
                                   events=["8.0 s  stampede"], extras=[("demo", "4 workers")]))
    text = console.export_text()
    assert re.search(r"near\s+1,000\s+99\.3 %\s+100\.0 %", text), text  # 2,000 near hits in 2 s
    assert re.search(r"computed\s+5\s+0\.7 %", text)
    assert re.search(r"leases\s+2 in flight, 7 waiting", text)
    assert re.search(r"quote:ACME\s+42", text)
    assert "8.0 s  stampede" in text and re.search(r"demo\s+4 workers", text)
