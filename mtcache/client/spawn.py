"""Start, find and stop coordinator processes.

:func:`ensure_coordinator` is what a client does when none answers on the
socket. Many workers may find the socket dead at the same moment (gunicorn
starting 8 workers). They serialise on an exclusive ``flock`` of
``<socket>.spawn.lock``; the first starts ``python -m mtcache.coordinator
--detach`` (it forks into its own session, output to ``<socket>.log``) and waits
until it answers; the others, once they get the lock, find it answering and
start nothing. The coordinator itself holds ``<socket>.lock`` for its lifetime,
so even a racing manual start cannot run two.

:func:`start_coordinator` / :func:`stop_coordinator` run one as a child of the
calling process (a server's master, the demo, a test), and :func:`redis_answers`
tells whether to give it Redis.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis

__all__ = [
    "SPAWN_DEADLINE",
    "can_connect",
    "coordinator_command",
    "ensure_coordinator",
    "redis_answers",
    "start_coordinator",
    "stop_coordinator",
    "wait_until_ready",
]

#: How long a started coordinator may take to answer.
SPAWN_DEADLINE = 15.0


def can_connect(path: str) -> bool:
    """True if something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True if Redis at ``url`` answers PING within ``timeout`` seconds; never raises."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def coordinator_command(
    socket_path: str,
    *,
    redis_url: str | None = None,
    no_redis: bool = False,
    namespace: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of a coordinator on ``socket_path`` (``redis_url`` None:
    the coordinator resolves it from the environment as usual)."""
    cmd = [sys.executable, "-m", "mtcache.coordinator", "--socket", socket_path]
    if namespace:
        cmd += ["--namespace", namespace]
    if no_redis:
        cmd.append("--no-redis")
    elif redis_url:
        cmd += ["--redis-url", redis_url]
    return cmd + list(extra)


def wait_until_ready(socket_path: str, *, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll until the socket accepts connections (True), ``proc`` exits or the
    ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not can_connect(socket_path):
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # readiness poll with a deadline
    return True


def start_coordinator(
    socket_path: str,
    *,
    redis_url: str | None = None,
    no_redis: bool = False,
    namespace: str | None = None,
    extra: Sequence[str] = (),
    log_path: str | None = None,
    new_session: bool = False,
    timeout: float = SPAWN_DEADLINE,
) -> subprocess.Popen[bytes]:
    """Run a coordinator as a child process and return once it answers.

    Its output goes to ``log_path`` (default ``<socket_path>.log``). With
    ``new_session`` it leads its own session, so a Ctrl-C meant for the parent
    does not stop it before the parent's workers finish.

    :raises RuntimeError: it exited or did not answer within ``timeout`` (the
        message ends with its log).
    """
    Path(socket_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_file = log_path or f"{socket_path}.log"
    cmd = coordinator_command(socket_path, redis_url=redis_url, no_redis=no_redis, namespace=namespace, extra=extra)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=new_session)
    if not wait_until_ready(socket_path, timeout=timeout, proc=proc):
        stop_coordinator(proc)
        tail = Path(log_file).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the mtcache coordinator on {socket_path} did not start; its log:\n{tail}")
    return proc


def stop_coordinator(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM (the coordinator removes its socket and shared memory), wait, and
    SIGKILL after ``timeout`` seconds; return its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def ensure_coordinator(
    socket_path: str,
    *,
    namespace: str,
    redis_url: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> bool:
    """Make sure a coordinator answers on ``socket_path``, starting one if needed.

    Returns True once one answers, False if the one started did not come up
    within :data:`SPAWN_DEADLINE` (its log is ``<socket>.log``). Never raises for
    a coordinator that fails to start; raises ``OSError`` only if the socket's
    folder cannot be created.
    """
    folder = Path(socket_path).parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_fd = os.open(f"{socket_path}.spawn.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if can_connect(socket_path):
            return True
        cmd = coordinator_command(
            socket_path, redis_url=redis_url, namespace=namespace, extra=("--detach", *extra_args)
        )
        with open(f"{socket_path}.log", "ab") as log:
            # --detach: the coordinator forks and its first process exits at once, so
            # this worker reaps it here and never keeps a zombie or a child to wait for
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, check=False)
        return wait_until_ready(socket_path, timeout=SPAWN_DEADLINE)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
