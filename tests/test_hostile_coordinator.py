"""A coordinator's replies are not trusted either (issue 11): whatever a broken or hostile coordinator
answers, the reply check ends in ProtocolError, and no client call raises anything but what its
caller's own input deserves (a malformed reply is a coordinator fault: the call degrades)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtcache import AsyncClient, Client
from mtcache.errors import ProtocolError
from mtcache.protocol import PROTOCOL_VERSION, FrameDecoder, Op, Status, check_reply, encode_frame
from mtcache.shm import VersionTable

_atoms = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True),
                   st.text(max_size=8), st.binary(max_size=8))
_values = st.recursive(_atoms, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                       max_leaves=10)
_statuses = st.sampled_from([Status.OK, Status.MISS, Status.ERROR, Status.GRANTED, Status.COMPUTE_ERROR,
                             Status.TIMEOUT, 99, -1])
_replies = st.one_of(_values, st.lists(_values, max_size=5),
                     st.builds(lambda rid, status, rest: [rid, status, *rest], st.integers(0, 3), _statuses,
                               st.lists(_values, max_size=4)))
_ops = st.sampled_from([v for k, v in vars(Op).items() if not k.startswith("_")])


@given(_ops, _replies)
def test_the_reply_check_accepts_or_raises_protocol_error(op: int, reply: Any) -> None:
    try:
        checked = check_reply(op, reply)
    except ProtocolError:
        return
    assert checked is reply


def test_well_formed_replies_pass_the_check() -> None:
    assert check_reply(Op.GET, [1, Status.OK, b"v", 3, 1.5])
    assert check_reply(Op.GET, [1, Status.MISS, 0])
    assert check_reply(Op.SET, [1, Status.OK, 7, True])
    assert check_reply(Op.LEASE, [1, Status.GRANTED, b"t" * 16, 2, None])
    assert check_reply(Op.LEASE, [1, Status.TIMEOUT, b"stale value"])
    assert check_reply(Op.PING, [1, Status.ERROR, "internal", "boom"])
    with pytest.raises(ProtocolError):
        check_reply(Op.HEALTH, [1, Status.OK, {"coordinator": "ok"}])  # the IndexError of issue 11
    with pytest.raises(ProtocolError):
        check_reply(Op.GET, [1, Status.OK, b"v", -1, 1.0])


class FakeCoordinator:
    """Answers the hello as a coordinator would (with a real version table), then every request with
    the next of ``answers`` (raw frames), in a thread; counts the requests it saw."""

    def __init__(self, path: str, table: VersionTable) -> None:
        self.path, self.table = path, table
        self.answers: list[bytes] = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = FrameDecoder()
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for msg in decoder.feed(data):
                    if msg[0] == Op.HELLO:
                        info = {"protocol": PROTOCOL_VERSION, "pid": os.getpid(), "namespace": "default",
                                "versions": self.table.path, "generation": self.table.generation,
                                "mirror": None, "mirror_generation": 0}
                        frame = encode_frame([msg[1], Status.OK, info])
                    else:
                        with self.lock:
                            frame = self.answers.pop(0) if self.answers else encode_frame([msg[1], Status.ERROR])
                    try:
                        conn.sendall(frame)
                    except OSError:
                        return

    def close(self) -> None:
        self.closed = True
        self.sock.close()


@pytest.fixture
def fake(short_tmp: Path) -> Iterator[FakeCoordinator]:
    table = VersionTable.create(64, directory=short_tmp)
    server = FakeCoordinator(str(short_tmp / "fake.sock"), table)
    try:
        yield server
    finally:
        server.close()
        table.close()


def _frames(reply: Any, raw: bytes) -> bytes:
    try:
        body = msgpack.packb(reply, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        body = raw
    return len(body).to_bytes(4, "big") + body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_replies, st.binary(max_size=12)), min_size=8, max_size=8))
def test_no_client_call_raises_on_hostile_replies(fake: FakeCoordinator, answers: list[tuple[Any, bytes]]) -> None:
    with fake.lock:
        fake.answers = [_frames(reply, raw) for reply, raw in answers]
    with Client(fake.path, spawn=False, request_timeout=0.5) as client:
        client._core._retry_at = 0.0
        client.get("k")
        client._core._retry_at = 0.0
        client.set("k", 1)
        client._core._retry_at = 0.0
        client.delete("k")
        client._core._retry_at = 0.0
        assert client.get_or_compute("k", lambda: "computed") is not None
        client._core._retry_at = 0.0
        client.clear()
        client._core._retry_at = 0.0
        client.stats()
        client._core._retry_at = 0.0
        health = client.health()
        assert health.mode in ("ok", "degraded")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_replies, st.binary(max_size=12)), min_size=6, max_size=6))
def test_no_async_client_call_raises_on_hostile_replies(
    fake: FakeCoordinator, answers: list[tuple[Any, bytes]]
) -> None:
    import asyncio

    with fake.lock:
        fake.answers = [_frames(reply, raw) for reply, raw in answers]

    async def calls() -> None:
        async with AsyncClient(fake.path, spawn=False, request_timeout=0.5) as client:
            for call in (lambda: client.get("k"), lambda: client.set("k", 1), lambda: client.delete("k"),
                         lambda: client.get_or_compute("k", lambda: "computed"), client.stats, client.health):
                client._core._retry_at = 0.0
                await call()

    asyncio.run(calls())
