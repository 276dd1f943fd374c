"""The chaos checker's short profile: 2 hosts x 3 workers on one Redis, ~50 s of load with 10 fault
windows from a fixed seed, then heal, convergence reads and the history check. About a minute.

A failure's message holds the report summary, the seed and the command that reruns the run
(``.venv/bin/python bench/chaos.py --profile short --seed N``); the whole history and
``report.md`` stay in the test's tmp_path.
"""

from __future__ import annotations

from pathlib import Path

from tests.chaos.runner import PROFILES, run
from tests.redis_server import RedisServer


def test_chaos_short_profile(redis_server: RedisServer, tmp_path: Path) -> None:
    result = run(PROFILES["short"], tmp_path / "history", profile="short", redis_server=redis_server,
                 log=lambda _: None)
    assert result.ok, "\n" + result.text
