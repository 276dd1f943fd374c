"""A client talks to a coordinator of its own user only (issue 11, "Security").

The folder checks run as any user. The tests with a process of another user
(uid 65534, ``nobody``) need root to switch to it; they bind the fake
coordinator's socket first and drop to that uid before ``listen()``, since
``SO_PEERCRED`` reports the credentials of the process when it began listening.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtcache import AsyncClient, Client
from mtcache.client.spawn import can_connect
from mtcache.client.trust import UntrustedSocket, check_peer, check_socket_dir, ensure_socket_dir
from mtcache.config import default_socket_path
from mtcache.errors import CoordinatorUnavailable
from tests.coordinator_proc import CoordinatorProcess, lock_holders

NOBODY = 65534
WAIT = 10.0
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="running a process as another uid (65534) needs root to switch to it"
)

# binds the socket, opens the record file, drops to uid/gid 65534, then listens and
# appends every byte any connection sends to the record file
_FAKE_COORDINATOR = """
import os, socket, sys
path, record = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
out = open(record, "ab", buffering=0)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
s.listen(16)
print("listening", os.getpid(), flush=True)
while True:
    conn, _ = s.accept()
    conn.settimeout(5)
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            out.write(data)
    except OSError:
        pass
    conn.close()
"""


class FakeCoordinator:
    """A process of uid 65534 listening on ``socket_path`` that records what it receives."""

    def __init__(self, socket_path: Path, record: Path) -> None:
        self.socket_path = str(socket_path)
        self.record = record
        record.touch()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _FAKE_COORDINATOR, self.socket_path, str(record)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["listening"], line
        self.pid = int(line[1])

    def received(self) -> bytes:
        return self.record.read_bytes()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def nobody_folder(short_tmp: Path) -> Iterator[Path]:
    """A folder of uid 65534, mode 0700, inside the (root's) short_tmp."""
    folder = short_tmp / "nobody"
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    yield folder


# -- the default path and the folder ---------------------------------------------------------


def test_the_default_socket_path(monkeypatch: pytest.MonkeyPatch, short_tmp: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_tmp))
    assert default_socket_path("app") == str(short_tmp / "mtcache" / "app.sock")
    for unusable in ("", "relative/dir"):  # the XDG spec: ignore a relative path
        monkeypatch.setenv("XDG_RUNTIME_DIR", unusable)
        assert default_socket_path("app") == f"/tmp/mtcache-{os.getuid()}/app.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == f"/tmp/mtcache-{os.getuid()}/default.sock"


def test_a_private_folder_of_ours_is_accepted(short_tmp: Path) -> None:
    assert stat.S_IMODE(short_tmp.stat().st_mode) == 0o700
    check_socket_dir(str(short_tmp / "c.sock"))


def test_a_missing_folder_is_not_found_and_ensure_creates_it_0700(short_tmp: Path) -> None:
    path = str(short_tmp / "a" / "b" / "c.sock")
    with pytest.raises(FileNotFoundError):
        check_socket_dir(path)
    ensure_socket_dir(path)
    folder = short_tmp / "a" / "b"
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o700
    assert folder.lstat().st_uid == os.geteuid()
    ensure_socket_dir(path)  # present and right: accepted again
    check_socket_dir(path)


def test_a_folder_open_to_others_is_refused_and_not_repaired(short_tmp: Path) -> None:
    folder = short_tmp / "open"
    folder.mkdir()
    folder.chmod(0o755)
    path = str(folder / "c.sock")
    with pytest.raises(UntrustedSocket) as info:
        check_socket_dir(path)
    message = str(info.value)
    assert str(folder) in message and "mode 0755" in message and "mode 0700" in message
    assert isinstance(info.value, CoordinatorUnavailable) and isinstance(info.value, PermissionError)
    with pytest.raises(UntrustedSocket):
        ensure_socket_dir(path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # refused, never chmod-ed


def test_a_symlinked_folder_is_refused(short_tmp: Path) -> None:
    real = short_tmp / "real"
    real.mkdir(mode=0o700)
    link = short_tmp / "link"
    link.symlink_to(real)
    with pytest.raises(UntrustedSocket, match="symlink"):
        check_socket_dir(str(link / "c.sock"))
    with pytest.raises(UntrustedSocket, match="symlink"):
        ensure_socket_dir(str(link / "c.sock"))


def test_a_file_in_place_of_the_folder_is_refused(short_tmp: Path) -> None:
    (short_tmp / "file").write_text("")
    with pytest.raises(UntrustedSocket, match="not a folder"):
        check_socket_dir(str(short_tmp / "file" / "c.sock"))


def test_check_peer_accepts_our_own_process() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert check_peer(a) == os.getpid()


def test_the_client_refuses_a_coordinator_in_a_folder_open_to_others(
    coordinator_no_redis: CoordinatorProcess, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Client(coordinator_no_redis.socket_path, spawn=False, near_capacity=0) as client:
        assert client.health().coordinator == "ok"  # the same folder, still 0700: accepted
    short_tmp.chmod(0o755)
    try:
        with caplog.at_level(logging.WARNING, logger="mtcache.client"), \
                Client(coordinator_no_redis.socket_path, spawn=True, near_capacity=0) as client:
            client.set("k", "v")
            assert client.get("k") is None
            health = client.health()
            assert health.coordinator == "unavailable"
    finally:
        short_tmp.chmod(0o700)
    assert "refusing to use a coordinator socket" in caplog.text and "mode 0755" in caplog.text
    # the reason reaches health() (and so `mtcache health`), not only the log
    assert "refusing to use a coordinator socket" in health.details["reason"]
    assert "mode 0755" in health.details["reason"]
    assert lock_holders(coordinator_no_redis.socket_path) == [coordinator_no_redis.pid]  # nothing spawned


async def test_the_async_client_refuses_a_coordinator_in_a_folder_open_to_others(
    coordinator_no_redis: CoordinatorProcess, short_tmp: Path
) -> None:
    os.chmod(short_tmp, 0o755)
    try:
        async with AsyncClient(coordinator_no_redis.socket_path, spawn=True, near_capacity=0) as client:
            assert await client.set("k", "v") is False
            assert (await client.health()).coordinator == "unavailable"
    finally:
        os.chmod(short_tmp, 0o700)


# -- another user's coordinator ----------------------------------------------------------


@needs_root
def test_a_coordinator_of_another_user_in_its_folder_receives_nothing(
    nobody_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the attack: uid 65534 made the socket folder first and serves a fake coordinator in it
    fake = FakeCoordinator(nobody_folder / "c.sock", nobody_folder / "received")
    try:
        assert can_connect(fake.socket_path)  # root could connect and would send
        with caplog.at_level(logging.WARNING, logger="mtcache.client"), \
                Client(fake.socket_path, spawn=True, near_capacity=0) as client:
            assert client.set("session:42", {"token": "s3cr3t"}) is False
            assert client.get("session:42") is None
            health = client.health()
        assert health.coordinator == "unavailable" and health.mode == "degraded"
        refusals = [r for r in caplog.records if "refusing to use a coordinator socket" in r.getMessage()]
        assert len(refusals) == 1, caplog.text  # logged once
        assert f"owned by uid {NOBODY}" in refusals[0].getMessage()
        time.sleep(0.2)  # anything sent would be in the record by now
        assert fake.received() == b""
        assert not (nobody_folder / "c.sock.spawn.lock").exists()  # and nothing was spawned there
    finally:
        fake.stop()


@needs_root
def test_a_peer_of_another_user_is_refused_even_in_our_folder(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the folder passes the check (ours, 0700); only SO_PEERCRED tells the peer is not us
    fake = FakeCoordinator(short_tmp / "c.sock", short_tmp / "received")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(fake.socket_path)
            with pytest.raises(UntrustedSocket) as info:
                check_peer(raw)
        assert f"pid {fake.pid}" in str(info.value) and f"uid {NOBODY}" in str(info.value)
        with caplog.at_level(logging.WARNING, logger="mtcache.client"), \
                Client(fake.socket_path, spawn=True, near_capacity=0) as client:
            client.set("session:42", {"token": "s3cr3t"})
            health = client.health()
            assert health.coordinator == "unavailable"
        assert f"uid {NOBODY}" in caplog.text
        reason = health.details["reason"]
        assert f"refusing the coordinator socket served by pid {fake.pid} running as uid {NOBODY}" in reason
        refusals = [r for r in caplog.records if "refusing the coordinator socket" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].levelname == "ERROR", caplog.text
        time.sleep(0.2)
        assert fake.received() == b""
    finally:
        fake.stop()


@needs_root
async def test_the_async_client_refuses_a_peer_of_another_user(short_tmp: Path) -> None:
    fake = FakeCoordinator(short_tmp / "c.sock", short_tmp / "received")
    try:
        async with AsyncClient(fake.socket_path, spawn=True, near_capacity=0) as client:
            assert await client.set("session:42", {"token": "s3cr3t"}) is False
            assert (await client.health()).coordinator == "unavailable"
        await asyncio.sleep(0.2)
        assert fake.received() == b""
    finally:
        fake.stop()
