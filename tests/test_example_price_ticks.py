"""examples/price_ticks.py runs to the end by itself against a real Redis and reports
every tick consumed exactly once; without Redis it says so and exits with status 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import redis

from tests.redis_server import RedisServer, free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "price_ticks.py"
RUN_TIMEOUT = 90  # the example bounds itself at 60 s


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )


def test_every_tick_is_consumed_exactly_once(redis_server: RedisServer) -> None:
    ticks = 450  # more than the stream keeps (MAXLEN 200), so trimming happens while consumers work
    result = _run("--redis-url", redis_server.url, "--ticks", str(ticks))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"every tick consumed exactly once: {ticks} of {ticks} (duplicates 0, missing 0)" in result.stdout
    shares = [int(n) for n in re.findall(r"consumer-\d consumed (\d+)", result.stdout)]
    assert len(shares) == 2
    assert sum(shares) == ticks
    length = re.search(r"now (\d+) entries", result.stdout)
    assert length is not None
    assert 200 <= int(length.group(1)) < ticks  # trimmed, never below MAXLEN
    assert len(re.findall(r"#\s+\d+\s+(?:AAPL|MSFT|GOOG)", result.stdout)) == 5  # the latest ticks
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.keys("mtcache:example:*") == []  # the run cleaned up its stream


def test_without_redis_it_says_so_and_exits_2() -> None:
    result = _run("--redis-url", f"redis://127.0.0.1:{free_port()}/0", "--ticks", "10")
    assert result.returncode == 2
    assert "does not answer" in result.stderr
