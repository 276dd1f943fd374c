"""The in-process test double (``Client(local=True)``, issue 13): the API, semantics and errors of the
real clients, with no coordinator or Redis.

Most tests run over both twins through :class:`Handle` (the sync calls run inline, the async ones
are awaited); expiry is driven by a fake clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mtcache import FOREVER, AsyncClient, CacheStrategy, CacheTimeout, Client, ComputeError, Health, Stats
from mtcache.client.local import AsyncLocalClient, LocalClient

#: Longest wait for anything in these tests; generous for a loaded 2-core machine.
DEADLINE = 20.0


class FakeClock:
    """The seconds a client measures TTLs on, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Gate:
    """A function that blocks until :meth:`open` (a thread's or a task's, as the twin needs)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.event: threading.Event | asyncio.Event = threading.Event() if kind == "sync" else asyncio.Event()

    def fn(self, value: Any = None, error: Exception | None = None) -> Callable[[], Any]:
        """A plain function (sync) or a coroutine function (async) that waits for the gate, then
        returns ``value`` or raises ``error``."""
        if isinstance(self.event, threading.Event):
            event = self.event

            def blocked() -> Any:
                assert event.wait(DEADLINE)
                if error is not None:
                    raise error
                return value

            return blocked
        aevent = self.event

        async def ablocked() -> Any:
            await aevent.wait()
            if error is not None:
                raise error
            return value

        return ablocked

    def open(self) -> None:
        self.event.set()


class Handle:
    """A :class:`LocalClient` or an :class:`AsyncLocalClient` behind coroutine methods:
    ``await handle.get(...)`` calls the twin's method of that name (awaiting it for the async one)."""

    def __init__(self, kind: str, **options: Any) -> None:
        self.kind = kind
        self.client: LocalClient | AsyncLocalClient = (
            LocalClient(**options) if kind == "sync" else AsyncLocalClient(**options)
        )
        self._pool = ThreadPoolExecutor(4)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return call

    def gate(self) -> Gate:
        return Gate(self.kind)

    def start(self, name: str, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Run a call concurrently with the test: in a thread (sync) or as a task (async)."""
        method = getattr(self.client, name)
        if self.kind == "sync":
            return asyncio.wrap_future(self._pool.submit(method, *args, **kwargs))
        return asyncio.ensure_future(method(*args, **kwargs))

    async def aclose(self) -> None:
        result = self.client.close()
        if inspect.isawaitable(result):
            await result
        self._pool.shutdown(wait=True)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds; fail after :data:`DEADLINE`."""
    deadline = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)  # poll interval of a deadline-bounded wait


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sync", "async"])
async def make(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Callable[..., Handle]]:
    """A factory of handles of the parametrised twin on the test's fake clock; closed at teardown."""
    handles: list[Handle] = []

    def make(**options: Any) -> Handle:
        options.setdefault("clock", clock)
        handle = Handle(str(request.param), **options)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        await handle.aclose()


@pytest.fixture
def h(make: Callable[..., Handle]) -> Handle:
    return make()


# -- get, set, delete, the codec ---------------------------------------------------------------------


async def test_set_get_delete_exists(h: Handle) -> None:
    assert await h.set("k", {"a": 1}) is True
    assert await h.get("k") == {"a": 1}
    assert await h.exists("k") is True
    assert await h.get("missing") is None
    assert await h.get("missing", "dflt") == "dflt"
    assert await h.delete("k") is True
    assert await h.delete("k") is False
    assert await h.exists("k") is False
    assert await h.get("k", 0) == 0


async def test_values_make_the_codec_round_trip_and_reads_are_copies(h: Handle) -> None:
    value: dict[str, Any] = {"list": [1, 2], "tuple": (3, 4)}
    await h.set("k", value)
    value["list"].append(99)  # the caller's object is not the cached one
    first = await h.get("k")
    assert first == {"list": [1, 2], "tuple": [3, 4]}  # msgpack: a tuple comes back as a list
    first["list"].append(100)  # nor is the one a read returns
    assert await h.get("k") == {"list": [1, 2], "tuple": [3, 4]}


# -- TTLs on the fake clock --------------------------------------------------------------------------


async def test_values_expire_on_the_injected_clock(h: Handle, clock: FakeClock) -> None:
    await h.set("k", "v", ttl=10)
    await h.set("s", "v", strategy=CacheStrategy.REALTIME)
    await h.set("d", "v", ttl=timedelta(seconds=20))
    assert await h.ttl("k") == 10
    clock.advance(9.5)
    assert await h.get("k") == "v"
    assert await h.ttl("k") == pytest.approx(0.5)
    clock.advance(0.5)
    assert await h.get("k") is None
    assert await h.get("s") is None  # REALTIME: 10 s
    assert await h.ttl("k") is None
    assert await h.exists("k") is False
    assert await h.ttl("d") == pytest.approx(10)


async def test_forever_and_the_default_lifetime(
    make: Callable[..., Handle], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTCACHE_L1_TTL", "60")
    monkeypatch.setenv("MTCACHE_L2_TTL", "120")
    h = make()
    await h.set("forever", 1, ttl=FOREVER)
    await h.set("default", 2)
    assert await h.ttl("forever") == FOREVER
    assert await h.ttl("default") == 120  # as long as Redis keeps it: the longer of the two tiers
    clock.advance(1e9)
    assert await h.get("forever") == 1
    assert await h.get("default") is None


async def test_touch_gives_a_live_value_a_new_ttl(h: Handle, clock: FakeClock) -> None:
    await h.set("k", "v", ttl=10)
    clock.advance(8)
    assert await h.touch("k", ttl=100) is True
    assert await h.ttl("k") == 100
    assert await h.touch("k", ttl=FOREVER) is True
    assert await h.ttl("k") == FOREVER
    assert await h.touch("missing", ttl=5) is False
    await h.set("short", "v", ttl=1)
    clock.advance(1)
    assert await h.touch("short") is False  # expired: nothing to touch
    with pytest.raises(ValueError, match="ttl"):
        await h.touch("k", ttl=0)


# -- batches, add, counters ----------------------------------------------------------------------------


async def test_get_many_set_many_delete_many(h: Handle, clock: FakeClock) -> None:
    assert await h.set_many({"a": 1, "b": [2]}, ttl=5) is True
    found = await h.get_many(["b", "c", "a", "b"])
    assert found == {"b": [2], "a": 1}
    assert list(found) == ["b", "a"]  # in the order asked, missing keys absent
    assert await h.ttl("a") == 5
    assert await h.delete_many(["a", "c", "a"]) == 1
    assert await h.get_many(["a", "b"]) == {"b": [2]}
    with pytest.raises(TypeError, match="single string"):
        await h.get_many("ab")
    with pytest.raises(TypeError, match="mapping"):
        await h.set_many([("x", 1)])
    with pytest.raises(TypeError, match="object"):
        await h.set_many({"x": 1, "y": object()})
    assert await h.exists("x") is False  # a bad value stores none of the batch
    clock.advance(5)
    assert await h.get_many(["b"]) == {}


async def test_add_stores_only_when_absent(h: Handle, clock: FakeClock) -> None:
    assert await h.add("k", 1, ttl=10) is True
    assert await h.add("k", 2, ttl=10) is False
    assert await h.get("k") == 1
    clock.advance(10)
    assert await h.add("k", 3) is True
    assert await h.get("k") == 3


async def test_incr_and_decr(h: Handle, clock: FakeClock) -> None:
    assert await h.incr("n") == 1  # a missing key counts from 0...
    assert await h.ttl("n") == FOREVER  # ...and gets no expiry
    assert await h.incr("n", 5) == 6
    assert await h.decr("n") == 5
    assert await h.decr("n", 10) == -5
    assert await h.get("n") == -5
    await h.set("c", 10, ttl=30, tags=["counters"])
    clock.advance(10)
    assert await h.incr("c") == 11
    assert await h.ttl("c") == 20  # an existing counter keeps its TTL...
    await h.invalidate_tags("counters")
    assert await h.exists("c") is False  # ...and its tags


async def test_incr_refuses_what_is_not_a_counter(make: Callable[..., Handle]) -> None:
    h = make()
    await h.set("s", "text")
    with pytest.raises(TypeError, match=r"'s'.*str"):
        await h.incr("s")
    await h.set("b", True)
    with pytest.raises(TypeError, match=r"'b'.*bool"):
        await h.incr("b")
    with pytest.raises(TypeError, match="delta must be an int"):
        await h.incr("n", 1.5)
    with pytest.raises(TypeError, match="delta must be an int"):
        await h.decr("n", True)
    with pytest.raises(ValueError, match="delta"):
        await h.incr("n", 2**60)
    await h.set("big", 2**53)
    with pytest.raises(ValueError, match="'big'"):
        await h.incr("big")
    assert await h.get("big") == 2**53
    with pytest.raises(TypeError, match="msgpack"):
        await make(codec="json").incr("n")


# -- tags, clear --------------------------------------------------------------------------------------


async def test_invalidate_tags_turns_tagged_entries_into_misses(h: Handle) -> None:
    await h.set("a", 1, tags=("user:1",))
    await h.set("b", 2, tags=["user:1", "team"])
    await h.set("c", 3, tags=("team",))
    await h.set("d", 4)
    await h.set_many({"e": 5}, tags=("user:1",))
    assert await h.get_or_compute("f", lambda: 6, tags=("user:1",)) == 6
    await h.invalidate_tags("user:1")
    assert await h.get_many(["a", "b", "c", "d", "e", "f"]) == {"c": 3, "d": 4}
    await h.invalidate_tags()
    await h.invalidate_tags("team", "nobody")
    assert await h.get_many(["c", "d"]) == {"d": 4}
    with pytest.raises(TypeError, match="single string"):
        await h.set("x", 1, tags="user:1")
    with pytest.raises(TypeError, match="tag must be a str"):
        await h.set("x", 1, tags=[1])
    with pytest.raises(TypeError, match="tag must be a str"):
        await h.invalidate_tags(1)


async def test_clear_drops_everything(h: Handle) -> None:
    await h.set_many({"a": 1, "b": 2})
    await h.clear()
    assert await h.get_many(["a", "b"]) == {}


# -- stats, health, close ------------------------------------------------------------------------------


async def test_stats_and_health(h: Handle) -> None:
    await h.set("k", 1)
    await h.get("k")
    await h.get("missing")
    await h.get_or_compute("c", lambda: 1)
    await h.get_or_compute("c", lambda: 2)
    stats = await h.stats()
    assert isinstance(stats, Stats)
    assert (stats.near_hits, stats.near_misses, stats.computes) == (2, 2, 1)
    health = await h.health()
    assert isinstance(health, Health)
    assert (health.coordinator, health.mode) == ("ok", "local")
    assert health.details["entries"] == 2


async def test_a_closed_client_refuses_calls(h: Handle) -> None:
    await h.set("k", 1)
    await h.aclose()
    await h.aclose()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        await h.get("k")
    with pytest.raises(RuntimeError, match="closed"):
        await h.get_or_compute("k", lambda: 1)


def test_sync_context_manager(clock: FakeClock) -> None:
    with LocalClient(clock=clock) as cache:
        assert cache.set("k", 1) is True
        assert cache.get("k") == 1
    with pytest.raises(RuntimeError, match="LocalClient is closed"):
        cache.get("k")


async def test_async_context_manager(clock: FakeClock) -> None:
    async with AsyncLocalClient(clock=clock) as cache:
        assert await cache.set("k", 1) is True
        assert await cache.get("k") == 1
    with pytest.raises(RuntimeError, match="AsyncLocalClient is closed"):
        await cache.get("k")


async def test_streams_are_not_in_the_double(h: Handle) -> None:
    with pytest.raises(NotImplementedError, match="no Redis Streams"):
        h.client.streams  # noqa: B018 - the property access is the check
    with pytest.raises(NotImplementedError, match="publish_to_stream"):
        await h.publish_to_stream("s", {"a": 1})


# -- bad input -----------------------------------------------------------------------------------------


async def test_bad_input_raises_as_the_real_client_does(make: Callable[..., Handle]) -> None:
    h = make()
    with pytest.raises(TypeError, match="cache key must be a str"):
        await h.get(1)
    with pytest.raises(ValueError, match="empty"):
        await h.set("", 1)
    with pytest.raises(ValueError, match="1024"):
        await h.exists("x" * 1025)
    with pytest.raises(ValueError, match="either strategy or ttl"):
        await h.set("k", 1, ttl=5, strategy=CacheStrategy.REALTIME)
    with pytest.raises(ValueError, match="positive"):
        await h.set("k", 1, ttl=-1)
    with pytest.raises(TypeError, match="ttl must be seconds"):
        await h.set("k", 1, ttl="60")
    with pytest.raises(TypeError, match="by keyword"):
        await h.set("k", 1, 60)
    with pytest.raises(TypeError, match="object"):
        await h.set("k", object())
    with pytest.raises(TypeError, match="fn must be callable"):
        await h.get_or_compute("k", 5)
    with pytest.raises(ValueError, match="timeout"):
        await h.get_or_compute("k", lambda: 1, timeout=0)
    with pytest.raises(ValueError, match="fail_safe"):
        await h.get_or_compute("k", lambda: 1, fail_safe=-1)
    assert await h.exists("k") is False
    with pytest.raises(ValueError, match="unknown codec"):
        make(codec="yaml")
    with pytest.raises(TypeError, match="clock"):
        make(clock=3.0)


async def test_the_value_size_limit_holds(make: Callable[..., Handle], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTCACHE_MAX_VALUE_BYTES", "1000")
    h = make()
    await h.set("small", b"x" * 900)
    with pytest.raises(ValueError, match="limit of 1,000 bytes"):
        await h.set("big", b"x" * 1001)
    with pytest.raises(ValueError, match="limit of 1,000 bytes"):
        await h.get_or_compute("big", lambda: b"x" * 1001)
    assert await h.get_many(["small", "big"]) == {"small": b"x" * 900}


# -- get_or_compute -------------------------------------------------------------------------------------


async def test_get_or_compute_computes_once_then_hits(h: Handle, clock: FakeClock) -> None:
    calls: list[int] = []

    def fn() -> list[int]:
        calls.append(1)
        return [len(calls)]

    assert await h.get_or_compute("k", fn, ttl=10) == [1]
    assert await h.get_or_compute("k", fn, ttl=10) == [1]
    assert await h.get("k") == [1]
    clock.advance(10)
    assert await h.get_or_compute("k", fn, ttl=10) == [2]
    assert (await h.stats()).computes == 2


async def test_get_or_compute_takes_a_coroutine_function(clock: FakeClock) -> None:
    async def fn() -> str:
        return "async"

    async with AsyncLocalClient(clock=clock) as cache:
        assert await cache.get_or_compute("k", fn) == "async"
        assert await cache.get("k") == "async"


async def test_cache_none(make: Callable[..., Handle]) -> None:
    calls: list[int] = []

    def none() -> None:
        calls.append(1)

    h = make()
    assert await h.get_or_compute("k", none) is None
    assert await h.get_or_compute("k", none) is None
    assert len(calls) == 1  # None is cached by default
    assert await h.get_or_compute("j", none, cache_none=False) is None
    assert await h.get_or_compute("j", none, cache_none=False) is None
    assert len(calls) == 3
    off = make(cache_none=False)  # the client's default
    assert await off.get_or_compute("k", none) is None
    assert await off.exists("k") is False


async def test_a_failing_fn_raises_compute_error_and_caches_nothing(h: Handle) -> None:
    boom = KeyError("boom")

    def fail() -> None:
        raise boom

    with pytest.raises(ComputeError) as info:
        await h.get_or_compute("k", fail)
    assert str(info.value) == "computing 'k' raised KeyError: 'boom'"
    assert (info.value.key, info.value.exc_type) == ("k", "KeyError")
    assert info.value.__cause__ is boom
    assert await h.exists("k") is False
    assert await h.get_or_compute("k", lambda: 1) == 1


async def test_an_unencodable_result_raises_type_error_and_caches_nothing(h: Handle) -> None:
    with pytest.raises(TypeError, match="object"):
        await h.get_or_compute("k", object)
    assert await h.exists("k") is False


async def test_jitter_shortens_the_ttl(h: Handle) -> None:
    for i in range(20):
        await h.get_or_compute(f"k{i}", lambda: 1, ttl=100, jitter=0.5)
        assert 50 <= await h.ttl(f"k{i}") <= 100


async def test_a_write_during_a_computation_wins(h: Handle) -> None:
    gate = h.gate()
    leader = h.start("get_or_compute", "k", gate.fn("computed"))
    await eventually(lambda: _computes(h, 1), "the computation to start")
    await h.set("k", "written")
    gate.open()
    assert await leader == "computed"  # its caller gets its value...
    assert await h.get("k") == "written"  # ...but the newer write stays


async def test_waiters_share_the_error_and_time_out(h: Handle) -> None:
    gate = h.gate()
    leader = h.start("get_or_compute", "k", gate.fn(error=ValueError("nope")))
    await eventually(lambda: _computes(h, 1), "the computation to start")
    with pytest.raises(CacheTimeout, match="compute 'k'"):
        await h.get_or_compute("k", lambda: 2, timeout=0.05)
    follower = h.start("get_or_compute", "k", lambda: 2)
    await eventually(lambda: _coalesced(h, 2), "the second waiter")
    gate.open()
    for call in (leader, follower):
        with pytest.raises(ComputeError, match="raised ValueError: nope"):
            await call
    assert (await h.stats()).computes == 1


# -- fail-safe, soft and hard timeouts, eager refresh ----------------------------------------------------


async def test_fail_safe_serves_the_stale_value_then_throttles(h: Handle, clock: FakeClock) -> None:
    calls: list[int] = []

    def fail() -> None:
        calls.append(1)
        raise OSError("source down")

    options = {"ttl": 10, "fail_safe": 60, "fail_safe_throttle": 5}
    assert await h.get_or_compute("k", lambda: "v1", **options) == "v1"
    clock.advance(15)
    assert await h.get("k") is None  # past its TTL: a miss for get...
    assert await h.get_or_compute("k", fail, **options) == "v1"  # ...a fail-safe value for a failing source
    assert len(calls) == 1
    stats = await h.stats()
    assert (stats.stale_served, stats.fail_safe_activations) == (1, 1)
    clock.advance(4)
    assert await h.get_or_compute("k", fail, **options) == "v1"  # fresh again for the throttle
    assert len(calls) == 1
    clock.advance(100)  # past the fail-safe time too
    with pytest.raises(ComputeError, match="source down"):
        await h.get_or_compute("k", fail, **options)


async def test_without_fail_safe_a_failing_source_raises(h: Handle, clock: FakeClock) -> None:
    await h.get_or_compute("k", lambda: "v1", ttl=10)
    clock.advance(15)
    with pytest.raises(ComputeError):
        await h.get_or_compute("k", lambda: 1 / 0, ttl=10, fail_safe=60)  # stored without: nothing stale


async def test_hard_timeout(h: Handle, clock: FakeClock) -> None:
    gate = h.gate()
    try:
        with pytest.raises(CacheTimeout, match="hard timeout"):
            await h.get_or_compute("k", gate.fn("late"), hard_timeout=0.05)
        await h.get_or_compute("s", lambda: "stale", ttl=10, fail_safe=60)
        clock.advance(15)
        assert await h.get_or_compute("s", gate.fn("late"), ttl=10, fail_safe=60, hard_timeout=0.05) == "stale"
        assert (await h.stats()).fail_safe_activations == 1
    finally:
        gate.open()


async def test_soft_timeout_serves_stale_and_fills_in_the_background(h: Handle, clock: FakeClock) -> None:
    await h.get_or_compute("k", lambda: "old", ttl=10, fail_safe=60)
    clock.advance(15)
    gate = h.gate()
    assert await h.get_or_compute("k", gate.fn("new"), ttl=10, fail_safe=60, soft_timeout=0.05) == "old"
    assert await h.get_or_compute("k", lambda: "other", ttl=10, fail_safe=60) == "old"  # it computes still
    gate.open()
    await eventually(lambda: _holds(h, "k", "new"), "the background fill")
    assert (await h.stats()).computes == 2


async def test_eager_refresh_recomputes_in_the_background(h: Handle, clock: FakeClock) -> None:
    options = {"ttl": 100, "eager_refresh": 0.5}
    assert await h.get_or_compute("k", lambda: "v1", **options) == "v1"
    clock.advance(40)
    assert await h.get_or_compute("k", lambda: "v2", **options) == "v1"
    assert (await h.stats()).computes == 1  # not due yet
    clock.advance(20)
    assert await h.get_or_compute("k", lambda: "v2", **options) == "v1"  # the current value, at once
    await eventually(lambda: _holds(h, "k", "v2"), "the eager refresh")
    assert (await h.stats()).computes == 2
    assert await h.ttl("k") == 100


def test_cached_decorates_a_function(clock: FakeClock) -> None:
    calls: list[int] = []

    with LocalClient(clock=clock) as cache:

        @cache.cached(ttl=10, tags=("squares",))
        def square(x: int) -> int:
            calls.append(x)
            return x * x

        assert (square(3), square(3), square(4)) == (9, 9, 16)
        assert calls == [3, 4]
        cache.invalidate_tags("squares")
        assert square(3) == 9
        assert square.invalidate(3) is True
        clock.advance(10)
        assert square(4) == 16
        assert calls == [3, 4, 3, 4]


async def test_cached_decorates_a_coroutine_function(clock: FakeClock) -> None:
    calls: list[int] = []

    async with AsyncLocalClient(clock=clock) as cache:

        @cache.cached(ttl=10)
        async def square(x: int) -> int:
            calls.append(x)
            return x * x

        assert (await square(3), await square(3)) == (9, 9)
        assert calls == [3]
        assert await square.invalidate(3) is True
        assert await square(3) == 9
        assert calls == [3, 3]


async def test_a_cancelled_leader_hands_the_computation_on(clock: FakeClock) -> None:
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "never"

    async with AsyncLocalClient(clock=clock) as cache:
        leader = asyncio.ensure_future(cache.get_or_compute("k", slow))
        await eventually(lambda: _stat(cache, "computes", 1), "the computation to start")
        follower = asyncio.ensure_future(cache.get_or_compute("k", lambda: "follower"))
        await eventually(lambda: _stat(cache, "local_coalesced", 1), "the waiter")
        leader.cancel()
        assert await follower == "follower"  # it was not cancelled: it computes itself
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert await cache.get("k") == "follower"


# -- one computation per key -------------------------------------------------------------------------------


async def test_one_compute_for_16_threads(clock: FakeClock) -> None:
    release = threading.Event()
    calls: list[int] = []

    def fn() -> dict[str, int]:
        calls.append(1)
        assert release.wait(DEADLINE)
        return {"n": 42}

    async def queued() -> bool:
        return cache.stats().local_coalesced >= 15

    with LocalClient(clock=clock) as cache, ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(cache.get_or_compute, "k", fn) for _ in range(16)]
        await eventually(queued, "the 15 waiters")
        release.set()
        assert [f.result(timeout=DEADLINE) for f in futures] == [{"n": 42}] * 16
        assert len(calls) == 1
        assert cache.stats().computes == 1


async def test_one_compute_for_16_tasks(clock: FakeClock) -> None:
    release = asyncio.Event()
    calls: list[int] = []

    async def fn() -> dict[str, int]:
        calls.append(1)
        await release.wait()
        return {"n": 42}

    async with AsyncLocalClient(clock=clock) as cache:
        tasks = [asyncio.ensure_future(cache.get_or_compute("k", fn)) for _ in range(16)]
        await eventually(lambda: _stat(cache, "local_coalesced", 15), "the 15 waiters")
        release.set()
        assert await asyncio.gather(*tasks) == [{"n": 42}] * 16
        assert len(calls) == 1
        assert (await cache.stats()).computes == 1


# -- the twins' shape ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("double", "real"), [(LocalClient, Client), (AsyncLocalClient, AsyncClient)])
def test_every_public_method_of_the_real_client_is_overridden(double: type, real: type) -> None:
    inherited = [
        name for name in dir(real)
        if not name.startswith("_") and next(k for k in double.__mro__ if name in vars(k)) in real.__mro__
    ]
    assert inherited == []


@pytest.mark.parametrize(("real", "double"), [(Client, LocalClient), (AsyncClient, AsyncLocalClient)])
async def test_local_true_gives_the_double(real: Any, double: Any, tmp_path: Path) -> None:
    try:
        client: Any = real(str(tmp_path / "none.sock"), spawn=False, local=True)
    except TypeError as exc:
        pytest.skip(f"{real.__name__} does not take local= yet: {exc}")
    try:
        if type(client) is not double:
            pytest.skip(f"{real.__name__}(local=True) does not give a {double.__name__} yet")
        result = client.set("k", [1])
        assert (await result if inspect.isawaitable(result) else result) is True
        value = client.get("k")
        assert (await value if inspect.isawaitable(value) else value) == [1]
    finally:
        closed = client.close()
        if inspect.isawaitable(closed):
            await closed


# -- helpers ------------------------------------------------------------------------------------------------


async def _computes(h: Handle, n: int) -> bool:
    return bool((await h.stats()).computes >= n)


async def _coalesced(h: Handle, n: int) -> bool:
    return bool((await h.stats()).local_coalesced >= n)


async def _holds(h: Handle, key: str, value: Any) -> bool:
    return bool(await h.get(key) == value)


async def _stat(cache: AsyncLocalClient, name: str, n: int) -> bool:
    return bool(getattr(await cache.stats(), name) >= n)
