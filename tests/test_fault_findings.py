"""Outside-in reproductions of failures reported against mtcache, one test per finding.

Everything here goes through the public API (``Client``), real ``redis-server`` and coordinator
processes, and redis-py for looking at Redis directly. Two "hosts" are two coordinator processes on
their own sockets, one namespace, one Redis; host A reaches Redis through a :class:`FaultProxy`
(tests/tcp_proxy.py) so a test can cut or slow its link. Every wait is an Event, a Queue or a poll
bounded by a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import multiprocess as mp
import pytest
import redis

import mtcache.cli
from mtcache import Client
from mtcache.config import Settings
from mtcache.coordinator.l2 import key_prefix
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer
from tests.tcp_proxy import FaultProxy

#: Longest wait for anything here; generous for a loaded 2-core machine.
DEADLINE = 20.0
#: How long a test waits for a state that the reported bug never reaches (the wait is what a
#: failure costs; a fixed build gets there in milliseconds).
SETTLE = 10.0
#: Quick settings: a short staleness bound and Redis timeout keep an outage test short.
ENV = {"MTCACHE_STALENESS_BOUND": "1", "MTCACHE_REDIS_TIMEOUT": "0.3"}
PREFIX = key_prefix("default")
STREAM = PREFIX + "inval"

#: What stats()["stream_reader"] says while the reader reads.
READER_UP = ("connected",)

T = TypeVar("T")


def poll(check: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Call ``check`` until it returns something truthy and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)  # poll interval of a deadline-bounded wait


def coordinator_stats(client: Client) -> dict[str, Any]:
    """The coordinator's raw counters (fails the test if it does not answer)."""
    stats = client.stats().coordinator
    assert stats, "the coordinator did not answer STATS"
    return stats


def redis_value(r: redis.Redis, key: str) -> bytes | None:
    """The raw bytes Redis holds for cache key ``key`` (its envelope), or None."""
    raw: Any = r.get(PREFIX + "k:" + key)
    return raw


def wait_reader_connected(host: CoordinatorProcess) -> None:
    """Poll ``host`` until its invalidation stream reader is connected."""
    with Client(host.socket_path, spawn=False, near_capacity=0) as probe:
        poll(lambda: coordinator_stats(probe)["stream_reader"] in READER_UP,
             f"the stream reader of {host.socket_path} to connect")


def wall_clock_passes(since: float) -> None:
    """Return once the wall clock is 2 ms past ``since`` (a ``time.time()``). Hosts that cannot
    hear each other can only order their writes by their clocks: two writes less than a tick
    apart are concurrent, and either may win. This makes the later write later on the clock too."""
    poll(lambda: time.time() >= since + 0.002, "the wall clock to move on")


@dataclass
class Hosts:
    """Host A (through ``proxy``) and host B (direct), and a redis-py client on the real Redis."""

    a: CoordinatorProcess
    b: CoordinatorProcess
    proxy: FaultProxy
    redis: redis.Redis


@pytest.fixture
def two_hosts(short_tmp: Path, redis_server: RedisServer) -> Iterator[Hosts]:
    """Two healthy hosts on one Redis, A's link through a fault proxy; readers connected."""
    with FaultProxy("127.0.0.1", redis_server.port) as proxy, redis_server.client() as r:
        a = CoordinatorProcess(short_tmp / "a.sock", redis_url=proxy.url(), env=ENV)
        b = CoordinatorProcess(short_tmp / "b.sock", redis_url=redis_server.url, env=ENV)
        try:
            a.start()
            b.start()
            wait_reader_connected(a)
            wait_reader_connected(b)
            yield Hosts(a, b, proxy, r)
        finally:
            proxy.heal()  # a coordinator stops quicker when its Redis answers
            a.stop()
            b.stop()


# -- 1. an outage's replay must not erase writes other hosts made meanwhile -----------------------


def test_an_outage_replay_never_erases_newer_writes(two_hosts: Hosts) -> None:
    """Protects the outage backlog: writes host A acknowledged while cut off from Redis are
    replayed when it comes back, but a newer write another host made meanwhile wins, and A serves
    its own writes during the outage.

    Reported: after the replay every host served None for k1 (B's newer value erased) and k2 (A's
    own value lost). k1-k3 are written after A's staleness drop, as reported; k4 is written by A
    once it knows Redis is down, before the drop as a rule: the drop must not turn that
    acknowledged write into a delete either. B's write of k1 is later than A's in real time and,
    by at least a tick, on the clock (partitioned hosts can only be ordered by their clocks)."""
    h = two_hosts
    with Client(h.a.socket_path, spawn=False) as client_a, \
            Client(h.a.socket_path, spawn=False, near_capacity=0) as probe_a, \
            Client(h.b.socket_path, spawn=False) as client_b, \
            Client(h.b.socket_path, spawn=False, near_capacity=0) as probe_b:
        client_b.set("k3", "k3 before the outage")
        assert probe_a.get("k3") == "k3 before the outage"

        h.proxy.cut()
        # a read that needs Redis makes A notice the outage; then wait past the staleness bound
        probe_a.get("not cached anywhere")
        poll(lambda: probe_a.health().details.get("redis") == "down", "host A to report Redis down")
        # acknowledged during the outage, most likely before the staleness drop (nothing here
        # depends on which: a write of A that nobody overwrote must survive either way)
        client_a.set("k4", "A's k4")
        k4_before_drop = coordinator_stats(probe_a)["staleness_drops"] == 0
        poll(lambda: coordinator_stats(probe_a)["staleness_drops"] >= 1, "host A's staleness drop")

        client_a.set("k1", "A's k1")
        a_wrote = time.time()
        client_a.set("k2", "A's k2")
        client_a.delete("k3")
        during = probe_a.get("k2")
        wall_clock_passes(a_wrote)
        client_b.set("k1", "B's newer k1")  # B reaches Redis; A cannot hear of it yet

        h.proxy.heal()
        poll(lambda: probe_a.health().redis == "ok" and coordinator_stats(probe_a)["l2_backlog"] == 0,
             "host A to reconnect and replay its backlog")

        expected = {"k1": "B's newer k1", "k2": "A's k2", "k3": None, "k4": "A's k4"}
        seen: dict[str, Any] = {}

        def settled() -> bool:
            seen["A"] = {key: probe_a.get(key) for key in expected}
            seen["B"] = {key: probe_b.get(key) for key in expected}
            return seen["A"] == expected and seen["B"] == expected

        deadline = time.monotonic() + SETTLE
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.01)  # poll interval of a deadline-bounded wait
        assert during == "A's k2", f"host A did not serve its own write during the outage: {during!r}"
        when = "before" if k4_before_drop else "after"
        assert seen == {"A": expected, "B": expected}, f"after the replay (k4 written {when} the drop): {seen!r}"
        k1, k2 = redis_value(h.redis, "k1"), redis_value(h.redis, "k2")
        assert k1 is not None and b"B's newer k1" in k1
        assert k2 is not None and b"A's k2" in k2


# -- 2. a fill computed before another host's delete must not outlive it --------------------------


OLD_SOURCE = "old-source-value-7f3a"


def test_a_fill_never_outlives_another_hosts_delete(two_hosts: Hosts) -> None:
    """Protects deletes against late fills: once host B's delete of a key has returned and A's
    fill has landed, no host serves the value computed from the state before the delete, and Redis
    does not hold it.

    The interleaving, made deterministic with events and a 0.12 s delay on A's link:
    1. a worker of A calls get_or_compute("k"); A takes the lease (local and Redis) and the worker's
       fn starts, reading the "old source", and blocks on an event;
    2. B deletes "k" (the source changed) and the delete returns: L2 unlinked, stream entry added;
    3. the test releases fn, which returns the old value; A's fill reaches A's coordinator before
       B's stream entry does (A's link is slow), so A's version check passes and A writes the value
       to Redis with SET NX: that lands after B's delete, in a key the delete left empty;
    4. A applies B's invalidation and drops the value from its L1, but Redis keeps it: both hosts
       then read the old value from L2 until its TTL.
    """
    h = two_hosts
    h.proxy.delay(0.12)
    started, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    began = 0.0

    def from_old_source() -> str:
        nonlocal began
        began = time.time()
        started.set()
        release.wait(DEADLINE)
        return OLD_SOURCE

    with Client(h.a.socket_path, spawn=False, near_capacity=0) as client_a, \
            Client(h.a.socket_path, spawn=False, near_capacity=0) as probe_a, \
            Client(h.b.socket_path, spawn=False, near_capacity=0) as probe_b:

        def worker() -> None:
            try:
                outcome["value"] = client_a.get_or_compute("k", from_old_source, ttl=300, timeout=DEADLINE)
            except Exception as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=worker)
        thread.start()
        try:
            assert started.wait(DEADLINE), "fn never started on host A"
            wall_clock_passes(began)  # the delete comes after the lease on every clock too
            applied = coordinator_stats(probe_a)["invalidations_applied"]
            probe_b.delete("k")  # returns once L2 and the stream have it
        finally:
            release.set()
            thread.join(DEADLINE)
        assert not thread.is_alive()
        assert outcome.get("value") == OLD_SOURCE, outcome  # the caller gets what it computed
        # A's fill has landed (the fill returns after its L2 write); wait until A heard of the delete
        poll(lambda: coordinator_stats(probe_a)["invalidations_applied"] > applied, "host A to apply B's delete")
        h.proxy.heal()  # the race is over; reads that go to Redis need not crawl

        served: list[tuple[str, Any]] = []
        in_redis: list[bytes] = []
        checks = 0
        start = time.monotonic()
        while checks < 50 or time.monotonic() - start < 1.0:  # a number of reads over at least 1 s
            checks += 1
            served += [("A", probe_a.get("k")), ("B", probe_b.get("k"))]
            raw = redis_value(h.redis, "k")
            if raw is not None and OLD_SOURCE.encode() in raw:
                in_redis.append(raw)
            if time.monotonic() - start > DEADLINE:
                break
            time.sleep(0.01)  # spacing of the reads within a deadline-bounded loop
        old = [(host, value) for host, value in served if value == OLD_SOURCE]
        assert not old, f"{len(old)} of {len(served)} reads after the delete served the pre-delete value: {old[:4]}"
        assert not in_redis, "Redis holds the value computed before B's delete"


# -- 3. a stream entry mtcache did not write must not stop invalidations --------------------------


def test_a_foreign_stream_entry_does_not_stop_invalidations(
    short_tmp: Path, redis_server: RedisServer
) -> None:
    """Protects the invalidation reader against entries it did not write (someone XADDs to the
    stream): it skips them and keeps applying the other hosts' writes, whether the foreign entry
    arrives while it reads or is the newest entry when it (re)starts.

    Reported: a foreign entry stops invalidations, so host A keeps serving old values forever."""
    b = CoordinatorProcess(short_tmp / "b.sock", redis_url=redis_server.url, env=ENV)
    a = CoordinatorProcess(short_tmp / "a.sock", redis_url=redis_server.url, env=ENV)
    keys = [f"key{i}" for i in range(20)]
    with redis_server.client() as r:
        try:
            b.start()
            wait_reader_connected(b)
            with Client(b.socket_path, spawn=False) as client_b:
                for key in keys:
                    client_b.set(key, f"old {key}")
                r.xadd(STREAM, {"foo": "bar"})  # the newest entry when host A starts
                a.start()
                with Client(a.socket_path, spawn=False, near_capacity=0) as probe_a:
                    for key in keys:  # cached in A's L1
                        assert probe_a.get(key) == f"old {key}"
                    for i, key in enumerate(keys):
                        if i == len(keys) // 2:
                            r.xadd(STREAM, {"foo": "bar"})  # and one while A reads
                        client_b.set(key, f"new {key}")
                    stale: list[str] = keys

                    def all_new() -> bool:
                        nonlocal stale
                        stale = [key for key in stale if probe_a.get(key) != f"new {key}"]
                        return not stale

                    deadline = time.monotonic() + SETTLE
                    while not all_new() and time.monotonic() < deadline:
                        time.sleep(0.01)  # poll interval of a deadline-bounded wait
                    assert not stale, f"host A kept serving old values of {len(stale)} of 20 keys: {stale}"
                    stats = coordinator_stats(probe_a)
                    health = probe_a.health()
                    assert stats["stream_reader"] in READER_UP, stats["stream_reader"]
                    assert health.coordinator == "ok" and health.redis == "ok", health
        finally:
            a.stop()
            b.stop()


# -- 4. a replaced coordinator: old workers stop serving old values --------------------------------


def _near_reader(socket_path: str, warm: Any, after_set: Any, results: Any) -> None:
    """A worker with the default near cache: reads "k" in a tight loop; reports how many reads that
    began after ``after_set`` returned "old"."""
    try:
        with Client(socket_path, spawn=False) as client:
            deadline = time.monotonic() + DEADLINE
            while not (client.get("k") == "old" and client.stats().near_hits >= 1):
                if time.monotonic() > deadline:
                    results.put(("error", "never held 'old' near"))
                    return
            warm.set()
            old_after = reads_after = new_reads = 0
            while time.monotonic() < deadline and new_reads < 2000:
                began_after = after_set.is_set()
                value = client.get("k")
                if began_after:
                    reads_after += 1
                    old_after += value == "old"
                    new_reads += value == "new"
            results.put(("ok", old_after, reads_after, new_reads))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_a_replaced_coordinator_stops_old_workers_serving_old_values(short_tmp: Path) -> None:
    """Protects workers of a coordinator that died and was replaced on the same socket: once a set
    through the new coordinator has returned, no worker returns the value it held near from the
    old one (the one-host guarantee: after set returns, no worker returns the old value).

    Reported: a worker keeps serving the old value from its near cache after the replacement."""
    host = CoordinatorProcess(short_tmp / "c.sock", redis_url=None)
    ctx = mp.get_context("spawn")
    warm, after_set, results = ctx.Event(), ctx.Event(), ctx.Queue()
    worker = ctx.Process(target=_near_reader, args=(host.socket_path, warm, after_set, results))
    try:
        host.start()
        with Client(host.socket_path, spawn=False) as writer:
            writer.set("k", "old")
        worker.start()
        assert warm.wait(DEADLINE), "the worker never held the value near"
        host.kill()
        host.start()  # a new coordinator on the same socket
        with Client(host.socket_path, spawn=False) as writer:
            writer.set("k", "new")
            assert writer.health().coordinator == "ok"
            assert writer.get("k") == "new"
        after_set.set()
        try:
            report = results.get(timeout=DEADLINE * 2)
        except Exception as exc:  # queue.Empty
            pytest.fail(f"the worker did not report: {exc!r}")
        assert report[0] == "ok", report
        _, old_after, reads_after, new_reads = report
        assert reads_after > 0
        assert old_after == 0, f"the worker returned 'old' in {old_after} of {reads_after} reads after the set"
        assert new_reads > 0
    finally:
        if worker.is_alive():
            worker.kill()
        if worker.pid is not None:
            worker.join(DEADLINE)
        host.stop()
        results.close()
        results.join_thread()


# -- 5. MTCACHE_NAMESPACE applies to clients and the CLI -----------------------------------------


def test_mtcache_namespace_env_applies_to_clients_and_cli(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Protects the namespace setting's priority (argument, then MTCACHE_NAMESPACE, then the
    default) for clients and the CLI, and the default socket path being per namespace.

    Reported: with MTCACHE_NAMESPACE set, a client without a namespace argument asks for
    "default" and is refused by the coordinator of that namespace."""
    monkeypatch.setenv("MTCACHE_NAMESPACE", "appx")
    monkeypatch.delenv("MTCACHE_SOCKET", raising=False)
    host = CoordinatorProcess(short_tmp / "appx.sock", redis_url=None, namespace="appx")
    try:
        host.start()
        with Client(socket_path=host.socket_path, spawn=False, near_capacity=0) as client:
            assert client.stats().coordinator, "the coordinator refused a client of MTCACHE_NAMESPACE"
            client.set("k", "v")
            assert client.get("k") == "v"
            health = client.health()
            assert health.coordinator == "ok", health
            assert health.details.get("namespace") == "appx"
        capsys.readouterr()
        status = mtcache.cli.main(["stats", "--socket", host.socket_path, "--json"])
        out = capsys.readouterr().out
        assert status == 0
        assert json.loads(out)["coordinator"]
    finally:
        host.stop()
    environ = {k: v for k, v in os.environ.items() if k not in ("MTCACHE_SOCKET", "MTCACHE_NAMESPACE")}
    path_a = Settings.load(namespace="a", environ=environ, cwd=short_tmp).socket_path
    path_b = Settings.load(namespace="b", environ=environ, cwd=short_tmp).socket_path
    assert path_a != path_b, f"namespaces 'a' and 'b' share the default socket {path_a}"
