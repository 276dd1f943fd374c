"""The L2 tier: one contract over a real redis-server and fakeredis (stamped, conditional writes, tombstones and
the namespace floor), the record format, and the failure behaviour against a real redis-server that is killed,
restarted and paused."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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
    HEADER_BYTES,
    Batch,
    Envelope,
    L2Tier,
    WriteResult,
    decode_envelope,
    encode_envelope,
    key_prefix,
)
from mtcache.coordinator.lane import pack_commands
from mtcache.coordinator.stamps import HybridClock, format_stamp
from mtcache.errors import L2Error
from tests.redis_server import RedisServer, free_port

# Short enough that the pause test stays quick, long enough for a loaded CI machine to answer a live Redis.
FAULT_TIMEOUT = 0.3
# The hlc of hand-made stamps: wall-clock microseconds in 2027, well inside the 16 digits of a stamp.
HLC = 1_800_000_000_000_000
# msgpack of a well-formed record body, for hand-made records and junk built around it.
BODY = msgpack.packb([FORMAT_VERSION, 0, b"v", []])

MakeTier = Callable[[str], L2Tier]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _stamp(hlc: int, node: int = 7) -> int:
    """A stamp built by hand (see :mod:`mtcache.coordinator.stamps`)."""
    return hlc << 32 | node


def _record(value: bytes | None, stamp: int, *, expiry_ms: int = 0, tags: tuple[str, ...] = ()) -> bytes:
    """The bytes of a record as :meth:`L2Tier.write` stores them (``value`` None: a tombstone)."""
    return encode_envelope(Envelope(FORMAT_VERSION, expiry_ms, value or b"", tags, stamp, value is None))


async def _raise_floor(tier: L2Tier, stamp: int) -> int:
    """Raise the namespace floor as a clear does; 1 if it moved."""
    replies = await tier.pipeline("clear", lambda pipe: tier.queue_raise_floor(pipe, stamp))
    return int(replies[0])


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
    """Builds tiers that share one backend: a real redis-server, or one fakeredis server (Lua through lupa)."""
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
def clock() -> HybridClock:
    """Increasing stamps, as one coordinator issues them."""
    return HybridClock(node=7)


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


async def test_write_then_get_returns_the_record(tier: L2Tier, clock: HybridClock) -> None:
    stamp = clock.now()
    before = _now_ms()
    assert await tier.write("k", b"\x00value", 60, stamp, tags=["users", "user:1"]) == WriteResult.STORED
    after = _now_ms()

    env = await tier.get("k")

    assert env is not None
    assert env.format_version == FORMAT_VERSION
    assert env.value == b"\x00value"
    assert env.tags == ("users", "user:1")
    assert (env.stamp, env.tombstone) == (stamp, False)
    assert before + 60_000 <= env.logical_expiry_ms <= after + 60_000
    assert tier.stats()["hits"] == 1


async def test_get_of_absent_key_is_none(tier: L2Tier) -> None:
    assert await tier.get("absent") is None
    assert tier.stats()["misses"] == 1


@pytest.mark.parametrize(
    ("upper", "lower"),
    [(b"two", b"one"), (None, b"one"), (b"two", None)],
    ids=["value-over-value", "tombstone-over-value", "value-over-tombstone"],
)
async def test_newer_write_replaces_older_and_older_never_replaces_newer(
    tier: L2Tier, clock: HybridClock, upper: bytes | None, lower: bytes | None
) -> None:
    """Whatever the order the writes arrive in, the one with the larger stamp is what Redis keeps."""
    older, newer = clock.now(), clock.now()

    # in order: the newer write lands over the older one; REPLACED says a value (not a tombstone) was there
    assert await tier.write("in-order", lower, 60, older) == WriteResult.STORED
    expected = WriteResult.REPLACED if lower is not None else WriteResult.STORED
    assert await tier.write("in-order", upper, 60, newer) == expected
    # late: the older write arrives after the newer one and is refused
    assert await tier.write("late", lower, 60, newer) == WriteResult.STORED
    assert await tier.write("late", upper, 60, older) == WriteResult.OLDER

    in_order, late = await tier.mget(["in-order", "late"])
    assert in_order is not None and late is not None
    assert (in_order.stamp, in_order.tombstone, in_order.value) == (newer, upper is None, upper or b"")
    assert (late.stamp, late.tombstone, late.value) == (newer, lower is None, lower or b"")


async def test_tombstone_reads_as_a_miss_and_blocks_an_older_fill(tier: L2Tier, clock: HybridClock) -> None:
    """The "fill after a delete" race: a value computed before a delete must not land after it."""
    fill_stamp = clock.now()  # a reader computed a value from the data as it was
    delete_stamp = clock.now()  # then the key was deleted
    assert await tier.write("k", None, 600, delete_stamp) == WriteResult.STORED

    assert await tier.write("k", b"stale", 60, fill_stamp) == WriteResult.OLDER

    env = await tier.get("k")
    assert env is not None
    assert (env.tombstone, env.stamp, env.value) == (True, delete_stamp, b"")
    stats = tier.stats()
    assert (stats["gets"], stats["hits"], stats["misses"]) == (1, 0, 1)


async def test_replayed_write_is_same_and_changes_nothing(tier: L2Tier, clock: HybridClock) -> None:
    """A write replayed after a failure that may or may not have reached Redis is harmless."""
    value_stamp, tombstone_stamp = clock.now(), clock.now()
    assert await tier.write("v", b"one", 60, value_stamp, tags=["t"]) == WriteResult.STORED
    assert await tier.write("t", None, 600, tombstone_stamp) == WriteResult.STORED
    stored = await tier.redis.mget([tier.key("v"), tier.key("t")])

    # the replay carries a later logical expiry: if it were written, the stored bytes would change
    assert await tier.write("v", b"one", 60, value_stamp, tags=["t"]) == WriteResult.SAME
    assert await tier.write("t", None, 600, tombstone_stamp) == WriteResult.SAME

    assert await tier.redis.mget([tier.key("v"), tier.key("t")]) == stored
    # a replay that a newer write overtook is older, not the same
    assert await tier.write("v", b"two", 60, clock.now()) == WriteResult.REPLACED
    assert await tier.write("v", b"one", 60, value_stamp, tags=["t"]) == WriteResult.OLDER


async def test_ties_on_the_hlc_are_broken_by_the_node(tier: L2Tier) -> None:
    """Two hosts writing in the same microsecond: the larger node wins, whichever write comes first."""
    small, large = _stamp(HLC, node=5), _stamp(HLC, node=9)

    assert await tier.write("small-first", b"five", 60, small) == WriteResult.STORED
    assert await tier.write("small-first", b"nine", 60, large) == WriteResult.REPLACED
    assert await tier.write("large-first", b"nine", 60, large) == WriteResult.STORED
    assert await tier.write("large-first", b"five", 60, small) == WriteResult.OLDER

    for env in await tier.mget(["small-first", "large-first"]):
        assert env is not None
        assert (env.value, env.stamp) == (b"nine", large)


async def test_write_at_or_below_the_floor_is_refused_and_older_records_read_as_none(
    tier: L2Tier, clock: HybridClock
) -> None:
    old, floor = clock.now(), clock.now()
    await tier.write("a", b"A", 60, old)
    await tier.write("b", None, 600, old)
    await tier.write("edge", b"E", 60, floor)  # made by hand: a clock never issues the clear's stamp twice
    assert await _raise_floor(tier, floor) == 1
    newer = clock.now()
    await tier.write("c", b"C", 60, newer)

    assert await tier.mget(["a", "b", "edge", "c"]) == [None, None, None, await tier.get("c")]
    assert tier.floor == floor
    assert await tier.redis.exists(tier.key("a")) == 1  # dead, not removed: that is purge's job

    # a write stamped before the clear, or at it, is a write the clear removed
    assert await tier.write("a", b"late", 60, old + 1) == WriteResult.BELOW_FLOOR
    assert await tier.write("a", b"late", 60, floor) == WriteResult.BELOW_FLOOR
    assert await tier.write("new", None, 600, old) == WriteResult.BELOW_FLOOR
    assert await tier.redis.exists(tier.key("new")) == 0
    assert await tier.get("a") is None
    # a write made after the clear lands
    assert await tier.write("a", b"after", 60, clock.now()) > WriteResult.OLDER
    found = await tier.get("a")
    assert found is not None and found.value == b"after"


async def test_every_read_learns_the_floor(make_tier: MakeTier, clock: HybridClock) -> None:
    """A clear made by another host is seen by the next read, whatever keys it asks for."""
    mine, theirs = make_tier("test"), make_tier("test")
    old = clock.now()
    await mine.write("k", b"v", 60, old)
    assert await mine.get("k") is not None
    floor = clock.now()
    await _raise_floor(theirs, floor)

    assert mine.floor == 0
    assert await mine.get("k") is None
    assert mine.floor == floor
    other = make_tier("test")
    assert await other.mget(["absent"]) == [None]
    assert other.floor == floor


async def test_floor_never_moves_down(tier: L2Tier, clock: HybridClock) -> None:
    low, between, high = clock.now(), clock.now(), clock.now()
    assert await _raise_floor(tier, high) == 1

    assert await _raise_floor(tier, low) == 0
    assert await _raise_floor(tier, high) == 0

    assert await tier.redis.get(tier.floor_key) == format_stamp(high)
    assert await tier.write("k", b"v", 60, between) == WriteResult.BELOW_FLOOR
    await tier.get("k")
    assert tier.floor == high


async def test_a_malformed_floor_is_ignored_and_replaced(
    tier: L2Tier, clock: HybridClock, caplog: pytest.LogCaptureFixture
) -> None:
    await tier.redis.set(tier.floor_key, b"junk")

    assert await tier.write("k", b"v", 60, clock.now()) == WriteResult.STORED
    with caplog.at_level(logging.WARNING, logger="mtcache.coordinator.l2"):
        found = await tier.get("k")

    assert found is not None and found.value == b"v"
    assert tier.floor == 0
    assert "floor" in caplog.text
    floor = clock.now()
    assert await _raise_floor(tier, floor) == 1
    assert await tier.redis.get(tier.floor_key) == format_stamp(floor)


async def test_purge_removes_only_older_records_of_this_namespace(make_tier: MakeTier, clock: HybridClock) -> None:
    mine, other, glob = make_tier("mine"), make_tier("other"), make_tier("m*")
    old = clock.now()
    # more than one SCAN batch
    await mine.redis.mset({mine.key(f"k{i}"): _record(b"", old) for i in range(2500)})
    await mine.write("tombstone", None, 600, old)
    await mine.redis.set(mine.prefix + "lease:k0", "token")
    await mine.redis.xadd(mine.prefix + "inval", {"op": "del"})
    await other.write("k0", b"kept", 60, old)
    await glob.write("k0", b"gone", 60, old)
    await mine.redis.set("unrelated", "kept")
    floor = clock.now()
    await _raise_floor(mine, floor)
    await mine.write("raced", b"newer than the clear", 60, clock.now())

    assert await glob.purge(floor) == 1  # "m*" is a namespace name, not a pattern: "mine" survives it
    assert await mine.redis.exists(mine.key("k0")) == 1
    assert await mine.purge(floor) == 2500  # values only: the tombstone goes too, uncounted

    assert await mine.redis.exists(mine.key("k0"), mine.key("k2499"), mine.key("tombstone")) == 0
    raced = await mine.get("raced")
    assert raced is not None and raced.value == b"newer than the clear"
    assert await mine.redis.get(mine.prefix + "lease:k0") == b"token"  # leases are not records
    assert await mine.redis.xlen(mine.prefix + "inval") == 1
    assert await mine.redis.get(mine.floor_key) == format_stamp(floor)
    kept = await other.get("k0")
    assert kept is not None and kept.value == b"kept"
    assert await mine.redis.get("unrelated") == b"kept"
    assert await mine.purge(floor) == 0


@pytest.mark.parametrize(
    "junk",
    [
        b"junk",
        b"",
        b"\x00" * 40,
        b"V-short",
        msgpack.packb([1, 0, b"v", []]),  # a record of format 1, which had no header
        b"X" + b"9" * 26 + BODY,  # not a record kind: its "stamp" is never trusted
        b"V" + b"0x7FFFFFFFFFFFFF" + b"0000000001" + BODY,  # Lua's tonumber would read hex: only digits count
    ],
    ids=["not-msgpack", "empty", "zeros", "short-header", "format-1", "wrong-kind-digits", "hex-stamp"],
)
async def test_foreign_value_is_overwritten_by_a_write(tier: L2Tier, clock: HybridClock, junk: bytes) -> None:
    """Data that is not a record (decode_envelope rejects it) has no stamp, so it cannot block a write."""
    await tier.redis.set(tier.key("k"), junk)

    assert await tier.write("k", b"mine", 60, clock.now()) in (WriteResult.STORED, WriteResult.REPLACED)

    found = await tier.get("k")
    assert found is not None and found.value == b"mine"


@pytest.mark.parametrize(
    "junk",
    [
        b"junk",
        b"",
        msgpack.packb([1, 0, b"v", []]),
        b"X" + b"0" * 26 + BODY,
        b"V" + b"0" * 25 + b"a" + BODY,
        b"V" + b"0" * 26 + msgpack.packb([FORMAT_VERSION + 1, 0, b"v", []]),
        b"V" + b"0" * 26 + msgpack.packb({"value": b"v"}),
    ],
    ids=["not-msgpack", "empty", "format-1", "wrong-kind", "non-digit-stamp", "other-version", "wrong-shape"],
)
async def test_corrupt_record_is_a_miss_and_is_deleted(
    tier: L2Tier, junk: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    await tier.redis.set(tier.key("k"), junk, px=60_000)

    with caplog.at_level(logging.WARNING, logger="mtcache.coordinator.l2"):
        assert await tier.get("k") is None

    assert await tier.redis.exists(tier.key("k")) == 0
    stats = tier.stats()
    assert (stats["corrupt"], stats["misses"], stats["hits"]) == (1, 1, 0)
    assert tier.key("k") in caplog.text


async def test_physical_ttl_of_values_and_tombstones(tier: L2Tier, clock: HybridClock) -> None:
    await tier.write("value", b"v", 60, clock.now())
    await tier.write("tombstone", None, 600, clock.now())

    assert 30_000 < await tier.redis.pttl(tier.key("value")) <= 60_000
    assert 300_000 < await tier.redis.pttl(tier.key("tombstone")) <= 600_000


async def test_sub_millisecond_ttl_still_sets_a_ttl(tier: L2Tier, clock: HybridClock) -> None:
    await tier.write("k", b"v", 1e-9, clock.now())

    pttl = await tier.redis.pttl(tier.key("k"))

    # PX is at least 1 ms: the key either still has a TTL of at most 1 ms or is already gone
    assert pttl in (-2, 0, 1)


async def test_mget_returns_hits_misses_and_tombstones_in_order(tier: L2Tier, clock: HybridClock) -> None:
    await tier.write("a", b"A", 60, clock.now())
    await tier.write("c", b"C", 60, clock.now(), tags=["t"])
    await tier.write("d", None, 600, clock.now())

    found = await tier.mget(["a", "b", "c", "a", "d"])

    values = [None if entry is None else (entry.value, entry.tombstone) for entry in found]
    assert values == [(b"A", False), None, (b"C", False), (b"A", False), (b"", True)]
    assert found[2] is not None and found[2].tags == ("t",)
    assert await tier.mget([]) == []
    stats = tier.stats()
    assert (stats["gets"], stats["hits"], stats["misses"]) == (5, 3, 2)


async def test_batches_survive_a_flushed_script_cache_and_an_error_reply(tier: L2Tier, clock: HybridClock) -> None:
    """Scripts go as EVALSHA: after SCRIPT FLUSH (or a restart) the batch still runs, each script once and in
    order; an error reply fails its batch as L2Error and leaves the connection in step for the next one."""
    assert await tier.write("a", b"one", 60, clock.now()) == WriteResult.STORED
    await tier.redis.script_flush()
    first, second = clock.now(), clock.now()

    def build(pipe: Batch) -> None:
        tier.queue_write(pipe, "a", b"two", 60, second)
        tier.queue_write(pipe, "a", b"older", 60, first)

    assert await tier.pipeline("write", build) == [WriteResult.REPLACED, WriteResult.OLDER]
    with pytest.raises(L2Error, match="write failed"):
        await tier.pipeline("write", lambda pipe: pipe.eval("return redis.error_reply('boom')", 0))
    found = await tier.get("a")
    assert found is not None and found.value == b"two"


async def test_writes_queued_into_one_pipeline(tier: L2Tier, clock: HybridClock) -> None:
    """queue_write lets a write travel with other commands; each reply is the write's WriteResult."""
    older, newer = clock.now(), clock.now()

    def build(pipe: Batch) -> None:
        tier.queue_write(pipe, "a", b"new", 60, newer)
        tier.queue_write(pipe, "a", b"old", 60, older)
        tier.queue_write(pipe, "b", None, 600, older)
        pipe.eval("return redis.call('EXISTS', KEYS[1])", 1, tier.key("a"))

    assert await tier.pipeline("write", build) == [WriteResult.STORED, WriteResult.OLDER, WriteResult.STORED, 1]
    found = await tier.get("a")
    assert found is not None and found.value == b"new"
    assert tier.stats()["sets"] == 3


async def test_record_is_what_write_stores(fake_tier: L2Tier, clock: HybridClock) -> None:
    stamp = clock.now()
    before = _now_ms()

    data, px = fake_tier.record(None, 600, stamp, ["t"])

    env = decode_envelope(data)
    assert px == 600_000
    assert (env.value, env.tags, env.stamp, env.tombstone) == (b"", ("t",), stamp, True)
    assert before + 600_000 <= env.logical_expiry_ms <= _now_ms() + 600_000


async def test_key_prefix_holds_namespace_and_format_version(tier: L2Tier, clock: HybridClock) -> None:
    await tier.write("x", b"v", 60, clock.now())

    assert tier.prefix == key_prefix("test") == f"mtcache:test:v{FORMAT_VERSION}:"
    assert tier.key("x") == f"mtcache:test:v{FORMAT_VERSION}:k:x"
    assert tier.floor_key == f"mtcache:test:v{FORMAT_VERSION}:floor"
    assert await tier.redis.exists(f"mtcache:test:v{FORMAT_VERSION}:k:x") == 1


async def test_record_without_physical_ttl_reads_back_exactly(tier: L2Tier) -> None:
    env = Envelope(FORMAT_VERSION, 5, b"v", ("t",), _stamp(HLC), False)
    await tier.redis.set(tier.key("k"), encode_envelope(env))

    assert await tier.get("k") == env


async def test_error_reply_is_an_l2error(tier: L2Tier, clock: HybridClock) -> None:
    await tier.redis.rpush(tier.key("k"), "not a string")

    # MGET answers nil for a key of another type: the read sees nothing, the write meets the error
    assert await tier.get("k") is None
    with pytest.raises(L2Error, match="L2 write failed") as info:
        await tier.write("k", b"v", 60, clock.now())

    assert isinstance(info.value.__cause__, RedisError)
    assert "WRONGTYPE" in str(info.value)
    assert tier.stats()["errors"] == 1


async def test_stats_count_operations(tier: L2Tier, clock: HybridClock) -> None:
    older, newer = clock.now(), clock.now()
    await tier.write("a", b"1", 60, newer)
    await tier.write("a", b"2", 60, older)  # refused, but sent
    await tier.write("t", None, 600, newer)
    await tier.mget(["a", "b"])
    await tier.get("a")
    await tier.get("t")

    assert tier.stats() == {"gets": 4, "hits": 2, "misses": 2, "sets": 3, "errors": 0, "corrupt": 0}


async def test_server_time_is_close_to_ours(tier: L2Tier) -> None:
    """A sanity check of the units and the order of the pair, not a timing assertion."""
    redis_ms, local_ms = await tier.server_time_ms()

    assert abs(redis_ms - local_ms) < 5_000
    assert abs(local_ms - _now_ms()) < 5_000


async def test_ping_answers_true(tier: L2Tier) -> None:
    assert await tier.ping() is True


# --- argument checking ----------------------------------------------------------------------------------------

_S = _stamp(HLC)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda t: t.get(""), ValueError),
        (lambda t: t.get(b"k"), TypeError),
        (lambda t: t.mget("ab"), TypeError),
        (lambda t: t.mget(["a", 1]), TypeError),
        (lambda t: t.write("", b"v", 60, _S), ValueError),
        (lambda t: t.write("k", "text", 60, _S), TypeError),
        (lambda t: t.write("k", bytearray(b"v"), 60, _S), TypeError),
        (lambda t: t.write("k", b"v", 0, _S), ValueError),
        (lambda t: t.write("k", None, -1, _S), ValueError),
        (lambda t: t.write("k", b"v", math.nan, _S), ValueError),
        (lambda t: t.write("k", b"v", 1e300, _S), ValueError),
        (lambda t: t.write("k", b"v", "60", _S), TypeError),
        (lambda t: t.write("k", b"v", True, _S), TypeError),
        (lambda t: t.write("k", b"v", 60, _S, tags="users"), TypeError),
        (lambda t: t.write("k", b"v", 60, _S, tags=[1]), TypeError),
        (lambda t: t.write("k", b"v", 60, -1), ValueError),
        (lambda t: t.write("k", b"v", 60, 1 << 85), ValueError),
        (lambda t: t.write("k", b"v", 60, 1.5), TypeError),
        (lambda t: t.write("k", None, 60, True), TypeError),
        (lambda t: t.pipeline("clear", lambda p: t.queue_raise_floor(p, -1)), ValueError),
        (lambda t: t.purge(-1), ValueError),
    ],
)
async def test_bad_arguments_raise_before_any_write(
    fake_tier: L2Tier, call: Callable[[L2Tier], Awaitable[object]], error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"key|keys|value|ttl|tag|stamp"):
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


# --- the record format ------------------------------------------------------------------------------------------

_stamps = st.builds(
    _stamp, st.integers(min_value=0, max_value=2**53 - 1), st.integers(min_value=0, max_value=2**32 - 1)
)
_envelopes = st.builds(
    Envelope,
    st.just(FORMAT_VERSION),
    st.integers(min_value=0, max_value=2**62 - 1),
    st.binary(),
    st.lists(st.text()).map(tuple),
    _stamps,
    st.booleans(),
    st.integers(min_value=0, max_value=2**62 - 1),
)


@given(_envelopes)
def test_envelope_round_trip(env: Envelope) -> None:
    data = encode_envelope(env)

    assert decode_envelope(data) == env
    assert decode_envelope(bytearray(data)) == decode_envelope(memoryview(data)) == env


@pytest.mark.parametrize(("tombstone", "kind"), [(False, b"V"), (True, b"T")])
def test_record_layout_is_a_header_then_a_five_item_msgpack_array(tombstone: bool, kind: bytes) -> None:
    """The header is what the Lua scripts read with GETRANGE 0 26: changing it breaks every stored record."""
    stamp = _stamp(1_700_000_000_123_456, node=42)

    data = encode_envelope(Envelope(FORMAT_VERSION, 1234, b"v", ("a", "b"), stamp, tombstone))

    assert HEADER_BYTES == 27
    assert data[:HEADER_BYTES] == kind + b"1700000000123456" + b"0000000042"
    assert msgpack.unpackb(data[HEADER_BYTES:]) == [FORMAT_VERSION, 1234, b"v", ["a", "b"], 0]


@pytest.mark.parametrize(("value", "ttl", "tags", "stale_for"), [
    (b"v", 60.0, (), 0.0), (None, 30.0, (), 0.0), (b"x" * 300, math.inf, ("a", "b"), 0.0), (b"v", 5.0, ("t",), 20.0),
])
async def test_a_write_s_record_is_the_envelope_of_its_fields(
    fake_tier: L2Tier, value: bytes | None, ttl: float, tags: tuple[str, ...], stale_for: float
) -> None:
    """The write path packs its records itself, without an Envelope: they must be the bytes encode_envelope makes."""
    stamp = _stamp(HLC, node=9)

    data, _ = fake_tier.record(value, ttl, stamp, tags, stale_for)

    env = decode_envelope(data)
    assert (env.value, env.tags, env.stamp, env.tombstone) == (value or b"", tags, stamp, value is None)
    assert encode_envelope(env) == data


@pytest.mark.parametrize("bad", [True, None, [1], 1j])
async def test_a_write_s_record_refuses_a_stamp_that_is_not_an_int_and_a_command_argument_of_another_type(
    fake_tier: L2Tier, bad: object,
) -> None:
    with pytest.raises(TypeError, match="stamp must be an int"):
        fake_tier.record(b"v", 1.0, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=f"not {type(bad).__name__}"):
        pack_commands([("SET", "k", "v"), ("SET", "k", bad)])


async def test_a_record_is_refused_when_the_clock_puts_its_expiry_before_1970(
    fake_tier: L2Tier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a record could not be read back (a negative expiry is malformed): the write fails instead."""
    monkeypatch.setattr(time, "time_ns", lambda: -10**21)

    with pytest.raises(ValueError, match="before 1970"):
        fake_tier.record(b"v", 60.0, _stamp(HLC))


def test_a_bad_command_argument_is_named_even_after_one_hiredis_takes() -> None:
    class Name(str):
        pass

    with pytest.raises(TypeError, match="not NoneType"):
        pack_commands([("SET", Name("k"), None)])


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    commands = [("EVALSHA", "a" * 40, 3, "k\u00e9y", b"\x00\xff", 1.5, -7, 2**70, ""), ["GET", "k"]]

    expected = b"".join(b"".join(redis.asyncio.Redis().connection_pool.connection_class().pack_command(*command))
                        for command in commands)
    assert pack_commands(commands) == expected


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"V",
        b"V" + b"0" * 25,  # shorter than a header
        b"\xc1",
        BODY,  # a record of format 1 had no header
        b"X" + b"0" * 26 + BODY,
        b"v" + b"0" * 26 + BODY,
        b"\x00" + b"0" * 26 + BODY,
    ],
    ids=["empty", "kind-only", "short-header", "no-header", "headerless-body", "kind-X", "kind-v", "kind-nul"],
)
def test_decode_rejects_a_bad_header_kind_or_length(junk: bytes) -> None:
    with pytest.raises(ValueError, match="envelope"):
        decode_envelope(junk)


@pytest.mark.parametrize(
    "stamp",
    [b"0" * 25 + b"a", b" " * 26, b"-" + b"0" * 25, b"0x" + b"0" * 24, b"1e" + b"0" * 24, "٣".encode() * 13],
    ids=["letter", "spaces", "sign", "hex", "exponent", "arabic-digits"],
)
def test_decode_rejects_a_stamp_that_is_not_26_ascii_digits(stamp: bytes) -> None:
    with pytest.raises(ValueError, match=r"envelope|stamp"):
        decode_envelope(b"V" + stamp + BODY)


def test_decode_error_for_a_bad_stamp_names_the_envelope() -> None:
    with pytest.raises(ValueError, match="envelope"):
        decode_envelope(b"V" + b"0" * 25 + b"a" + BODY)


def test_decode_rejects_a_node_field_beyond_32_bits() -> None:
    """The Lua scripts compare (hlc, node) digit fields; Python must not read a different stamp from them."""
    with pytest.raises(ValueError):
        decode_envelope(b"V" + b"0" * 16 + b"9999999999" + BODY)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        BODY + b"\x00",
        msgpack.packb([FORMAT_VERSION, 0, b"v"]),
        msgpack.packb([FORMAT_VERSION, 0, b"v", [], None]),
        msgpack.packb([0, 0, b"v", []]),
        msgpack.packb([1, 0, b"v", []]),
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
def test_decode_rejects_a_bad_body_with_valueerror(body: bytes) -> None:
    with pytest.raises(ValueError, match="envelope"):
        decode_envelope(b"T" + b"0" * 26 + body)


@given(st.binary())
def test_decode_of_any_bytes_gives_envelope_or_valueerror(data: bytes) -> None:
    for candidate in (data, b"V" + b"0" * 26 + data):
        try:
            env = decode_envelope(candidate)
        except ValueError:
            continue
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
        (Envelope(FORMAT_VERSION, 0, b"v", (), 1.5), TypeError),  # type: ignore[arg-type]
        (Envelope(FORMAT_VERSION, 0, b"v", (), True), TypeError),
        (Envelope(FORMAT_VERSION, 0, b"v", (), -1), ValueError),
        (Envelope(FORMAT_VERSION, 0, b"v", (), 1 << 85), ValueError),
    ],
)
def test_encode_rejects_bad_envelopes(env: Envelope, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"Envelope|stamp"):
        encode_envelope(env)


async def test_a_write_over_a_record_below_the_floor_reports_stored(
    tier: L2Tier, clock: HybridClock
) -> None:
    """A value older than the floor reads as absent, so a write over it should not say a value was there."""
    await tier.write("k", b"cleared", 60, clock.now())
    await _raise_floor(tier, clock.now())

    assert await tier.write("k", None, 600, clock.now()) == WriteResult.STORED


# --- failures, against a real redis-server --------------------------------------------------------------------


def _operations(tier: L2Tier, clock: HybridClock) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    """Every call of the tier that reaches Redis, with the operation its L2Error names."""
    return [
        ("get", lambda: tier.get("k")),
        ("mget", lambda: tier.mget(["k", "j"])),
        ("write", lambda: tier.write("k", b"v", 60, clock.now())),
        ("write", lambda: tier.write("k", None, 600, clock.now())),
        ("clear", lambda: _raise_floor(tier, clock.now())),
        ("clear", lambda: tier.purge(clock.now())),
        ("time", tier.server_time_ms),
    ]


async def test_killed_redis_raises_l2error_then_same_tier_recovers_after_start(
    redis_server: RedisServer, fault_tier: L2Tier, clock: HybridClock
) -> None:
    await fault_tier.write("k", b"before", 60, clock.now())
    redis_server.kill()

    operations = _operations(fault_tier, clock)
    for name, operation in operations:
        with pytest.raises(L2Error, match=re.escape(f"L2 {name} failed on {redis_server.url}")) as info:
            await operation()
        assert isinstance(info.value.__cause__, (RedisError, OSError, asyncio.TimeoutError))
    assert await fault_tier.ping() is False
    assert fault_tier.stats()["errors"] == len(operations)

    redis_server.start()

    assert await fault_tier.ping() is True
    assert await fault_tier.write("k", b"after", 60, clock.now()) == WriteResult.STORED
    found = await fault_tier.get("k")
    assert found is not None and found.value == b"after"


async def test_restart_while_idle_does_not_fail_the_next_call(
    redis_server: RedisServer, fault_tier: L2Tier, clock: HybridClock
) -> None:
    await fault_tier.write("k", b"v", 60, clock.now())

    redis_server.restart()

    assert await fault_tier.get("k") is None  # the server came back empty (no persistence)
    assert fault_tier.stats()["errors"] == 0


async def test_paused_redis_raises_l2error_and_the_tier_works_after_resume(
    redis_server: RedisServer, fault_tier: L2Tier, clock: HybridClock
) -> None:
    await fault_tier.write("k", b"kept", 60, clock.now())
    lost = clock.now()

    redis_server.pause()
    try:
        with pytest.raises(L2Error, match="L2 get failed"):
            await fault_tier.get("k")
        with pytest.raises(L2Error, match="L2 write failed"):
            await fault_tier.write("k", b"lost?", 60, lost)
        assert await fault_tier.ping() is False
    finally:
        redis_server.resume()

    found = await fault_tier.get("k")
    assert found is not None
    assert found.value in (b"kept", b"lost?")  # the timed-out write may have reached Redis before the pause
    # replaying the write that may have landed (what the coordinator's backlog does) is harmless either way
    replayed = await fault_tier.write("k", b"lost?", 60, lost)
    assert replayed == (WriteResult.SAME if found.value == b"lost?" else WriteResult.REPLACED)
    found = await fault_tier.get("k")
    assert found is not None and (found.value, found.stamp) == (b"lost?", lost)
    assert await fault_tier.ping() is True


async def test_a_batch_has_its_whole_bound_after_an_earlier_one(
    redis_server: RedisServer, fault_tier: L2Tier, clock: HybridClock
) -> None:
    # the lane's one timer was set for the first batch; a second batch that starts just before that time is
    # still given its own whole bound (the timer is set again for it), then fails as a timeout
    bound = 2 * FAULT_TIMEOUT
    loop = asyncio.get_running_loop()
    await fault_tier.write("k", b"first", 60, clock.now())
    await asyncio.sleep(bound * 0.75)  # places the second batch, not a synchronisation
    redis_server.pause()
    try:
        started = loop.time()
        with pytest.raises(L2Error, match=r"L2 write failed .*no answer within") as info:
            await fault_tier.write("k", b"second", 60, clock.now())
        elapsed = loop.time() - started
    finally:
        redis_server.resume()
    assert isinstance(info.value.__cause__, asyncio.TimeoutError)
    assert elapsed >= bound * 0.99, f"cut short after {elapsed:.3f} s of its {bound} s"
    assert await fault_tier.write("k", b"third", 60, clock.now()) in (WriteResult.STORED, WriteResult.REPLACED)


async def test_cancelling_a_batch_is_not_taken_for_its_timeout(
    redis_server: RedisServer, fault_tier: L2Tier, clock: HybridClock
) -> None:
    # a caller cancelled while its batch waits on Redis (the coordinator stopping) is cancelled, not timed out
    await fault_tier.write("k", b"first", 60, clock.now())
    redis_server.pause()
    try:
        pending = asyncio.ensure_future(fault_tier.write("k", b"second", 60, clock.now()))
        await asyncio.sleep(0.05)  # lets the batch reach Redis, not a synchronisation: either way it is cancelled
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
    finally:
        redis_server.resume()
    assert await fault_tier.write("k", b"third", 60, clock.now()) in (WriteResult.STORED, WriteResult.REPLACED)


async def test_deadline_bounds_a_client_without_socket_timeouts(
    redis_server: RedisServer, clock: HybridClock
) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=None)
    tier = L2Tier(redis_server.url, "test", timeout=FAULT_TIMEOUT, client=client)
    try:
        await tier.write("k", b"kept", 60, clock.now())
        redis_server.pause()
        try:
            with pytest.raises(L2Error, match=r"L2 get failed .*no answer within") as info:
                await tier.get("k")
        finally:
            redis_server.resume()
        assert isinstance(info.value.__cause__, asyncio.TimeoutError)
        found = await tier.get("k")
        assert found is not None and found.value == b"kept"
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


async def test_a_connection_torn_down_under_a_call_is_an_l2_error(
    tier: L2Tier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # found under load: a failed ping dropped the pool while a read was in flight, and redis-py raised
    # AttributeError ("'NoneType' object has no attribute 'writelines'"), which reached a worker as an
    # internal coordinator error instead of the degraded path
    async def torn_down(*args: object, **kwargs: object) -> None:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    monkeypatch.setattr(tier._reads._lane, "_open", torn_down)
    with pytest.raises(L2Error, match="writelines"):
        await tier.get("k")


async def test_concurrent_reads_share_round_trips(fault_tier: L2Tier, clock: HybridClock) -> None:
    """Reads asked while one MGET is on its way go together in the next: 50 concurrent gets take far fewer
    than 50 round trips, and each caller gets its own key's record. On a real Redis only: fakeredis answers
    without waiting on a socket, so each read's round trip ends before the next read is asked."""
    tier = fault_tier
    for i in range(50):
        await tier.write(f"r{i}", f"v{i}".encode(), 60, clock.now())
    before = tier._reads.batches
    found = await asyncio.gather(*(tier.get(f"r{i}") for i in range(50)))
    assert [entry.value if entry else None for entry in found] == [f"v{i}".encode() for i in range(50)]
    assert tier._reads.batches - before < 50


async def test_a_read_is_sent_from_a_callback_not_a_task(fault_tier: L2Tier, clock: HybridClock) -> None:
    await fault_tier.write("k", b"v", 60, clock.now())
    assert await fault_tier.get("k") is not None  # the first read opens the lane's connection
    fault_tier._reads._task = None
    found = await fault_tier.get("k")
    assert found is not None and found.value == b"v"
    assert fault_tier._reads._task is None  # no read task was started for it
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fault_tier.get_soon("k", answer.set_result)
    assert not answer.done()  # never from its own call
    found = await answer
    assert isinstance(found, Envelope) and found.value == b"v"
    assert fault_tier._reads._task is None


async def test_a_read_waits_for_the_requests_that_came_with_it(fault_tier: L2Tier, clock: HybridClock) -> None:
    # two reads of one loop turn: the first to run sees the other yet to start, so it does not send its own
    # round trip, and both go in one
    await fault_tier.write("a", b"1", 60, clock.now())
    await fault_tier.write("b", b"2", 60, clock.now())
    asked: list[bool] = []
    fault_tier.share_reads_while(lambda: not asked and not asked.append(True))  # True the first time only
    before = fault_tier._reads.batches
    found = await asyncio.gather(fault_tier.get("a"), fault_tier.get("b"))
    assert [entry.value if entry else None for entry in found] == [b"1", b"2"]
    assert fault_tier._reads.batches - before == 1


async def test_a_read_stopped_by_its_deadline_leaves_the_next_one_working(
    redis_server: RedisServer, fault_tier: L2Tier, clock: HybridClock
) -> None:
    await fault_tier.write("k", b"v", 60, clock.now())
    redis_server.pause()
    try:
        first = asyncio.ensure_future(fault_tier.get("k"))
        await asyncio.sleep(0)  # the first read sends its own round trip
        second = asyncio.ensure_future(fault_tier.get("k"))  # waits for the next round trip
        for pending in (first, second):
            with pytest.raises(L2Error, match="no answer within"):
                await pending
    finally:
        redis_server.resume()
    found = await fault_tier.get("k")
    assert found is not None and found.value == b"v"


async def test_a_batch_on_a_connection_a_reset_closed_is_sent_again_on_a_new_one(
    tier: L2Tier, clock: HybridClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the chaos checker (seed 14, a link reset): the lane's idle connection was dead, its next batch
    failed with uvloop's RuntimeError for a closed transport, and a read answered a miss for a value Redis
    held. A batch is sent once more on a new connection after such an error, as after a ConnectionError."""
    assert await tier.write("k", b"v", 60, clock.now()) == WriteResult.STORED
    assert await tier.get("k") is not None  # both lanes have a connection now
    failures: list[list[bool]] = []
    for lane in (tier._lane, tier._reads._lane):
        pipe = lane._pipe
        assert pipe is not None and pipe.open
        send, failed = pipe.send, []
        failures.append(failed)

        def closed_once(data: bytes, count: int, done: Any, send: Any = send, failed: list[bool] = failed) -> None:
            if failed:
                send(data, count, done)
                return
            failed.append(True)
            done(RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed"))

        monkeypatch.setattr(pipe, "send", closed_once)
    found = await tier.get("k")
    assert found is not None and found.value == b"v"
    assert await tier.write("k", b"w", 60, clock.now()) == WriteResult.REPLACED
    assert failures == [[True], [True]]
