"""The README's first command runs workers/demo.py: it must finish by itself, with and
without Redis, stop everything it started, and never touch data it did not write."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.redis_server import RedisServer, free_port
from tests.terminal import run_in_pty

DEMO = Path(__file__).resolve().parent.parent / "workers" / "demo.py"


def _run(redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, str(DEMO), "--workers", "2", "--seconds", "2"],
        capture_output=True, text=True, timeout=90, env=env, check=False,
    )


@pytest.mark.slow
def test_demo_with_redis(redis_server: RedisServer) -> None:
    # a user's data in the default namespace, and outside mtcache: the demo must leave both alone
    theirs = {"mtcache:default:v2:k:user:42": b"a record of theirs", "app:session:1": b"not mtcache's"}
    with redis.Redis.from_url(redis_server.url) as plain:
        plain.mset(theirs)
        result = _run(redis_server.url)
        assert result.returncode == 0, result.stderr
        assert "answers, using it as L2" in result.stdout
        assert "Summary" in result.stdout
        assert "calls to the price service" in result.stdout
        assert plain.mget(list(theirs)) == list(theirs.values())
        assert sorted(plain.keys("*")) == sorted(key.encode() for key in theirs)  # its own keys are gone too
    # on a terminal: the live view of mtcache top, with the whole host's figures while it runs
    code, text = run_in_pty([sys.executable, str(DEMO), "--workers", "2", "--seconds", "2"], timeout=90,
                            env={"REDIS_URL": redis_server.url})
    assert code == 0, text
    assert "answers, using it as L2" in text
    live, _, summary = text.partition("Summary")
    assert summary, text
    # the workers' near hits are in the live view before the end (they used to read 0.0 % until then)
    shares = [float(share) for share in re.findall(r"^ near\s+[\d,]+\s+([\d.]+) %", live, re.MULTILINE)]
    assert shares and max(shares) > 0, live
    assert re.search(r"stampede on report:q4: 2 workers at once; 1 computed \([\d.]+ m?s\), 1 waited", text), text
    assert re.search(r"^source\s+\d+ computed in .*saved", summary, re.MULTILINE), summary
    assert "calls to the price service" in summary


@pytest.mark.slow
def test_demo_without_redis() -> None:
    result = _run(f"redis://127.0.0.1:{free_port()}")
    assert result.returncode == 0, result.stderr
    assert "L1 only" in result.stdout
    assert "Summary" in result.stdout
    # not a terminal: no live view, a progress line now and then, and the same figures at the end
    assert "\x1b[" not in result.stdout
    assert re.search(r"^ near\s+[\d,]+\s+[\d.]+ %", result.stdout.partition("Summary")[2], re.MULTILINE)
