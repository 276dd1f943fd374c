"""The L2 tier: one contract over a real redis-server and fakeredis, the envelope format, and the failure
behaviour against a real redis-server that is killed, restarted and paused."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import fakeredis
import fakeredis.aioredis
import msgpack
import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import RedisError

from mtcache.coordinator.l2 import (
    FORMAT_VERSION,
    Envelope,
    L2Tier,
    decode_envelope,
    encode_envelope,
    key_prefix,
)
from mtcache.errors import L2Error
from tests.redis_server import RedisServer, free_port

# Short enough that the pause test stays quick, long enough for a loaded CI machine to answer a live Redis.
FAULT_TIMEOUT = 0.3

MakeTier = Callable[[str], L2Tier]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _chain_text(exc: BaseException) -> str:
    """The messages of ``exc`` and of every exception chained to it, suppressed context included."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is not None and current not in seen:
            seen.append(current)
            todo += [current.__cause__, current.__context__]
    return "\n".join(f"{type(e).__name__}: {e}" for e in seen)


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(params=["redis", "fakeredis"])
def backend(request: pytest.FixtureRequest) -> MakeTier:
    """Builds tiers that share one backend: a real redis-server, or one fakeredis server."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return lambda namespace: L2Tier(server.url, namespace)
    fake = fakeredis.FakeServer()
    return lambda namespace: L2Tier(
        "redis://fakeredis", namespace, client=fakeredis.aioredis.FakeRedis(server=fake)
    )


@pytest.fixture
async def make_tier(backend: MakeTier) -> AsyncIterator[MakeTier]:
    tiers: list[L2Tier] = []

    def make(namespace: str) -> L2Tier:
        tier = backend(namespace)
        tiers.append(tier)
        return tier

    yield make
    for tier in tiers:
        await tier.aclose()


@pytest.fixture
def tier(make_tier: MakeTier) -> L2Tier:
    return make_tier("test")


@pytest.fixture
async def fake_tier() -> AsyncIterator[L2Tier]:
    tier = L2Tier("redis://fakeredis", "test", client=fakeredis.aioredis.FakeRedis())
    yield tier
    await tier.aclose()


@pytest.fixture
async def fault_tier(redis_server: RedisServer) -> AsyncIterator[L2Tier]:
    tier = L2Tier(redis_server.url, "test", timeout=FAULT_TIMEOUT)
    yield tier
    await tier.aclose()


# --- the contract, on both backends ---------------------------------------------------------------------------


async def test_set_then_get_returns_envelope_and_remaining_ttl(tier: L2Tier) -> None:
    before = _now_ms()
    await tier.set("k", b"\x00value", 60, tags=["users", "user:1"])
    after = _now_ms()

    found = await tier.get("k")

    assert found is not None
    env, remaining = found
    assert env.format_version == FORMAT_VERSION
    assert env.value == b"\x00value"
    assert env.tags == ("users", "user:1")
    assert before + 60_000 <= env.logical_expiry_ms <= after + 60_000
    assert 30 < remaining <= 60


async def test_get_of_absent_key_is_none(tier: L2Tier) -> None:
    assert await tier.get("absent") is None
    assert tier.stats()["misses"] == 1


async def test_set_overwrites(tier: L2Tier) -> None:
    await tier.set("k", b"one", 60)
    await tier.set("k", b"two", 60)

    found = await tier.get("k")

    assert found is not None
    assert found[0].value == b"two"


async def test_sub_millisecond_ttl_still_sets_a_ttl(tier: L2Tier) -> None:
    await tier.set("k", b"v", 1e-9)

    pttl = await tier.redis.pttl(tier.key("k"))

    # PX is at least 1 ms: the key either still has a TTL of at most 1 ms or is already gone
    assert pttl in (-2, 0, 1)


async def test_set_nx_stores_only_when_absent(tier: L2Tier) -> None:
    assert await tier.set_nx("k", b"first", 60) is True
    assert await tier.set_nx("k", b"second", 60) is False

    found = await tier.get("k")

    assert found is not None
    assert found[0].value == b"first"


async def test_delete_removes_and_counts_existing_keys(tier: L2Tier) -> None:
    await tier.set("a", b"1", 60)
    await tier.set("b", b"2", 60)

    assert await tier.delete("a", "b", "missing") == 2
    assert await tier.get("a") is None
    assert await tier.get("b") is None
    assert await tier.delete() == 0


async def test_mget_returns_hits_and_misses_in_order(tier: L2Tier) -> None:
    await tier.set("a", b"A", 60)
    await tier.set("c", b"C", 60, tags=["t"])

    found = await tier.mget(["a", "b", "c", "a"])

    values = [None if entry is None else entry[0].value for entry in found]
    assert values == [b"A", None, b"C", b"A"]
    assert found[2] is not None and found[2][0].tags == ("t",)
    assert await tier.mget([]) == []
    assert tier.stats()["gets"] == 4


async def test_clear_removes_only_this_namespace(make_tier: MakeTier) -> None:
    mine, other, glob = make_tier("mine"), make_tier("other"), make_tier("m*")
    await mine.redis.mset({mine.key(f"k{i}"): encode_envelope(Envelope(1, 0, b"", ())) for i in range(2500)})
    await mine.redis.set(mine.prefix + "lease:k0", "token")
    await other.set("k0", b"kept", 60)
    await glob.set("k0", b"kept too", 60)
    await mine.redis.set("unrelated", "kept")

    assert await glob.clear() == 1  # "m*" is a namespace name, not a pattern: "mine" survives it
    assert await mine.clear() == 2500

    assert await mine.redis.exists(mine.key("k0"), mine.key("k2499")) == 0
    assert await mine.redis.get(mine.prefix + "lease:k0") == b"token"  # leases are not values
    found = await other.get("k0")
    assert found is not None and found[0].value == b"kept"
    assert await mine.redis.get("unrelated") == b"kept"
    assert await mine.clear() == 0


@pytest.mark.parametrize(
    "junk",
    [
        b"junk",
        b"",
        msgpack.packb([FORMAT_VERSION + 1, 0, b"v", []]),
        msgpack.packb({"value": b"v"}),
    ],
    ids=["not-msgpack", "empty", "other-version", "wrong-shape"],
)
async def test_corrupt_envelope_is_a_miss_and_is_deleted(
    tier: L2Tier, junk: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    await tier.redis.set(tier.key("k"), junk, px=60_000)

    with caplog.at_level(logging.WARNING, logger="mtcache.coordinator.l2"):
        assert await tier.get("k") is None

    assert await tier.redis.exists(tier.key("k")) == 0
    stats = tier.stats()
    assert (stats["corrupt"], stats["misses"], stats["hits"]) == (1, 1, 0)
    assert tier.key("k") in caplog.text


async def test_key_prefix_holds_namespace_and_format_version(tier: L2Tier) -> None:
    await tier.set("x", b"v", 60)

    assert tier.prefix == key_prefix("test") == f"mtcache:test:v{FORMAT_VERSION}:"
    assert tier.key("x") == f"mtcache:test:v{FORMAT_VERSION}:k:x"
    assert await tier.redis.exists(f"mtcache:test:v{FORMAT_VERSION}:k:x") == 1


async def test_key_without_physical_ttl_has_infinite_remaining_ttl(tier: L2Tier) -> None:
    await tier.redis.set(tier.key("k"), encode_envelope(Envelope(FORMAT_VERSION, 5, b"v", ())))

    found = await tier.get("k")

    assert found == (Envelope(FORMAT_VERSION, 5, b"v", ()), math.inf)


async def test_error_reply_is_an_l2error(tier: L2Tier) -> None:
    await tier.redis.rpush(tier.key("k"), "not a string")

    with pytest.raises(L2Error, match="L2 get failed") as info:
        await tier.get("k")

    assert isinstance(info.value.__cause__, RedisError)
    assert tier.stats()["errors"] == 1


async def test_stats_count_operations(tier: L2Tier) -> None:
    await tier.set("a", b"1", 60)
    await tier.set_nx("a", b"2", 60)
    await tier.mget(["a", "b"])
    await tier.get("a")

    assert tier.stats() == {"gets": 3, "hits": 2, "misses": 1, "sets": 2, "errors": 0, "corrupt": 0}


async def test_ping_answers_true(tier: L2Tier) -> None:
    assert await tier.ping() is True


# --- argument checking ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda t: t.get(""), ValueError),
        (lambda t: t.get(b"k"), TypeError),
        (lambda t: t.mget("ab"), TypeError),
        (lambda t: t.mget(["a", 1]), TypeError),
        (lambda t: t.set("k", "text", 60), TypeError),
        (lambda t: t.set("k", bytearray(b"v"), 60), TypeError),
        (lambda t: t.set("k", b"v", 0), ValueError),
        (lambda t: t.set("k", b"v", -1), ValueError),
        (lambda t: t.set("k", b"v", math.inf), ValueError),
        (lambda t: t.set("k", b"v", math.nan), ValueError),
        (lambda t: t.set("k", b"v", 1e300), ValueError),
        (lambda t: t.set("k", b"v", "60"), TypeError),
        (lambda t: t.set("k", b"v", True), TypeError),
        (lambda t: t.set("k", b"v", 60, tags="users"), TypeError),
        (lambda t: t.set("k", b"v", 60, tags=[1]), TypeError),
        (lambda t: t.set_nx("", b"v", 60), ValueError),
        (lambda t: t.delete("a", ""), ValueError),
    ],
)
async def test_bad_arguments_raise_before_any_write(
    fake_tier: L2Tier, call: Callable[[L2Tier], Awaitable[object]], error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"key|keys|value|ttl|tag"):
        await call(fake_tier)

    assert await fake_tier.redis.dbsize() == 0
    assert fake_tier.stats()["errors"] == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"url": "redis://localhost", "namespace": ""}, ValueError),
        ({"url": "redis://localhost", "namespace": "a:b"}, ValueError),
        ({"url": "redis://localhost", "namespace": 1}, TypeError),
        ({"url": "redis://localhost", "namespace": "ns", "timeout": 0}, ValueError),
        ({"url": "redis://localhost", "namespace": "ns", "timeout": None}, TypeError),
        ({"url": b"redis://localhost", "namespace": "ns"}, TypeError),
        ({"url": "http://localhost", "namespace": "ns"}, ValueError),
        ({"url": "redis://localhost", "namespace": "ns", "client": object()}, TypeError),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error, match=r"namespace|timeout|url|URL|client"):
        L2Tier(**kwargs)  # type: ignore[arg-type]


# --- the envelope format ----------------------------------------------------------------------------------------

_envelopes = st.builds(
    Envelope,
    st.just(FORMAT_VERSION),
    st.integers(min_value=0, max_value=2**62 - 1),
    st.binary(),
    st.lists(st.text()).map(tuple),
)


@given(_envelopes)
def test_envelope_round_trip(env: Envelope) -> None:
    assert decode_envelope(encode_envelope(env)) == env


def test_envelope_layout_is_a_four_item_msgpack_array() -> None:
    data = encode_envelope(Envelope(FORMAT_VERSION, 1234, b"v", ("a", "b")))

    assert msgpack.unpackb(data) == [FORMAT_VERSION, 1234, b"v", ["a", "b"]]


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\xc1",
        msgpack.packb([FORMAT_VERSION, 0, b"v", []]) + b"\x00",
        msgpack.packb([FORMAT_VERSION, 0, b"v"]),
        msgpack.packb([FORMAT_VERSION, 0, b"v", [], None]),
        msgpack.packb([0, 0, b"v", []]),
        msgpack.packb([True, 0, b"v", []]),
        msgpack.packb([str(FORMAT_VERSION), 0, b"v", []]),
        msgpack.packb([FORMAT_VERSION, -1, b"v", []]),
        msgpack.packb([FORMAT_VERSION, 1.5, b"v", []]),
        msgpack.packb([FORMAT_VERSION, 0, "v", []]),
        msgpack.packb([FORMAT_VERSION, 0, b"v", "tag"]),
        msgpack.packb([FORMAT_VERSION, 0, b"v", [1]]),
        msgpack.packb([FORMAT_VERSION, 0, msgpack.ExtType(1, b"x"), []]),
        b"\xa2\xff\xfe",
    ],
)
def test_decode_rejects_junk_with_valueerror(junk: bytes) -> None:
    with pytest.raises(ValueError, match="envelope"):
        decode_envelope(junk)


@given(st.binary())
def test_decode_of_any_bytes_gives_envelope_or_valueerror(data: bytes) -> None:
    try:
        env = decode_envelope(data)
    except ValueError:
        return
    assert isinstance(env, Envelope)
    assert env.format_version == FORMAT_VERSION


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(TypeError, match="bytes"):
        decode_envelope("text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ((FORMAT_VERSION, 0, b"v", ()), TypeError),
        (Envelope(FORMAT_VERSION + 1, 0, b"v", ()), ValueError),
        (Envelope(FORMAT_VERSION, -1, b"v", ()), ValueError),
        (Envelope(FORMAT_VERSION, 2**63, b"v", ()), ValueError),
        (Envelope(FORMAT_VERSION, 0.5, b"v", ()), TypeError),  # type: ignore[arg-type]
        (Envelope(FORMAT_VERSION, 0, "v", ()), TypeError),  # type: ignore[arg-type]
        (Envelope(FORMAT_VERSION, 0, b"v", ["a"]), TypeError),  # type: ignore[arg-type]
        (Envelope(FORMAT_VERSION, 0, b"v", (1,)), TypeError),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_bad_envelopes(env: Envelope, error: type[Exception]) -> None:
    with pytest.raises(error, match="Envelope"):
        encode_envelope(env)


# --- failures, against a real redis-server --------------------------------------------------------------------


def _operations(tier: L2Tier) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "get": lambda: tier.get("k"),
        "mget": lambda: tier.mget(["k", "j"]),
        "set": lambda: tier.set("k", b"v", 60),
        "set_nx": lambda: tier.set_nx("k", b"v", 60),
        "delete": lambda: tier.delete("k"),
        "clear": tier.clear,
    }


async def test_killed_redis_raises_l2error_then_same_tier_recovers_after_start(
    redis_server: RedisServer, fault_tier: L2Tier
) -> None:
    await fault_tier.set("k", b"before", 60)
    redis_server.kill()

    for name, operation in _operations(fault_tier).items():
        with pytest.raises(L2Error, match=re.escape(f"L2 {name} failed on {redis_server.url}")) as info:
            await operation()
        assert isinstance(info.value.__cause__, (RedisError, OSError, asyncio.TimeoutError))
    assert await fault_tier.ping() is False
    assert fault_tier.stats()["errors"] == 6

    redis_server.start()

    assert await fault_tier.ping() is True
    await fault_tier.set("k", b"after", 60)
    found = await fault_tier.get("k")
    assert found is not None and found[0].value == b"after"


async def test_restart_while_idle_does_not_fail_the_next_call(
    redis_server: RedisServer, fault_tier: L2Tier
) -> None:
    await fault_tier.set("k", b"v", 60)

    redis_server.restart()

    assert await fault_tier.get("k") is None  # the server came back empty (no persistence)
    assert fault_tier.stats()["errors"] == 0


async def test_paused_redis_raises_l2error_and_the_tier_works_after_resume(
    redis_server: RedisServer, fault_tier: L2Tier
) -> None:
    await fault_tier.set("k", b"kept", 60)

    redis_server.pause()
    try:
        with pytest.raises(L2Error, match="L2 get failed"):
            await fault_tier.get("k")
        with pytest.raises(L2Error, match="L2 set failed"):
            await fault_tier.set("k", b"lost?", 60)
        assert await fault_tier.ping() is False
    finally:
        redis_server.resume()

    found = await fault_tier.get("k")
    assert found is not None
    assert found[0].value in (b"kept", b"lost?")  # the timed-out SET may have reached Redis before the pause
    assert await fault_tier.ping() is True


async def test_deadline_bounds_a_client_without_socket_timeouts(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=None)
    tier = L2Tier(redis_server.url, "test", timeout=FAULT_TIMEOUT, client=client)
    try:
        await tier.set("k", b"kept", 60)
        redis_server.pause()
        try:
            with pytest.raises(L2Error, match=r"L2 get failed .*no answer within") as info:
                await tier.get("k")
        finally:
            redis_server.resume()
        assert isinstance(info.value.__cause__, asyncio.TimeoutError)
        found = await tier.get("k")
        assert found is not None and found[0].value == b"kept"
    finally:
        await tier.aclose()


async def test_password_is_never_shown() -> None:
    dead_port = free_port()
    tier = L2Tier(f"redis://alice:s3cret@127.0.0.1:{dead_port}/0", "test", timeout=FAULT_TIMEOUT)
    try:
        with pytest.raises(L2Error) as info:
            await tier.get("k")
        shown = _chain_text(info.value) + repr(tier)
    finally:
        await tier.aclose()

    assert f"alice:***@127.0.0.1:{dead_port}" in str(info.value)
    assert "s3cret" not in shown


def test_password_is_not_shown_for_a_bad_url() -> None:
    with pytest.raises(ValueError, match="Redis URL") as info:
        L2Tier("http://alice:s3cret@localhost/0", "test")

    assert "s3cret" not in _chain_text(info.value)
