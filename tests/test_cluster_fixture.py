"""The ``redis_cluster`` fixture itself (:class:`tests.redis_server.RedisClusterGroup`): a settled cluster whose
keys spread over every master, a manual failover that keeps replicated writes, and a killed master's replica
taking its place."""

from __future__ import annotations

import redis

from tests.redis_server import RedisClusterGroup

KEYS = [f"k{i}" for i in range(300)]


def _key_on(cluster: redis.RedisCluster, port: int) -> str:
    """A hash tag whose slot the master on ``port`` serves."""
    for i in range(10_000):
        tag = f"{{t{i}}}"
        if cluster.get_node_from_key(tag).port == port:
            return tag
    raise AssertionError(f"no hash tag lands on {port}")


def test_keys_spread_over_every_master(redis_cluster: RedisClusterGroup) -> None:
    masters = redis_cluster.master_ports()
    assert len(masters) == 3
    assert redis_cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in masters)
    assert len(redis_cluster.servers) == 6
    with redis_cluster.client() as cluster:
        for i, key in enumerate(KEYS):
            cluster.set(key, i)
        assert [int(cluster.get(key)) for key in KEYS] == list(range(len(KEYS)))
    sizes = {}
    for port in masters:
        with redis_cluster.server_on(port).client() as node:
            sizes[port] = node.dbsize()
    assert all(size > 0 for size in sizes.values()), sizes
    assert sum(sizes.values()) == len(KEYS)


def test_failover_keeps_replicated_writes(redis_cluster: RedisClusterGroup) -> None:
    old_master = redis_cluster.master_ports()[0]
    with redis_cluster.client() as cluster:
        tag = _key_on(cluster, old_master)
    keys = [f"{tag}{i}" for i in range(50)]
    with redis_cluster.server_on(old_master).client() as node:
        for i, key in enumerate(keys):
            node.set(key, i)
        assert node.execute_command("WAIT", 1, 0) >= 1  # the replica has them all

    old, new = redis_cluster.failover()

    assert old == old_master and new != old
    assert new in redis_cluster.master_ports() and old not in redis_cluster.master_ports()
    with redis_cluster.server_on(new).client() as node:
        assert node.info("replication")["role"] == "master"
    with redis_cluster.server_on(old).client() as node:
        assert node.info("replication")["role"] == "slave"
    with redis_cluster.client() as cluster:
        assert cluster.get_node_from_key(tag).port == new
        assert [int(cluster.get(key)) for key in keys] == list(range(len(keys)))


def test_kill_master_promotes_its_replica(redis_cluster: RedisClusterGroup) -> None:
    old = redis_cluster.master_ports()[1]
    replicas = redis_cluster.replicas_of(old)

    new = redis_cluster.kill_master(old)

    assert new in replicas
    masters = redis_cluster.master_ports()
    assert new in masters and old not in masters and len(masters) == 3
    with redis_cluster.client() as cluster:
        for i, key in enumerate(KEYS):
            cluster.set(key, i)
        assert [int(cluster.get(key)) for key in KEYS] == list(range(len(KEYS)))

    redis_cluster.restart(old)  # back as the replica of the one that took its place

    assert redis_cluster.replicas_of(new) == [old]
    with redis_cluster.server_on(old).client() as node:
        assert node.info("replication")["role"] == "slave"
