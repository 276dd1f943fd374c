"""What the Sentinel and Redis Cluster tests share: two hosts writing while Redis fails over, and the check that
they converge afterwards (``tests/test_sentinel.py``, ``tests/test_cluster.py``).

What a failover may lose, by the README: writes the old master acknowledged and had not replicated. So the
convergence checked is agreement (every host ends on the same value for every key, a value some host wrote) and,
for the writes made once the new master serves, that they are the ones every host reads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mtcache import Client
from tests.coordinator_proc import CoordinatorProcess
from tests.waiting import wait_until

DEADLINE = 60.0


def host_health(host: CoordinatorProcess) -> dict:
    """``host``'s health, with its details."""
    with Client(host.socket_path, spawn=False) as client:
        health = client.health()
    return {"redis": health.redis, "mode": health.mode, **health.details}


def redis_ok(host: CoordinatorProcess) -> bool:
    """True once ``host`` uses Redis again (not degraded) and its stream reader reads."""
    health = host_health(host)
    return health["redis"] == "ok" and health["mode"] == "ok" and health["stream_reader"] == "connected"


def coordinator_stats(host: CoordinatorProcess) -> dict:
    """``host``'s raw counters."""
    with Client(host.socket_path, spawn=False, near_capacity=0) as probe:
        return probe.stats().coordinator


@contextlib.contextmanager
def two_hosts_on(url: str, folder: Path) -> Iterator[list[CoordinatorProcess]]:
    """Two coordinators ("hosts") on ``url`` with their sockets in ``folder``, started, with Redis in use and
    their stream readers connected; stopped at the end."""
    procs = [CoordinatorProcess(folder / f"{name}.sock", redis_url=url) for name in "ab"]
    try:
        for proc in procs:
            proc.start()
        assert wait_until(lambda: all(redis_ok(p) for p in procs), timeout=DEADLINE), \
            [(host_health(p), p.log()) for p in procs]
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _writer(host: CoordinatorProcess, keys: Sequence[str], name: str, stop: threading.Event,
            acked: dict[str, list[str]]) -> None:
    """Write ``name-<n>`` to ``keys`` in turn until ``stop``; every acknowledged value goes in ``acked``."""
    n = 0
    with Client(host.socket_path, spawn=False) as client:
        while not stop.is_set():
            key = keys[n % len(keys)]
            value = f"{name}-{n}"
            client.set(key, value)
            acked.setdefault(key, []).append(value)
            n += 1


def converge_through(hosts: Sequence[CoordinatorProcess], keys: Sequence[str], fail_over: Callable[[], None]) -> None:
    """Both ``hosts`` write ``keys`` while ``fail_over()`` runs; then both use Redis again, a write and a lease
    cross between them, every key converges to one value some host wrote, and writes made after the failover
    are what both read."""
    a, b = hosts
    with Client(a.socket_path, spawn=False) as client_a, Client(b.socket_path, spawn=False) as client_b:
        client_a.set("before", 1)
        assert wait_until(lambda: client_b.get("before") == 1, timeout=DEADLINE)
        stop = threading.Event()
        acked: list[dict[str, list[str]]] = [{}, {}]
        writers = [threading.Thread(target=_writer, args=(h, keys, name, stop, acked[i]))
                   for i, (h, name) in enumerate(zip(hosts, "ab", strict=True))]
        for t in writers:
            t.start()
        try:
            assert wait_until(lambda: len(acked[0]) == len(acked[1]) == len(keys), timeout=DEADLINE)
            fail_over()
        finally:
            stop.set()
            for t in writers:
                t.join(DEADLINE)
        assert wait_until(lambda: all(redis_ok(h) for h in hosts), timeout=DEADLINE), \
            [host_health(h) for h in hosts]
        client_a.set("after", 2)
        assert wait_until(lambda: client_b.get("after") == 2, timeout=DEADLINE)
        assert client_b.get_or_compute("computed", lambda: "v") == "v"
        # a write acknowledged just before the failover may be lost (asynchronous replication): an older
        # one is then where a key converges
        written = {v for side in acked for values in side.values() for v in values}

        def agreed() -> bool:
            return all(client_a.get(k) == client_b.get(k) for k in keys)

        assert wait_until(agreed, timeout=DEADLINE), {k: (client_a.get(k), client_b.get(k)) for k in keys}
        assert all(client_a.get(k) in written for k in keys), {k: client_a.get(k) for k in keys}
        for k in keys:
            client_b.set(k, f"final-{k}")
        assert wait_until(lambda: all(client_a.get(k) == f"final-{k}" for k in keys), timeout=DEADLINE)
