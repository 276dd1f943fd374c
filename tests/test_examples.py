"""Smoke tests of examples/: each runs to the end by itself as a subprocess, says
what it promises, and stops the coordinator it started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mtcache import Client
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer, free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUN_TIMEOUT = 60  # seconds; each example finishes in a second or two


def _run(name: str, *args: str, redis_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # no MTCACHE_* setting of the caller's may leak in; cwd: no .env of the repository either
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTCACHE_")}
    env["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env, cwd=cwd, check=False,
    )


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        ("basic.py", ["build_report ran 1 time(s)", "coordinator ok, redis ok, mode ok", "basic: ok"]),
        ("stampede.py", ["the function ran 1 time(s) for 16 callers", "distinct values received: 1",
                         "stampede: ok, computed once"]),
        ("strategies.py", ["CacheStrategy.LONG_TERM", "gone after",
                           "get_or_compute 3 times with REALTIME: the function ran 1 time(s)", "strategies: ok"]),
        ("advanced.py", ["it ran 1 time(s)", "-> CacheTimeout:", "-> ComputeError:", "advanced: ok"]),
        ("streams.py", ["newest 3: ['299', '298', '297']", "create_consumer_group: True, again: False",
                        "worker-2 claimed 5 entries", "streams: ok"]),
    ],
)
def test_example_with_redis(name: str, lines: list[str], redis_server: RedisServer, tmp_path: Path) -> None:
    result = _run(name, redis_url=redis_server.url, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Redis at {redis_server.url} answers: using it as L2" in result.stdout
    for line in lines:
        assert line in result.stdout, result.stdout


def test_basic_without_redis(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = _run("basic.py", redis_url=url, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Redis at {url} does not answer: L1 only (--no-redis)" in result.stdout
    assert "coordinator ok, redis disabled, mode degraded" in result.stdout
    assert "basic: ok" in result.stdout


def test_health_of_its_own_coordinator_then_stops_it(redis_server: RedisServer, tmp_path: Path) -> None:
    result = _run("health.py", redis_url=redis_server.url, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^  redis +ok \(redis://127\.0\.0\.1:\d+/0\)$", out, re.MULTILINE), out
    assert re.search(r"^  mode +ok$", out, re.MULTILINE), out
    assert re.search(r"^  writes +sets 5, deletes 1, clears 0$", out, re.MULTILINE), out  # its own traffic
    folder = re.search(r"^coordinator on (\S+)/coordinator\.sock$", out, re.MULTILINE)
    pid = re.search(r"^  coordinator +ok \(pid (\d+),", out, re.MULTILINE)
    assert folder is not None and pid is not None, out
    assert not Path(folder.group(1)).exists()  # its temporary folder is gone...
    with pytest.raises(ProcessLookupError):  # ...and so is the coordinator it started
        os.kill(int(pid.group(1)), 0)


def test_health_of_a_running_coordinator_only_reads(coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    with Client(coordinator.socket_path, spawn=False) as client:
        client.set("mine", 1)
        before = client.stats().coordinator
    unused = f"redis://127.0.0.1:{free_port()}/0"  # with --socket the example never needs Redis
    result = _run("health.py", "--socket", coordinator.socket_path, redis_url=unused, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"coordinator on {coordinator.socket_path}" in result.stdout
    assert f"pid {coordinator.pid}," in result.stdout
    assert re.search(r"^  writes +sets 1, deletes 0, clears 0$", result.stdout, re.MULTILINE), result.stdout
    assert "using it as L2" not in result.stdout  # it started no coordinator of its own
    with Client(coordinator.socket_path, spawn=False) as client:
        after = client.stats().coordinator
    for counter in ("sets", "deletes", "clears", "fills", "leases_granted"):
        assert after[counter] == before[counter], counter
    assert after["l1"]["size"] == before["l1"]["size"] == 1


def test_socket_where_no_coordinator_answers(short_tmp: Path, tmp_path: Path) -> None:
    nowhere = str(short_tmp / "nobody.sock")
    result = _run("health.py", "--socket", nowhere, redis_url=f"redis://127.0.0.1:{free_port()}/0", cwd=tmp_path)
    assert result.returncode == 1
    assert f"no coordinator answers on {nowhere}" in result.stderr
    assert not Path(nowhere).exists()  # and it did not start one there
