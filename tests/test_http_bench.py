"""bench/http.py's apps serve what the benchmark assumes: every variant answers the
quote's JSON, and through mtcache a cold symbol asked by many callers at once costs one
call of the price service (no wrk, no timings: the app factories, called in-process).
Its driver sums a server's CPU over its process group, takes the CPU ratio within each
round, and reports it (synthetic rows; a real process group)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bench.httpbench import run
from bench.httpbench.apps import ASYNC_ONLY, CONSTANT_QUOTE, VARIANTS, make_asgi, make_wsgi
from bench.httpbench.run import (
    APP_PASSES,
    WORKERS,
    _get,
    app_cpu_per_request,
    cpu_used,
    group_pids,
    report,
    running_server,
    summarize,
    user_system_by_pid,
    user_system_used,
    worker_shares,
)
from tests.coordinator_proc import CoordinatorProcess

CALLERS = 8
#: variants that promise one computation of a cold key however many callers ask at once
ONCE = {"mtcache", "mtcache_eager"}


def _calls(log: Path) -> list[str]:
    return log.read_text().split()[::2] if log.exists() else []


def _check_body(variant: str, symbol: str, body: bytes) -> None:
    data = json.loads(body)
    assert data["symbol"] == symbol
    if variant == "constant":
        assert data["quote"] == CONSTANT_QUOTE
        return
    assert data["quote"]["symbol"] == symbol
    assert isinstance(data["quote"]["price"], float)


def test_wsgi_variants_serve_quotes(coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    # one coordinator and Redis for all (a fixture each would triple the test's time): each
    # variant asks for a symbol of its own
    for variant in VARIANTS:
        if variant not in ASYNC_ONLY:
            _check_wsgi(variant, f"COLD-{variant}", coordinator, tmp_path / f"{variant}.log")


def _check_wsgi(variant: str, symbol: str, coordinator: CoordinatorProcess, log: Path) -> None:
    app = make_wsgi(variant, socket_path=coordinator.socket_path, redis_url=coordinator.redis_url, call_log=str(log))
    barrier = threading.Barrier(CALLERS)
    answers: list[tuple[str, bytes]] = []

    def call() -> None:
        status: list[str] = []
        barrier.wait()
        body = b"".join(app({"PATH_INFO": f"/quote/{symbol}", "REQUEST_METHOD": "GET"},
                            lambda s, headers: status.append(s)))
        answers.append((status[0], body))

    try:
        threads = [threading.Thread(target=call) for _ in range(CALLERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        not_found: list[str] = []
        assert app({"PATH_INFO": "/elsewhere"}, lambda s, h: not_found.append(s)) == [b'{"error":"not found"}']
    finally:
        app.close()
    assert len(answers) == CALLERS
    for status, body in answers:
        assert status == "200 OK"
        _check_body(variant, symbol, body)
    assert not_found == ["404 Not Found"]
    calls = _calls(log)
    assert set(calls) <= {symbol}
    if variant == "constant":
        assert calls == []
    elif variant in ONCE:
        assert calls == [symbol], variant
    else:
        assert 1 <= len(calls) <= CALLERS, variant


# cashews' close() calls redis-py's deprecated close()
@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")
async def test_asgi_variants_serve_quotes(coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    for variant in VARIANTS:
        if variant == "cashews" and importlib.util.find_spec("cashews") is None:
            continue  # in the bench extra, not the test extra CI installs
        await _check_asgi(variant, f"COLD-{variant}", coordinator, tmp_path / f"{variant}.log")


async def _check_asgi(variant: str, symbol: str, coordinator: CoordinatorProcess, log: Path) -> None:
    app = make_asgi(variant, socket_path=coordinator.socket_path, redis_url=coordinator.redis_url, call_log=str(log))

    async def call(path: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": path}, receive, send)
        return sent[0]["status"], sent[1]["body"]

    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replies: list[str] = []

    async def send_lifespan(message: dict[str, Any]) -> None:
        replies.append(message["type"])

    life = asyncio.create_task(app({"type": "lifespan"}, lifespan.get, send_lifespan))
    await lifespan.put({"type": "lifespan.startup"})
    try:
        answers = await asyncio.gather(*(call(f"/quote/{symbol}") for _ in range(CALLERS)))
        missing = await call("/elsewhere")
    finally:
        await lifespan.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(life, 30)
    assert replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    for status, body in answers:
        assert status == 200
        _check_body(variant, symbol, body)
    assert missing[0] == 404
    calls = _calls(log)
    assert set(calls) <= {symbol}
    if variant == "constant":
        assert calls == []
    elif variant in ONCE or variant == "cashews":
        assert calls == [symbol], variant
    else:
        assert 1 <= len(calls) <= CALLERS, variant


def test_bad_variants_are_refused() -> None:
    with pytest.raises(ValueError, match="no synchronous API"):
        make_wsgi("cashews", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="unknown variant 'memcached'"):
        make_asgi("memcached")
    with pytest.raises(ValueError, match="needs a coordinator socket path"):
        make_wsgi("mtcache")
    with pytest.raises(ValueError, match="needs a Redis URL"):
        make_asgi("redis_py")


def _row(round_no: int, variant: str, cpu: dict[str, float] | None,
         split: dict[str, float] | None = None) -> dict[str, Any]:
    """A measure_one row with made-up figures; ``cpu``: its CPU µs per request by part (None: a row
    from before the CPU was measured, without the fields); ``split``: the server's user and system µs per
    request (None: a row from before they were measured)."""
    row: dict[str, Any] = {
        "round": round_no, "server": "uvicorn", "variant": variant, "rps": 1000.0, "requests": 15_000,
        "p50_ms": 2.0, "p75_ms": 3.0, "p90_ms": 4.0, "p99_ms": 8.0, "max_ms": 20.0, "errors": {"timeout": 0},
        "source_calls": 0, "keys_computed": 0, "hit_rate": None, "calls_per_key_per_ttl": None,
        "load_1min": [1.0, 1.5], "wrk_output": "",
    }
    if cpu is not None:
        row["cpu_us_per_request"] = cpu
        row["cpu_us_per_request_total"] = sum(v for k, v in cpu.items() if k != "wrk")
    if split is not None:
        row["server_user_system_us"] = split
    return row


#: two rounds in which mtcache costs 1.2x and 1.5x the ceiling's CPU per request: within each round
#: the mean ratio is 1.35x; the ratio of the means over rounds (105 / 75) would be 1.4x
CPU_RUNS = [
    _row(1, "constant", {"server": 45.0, "redis-server": 5.0, "wrk": 20.0}),
    _row(1, "mtcache", {"server": 50.0, "coordinator": 2.0, "redis-server": 8.0, "wrk": 30.0},
         {"user": 30.0, "system": 20.0}),
    _row(2, "mtcache", {"server": 130.0, "coordinator": 4.0, "redis-server": 16.0, "wrk": 50.0},
         {"user": 90.0, "system": 40.0}),
    _row(2, "constant", {"server": 90.0, "redis-server": 10.0, "wrk": 40.0}),
]


def _results(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "date": "2026-12-01 12:00 UTC", "machine": "x86_64, 2 CPUs", "cpus": 2, "command": "python bench/http.py",
        "versions": {"Python": "3.11.7"},
        "config": {"seconds": 15.0, "rounds": 2, "connections": 32, "threads": 2, "symbols": 200, "zipf": 1.0,
                   "ttl": 10.0, "service_ms": 20.0, "workers": 4, "eager_refresh": 0.8},
        "load": {"min": 1.0, "max": 1.5}, "runs": runs, "summary": summarize(runs),
    }


def test_summary_takes_the_cpu_ratio_within_each_round() -> None:
    summary = summarize(CPU_RUNS)["uvicorn"]
    mtcache, constant = summary["mtcache"], summary["constant"]
    assert mtcache["cpu_us_per_request"] == pytest.approx(
        {"server": 90.0, "coordinator": 3.0, "redis-server": 12.0, "wrk": 40.0})
    assert mtcache["cpu_us_per_request_total"] == pytest.approx(105.0)
    assert mtcache["server_user_system_us"] == pytest.approx({"user": 60.0, "system": 30.0})
    assert "server_user_system_us" not in constant  # its rows have no split
    assert mtcache["ratios"]["cpu_vs_ceiling"] == pytest.approx({"mean": 1.35, "min": 1.2, "max": 1.5})
    assert constant["cpu_us_per_request"] == pytest.approx({"server": 67.5, "redis-server": 7.5, "wrk": 30.0})
    assert constant["ratios"]["cpu_vs_ceiling"] == pytest.approx({"mean": 1.0, "min": 1.0, "max": 1.0})


def test_report_has_a_cpu_table_when_the_rows_have_cpu() -> None:
    text = report(_results(CPU_RUNS))
    assert "### CPU per request" in text
    assert "| mtcache `get_or_compute` | 90.0 | 60.0 | 30.0 | 3.0 | 12.0 | 105.0 | 1.35x (1.20-1.50) | 40.0 |" in text
    assert "| constant quote (the server's ceiling) | 67.5 | - | - | - | 7.5 | 75.0 | 1.00x | 30.0 |" in text
    assert "| 2 | uvicorn | mtcache | 1,000 | 2.00 | 8.00 | 20.0 | 0 | 150.0 | 1.0 → 1.5 |" in text


def test_report_without_cpu_figures_leaves_the_cpu_table_out() -> None:
    text = report(_results([_row(1, "constant", None), _row(1, "mtcache", None)]))
    assert "## uvicorn" in text
    assert "CPU per request" in text  # defined, for the "Every run" column
    assert "### CPU per request" not in text
    assert "| 1 | uvicorn | mtcache | 1,000 | 2.00 | 8.00 | 20.0 | 0 | - | 1.0 → 1.5 |" in text


def test_cpu_used_counts_only_processes_in_both_snapshots() -> None:
    parts = {"server": [10, 11, 12], "redis-server": [20]}
    before = {10: 1.0, 11: 2.0, 20: 5.0}  # 12 started after the first snapshot
    after = {10: 1.5, 12: 9.0, 20: 5.25}  # 11 exited before the second
    assert cpu_used(parts, before, after) == {"server": 0.5, "redis-server": 0.25}


def test_user_system_used_counts_only_processes_in_both_snapshots() -> None:
    before = {10: (1.0, 0.5), 11: (2.0, 1.0)}  # 12 started after the first snapshot
    after = {10: (1.5, 0.75), 12: (9.0, 9.0)}  # 11 exited before the second
    assert user_system_used([10, 11, 12], before, after) == (0.5, 0.25)
    assert user_system_by_pid([os.getpid()])[os.getpid()] > (0.0, 0.0)


def test_worker_shares_leave_out_the_master_and_processes_not_in_both_snapshots() -> None:
    gone = 2**22 + 1  # made-up pids, above the kernel's largest
    master, busy, idle, late = gone, gone + 1, gone + 2, gone + 3
    before = {master: 0.0, busy: 1.0, idle: 2.0}
    after = {master: 5.0, busy: 1.75, idle: 2.25, late: 3.0}
    assert worker_shares(master, [master, busy, idle, late], before, after) == [0.75, 0.25]
    assert worker_shares(master, [master, idle], {idle: 1.0}, {idle: 1.0}) == []


# the parent prints its child's pid once it has started it, then both wait for their stdin to close
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
print(child.pid, flush=True)
sys.stdin.read()
child.stdin.close()
child.wait()
"""


def test_group_pids_finds_every_process_of_a_session() -> None:
    with subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          start_new_session=True) as parent:
        try:
            assert parent.stdout is not None and parent.stdin is not None
            child = int(parent.stdout.readline())
            assert group_pids(parent.pid) == sorted([parent.pid, child])
            parent.stdin.close()
            assert parent.wait(30) == 0
            assert group_pids(parent.pid) == []
        finally:
            if parent.poll() is None:
                os.killpg(parent.pid, signal.SIGKILL)


def _listening_sockets(port: int) -> int:
    """How many loopback TCP sockets listen on ``port``."""
    listening = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:  # 0A: TCP_LISTEN
            listening += 1
    return listening


def test_uvicorns_workers_listen_on_a_socket_each_and_stop_with_their_parent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    command = run.server_command
    # h11 comes with uvicorn; httptools, the benchmark's parser, is in the bench extra only
    monkeypatch.setattr(run, "server_command", lambda server, port: [*command(server, port), "--http", "h11"])
    with running_server("uvicorn", "constant", {"HTTPBENCH_VARIANT": "constant"}, tmp_path / "uvicorn.log") as served:
        status, body = _get(served.port, "/quote/ACME")
        assert status == 200 and json.loads(body)["quote"] == CONSTANT_QUOTE
        assert len(group_pids(served.pid)) == 1 + WORKERS  # the launcher and its workers
        assert _listening_sockets(served.port) == WORKERS
    assert group_pids(served.pid) == []


def test_report_has_the_in_process_table_when_measured() -> None:
    results = _results(CPU_RUNS)
    assert "## The app's own CPU per request, in process" not in report(results)
    def row(cpu_us: float, source_calls: int = 0, cold_us: float | None = None) -> dict[str, float]:
        figures = {"cpu_us": cpu_us, "source_calls": source_calls}
        return figures if cold_us is None else {**figures, "cold_us": cold_us}

    results["in_process"] = {
        "gunicorn": {"constant": row(2.5, cold_us=8.0), "mtcache": row(6.0, cold_us=15.5), "redis_py": row(72.0)},
        "uvicorn": {"constant": row(3.0), "mtcache": row(6.5, 2), "cashews": row(513.2)},  # an older json: no cold
    }
    text = report(results)
    assert "## The app's own CPU per request, in process" in text
    assert "| constant quote (the server's ceiling) | 2.50 | - | 8.00 | - | 3.00 | - | - | - |" in text
    assert "| mtcache `get_or_compute` | 6.00 | 3.50 | 15.50 | 7.50 | 6.50 | 3.50 | - | - |" in text
    assert "| redis-py cache-aside | 72.00 | 69.50 | - | - | - | - | - | - |" in text
    assert "| cashews (`client_side`, `lock=True`) | - | - | - | - | 513 | 510 | - | - |" in text
    assert "the figures measure hits): uvicorn mtcache: 2." in text


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_the_in_process_measure_calls_the_app(server: str, tmp_path: Path) -> None:
    # the constant app needs no cache; a wrong answer would raise
    row = app_cpu_per_request(server, "constant", "redis://unused", None, 20, tmp_path / "calls.log")
    assert row["cpu_us"] > 0 and row["cold_us"] > 0 and row["source_calls"] == 0


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_the_in_process_measure_counts_the_source_calls_of_its_passes(server: str, tmp_path: Path) -> None:
    # no cache: every request of the passes, the cold one too, calls the price service (20 ms each, so few)
    row = app_cpu_per_request(server, "nocache", "redis://unused", None, 2, tmp_path / "calls.log", requests=4)
    assert row["source_calls"] == (APP_PASSES + 1) * 4
