"""The chaos checker's short profiles: 2 hosts x 3 workers on one Redis, ~50 s of load with 12 fault
windows from a fixed seed, then heal, convergence reads and the history check. About a minute each.
``short-failsafe`` is the same load with fail-safe on: every get_or_compute has a short TTL (0.2-1 s),
fail-safe 3 s with a 1 s throttle, now and then a soft and / or a hard timeout, and a function that
fails 40 % of its calls, on 16 keys of which 8 are left mostly to get_or_compute, so stale values
are served, and made fresh again, all the time. ``short-cluster`` runs the short load on a Redis
Cluster (3 masters with a replica each, the hosts on its ``redis+cluster://`` URL), 60 s with 12
windows: ``CLUSTER FAILOVER`` on a replica, a master SIGKILLed (its replica takes over, it rejoins as
a replica), coordinators killed and stopped, workers killed. What a killed master acknowledged and had
not replicated may be lost (the README's "What a failover can lose"): the checker counts that apart
(``replication_loss``), and everything else as a violation.

A failure's message holds the report summary, the seed and the command that reruns the run
(``.venv/bin/python bench/chaos.py --profile short --seed N``, or ``--profile short-failsafe``, or
``--profile short-cluster``); the whole history and ``report.md`` stay in the test's tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.runner import PROFILES, run
from tests.chaos.schedule import CLUSTER_FAULTS
from tests.redis_server import RedisClusterGroup, RedisServer


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


def test_chaos_short_cluster_profile(redis_cluster: RedisClusterGroup, tmp_path: Path) -> None:
    result = run(PROFILES["short-cluster"], tmp_path / "history", profile="short-cluster", redis_server=redis_cluster,
                 log=lambda _: None)
    assert result.ok, "\n" + result.text
    # the failovers happened: each kind at least once, none of them failed
    faults = result.summary["faults"]
    assert faults.get("cluster_failover", 0) >= 1 and faults.get("master_kill", 0) >= 1, "\n" + result.text
    assert not [e for e in result.summary["fault_errors"] if e.startswith(CLUSTER_FAULTS)], "\n" + result.text
