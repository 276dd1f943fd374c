"""workers/: gunicorn (4 sync workers, preload) and uvicorn (2 workers) serving one
cold key to 32 concurrent requests compute it once; the multiprocess pool
computes each distinct key once.

The servers run as real processes on free loopback ports; every computation is
appended to a compute log (``MTCACHE_COMPUTE_LOG``), so counting its lines counts
the computations of every worker process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mtcache import Client
from mtcache.client.spawn import can_connect
from tests.coordinator_proc import kill_spawned
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 32
START_DEADLINE = 30.0  # seconds for a server to answer its first request
STOP_DEADLINE = 15.0
# proxies from the environment must not see requests to 127.0.0.1
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _env(short_tmp: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTCACHE_")}
    env.update(
        MTCACHE_SOCKET=str(short_tmp / "c.sock"),
        MTCACHE_COMPUTE_LOG=str(short_tmp / "computes.log"),
        REDIS_URL=redis_url,
    )
    return env


def _start(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, wait, SIGKILL if it does not stop; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _terminate_coordinator(pid: int, socket_path: Path) -> None:
    """SIGTERM a coordinator that is not our child and wait until it has exited: it
    holds ``<socket>.lock`` for its lifetime, so the lock comes free when it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        fd = os.open(f"{socket_path}.lock", os.O_RDWR)
    except FileNotFoundError:  # it has stopped already: a clean stop removes its lock file
        return
    try:
        deadline = time.monotonic() + STOP_DEADLINE
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.01)  # poll with a deadline: it is not our child, we cannot wait() for it
            else:
                return
    finally:
        os.close(fd)


def _get(url: str, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a GET, whatever the status."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _wait_until_serving(base: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while True:
        try:
            status, _ = _get(f"{base}/ready", timeout=5.0)
        except (urllib.error.URLError, OSError):
            status = 0
        if status == 404:  # the app itself answered
            return
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"server did not answer within {START_DEADLINE}s:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)  # readiness poll with a deadline


def _burst(url: str) -> list[tuple[int, dict[str, Any]]]:
    """REQUESTS concurrent GETs of ``url``, released together by a barrier."""
    barrier = threading.Barrier(REQUESTS)

    def one() -> tuple[int, dict[str, Any]]:
        barrier.wait(timeout=30)
        return _get(url)

    with concurrent.futures.ThreadPoolExecutor(REQUESTS) as pool:
        return list(pool.map(lambda _: one(), range(REQUESTS)))


def _computations(short_tmp: Path) -> list[str]:
    path = short_tmp / "computes.log"
    return path.read_text().splitlines() if path.exists() else []


def _check_burst(answers: list[tuple[int, dict[str, Any]]], short_tmp: Path, server: str) -> None:
    assert [status for status, _ in answers] == [200] * REQUESTS, answers
    values = {json.dumps(body["value"], sort_keys=True) for _, body in answers}
    assert len(values) == 1, values  # every response carries the one computed value
    lines = _computations(short_tmp)
    assert len(lines) == 1, lines  # computed exactly once across every worker
    assert lines[0].split()[1] == "quote:ACME"
    pids = {body["pid"] for _, body in answers}
    print(f"{server}: {REQUESTS} requests answered by {len(pids)} worker process(es): {sorted(pids)}")


def _served_by_children_of(base: str, master: int, short_tmp: Path, symbol: str) -> list[tuple[int, dict[str, Any]]]:
    """Wait until a worker of ``master`` answers, then burst one cold key at the server."""
    deadline = time.monotonic() + START_DEADLINE
    while True:
        status, body = _get(f"{base}/quote/warmup-{master}")
        if status == 200 and _parent(body["pid"]) == master:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no worker of master {master} answered within {START_DEADLINE}s")
        time.sleep(0.05)  # readiness poll with a deadline
    return _burst(f"{base}/quote/{symbol}")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_gunicorn_workers_compute_once_and_the_coordinator_survives_a_binary_upgrade(
    redis_server: RedisServer, short_tmp: Path, tmp_path: Path
) -> None:
    pytest.importorskip("gunicorn", reason="gunicorn is in the test extra: pip install -e '.[test]'")
    gunicorn = Path(sys.executable).parent / "gunicorn"  # USR2 re-executes the master's own command line
    if not gunicorn.exists():
        pytest.skip(f"the gunicorn console script is not installed next to {sys.executable}")
    socket_path = short_tmp / "c.sock"
    base = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "gunicorn.log"
    cmd = [str(gunicorn), "-c", "workers/gunicorn.conf.py", "-b", base.removeprefix("http://"), "-w", "4",
           "--no-control-socket", "workers.wsgi_app:app"]
    old = _start(cmd, _env(short_tmp, redis_server.url), log_path)
    new_master: int | None = None
    try:
        _wait_until_serving(base, old, log_path)
        assert can_connect(str(socket_path))  # on_starting started the coordinator on MTCACHE_SOCKET
        with Client(str(socket_path), spawn=False) as client:
            coordinator_pid = client.health().details["pid"]
        answers = _burst(f"{base}/quote/acme")
        _check_burst(answers, short_tmp, "gunicorn")

        old.send_signal(signal.SIGUSR2)  # binary upgrade: a new master with new workers, beside the old
        joined = re.compile(rf"\[(\d+)\] \[INFO\] mtcache coordinator \(pid {coordinator_pid}\) joined")
        deadline = time.monotonic() + START_DEADLINE
        while (found := joined.search(log_path.read_text(errors="replace"))) is None:
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.05)  # waiting for the new master to join the coordinator, with a deadline
        new_master = int(found.group(1))  # its on_starting joined the running coordinator
        assert new_master != old.pid and _parent(new_master) == old.pid
        assert _stop(old) == 0  # the old master and its workers exit; its on_exit runs
        log = log_path.read_text(errors="replace")
        assert f"mtcache coordinator (pid {coordinator_pid}) left running for its other users" in log, log

        # the new master's workers are served by the same coordinator: a cold key is computed once
        answers = _served_by_children_of(base, new_master, short_tmp, "globex")
        assert [status for status, _ in answers] == [200] * REQUESTS, answers
        assert {_parent(body["pid"]) for _, body in answers} == {new_master}
        assert [line.split()[1] for line in _computations(short_tmp)].count("quote:GLOBEX") == 1
        with Client(str(socket_path), spawn=False) as client:
            assert client.health().details["pid"] == coordinator_pid
    finally:
        _stop(old)
        if new_master is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(new_master, signal.SIGTERM)
            assert _wait_gone(new_master), "the new gunicorn master did not exit"
        socket_left = socket_path.exists()
        if socket_left:
            kill_spawned(str(socket_path))  # clean up after a failed on_exit
    log = log_path.read_text(errors="replace")
    assert not socket_left, log  # the last master's on_exit stopped the coordinator, which removed its socket
    assert f"mtcache coordinator (pid {coordinator_pid}) stopped" in log, log


def _wait_gone(pid: int) -> bool:
    """Poll until ``pid`` (not our child) has exited, with a deadline."""
    deadline = time.monotonic() + STOP_DEADLINE
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)  # it is not our child: we cannot wait() for it
    return False


def test_uvicorn_workers_compute_once(redis_server: RedisServer, short_tmp: Path, tmp_path: Path) -> None:
    pytest.importorskip("uvicorn", reason="uvicorn is in the test extra: pip install -e '.[test]'")
    socket_path = short_tmp / "c.sock"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "uvicorn.log"
    cmd = [sys.executable, "-m", "uvicorn", "workers.asgi_app:app", "--workers", "2", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    proc = _start(cmd, _env(short_tmp, redis_server.url), log_path)
    coordinator_pid = None
    try:
        _wait_until_serving(base, proc, log_path)
        # the app relies on the client's spawn=True: a worker started the coordinator
        with Client(str(socket_path), spawn=False) as client:
            coordinator_pid = client.health().details.get("pid")
        assert coordinator_pid is not None
        answers = _burst(f"{base}/quote/acme")
    finally:
        _stop(proc)
        # the spawned coordinator is detached and outlives the server: SIGTERM lets it remove its
        # socket and shared memory; kill_spawned (SIGKILL) is the fallback
        if coordinator_pid is not None:
            _terminate_coordinator(coordinator_pid, socket_path)
        kill_spawned(str(socket_path))
    _check_burst(answers, short_tmp, "uvicorn")


def test_pool_computes_each_key_once(redis_server: RedisServer, short_tmp: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "workers" / "pool.py"), "--workers", "3", "--jobs", "60", "--keys", "6"],
        capture_output=True, text=True, timeout=90, env=_env(short_tmp, redis_server.url), check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pool: 3 workers, 60 jobs over 6 symbols" in result.stdout
    assert "(redis ok, mode ok)" in result.stdout
    assert "6 distinct keys, 6 computations: one per key" in result.stdout
    assert sum(int(n) for n in re.findall(r"worker \d+: (\d+) jobs", result.stdout)) == 60
    keys = [line.split()[1] for line in _computations(short_tmp)]
    assert len(keys) == len(set(keys)) == 6  # the compute log agrees: one line per distinct key
