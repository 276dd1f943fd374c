"""A coordinator started by a client or a server's master never shows the Redis
password to other local users (issue 11, "Security"): the URL travels in its
environment, not on its command line, and its log and spawn lock are 0600."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtcache import start_coordinator, stop_coordinator
from mtcache.client.spawn import ensure_coordinator
from tests.coordinator_proc import kill_spawned, lock_holders
from tests.redis_server import free_port

NOBODY = "nobody"


@pytest.fixture
def secret_url() -> tuple[str, str]:
    """A Redis URL with a fresh password, to a port where nothing listens (the
    coordinator starts degraded); returns (url, password)."""
    password = f"pw-{secrets.token_hex(12)}"
    return f"redis://:{password}@127.0.0.1:{free_port()}/0", password


@pytest.fixture
def spawned(short_tmp: Path) -> Iterator[str]:
    """A socket path whose spawned (detached) coordinator is stopped at the end."""
    path = str(short_tmp / "c.sock")
    try:
        yield path
    finally:
        kill_spawned(path)


def _ps_as_nobody() -> str:
    """Every command line on the host, as uid ``nobody`` sees them."""
    if os.geteuid() != 0:
        pytest.skip("running ps as another user (nobody) needs root to switch to it")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("runuser (util-linux) is not installed")
    run = subprocess.run(
        [runuser, "-u", NOBODY, "--", "ps", "-e", "-ww", "-o", "args"],
        capture_output=True, text=True, timeout=30, check=False, cwd="/",
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def _environ_readable_by_nobody(pid: int) -> bool:
    run = subprocess.run(
        ["runuser", "-u", NOBODY, "--", "cat", f"/proc/{pid}/environ"],
        capture_output=True, timeout=30, check=False, cwd="/",
    )
    return run.returncode == 0


def _check_hidden(pid: int, socket_path: str, log_path: str, url: str, password: str) -> None:
    listing = _ps_as_nobody()
    assert socket_path in listing  # nobody does see the coordinator's command line ...
    assert password not in listing  # ... but not the password
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"REDIS_URL={url}".encode() in environ  # the coordinator got the URL, in its environment
    assert not _environ_readable_by_nobody(pid)
    log = Path(log_path).read_text()
    assert "redis://:***@" in log  # it did try that Redis, and logged the URL redacted
    assert password not in log
    assert stat.S_IMODE(os.stat(log_path).st_mode) == 0o600


def test_a_client_spawned_coordinator_keeps_the_password_out_of_ps(
    spawned: str, secret_url: tuple[str, str]
) -> None:
    url, password = secret_url
    assert ensure_coordinator(spawned, namespace="default", redis_url=url)
    [pid] = lock_holders(spawned)
    _check_hidden(pid, spawned, f"{spawned}.log", url, password)
    assert stat.S_IMODE(os.stat(f"{spawned}.spawn.lock").st_mode) == 0o600
    assert password not in Path(f"{spawned}.spawn.lock").read_text()


def test_start_coordinator_keeps_the_password_out_of_ps(short_tmp: Path, secret_url: tuple[str, str]) -> None:
    url, password = secret_url
    path = str(short_tmp / "c.sock")
    handle = start_coordinator(path, redis_url=url)
    try:
        assert password not in Path(f"/proc/{handle.pid}/cmdline").read_text()
        _check_hidden(handle.pid, path, f"{path}.log", url, password)
    finally:
        stop_coordinator(handle)


def test_an_existing_log_open_to_others_is_made_private(short_tmp: Path) -> None:
    path = str(short_tmp / "c.sock")
    log = Path(f"{path}.log")
    log.write_text("an older run\n")
    log.chmod(0o644)
    handle = start_coordinator(path, use_redis=False)
    try:
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert log.read_text().startswith("an older run\n")  # appended to, not truncated
    finally:
        stop_coordinator(handle)
