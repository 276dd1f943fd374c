"""Start a coordinator when none answers on the socket.

Many workers may find the socket dead at the same moment (gunicorn starting 8
workers). They serialise on an exclusive ``flock`` of ``<socket>.spawn.lock``;
the first starts ``python -m mtcache.coordinator --detach`` (it forks into its
own session, output to ``<socket>.log``) and waits until it answers; the others, once they get the
lock, find it answering and start nothing. The coordinator itself holds
``<socket>.lock`` for its lifetime, so even a racing manual start cannot run two.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["SPAWN_DEADLINE", "can_connect", "ensure_coordinator"]

#: How long a spawning worker waits for the new coordinator to answer.
SPAWN_DEADLINE = 10.0


def can_connect(path: str) -> bool:
    """True if something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


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
        args = [sys.executable, "-m", "mtcache.coordinator", "--detach", "--socket", socket_path]
        args += ["--namespace", namespace]
        if redis_url:
            args += ["--redis-url", redis_url]
        args += list(extra_args)
        with open(f"{socket_path}.log", "ab") as log:
            # --detach: the coordinator forks and its first process exits at once, so
            # this worker reaps it here and never keeps a zombie or a child to wait for
            subprocess.run(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, check=False)
        deadline = time.monotonic() + SPAWN_DEADLINE
        while time.monotonic() < deadline:
            if can_connect(socket_path):
                return True
            time.sleep(0.01)  # readiness poll with a deadline
        return False
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
