"""One chaos run, start to verdict: start the cluster, play the fault schedule while the workers
load it, stop, read the final state, check the history and write the report. Shared by
``tests/chaos/test_chaos.py`` and ``bench/chaos.py`` (whose command line reruns any run exactly)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.chaos.checker import CheckParams, check
from tests.chaos.cluster import Cluster, ClusterSettings, Redis
from tests.chaos.faults import FaultInjector
from tests.chaos.history import load_history
from tests.chaos.report import markdown, ok, short_text, summarize
from tests.chaos.schedule import ALL_KINDS, CLUSTER_KINDS, KINDS, MIN_GAP, SENTINEL_KINDS, Window, make_schedule
from tests.chaos.workload import WorkloadSettings

#: The fault kinds each Redis deployment can take (see tests/chaos/schedule.py).
REDIS_KINDS = {"single": frozenset(KINDS), "cluster": frozenset(CLUSTER_KINDS), "sentinel": frozenset(SENTINEL_KINDS)}


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run; the same config (seed included) replays the same schedule and
    the same per-worker operations. Durations in seconds."""

    seed: int = 1
    hosts: int = 2
    workers: int = 3
    async_workers: int = 1
    keys: int = 8
    seconds: float = 50.0
    faults: int = 10
    no_faults: bool = False
    kinds: str = ",".join(KINDS)
    #: ``"single"``: one redis-server, each host through its own fault proxy; ``"cluster"``: a Redis
    #: Cluster of 3 masters with a replica each, the hosts on its ``redis+cluster://`` URL (no proxy;
    #: the fault kinds of :data:`tests.chaos.schedule.CLUSTER_KINDS`); ``"sentinel"``: a master, its
    #: replica and three sentinels, the hosts on its ``redis+sentinel://`` URL (no proxy; the fault
    #: kinds of :data:`tests.chaos.schedule.SENTINEL_KINDS`)
    redis: str = "single"
    warmup: float = 2.0
    heal_bound: float = 8.0
    propagation_bound: float = 1.0
    tol_ms: float = 5.0
    staleness_bound: float = 1.0
    redis_timeout: float = 0.3
    lease_ttl: float = 3.0
    slow_prob: float = 0.003
    fail_prob: float = 0.05
    cancel_prob: float = 0.1
    think_ms: float = 3.0
    idle_prob: float = 0.0005
    dup_slack: float = 3.0
    rss_every: float = 5.0
    #: fail-safe seconds of every get_or_compute (0: off). On, each call also gets a short TTL
    #: (uniform in [goc_ttl_min, goc_ttl_max]), ``fail_safe_throttle``, and now and then a soft
    #: (``soft_prob``) and / or a hard timeout (``hard_prob``); sets keep their hour-long TTL (see
    #: :class:`tests.chaos.workload.WorkloadSettings`)
    fail_safe: float = 0.0
    fail_safe_min: float = 0.0
    fail_safe_throttle: float = 1.0
    goc_ttl_min: float = 0.3
    goc_ttl_max: float = 2.0
    soft_prob: float = 0.2
    hard_prob: float = 0.2
    #: with fail-safe on, the share of sets and deletes drawn on the upper half of the keys that stay
    #: there (the others move to the lower half: computed values there live long enough to go stale)
    write_share: float = 0.01
    #: with fail-safe on, how many keys are read rarely, and the share of their reads that stay
    cold_keys: int = 2
    cold_share: float = 0.03
    #: how long after its fresh (or stale) deadline a value may still be read (see
    #: :func:`tests.chaos.checker.expired_value_violations`)
    expiry_slack: float = 0.25

    def schedule(self) -> list[Window]:
        """The fault windows: between the warm-up and ``heal_bound`` (+1 s) before the load ends.

        :raises ValueError: ``redis`` is not ``single``, ``cluster`` or ``sentinel``, or a kind does not fit it.
        """
        if self.redis not in REDIS_KINDS:
            raise ValueError(f"redis must be one of {sorted(REDIS_KINDS)}, not {self.redis!r}")
        kinds = tuple(k for k in self.kinds.split(",") if k)
        misfits = [k for k in kinds if k in ALL_KINDS and k not in REDIS_KINDS[self.redis]]
        if misfits:  # (an unknown kind is make_schedule's to refuse)
            raise ValueError(f"fault kinds {misfits} do not fit redis={self.redis!r} (it takes "
                             f"{','.join(k for k in ALL_KINDS if k in REDIS_KINDS[self.redis])})")
        if self.no_faults:
            return []
        return make_schedule(self.seed, count=self.faults, begin=self.warmup,
                             end=self.seconds - self.heal_bound - 1.0, hosts=self.hosts, workers=self.workers,
                             kinds=kinds, redis=self.redis)

    def cluster_settings(self) -> ClusterSettings:
        workload = WorkloadSettings(self.keys, self.slow_prob, self.fail_prob, self.cancel_prob, self.lease_ttl,
                                    self.think_ms, self.idle_prob, fail_safe=self.fail_safe,
                                    fail_safe_min=self.fail_safe_min,
                                    fail_safe_throttle=self.fail_safe_throttle, goc_ttl_min=self.goc_ttl_min,
                                    goc_ttl_max=self.goc_ttl_max, soft_prob=self.soft_prob, hard_prob=self.hard_prob,
                                    write_share=self.write_share, cold_keys=self.cold_keys,
                                    cold_share=self.cold_share)
        return ClusterSettings(self.hosts, self.workers, self.async_workers, self.seed,
                               staleness_bound=self.staleness_bound, redis_timeout=self.redis_timeout,
                               lease_ttl=self.lease_ttl, workload=workload, redis=self.redis)

    def check_params(self) -> CheckParams:
        return CheckParams(tol=self.tol_ms / 1000, propagation_bound=self.propagation_bound,
                           heal_bound=self.heal_bound, dup_slack=self.dup_slack, expiry_slack=self.expiry_slack,
                           namespace=ClusterSettings().namespace)

    def command(self, profile: str) -> str:
        """The command line that reruns this config (``profile`` plus what differs from it)."""
        base = PROFILES[profile]
        args = [f"--profile {profile}"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != getattr(base, f.name) or f.name == "seed":
                flag = "--" + f.name.replace("_", "-")
                args.append(flag if value is True else f"{flag} {value}")
        return ".venv/bin/python bench/chaos.py " + " ".join(args)


#: How long ``short-sentinel``'s load lasts: its 12 windows need 68-85.5 s, depending on what the seed
#: deals (see :func:`tests.chaos.schedule.make_schedule`), after the 2 s warm-up and before the last
#: ``heal_bound`` (+1 s).
SENTINEL_SECONDS = 97.0


#: ``short``: the pytest profile (~60 s in all; 12 windows, so every fault kind once);
#: ``short-failsafe``: the same with fail-safe on (0.5-3 s, throttle 1 s; TTLs of 0.2-1 s, soft and
#: hard timeouts, a function that fails 40 % of its calls, 16 keys of which 8 are mostly computed
#: and 2 of those rarely read, so stale values are served all the time, at every age);
#: ``short-cluster``: the short load on a Redis Cluster (3 masters, a replica each), 12 windows of
#: the cluster kinds (``CLUSTER FAILOVER``, a master SIGKILLed, coordinators killed and stopped,
#: workers killed); 60 s, as a window with a failover needs ~4 s (the failover, its settling, the gap);
#: ``short-sentinel``: the short load on Redis Sentinel (a master, a replica, three sentinels), 12
#: windows of the Sentinel kinds (``SENTINEL FAILOVER``, the master SIGKILLed, coordinators killed and
#: stopped, workers killed); 97 s, as a ``SENTINEL FAILOVER`` is over only once the sentinels have
#: turned the old master into a replica, 11-12.5 s after it (see
#: :data:`tests.chaos.schedule.SENTINEL_SETTLE`);
#: ``soak``: 30 minutes, a fault every ~4.5 s.
PROFILES = {
    "short": RunConfig(seed=14, seconds=50.0, faults=12),
    "short-failsafe": RunConfig(seed=14, seconds=50.0, faults=12, keys=16, fail_safe=3.0, fail_safe_min=0.5,
                                fail_prob=0.4, soft_prob=0.3, goc_ttl_min=0.2, goc_ttl_max=1.0),
    "short-cluster": RunConfig(seed=14, seconds=60.0, faults=12, redis="cluster", kinds=",".join(CLUSTER_KINDS)),
    "short-sentinel": RunConfig(seed=14, seconds=SENTINEL_SECONDS, faults=12, redis="sentinel",
                                kinds=",".join(SENTINEL_KINDS)),
    "soak": RunConfig(seconds=1800.0, faults=390),
}


def add_arguments(parser: argparse.ArgumentParser, default_profile: str = "short") -> None:
    """One option per :class:`RunConfig` field (default: the profile's value), and ``--profile``."""
    parser.add_argument("--profile", choices=sorted(PROFILES), default=default_profile)
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=None)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=None)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The profile's config with every option given on the command line applied."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if getattr(args, f.name) is not None}
    return dataclasses.replace(PROFILES[args.profile], **given)


@dataclass
class RunResult:
    """A finished run: its report (see :func:`tests.chaos.report.summarize`), the short text, the verdict."""

    summary: dict[str, Any]
    text: str
    ok: bool


class _Ticker:
    """Sleeps until a deadline while restarting dead workers and sampling coordinator memory."""

    def __init__(self, cluster: Cluster, t0: int, rss_every: float) -> None:
        self.cluster, self.t0, self.rss_every = cluster, t0, rss_every
        self.rss: list[dict[str, Any]] = []
        self._next_rss = 0.0

    def now(self) -> float:
        """Seconds since ``t0``."""
        return (time.monotonic_ns() - self.t0) / 1e9

    def until(self, offset: float) -> None:
        deadline = self.t0 + int(offset * 1e9)
        while True:
            now = time.monotonic_ns()
            if (now - self.t0) / 1e9 >= self._next_rss:
                self.rss.append({"t": round((now - self.t0) / 1e9, 1), "kib": self.cluster.rss_kib()})
                self._next_rss += self.rss_every
            if now >= deadline:
                return
            self.cluster.reap()
            time.sleep(min(0.1, (deadline - now) / 1e9))  # the schedule is timed: sleep to the next event


def run(config: RunConfig, out: Path, *, profile: str = "short",
        redis_server: Redis | None = None, log: Callable[[str], None] = print) -> RunResult:
    """Run ``config`` with its history in ``out``; write ``report.md`` and ``report.json`` there.

    ``redis_server``: the redis-server (``config.redis == "single"``), the Redis Cluster (``"cluster"``)
    or the Sentinel group (``"sentinel"``) to run on; None: the run starts (and stops) its own.

    A window that would begin less than ``MIN_GAP`` after the previous one was over (a fault that
    went on past its planned end: a failover settling) begins that much later, and the load goes on
    until ``heal_bound`` after the last one at least."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    schedule = config.schedule()
    cluster = Cluster(config.cluster_settings(), out, redis_server=redis_server)
    injector = FaultInjector(cluster, out / "faults.jsonl")
    command = config.command(profile)
    rss: list[dict[str, Any]] = []
    try:
        cluster.start()
        t0 = time.monotonic_ns()
        (out / "run.json").write_text(json.dumps({"t0": t0, "command": command, "config": dataclasses.asdict(config),
                                                  "schedule": [w.as_dict() for w in schedule]}, indent=1))
        log(f"chaos: seed {config.seed}, {len(schedule)} faults over {config.seconds:g}s; rerun: {command}")
        ticker = _Ticker(cluster, t0, config.rss_every)
        rss = ticker.rss
        over = 0.0  # when the previous window was over
        for window in schedule:
            begin = max(window.start, over + MIN_GAP)
            if begin > window.start:
                log(f"chaos: window #{window.index} begins {begin - window.start:.2f}s late (the previous one "
                    f"went on past its slot)")
            ticker.until(begin)
            injector.apply(window)
            if window.duration:
                ticker.until(begin + window.duration)
                injector.heal()
            over = ticker.now()
        ticker.until(max(config.seconds, over + config.heal_bound))
        cluster.stop_workers()
        final_start = time.monotonic_ns()
        final = cluster.final_reads([f"k{i}" for i in range(config.keys)])
        (out / "final-time.json").write_text(json.dumps({"start": final_start, "end": time.monotonic_ns()}))
        (out / "final.json").write_text(json.dumps(final))
        (out / "redis-final.json").write_text(json.dumps(cluster.redis_records(list(final[0]) if final else []),
                                                      default=repr))
        (out / "coordinators.json").write_text(json.dumps(cluster.coordinator_stats(), default=str))
    finally:
        injector.heal()
        cluster.close()
    history = load_history(out)
    result = check(history, config.check_params())
    stats_path = out / "coordinators.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    summary = summarize(history, result, config=dataclasses.asdict(config), schedule=schedule, command=command,
                        wall_seconds=time.monotonic() - started, rss=rss, history_dir=str(out), coordinators=stats)
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "report.md").write_text(markdown(summary))
    return RunResult(summary, short_text(summary), ok(summary))
