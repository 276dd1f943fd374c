"""The ``mtcache`` and ``mtcache-coordinator`` commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mtcache import Client
from mtcache.cli import coordinator_main, main
from mtcache.client.spawn import can_connect
from tests.coordinator_proc import CoordinatorProcess

BIN = Path(sys.executable).parent
STATS_KEYS = {
    "near_hits", "near_misses", "l1_hits", "l1_misses", "l2_hits", "l2_misses", "promotions", "computes",
    "local_computes", "coalesced", "local_coalesced", "inflight_leases", "evictions", "l2_errors",
    "coordinator_errors", "coordinator", "near_hit_rate", "l1_hit_rate", "l2_hit_rate",
    "mirror_hits", "mirror_misses", "mirror_torn_retries", "mirror_not_mirrored", "mirror_arena_used",
    "stale_served", "fail_safe_activations", "fleet", "hot_keys",
}
HEALTH_KEYS = {"coordinator", "redis", "mode", "details"}


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the commands read MTCACHE_* and a .env in the working directory: neither may leak in
    for var in ("MTCACHE_SOCKET", "MTCACHE_NAMESPACE", "REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def _script(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"console script {name} is not installed next to {sys.executable}")
    return path


def _line(out: str, key: str, value: str) -> bool:
    return re.search(rf"^\s+{re.escape(key)}\s+{re.escape(value)}$", out, re.MULTILINE) is not None


# -- mtcache stats ------------------------------------------------------------------


def _row(out: str, *cells: str) -> bool:
    """A line of the summary's tier table holding exactly these cells."""
    return re.search(r"^" + r"\s+".join(re.escape(cell) for cell in cells) + r"$", out, re.MULTILINE) is not None


def test_stats_human(coordinator_no_redis: CoordinatorProcess, capsys: pytest.CaptureFixture[str]) -> None:
    # the whole host: a worker's near hits (which never reach the coordinator) are in the summary,
    # also after the worker closed
    with Client(coordinator_no_redis.socket_path, spawn=False) as client:
        client.set("k", 1)
        for _ in range(5):
            assert client.get("k") == 1
        assert client.get_or_compute("c", lambda: 2) == 2
    assert main(["stats", "--socket", coordinator_no_redis.socket_path]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mtcache stats ({coordinator_no_redis.socket_path})")
    assert "reads 6, cache hit rate 83.3 %" in out
    assert _row(out, "near", "5", "83.3 %", "83.3 %")  # 5 near hits, 1 near miss
    assert re.search(r"^computed\s+1\s+16\.7 %\s+[\d.]+ [µm]?s\s+[\d.]+ [µm]?s$", out, re.MULTILINE)  # + p50, p99
    assert re.search(r"^writes\s+0 in flight", out, re.MULTILINE)
    assert re.search(r"^\s+c\s+1$", out, re.MULTILINE)  # the hottest key (the lease request reached the coordinator)
    assert "coordinator:" not in out  # not the raw counters: --json has those


def test_stats_workers(coordinator_no_redis: CoordinatorProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with Client(coordinator_no_redis.socket_path, spawn=False) as client:
        client.set("k", 1)
        for _ in range(3):
            client.get("k")
        assert client.stats().fleet.near_hits == 3  # the asking client's counters are current
        assert main(["stats", "--workers", "--socket", coordinator_no_redis.socket_path]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"^{os.getpid()}\s+100\.0 %\s+3\s+0\s+\d+\s+0\s+", out, re.MULTILINE), out
        assert main(["stats", "--workers", "--json", "--socket", coordinator_no_redis.socket_path]) == 0
        workers = json.loads(capsys.readouterr().out)["fleet"]["per_worker"]
        assert [(w["pid"], w["near_hits"]) for w in workers] == [(os.getpid(), 3)]


def test_stats_json(coordinator_no_redis: CoordinatorProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with Client(coordinator_no_redis.socket_path, spawn=False) as client:
        client.set("k", 1)
        client.set("k", 2)
    assert main(["stats", "--socket", coordinator_no_redis.socket_path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == STATS_KEYS
    assert data["coordinator"]["sets"] == 2
    assert data["coordinator"]["connections"] == 1  # the command's own connection
    assert data["coordinator_errors"] == 0


# -- mtcache health ------------------------------------------------------------------


def test_health_human_with_redis(coordinator: CoordinatorProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--socket", coordinator.socket_path]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mtcache health ({coordinator.socket_path}): ok\n")
    assert re.search(rf"^  coordinator\s+ok \(pid {coordinator.pid}, up \d+ s, namespace 'default'\)$", out, re.M), out
    assert re.search(r"^  redis\s+ok at redis://127\.0\.0\.1:\d+/0$", out, re.MULTILINE), out
    assert re.search(r"^  stream\s+reader connected", out, re.MULTILINE), out
    assert _line(out, "log", f"standard error ({coordinator.log_path})") or _line(out, "log", str(coordinator.log_path))


def test_health_human_without_redis(
    coordinator_no_redis: CoordinatorProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    # the coordinator answers, so the command succeeds; the mode says what is missing
    assert main(["health", "--socket", coordinator_no_redis.socket_path]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mtcache health ({coordinator_no_redis.socket_path}): degraded\n")
    assert _line(out, "redis", "disabled (L1 only)")


def test_health_json(coordinator: CoordinatorProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--socket", coordinator.socket_path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == HEALTH_KEYS
    assert (data["coordinator"], data["redis"], data["mode"]) == ("ok", "ok", "ok")
    assert data["details"]["pid"] == coordinator.pid
    assert data["details"]["namespace"] == "default"


def test_health_without_coordinator(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(short_tmp / "none.sock")
    assert main(["health", "--socket", path]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"mtcache health ({path}): degraded\n")
    assert _line(out, "coordinator", f"unavailable: no socket at {path}: no coordinator runs there")


def test_health_json_without_coordinator(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(short_tmp / "none.sock")
    assert main(["health", "--socket", path, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert (data["coordinator"], data["redis"], data["mode"]) == ("unavailable", "unknown", "degraded")
    assert data["details"]["socket"] == path
    assert data["details"]["reason"] == f"no socket at {path}: no coordinator runs there"


def test_health_console_script_without_coordinator(short_tmp: Path) -> None:
    run = subprocess.run(
        [str(_script("mtcache")), "health", "--socket", str(short_tmp / "none.sock")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 1
    assert "unavailable" in run.stdout


def test_stats_without_coordinator_exits_1(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--socket", str(short_tmp / "none.sock")]) == 1


@pytest.mark.parametrize("argv", [[], ["bogus"], ["stats", "--no-such-flag"], ["stop", "--json"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: mtcache" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["stats", "health", "stop"])
def test_every_subcommand_takes_namespace(
    coordinator_no_redis: CoordinatorProcess, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # a namespace the coordinator does not serve is refused, by every subcommand
    assert main([command, "--socket", coordinator_no_redis.socket_path, "--namespace", "other"]) == 1
    assert "no coordinator answers" in capsys.readouterr().err
    assert main(["health", "--socket", coordinator_no_redis.socket_path, "--namespace", "default"]) == 0


@pytest.mark.parametrize("entry", [main, coordinator_main])
def test_version(entry: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from mtcache import __version__

    with pytest.raises(SystemExit) as exc:
        entry(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" {__version__}")


# -- mtcache-coordinator ---------------------------------------------------------------


def test_coordinator_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        coordinator_main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mtcache-coordinator")
    assert "--socket" in out and "--no-redis" in out


def test_coordinator_console_script_help() -> None:
    run = subprocess.run(
        [str(_script("mtcache-coordinator")), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0
    assert "usage: mtcache-coordinator" in run.stdout


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--l1-capacity", "0", "l1_capacity"),
        ("--lease-ttl", "-1", "lease_ttl"),
        ("--namespace", "a:b", "namespace"),
        ("--metrics", "9464", "ADDR:PORT"),
        ("--metrics", "127.0.0.1:http", "port"),
        ("--metrics", "::1:9464", "IPv6"),
    ],
)
def test_coordinator_bad_setting_exits_2(short_tmp: Path, flag: str, value: str, named: str) -> None:
    # a subprocess: coordinator_main configures the root logger, which must not leak into this process
    sock = short_tmp / "c.sock"
    run = subprocess.run(
        [sys.executable, "-m", "mtcache.coordinator", "--socket", str(sock), "--no-redis", flag, value],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 2, run.stderr
    assert named in run.stderr
    assert not sock.exists()


def test_stop_command_stops_the_coordinator(short_tmp: Path) -> None:
    proc = CoordinatorProcess(short_tmp / "stop.sock", redis_url=None)
    proc.start()
    try:
        assert main(["stop", "--socket", proc.socket_path]) == 0
        assert not can_connect(proc.socket_path)
        assert proc.proc is not None and proc.proc.wait(timeout=10) == 0
        assert main(["stop", "--socket", proc.socket_path]) == 1
    finally:
        proc.stop()
