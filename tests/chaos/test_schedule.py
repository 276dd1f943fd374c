"""The seeded parts of a chaos run are reproducible: the same seed gives the same fault schedule and
the same per-worker operations, and the runner's command line reruns the same config."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.cluster import Cluster, ClusterSettings
from tests.chaos.runner import PROFILES, RunConfig, add_arguments, config_from_args
from tests.chaos.schedule import (
    CLUSTER_FAULTS,
    CLUSTER_KINDS,
    CLUSTER_MASTERS,
    INSTANT,
    KINDS,
    MIN_GAP,
    SENTINEL_DURATIONS,
    SENTINEL_FAULTS,
    SENTINEL_KINDS,
    SENTINEL_SETTLE,
    SETTLE,
    make_schedule,
)
from tests.chaos.workload import TTL, WorkloadSettings, plans, value_id
from tests.redis_server import RedisClusterGroup, RedisServer, SentinelGroup, redis_binary


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    args: dict[str, Any] = {"count": 24, "begin": 2.0, "end": 80.0, "hosts": 3, "workers": 3}
    assert make_schedule(7, **args) == make_schedule(7, **args)
    assert make_schedule(7, **args) != make_schedule(8, **args)


def test_windows_never_overlap_and_twelve_windows_cover_every_kind() -> None:
    windows = make_schedule(3, count=12, begin=2.0, end=41.0, hosts=2, workers=3)
    assert sorted(w.kind for w in windows) == sorted(KINDS)
    for a, b in itertools.pairwise(windows):
        assert a.start + a.duration + MIN_GAP <= b.start + 1e-6
    assert all((w.duration == 0) == (w.kind in INSTANT) for w in windows)
    assert all(w.host is not None for w in windows if w.kind.startswith(("link_", "coordinator_", "worker_")))


def test_a_schedule_that_does_not_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        make_schedule(1, count=50, begin=0.0, end=10.0, hosts=2, workers=3)
    with pytest.raises(ValueError, match="unknown fault kinds"):
        make_schedule(1, count=1, begin=0.0, end=10.0, hosts=2, workers=3, kinds=("meteor",))


def test_cluster_windows_pick_a_master_and_leave_time_for_the_failover_to_settle() -> None:
    windows = make_schedule(5, count=12, begin=2.0, end=51.0, hosts=2, workers=3, kinds=CLUSTER_KINDS)
    assert set(CLUSTER_KINDS) == {w.kind for w in windows}
    assert make_schedule(5, count=12, begin=2.0, end=51.0, hosts=2, workers=3, kinds=CLUSTER_KINDS) == windows
    for a, b in itertools.pairwise(windows):
        assert a.start + a.duration + SETTLE.get(a.kind, 0.0) + MIN_GAP <= b.start + 1e-6
    failovers = [w for w in windows if w.kind in CLUSTER_FAULTS]
    assert all(w.host is None and w.slot is None and w.param in range(CLUSTER_MASTERS) for w in failovers)
    assert all((w.duration == 0) == (w.kind == "cluster_failover") for w in failovers)
    assert all(1.5 <= w.duration <= 3.0 for w in failovers if w.kind == "master_kill")
    assert "master #" in failovers[0].describe()
    # slots too short for a window, its settling and the gap are refused
    with pytest.raises(ValueError, match="do not fit"):
        make_schedule(1, count=12, begin=0.0, end=25.0, hosts=2, workers=3, kinds=CLUSTER_KINDS)
    make_schedule(1, count=12, begin=0.0, end=25.0, hosts=2, workers=3)  # those of one Redis fit


def test_the_cluster_profile_has_failovers_and_each_deployment_takes_its_own_kinds() -> None:
    config = PROFILES["short-cluster"]
    assert config.redis == "cluster" and config.cluster_settings().redis == "cluster"
    kinds = [w.kind for w in config.schedule()]
    assert len(kinds) == 12 and set(kinds) == set(CLUSTER_KINDS)
    assert kinds.count("cluster_failover") >= 1 and kinds.count("master_kill") >= 1
    assert all(w.start + w.duration + SETTLE.get(w.kind, 0.0) <= config.seconds - config.heal_bound
               for w in config.schedule())
    # the link, Redis restart, pause and maxmemory faults need one redis-server; failovers a cluster
    with pytest.raises(ValueError, match="do not fit redis='cluster'"):
        dataclasses.replace(config, kinds="master_kill,link_cut").schedule()
    with pytest.raises(ValueError, match="do not fit redis='single'"):
        dataclasses.replace(PROFILES["short"], kinds="cluster_failover").schedule()
    with pytest.raises(ValueError, match="redis must be one of"):
        dataclasses.replace(config, redis="valkey").schedule()
    assert PROFILES["short"].redis == "single" and set(KINDS).isdisjoint(CLUSTER_FAULTS)


#: sha256 (first 16 hex digits) of each existing profile's schedule, as JSON: adding a deployment must
#: not move a window of theirs (their runs, and the seeds reported against them, stay reproducible)
SCHEDULE_DIGESTS = {"short": "5d5d2b4b552d2e56", "short-failsafe": "5d5d2b4b552d2e56",
                    "short-cluster": "52a9a1e672c6a965", "soak": "89b2395ec8428d6e"}


@pytest.mark.parametrize("profile", sorted(SCHEDULE_DIGESTS))
def test_the_existing_profiles_keep_their_schedules(profile: str) -> None:
    schedule = [w.as_dict() for w in PROFILES[profile].schedule()]
    digest = hashlib.sha256(json.dumps(schedule, sort_keys=True).encode()).hexdigest()[:16]
    assert digest == SCHEDULE_DIGESTS[profile]


def _sentinel_schedule(seed: int, end: float = 88.0) -> list:
    return make_schedule(seed, count=12, begin=2.0, end=end, hosts=2, workers=3, kinds=SENTINEL_KINDS,
                         redis="sentinel")


def test_sentinel_windows_leave_each_kind_the_time_it_needs() -> None:
    settle = {**SETTLE, **SENTINEL_SETTLE}
    for seed in range(1, 101):
        windows = _sentinel_schedule(seed)
        assert windows == _sentinel_schedule(seed)
        kinds = [w.kind for w in windows]
        # two full decks and two more: each kind twice at least
        assert set(kinds) == set(SENTINEL_KINDS) and all(kinds.count(k) >= 2 for k in SENTINEL_KINDS)
        for a, b in itertools.pairwise(windows):
            assert a.start + a.duration + settle.get(a.kind, 0.0) + MIN_GAP <= b.start + 1e-6, (seed, a, b)
        last = windows[-1]
        assert last.start + last.duration + settle.get(last.kind, 0.0) + MIN_GAP <= 88.0 + 1e-6
        assert windows[0].start >= 2.0
        failovers = [w for w in windows if w.kind in SENTINEL_FAULTS]
        # one master: a failover names none
        assert all(w.host is None and w.slot is None and w.param is None for w in failovers)
        assert all((w.duration == 0) == (w.kind == "sentinel_failover") for w in failovers)
        low, high = SENTINEL_DURATIONS["master_kill"]
        assert all(low <= w.duration <= high for w in failovers if w.kind == "master_kill")
        assert "master #" not in " ".join(w.describe() for w in failovers)
    # the slots follow the kinds: what follows a worker kill comes sooner than a SENTINEL FAILOVER's settling
    after_worker_kill = [b.start - a.start for seed in range(1, 101)
                         for a, b in itertools.pairwise(_sentinel_schedule(seed)) if a.kind == "worker_kill"]
    assert max(after_worker_kill) < SENTINEL_SETTLE["sentinel_failover"]
    # too short for what a seed may deal is refused whatever the seed deals
    for seed in (1, 2, 3):
        with pytest.raises(ValueError, match="do not fit"):
            _sentinel_schedule(seed, end=80.0)
    with pytest.raises(ValueError, match="unknown Redis deployment"):
        make_schedule(1, count=3, begin=0.0, end=30.0, hosts=2, workers=3, redis="valkey")


def test_the_sentinel_profile_has_failovers_and_takes_the_sentinel_kinds() -> None:
    config = PROFILES["short-sentinel"]
    assert config.redis == "sentinel" and config.cluster_settings().redis == "sentinel"
    settle = {**SETTLE, **SENTINEL_SETTLE}
    for seed in range(1, 101):
        windows = dataclasses.replace(config, seed=seed).schedule()
        kinds = [w.kind for w in windows]
        assert len(kinds) == 12 and set(kinds) == set(SENTINEL_KINDS)
        assert kinds.count("sentinel_failover") >= 1 and kinds.count("master_kill") >= 1
        assert all(w.start + w.duration + settle.get(w.kind, 0.0) <= config.seconds - config.heal_bound
                   for w in windows)
    # the link, Redis restart, pause and maxmemory faults need one redis-server; a CLUSTER FAILOVER a
    # cluster; a SENTINEL FAILOVER the sentinels. A master SIGKILL fits both.
    with pytest.raises(ValueError, match="do not fit redis='sentinel'"):
        dataclasses.replace(config, kinds="master_kill,link_cut").schedule()
    with pytest.raises(ValueError, match="do not fit redis='sentinel'"):
        dataclasses.replace(config, kinds="cluster_failover").schedule()
    with pytest.raises(ValueError, match="do not fit redis='cluster'"):
        dataclasses.replace(PROFILES["short-cluster"], kinds="sentinel_failover").schedule()
    with pytest.raises(ValueError, match="do not fit redis='single'"):
        dataclasses.replace(PROFILES["short"], kinds="sentinel_failover").schedule()
    assert set(KINDS).isdisjoint(SENTINEL_FAULTS)
    assert dataclasses.replace(PROFILES["short-cluster"], kinds="master_kill").schedule()


def test_a_sentinel_run_takes_a_sentinel_group(tmp_path: Path) -> None:
    if redis_binary() is None:
        pytest.skip("redis-server is not on PATH")
    group = SentinelGroup(tmp_path / "sentinel")  # made, never started
    with pytest.raises(ValueError, match="runs on a SentinelGroup"):
        Cluster(ClusterSettings(redis="sentinel"), tmp_path / "h1", redis_server=RedisServer(tmp_path / "redis"))
    with pytest.raises(ValueError, match="runs on a RedisServer"):
        Cluster(ClusterSettings(), tmp_path / "h2", redis_server=group)
    with pytest.raises(ValueError, match="redis must be one of"):
        Cluster(ClusterSettings(redis="valkey"), tmp_path / "h3")
    on_group = Cluster(ClusterSettings(redis="sentinel"), tmp_path / "h4", redis_server=group)
    assert on_group.sentinel_group is group
    with pytest.raises(RuntimeError, match="not a Redis Cluster"):
        _ = on_group.redis_cluster
    with pytest.raises(RuntimeError, match="no one redis-server"):
        _ = on_group.server
    on_group.close()  # nothing started: nothing to stop, and the group it was given is left alone


def test_a_cluster_run_takes_a_cluster_and_a_single_run_a_server(tmp_path: Path) -> None:
    if redis_binary() is None:
        pytest.skip("redis-server is not on PATH")
    server = RedisServer(tmp_path / "redis")  # made, never started
    with pytest.raises(ValueError, match="runs on a RedisClusterGroup"):
        Cluster(ClusterSettings(redis="cluster"), tmp_path / "h1", redis_server=server)
    group = RedisClusterGroup(tmp_path / "cluster")
    with pytest.raises(ValueError, match="runs on a RedisServer"):
        Cluster(ClusterSettings(), tmp_path / "h2", redis_server=group)
    on_group = Cluster(ClusterSettings(redis="cluster"), tmp_path / "h3", redis_server=group)
    assert on_group.redis_cluster is group
    with pytest.raises(RuntimeError, match="no one redis-server"):
        _ = on_group.server
    on_group.close()  # nothing started: nothing to stop, and the cluster it was given is left alone


def test_a_worker_replays_the_same_operations_for_the_same_seed() -> None:
    settings = WorkloadSettings()
    first = list(itertools.islice(plans(5, 3, settings), 500))
    assert first == list(itertools.islice(plans(5, 3, settings), 500))
    assert first != list(itertools.islice(plans(5, 4, settings), 500))
    counts = {op: sum(p.op == op for p in first) for op in ("get", "set", "delete", "goc")}
    assert counts["get"] > counts["goc"] > counts["set"] > counts["delete"] > 0


def test_fail_safe_changes_only_the_ttls_timeouts_and_keys_of_writes() -> None:
    off = list(itertools.islice(plans(5, 3, WorkloadSettings(keys=16)), 2000))
    on = list(itertools.islice(plans(5, 3, WorkloadSettings(keys=16, fail_safe=3.0, fail_safe_min=0.5)), 2000))
    assert all(p.ttl == TTL and p.soft is None and p.hard is None and not p.fail_safe for p in off)
    same = ("index", "op", "fn_seconds", "slow", "fail", "cancel_after", "think")
    assert [[getattr(p, f) for f in same] for p in off] == [[getattr(p, f) for f in same] for p in on]
    gocs = [p for p in on if p.op == "goc"]
    assert all(0.3 <= p.ttl <= 2.0 and 0.5 <= p.fail_safe <= 3.0 for p in gocs)
    assert all(p.soft is None or p.hard is None or p.soft < p.hard for p in gocs)
    assert any(p.soft for p in gocs) and any(p.hard for p in gocs)
    assert all(p.ttl == TTL and p.soft is None and p.hard is None and not p.fail_safe for p in on if p.op != "goc")
    # sets and deletes mostly leave the upper half of the keys to get_or_compute, and reads mostly
    # leave its last two keys alone
    writes = [p for p in on if p.op in ("set", "delete")]
    assert 0 < sum(int(p.key[1:]) >= 8 for p in writes) < 0.05 * len(writes)
    reads = [p for p in on if p.op in ("get", "goc")]
    assert 0 < sum(int(p.key[1:]) >= 14 for p in reads) < 0.02 * len(reads)


def test_values_name_their_write() -> None:
    assert value_id({"w": 3, "s": 9}) == (3, 9, 0)
    assert value_id({"w": 3, "s": 9, "c": 1}) == (3, 9, 1)
    assert value_id(None) is None
    with pytest.raises(ValueError):
        value_id({"w": 3})


def test_the_rerun_command_gives_back_the_same_config() -> None:
    config = dataclasses.replace(PROFILES["short"], seed=99, hosts=3, no_faults=True, kinds="link_cut,stream_trim")
    argv = shlex.split(config.command("short"))[2:]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(argv)) == config
    assert isinstance(config, RunConfig)
    safe = dataclasses.replace(PROFILES["short-failsafe"], seed=7, soft_prob=0.5)
    argv = shlex.split(safe.command("short-failsafe"))[2:]
    assert config_from_args(parser.parse_args(argv)) == safe
    assert safe.cluster_settings().workload.fail_safe == 3.0
    on_cluster = dataclasses.replace(PROFILES["short-cluster"], seed=5)
    assert on_cluster.command("short-cluster").endswith("--profile short-cluster --seed 5")
    argv = shlex.split(on_cluster.command("short-cluster"))[2:]
    assert config_from_args(parser.parse_args(argv)) == on_cluster
    argv = shlex.split(dataclasses.replace(PROFILES["short"], redis="cluster").command("short"))[2:]
    assert config_from_args(parser.parse_args(argv)).redis == "cluster"
    on_sentinel = dataclasses.replace(PROFILES["short-sentinel"], seed=3)
    assert on_sentinel.command("short-sentinel").endswith("--profile short-sentinel --seed 3")
    argv = shlex.split(on_sentinel.command("short-sentinel"))[2:]
    assert config_from_args(parser.parse_args(argv)) == on_sentinel
