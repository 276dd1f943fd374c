"""The coordinator's life cycle (issue 16, point 6): ``mtcache.start_coordinator`` /
``stop_coordinator`` shared by several users (the last one out stops it), a
coordinator a client spawned exits once idle and removes its files, and never
while a client is connected or a write waits for Redis."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from mtcache import Client, start_coordinator, stop_coordinator
from mtcache.client.spawn import can_connect
from mtcache.coordinator.server import lock_file
from tests.coordinator_proc import CoordinatorProcess, kill_spawned, lock_holders
from tests.redis_server import RedisServer
from tests.waiting import wait_until

IDLE = "0.5"  # seconds: MTCACHE_IDLE_EXIT of the spawned coordinators below


def _segments(namespace: str) -> list[str]:
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith(f"mtcache-{namespace}-"))


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# -- start_coordinator / stop_coordinator ---------------------------------------------


def test_the_last_user_stops_it_and_it_removes_its_files(short_tmp: Path) -> None:
    path = str(short_tmp / "c.sock")
    first = start_coordinator(path, namespace="lc-files", use_redis=False)
    second = start_coordinator(path, namespace="lc-files")
    try:
        assert first.started and not second.started  # the second joined the first one's coordinator
        assert first.pid == second.pid and lock_holders(path) == [first.pid]
        assert first.log_path == f"{path}.log" and second.log_path is None
        assert _segments("lc-files")  # its version table (and mirror) in shared memory
        assert stop_coordinator(first) is False  # the second still uses it
        assert stop_coordinator(first) is False  # a released handle does nothing
        assert can_connect(path)
        assert stop_coordinator(second) is True  # the last user stops it
    finally:
        stop_coordinator(first)
        stop_coordinator(second)
    assert not can_connect(path)
    assert sorted(os.listdir(short_tmp)) == ["c.sock.log"]  # socket, lock and users file removed
    assert _segments("lc-files") == []
    log = Path(f"{path}.log").read_text()
    assert f"its log: {path}.log; runs until stopped" in log


def test_a_coordinator_started_otherwise_is_joined_but_never_stopped(
    coordinator_no_redis: CoordinatorProcess,
) -> None:
    handle = start_coordinator(coordinator_no_redis.socket_path)
    assert not handle.started and handle.pid == coordinator_no_redis.pid
    assert stop_coordinator(handle) is False
    assert can_connect(coordinator_no_redis.socket_path)
    assert "runs until stopped" in coordinator_no_redis.log()  # mtcache-coordinator: no idle exit by default


def test_start_coordinator_refuses_bad_settings(short_tmp: Path) -> None:
    with pytest.raises(TypeError, match="no_such_setting"):
        start_coordinator(str(short_tmp / "c.sock"), no_such_setting=1)
    with pytest.raises(ValueError, match="l1_capacity"):
        start_coordinator(str(short_tmp / "c.sock"), l1_capacity=0)
    with pytest.raises(ValueError, match="idle_exit"):
        start_coordinator(str(short_tmp / "c.sock"), idle_exit=-1)
    assert not (short_tmp / "c.sock").exists()


def test_settings_reach_the_coordinator_started(short_tmp: Path) -> None:
    handle = start_coordinator(str(short_tmp / "c.sock"), use_redis=False, l1_capacity=7, idle_exit=30)
    try:
        with Client(handle.socket_path, spawn=False) as client:
            assert client.stats().coordinator["l1"]["capacity"] == 7
        assert "exits after 30 s without a client" in Path(f"{handle.socket_path}.log").read_text()
    finally:
        assert stop_coordinator(handle) is True


def test_the_coordinator_lock_is_never_held_twice(short_tmp: Path) -> None:
    path = str(short_tmp / "x.lock")
    fd = lock_file(path)
    assert fd is not None
    assert lock_file(path) is None  # held
    os.unlink(path)  # what a stopping holder does, still holding it ...
    other = lock_file(path)  # ... so a newcomer locks the new file, not the removed one
    try:
        assert other is not None and os.fstat(other).st_ino == os.stat(path).st_ino
    finally:
        os.close(fd)
        if other is not None:
            os.close(other)


# -- idle exit of a spawned coordinator ------------------------------------------------


@pytest.fixture
def idle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTCACHE_IDLE_EXIT", IDLE)


def test_a_spawned_coordinator_exits_once_idle_and_removes_its_files(
    short_tmp: Path, idle_env: None, redis_server: RedisServer
) -> None:
    path = str(short_tmp / "c.sock")
    try:
        with Client(path, namespace="lc-idle", redis_url=redis_server.url) as client:
            assert client.set("k", "v") is True
            pid = client.health().details["pid"]
            assert _segments("lc-idle")
            # connected: it does not exit, however long it has been running
            assert wait_until(lambda: client.health().details["uptime"] > 3 * float(IDLE), timeout=10)
            assert client.get("k") == "v" and client.health().details["pid"] == pid
        assert wait_until(lambda: _gone(pid), timeout=10)
    finally:
        kill_spawned(path)
    assert not can_connect(path)
    assert sorted(os.listdir(short_tmp)) == ["c.sock.log", "c.sock.spawn.lock"]
    assert _segments("lc-idle") == []
    log = Path(f"{path}.log").read_text()
    assert f"its log: {path}.log; exits after {float(IDLE):g} s without a client" in log
    assert f"no client for {float(IDLE):g} s: exiting" in log
    with redis_server.client() as plain:
        assert plain.exists("mtcache:lc-idle:v2:k:k")  # what it acknowledged reached Redis


@pytest.mark.slow
def test_an_idle_coordinator_waits_for_its_writes_to_reach_redis(
    short_tmp: Path, idle_env: None, redis_server: RedisServer
) -> None:
    path = str(short_tmp / "c.sock")
    try:
        with Client(path, namespace="lc-backlog", redis_url=redis_server.url) as client:
            assert client.set("warm", 1) is True
            pid = client.health().details["pid"]
            redis_server.pause()  # SIGSTOP: the write below waits for Redis in the backlog
            try:
                assert client.set("k", "written during the outage") is True
                assert wait_until(lambda: client.health().redis == "down", timeout=15)
            except BaseException:
                redis_server.resume()
                raise
        # no client, but a write waits for Redis: it stays until the write is replayed
        with Client(path, namespace="lc-backlog", spawn=False) as probe:
            assert wait_until(lambda: probe.health().details["uptime"] > 4 * float(IDLE), timeout=10)
        assert not _gone(pid)
        redis_server.resume()
        assert wait_until(lambda: _gone(pid), timeout=20)
    finally:
        redis_server.resume()
        kill_spawned(path)
    with redis_server.client() as plain:
        assert plain.exists("mtcache:lc-backlog:v2:k:k")


def test_mtcache_coordinator_idle_exit_flag(short_tmp: Path) -> None:
    sock = short_tmp / "c.sock"
    coordinator = CoordinatorProcess(sock, redis_url=None, args=("--idle-exit", IDLE))
    coordinator.start()
    try:
        assert coordinator.proc is not None
        assert coordinator.proc.wait(timeout=20) == 0  # nobody connected: it exits by itself, cleanly
    finally:
        if coordinator.proc is not None and coordinator.proc.poll() is None:
            coordinator.proc.send_signal(signal.SIGKILL)
        coordinator.stop()
    assert not sock.exists() and not Path(f"{sock}.lock").exists()
    assert "no client for 0.5 s: exiting" in coordinator.log()
