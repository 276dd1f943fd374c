"""The shared-memory L1 mirror wired into the coordinator and the clients (issue 5):
workers read L1 without a socket round trip, and never a stale or foreign value."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from mtcache import AsyncClient, Client
from mtcache.shm import remove_orphans
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer


def _mirror_path(client: Client) -> str:
    return client._core.hello_info["mirror"]


def test_worker_reads_l1_from_shared_memory(coordinator: CoordinatorProcess) -> None:
    with Client(coordinator.socket_path, spawn=False) as writer, \
            Client(coordinator.socket_path, spawn=False, near_capacity=0) as reader:
        writer.set("k", {"v": 1})
        assert reader.get("k") == {"v": 1}  # first read maps the mirror (hello) and finds it there
        before = reader.stats()
        for _ in range(50):
            assert reader.get("k") == {"v": 1}
        after = reader.stats()
        assert after.mirror_hits - before.mirror_hits == 50
        assert after.l1_hits == before.l1_hits  # none of the 50 went through the socket
        assert after.coordinator["mirror"]["entries"] >= 1


def test_mirror_sees_every_write_delete_and_clear_at_once(coordinator: CoordinatorProcess) -> None:
    with Client(coordinator.socket_path, spawn=False) as writer, \
            Client(coordinator.socket_path, spawn=False, near_capacity=0) as reader:
        for i in range(200):
            writer.set("k", i)
            assert reader.get("k") == i
        writer.delete("k")
        assert reader.get("k") is None
        writer.set("k", "x")
        assert reader.get("k") == "x"
        writer.clear()
        assert reader.get("k") is None


def test_mirror_honours_expiry(coordinator: CoordinatorProcess) -> None:
    import time

    with Client(coordinator.socket_path, spawn=False) as writer, \
            Client(coordinator.socket_path, spawn=False, near_capacity=0) as reader:
        writer.set("short", "v", ttl=0.3)
        assert reader.get("short") == "v"
        deadline = time.monotonic() + 10
        while reader.get("short") is not None:
            assert time.monotonic() < deadline, "an expired value was still served"
        assert reader.get("short") is None


async def test_async_client_reads_the_mirror(coordinator: CoordinatorProcess) -> None:
    async with AsyncClient(coordinator.socket_path, spawn=False, near_capacity=0) as c:
        await c.set("a", [1, 2])
        assert await c.get("a") == [1, 2]
        assert await c.get_or_compute("a", lambda: [9]) == [1, 2]
        assert (await c.stats()).mirror_hits >= 2


def test_workers_remap_after_a_coordinator_restart(coordinator: CoordinatorProcess) -> None:
    import time

    with Client(coordinator.socket_path, spawn=False, near_capacity=0) as c:
        c.set("k", "old")
        assert c.get("k") == "old"
        old_path = _mirror_path(c)
        coordinator.kill()
        coordinator.start()
        deadline = time.monotonic() + 20
        while c.health().coordinator != "ok":  # the client backs off, then reconnects
            assert time.monotonic() < deadline
        c.set("k", "new")
        assert c.get("k") == "new"
        assert _mirror_path(c) != old_path
        assert not Path(old_path).exists()  # the new coordinator removed the killed one's region


def test_region_of_a_killed_coordinator_is_removed(short_tmp: Path, redis_server: RedisServer) -> None:
    first = CoordinatorProcess(short_tmp / "a.sock", redis_url=redis_server.url)
    first.start()
    with Client(first.socket_path, spawn=False) as c:
        c.set("k", 1)
        paths = [c._core.hello_info["mirror"], c._core.hello_info["versions"]]
    assert all(Path(p).exists() for p in paths)
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)  # type: ignore[union-attr]
    # a coordinator on ANOTHER socket still cleans up what a dead process left
    assert remove_orphans() >= 2
    assert not any(Path(p).exists() for p in paths)


@pytest.mark.parametrize("shm_bytes", ["0"])
def test_coordinator_without_mirror_serves_through_the_socket(short_tmp: Path, shm_bytes: str) -> None:
    proc = CoordinatorProcess(short_tmp / "n.sock", redis_url=None, args=("--l1-shm-bytes", shm_bytes))
    proc.start()
    try:
        with Client(proc.socket_path, spawn=False, near_capacity=0) as c:
            c.set("k", "v")
            assert c.get("k") == "v"
            stats = c.stats()
            assert stats.mirror_hits == 0 and stats.l1_hits >= 1
            assert c._core.hello_info["mirror"] is None
    finally:
        proc.stop()


def test_near_copies_die_with_their_coordinator(coordinator: CoordinatorProcess) -> None:
    # review finding: after a restart a hot key never went back to the socket, so a worker
    # kept serving its near copy (tied to the old coordinator's table) after a newer write
    import time

    with Client(coordinator.socket_path, spawn=False) as a, Client(coordinator.socket_path, spawn=False) as b:
        a.set("k", "old")
        assert a.get("k") == "old" and a.get("k") == "old"  # a near copy now
        coordinator.stop()  # a clean stop retires the table at once
        coordinator.start()
        deadline = time.monotonic() + 20
        while b.health().coordinator != "ok":
            assert time.monotonic() < deadline
        b.set("k", "new")
        while True:  # a reconnects (after its back-off); it never serves "old" meanwhile
            value = a.get("k")
            assert value != "old"
            if value == "new":
                break
            assert time.monotonic() < deadline


def test_near_copies_of_a_killed_coordinator_expire_with_its_heartbeat(coordinator: CoordinatorProcess) -> None:
    import time

    from mtcache.shm import LIVENESS_MS

    with Client(coordinator.socket_path, spawn=False, near_max_age=3600) as a:
        a.set("k", "old")
        assert a.get("k") == "old"
        coordinator.kill()  # no clean-up: the table's counters just stop moving
        killed = time.monotonic()
        while a.get("k") == "old":
            assert time.monotonic() - killed < LIVENESS_MS / 1000 + 10, "a dead coordinator's copy lived on"
