"""Shared fixtures: real redis-server processes on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtcache.config import MINIMAL_ACL
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisClusterGroup, RedisServer, redis_binary

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The cross-host tests that ``tests/test_cluster.py`` imports join ``-m deployments`` there, but for
    its ``DEFAULT_CROSS_HOST`` with the parameters it names (before ``-m`` deselects anything)."""
    for item in items:
        module, function = getattr(item, "module", None), getattr(item, "function", None)
        if module is None or function is None or module.__name__ != "tests.test_cluster" \
                or function.__module__ != "tests.test_cross_host":
            continue
        name, params = module.DEFAULT_CROSS_HOST
        callspec = getattr(item, "callspec", None)
        given = callspec.params if callspec is not None else {}
        if function.__name__ != name or any(given.get(k) != v for k, v in params.items()):
            item.add_marker(pytest.mark.deployments)


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
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterGroup]:
    """A fresh Redis Cluster for this test alone: three masters with a replica each, settled (no persistence);
    tests may fail over, kill and restart its nodes."""
    _need_redis()
    if shutil.which("redis-cli") is None:
        if IN_CI:
            pytest.fail("redis-cli is not on PATH; CI must install it (Debian's redis-server brings it)")
        pytest.skip("redis-cli is not on PATH (it makes the cluster); install it to run this test")
    with RedisClusterGroup(tmp_path / "cluster") as cluster:
        yield cluster


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


def tls_files(folder: Path) -> dict[str, str]:
    """A CA, and a certificate for 127.0.0.1 signed by it, made now (trustme, in the test extra): the paths
    of ``ca``, ``cert`` and ``key`` (PEM) in ``folder``. The server and its clients use the same certificate
    (redis-server asks clients for one signed by its CA)."""
    trustme = pytest.importorskip("trustme", reason="trustme is in the test extra: pip install -e '.[test]'")
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {"cert": folder / "cert.pem", "key": folder / "key.pem", "ca": folder / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return {name: str(path) for name, path in files.items()}


def start_tls_server(workdir: Path) -> RedisServer:
    """A started TLS-only redis-server (no plain port) with certificates made now; its :attr:`url` is a
    ``rediss://`` URL carrying ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_cert_reqs``.
    Skips when this redis-server build does not serve TLS (fails in CI, which installs one that does)."""
    _need_redis()
    server = RedisServer(workdir, tls=tls_files(workdir / "tls"))
    try:
        server.start()
    except RuntimeError as exc:
        if ("tls" in str(exc).lower() or "ssl" in str(exc).lower()) and not IN_CI:
            pytest.skip(f"this redis-server build does not serve TLS: {exc}")
        raise
    return server


#: the ACL user of :func:`start_acl_server` (the password is made per server)
ACL_USER = "mtcache-app"


def start_acl_server(workdir: Path, rules: str = MINIMAL_ACL) -> RedisServer:
    """A started redis-server whose :attr:`url` connects as the ACL user :data:`ACL_USER` with ``rules``
    (the README's minimal ACL by default); the default user, which the tests' own :meth:`client` uses,
    needs a password of its own."""
    _need_redis()
    server = RedisServer(workdir, password=secrets.token_hex(8), acl_user=(ACL_USER, secrets.token_hex(8), rules))
    server.start()
    return server


@contextlib.contextmanager
def deployed_server(kind: str, workdir: Path) -> Iterator[RedisServer]:
    """A fresh redis-server deployed as ``kind`` says: ``"plain"``, ``"tls"`` (TLS only, client
    certificates required, see :func:`start_tls_server`), ``"acl"`` (the application connects as the
    minimal ACL user, see :func:`start_acl_server`) or ``"valkey"`` (``valkey-server``; skipped with a
    message when it is not installed); stopped on exit. Tests may kill and restart it."""
    if kind == "tls":
        server = start_tls_server(workdir / "redis-tls")
    elif kind == "acl":
        server = start_acl_server(workdir / "redis-acl")
    elif kind == "plain":
        _need_redis()
        server = RedisServer(workdir / "redis")
        server.start()
    elif kind == "valkey":
        binary = shutil.which("valkey-server")
        if binary is None:
            pytest.skip("valkey-server is not on PATH: install Valkey to run mtcache's tests on it")
        server = RedisServer(workdir / "valkey", binary=binary)
        server.start()
    else:
        raise ValueError(f"unknown deployment {kind!r}: expected plain, tls, acl or valkey")
    try:
        yield server
    finally:
        server.stop()
