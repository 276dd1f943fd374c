"""The fault-injecting proxy (tests/tcp_proxy.py) against a real redis-server: the fault tests
trust it to forward faithfully, to hold bytes (not drop them) while cut, to abort with a RST, and to
keep order under delay."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.redis_server import RedisServer
from tests.tcp_proxy import FaultProxy

#: Short enough that a call through a cut link gives up quickly; nothing asserts on it.
SOCKET_TIMEOUT = 0.3
DEADLINE = 10.0


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A proxy in front of the test's redis-server."""
    with FaultProxy("127.0.0.1", redis_server.port) as p:
        yield p


def through(proxy: FaultProxy, timeout: float = DEADLINE) -> redis.Redis:
    """A redis-py client through the proxy that does not retry (each call is one attempt)."""
    return redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def raw(proxy: FaultProxy) -> socket.socket:
    """A plain socket connected to the proxy."""
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=DEADLINE)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``sock`` (each recv bounded by the socket's timeout)."""
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {out!r}")
        out += chunk
    return out


def test_commands_pass_through_the_proxy(proxy: FaultProxy, redis_server: RedisServer) -> None:
    """The proxy forwards both ways unchanged, and what is written through it is in the real Redis."""
    assert proxy.state == "ok"
    assert proxy.url(3) == f"redis://127.0.0.1:{proxy.port}/3"
    with through(proxy) as r, redis_server.client() as direct:
        assert r.ping()
        r.set("k", b"x" * 200_000)  # several chunks
        assert direct.get("k") == b"x" * 200_000
        assert r.get("k") == b"x" * 200_000


def test_a_cut_times_out_calls_and_heal_lets_them_through(proxy: FaultProxy) -> None:
    """A cut stops an existing connection without closing it (the call times out), and after heal
    a new call on a fresh connection works."""
    with through(proxy, SOCKET_TIMEOUT) as r:
        assert r.ping()
        proxy.cut()
        assert proxy.state == "cut"
        with pytest.raises(redis.TimeoutError):
            r.ping()
        proxy.heal()
        assert proxy.state == "ok"
        assert r.ping()


def test_bytes_sent_during_a_cut_are_held_and_delivered_after_heal(proxy: FaultProxy) -> None:
    """Like a partition with TCP retransmission: a request sent while cut is not lost; its answer
    arrives once the link heals, on the same connection."""
    with raw(proxy) as sock:
        sock.sendall(b"PING\r\n")
        assert recv_exactly(sock, 7) == b"+PONG\r\n"
        proxy.cut()
        sock.sendall(b"ECHO held\r\n")
        sock.settimeout(SOCKET_TIMEOUT)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # nothing moves while cut
        proxy.heal()
        sock.settimeout(DEADLINE)
        assert recv_exactly(sock, 10) == b"$4\r\nheld\r\n"


def test_a_connection_opened_during_a_cut_is_served_after_heal(proxy: FaultProxy) -> None:
    """New connections are accepted during a cut, but reach Redis only after heal."""
    proxy.cut()
    with raw(proxy) as sock:
        sock.sendall(b"PING\r\n")
        sock.settimeout(SOCKET_TIMEOUT)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        proxy.heal()
        sock.settimeout(DEADLINE)
        assert recv_exactly(sock, 7) == b"+PONG\r\n"


def test_reset_aborts_current_connections_and_new_ones_work(proxy: FaultProxy) -> None:
    """reset() tears down every open connection with a RST; the next connection works."""
    with raw(proxy) as sock, through(proxy) as r:
        sock.sendall(b"PING\r\n")
        assert recv_exactly(sock, 7) == b"+PONG\r\n"
        assert r.ping()
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"PING\r\n")
            sock.recv(100)
        # redis-py notices the reset connection when it takes it from its pool, and reconnects
        assert r.ping()
    with through(proxy) as again:
        assert again.ping()


def test_a_delayed_link_answers_correctly_and_in_order(proxy: FaultProxy) -> None:
    """Under delay every answer is right and in order, pipelined or chunk by chunk."""
    proxy.delay(0.02)
    assert proxy.state == "delayed"
    with through(proxy) as r:
        pipe = r.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"k{i}", i)
            pipe.incr("counter")
        results = pipe.execute()
        assert results[1::2] == list(range(1, 101))
        assert [int(v) for v in r.mget([f"k{i}" for i in range(100)])] == list(range(100))
    with raw(proxy) as sock:
        for _ in range(30):
            sock.sendall(b"INCR seq\r\n")  # one small chunk each
        answers = recv_exactly(sock, sum(len(f":{i}\r\n") for i in range(1, 31)))
        assert answers == b"".join(f":{i}\r\n".encode() for i in range(1, 31))
    proxy.heal()
    assert proxy.state == "ok"


def test_stop_closes_connections_and_is_safe_twice(redis_server: RedisServer) -> None:
    """stop() closes the listener and open connections; calling it again does nothing."""
    p = FaultProxy("127.0.0.1", redis_server.port)
    p.start()
    sock = raw(p)
    try:
        sock.sendall(b"PING\r\n")
        assert recv_exactly(sock, 7) == b"+PONG\r\n"
        p.stop()
        p.stop()
        with pytest.raises(OSError):
            sock.sendall(b"PING\r\n")
            if not sock.recv(100):
                raise ConnectionError("closed")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", p.port), timeout=DEADLINE).close()
    finally:
        sock.close()
