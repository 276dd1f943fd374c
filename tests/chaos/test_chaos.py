"""The chaos checker's short profiles: 2 hosts x 3 workers on one Redis, ~50 s of load with 12 fault
windows from a fixed seed, then heal, convergence reads and the history check. About a minute each.
``short-failsafe`` is the same load with fail-safe on: every get_or_compute has a short TTL (0.2-1 s),
fail-safe 3 s with a 1 s throttle, now and then a soft and / or a hard timeout, and a function that
fails 40 % of its calls, on 16 keys of which 8 are left mostly to get_or_compute, so stale values
are served, and made fresh again, all the time. ``short-cluster`` runs the short load on a Redis
Cluster (3 masters with a replica each, the hosts on its ``redis+cluster://`` URL), 60 s with 12
windows: ``CLUSTER FAILOVER`` on a replica, a master SIGKILLed (its replica takes over, it rejoins as
a replica), coordinators killed and stopped, workers killed. ``short-sentinel`` runs it on Redis
Sentinel (a master, its replica, three sentinels, the hosts on its ``redis+sentinel://`` URL), 97 s with
12 windows: ``SENTINEL FAILOVER``, the master SIGKILLed (the sentinels promote the replica; it comes
back as the new master's replica), coordinators killed and stopped, workers killed. Both run with the
other deployment suites (``pytest -m deployments``), not in the default run. What a killed master
acknowledged and had not replicated may be lost (the README's "What a failover can lose"): the checker
counts that apart (``replication_loss``), and everything else as a violation.

A failure's message holds the report summary, the seed and the command that reruns the run
(``.venv/bin/python bench/chaos.py --profile short --seed N``, or ``--profile short-failsafe``,
``--profile short-cluster``, ``--profile short-sentinel``); the whole history and ``report.md`` stay in
the test's tmp_path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.cluster import sentinel_group
from tests.chaos.runner import PROFILES, run
from tests.chaos.schedule import CLUSTER_FAULTS, SENTINEL_FAULTS
from tests.conftest import _need_redis
from tests.redis_server import RedisClusterGroup, RedisServer, SentinelGroup


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A master, its replica and three sentinels, as a chaos run makes them (started)."""
    _need_redis()
    with sentinel_group(tmp_path / "sentinel") as group:
        yield group


def test_chaos_short_profile(redis_server: RedisServer, tmp_path: Path) -> None:
    result = run(PROFILES["short"], tmp_path / "history", profile="short", redis_server=redis_server,
                 log=lambda _: None)
    assert result.ok, "\n" + result.text


@pytest.mark.chaos_failsafe
def test_chaos_short_failsafe_profile(redis_server: RedisServer, tmp_path: Path) -> None:
    result = run(PROFILES["short-failsafe"], tmp_path / "history", profile="short-failsafe",
                 redis_server=redis_server, log=lambda _: None)
    assert result.summary["fail_safe"]["stale_served"] > 0, "\n" + result.text  # fail-safe was exercised
    assert result.ok, "\n" + result.text


def _through_failovers(profile: str, redis: RedisClusterGroup | SentinelGroup, failovers: tuple[str, ...],
                       tmp_path: Path) -> None:
    """Run ``profile`` on ``redis``: no violation, and each of ``failovers`` happened (none failed)."""
    result = run(PROFILES[profile], tmp_path / "history", profile=profile, redis_server=redis, log=lambda _: None)
    assert result.ok, "\n" + result.text
    faults = result.summary["faults"]
    assert all(faults.get(kind, 0) >= 1 for kind in failovers), "\n" + result.text
    assert not [e for e in result.summary["fault_errors"] if e.startswith(failovers)], "\n" + result.text


@pytest.mark.deployments  # ~70 s: CI's budget holds the short profile only
def test_chaos_short_cluster_profile(redis_cluster: RedisClusterGroup, tmp_path: Path) -> None:
    _through_failovers("short-cluster", redis_cluster, CLUSTER_FAULTS, tmp_path)


@pytest.mark.deployments  # ~110 s
def test_chaos_short_sentinel_profile(sentinel: SentinelGroup, tmp_path: Path) -> None:
    _through_failovers("short-sentinel", sentinel, SENTINEL_FAULTS, tmp_path)
