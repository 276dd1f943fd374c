"""Back-pressure (issue 11): a peer cannot grow the coordinator's memory without bound.

Attacks from the outside, against a real coordinator process, with its memory read from
/proc/<pid>/status (VmRSS): a peer that never reads its replies, unfinished frames before
and after the hello, more requests in flight than a connection may run. And the other
side: a normal pipelining client is never held back. Memory bounds are loose (an attack
bound, not a measurement): the point is flat instead of hundreds of MB.

The coordinator's limits (mtcache.coordinator.server): PRE_HELLO_MAX_FRAME (64 KiB) until
the hello is accepted, MAX_FRAME after it; WRITE_BUFFER_HIGH (1 MiB) of unread replies;
MAX_TASKS_PER_CONNECTION (1,024); STALL_LIMIT (10 s) over the write bound, or with a large
frame left unfinished, before the peer is closed. Tests that wait for STALL_LIMIT take
about 10 s each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mtcache import AsyncClient, Client
from mtcache.coordinator.server import MAX_TASKS_PER_CONNECTION, PRE_HELLO_MAX_FRAME, STALL_LIMIT
from mtcache.errors import ProtocolError
from mtcache.protocol import MAX_FRAME, PROTOCOL_VERSION, FrameDecoder, Op, Status, encode_frame
from tests.coordinator_proc import CoordinatorProcess

MiB = 1024 * 1024
#: how long a test waits for something that must happen (a failure, never a pause)
WAIT = 20.0


# -- helpers --------------------------------------------------------------------------


def _rss(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _hello_frame(rid: int = 1) -> bytes:
    return encode_frame([Op.HELLO, rid, PROTOCOL_VERSION, "default", os.getpid()])


def _read_replies(sock: socket.socket, count: int, decoder: FrameDecoder | None = None) -> list[list[Any]]:
    decoder = decoder or FrameDecoder()
    replies: list[list[Any]] = []
    while len(replies) < count:
        chunk = sock.recv(262_144)
        assert chunk, "the coordinator closed the connection instead of replying"
        replies += decoder.feed(chunk)
    assert len(replies) == count, f"{len(replies)} replies, expected {count}"
    return replies


def _hello(sock: socket.socket) -> None:
    sock.sendall(_hello_frame())
    [reply] = _read_replies(sock, 1)
    assert reply[:2] == [1, Status.OK], reply


def _read_until_closed(sock: socket.socket) -> int:
    """Read until the coordinator closes the connection; the number of bytes read (a
    timeout here means it kept the connection open)."""
    total = 0
    while True:
        try:
            chunk = sock.recv(262_144)
        except ConnectionResetError:
            return total
        if not chunk:
            return total
        total += len(chunk)


def _client(path: str) -> Client:
    # no near cache: every get must reach the coordinator
    return Client(path, spawn=False, near_capacity=0)


def _works(client: Client, tag: str) -> None:
    assert client.set(tag, {"tag": tag})
    assert client.get(tag) == {"tag": tag}
    assert client.health().coordinator == "ok"


def _counter(client: Client, name: str) -> int:
    return int(client.stats().coordinator.get(name, 0))


def _eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition with a deadline


@pytest.fixture
def good(coordinator_no_redis: CoordinatorProcess) -> Iterator[Client]:
    """A well-behaved client of the coordinator, checked to work."""
    with _client(coordinator_no_redis.socket_path) as client:
        _works(client, "before")
        yield client


# -- the frame decoder, taken one message at a time -----------------------------------


def test_decoder_takes_one_message_at_a_time_and_checks_each_prefix_as_it_comes() -> None:
    decoder = FrameDecoder(max_frame=PRE_HELLO_MAX_FRAME)
    big = encode_frame([Op.PING, 2, b"x" * (PRE_HELLO_MAX_FRAME * 2)])
    decoder.push(_hello_frame() + big[: len(big) // 2])
    assert decoder.next_message()[0] == Op.HELLO
    # the limit is raised after the first message: the second frame is checked against the new one
    decoder.max_frame = MAX_FRAME
    assert decoder.next_message() is None
    assert decoder.pending == len(big) // 2
    decoder.push(big[len(big) // 2 :] + encode_frame([Op.PING, 3]))
    assert decoder.next_message()[:2] == [Op.PING, 2]
    assert decoder.next_message() == [Op.PING, 3]
    assert decoder.next_message() is None
    assert decoder.pending == 0
    # feed still decodes everything it can, and refuses an oversized prefix before its body
    assert [m[1] for m in decoder.feed(encode_frame([Op.PING, 4]) + encode_frame([Op.PING, 5]))] == [4, 5]
    decoder.max_frame = 100
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder.push(struct.pack(">I", 101))
        decoder.next_message()


# -- a peer that never reads its replies ----------------------------------------------


@pytest.mark.slow
def test_a_peer_that_never_reads_its_replies_is_paused_then_closed(
    coordinator_no_redis: CoordinatorProcess, good: Client
) -> None:
    """Before the fix: 200 pipelined GETs of a 4 MiB value, nothing read back, grew the
    coordinator by ~800 MB."""
    pid = coordinator_no_redis.pid
    with _connect(coordinator_no_redis.socket_path) as sock:
        _hello(sock)
        sock.sendall(encode_frame([Op.SET, 2, "big", os.urandom(4 * MiB), 600]))
        assert _read_replies(sock, 1)[0][:2] == [2, Status.OK]
        base = _rss(pid)
        sent_at = time.monotonic()
        sock.sendall(b"".join(encode_frame([Op.GET, 3 + i, "big"]) for i in range(200)))
        _eventually(lambda: _counter(good, "write_pauses") >= 1, "the coordinator to stop serving the peer")
        _works(good, "while-paused")  # everybody else is served meanwhile
        peak = _rss(pid)

        def closed() -> bool:
            nonlocal peak
            peak = max(peak, _rss(pid))
            return _counter(good, "slow_consumers_closed") == 1

        _eventually(closed, "the peer to be closed", timeout=STALL_LIMIT + WAIT)
        closed_at = time.monotonic()
        assert peak - base < 150 * MiB, f"the coordinator grew by {(peak - base) / MiB:.0f} MiB"
        assert closed_at - sent_at >= STALL_LIMIT - 0.5, "closed before the limit"
        # what the coordinator wrote before it stopped: far from 200 replies of 4 MiB
        assert _read_until_closed(sock) < 16 * MiB
    _eventually(lambda: _counter(good, "connections") == 1, "the closed connection to be dropped")
    _works(good, "after")
    with _client(coordinator_no_redis.socket_path) as fresh:
        _works(fresh, "fresh")


@pytest.mark.slow
def test_a_lease_filled_for_many_waiters_of_a_peer_that_does_not_read(
    coordinator_no_redis: CoordinatorProcess, good: Client
) -> None:
    """Lease waits finish all at once when the lease is filled: the replies of a peer
    over the write bound are held (sharing the one value) instead of each being encoded
    into its write buffer. Before the fix: 200 waiters of a 4 MiB value, nothing read
    back, grew the coordinator by ~800 MB (1,000 waiters: ~4 GB)."""
    pid = coordinator_no_redis.pid
    waiters = 200
    with _connect(coordinator_no_redis.socket_path) as holder, _connect(coordinator_no_redis.socket_path) as peer:
        _hello(holder)
        holder.sendall(encode_frame([Op.LEASE, 2, "k", 60, 0, 0]))
        [granted] = _read_replies(holder, 1)
        assert granted[1] == Status.GRANTED, granted
        _hello(peer)
        coalesced = _counter(good, "coalesced")
        peer.sendall(b"".join(encode_frame([Op.LEASE, 10 + i, "k", 60, 0, 0]) for i in range(waiters)))
        _eventually(lambda: _counter(good, "coalesced") - coalesced == waiters, "the waits to be registered")
        base = _rss(pid)
        holder.sendall(encode_frame([Op.FILL, 3, "k", granted[2], os.urandom(4 * MiB), 60, 0, True]))
        assert _read_replies(holder, 1)[0][:2] == [3, Status.OK]
        _eventually(lambda: _counter(good, "write_pauses") >= 1, "the coordinator to stop serving the peer")
        peak = _rss(pid)

        def closed() -> bool:
            nonlocal peak
            peak = max(peak, _rss(pid))
            return _counter(good, "slow_consumers_closed") == 1

        _eventually(closed, "the peer to be closed", timeout=STALL_LIMIT + WAIT)
        assert peak - base < 150 * MiB, f"the coordinator grew by {(peak - base) / MiB:.0f} MiB"
        assert _read_until_closed(peer) < 16 * MiB
        holder.sendall(encode_frame([Op.PING, 4]))  # the holder, which reads, is still served
        assert _read_replies(holder, 1)[0] == [4, Status.OK]
    _works(good, "after")


def test_a_peer_that_reads_late_gets_every_reply(coordinator_no_redis: CoordinatorProcess, good: Client) -> None:
    """Replies held back while a peer is over the write bound (those of tasks finishing
    meanwhile too) all reach it once it reads."""
    value = os.urandom(2 * MiB)
    with _connect(coordinator_no_redis.socket_path) as sock:
        _hello(sock)
        sock.sendall(encode_frame([Op.SET, 2, "big", value, 600]))
        assert _read_replies(sock, 1)[0][:2] == [2, Status.OK]
        # inline L1 hits of 2 MiB, each over the bound, and misses (answered by tasks)
        requests = [[Op.GET, 10 + i, "big" if i % 2 == 0 else f"missing-{i}"] for i in range(20)]
        sock.sendall(b"".join(encode_frame(r) for r in requests))
        _eventually(lambda: _counter(good, "write_pauses") >= 1, "the coordinator to pause the peer")
        replies = {reply[0]: reply for reply in _read_replies(sock, len(requests))}
        assert sorted(replies) == [r[1] for r in requests]
        for request in requests:
            reply = replies[request[1]]
            if request[2] == "big":
                assert reply[1] == Status.OK and reply[2] == value
            else:
                assert reply[1] == Status.MISS
        sock.sendall(encode_frame([Op.PING, 99]))
        assert _read_replies(sock, 1)[0] == [99, Status.OK]
    assert _counter(good, "slow_consumers_closed") == 0


# -- unfinished frames ------------------------------------------------------------------


def test_a_large_frame_before_the_hello_closes_the_connection_at_once(
    coordinator_no_redis: CoordinatorProcess, good: Client
) -> None:
    """Before the fix: 40 connections each sending a 15 MiB length prefix and most of
    the body, never the rest, grew the coordinator by ~560 MB."""
    pid = coordinator_no_redis.pid
    errors = _counter(good, "protocol_errors")
    base = _rss(pid)
    for _ in range(40):
        with _connect(coordinator_no_redis.socket_path) as sock:
            # closed before we are done sending: what we want
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(struct.pack(">I", 15 * MiB) + b"x" * MiB)
            # closed without waiting for the rest (else this recv times out)
            _read_until_closed(sock)
    assert _rss(pid) - base < 50 * MiB, f"the coordinator grew by {(_rss(pid) - base) / MiB:.0f} MiB"
    _eventually(lambda: _counter(good, "protocol_errors") == errors + 40, "the 40 refusals to be counted")
    _works(good, "after")


def test_a_hello_then_a_large_frame_in_one_write_is_served(coordinator_no_redis: CoordinatorProcess) -> None:
    """The pre-hello limit applies to the frames before the hello only: a frame over it
    that follows the hello in the same read is accepted."""
    value = os.urandom(4 * MiB)
    with _connect(coordinator_no_redis.socket_path) as sock:
        sock.sendall(_hello_frame() + encode_frame([Op.SET, 2, "k", value, 60]))
        replies = {reply[0]: reply for reply in _read_replies(sock, 2)}
        assert replies[1][1] == Status.OK
        assert replies[2][1] == Status.OK
        sock.sendall(encode_frame([Op.GET, 3, "k"]))
        assert _read_replies(sock, 1)[0][:3] == [3, Status.OK, value]


@pytest.mark.slow
def test_large_unfinished_frames_after_the_hello_are_bounded_then_closed(
    coordinator_no_redis: CoordinatorProcess, good: Client
) -> None:
    """After the hello a frame may be up to MAX_FRAME long, so ten peers each holding
    14 MiB of a 15 MiB frame cost the coordinator about 10 x 15 MiB; each is closed once
    its frame has stayed unfinished for STALL_LIMIT (our choice: memory held for a frame
    that does not come is bounded in size and in time)."""
    pid = coordinator_no_redis.pid
    base = _rss(pid)
    socks = [_connect(coordinator_no_redis.socket_path) for _ in range(10)]
    try:
        started = 0.0
        for sock in socks:
            _hello(sock)
            started = time.monotonic()  # no frame's clock starts before this (the last one's)
            # sendall returns once the coordinator has read nearly all of it: it keeps the connection
            sock.sendall(struct.pack(">I", 15 * MiB) + b"x" * (14 * MiB))
        peak = _rss(pid)
        assert _counter(good, "connections") == 11
        _works(good, "while-held")

        def all_closed() -> bool:
            nonlocal peak
            peak = max(peak, _rss(pid))
            return _counter(good, "stalled_frames_closed") == 10

        _eventually(all_closed, "the unfinished frames to be closed", timeout=STALL_LIMIT + WAIT)
        assert time.monotonic() - started >= STALL_LIMIT - 0.5, "closed before the limit"
        assert peak - base < 10 * 16 * MiB + 40 * MiB, f"the coordinator grew by {(peak - base) / MiB:.0f} MiB"
        for sock in socks:
            assert _read_until_closed(sock) == 0
    finally:
        for sock in socks:
            sock.close()
    _eventually(lambda: _counter(good, "connections") == 1, "the closed connections to be dropped")
    _works(good, "after")


# -- requests in flight ---------------------------------------------------------------


def test_requests_running_as_tasks_are_bounded_per_connection(
    coordinator_no_redis: CoordinatorProcess, good: Client
) -> None:
    """One connection waits on a lease with more requests than it may run at once: the
    first MAX_TASKS_PER_CONNECTION wait, the rest (and a PING behind them) are not taken
    until the lease is filled; then every request is answered."""
    path = coordinator_no_redis.socket_path
    extra = 200
    count = MAX_TASKS_PER_CONNECTION + extra
    with _connect(path) as holder, _connect(path) as waiter:
        _hello(holder)
        holder.sendall(encode_frame([Op.LEASE, 2, "k", 30, 0, 0]))
        [granted] = _read_replies(holder, 1)
        assert granted[1] == Status.GRANTED, granted
        token = granted[2]
        _hello(waiter)
        coalesced = _counter(good, "coalesced")
        waiter.sendall(b"".join(encode_frame([Op.LEASE, 10 + i, "k", 30, 0, 0]) for i in range(count))
                       + encode_frame([Op.PING, 5]))
        _eventually(lambda: _counter(good, "coalesced") - coalesced >= MAX_TASKS_PER_CONNECTION,
                    "the waits to be registered")
        assert _counter(good, "coalesced") - coalesced == MAX_TASKS_PER_CONNECTION
        _works(good, "while-waiting")  # other connections are served meanwhile
        waiter.settimeout(0)
        with pytest.raises(BlockingIOError):  # nothing answered yet, not even the PING
            waiter.recv(1)
        waiter.settimeout(WAIT)
        holder.sendall(encode_frame([Op.FILL, 3, "k", token, b"the value", 60, 0, True]))
        assert _read_replies(holder, 1)[0][:2] == [3, Status.OK]
        replies = {reply[0]: reply for reply in _read_replies(waiter, count + 1)}
    assert replies.pop(5) == [5, Status.OK]
    assert sorted(replies) == list(range(10, 10 + count))
    assert all(reply[1:3] == [Status.OK, b"the value"] for reply in replies.values())
    # the first ones waited, the rest were taken once the value was in L1
    assert _counter(good, "coalesced") - coalesced == MAX_TASKS_PER_CONNECTION


# -- normal clients are not held back ---------------------------------------------------


def test_a_pipelining_client_that_reads_is_never_paused(coordinator: CoordinatorProcess) -> None:
    """Many requests in flight on one connection (L1 hits answered inline, L2 misses
    answered by tasks), replies read as they come: nothing is paused or closed, and every
    request gets its reply."""
    total, window = 20_000, 500
    value = os.urandom(512)
    with _client(coordinator.socket_path) as probe, _connect(coordinator.socket_path) as sock:
        _hello(sock)
        sock.sendall(encode_frame([Op.SET, 2, "hot", value, 600]))
        assert _read_replies(sock, 1)[0][:2] == [2, Status.OK]
        decoder = FrameDecoder()
        sent = received = 0
        while received < total:
            if sent < total and sent - received < window:
                batch = min(100, total - sent, window - (sent - received))
                # every fourth request misses L1 (and L2): a task, answered after a Redis read
                sock.sendall(b"".join(
                    encode_frame([Op.GET, 100 + rid, "hot" if rid % 4 else f"cold-{rid}"])
                    for rid in range(sent, sent + batch)
                ))
                sent += batch
                continue
            chunk = sock.recv(262_144)
            assert chunk, "the coordinator closed the connection"
            for reply in decoder.feed(chunk):
                rid = reply[0] - 100
                assert 0 <= rid < sent
                if rid % 4:
                    assert reply[1:3] == [Status.OK, value]
                else:
                    assert reply[1] == Status.MISS, reply  # never an internal error
                received += 1
        assert received == total
        assert _counter(probe, "write_pauses") == 0
        assert _counter(probe, "slow_consumers_closed") == 0
        assert _counter(probe, "stalled_frames_closed") == 0


def test_an_async_client_with_many_requests_in_flight_is_never_paused(coordinator: CoordinatorProcess) -> None:
    async def main() -> None:
        async with AsyncClient(coordinator.socket_path, spawn=False, near_capacity=0) as client:
            keys = [f"k{i}" for i in range(2000)]
            assert all(await asyncio.gather(*(client.set(k, {"k": k}) for k in keys)))
            got = await asyncio.gather(*(client.get(k) for k in keys + [f"absent-{i}" for i in range(500)]))
            assert got == [{"k": k} for k in keys] + [None] * 500

    asyncio.run(main())
    with _client(coordinator.socket_path) as probe:
        assert _counter(probe, "write_pauses") == 0
        assert _counter(probe, "slow_consumers_closed") == 0
