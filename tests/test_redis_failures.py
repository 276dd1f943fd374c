"""Why Redis is not used, told apart (issue 16, point 5): a refused password, a failed
TLS handshake and an unreachable host each get their own log line and their own
``health()`` reason, against real redis-server processes (one with ``requirepass``,
one TLS-only with certificates made here) and a closed port."""

from __future__ import annotations

import secrets
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from mtcache import Client, CoordinatorHandle, start_coordinator, stop_coordinator
from mtcache.coordinator.l2 import classify_failure, missing_permission
from mtcache.errors import L2Error
from tests.conftest import _need_redis
from tests.redis_server import RedisServer, free_port
from tests.waiting import wait_until

REASONS = {
    "auth": "authentication refused",
    "tls": "TLS handshake failed",
    "unreachable": "unreachable",
}


@pytest.fixture
def started(short_tmp: Path) -> Iterator[list[CoordinatorHandle]]:
    """Coordinators a test starts (stopped at the end)."""
    handles: list[CoordinatorHandle] = []
    try:
        yield handles
    finally:
        for handle in handles:
            stop_coordinator(handle)


def _coordinator_on(url: str, short_tmp: Path, started: list[CoordinatorHandle]) -> tuple[dict, str]:
    """Start a coordinator given ``url`` (in its environment, never on its command line);
    return its health details and its log once it has logged why Redis is not used."""
    handle = start_coordinator(str(short_tmp / f"c{len(started)}.sock"), redis_url=url)
    started.append(handle)
    assert handle.log_path is not None
    log_path = Path(handle.log_path)
    assert wait_until(lambda: "retrying in the background" in log_path.read_text(), timeout=10), log_path.read_text()
    with Client(handle.socket_path, spawn=False) as client:
        health = client.health()
    assert (health.coordinator, health.redis, health.mode) == ("ok", "down", "degraded")
    return health.details, log_path.read_text()


def _check(kind: str, details: dict, log: str, secret: str | None = None) -> None:
    assert details["redis_failure"] == kind
    assert details["redis_reason"].startswith(REASONS[kind])
    assert f": {REASONS[kind]} (" in log
    assert [other for other in REASONS.values() if f": {other} (" in log and other != REASONS[kind]] == []
    if secret is not None:
        assert secret not in log and secret not in details["redis_reason"]


@pytest.mark.parametrize("user", ["", "nobody-here"])
def test_a_refused_password_is_an_auth_failure(
    tmp_path: Path, short_tmp: Path, started: list[CoordinatorHandle], user: str
) -> None:
    _need_redis()
    password = secrets.token_hex(8)
    server = RedisServer(tmp_path / "redis", password=password)
    server.start()
    try:
        wrong = f"wrong-{secrets.token_hex(4)}"
        details, log = _coordinator_on(f"redis://{user}:{wrong}@127.0.0.1:{server.port}/0", short_tmp, started)
        _check("auth", details, log, secret=wrong)
        assert "check the password and ACL user in REDIS_URL" in details["redis_reason"]
        # the right password is used: the classification is not "auth" whatever happens
        handle = start_coordinator(str(short_tmp / "right.sock"), redis_url=server.url)
        started.append(handle)
        with Client(handle.socket_path, spawn=False) as client:
            health = client.health()
        assert health.redis == "ok" and health.details["redis_failure"] is None
    finally:
        server.stop()


def test_a_refused_tls_handshake_is_a_tls_failure(
    tmp_path: Path, short_tmp: Path, started: list[CoordinatorHandle]
) -> None:
    _need_redis()
    trustme = pytest.importorskip("trustme", reason="trustme is in the test extra: pip install -e '.[test]'")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "ca": tmp_path / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    server = RedisServer(tmp_path / "redis", tls={name: str(path) for name, path in files.items()})
    try:
        server.start()
    except RuntimeError as exc:
        if "tls" in str(exc).lower() or "ssl" in str(exc).lower():
            pytest.skip(f"this redis-server build does not serve TLS: {exc}")
        raise
    try:
        with server.client() as trusted:  # the server does serve TLS, to a client that trusts its CA
            assert trusted.ping()
        # a client that does not trust the server's certificate: the handshake fails
        details, log = _coordinator_on(f"rediss://127.0.0.1:{server.port}/0", short_tmp, started)
        _check("tls", details, log)
        assert "CERTIFICATE_VERIFY_FAILED" in details["redis_reason"]
    finally:
        server.stop()


def test_a_closed_port_is_unreachable(short_tmp: Path, started: list[CoordinatorHandle]) -> None:
    details, log = _coordinator_on(f"redis://127.0.0.1:{free_port()}/0", short_tmp, started)
    _check("unreachable", details, log)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (AuthenticationError("invalid username-password pair or user is disabled."), "auth"),
        (NoPermissionError("this user has no permissions to run the 'ping' command"), "permission"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls"),
        (ConnectionRefusedError(111, "Connection refused"), "unreachable"),
        (socket.gaierror(-2, "Name or service not known"), "unreachable"),
        (TimeoutError(), "unreachable"),
        (ResponseError("READONLY You can't write against a read only replica."), "error"),
    ],
)
def test_classify_failure_through_the_chain(exc: BaseException, kind: str) -> None:
    # chained as redis-py and the L2 tier raise them: an OSError is the context of redis-py's
    # ConnectionError (raised while handling it), which is the cause of our L2Error
    cause: BaseException = exc
    if isinstance(exc, OSError):
        cause = RedisConnectionError(f"Error connecting to 127.0.0.1:6390. {exc}")
        cause.__context__ = exc
    outer = L2Error(f"L2 ping failed: {cause}")
    outer.__cause__ = cause
    assert classify_failure(outer).kind == kind


@pytest.mark.parametrize(
    ("detail", "rule"),
    [
        ("this user has no permissions to run the 'evalsha' command", "+evalsha"),
        ("this user has no permissions to run the 'config|get' command", "+config|get"),
        ("this user has no permissions to access one of the keys used as arguments", "~mtcache:*"),
        ("something else", "a permission"),
    ],
)
def test_a_noperm_reply_names_the_missing_rule(detail: str, rule: str) -> None:
    failure = classify_failure(NoPermissionError(detail))
    assert (failure.kind, missing_permission(failure.detail)) == ("permission", rule)
    assert f"the ACL user lacks {rule}" in failure.reason
