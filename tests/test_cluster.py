"""mtcache on Redis Cluster (issue 17, point 1): ``redis+cluster://`` URLs, keys of one key in one hash slot,
the namespace's writes spread over the masters, one invalidation stream per group of keys, and hosts that
follow the cluster through a failover (``CLUSTER FAILOVER`` on a replica, and a master killed with SIGKILL).

A cluster of 3 masters with a replica each runs on free loopback ports
(:class:`tests.redis_server.RedisClusterGroup`). The cross-host tests of ``tests/test_cross_host.py`` run here
on the cluster too, all but the one that restarts Redis empty (a cluster's nodes keep their membership across a
restart: not one process to restart): the first by default, the others with ``-m deployments`` (see
:data:`DEFAULT_CROSS_HOST`); what convergence through a
failover means is in :mod:`tests.failovers`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from mtcache import Client
from mtcache.client.streams import AsyncStreams
from mtcache.coordinator.l2 import CLUSTER_GROUPS, Layout, key_prefix
from tests.coordinator_proc import CoordinatorProcess
from tests.failovers import DEADLINE, converge_through, coordinator_stats, host_health, two_hosts_on
from tests.redis_server import RedisClusterGroup

# the cross-host tests this module also runs, on the cluster (below); their fixtures with them
from tests.test_cross_host import (  # noqa: F401 - collected and resolved here
    hosts,
    processes,
    test_a_host_cut_off_from_the_stream_drops_its_l1_after_the_staleness_bound,
    test_a_host_that_missed_trimmed_entries_drops_its_whole_l1,
    test_a_lease_waiter_never_near_caches_a_fill_older_than_another_hosts_set,
    test_a_stampede_across_hosts_computes_once,
    test_a_write_on_one_host_reaches_another_hosts_near_and_l1_copies,
    test_waiters_on_other_hosts_get_a_value_when_the_lease_holder_dies,
)
from tests.waiting import wait_until

KEYS = [f"k{i}" for i in range(16)]
#: the cross-host test (and its parameters) that runs on the cluster by default (tests/conftest.py puts the
#: others imported from tests/test_cross_host.py behind the deployments marker here, to keep the default run
#: within CI's budget)
DEFAULT_CROSS_HOST = ("test_a_write_on_one_host_reaches_another_hosts_near_and_l1_copies", {"op": "set"})
PREFIX = key_prefix("default")


@pytest.fixture
def redis_server(redis_cluster: RedisClusterGroup) -> RedisClusterGroup:
    """The cross-host tests' Redis: here, the cluster (they use its URL only)."""
    return redis_cluster


def _layout() -> Layout:
    return Layout(PREFIX, "default", CLUSTER_GROUPS)


def test_the_keys_of_one_key_share_a_slot_and_the_groups_spread_evenly() -> None:
    layout = _layout()
    for key in ("user:1", "a", "ключ", "{tagged}key", "x" * 200):
        slots = {key_slot(name.encode()) for name in (layout.record(key), layout.lease(key), layout.floor(key),
                                                      layout.stream(key))}
        assert len(slots) == 1, (key, slots)
        assert layout.is_record(layout.record(key)) and not layout.is_record(layout.lease(key))
        assert layout.floor_of_record(layout.record(key)) == layout.floor(key)
    # each group's slot lies in its own sixteenth of the slots: on 3 masters with equal ranges, 5 or 6 each
    slots = [key_slot(stream.encode()) for stream in layout.streams()]
    assert [slot * CLUSTER_GROUPS // 16384 for slot in slots] == list(range(CLUSTER_GROUPS))
    # keys spread over every group
    assert {layout.group(f"key-{i}") for i in range(1000)} == set(range(CLUSTER_GROUPS))
    # on one Redis nothing moves: the keys are those of every earlier release
    single = Layout(PREFIX, "default")
    assert (single.record("k"), single.lease("k"), single.floor("k"), single.stream("k")) == (
        PREFIX + "k:k", PREFIX + "lease:k", PREFIX + "floor", PREFIX + "inval")


@pytest.fixture
def two_hosts(redis_cluster: RedisClusterGroup, short_tmp: Path) -> Iterator[list[CoordinatorProcess]]:
    """Two coordinators ("hosts") on the cluster's redis+cluster:// URL, their readers connected."""
    with two_hosts_on(redis_cluster.url, short_tmp) as procs:
        yield procs


def test_every_operation_works_on_a_cluster_and_writes_spread_over_the_masters(
    redis_cluster: RedisClusterGroup, two_hosts: list[CoordinatorProcess]
) -> None:
    a, b = two_hosts
    url = redis_cluster.url  # the clients open user streams on it themselves
    with Client(a.socket_path, spawn=False, redis_url=url) as client_a, \
            Client(b.socket_path, spawn=False, redis_url=url) as client_b:
        for i, key in enumerate(KEYS):
            client_a.set(key, i, tags=["all"])
        assert wait_until(lambda: [client_b.get(k) for k in KEYS] == list(range(len(KEYS))), timeout=DEADLINE)
        client_a.set("k0", "new")  # the stream reader of k0's group tells b
        assert wait_until(lambda: client_b.get("k0") == "new", timeout=DEADLINE)
        client_a.delete("k1")
        assert wait_until(lambda: client_b.get("k1") is None, timeout=DEADLINE)
        assert client_b.add("added", 1) and not client_a.add("added", 2)
        assert client_a.incr("n", 2) == 2 and client_b.incr("n", 3) == 5
        assert client_b.get_or_compute("computed", lambda: "v") == "v"  # a Redis lease in the key's slot
        client_b.invalidate_tags("all")  # the tag's stamp is a key of its own slot
        assert wait_until(lambda: client_a.get("k2") is None, timeout=DEADLINE)
        client_a.set("k3", 3)
        with redis_cluster.client() as cluster:
            # the records spread over the three masters, each in its group's slot
            nodes = {cluster.get_node_from_key(_layout().record(k)).port for k in KEYS}
            assert nodes == set(redis_cluster.master_ports())
        client_a.clear()  # raises every group's floor, SCANs every master
        assert wait_until(lambda: client_b.get("k3") is None and client_a.get("k3") is None, timeout=DEADLINE)
        with redis_cluster.client() as cluster:
            assert not [k for k in cluster.scan_iter(match=PREFIX + "*:k:k3")]  # purged on its master
        # user streams, consumer groups included, live on the node of their key's slot
        entry_id = client_a.publish_to_stream("events", {"n": 1})
        assert client_b.read_stream("events", "0-0") == [(entry_id, {"n": "1"})]
        assert [e for e, _ in client_b.read_stream_latest("events", 1)] == [entry_id]
        assert client_b.create_consumer_group("jobs", "workers", start_id="0")
        job = client_a.publish_to_stream("jobs", {"job": "a"})
        assert client_b.read_group("jobs", "workers", "w1", block_ms=100) == [(job, {"job": "a"})]
        assert client_a.claim_stale("jobs", "workers", "w2", min_idle_ms=0) == [(job, {"job": "a"})]
        assert client_a.ack("jobs", "workers", job) == 1
        asyncio.run(_async_streams(url, entry_id))
        for host in (a, b):
            stats = coordinator_stats(host)
            assert stats["stream_shards"] == CLUSTER_GROUPS and stats["invalidation_gaps"] == 0
            health = host_health(host)
            assert (health["redis"], health["mode"], health["warnings"]) == ("ok", "ok", [])


async def _async_streams(url: str, entry_id: str) -> None:
    async with AsyncStreams(url, "mtcache:default:") as streams:
        assert await streams.read_stream("events", "0-0") == [(entry_id, {"n": "1"})]
        newer = await streams.publish_to_stream("events", {"n": 2})
        assert await streams.read_stream("events", entry_id, block_ms=100) == [(newer, {"n": "2"})]


@pytest.mark.parametrize("how", ["cluster-failover", "master-sigkill"])
def test_hosts_follow_the_cluster_through_a_failover_and_converge(
    redis_cluster: RedisClusterGroup, two_hosts: list[CoordinatorProcess], how: str
) -> None:
    old = redis_cluster.master_ports()[0]

    def fail_over() -> None:
        new = redis_cluster.failover(old)[1] if how == "cluster-failover" else redis_cluster.kill_master(old)
        assert new != old

    # the keys cover every master, the one that changes too
    converge_through(two_hosts, KEYS, fail_over)


def test_a_write_lost_by_asynchronous_replication_is_not_served_after_the_failover(
    redis_cluster: RedisClusterGroup, two_hosts: list[CoordinatorProcess]
) -> None:
    # the documented loss, made on purpose: the replica of k's master is stopped (SIGSTOP) and its link
    # closed by the master, which then acknowledges a write and is killed: the new master never had it
    a, b = two_hosts
    layout = _layout()
    with Client(a.socket_path, spawn=False) as client_a, Client(b.socket_path, spawn=False) as client_b:
        client_a.set("k", "replicated")
        assert wait_until(lambda: client_b.get("k") == "replicated", timeout=DEADLINE)
        with redis_cluster.client() as cluster:
            old = cluster.get_node_from_key(layout.record("k")).port
        replicas = redis_cluster.replicas_of(old)
        replica = redis_cluster.server_on(replicas[0])
        with replica.client() as r:
            assert wait_until(lambda: r.execute_command("READONLY") and r.exists(layout.record("k")),
                              timeout=DEADLINE)
        gaps = [coordinator_stats(h)["invalidation_gaps"] for h in two_hosts]
        replica.pause()
        try:
            with redis_cluster.server_on(old).client() as master:
                # the stopped replica cannot reconnect: nothing written from now on reaches it
                assert master.client_kill_filter(_type="replica") == 1
            client_a.set("k", "lost")  # acknowledged by the master alone
            assert wait_until(lambda: client_b.get("k") == "lost", timeout=DEADLINE)
            with redis_cluster.server_on(old).client() as master:
                newest = master.xrevrange(layout.stream("k"), count=1)[0][0].decode()
            # both readers of k's group have read the lost write's entry
            assert wait_until(lambda: all(coordinator_stats(h)["stream_last_ids"][layout.stream("k")] == newest
                                          for h in two_hosts), timeout=DEADLINE)
            redis_cluster.server_on(old).kill()
        finally:
            replica.resume()
        assert redis_cluster.wait_replaced(old, replicas) == replica.port
        # each host sees that k's group's stream went back, drops its L1, and reads what the new master holds
        assert wait_until(lambda: client_a.get("k") == client_b.get("k") == "replicated", timeout=DEADLINE), \
            (client_a.get("k"), client_b.get("k"))
        after = [coordinator_stats(h)["invalidation_gaps"] for h in two_hosts]
        assert all(now > before for now, before in zip(after, gaps, strict=True)), (gaps, after)
