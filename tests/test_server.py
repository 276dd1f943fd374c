"""The coordinator process from the outside: bad peers, permissions, signals, restarts."""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from mtcache import Client
from mtcache.protocol import MAX_FRAME, PROTOCOL_VERSION, FrameDecoder, Op, Status, encode_frame
from tests.coordinator_proc import CoordinatorProcess

#: how long a test waits for something that must happen (a failure, never a pause)
WAIT = 10.0
NOBODY = 65534


# -- helpers --------------------------------------------------------------------------


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the coordinator sends until it closes the connection (a timeout
    here means it kept the connection open)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _hello(rid: int = 1, version: int = PROTOCOL_VERSION, namespace: str = "default") -> bytes:
    return encode_frame([Op.HELLO, rid, version, namespace, os.getpid()])


def _read_reply(sock: socket.socket) -> list[Any]:
    decoder = FrameDecoder()
    while True:
        chunk = sock.recv(65536)
        assert chunk, "the coordinator closed the connection instead of replying"
        replies = decoder.feed(chunk)
        if replies:
            return replies[0]


def _hello_info(path: str) -> dict[str, Any]:
    with _connect(path) as sock:
        sock.sendall(_hello())
        reply = _read_reply(sock)
    assert reply[:2] == [1, Status.OK], reply
    return reply[2]


def _client(path: str) -> Client:
    # no near cache: every get must reach the coordinator
    return Client(path, spawn=False, near_capacity=0)


def _works(client: Client, tag: str) -> None:
    client.set(tag, {"tag": tag})
    assert client.get(tag) == {"tag": tag}
    assert client.health().coordinator == "ok"


def _counter(client: Client, name: str) -> int:
    return client.stats().coordinator[name]


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition with a deadline


@pytest.fixture
def good(coordinator_no_redis: CoordinatorProcess) -> Iterator[Client]:
    """A well-behaved client of the coordinator, checked to work."""
    with _client(coordinator_no_redis.socket_path) as client:
        _works(client, "before")
        yield client


def _assert_still_serving(coordinator: CoordinatorProcess, client: Client, errors_before: int) -> None:
    assert coordinator.proc is not None and coordinator.proc.poll() is None
    _works(client, "after")
    assert _counter(client, "protocol_errors") == errors_before + 1
    _eventually(lambda: _counter(client, "connections") == 1, "the bad connection to be dropped")
    with _client(coordinator.socket_path) as fresh:
        _works(fresh, "fresh")


# -- bad peers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-request"),
        pytest.param(b"\x00\x00\x00\x01\xc1", id="undecodable-body"),
        pytest.param(b"\x00\x00\x00\x05hello", id="body-with-trailing-bytes"),
        pytest.param(struct.pack(">I", 3) + msgpack.packb({"a": 1}), id="map-not-array"),
        pytest.param(encode_frame([Op.HELLO, 1]), id="hello-of-wrong-arity"),
        pytest.param(encode_frame([99, 1]), id="unknown-op"),
        pytest.param(encode_frame([Op.HELLO, True, PROTOCOL_VERSION, "default", 1]), id="bool-request-id"),
    ],
)
def test_garbage_closes_only_that_connection(
    coordinator_no_redis: CoordinatorProcess, good: Client, payload: bytes
) -> None:
    errors = _counter(good, "protocol_errors")
    with _connect(coordinator_no_redis.socket_path) as sock:
        sock.sendall(payload)
        assert _read_until_closed(sock) == b""
    _assert_still_serving(coordinator_no_redis, good, errors)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param([Op.GET, 2, ""], id="empty-key"),
        pytest.param([Op.SET, 2, "k", b"v", -1], id="negative-ttl"),
        pytest.param([Op.HELLO, 2, PROTOCOL_VERSION, "default", 1], id="second-hello"),
        pytest.param([Op.LEASE, 2, "k", float("nan")], id="nan-wait"),
    ],
)
def test_bad_request_after_hello_closes_the_connection(
    coordinator_no_redis: CoordinatorProcess, good: Client, request_: list[Any]
) -> None:
    errors = _counter(good, "protocol_errors")
    with _connect(coordinator_no_redis.socket_path) as sock:
        sock.sendall(_hello())
        assert _read_reply(sock)[:2] == [1, Status.OK]
        sock.sendall(encode_frame(request_))
        assert _read_until_closed(sock) == b""
    _assert_still_serving(coordinator_no_redis, good, errors)


def test_truncated_frame_then_half_close(coordinator_no_redis: CoordinatorProcess, good: Client) -> None:
    errors = _counter(good, "protocol_errors")
    with _connect(coordinator_no_redis.socket_path) as sock:
        sock.sendall(_hello())
        assert _read_reply(sock)[1] == Status.OK
        frame = encode_frame([Op.GET, 2, "some-key"])
        sock.sendall(frame[:-3])
        sock.shutdown(socket.SHUT_WR)
        assert _read_until_closed(sock) == b""
    _assert_still_serving(coordinator_no_redis, good, errors)


def test_truncated_frame_then_close(coordinator_no_redis: CoordinatorProcess, good: Client) -> None:
    errors = _counter(good, "protocol_errors")
    with _connect(coordinator_no_redis.socket_path) as sock:
        sock.sendall(struct.pack(">I", 100) + b"x" * 10)
    # we closed first, so the only sign the coordinator saw it is its counter
    _eventually(lambda: _counter(good, "protocol_errors") == errors + 1, "the truncated frame to be counted")
    _assert_still_serving(coordinator_no_redis, good, errors)


def test_oversized_length_prefix_is_refused_before_the_body(
    coordinator_no_redis: CoordinatorProcess, good: Client
) -> None:
    errors = _counter(good, "protocol_errors")
    with _connect(coordinator_no_redis.socket_path) as sock:
        sock.sendall(_hello())
        assert _read_reply(sock)[1] == Status.OK
        # only the prefix: the coordinator must not wait for 16 MiB that never come
        sock.sendall(struct.pack(">I", MAX_FRAME + 1))
        assert _read_until_closed(sock) == b""
    _assert_still_serving(coordinator_no_redis, good, errors)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param([Op.PING, 1], id="ping"),
        pytest.param([Op.GET, 1, "k"], id="get"),
        pytest.param([Op.STATS, 1], id="stats"),
    ],
)
def test_request_before_hello_is_refused(
    coordinator_no_redis: CoordinatorProcess, good: Client, request_: list[Any]
) -> None:
    errors = _counter(good, "protocol_errors")
    with _connect(coordinator_no_redis.socket_path) as sock:
        sock.sendall(encode_frame(request_))
        assert _read_until_closed(sock) == b""
    _assert_still_serving(coordinator_no_redis, good, errors)


def test_hello_with_wrong_protocol_version(coordinator_no_redis: CoordinatorProcess, good: Client) -> None:
    errors = _counter(good, "protocol_errors")
    with _connect(coordinator_no_redis.socket_path) as sock:
        sock.sendall(_hello(rid=7, version=PROTOCOL_VERSION + 98))
        data = _read_until_closed(sock)
    [reply] = FrameDecoder().feed(data)
    assert reply[:3] == [7, Status.ERROR, "protocol"]
    assert f"protocol {PROTOCOL_VERSION}" in reply[3]
    assert str(PROTOCOL_VERSION + 98) in reply[3]
    _assert_still_serving(coordinator_no_redis, good, errors)


def test_hello_with_wrong_namespace(coordinator_no_redis: CoordinatorProcess, good: Client) -> None:
    errors = _counter(good, "protocol_errors")
    with _connect(coordinator_no_redis.socket_path) as sock:
        sock.sendall(_hello(rid=3, namespace="other"))
        data = _read_until_closed(sock)
    [reply] = FrameDecoder().feed(data)
    assert reply[:3] == [3, Status.ERROR, "namespace"]
    assert "'default'" in reply[3] and "'other'" in reply[3]
    _assert_still_serving(coordinator_no_redis, good, errors)


def test_hello_reply_describes_the_coordinator(coordinator_no_redis: CoordinatorProcess) -> None:
    info = _hello_info(coordinator_no_redis.socket_path)
    assert info["protocol"] == PROTOCOL_VERSION
    assert info["pid"] == coordinator_no_redis.pid
    assert info["namespace"] == "default"
    assert Path(info["versions"]).exists()
    assert isinstance(info["generation"], int)


# -- permissions -------------------------------------------------------------------------


def test_socket_is_0600_in_a_0700_folder(short_tmp: Path) -> None:
    folder = short_tmp / "run"
    coordinator = CoordinatorProcess(folder / "c.sock", redis_url=None)
    coordinator.log_path = short_tmp / "coordinator.log"  # the harness's default lies in the missing folder
    assert not folder.exists()
    coordinator.start()
    try:
        sock_mode = Path(coordinator.socket_path).stat().st_mode
        assert stat.S_ISSOCK(sock_mode)
        assert stat.S_IMODE(sock_mode) == 0o600
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(_hello_info(coordinator.socket_path)["versions"]).stat().st_mode) == 0o600
    finally:
        assert coordinator.stop() == 0


_AS_NOBODY = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("connect-failed", exc.errno)
    sys.exit(0)
print("connected")
data = b""
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except (BrokenPipeError, ConnectionResetError):
    pass
print("closed", data.hex())
"""


def _python_for_nobody() -> str | None:
    for candidate in (sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(candidate):
            continue
        try:
            probe = subprocess.run(
                [candidate, "-I", "-c", "pass"], user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                capture_output=True, check=False,
            )
        except PermissionError:  # a folder on the way is closed to that uid
            continue
        if probe.returncode == 0:
            return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another uid needs root (to switch to uid 65534)")
def test_another_uid_is_refused(coordinator_no_redis: CoordinatorProcess, good: Client, short_tmp: Path) -> None:
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    path = coordinator_no_redis.socket_path
    assert Path(path).parent == short_tmp
    refused = _counter(good, "refused")
    # open the folder and the socket to everyone, so that the peer-uid check, not
    # the file permissions, is what refuses the connection
    os.chmod(short_tmp, 0o777)
    os.chmod(path, 0o666)
    try:
        run = subprocess.run(
            [python, "-I", "-c", _AS_NOBODY, path, _hello().hex()],
            user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", capture_output=True, text=True,
            timeout=WAIT * 2, check=False,
        )
    finally:
        os.chmod(path, 0o600)
        os.chmod(short_tmp, 0o700)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["connected", "closed"], run.stdout  # connected, then closed without a reply
    assert _counter(good, "refused") == refused + 1
    assert coordinator_no_redis.proc is not None and coordinator_no_redis.proc.poll() is None
    _works(good, "after")


# -- life cycle -----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(short_tmp: Path, sig: signal.Signals) -> None:
    coordinator = CoordinatorProcess(short_tmp / "c.sock", redis_url=None)
    coordinator.start()
    try:
        with _client(coordinator.socket_path) as client:
            _works(client, "k")
            versions = client._core.hello_info["versions"]
            assert Path(versions).exists()
            assert coordinator.proc is not None
            coordinator.proc.send_signal(sig)
            assert coordinator.proc.wait(timeout=WAIT) == 0, coordinator.log()
        assert not Path(coordinator.socket_path).exists()
        assert not Path(versions).exists()
    finally:
        coordinator.stop()


def _run_second(path: str) -> subprocess.CompletedProcess[str]:
    second = CoordinatorProcess(Path(path), redis_url=None)
    return subprocess.run(
        second.command(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=WAIT * 2, check=False
    )


def test_second_coordinator_exits_3_and_the_first_keeps_serving(
    coordinator_no_redis: CoordinatorProcess, good: Client
) -> None:
    run = _run_second(coordinator_no_redis.socket_path)
    assert run.returncode == 3, run.stderr
    assert "another coordinator" in run.stderr
    assert coordinator_no_redis.proc is not None and coordinator_no_redis.proc.poll() is None
    _works(good, "after")
    assert _counter(good, "connections") == 1


def test_second_coordinator_leaves_the_first_ones_socket(coordinator_no_redis: CoordinatorProcess) -> None:
    run = _run_second(coordinator_no_redis.socket_path)
    assert run.returncode == 3, run.stderr
    assert Path(coordinator_no_redis.socket_path).exists()
    with _client(coordinator_no_redis.socket_path) as fresh:
        _works(fresh, "fresh")


def test_killed_coordinators_segment_is_removed_by_the_next(short_tmp: Path) -> None:
    path = short_tmp / "c.sock"
    first = CoordinatorProcess(path, redis_url=None)
    first.start()
    old = Path(_hello_info(str(path))["versions"])
    try:
        first.kill()
        assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
        assert old.exists()
        second = CoordinatorProcess(path, redis_url=None)
        second.start()
        try:
            assert not old.exists()
            new = Path(_hello_info(str(path))["versions"])
            assert new != old
            assert new.exists()
            with _client(str(path)) as client:
                _works(client, "k")
        finally:
            assert second.stop() == 0
    finally:
        first.stop()
        old.unlink(missing_ok=True)  # only if the test failed: keep /dev/shm clean
