"""mtcache.contrib.django.MtcacheCache on a real coordinator and Redis: what Django's own suite
(tests/test_django_suite.py) does not check — several processes' worth of backends sharing
counters and computations, the per-loop async clients, keys past mtcache's limit, configuration
errors, the in-process test double — and the codec rule incr/decr now follow (any codec that
reads msgpack integers, not only the one named "msgpack")."""

from __future__ import annotations

import asyncio
import math
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("django", reason="django is in the test extra: pip install -e '.[test]'")

from django.conf import settings
from django.core.cache.backends.base import CacheKeyWarning
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse

from mtcache import Client, JsonCodec, MsgpackCodec, PickleCodec
from mtcache.codec import reads_msgpack_integers
from mtcache.contrib._shared import PickleIntCodec, shared_clients
from mtcache.contrib.django import MtcacheCache
from tests.coordinator_proc import CoordinatorProcess

THREADS = 16

if not settings.configured:  # HttpResponse reads DEFAULT_CHARSET; the backend itself needs no settings
    settings.configure()


def _backend(socket_path: str | Path, **params: object) -> MtcacheCache:
    options = {"spawn": False, **params.pop("OPTIONS", {})}  # type: ignore[dict-item]
    return MtcacheCache(str(socket_path), {**params, "OPTIONS": options})


@pytest.fixture
def backend(coordinator: CoordinatorProcess) -> Iterator[MtcacheCache]:
    cache = _backend(coordinator.socket_path)
    yield cache
    cache.clear()


def test_values_are_pickled_and_integers_stay_counters(backend: MtcacheCache) -> None:
    response = HttpResponse("cached body", headers={"X-Test": "1"})
    backend.set("page", response, 60)
    cached = backend.get("page")
    assert isinstance(cached, HttpResponse) and cached.content == b"cached body" and cached["X-Test"] == "1"
    backend.set("point", (1, {2}), None)
    assert backend.get("point") == (1, {2})  # a tuple stays a tuple, a set a set: pickle, as Django expects
    backend.set("hits", 41)
    assert backend.incr("hits") == 42 and backend.decr("hits", 2) == 40
    assert backend.get("hits") == 40


def test_incr_is_atomic_across_backends_and_threads(coordinator: CoordinatorProcess) -> None:
    # two configurations (two clients, as two processes would have), sixteen threads
    first, second = _backend(coordinator.socket_path), _backend(coordinator.socket_path, OPTIONS={"near_capacity": 0})
    first.set("counter", 0)
    barrier = threading.Barrier(THREADS)

    def bump(cache: MtcacheCache) -> None:
        barrier.wait(timeout=30)
        for _ in range(25):
            cache.incr("counter")

    threads = [threading.Thread(target=bump, args=(first if i % 2 else second,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert first.get("counter") == second.get("counter") == THREADS * 25
    first.clear()


def test_incr_of_a_missing_or_non_integer_value_raises_as_django_expects(backend: MtcacheCache) -> None:
    with pytest.raises(ValueError, match="not found"):
        backend.incr("nothing")
    assert backend.get("nothing") is None  # the failed incr created nothing
    backend.set("text", "abc")
    with pytest.raises(TypeError):
        backend.incr("text")


def test_timeouts_follow_django(coordinator: CoordinatorProcess) -> None:
    backend = _backend(coordinator.socket_path, TIMEOUT=None)
    client = Client(coordinator.socket_path, spawn=False, codec=PickleIntCodec())
    try:
        backend.set("forever", "x")  # TIMEOUT None: the default never expires
        assert client.ttl(backend.make_key("forever")) == math.inf
        backend.set("short", "x", 30)
        ttl = client.ttl(backend.make_key("short"))
        assert ttl is not None and 0 < ttl <= 30
        backend.set("gone", "x", 0)
        assert not backend.has_key("gone")
        assert backend.add("gone", "x", -1) is True and backend.get("gone") is None
        backend.set("kept", "x", 30)
        assert backend.add("kept", "y", 0) is False
        assert backend.touch("kept", None) is True and client.ttl(backend.make_key("kept")) == math.inf
        assert backend.touch("kept", 0) is True and not backend.has_key("kept")
        assert backend.set_many({"a": 1, "b": 2}, 0) == [] and backend.get_many(["a", "b"]) == {}
    finally:
        client.close()
        backend.clear()


def test_get_or_set_computes_once_for_every_thread_and_backend(coordinator: CoordinatorProcess) -> None:
    backends = [_backend(coordinator.socket_path), _backend(coordinator.socket_path, OPTIONS={"near_capacity": 0})]
    calls: list[int] = []
    results: list[object] = []
    asking = threading.Condition()
    entered = [0]

    def compute() -> dict[str, int]:
        calls.append(1)
        with asking:  # hold the computation until every thread is asking (bounded wait)
            asking.wait_for(lambda: entered[0] == THREADS, timeout=30)
        return {"value": 7}

    def ask(cache: MtcacheCache) -> None:
        with asking:
            entered[0] += 1
            asking.notify_all()
        results.append(cache.get_or_set("report", compute, 60))

    threads = [threading.Thread(target=ask, args=(backends[i % 2],)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [{"value": 7}] * THREADS
    assert len(calls) == 1
    backends[0].clear()


def test_get_or_set_raises_what_the_callable_raised(backend: MtcacheCache) -> None:
    def broken() -> None:
        raise LookupError("the source is down")

    with pytest.raises(LookupError, match="the source is down"):
        backend.get_or_set("broken", broken, 60)
    assert backend.get("broken") is None  # nothing cached


def test_keys_past_mtcache_limit_are_stored_under_their_hash(backend: MtcacheCache) -> None:
    long_key = "k" * 2000
    with pytest.warns(CacheKeyWarning, match="longer than 250"):  # Django's own portability warning
        backend.set(long_key, "long")
        assert backend.get(long_key) == "long"
        assert backend.get_many([long_key, "other"]) == {long_key: "long"}
        assert backend.delete(long_key) is True


async def test_async_methods_share_the_store_and_close_with_their_loop(coordinator: CoordinatorProcess) -> None:
    backend = _backend(coordinator.socket_path)
    await backend.aset("a", (1, 2), 60)
    assert backend.get("a") == (1, 2)  # the sync client sees the async write
    assert await backend.aadd("a", "no", 60) is False
    assert await backend.aget_many(["a", "missing"]) == {"a": (1, 2)}
    await backend.aset("n", 1)
    assert await backend.aincr("n", 5) == 6
    with pytest.raises(ValueError, match="not found"):
        await backend.aincr("missing")
    assert await backend.aget_or_set("computed", lambda: "v", 60) == "v"
    assert await backend.ahas_key("computed")
    assert await backend.atouch("computed", None)
    await backend.adelete_many(["a", "n"])
    assert await backend.aget("a", "default") == "default"
    assert await backend.aset_many({"x": 1}) == []
    await backend.aclear()
    assert backend.get("x") is None


def test_each_loop_gets_its_client_and_closes_it_when_it_shuts_down(coordinator: CoordinatorProcess) -> None:
    backend = _backend(coordinator.socket_path)
    shared = shared_clients(coordinator.socket_path, {"spawn": False})
    seen = []

    async def use() -> None:
        await backend.aset("k", len(seen))
        seen.append(await shared.for_loop())
        assert shared._async  # the running loop's client

    asyncio.run(use())
    asyncio.run(use())
    assert seen[0] is not seen[1]  # one client per loop
    assert not shared._async and not shared._closers  # each closed when its loop shut down
    assert all(client._closed for client in seen)
    assert backend.get("k") == 1
    backend.clear()


def test_configuration_errors_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="MAX_ENTRIES"):
        MtcacheCache("", {"OPTIONS": {"MAX_ENTRIES": 30}})
    with pytest.raises(ImproperlyConfigured, match="near_capcity"):
        MtcacheCache("", {"OPTIONS": {"near_capcity": 10}})
    with pytest.raises(ImproperlyConfigured, match="socket path"):
        MtcacheCache(["a", "b"], {})  # type: ignore[arg-type]


def test_the_in_process_double_keeps_django_semantics() -> None:
    backend = MtcacheCache("", {"OPTIONS": {"local": True, "namespace": "django-double"}})
    backend.set("n", 1)
    assert backend.incr("n") == 2  # counters work with the pickle codec in the test double too
    backend.set("t", (1, 2))

    async def read() -> tuple[object, object]:
        return await backend.aget("t"), await backend.aincr("n")

    assert asyncio.run(read()) == ((1, 2), 3)  # async calls share the double's store
    backend.clear()
    assert backend.get("n") is None


def test_incr_accepts_any_codec_that_reads_msgpack_integers(coordinator: CoordinatorProcess) -> None:
    # regression: incr/decr used to demand a codec *named* "msgpack", refusing one that keeps
    # integers as msgpack and pickles the rest
    assert reads_msgpack_integers(MsgpackCodec()) and reads_msgpack_integers(PickleIntCodec())
    assert not reads_msgpack_integers(PickleCodec()) and not reads_msgpack_integers(JsonCodec())
    with Client(coordinator.socket_path, spawn=False, codec=PickleIntCodec()) as client:
        client.set("n", 10)
        assert client.incr("n", 5) == 15 and client.get("n") == 15
        client.set("p", None)
        with pytest.raises(TypeError):
            client.incr("p")  # a pickled value is no counter
    pickling = Client(coordinator.socket_path, spawn=False, codec="pickle")
    with pickling, pytest.raises(TypeError, match="msgpack"):
        pickling.incr("n")


def test_a_counter_under_concurrent_incr_never_reads_as_missing(coordinator: CoordinatorProcess) -> None:
    # regression: while other workers incremented a counter, get/exists of it read as missing (the
    # coordinator refused to read Redis while an INCR of the key was in flight, and missed when an
    # INCR's end moved the key's version during the read), so Django's incr raised "not found"
    clients = [Client(coordinator.socket_path, spawn=False, near_capacity=n) for n in (1024, 0)]
    try:
        clients[0].set("c", 0)
        misses: list[int] = []

        def run(client: Client) -> None:
            for _ in range(50):
                if not client.exists("c") or client.get("c") is None:
                    misses.append(1)
                client.incr("c")

        threads = [threading.Thread(target=run, args=(clients[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert clients[0].get("c") == clients[1].get("c") == 400
        assert not misses
    finally:
        for client in clients:
            client.close()


def test_pickle_int_codec_round_trips_and_refuses_what_pickle_refuses() -> None:
    codec = PickleIntCodec(max_bytes=1000)
    for value in (0, -1, 2**63, 2**70, True, None, "s", b"b", (1,), {1: [2]}):
        assert codec.decode(codec.encode(value)) == value and type(codec.decode(codec.encode(value))) is type(value)
    assert codec.decode(MsgpackCodec().encode({"written": "by msgpack"})) == {"written": "by msgpack"}
    with pytest.raises((pickle.PicklingError, AttributeError)):  # as pickle.dumps raises it
        codec.encode(lambda: None)
    with pytest.raises(ValueError, match="MTCACHE_MAX_VALUE_BYTES"):
        codec.encode("x" * 2000)
