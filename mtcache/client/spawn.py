"""Start, find and stop coordinator processes.

:func:`ensure_coordinator` is what a client does when none answers on the
socket. Many workers may find the socket dead at the same moment (gunicorn
starting 8 workers). They serialise on an exclusive ``flock`` of
``<socket>.spawn.lock``, each for one start attempt at most: the first starts
``python -m mtcache.coordinator --detach``, which forks the coordinator into its
own session (output to ``<socket>.log``, mode 0600) and exits as soon as it
serves, or at once with its exit status if it could not (3: another coordinator
holds ``<socket>.lock``, which it keeps for its lifetime, so even a racing manual
start cannot run two). The others, once they get the lock, find it answering, or
find the failure just noted in the lock file, and start nothing.

The coordinator started here exits after ``idle_exit`` seconds without a client
(``MTCACHE_IDLE_EXIT``, 10 minutes by default), so it does not outlive the
scripts that needed it.

The Redis URL (it may hold a password) reaches a coordinator started here in
its environment (``REDIS_URL``), never on its command line.

A server's master starts and stops one with the public
:func:`mtcache.start_coordinator` / :func:`mtcache.stop_coordinator`
(:mod:`mtcache.lifecycle`), which use the helpers here.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from .trust import ensure_socket_dir

__all__ = [
    "ALREADY_RUNNING",
    "LATE_SOCKET_WAIT",
    "SPAWN_DEADLINE",
    "can_connect",
    "coordinator_command",
    "coordinator_env",
    "ensure_coordinator",
    "open_private",
    "wait_until_ready",
]

#: How long a started coordinator may take to answer.
SPAWN_DEADLINE = 15.0
#: How long a client waits for the socket of a coordinator that holds the lock but
#: does not answer (its socket file was deleted: it makes it again within a second).
LATE_SOCKET_WAIT = 2.0
#: The exit status of a coordinator that found another one holding the lock.
ALREADY_RUNNING = 3


def can_connect(path: str) -> bool:
    """True if something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def coordinator_command(
    socket_path: str,
    *,
    no_redis: bool = False,
    namespace: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of a coordinator on ``socket_path``. It never carries the
    Redis URL (any local user may read a command line with ``ps``): pass that in
    the environment, :func:`coordinator_env`."""
    cmd = [sys.executable, "-m", "mtcache.coordinator", "--socket", socket_path]
    if namespace:
        cmd += ["--namespace", namespace]
    if no_redis:
        cmd.append("--no-redis")
    return cmd + list(extra)


def coordinator_env(redis_url: str | None) -> dict[str, str] | None:
    """The environment of a coordinator started here: this process's, with
    ``REDIS_URL`` set to ``redis_url`` (None: inherited unchanged, returns None).
    A process's environment is readable by its own user only."""
    return None if redis_url is None else {**os.environ, "REDIS_URL": redis_url}


def open_private(path: str, flags: int) -> int:
    """Open (creating it mode 0600) the file ``path`` of this user, not following a
    symlink; an existing one that is open to others is made 0600."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def wait_until_ready(socket_path: str, *, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll until the socket accepts connections (True), ``proc`` exits or the
    ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not can_connect(socket_path):
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # readiness poll with a deadline
    return True


def ensure_coordinator(
    socket_path: str,
    *,
    namespace: str,
    redis_url: str | None = None,
    idle_exit: float = 0.0,
    extra_args: tuple[str, ...] = (),
) -> bool:
    """Make sure a coordinator answers on ``socket_path``, starting one if needed.

    The one started exits after ``idle_exit`` seconds without any client (0: never).
    Returns True once one answers. False, without waiting for any deadline, when
    the one started exits without serving (its log is ``<socket>.log``); when it
    found another coordinator holding the socket's lock, after waiting at most
    :data:`LATE_SOCKET_WAIT` for that one's socket. Never raises for a
    coordinator that fails to start.

    :raises UntrustedSocket: the socket's folder is not this user's alone.
    :raises OSError: the folder or the spawn lock cannot be created.
    """
    ensure_socket_dir(socket_path)
    cmd = coordinator_command(
        socket_path, namespace=namespace, extra=("--detach", "--idle-exit", repr(float(idle_exit)), *extra_args)
    )
    status = _spawn_once(socket_path, cmd, coordinator_env(redis_url))
    if status is None:
        return True
    if status in (0, ALREADY_RUNNING):
        return wait_until_ready(socket_path, timeout=LATE_SOCKET_WAIT)
    return can_connect(socket_path)


def _spawn_once(socket_path: str, cmd: list[str], env: dict[str, str] | None) -> int | None:
    """Under the exclusive spawn lock, held for this one attempt: None if a
    coordinator answers; else the exit status of ``cmd`` (a ``--detach`` start,
    which exits once the coordinator serves or failed; -1 if it did not within
    :data:`SPAWN_DEADLINE`). A failure noted in the lock file by another worker
    less than :data:`LATE_SOCKET_WAIT` ago is returned instead of starting again,
    so workers arriving together do not each pay for a doomed start."""
    lock_fd = open_private(f"{socket_path}.spawn.lock", os.O_RDWR)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if can_connect(socket_path):
            return None
        recent = _recent_failure(lock_fd)
        if recent is not None:
            return recent
        log_fd = open_private(f"{socket_path}.log", os.O_WRONLY | os.O_APPEND)
        try:
            status = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=env,
                timeout=SPAWN_DEADLINE, check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            status = -1
        finally:
            os.close(log_fd)
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{status} {time.monotonic()!r}".encode(), 0)  # repr: exact
        return status
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)


def _recent_failure(lock_fd: int) -> int | None:
    """The status noted in the spawn lock file if it is a failure (not 0) noted
    less than :data:`LATE_SOCKET_WAIT` ago (CLOCK_MONOTONIC is one clock for the
    whole host), else None."""
    try:
        status, noted = os.pread(lock_fd, 64, 0).split()
        code, age = int(status), time.monotonic() - float(noted)
    except ValueError:  # empty (never noted) or garbled
        return None
    return code if code != 0 and 0 <= age < LATE_SOCKET_WAIT else None
