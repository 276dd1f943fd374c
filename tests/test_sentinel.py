"""mtcache on Redis Sentinel (issue 17, point 2): ``redis+sentinel://`` URLs, and hosts that follow the new
master through a failover (``SENTINEL FAILOVER``, and the master killed with SIGKILL) while they write.

A group of a master, a replica and three sentinels runs on free loopback ports
(:class:`tests.redis_server.SentinelGroup`); what convergence through a failover means is in
:mod:`tests.failovers`. The cross-host tests of ``tests/test_cross_host.py`` that need only a URL run here
on the group too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mtcache import Client
from mtcache.coordinator.l2 import key_prefix
from tests.conftest import _need_redis
from tests.coordinator_proc import CoordinatorProcess
from tests.failovers import DEADLINE, converge_through, coordinator_stats, redis_ok, two_hosts_on
from tests.redis_server import SentinelGroup

# the cross-host tests this module also runs, on the group (their Redis: the redis_server fixture below)
from tests.test_cross_host import (  # noqa: F401 - collected and resolved here
    hosts,
    processes,
    test_a_lease_waiter_never_near_caches_a_fill_older_than_another_hosts_set,
    test_a_stampede_across_hosts_computes_once,
    test_a_write_on_one_host_reaches_another_hosts_near_and_l1_copies,
    test_waiters_on_other_hosts_get_a_value_when_the_lease_holder_dies,
)
from tests.waiting import wait_until

#: ~35 s of failovers: with the other deployment suites (pytest -m deployments), not in the default run
pytestmark = pytest.mark.deployments

KEYS = [f"k{i}" for i in range(8)]


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A master, its replica and three sentinels."""
    _need_redis()
    with SentinelGroup(tmp_path / "sentinel") as group:
        yield group


@pytest.fixture
def redis_server(group: SentinelGroup) -> SentinelGroup:
    """The cross-host tests' Redis: here, the Sentinel group (they use its URL only)."""
    return group


@pytest.fixture
def two_hosts(group: SentinelGroup, short_tmp: Path) -> Iterator[list[CoordinatorProcess]]:
    """Two coordinators ("hosts") on the group's redis+sentinel:// URL, their readers connected."""
    with two_hosts_on(group.url, short_tmp) as procs:
        yield procs


@pytest.mark.parametrize("how", ["sentinel-failover", "master-sigkill"])
def test_hosts_follow_the_new_master_and_converge(
    group: SentinelGroup, two_hosts: list[CoordinatorProcess], how: str
) -> None:
    assert wait_until(lambda: all(redis_ok(h) for h in two_hosts), timeout=DEADLINE)
    new: list[int] = []

    def fail_over() -> None:
        old = group.master_port()
        if how == "sentinel-failover":
            new.append(group.failover())
        else:
            assert old is not None
            group.server_on(old).kill()
            new.append(group.wait_new_master(old))

    converge_through(two_hosts, KEYS, fail_over)
    with group.server_on(new[0]).client() as master:  # the write made after the failover is on the new master
        assert master.exists(key_prefix("default") + "k:after")


def test_hosts_move_to_the_new_master_as_soon_as_the_sentinels_announce_it(
    group: SentinelGroup, two_hosts: list[CoordinatorProcess]
) -> None:
    # chaos checker, short-sentinel profile: after SENTINEL FAILOVER the old master answers as a master
    # until the sentinels reconfigure it (their INFO period, ~10 s); hosts whose connections stayed on it
    # wrote there, and its demotion discarded those acknowledged writes
    assert wait_until(lambda: all(redis_ok(h) for h in two_hosts), timeout=DEADLINE)
    a = two_hosts[0]
    old = group.master_port()
    assert old is not None
    with group.sentinel() as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", group.service)
    assert wait_until(lambda: group.master_port() not in (None, old), timeout=DEADLINE)
    new = group.master_port()
    assert new is not None
    rkey = key_prefix("default") + "k:moved"
    with Client(a.socket_path, spawn=False) as client_a, group.server_on(new).client() as new_master:
        # within a few seconds, well before the sentinels' next look at the old master
        assert wait_until(lambda: client_a.set("moved", 1) and new_master.exists(rkey), timeout=5.0)
    with group.server_on(old).client() as old_master:
        assert old_master.info("replication")["role"] == "master"  # it still took writes meanwhile
    assert all(coordinator_stats(h)["master_switches"] >= 1 for h in two_hosts)


def test_a_write_lost_by_asynchronous_replication_is_not_served_after_the_failover(
    group: SentinelGroup, two_hosts: list[CoordinatorProcess]
) -> None:
    # the documented loss, made on purpose: the replica is stopped (SIGSTOP) and its link closed by the
    # master, which then acknowledges a write and is killed: the new master never had that write
    a, b = two_hosts
    prefix = key_prefix("default")
    assert wait_until(lambda: all(redis_ok(h) for h in two_hosts), timeout=DEADLINE)
    with Client(a.socket_path, spawn=False) as client_a, Client(b.socket_path, spawn=False) as client_b:
        client_a.set("k", "replicated")
        assert wait_until(lambda: client_b.get("k") == "replicated", timeout=DEADLINE)
        with group.replica.client() as replica:
            assert wait_until(lambda: replica.exists(prefix + "k:k"), timeout=DEADLINE)
        old = group.master.port
        gaps = [coordinator_stats(h)["invalidation_gaps"] for h in two_hosts]
        group.replica.pause()
        try:
            with group.master.client() as master:
                # the stopped replica cannot reconnect: nothing written from now on reaches it
                assert master.client_kill_filter(_type="replica") == 1
            client_a.set("k", "lost")  # acknowledged by the master alone
            assert wait_until(lambda: client_b.get("k") == "lost", timeout=DEADLINE)
            with group.master.client() as master:
                newest = master.xrevrange(prefix + "inval", count=1)[0][0].decode()
            # both readers have read the lost write's entry
            assert wait_until(lambda: all(coordinator_stats(h)["stream_last_id"] == newest for h in two_hosts),
                              timeout=DEADLINE)
            group.master.kill()
        finally:
            group.replica.resume()
        assert group.wait_new_master(old) == group.replica.port
        with group.replica.client() as new_master:
            assert new_master.get(prefix + "k:k") is not None  # holds "replicated", not "lost"
        # each host sees that the stream went back, drops its L1, and reads what the new master holds
        assert wait_until(lambda: client_a.get("k") == client_b.get("k") == "replicated", timeout=DEADLINE), \
            (client_a.get("k"), client_b.get("k"))
        after = [coordinator_stats(h)["invalidation_gaps"] for h in two_hosts]
        assert all(now > before for now, before in zip(after, gaps, strict=True)), (gaps, after)
