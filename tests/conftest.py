"""Shared fixtures: real redis-server processes on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.coordinator_proc import CoordinatorProcess
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


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary folder: Unix socket paths are limited to ~107 bytes, and
    pytest's tmp_path can be longer."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="mtc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def coordinator(short_tmp: Path, redis_server: RedisServer) -> Iterator[CoordinatorProcess]:
    """A coordinator process on a fresh socket, backed by a fresh redis-server."""
    proc = CoordinatorProcess(short_tmp / "c.sock", redis_url=redis_server.url)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def coordinator_no_redis(short_tmp: Path) -> Iterator[CoordinatorProcess]:
    """A coordinator process serving L1 alone (``--no-redis``)."""
    proc = CoordinatorProcess(short_tmp / "c.sock", redis_url=None)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True, scope="session")
def _no_leftover_segments() -> Iterator[None]:
    """Tests kill coordinators with SIGKILL on purpose; what those leave in shared
    memory is removed at the end (a coordinator starting later would remove it too)."""
    from mtcache.shm import remove_orphans

    yield
    remove_orphans()
