"""The client under faults (issue 10): a cancelled lease holder, a connection closed mid-write, a
mapping released under a reading thread, and a write whose outcome is unknown. Real coordinator and
redis-server processes; public API except where a test names the internal it pins down."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from mtcache import AsyncClient, Client, ComputeError
from mtcache.coordinator.l2 import key_prefix
from mtcache.protocol import PROTOCOL_VERSION, Op, encode_frame
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer

DEADLINE = 20.0


def _until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # poll interval of a deadline-bounded wait
    return result


async def test_a_cancelled_lease_holder_hands_its_lease_on_and_nobody_gets_its_cancellation(
    coordinator: CoordinatorProcess,
) -> None:
    # review finding: an ASGI client disconnect cancelled the holder, and every waiter (in this
    # process and in others) received CancelledError or ComputeError("CancelledError")
    started = asyncio.Event()
    holder_client = AsyncClient(coordinator.socket_path, spawn=False)
    other_client = AsyncClient(coordinator.socket_path, spawn=False)
    try:
        async def stuck() -> str:
            started.set()
            await asyncio.Event().wait()  # never returns: cancelled below
            return "never"

        async def quick() -> str:
            return "computed by a waiter"

        holder = asyncio.create_task(holder_client.get_or_compute("k", stuck))
        await asyncio.wait_for(started.wait(), DEADLINE)
        follower = asyncio.create_task(holder_client.get_or_compute("k", quick))  # same process
        waiter = asyncio.create_task(other_client.get_or_compute("k", quick))  # another connection
        for _ in range(20):
            await asyncio.sleep(0)  # let both queue behind the holder
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        results = await asyncio.wait_for(asyncio.gather(follower, waiter, return_exceptions=True), DEADLINE)
        assert all(not isinstance(r, BaseException) for r in results), results
        assert set(results) == {"computed by a waiter"}
        stats = await other_client.stats()
        assert stats.coordinator["lease_releases"] == 1
        assert stats.coordinator["compute_errors"] == 0
    finally:
        await holder_client.close()
        await other_client.close()


def test_a_compute_error_still_reaches_every_waiter(coordinator: CoordinatorProcess) -> None:
    # the other side of the cancellation rule: a real failure of fn is shared, not retried
    with Client(coordinator.socket_path, spawn=False) as client:
        def boom() -> None:
            raise ValueError("source down")

        with pytest.raises(ComputeError, match="source down"):
            client.get_or_compute("k", boom)
        assert client.stats().coordinator["compute_errors"] == 1


def _frame_hello() -> bytes:
    return encode_frame([Op.HELLO, 1, PROTOCOL_VERSION, "default", os.getpid()])


def test_a_write_whose_connection_closes_at_once_still_completes(
    coordinator: CoordinatorProcess, redis_server: RedisServer
) -> None:
    # review finding: a set whose connection closed mid-write was cancelled before it reached Redis
    # or the backlog, and hosts disagreed for good
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(DEADLINE)
        sock.connect(coordinator.socket_path)
        sock.sendall(_frame_hello())
        (length,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
        sock.recv(length, socket.MSG_WAITALL)
        for i in range(50):
            sock.sendall(encode_frame([Op.SET, 2 + i, f"k{i}", msgpack.packb(i), 600]))
    # closed before any reply was read
    with redis_server.client() as r:
        prefix = key_prefix("default") + "k:"
        _until(lambda: all(r.exists(f"{prefix}k{i}") for i in range(50)), "every write to reach Redis")
    with Client(coordinator.socket_path, spawn=False, near_capacity=0) as client:
        assert [client.get(f"k{i}") for i in range(50)] == list(range(50))


def test_a_mapping_is_never_closed_under_a_reading_thread(coordinator: CoordinatorProcess) -> None:
    # review finding: with threads, get raised "operation forbidden on released memoryview" when
    # another thread reconnected (the mirror was closed under a reader)
    with Client(coordinator.socket_path, spawn=False, near_capacity=0) as client:
        client.set("k", {"v": 1})
        core = client._core
        mirror, table = core.mirror, core.near.table
        assert mirror is not None and table is not None
        read = mirror.get  # what a reading thread holds while another one detaches
        core.unavailable(OSError("another thread lost the coordinator"))  # detaches the mirror
        client.close()  # and closing the client lets go of the table
        assert read("k") is not None  # the reader's mapping is still valid
        assert table.counters[table.slot("k")] >= 0


def test_a_write_timing_out_on_a_stopped_coordinator_is_reported_unknown(
    coordinator: CoordinatorProcess,
) -> None:
    # issue 11 finding: a set that timed out against a stopped coordinator was reported as skipped,
    # then applied when the coordinator resumed
    with Client(coordinator.socket_path, spawn=False, request_timeout=0.3) as client:
        client.set("k", "old")
        assert client.get("k") == "old"
        os.kill(coordinator.pid, signal.SIGSTOP)
        try:
            assert client.set("k", "new") is False
        finally:
            os.kill(coordinator.pid, signal.SIGCONT)
        counters = client._core.counters
        assert (counters["unknown_writes"], counters["skipped_writes"]) == (1, 0)
        assert client._core.near.get("k") is client._core.near.MISSING  # no copy of either value is kept
    with Client(coordinator.socket_path, spawn=False, near_capacity=0) as probe:
        # the write was applied after all, when the coordinator resumed: that is what "unknown" allows
        _until(lambda: probe.get("k") == "new", "the resumed coordinator to apply the write")


async def test_a_lease_granted_to_a_cancelled_waiter_is_handed_on(coordinator: CoordinatorProcess) -> None:
    # found by the chaos checker: a task cancelled while waiting for a lease left its request in the
    # coordinator; the lease was later granted to it, and (renewed for a live connection) kept from
    # every other caller until their timeouts
    started = asyncio.Event()
    holder_client = AsyncClient(coordinator.socket_path, spawn=False)
    waiter_client = AsyncClient(coordinator.socket_path, spawn=False)
    third_client = AsyncClient(coordinator.socket_path, spawn=False)
    try:
        async def stuck() -> str:
            started.set()
            await asyncio.Event().wait()  # cancelled below
            return "never"

        async def quick() -> str:
            return "third"

        holder = asyncio.create_task(holder_client.get_or_compute("k", stuck))
        await asyncio.wait_for(started.wait(), DEADLINE)
        waiter = asyncio.create_task(waiter_client.get_or_compute("k", quick, timeout=60))
        deadline = time.monotonic() + DEADLINE
        while (await third_client.stats()).coordinator.get("coalesced", 0) < 1:
            assert time.monotonic() < deadline, "the waiter never queued"
            await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait
        waiter.cancel()  # cancelled while its LEASE request waits in the coordinator
        await asyncio.gather(waiter, return_exceptions=True)
        holder.cancel()  # the lease passes on: to the cancelled waiter's request first
        await asyncio.gather(holder, return_exceptions=True)
        assert await asyncio.wait_for(third_client.get_or_compute("k", quick, timeout=60), 10) == "third"
    finally:
        for client in (holder_client, waiter_client, third_client):
            await client.close()


async def test_a_lease_granted_in_a_reply_its_cancelled_caller_never_read_is_handed_on(
    coordinator: CoordinatorProcess,
) -> None:
    # found by the chaos checker: the GRANTED reply reached the connection, and the caller was cancelled
    # before it resumed to read it; the lease stayed with the live connection (renewed) while every
    # other caller of the key waited out its timeout
    cancelled_client = AsyncClient(coordinator.socket_path, spawn=False)
    other = AsyncClient(coordinator.socket_path, spawn=False)
    try:
        await cancelled_client.get("warm-up")  # opens the connection
        conn = cancelled_client._conn_obj  # the internal this test pins down
        victim: asyncio.Task[Any] | None = None

        class CancelOnReply(dict):  # type: ignore[type-arg]
            def pop(self, rid: Any, *default: Any) -> Any:
                fut = super().pop(rid, *default)
                if fut is not None and victim is not None:
                    victim.cancel()  # the reply is set right after: the caller never reads it
                return fut

        conn.pending = CancelOnReply(conn.pending)
        victim = asyncio.create_task(cancelled_client.get_or_compute("k", lambda: "never"))
        await asyncio.gather(victim, return_exceptions=True)
        assert victim.cancelled()
        assert await asyncio.wait_for(other.get_or_compute("k", lambda: "other", timeout=60), 10) == "other"
    finally:
        await cancelled_client.close()
        await other.close()


def test_a_lease_is_ended_even_when_the_coordinator_seems_stalled(coordinator: CoordinatorProcess) -> None:
    # found by the chaos checker on a loaded machine: a client that thought the coordinator stalled
    # skipped the FILL of a lease it held, but kept its connection open; the coordinator kept the
    # lease renewed for that live connection, and every other caller of the key waited
    with Client(coordinator.socket_path, spawn=False) as holder, \
            Client(coordinator.socket_path, spawn=False, near_capacity=0) as other:
        def fn() -> str:
            holder._core.stalled = lambda: True  # type: ignore[method-assign]
            return "computed"

        assert holder.get_or_compute("k", fn) == "computed"
        assert other.get_or_compute("k", lambda: "again", timeout=5) == "computed"
