"""mtcache on the Redis deployments teams run (issue 17): a TLS-only Redis that asks for client
certificates, and an ACL user with the README's minimal ACL (:data:`mtcache.config.MINIMAL_ACL`).

Every connection mtcache opens (the L2 tier's client, its write lane and the stream reader's blocking
connection, made from the pool's ``connection_kwargs``; the user streams) must carry the URL's TLS options
and credentials: on a TLS-only server that requires a client certificate, a connection that dropped them
would fail. A few cross-host tests run here on each deployment by default; ``pytest -m deployments``
runs all of ``tests/test_cross_host.py`` on each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtcache import Client
from mtcache.config import MINIMAL_ACL
from tests.conftest import ACL_USER, deployed_server, start_acl_server
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer

# the cross-host tests this module also runs, on its own redis_server (below); their fixtures with them
from tests.test_cross_host import (  # noqa: F401 - collected and resolved here
    hosts,
    test_a_write_on_one_host_reaches_another_hosts_near_and_l1_copies,
)
from tests.waiting import wait_until

DEADLINE = 30.0


@pytest.fixture(params=["tls", "acl", "valkey"])
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A TLS-only Redis (client certificates required), one used as the minimal ACL user, or Valkey
    (skipped with a message when it is not installed)."""
    with deployed_server(request.param, tmp_path) as server:
        yield server


def _health(host: CoordinatorProcess) -> dict:
    with Client(host.socket_path, spawn=False) as client:
        health = client.health()
    return {"redis": health.redis, "mode": health.mode, **health.details}


def test_every_connection_works_on_the_deployment(
    hosts: Callable[..., list[CoordinatorProcess]], redis_server: RedisServer,  # noqa: F811 - the imported fixture
) -> None:
    a, b = hosts(2)
    url = redis_server.url  # the clients open user streams on it themselves
    with Client(a.socket_path, spawn=False, redis_url=url) as client_a, \
            Client(b.socket_path, spawn=False, redis_url=url) as client_b:
        client_a.set("k", 1)  # the write lane
        assert wait_until(lambda: client_b.get("k") == 1, timeout=DEADLINE)  # L2 reads
        client_a.set("k", 2)  # ... and the stream reader tells b
        assert wait_until(lambda: client_b.get("k") == 2, timeout=DEADLINE)
        client_a.clear()  # SCAN and the conditional deletes
        assert wait_until(lambda: client_b.get("k") is None, timeout=DEADLINE)
        assert client_b.get_or_compute("computed", lambda: "v") == "v"  # the Redis lease
        # user streams open their own clients from the same URL
        entry_id = client_a.publish_to_stream("events", {"n": 1})
        assert client_b.read_stream("events", "0-0") == [(entry_id, {"n": "1"})]
        for host in (a, b):
            health = _health(host)
            assert (health["redis"], health["mode"], health["warnings"]) == ("ok", "ok", [])
    if redis_server.acl_user:
        with redis_server.client() as admin:
            # the minimal ACL was enough: Redis refused nothing mtcache sent
            assert admin.acl_log() == []


@pytest.mark.parametrize(
    ("dropped", "needed"),
    [("+evalsha", True), ("+ping", True), ("+time", False), ("+config|get", False)],
)
def test_a_missing_acl_permission_is_named_in_the_log_and_health(
    tmp_path: Path, short_tmp: Path, dropped: str, needed: bool
) -> None:
    rules = " ".join(rule for rule in MINIMAL_ACL.split() if rule != dropped)
    assert rules != MINIMAL_ACL
    server = start_acl_server(tmp_path / "redis", rules)
    host = CoordinatorProcess(short_tmp / "c.sock", redis_url=server.url)
    try:
        host.start()
        with Client(host.socket_path, spawn=False) as client:
            client.set("k", 1)  # a write: without +evalsha it is refused
        if needed:
            assert wait_until(lambda: _health(host)["redis"] == "down", timeout=DEADLINE), _health(host)
            health = _health(host)
            assert (health["redis_failure"], health["mode"]) == ("permission", "degraded")
            assert f"the ACL user lacks {dropped}" in health["redis_reason"]
            assert wait_until(lambda: f"lacks {dropped}; grant it" in host.log(), timeout=DEADLINE), host.log()
        else:
            # optional: mtcache runs, and says what goes unchecked
            assert wait_until(lambda: any(dropped in w for w in _health(host)["warnings"]), timeout=DEADLINE)
            health = _health(host)
            assert (health["redis"], health["redis_failure"]) == ("ok", None)
            assert f"grant {dropped} to check it" in host.log()
        assert server.acl_user is not None and server.acl_user[1] not in host.log()
        assert f"{ACL_USER}:***@" in health["redis_url"]
    finally:
        host.stop()
        server.stop()
