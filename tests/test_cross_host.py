"""Several hosts on one Redis: invalidation propagation, gaps, and cross-host leases.

A "host" is a coordinator process on its own socket (its own L1 and version table); every host
talks to the same real redis-server. Clients that must live in another process run in
``multiprocess`` processes from a ``spawn`` context; processes synchronise on Events, Barriers and
Queues, and every wait is bounded by a deadline. Nothing here asserts on timing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import multiprocess as mp
import pytest

from mtcache import Client
from mtcache.coordinator.l2 import CLUSTER_GROUPS, Layout, key_prefix
from mtcache.redis_urls import is_cluster_url
from tests.conftest import deployed_server
from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer

#: Longest wait for anything in these tests; generous for a loaded 2-core machine.
DEADLINE = 30.0
KEY = "the-key"
OLD = {"v": "old", "n": 1}
NEW = {"v": "new", "n": 2}
VALUE = {"answer": 42}
PREFIX = key_prefix("default")
LEASE_TTL = 3
NEAR_MAX_AGE = 3600.0
HOSTS = 3
WORKERS_PER_HOST = 4

T = TypeVar("T")


def context() -> Any:
    """Worker processes are spawned: a fresh interpreter each, nothing inherited from pytest."""
    return mp.get_context("spawn")


def layout_of(redis_server: Any) -> Layout:
    """Where the keys of namespace ``default`` are on ``redis_server`` (a RedisServer, or a
    RedisClusterGroup in ``tests/test_cluster.py``, whose keys form groups)."""
    return Layout(PREFIX, "default", CLUSTER_GROUPS if is_cluster_url(redis_server.url) else 1)


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
    """The coordinator's raw counters (fails the test if it does not answer within :data:`DEADLINE`: one
    STATS may miss a read's timeout on a loaded machine, when the coordinator is starting or busy with
    TLS handshakes, so an empty answer is asked again)."""
    return poll(lambda: client.stats().coordinator, "the coordinator to answer STATS")


def record_call(log_path: str, who: str) -> None:
    """Append one line to ``log_path`` (O_APPEND: lines from many processes never interleave)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{who} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def calls(log_path: Path) -> list[str]:
    """Who called the function, one entry per call."""
    return log_path.read_text().split("\n")[:-1] if log_path.exists() else []


@pytest.fixture(params=["plain", *(pytest.param(kind, marks=pytest.mark.deployments)
                                   for kind in ("tls", "acl", "valkey"))])
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """The Redis every host of a test shares, deployed each way mtcache must run on (see
    :func:`tests.conftest.deployed_server`); TLS and ACL run with ``-m deployments``, and
    ``tests/test_deployments.py`` runs a few of these tests on them by default."""
    with deployed_server(request.param, tmp_path) as server:
        yield server


@pytest.fixture
def hosts(short_tmp: Path, redis_server: RedisServer) -> Iterator[Callable[..., list[CoordinatorProcess]]]:
    """Starts ``count`` hosts (coordinators named by ``names``) on the test's redis-server, each with
    ``env`` added to its environment, and (with ``connected``) waits until each one's stream reader
    is connected. Stops them all (continuing any a test stopped) at teardown."""
    started: list[CoordinatorProcess] = []

    def start(count: int = 2, env: dict[str, str] | None = None, names: str = "abc",
              connected: bool = True) -> list[CoordinatorProcess]:
        procs = [CoordinatorProcess(short_tmp / f"{name}.sock", redis_url=redis_server.url, env=env)
                 for name in names[:count]]
        for proc in procs:
            proc.start()
            started.append(proc)
        if connected:
            for proc in procs:
                wait_reader_connected(proc)
        return procs

    yield start
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        proc.stop()


def wait_reader_connected(host: CoordinatorProcess, *, gaps: int = 0) -> dict[str, Any]:
    """Poll ``host`` until its invalidation stream reader is connected (and has counted at least
    ``gaps`` gaps); return its counters."""
    with Client(host.socket_path, spawn=False, near_capacity=0) as probe:
        def ready() -> dict[str, Any] | None:
            stats = coordinator_stats(probe)
            ok = stats["stream_reader"] == "connected" and stats["invalidation_gaps"] >= gaps
            return stats if ok else None

        return poll(ready, f"the stream reader of {host.socket_path} (gaps >= {gaps})")


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Worker processes a test starts (append them); any still alive at teardown are killed."""
    procs: list[Any] = []
    yield procs
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(DEADLINE)


def collect(results: Any, count: int, timeout: float = DEADLINE) -> list[Any]:
    """``count`` items from ``results`` within ``timeout`` in all."""
    deadline = time.monotonic() + timeout
    out = []
    for i in range(count):
        try:
            out.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
        except Exception as exc:  # queue.Empty: a worker died or hung
            pytest.fail(f"only {i} of {count} workers reported within {timeout:g}s: {exc!r}")
    return out


# -- a client of one host in another process, driven by commands --------------------------------


def _remote_client(socket_path: str, commands: Any, replies: Any) -> None:
    # near copies live far longer than any wait here, so only a version bump can end one
    with Client(socket_path, spawn=False, near_max_age=NEAR_MAX_AGE) as client:
        while True:
            cmd = commands.get(timeout=DEADLINE * 4)
            if cmd[0] == "stop":
                return
            try:
                replies.put(("ok", _remote_command(client, cmd)))
            except Exception as exc:
                replies.put(("error", f"{type(exc).__name__}: {exc}"))


def _remote_command(client: Client, cmd: tuple[Any, ...]) -> Any:
    op, key = cmd[0], cmd[1]
    if op == "read":  # read n times; report what was read and how it was served
        values = [client.get(key) for _ in range(cmd[2])]
        stats = client.stats()
        return values, {"near_hits": stats.near_hits, "l1_size": stats.coordinator["l1"]["size"]}
    if op == "until":  # read until the value is cmd[2], or the deadline; report every distinct value read
        deadline = time.monotonic() + DEADLINE
        seen: list[Any] = []
        while time.monotonic() < deadline:
            value = client.get(key)
            if not seen or seen[-1] != value:
                seen.append(value)
            if value == cmd[2]:
                return True, seen
            time.sleep(0.001)  # spin interval of a deadline-bounded poll
        return False, seen
    if op == "reads":  # read n times; report the distinct values read
        out: list[Any] = []
        for _ in range(cmd[2]):
            value = client.get(key)
            if value not in out:
                out.append(value)
        return out
    raise ValueError(f"unknown command {op!r}")


class Remote:
    """A :class:`~mtcache.Client` of ``socket_path`` living in a spawned process (with its own near
    cache and its own mapping of the host's version table)."""

    def __init__(self, socket_path: str) -> None:
        ctx = context()
        self.commands, self.replies = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_remote_client, args=(socket_path, self.commands, self.replies))
        self.proc.start()

    def call(self, *cmd: Any) -> Any:
        """Run ``cmd`` in the remote process and return its result (fails the test on an error)."""
        self.commands.put(cmd)
        try:
            status, result = self.replies.get(timeout=DEADLINE * 2)
        except Exception as exc:  # queue.Empty
            pytest.fail(f"the remote client did not answer {cmd!r}: {exc!r}")
        if status != "ok":
            pytest.fail(f"the remote client failed {cmd!r}: {result}")
        return result

    def close(self) -> None:
        """Stop the process (kill it if it does not stop) and close the queues."""
        self.commands.put(("stop", None))
        self.proc.join(DEADLINE)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(DEADLINE)
        for q in (self.commands, self.replies):
            q.close()
            q.join_thread()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cache_on(remote: Remote, key: str, expected: Any) -> None:
    """Read ``key`` twice through ``remote`` and check it is now held near and in its host's L1."""
    values, stats = remote.call("read", key, 2)
    assert values == [expected, expected]
    assert stats["near_hits"] >= 1  # the second read was a near hit
    assert stats["l1_size"] >= 1  # the first was promoted from L2 into the host's L1


# -- 1. writes on one host reach the near and L1 copies of another ------------------------------


@pytest.mark.parametrize("op", ["set", "delete", "clear"])
def test_a_write_on_one_host_reaches_another_hosts_near_and_l1_copies(
    hosts: Callable[..., list[CoordinatorProcess]], op: str
) -> None:
    a, b = hosts(2)
    with Client(a.socket_path, spawn=False) as client_a, Remote(b.socket_path) as remote_b:
        client_a.set(KEY, OLD)
        client_a.set("second", VALUE)
        cache_on(remote_b, KEY, OLD)
        cache_on(remote_b, "second", VALUE)
        if op == "set":
            client_a.set(KEY, NEW)
        elif op == "delete":
            assert client_a.delete(KEY)
        else:
            client_a.clear()
        expected = NEW if op == "set" else None
        found, seen = remote_b.call("until", KEY, expected)
        assert found, f"host B still served {seen[-1]!r} after the {op} on host A"
        assert seen[-1] == expected
        assert set(map(repr, seen)) <= {repr(OLD), repr(expected)}  # nothing but the old then the new
        # a clear drops every key; a set or delete of one key leaves the others
        second = remote_b.call("until", "second", None if op == "clear" else VALUE)
        assert second[0]


# -- 2. Redis restarts empty while another host's reader is away ---------------------------------


def test_after_redis_restarts_empty_a_host_never_serves_the_value_it_missed(
    hosts: Callable[..., list[CoordinatorProcess]], redis_server: RedisServer
) -> None:
    a, b = hosts(2)
    with Client(a.socket_path, spawn=False) as client_a, Remote(b.socket_path) as remote_b:
        client_a.set(KEY, OLD)
        cache_on(remote_b, KEY, OLD)
        redis_server.kill()
        redis_server.start()  # empty: no persistence
        client_a.set(KEY, NEW)  # B's reader may or may not be back yet: either way B must not serve OLD
        # Redis came back empty, so B must see a gap when its reader resumes
        stats = wait_reader_connected(b, gaps=1)
        assert stats["invalidation_gaps"] >= 1
        seen = remote_b.call("reads", KEY, 300)
        assert OLD not in seen, f"host B served the old value after its reader resumed: {seen!r}"
        assert all(value in (NEW, None) for value in seen), seen


# -- 3. a stream trimmed past what a paused host read --------------------------------------------


def test_a_host_that_missed_trimmed_entries_drops_its_whole_l1(
    hosts: Callable[..., list[CoordinatorProcess]], redis_server: RedisServer
) -> None:
    a, b = hosts(2, env={"MTCACHE_INVAL_MAXLEN": "10"})
    redis = redis_server.client()
    # on a cluster, the stream of the group of "untouched", and writes of keys of that group only
    layout = layout_of(redis_server)
    stream = layout.stream("untouched")
    writes = (key for key in (f"w{i}" for i in range(10**6)) if layout.group(key) == layout.group("untouched"))
    with Client(a.socket_path, spawn=False) as client_a, \
            Client(b.socket_path, spawn=False, near_capacity=0) as client_b, redis:
        client_a.set("untouched", VALUE)
        # B has applied A's set of "untouched" (so nothing but a gap can drop it later)...
        poll(lambda: coordinator_stats(client_b)["invalidations_applied"] >= 1, "B to apply A's set")
        # ... and then caches it in its L1
        assert client_b.get("untouched") == VALUE
        before = coordinator_stats(client_b)
        assert before["l1"]["size"] == 1 and before["promotions"] == 1
        assert before["invalidation_gaps"] == 0
        seq_at_stop = int(redis.xrevrange(stream, count=1)[0][1][b"seq"])
        os.kill(b.pid, signal.SIGSTOP)
        try:
            # write through A until the entries after B's position are trimmed away (MAXLEN ~ trims
            # whole nodes of 100 entries, so this takes a few hundred writes)
            trimmed = False
            for i in range(5000):
                client_a.set(next(writes), i)
                if i % 100 == 99:
                    first = redis.xrange(stream, count=1)
                    trimmed = bool(first) and int(first[0][1][b"seq"]) > seq_at_stop + 1
                    if trimmed:
                        break
            assert trimmed, "the stream was never trimmed past host B's position"
        finally:
            os.kill(b.pid, signal.SIGCONT)
        after = poll(lambda: (s := coordinator_stats(client_b))["invalidation_gaps"] >= 1 and s,
                     "host B to count the gap")
        # A never wrote "untouched" again, yet B dropped it: B cannot know what it missed
        assert after["l1"]["size"] == 0
        assert client_b.get("untouched") == VALUE
        served = coordinator_stats(client_b)
        assert served["l2_hits"] == after["l2_hits"] + 1  # read from L2 again ...
        assert served["promotions"] == after["promotions"] + 1  # ... and promoted again


# -- the staleness bound: a host cut off from the stream stops serving what it cannot check -------


def test_a_host_cut_off_from_the_stream_drops_its_l1_after_the_staleness_bound(
    hosts: Callable[..., list[CoordinatorProcess]], redis_server: RedisServer
) -> None:
    a, b = hosts(2, env={"MTCACHE_STALENESS_BOUND": "0.5"})
    with Client(a.socket_path, spawn=False) as client_a, \
            Client(b.socket_path, spawn=False, near_max_age=NEAR_MAX_AGE) as client_b, \
            Client(b.socket_path, spawn=False, near_capacity=0) as probe_b:
        client_a.set(KEY, OLD)
        assert client_b.get(KEY) == OLD
        assert client_b.get(KEY) == OLD
        assert client_b.stats().near_hits == 1
        redis_server.kill()  # another host may now write without B hearing of it
        dropped = poll(lambda: (s := coordinator_stats(probe_b))["staleness_drops"] >= 1 and s,
                       "host B to drop its L1 after the staleness bound")
        assert dropped["stream_reader"] == "disconnected"
        assert dropped["l1"]["size"] == 0
        assert client_b.get(KEY) is None  # neither the near copy nor L1 serves OLD any more


# -- 4. a stampede across hosts computes once ---------------------------------------------------


def _stampede_worker(paths: list[str], host: int, barrier: Any, log_path: str, overlapped: Any,
                     results: Any) -> None:
    try:
        with Client(paths[host], spawn=False) as client:

            def compute() -> dict[str, int]:
                record_call(log_path, f"host{host}")
                overlapped.value = _everyone_else_waits(paths, host, log_path + ".stats")
                return VALUE

            barrier.wait(DEADLINE)
            # waiting longer than compute() may hold the value back: if the callers were not all seen
            # waiting, the test says so (with what was seen) rather than with the waiters' timeouts
            results.put(("ok", client.get_or_compute(KEY, compute, timeout=DEADLINE * 2)))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _everyone_else_waits(paths: list[str], holder_host: int, report: str) -> bool:
    """Poll (bounded) until, on every host, the other local callers wait on the local lease and,
    on every other host, the local lease holder waits for the cross-host lease; if they never do,
    write the counters last seen to ``report``."""
    probes = [Client(path, spawn=False, near_capacity=0) for path in paths]
    try:
        deadline = time.monotonic() + DEADLINE
        stats: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            stats = [p.stats().coordinator for p in probes]
            if all(s.get("coalesced", 0) >= WORKERS_PER_HOST - 1 for s in stats) and all(
                s.get("cross_host_lease_waits", 0) >= 1 for i, s in enumerate(stats) if i != holder_host
            ):
                return True
            time.sleep(0.01)  # poll interval of a deadline-bounded wait
        Path(report).write_text(repr([{name: s.get(name) for name in ("coalesced", "cross_host_lease_waits",
                                                                      "leases_granted", "redis_leases_taken")}
                                      for s in stats]) + f" (holder on host {holder_host})")
        return False
    finally:
        for p in probes:
            p.close()


def test_a_stampede_across_hosts_computes_once(
    hosts: Callable[..., list[CoordinatorProcess]], processes: list[Any], tmp_path: Path
) -> None:
    paths = [h.socket_path for h in hosts(HOSTS)]
    ctx = context()
    barrier, results = ctx.Barrier(HOSTS * WORKERS_PER_HOST), ctx.Queue()
    overlapped = ctx.Value("b", False)
    log_path = tmp_path / "calls.log"
    for host in range(HOSTS):
        for _ in range(WORKERS_PER_HOST):
            p = ctx.Process(target=_stampede_worker,
                            args=(paths, host, barrier, str(log_path), overlapped, results))
            p.start()
            processes.append(p)
    outcomes = collect(results, HOSTS * WORKERS_PER_HOST, timeout=DEADLINE * 3)
    seen = Path(str(log_path) + ".stats")
    # every other caller really was waiting while fn ran (else: what fn saw, the computations, what the callers got)
    assert overlapped.value, (seen.read_text() if seen.exists() else "no report", calls(log_path), outcomes)
    assert outcomes == [("ok", VALUE)] * (HOSTS * WORKERS_PER_HOST)
    assert len(calls(log_path)) == 1, calls(log_path)
    for p in processes:
        p.join(DEADLINE)
    assert [p.exitcode for p in processes] == [0] * len(processes)
    taken = 0
    for path in paths:
        with Client(path, spawn=False, near_capacity=0) as probe:
            stats = coordinator_stats(probe)
            taken += stats["redis_leases_taken"]
            assert probe.get(KEY) == VALUE
    assert taken == 1


# -- 5. the cross-host lease holder dies ---------------------------------------------------------


def _blocked_holder(path: str, ready: Any, go: Any, started: Any) -> None:
    with Client(path, spawn=False) as client:

        def compute() -> None:
            started.set()
            threading.Event().wait()  # blocks until the test kills this process

        client.health()  # connected before the go
        ready.wait(DEADLINE)
        go.wait(DEADLINE)
        client.get_or_compute(KEY, compute, timeout=DEADLINE)


def _lease_waiter(path: str, host: str, ready: Any, go: Any, log_path: str, results: Any) -> None:
    try:
        with Client(path, spawn=False) as client:

            def compute() -> dict[str, int]:
                record_call(log_path, host)
                return VALUE

            client.health()  # connected before the go
            ready.wait(DEADLINE)
            go.wait(DEADLINE)
            results.put(("ok", host, client.get_or_compute(KEY, compute, timeout=DEADLINE)))
    except Exception as exc:
        results.put(("error", host, f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("waiter_on_a", [False, True], ids=["holder-alone-on-a", "waiter-on-a-too"])
def test_waiters_on_other_hosts_get_a_value_when_the_lease_holder_dies(
    hosts: Callable[..., list[CoordinatorProcess]], processes: list[Any], tmp_path: Path, waiter_on_a: bool
) -> None:
    a, b, c = hosts(3, env={"MTCACHE_LEASE_TTL": str(LEASE_TTL)})
    ctx = context()
    go_holder, started, go_waiters, results = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
    log_path = tmp_path / "calls.log"
    waiters = [("b", b), ("b", b), ("c", c), ("c", c)] + ([("a", a)] if waiter_on_a else [])
    # every process is running and connected before the lease is taken: the lease TTL runs from the
    # moment the holder asks, and the kill comes well before it ends
    ready = ctx.Barrier(len(waiters) + 2)
    holder = ctx.Process(target=_blocked_holder, args=(a.socket_path, ready, go_holder, started))
    procs = [holder] + [ctx.Process(target=_lease_waiter,
                                    args=(h.socket_path, name, ready, go_waiters, str(log_path), results))
                        for name, h in waiters]
    for p in procs:
        p.start()
        processes.append(p)
    ready.wait(DEADLINE)
    go_holder.set()
    assert started.wait(DEADLINE), "the holder never started computing"
    go_waiters.set()
    with Client(a.socket_path, spawn=False, near_capacity=0) as probe_a, \
            Client(b.socket_path, spawn=False, near_capacity=0) as probe_b, \
            Client(c.socket_path, spawn=False, near_capacity=0) as probe_c:
        for probe in (probe_b, probe_c):
            # one caller waits for the other host's Redis lease, the other for the local lease
            poll(lambda p=probe: (s := coordinator_stats(p))["cross_host_lease_waits"] >= 1 and s["coalesced"] >= 1,
                 "B and C callers to wait")
        if waiter_on_a:
            poll(lambda: coordinator_stats(probe_a)["coalesced"] >= 1, "A's second caller to wait")
        assert calls(log_path) == []  # nobody computed while the holder lived
        holder.kill()
        holder.join(DEADLINE)
        outcomes = collect(results, len(waiters), timeout=LEASE_TTL + 10)
        assert sorted(map(repr, outcomes)) == sorted(repr(("ok", name, VALUE)) for name, _ in waiters)
        finishers = calls(log_path)
        assert finishers, "nobody computed the value after the holder died"
        for probe in (probe_a, probe_b, probe_c):
            assert probe.get(KEY) == VALUE


# -- coherence holes found while writing the tests above ------------------------------------------


def test_a_lease_waiter_never_near_caches_a_fill_older_than_another_hosts_set(
    hosts: Callable[..., list[CoordinatorProcess]],
) -> None:
    a, b = hosts(2)
    computing, finish = threading.Event(), threading.Event()
    outcomes: dict[str, Any] = {}

    def computed_from_old_state() -> dict[str, str]:
        computing.set()
        finish.wait(DEADLINE)
        return {"v": "computed before the set"}

    with Client(a.socket_path, spawn=False) as client_a, Client(b.socket_path, spawn=False) as holder_b, \
            Client(b.socket_path, spawn=False, near_max_age=NEAR_MAX_AGE) as waiter_b, \
            Client(b.socket_path, spawn=False, near_capacity=0) as probe:
        threads = [
            threading.Thread(target=lambda: outcomes.update(holder=holder_b.get_or_compute(
                KEY, computed_from_old_state, timeout=DEADLINE))),
            threading.Thread(target=lambda: outcomes.update(waiter=waiter_b.get_or_compute(
                KEY, lambda: {"v": "waiter computed"}, timeout=DEADLINE))),
        ]
        threads[0].start()
        assert computing.wait(DEADLINE)
        threads[1].start()
        poll(lambda: coordinator_stats(probe)["coalesced"] >= 1, "the second caller to wait")
        applied = coordinator_stats(probe)["invalidations_applied"]
        client_a.set(KEY, NEW)
        poll(lambda: coordinator_stats(probe)["invalidations_applied"] > applied, "B to apply A's set")
        finish.set()
        for t in threads:
            t.join(DEADLINE)
        assert set(outcomes) == {"holder", "waiter"}
        assert coordinator_stats(probe)["fills_discarded"] == 1
        assert probe.get(KEY) == NEW  # host B itself knows better
        assert waiter_b.get(KEY) == NEW  # the waiter's near cache must not serve the pre-set value
