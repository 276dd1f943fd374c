"""A real ``mtcache-coordinator`` process for tests, on a socket under tmp_path."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from mtcache.client.spawn import can_connect

START_DEADLINE = 15.0


class CoordinatorProcess:
    """``python -m mtcache.coordinator`` in the foreground of a test; ``redis_url``
    None means ``--no-redis``. Extra CLI arguments go in ``args``; ``env`` adds to
    (or overrides) the environment the process inherits, e.g. ``MTCACHE_*`` settings."""

    def __init__(self, socket_path: Path, *, redis_url: str | None, namespace: str = "default",
                 args: tuple[str, ...] = (), env: Mapping[str, str] | None = None) -> None:
        self.socket_path = str(socket_path)
        self.redis_url = redis_url
        self.namespace = namespace
        self.args = args
        self.env = dict(env) if env else {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(f"{socket_path}.test.log")

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "mtcache.coordinator", "--socket", self.socket_path,
               "--namespace", self.namespace, "--log-level", "INFO"]
        # the URL travels in REDIS_URL (see start), never on the command line: it may hold a password
        if not self.redis_url:
            cmd.append("--no-redis")
        return cmd + list(self.args)

    def start(self) -> None:
        """Start and return once the socket accepts connections."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            url = {"REDIS_URL": self.redis_url} if self.redis_url else {}
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env={**os.environ, **url, **self.env})
        finally:
            log.close()
        deadline = time.monotonic() + START_DEADLINE
        while not can_connect(self.socket_path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"coordinator did not answer within {START_DEADLINE}s: {self.log()}")
            time.sleep(0.01)  # readiness poll with a deadline

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM, wait (SIGKILL after 10 s); return the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def restart(self) -> None:
        self.kill()
        self.start()


def lock_holders(socket_path: str) -> list[int]:
    """Pids of the processes holding ``<socket>.lock`` open (coordinators), from /proc."""
    target = os.path.realpath(f"{socket_path}.lock")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (entry / "fd").iterdir()):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _running(pid: int) -> bool:
    # a zombie (state Z) has exited: whoever adopted it may not have reaped it yet
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_spawned(socket_path: str) -> None:
    """Stop a coordinator that a client spawned (detached, not our child) on
    ``socket_path``, found by the lock it holds (``<socket>.lock``) via /proc:
    SIGTERM, so it removes its socket and shared memory, then SIGKILL if it is
    still there after the deadline."""
    pids = lock_holders(socket_path)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _running(pid)]
        time.sleep(0.02)  # waiting for the processes to exit, with a deadline
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
