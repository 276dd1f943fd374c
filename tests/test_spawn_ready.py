"""Spawning is known at once and never queues workers (issue 11, "Spawning").

``--detach`` returns once the coordinator serves, or at once with its exit
status if it could not start; ``ensure_coordinator`` holds the spawn lock for one
attempt only, and a start that found the lock taken (a coordinator runs but its
socket file was deleted) waits briefly for that coordinator's socket, never the
15 s spawn deadline.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtcache import Client
from mtcache.client.spawn import (
    ALREADY_RUNNING,
    LATE_SOCKET_WAIT,
    SPAWN_DEADLINE,
    can_connect,
    coordinator_command,
    ensure_coordinator,
)
from tests.coordinator_proc import CoordinatorProcess, kill_spawned, lock_holders

WORKERS = 4
#: a hang bound for four workers together, far under the old 15, 30, 46, 61 s
BOUND = 8.0


def _together(call: Callable[[], bool], n: int = WORKERS) -> list[tuple[bool, float]]:
    """``call()`` in ``n`` threads released at once: (result, seconds) of each."""
    barrier = threading.Barrier(n)
    out: list[tuple[bool, float]] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait(10)
        started = time.monotonic()
        result = call()
        with lock:
            out.append((result, time.monotonic() - started))

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SPAWN_DEADLINE * n)
    assert len(out) == n, "a worker hung"
    return out


@pytest.fixture
def running(short_tmp: Path) -> Iterator[CoordinatorProcess]:
    coordinator = CoordinatorProcess(short_tmp / "c.sock", redis_url=None)
    coordinator.start()
    try:
        yield coordinator
    finally:
        if coordinator.proc is not None and coordinator.proc.poll() is None:
            coordinator.proc.send_signal(signal.SIGCONT)
        coordinator.stop()
        kill_spawned(coordinator.socket_path)  # in case a second one did start


def _ensure(path: str) -> bool:
    return ensure_coordinator(path, namespace="default", extra_args=("--no-redis",))


def _served_by(path: str) -> int | None:
    if not can_connect(path):
        return None
    with Client(path, spawn=False, near_capacity=0) as client:
        pid = client.health().details.get("pid")
    return pid if isinstance(pid, int) else None


def test_workers_finding_the_socket_deleted_do_not_queue(running: CoordinatorProcess) -> None:
    path = running.socket_path
    Path(path).unlink()
    started = time.monotonic()
    results = _together(lambda: _ensure(path))
    elapsed = time.monotonic() - started
    assert elapsed < BOUND, results
    assert max(seconds for _, seconds in results) <= SPAWN_DEADLINE / 2, results
    assert lock_holders(path) == [running.pid]  # no second coordinator took the lock
    assert _served_by(path) in (None, running.pid)  # and none serves the socket but the first
    if any(ok for ok, _ in results):  # the first made its socket again and they found it
        assert _served_by(path) == running.pid


def test_a_start_that_finds_the_lock_taken_fails_fast_once(running: CoordinatorProcess) -> None:
    # the coordinator is stopped (SIGSTOP): it holds the lock but cannot make its socket again
    path = running.socket_path
    assert running.proc is not None
    running.proc.send_signal(signal.SIGSTOP)
    Path(path).unlink()
    log = Path(f"{path}.log")
    started = time.monotonic()
    results = _together(lambda: _ensure(path))
    elapsed = time.monotonic() - started
    assert [ok for ok, _ in results] == [False] * WORKERS
    assert elapsed < BOUND, results
    # the first start found the lock taken; the others read its outcome and started nothing
    assert log.read_text().count("another coordinator is serving") == 1, log.read_text()
    assert all(seconds >= LATE_SOCKET_WAIT * 0.9 for _, seconds in results)  # each waited for the socket
    assert lock_holders(path) == [running.pid]


def test_detach_returns_once_serving(short_tmp: Path) -> None:
    path = str(short_tmp / "c.sock")
    try:
        with open(f"{path}.log", "ab") as log:  # not a pipe: the daemon keeps its output open
            run = subprocess.run(coordinator_command(path, no_redis=True, extra=("--detach",)),
                                 stdout=log, stderr=log, timeout=SPAWN_DEADLINE, check=False)
        assert run.returncode == 0, Path(f"{path}.log").read_text()
        assert can_connect(path)  # at once: no polling
        [pid] = lock_holders(path)
        assert _served_by(path) == pid
        again = subprocess.run(coordinator_command(path, no_redis=True, extra=("--detach",)),
                               capture_output=True, text=True, timeout=SPAWN_DEADLINE, check=False)
        assert again.returncode == ALREADY_RUNNING, again.stderr
        assert "another coordinator is serving" in again.stderr
    finally:
        kill_spawned(path)


def test_a_coordinator_that_cannot_start_is_known_at_once(short_tmp: Path) -> None:
    path = str(short_tmp / "c.sock")
    started = time.monotonic()
    # a setting the coordinator rejects: it exits with status 2 before it forks
    assert ensure_coordinator(path, namespace="default", extra_args=("--no-redis", "--l1-capacity", "0")) is False
    assert time.monotonic() - started < SPAWN_DEADLINE / 3
    assert "l1_capacity must be a positive integer" in Path(f"{path}.log").read_text()
    assert lock_holders(path) == []
