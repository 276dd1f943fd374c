"""mtcache over TLS on Sentinel and Redis Cluster: ``rediss+sentinel://`` (TLS to the sentinels and to the data
nodes, the same ``ssl_*`` options) and ``rediss+cluster://`` (TLS to every node), against real TLS-only servers
that ask clients for a certificate (:class:`tests.redis_server.SentinelGroup` and
:class:`tests.redis_server.RedisClusterGroup` with ``tls``, certificates made now by
:func:`tests.conftest.tls_files`).

Two hosts share each topology: a write, a delete, a lease, a user stream cross from one to the other, through
a failover too.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from mtcache import Client
from mtcache.coordinator.l2 import CLUSTER_GROUPS, Layout, key_prefix
from tests.conftest import IN_CI, _need_redis, tls_files
from tests.coordinator_proc import CoordinatorProcess
from tests.failovers import host_health, redis_ok, two_hosts_on
from tests.redis_server import RedisClusterGroup, SentinelGroup
from tests.waiting import wait_until

#: a sentinel failover takes ~12 s (the demoted master is reconfigured on the sentinels' 10 s INFO period):
#: with the other deployment suites (pytest -m deployments), not in the default run
pytestmark = pytest.mark.deployments

DEADLINE = 60.0
PREFIX = key_prefix("default")
_Group = TypeVar("_Group", SentinelGroup, RedisClusterGroup)


@contextlib.contextmanager
def _running_or_skip(group: _Group) -> Iterator[_Group]:
    """``group`` started, and stopped at the end; skip when this redis-server build does not serve TLS (fail
    in CI, which installs one that does), as :func:`tests.conftest.start_tls_server` does."""
    try:
        group.start()
    except (RuntimeError, FileNotFoundError) as exc:
        group.stop()
        if ("tls" in str(exc).lower() or "ssl" in str(exc).lower()) and not IN_CI:
            pytest.skip(f"this redis-server build does not serve TLS: {exc}")
        raise
    try:
        yield group
    finally:
        group.stop()


def _refuses_plain(port: int) -> bool:
    """True if a plain (not TLS) ``PING`` gets no ``+PONG`` on ``port``: the server there is TLS-only."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as plain:
            plain.sendall(b"PING\r\n")
            return not plain.recv(64).startswith(b"+PONG")
    except OSError:  # reset, or no answer in time
        return True


@pytest.fixture
def tls_sentinel(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A TLS-only master, its replica and three TLS-only sentinels."""
    _need_redis()
    with _running_or_skip(SentinelGroup(tmp_path / "sentinel", tls=tls_files(tmp_path / "tls"))) as group:
        yield group


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[RedisClusterGroup]:
    """A TLS-only Redis Cluster (bus and replication over TLS): three masters with a replica each."""
    _need_redis()
    with _running_or_skip(RedisClusterGroup(tmp_path / "cluster", tls=tls_files(tmp_path / "tls"))) as cluster:
        yield cluster


def _share(url: str, a: CoordinatorProcess, b: CoordinatorProcess) -> None:
    """What one host does the other sees, the user streams included (on ``url``, which the clients open)."""
    with Client(a.socket_path, spawn=False, redis_url=url) as client_a, \
            Client(b.socket_path, spawn=False, redis_url=url) as client_b:
        client_a.set("k", "v1")
        assert wait_until(lambda: client_b.get("k") == "v1", timeout=DEADLINE)
        client_a.set("k", "v2")  # b holds v1 in L1: the invalidation stream tells it
        assert wait_until(lambda: client_b.get("k") == "v2", timeout=DEADLINE)
        client_b.delete("k")
        assert wait_until(lambda: client_a.get("k") is None, timeout=DEADLINE)
        assert client_a.get_or_compute("computed", lambda: "c") == "c"  # a lease on Redis
        assert client_b.get_or_compute("computed", lambda: "not called") == "c"
        entry_id = client_a.publish_to_stream("events", {"n": 1})
        assert client_b.read_stream("events", "0-0") == [(entry_id, {"n": "1"})]


def _after_failover(url: str, a: CoordinatorProcess, b: CoordinatorProcess, key: str = "after") -> None:
    """Both hosts use the new master: a write of ``key`` on one reaches the other, and both say ok/ok."""
    assert wait_until(lambda: redis_ok(a) and redis_ok(b), timeout=DEADLINE), [host_health(h) for h in (a, b)]
    with Client(a.socket_path, spawn=False, redis_url=url) as client_a, \
            Client(b.socket_path, spawn=False, redis_url=url) as client_b:
        assert client_b.get("k") is None
        client_a.set(key, 2)
        assert wait_until(lambda: client_b.get(key) == 2, timeout=DEADLINE)
        client_b.set(key, 3)
        assert wait_until(lambda: client_a.get(key) == 3, timeout=DEADLINE)
        newer = client_b.publish_to_stream("events", {"n": 2})
        assert [e for e, _ in client_a.read_stream_latest("events", 1)] == [newer]
    for host in (a, b):
        health = host_health(host)
        assert (health["redis"], health["mode"]) == ("ok", "ok"), health


def test_two_hosts_on_a_tls_sentinel_group_through_a_failover(tls_sentinel: SentinelGroup, short_tmp: Path) -> None:
    group = tls_sentinel
    url = group.url
    assert url.startswith("rediss+sentinel://") and "ssl_ca_certs=" in url
    # TLS-only, sentinels and data nodes alike: mtcache could not have used a plain connection
    assert all(_refuses_plain(port) for port in (*group.sentinel_ports, group.master.port, group.replica.port))
    with two_hosts_on(url, short_tmp) as (a, b):
        _share(url, a, b)
        old = group.master_port()
        with group.server_on(old).client() as master:
            assert master.exists(PREFIX + "k:computed")
        new = group.failover()
        assert new != old
        _after_failover(url, a, b)
        with group.server_on(new).client() as master:
            assert master.get(PREFIX + "k:after") is not None  # written on the new master, over TLS


def test_two_hosts_on_a_tls_cluster_through_a_failover(tls_cluster: RedisClusterGroup, short_tmp: Path) -> None:
    cluster = tls_cluster
    url = cluster.url
    assert url.startswith("rediss+cluster://") and "ssl_ca_certs=" in url
    assert all(_refuses_plain(server.port) for server in cluster.servers)  # TLS-only, every node
    with two_hosts_on(url, short_tmp) as (a, b):
        _share(url, a, b)
        old, new = cluster.failover()  # the first master's replica takes over
        assert new != old and new in cluster.master_ports()
        layout = Layout(PREFIX, "default", CLUSTER_GROUPS)
        with cluster.client() as client:
            # a key the new master serves
            key = next(k for k in (f"after{i}" for i in range(1000))
                       if client.get_node_from_key(layout.record(k)).port == new)
        _after_failover(url, a, b, key)
        with cluster.server_on(new).client() as master:
            assert master.get(layout.record(key)) is not None  # written on the new master, over TLS
