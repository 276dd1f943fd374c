"""Chaos soak: mtcache under a seeded fault schedule, its history checked against the consistency
contract (README, "Consistency: what you can rely on").

    .venv/bin/python bench/chaos.py [--minutes 30] [--hosts 2] [--workers 3] [--seed N] [--out DIR]
    .venv/bin/python bench/chaos.py --profile short --seed N      # the pytest profile (~1 minute)
    .venv/bin/python bench/chaos.py --profile short --no-faults   # the same load, no faults
    .venv/bin/python bench/chaos.py --profile short-failsafe      # get_or_compute with fail-safe on
    .venv/bin/python bench/chaos.py --minutes 30 --fail-safe 3 --fail-prob 0.25   # a fail-safe soak
    .venv/bin/python bench/chaos.py --profile short-cluster --seed N   # on a Redis Cluster, with failovers
    .venv/bin/python bench/chaos.py --profile short-sentinel --seed N  # on Redis Sentinel, with failovers

Starts one redis-server, ``--hosts`` coordinators (each behind a fault proxy) with ``--workers``
worker processes each, plays the fault schedule, then checks the recorded history. With ``--redis
cluster`` (``--profile short-cluster``) it starts a Redis Cluster instead (3 masters with a replica
each; needs redis-cli) and the hosts use its ``redis+cluster://`` URL directly, under failovers
(``CLUSTER FAILOVER``, a master SIGKILLed). With ``--redis sentinel`` (``--profile short-sentinel``) it
starts a master, its replica and three sentinels, and the hosts use their ``redis+sentinel://`` URL
(``SENTINEL FAILOVER``, the master SIGKILLed and brought back as a replica). Writes ``report.md`` and
``report.json`` (operations, faults by kind, violations by kind with examples, the documented
replication loss of a killed master apart, the longest call, coordinator RSS over time) to ``--out``
(default: a new folder under /tmp), and exits 1 if a violation was found. Every option of
tests/chaos/runner.py's RunConfig is an option here; a failing run prints the exact command that
reruns it.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.runner import PROFILES, add_arguments, config_from_args, run

#: One fault window every this many seconds in a soak given in --minutes.
SOAK_FAULT_EVERY = 4.5


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=None, help="load length (soak default 30; sets --seconds)")
    parser.add_argument("--out", type=Path, default=None, help="history and report folder")
    add_arguments(parser, default_profile="soak")
    args = parser.parse_args(argv)
    if args.minutes is not None:
        args.seconds = args.minutes * 60
        if args.faults is None and not args.no_faults:
            base = PROFILES[args.profile]
            args.faults = max(1, int((args.seconds - base.warmup - base.heal_bound - 1) / SOAK_FAULT_EVERY))
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    config = config_from_args(args)
    out = args.out or Path(tempfile.mkdtemp(prefix=f"mtcache-chaos-{config.seed}-"))

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the run's cleanup stops every process it started

    signal.signal(signal.SIGTERM, interrupted)
    result = run(config, out, profile=args.profile)
    print(result.text)
    print(f"report: {out / 'report.md'}")
    if not result.ok:
        print(f"\nFAILED (seed {config.seed}); rerun: {result.summary['command']}")
        print("config:", {k: v for k, v in dataclasses.asdict(config).items()})
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
