"""A worker that only caches never loads redis-py: it talks to its coordinator, not to Redis, and
redis-py's import costs each worker process about 10 MiB (W4 in bench/RESULTS.md counts 8 of them).
Streams, which go to Redis directly, load it when first used."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from mtcache import AsyncClient, Client
from tests.coordinator_proc import CoordinatorProcess

WORKER = r"""
import asyncio, sys
import mtcache

c = mtcache.Client(sys.argv[1], spawn=False)
c.set("a", {"x": 1})
assert c.get("a") == {"x": 1}
assert c.get_or_compute("b", lambda: 2, strategy=mtcache.CacheStrategy.REALTIME, eager_refresh=0.8) == 2
c.delete("a")
c.stats()


async def main():
    a = mtcache.AsyncClient(sys.argv[1], spawn=False)
    await a.set("c", 1)
    assert await a.get("c") == 1
    assert await a.get_or_compute("d", lambda: 3) == 3
    await a.close()

asyncio.run(main())
print("after caching:", "redis" in sys.modules)
c.streams
print("after streams:", "redis" in sys.modules)
c.close()
"""


def test_a_worker_that_caches_does_not_load_redis_py(coordinator: CoordinatorProcess) -> None:
    done = subprocess.run([sys.executable, "-c", WORKER, coordinator.socket_path], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["after caching: False", "after streams: True"]


@pytest.mark.parametrize("method", ["read_stream", "read_stream_latest", "read_group", "claim_stale", "subscribe"])
@pytest.mark.parametrize("client", [Client, AsyncClient], ids=lambda cls: cls.__name__)
def test_the_stream_methods_type_hints_resolve_without_redis_py(client: type, method: str) -> None:
    hints = typing.get_type_hints(getattr(client, method))
    assert "return" in hints
