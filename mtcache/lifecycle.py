"""Start and stop the host's coordinator from a server's hooks: the public lifecycle API.

A server's master (gunicorn's ``on_starting`` / ``on_exit``, a worker pool's parent,
a script) calls :func:`start_coordinator` before it starts workers and
:func:`stop_coordinator` after they are gone::

    handle = mtcache.start_coordinator()      # starts one, or joins the one already serving
    ...
    mtcache.stop_coordinator(handle)          # stops it if no other user is left

Several processes may use one coordinator this way, and it stops only when the last
of them lets go. That is what a gunicorn binary upgrade (``USR2``) needs: the new
master joins the coordinator the old master started, the old master's exit leaves
it running, and the new master's exit stops it. Each user holds a shared ``flock``
of ``<socket>.users`` (which also records the pid of the coordinator started this
way); the last one out takes it exclusively and stops the coordinator, while a
process calling :func:`start_coordinator` meanwhile waits for that stop to finish
and then starts a new one. A coordinator that something else started (a client's
``spawn=True``, ``mtcache-coordinator`` under systemd) is joined but never stopped
from here.

The coordinator started here runs ``python -m mtcache.coordinator`` as a child of
the caller, in its own session (a Ctrl-C meant for a server does not stop it
before the server's workers are done), logging to ``<socket>.log`` (mode 0600).
The Redis URL and settings reach it in its environment, never on its command line
(where ``ps`` would show a password to every local user).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mtcache.client.spawn import ALREADY_RUNNING, SPAWN_DEADLINE, open_private
from mtcache.client.trust import check_peer, check_socket_dir, ensure_socket_dir
from mtcache.config import Settings
from mtcache.errors import UntrustedSocket

__all__ = ["CoordinatorHandle", "start_coordinator", "stop_coordinator"]

#: Coordinators this process started and left running for their other users, by pid: kept so
#: that this process can still reap them (whoever stops them), and reaped as they exit.
_children: dict[int, subprocess.Popen[bytes]] = {}


class CoordinatorHandle:
    """One use of a coordinator, from :func:`start_coordinator` until
    :func:`stop_coordinator`.

    ``socket_path`` is where it serves, ``pid`` its process, ``started`` whether
    this call started it (False: it joined one already serving), ``log_path``
    where a coordinator started here logs (None for one joined: ``health()``'s
    ``details["log"]`` says where any coordinator logs).
    """

    def __init__(
        self, socket_path: str, pid: int, started: bool, log_path: str | None,
        users_fd: int, proc: subprocess.Popen[bytes] | None,
    ) -> None:
        self.socket_path = socket_path
        self.pid = pid
        self.started = started
        self.log_path = log_path
        self._users_fd: int | None = users_fd
        self._proc = proc

    @property
    def released(self) -> bool:
        """True once :func:`stop_coordinator` was called with this handle."""
        return self._users_fd is None

    def __repr__(self) -> str:
        state = "released" if self.released else "in use"
        return (f"CoordinatorHandle(socket_path={self.socket_path!r}, pid={self.pid}, started={self.started}, "
                f"{state})")


def start_coordinator(
    socket_path: str | None = None,
    *,
    namespace: str | None = None,
    redis_url: str | None = None,
    use_redis: bool = True,
    idle_exit: float = 0.0,
    log_path: str | None = None,
    log_level: str = "INFO",
    new_session: bool = True,
    timeout: float = SPAWN_DEADLINE,
    **settings: Any,
) -> CoordinatorHandle:
    """Use the coordinator serving ``socket_path``, starting one if none answers;
    return once one answers.

    ``socket_path`` and ``namespace`` default as a client's do (``MTCACHE_SOCKET``,
    ``MTCACHE_NAMESPACE``, ``.env``), so a server's workers with default clients
    find it. The rest applies only to a coordinator started here: ``redis_url``
    (default ``REDIS_URL``...; ``use_redis=False`` serves L1 alone), ``idle_exit``
    (seconds without any client after which it exits; 0, the default: never),
    ``log_path`` (default ``<socket>.log``), ``log_level``, ``new_session`` (its own
    session, the default), and any other :class:`~mtcache.Settings` field by name
    (``l1_capacity=20_000``), passed in its environment.

    A coordinator already serving is joined as it is (its settings are its own).

    :raises TypeError: an unknown setting name.
    :raises ValueError: a setting is invalid (the message names it).
    :raises UntrustedSocket: the socket's folder, or the process serving it, is not
        this user's.
    :raises RuntimeError: the coordinator started here exited or did not answer
        within ``timeout`` seconds; the message ends with its log.
    """
    resolved = Settings.load(socket_path=socket_path, namespace=namespace, redis_url=redis_url, **settings)
    if not isinstance(idle_exit, (int, float)) or isinstance(idle_exit, bool) or not 0 <= idle_exit < float("inf"):
        raise ValueError(f"idle_exit must be a non-negative number of seconds (0: never), got {idle_exit!r}")
    path = resolved.socket_path
    ensure_socket_dir(path)
    log_file = log_path or f"{path}.log"
    users_fd = _lock_users(f"{path}.users", fcntl.LOCK_SH)  # waits for a stop in progress to finish
    try:
        pid = _serving_pid(path)
        if pid is not None:
            return CoordinatorHandle(path, pid, False, None, users_fd, None)
        proc = _run(resolved, settings, use_redis=use_redis, idle_exit=idle_exit, log_file=log_file,
                    log_level=log_level, new_session=new_session)
        pid = _wait_serving(path, proc, timeout)
        if pid is None:
            _end(proc, timeout)
            if proc.returncode != ALREADY_RUNNING or (pid := _serving_pid(path)) is None:
                tail = Path(log_file).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the mtcache coordinator on {path} did not start; its log:\n{tail}")
        if pid != proc.pid:  # another user's start won the race: join that one
            _end(proc, timeout)
            return CoordinatorHandle(path, pid, False, None, users_fd, None)
        os.ftruncate(users_fd, 0)
        os.pwrite(users_fd, f"{pid}\n".encode(), 0)
        return CoordinatorHandle(path, pid, True, log_file, users_fd, proc)
    except BaseException:
        os.close(users_fd)
        raise


def stop_coordinator(handle: CoordinatorHandle, *, timeout: float = 10.0) -> bool:
    """Let go of ``handle``'s coordinator, and stop it if no other process uses it
    through :func:`start_coordinator` and it was started that way: SIGTERM (it
    removes its socket, lock and shared memory), wait, SIGKILL after ``timeout``
    seconds. Returns True if this call stopped it; False if it was left running
    for another user, was not started by :func:`start_coordinator`, or was already
    gone. A second call with the same handle does nothing (False).
    """
    fd = handle._users_fd
    if fd is None:
        return False
    handle._users_fd = None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process still uses it
        recorded = os.pread(fd, 32, 0).split()
        serving = _serving_pid(handle.socket_path, trusted_only=True)
        stopped = serving is not None and recorded == [str(serving).encode()]
        if stopped:
            assert serving is not None
            _terminate(serving, handle._proc, timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{handle.socket_path}.users")  # still locked: see _lock_users
        return stopped
    finally:
        os.close(fd)
        proc = handle._proc
        if proc is not None and proc.poll() is None:
            _children[proc.pid] = proc  # still serving others: reaped once it exits
        for pid, child in list(_children.items()):
            if child.poll() is not None:
                del _children[pid]


def _lock_users(path: str, operation: int) -> int:
    """Open ``path`` (created 0600) and ``flock`` it with ``operation``, waiting. The
    last user removes the file while it holds it exclusively, so a lock taken on a
    file that was removed meanwhile is let go and taken again on the one now there."""
    while True:
        fd = open_private(path, os.O_RDWR)
        try:
            fcntl.flock(fd, operation)
            held = os.fstat(fd)
            with contextlib.suppress(FileNotFoundError):
                current = os.stat(path)
                if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _serving_pid(path: str, *, trusted_only: bool = False) -> int | None:
    """The pid of the process serving the socket ``path`` (``SO_PEERCRED``), or None
    if nothing answers there.

    :raises UntrustedSocket: the folder or the process serving it is not this user's
        (with ``trusted_only``: None instead).
    """
    try:
        check_socket_dir(path)
    except FileNotFoundError:
        return None
    except UntrustedSocket:
        if trusted_only:
            return None
        raise
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return None
        try:
            return check_peer(s)
        except UntrustedSocket:
            if trusted_only:
                return None
            raise


def _run(
    settings: Settings, overrides: dict[str, Any], *, use_redis: bool, idle_exit: float, log_file: str,
    log_level: str, new_session: bool,
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "mtcache.coordinator", "--socket", settings.socket_path,
           "--namespace", settings.namespace, "--log-level", log_level, "--idle-exit", repr(float(idle_exit))]
    if not use_redis:
        cmd.append("--no-redis")
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    env.update({Settings._ENV[name]: str(getattr(settings, name)) for name in overrides})
    log_fd = open_private(log_file, os.O_WRONLY | os.O_APPEND)
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                start_new_session=new_session, env=env)
    finally:
        os.close(log_fd)


def _wait_serving(path: str, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Poll until something serves ``path`` (its pid), ``proc`` exits or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        pid = _serving_pid(path)
        if pid is not None:
            return pid
        if proc.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.01)  # readiness poll with a deadline


def _end(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Stop (if it still runs) and reap a child coordinator."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM the coordinator ``pid`` and wait until it has exited (SIGKILL after
    ``timeout``). It may be another process's child (a master that started it and
    exited): then its exit is seen in /proc, not by waiting for it."""
    proc = proc if proc is not None and proc.pid == pid else _children.pop(pid, None)
    if proc is not None:
        _end(proc, timeout)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while not _gone(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)  # waiting for a process that is not our child to exit
        else:
            return


def _gone(pid: int) -> bool:
    """True once process ``pid`` has exited (a zombie its parent did not reap yet included)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")
