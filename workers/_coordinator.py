"""Run the host's coordinator as a child of a server's master process.

Shared by ``gunicorn.conf.py`` (imported as ``workers._coordinator``, the working
directory being on gunicorn's path) and ``pool.py`` (imported as ``_coordinator``,
its own folder being on the path). The coordinator reads ``REDIS_URL`` and the
other ``MTCACHE_*`` settings from the environment it inherits.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from mtcache.client.spawn import can_connect

__all__ = ["start_coordinator", "stop_coordinator"]

#: How long to wait for a new coordinator to answer, and for one to stop.
START_DEADLINE = 15.0
STOP_DEADLINE = 10.0


def start_coordinator(socket_path: str, *args: str) -> subprocess.Popen[bytes]:
    """Start ``python -m mtcache.coordinator --socket socket_path *args`` and return
    once the socket answers.

    The coordinator runs in its own session, so a Ctrl-C meant for the server does
    not stop it while workers still finish their requests: stop it with
    :func:`stop_coordinator`. Its output is appended to ``<socket_path>.log``. If
    another coordinator already serves the socket, this one exits at once (status
    3) and the one serving is used.

    :raises RuntimeError: it exited without a coordinator answering, or did not
        answer within :data:`START_DEADLINE` seconds (the message ends with its log).
    """
    folder = Path(socket_path).parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = Path(f"{socket_path}.log")
    cmd = [sys.executable, "-m", "mtcache.coordinator", "--socket", socket_path, *args]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + START_DEADLINE
    while not can_connect(socket_path):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_coordinator(proc)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the mtcache coordinator on {socket_path} did not start; its log:\n{tail}")
        time.sleep(0.01)  # readiness poll with a deadline
    return proc


def stop_coordinator(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM (the coordinator removes its socket and shared memory), wait, and
    SIGKILL after :data:`STOP_DEADLINE` seconds; return its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
