"""mtcache on Redis Sentinel (issue 17, point 2): ``redis+sentinel://`` URLs, and hosts that follow the new
master through a failover (``SENTINEL FAILOVER``, and the master killed with SIGKILL) while they write.

A group of a master, a replica and three sentinels runs on free loopback ports
(:class:`tests.redis_server.SentinelGroup`). What a failover may lose, by the README: writes the old master
acknowledged and had not replicated. So the convergence checked here is agreement (every host ends on the
same value for every key, a value some host wrote) and, for the writes made once the new master serves, that
they are the ones every host reads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtcache import Client
from mtcache.coordinator.l2 import key_prefix
from tests.conftest import _need_redis
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import SentinelGroup
from tests.waiting import wait_until

DEADLINE = 60.0
KEYS = [f"k{i}" for i in range(8)]


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A master, its replica and three sentinels."""
    _need_redis()
    group = SentinelGroup(tmp_path / "sentinel")
    group.start()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def two_hosts(group: SentinelGroup, short_tmp: Path) -> Iterator[list[CoordinatorProcess]]:
    """Two coordinators ("hosts") on the group's redis+sentinel:// URL."""
    hosts = [CoordinatorProcess(short_tmp / f"{name}.sock", redis_url=group.url) for name in "ab"]
    try:
        for host in hosts:
            host.start()
        yield hosts
    finally:
        for host in hosts:
            host.stop()


def _redis_ok(host: CoordinatorProcess) -> bool:
    with Client(host.socket_path, spawn=False) as client:
        health = client.health()
    return health.redis == "ok" and health.mode == "ok"


def _writer(host: CoordinatorProcess, name: str, stop: threading.Event, acked: dict[str, object]) -> None:
    n = 0
    with Client(host.socket_path, spawn=False) as client:
        while not stop.is_set():
            key = KEYS[n % len(KEYS)]
            value = f"{name}-{n}"
            client.set(key, value)
            acked[key] = value
            n += 1


@pytest.mark.parametrize("how", ["sentinel-failover", "master-sigkill"])
def test_hosts_follow_the_new_master_and_converge(
    group: SentinelGroup, two_hosts: list[CoordinatorProcess], how: str
) -> None:
    a, b = two_hosts
    assert wait_until(lambda: all(_redis_ok(h) for h in two_hosts), timeout=DEADLINE)
    with Client(a.socket_path, spawn=False) as client_a, Client(b.socket_path, spawn=False) as client_b:
        client_a.set("before", 1)
        assert wait_until(lambda: client_b.get("before") == 1, timeout=DEADLINE)
        stop = threading.Event()
        acked: list[dict[str, object]] = [{}, {}]
        writers = [threading.Thread(target=_writer, args=(h, name, stop, acked[i]))
                   for i, (h, name) in enumerate(zip(two_hosts, "ab", strict=True))]
        for t in writers:
            t.start()
        try:
            assert wait_until(lambda: len(acked[0]) == len(acked[1]) == len(KEYS), timeout=DEADLINE)
            old = group.master_port()
            if how == "sentinel-failover":
                new = group.failover()
            else:
                assert old is not None
                group.server_on(old).kill()
                new = group.wait_new_master(old)
        finally:
            stop.set()
            for t in writers:
                t.join(DEADLINE)
        # both hosts use the new master again
        assert wait_until(lambda: all(_redis_ok(h) for h in two_hosts), timeout=DEADLINE)
        # a write made now reaches the new master and the other host
        client_a.set("after", 2)
        assert wait_until(lambda: client_b.get("after") == 2, timeout=DEADLINE)
        with group.server_on(new).client() as master:
            assert master.exists(key_prefix("default") + "k:after")
        assert client_b.get_or_compute("computed", lambda: "v") == "v"
        written = {v for side in acked for v in side.values()}

        def agreed() -> bool:
            return all(client_a.get(k) == client_b.get(k) for k in KEYS)

        # every key converges to one value on both hosts, one some host wrote
        assert wait_until(agreed, timeout=DEADLINE), {k: (client_a.get(k), client_b.get(k)) for k in KEYS}
        assert all(client_a.get(k) in written for k in KEYS)
        # and a write after the failover is what both hosts read
        for k in KEYS:
            client_b.set(k, f"final-{k}")
        assert wait_until(lambda: all(client_a.get(k) == f"final-{k}" for k in KEYS), timeout=DEADLINE)
