"""Shared fixtures: real redis-server processes on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, redis_binary

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need_redis() -> None:
    if redis_binary() is None:
        if IN_CI:
            pytest.fail("redis-server is not on PATH; CI must install it (.ci/run does)")
        pytest.skip("redis-server is not on PATH; install it to run this test")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for this test alone (no persistence); tests may kill
    and restart it."""
    _need_redis()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server_aof(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with appendonly on, so its data survives a restart."""
    _need_redis()
    server = RedisServer(tmp_path / "redis-aof", appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a fresh redis-server for this test."""
    return redis_server.url
