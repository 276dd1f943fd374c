"""The invalidation stream under faults (issue 10): foreign entries, a failing reader, trims while the
reader is away, a reader that connects late, stamps that order what hosts apply, and an evicting Redis.

Engines ("hosts") run in one event loop on one real redis-server; the reader is cut off by making its
own Redis calls fail, not by stopping Redis, so the other host goes on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from mtcache.config import Settings
from mtcache.coordinator.cache import CacheEngine
from mtcache.coordinator.invalidation import InvalidationStream
from mtcache.coordinator.l2 import L2Tier
from mtcache.coordinator.stamps import HybridClock
from mtcache.protocol import Status
from mtcache.shm import VersionTable
from tests.redis_server import RedisServer

WAIT = 20.0
TTL = 600.0

MakeEngine = Callable[..., Awaitable[CacheEngine]]


@pytest.fixture
async def make_engine(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[MakeEngine]:
    made: list[tuple[CacheEngine, VersionTable]] = []

    async def make(*, connected: bool = True) -> CacheEngine:
        settings = Settings.load(redis_url=redis_server.url, socket_path=str(tmp_path / "x.sock"), environ={},
                                 cwd=tmp_path, redis_timeout=0.5)
        table = VersionTable.create(1024, directory=tmp_path)
        engine = CacheEngine(settings, table, L2Tier(redis_server.url, settings.namespace, timeout=0.5))
        made.append((engine, table))
        await engine.start()
        if connected:
            await _until(lambda: _reader(engine).connected, "the stream reader to connect")
        return engine

    yield make
    for engine, table in reversed(made):
        await engine.close()
        table.close()


def _reader(engine: CacheEngine) -> InvalidationStream:
    assert engine.inval is not None
    return engine.inval


async def _until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait
    return result


def _l1(engine: CacheEngine, key: str) -> bytes | None:
    found = engine.local.peek(key)
    return None if found is None else found[0]


async def _read(engine: CacheEngine, key: str) -> bytes | None:
    reply = engine.get_l1(key) or await engine.get_miss(key)
    return reply[1] if reply[0] == Status.OK else None


class ReaderCut:
    """Makes one engine's stream reader fail its Redis calls until :meth:`heal` (the engine's writes go on)."""

    def __init__(self, engine: CacheEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.healed = False
        stream = _reader(engine)
        monkeypatch.setattr(stream, "_xread", self._cut(stream._xread))  # the blocking reads
        for name in ("xrange", "xrevrange"):  # the resume checks
            monkeypatch.setattr(stream._reader, name, self._cut(getattr(stream._reader, name)))

    def _cut(self, original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if not self.healed:
                raise RedisConnectionError("the reader's link is cut (test)")
            return await original(*args, **kwargs)

        return call

    def heal(self) -> None:
        self.healed = True


async def _warm(a: CacheEngine, b: CacheEngine, keys: list[str]) -> None:
    """B writes ``keys``; A caches B's values in its L1."""
    for key in keys:
        await b.set(key, b"old", TTL)
    for key in keys:
        # promoted with B's stamp: B's stream entry for this very write, arriving later, keeps it
        assert await _read(a, key) == b"old"


@pytest.mark.parametrize("when", ["while-reading", "newest-at-first-connect"])
async def test_a_foreign_stream_entry_never_stops_invalidations(
    make_engine: MakeEngine, redis_server: RedisServer, when: str
) -> None:
    b = await make_engine()
    stream = _reader(b).stream
    with redis_server.client() as r:
        if when == "newest-at-first-connect":
            await b.set("x", b"1", TTL)
            r.xadd(stream, {"foo": "bar"})
        a = await make_engine()
        keys = [f"k{i}" for i in range(20)]
        await _warm(a, b, keys)
        r.xadd(stream, {"foo": "bar"})
        for key in keys:
            await b.set(key, b"new", TTL)
    for key in keys:
        await _until(lambda key=key: _l1(a, key) is None, f"A to drop {key}")  # type: ignore[misc]
        assert await _read(a, key) == b"new"
    counters = _reader(a).counters
    assert counters["stream_malformed"] >= 1
    assert counters["invalidation_gaps"] == 0  # a foreign entry takes a number: no false gap
    assert a.health()["stream_reader"] == "connected"


async def test_a_failing_reader_is_logged_counted_and_resyncs(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await make_engine(), await make_engine()
    await _warm(a, b, ["cached"])
    stream = _reader(a)
    apply = stream._on_invalidate
    failures = [AssertionError("a bug in the reader")]

    def flaky(key: str, stamp: int) -> bool:
        if failures:
            raise failures.pop()
        return apply(key, stamp)

    monkeypatch.setattr(stream, "_on_invalidate", flaky)
    with caplog.at_level(logging.ERROR, logger="mtcache.coordinator"):
        await b.set("trigger", b"1", TTL)
        await _until(lambda: stream.counters["stream_reader_errors"] == 1, "the failure to be counted")
    assert "invalidation stream reader failed" in caplog.text
    assert stream.counters["invalidation_gaps"] >= 1
    assert _l1(a, "cached") is None  # it cannot vouch for L1 after a failure
    await _until(lambda: stream.connected, "the reader to resync")
    await b.set("later", b"1", TTL)
    assert await _read(a, "later") == b"1"
    await b.set("later", b"2", TTL)
    await _until(lambda: _l1(a, "later") is None, "a later write to arrive")


@pytest.mark.parametrize("trim_to", [0, 2])
async def test_a_stream_trimmed_while_the_reader_was_away_is_a_gap_at_resume(
    make_engine: MakeEngine, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, trim_to: int
) -> None:
    # review finding: the gap went unnoticed until a later write revealed it; the host served the
    # old value meanwhile
    a, b = await make_engine(), await make_engine()
    await _warm(a, b, ["stale"])
    cut = ReaderCut(a, monkeypatch)
    await _until(lambda: not _reader(a).connected, "A's reader to notice the cut")
    for i in range(5):
        await b.set("stale" if i == 0 else f"other{i}", b"new", TTL)
    with redis_server.client() as r:
        r.xtrim(_reader(a).stream, maxlen=trim_to, approximate=False)
    gaps = _reader(a).counters["invalidation_gaps"]
    cut.heal()
    await _until(lambda: _reader(a).connected, "A's reader to resume")
    assert _reader(a).counters["invalidation_gaps"] == gaps + 1  # found at resume, with no new write
    assert _l1(a, "stale") is None
    assert await _read(a, "stale") == b"new"


async def test_a_reader_resuming_a_continuous_stream_drops_nothing(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await make_engine(), await make_engine()
    await _warm(a, b, ["kept"])
    cut = ReaderCut(a, monkeypatch)
    await _until(lambda: not _reader(a).connected, "A's reader to notice the cut")
    await b.set("other", b"1", TTL)
    cut.heal()
    await _until(lambda: _reader(a).connected, "A's reader to resume")
    await _until(lambda: _reader(a).counters["invalidations_applied"] >= 2, "A to apply B's later write")
    assert _reader(a).counters["invalidation_gaps"] == 0
    assert _l1(a, "kept") == b"old"


async def test_a_own_write_a_failover_lost_is_dropped_from_l1_when_the_reader_resumes(
    make_engine: MakeEngine, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 17: a write the old master acknowledged and did not replicate is gone from the new master
    # with its stream entry; a writing host whose reader had not read that entry yet saw no gap, and
    # served the lost value from L1 while every other host served the older one
    a, b = await make_engine(), await make_engine()
    await _warm(a, b, ["k"])
    assert a.l2 is not None
    rkey = a.l2.key("k")
    with redis_server.client() as r:
        before = r.get(rkey)
        cut = ReaderCut(a, monkeypatch)
        await _until(lambda: not _reader(a).connected, "A's reader to notice the cut")
        await a.set("kept", b"mine", TTL)
        await a.set("k", b"lost", TTL)
        [(lost_id, fields)] = r.xrevrange(_reader(a).stream, count=1)
        assert fields[b"key"] == b"k"
        # the failover, as the new master has it: the older record, and the stream without the newest
        # entry (what replication had not passed on yet is the end of what the old master took)
        r.set(rkey, before)
        r.xdel(_reader(a).stream, lost_id)
    assert _l1(a, "k") == b"lost"
    cut.heal()
    await _until(lambda: _reader(a).counters["own_entries_lost"] == 1, "A to find its write missing")
    assert _l1(a, "k") is None
    assert await _read(a, "k") == await _read(b, "k") == b"old"
    assert _l1(a, "kept") == b"mine"  # its entry is there: still vouched for
    assert _reader(a).counters["invalidation_gaps"] == 0


async def test_a_fill_that_wins_over_a_concurrent_set_in_redis_drops_that_set_on_its_host(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # chaos checker, short-cluster seed 2: a fill is stamped when its lease is granted; a set made on
    # another host while the value was computed, stamped earlier (clocks differ, or the two stamps are
    # microseconds apart), lost to the fill in Redis; the fill's stream entry invalidated nothing, and the
    # setting host served its set from L1 for good while every other host served the fill
    a, b = await make_engine(), await make_engine()
    cut = ReaderCut(b, monkeypatch)  # B hears of A's set only after its fill (a busy reader)
    await _until(lambda: not _reader(b).connected, "B's reader to notice the cut")
    granted = await b.lease_miss(object(), "k", WAIT)
    assert granted[0] == Status.GRANTED
    a.clock = HybridClock(wall_us=lambda: time.time_ns() // 1_000 - 50_000)  # A's clock is 50 ms behind B's
    await a.set("k", b"set", TTL)
    reply = await b.fill("k", granted[1], b"computed", TTL)
    assert reply[0] == Status.OK and reply[2] is True  # stored in Redis: the newer stamp
    cut.heal()
    await _until(lambda: _l1(a, "k") != b"set", "A to drop its set, older than B's fill")
    assert await _read(a, "k") == await _read(b, "k") == b"computed"


async def test_a_host_whose_reader_connects_late_does_not_keep_values_promoted_before(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = await make_engine()
    await b.set("k", b"old", TTL)
    gate = asyncio.Event()
    resync = InvalidationStream._resync

    async def late_resync(self: InvalidationStream) -> None:
        await gate.wait()
        await resync(self)

    monkeypatch.setattr(InvalidationStream, "_resync", late_resync)
    a = await make_engine(connected=False)
    assert a.health()["stream_reader"] == "connecting"
    assert a.health()["mode"] == "degraded"
    assert await _read(a, "k") == b"old"  # promoted before A's reader ever connected
    await b.set("k", b"new", TTL)  # A cannot hear of this yet
    gate.set()
    await _until(lambda: _reader(a).connected, "A's reader to connect")
    assert await _read(a, "k") == b"new"


async def test_an_invalidation_older_than_what_l1_holds_is_ignored(make_engine: MakeEngine) -> None:
    a = await make_engine()
    await a.set("k", b"newest", TTL)
    stamp = a.local.stamp_of("k")
    assert stamp is not None
    assert a._invalidated("k", stamp - (1 << 32)) is False  # another host's older write
    assert _l1(a, "k") == b"newest"
    assert a._invalidated("k", stamp + (1 << 32)) is True
    assert _l1(a, "k") is None


async def test_sequence_numbers_need_no_key_that_maxmemory_may_evict(
    make_engine: MakeEngine, redis_server: RedisServer
) -> None:
    # review finding: under allkeys-lru Redis evicted the seq and epoch keys, and every eviction was a
    # "gap" that dropped every host's L1; the sequence now lives in the stream entries themselves
    a, b = await make_engine(), await make_engine()
    for i in range(5):
        await b.set(f"k{i}", b"v", TTL)
    await _until(lambda: _reader(a).counters["invalidations_applied"] >= 5, "A to apply B's writes")
    with redis_server.client() as r:
        keys = {k.decode() for k in r.keys("*")}
    prefix = _reader(a).stream
    assert not any(k.startswith(prefix) and k != prefix for k in keys)  # no side keys of the stream
    assert _reader(a).counters["invalidation_gaps"] == 0


async def test_an_evicting_redis_is_reported_in_health(
    make_engine: MakeEngine, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_server.client() as r:
        r.config_set("maxmemory-policy", "allkeys-lru")
    with caplog.at_level(logging.WARNING, logger="mtcache.coordinator"):
        a = await make_engine()
    health = a.health()
    assert health["redis_eviction_policy"] == "allkeys-lru"
    assert any("volatile" in warning for warning in health["warnings"])
    assert "allkeys-lru" in caplog.text
    assert isinstance(health["clock_skew_ms"], float)


async def test_an_idle_reader_keeps_its_connection_across_empty_blocks(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty block (XREAD's nil reply) is 'nothing came', not a lost Redis: the reader reads on, on
    the same connection, and neither resyncs nor logs a loss."""
    a = await make_engine()
    reader = _reader(a)
    conn = reader._conn
    heard = reader.last_ok
    await _until(lambda: reader.last_ok > heard, "a first empty block to return")
    heard = reader.last_ok
    await _until(lambda: reader.last_ok > heard, "a second empty block to return")
    assert reader.connected and reader._conn is conn and conn is not None
    assert "lost Redis" not in caplog.text
    assert a.health()["stream_reader"] == "connected"


async def test_a_closed_transport_under_the_reader_is_a_disconnect_not_a_gap(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the chaos checker (seed 14, a link reset): uvloop's RuntimeError for a closed transport
    made the reader 'fail', drop L1 and forget where it was. It is a lost link: the reader resumes where it
    left off and L1 keeps what it holds."""
    a = await make_engine()
    await a.set("mine", b"v", TTL)
    stream = _reader(a)
    xread, failed = stream._xread, []

    async def closed_once() -> Any:
        if not failed:
            failed.append(True)
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
        return await xread()

    monkeypatch.setattr(stream, "_xread", closed_once)
    await _until(lambda: failed and stream.connected, "the reader to fail once and resume")
    assert stream.counters["stream_reader_errors"] == 0 and stream.counters["invalidation_gaps"] == 0
    assert _l1(a, "mine") == b"v"


async def test_a_read_of_only_own_entries_pauses_the_reader_and_one_with_others_does_not(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host writing back to back would wake its reader once per write (issue 15): after a read that
    brought only its own entries the reader pauses; other hosts' entries are read after the pause, and a
    read that brought one of them is not followed by a pause."""
    a, b = await make_engine(), await make_engine()
    await _warm(a, b, ["k"])
    stream = _reader(a)
    await _until(lambda: stream.counters["invalidations_received"] == 1, "A to read B's entry for 'k'")
    held, paused_after = asyncio.Event(), []

    async def hold() -> None:
        paused_after.append(stream.last_id)
        await held.wait()

    monkeypatch.setattr(stream, "_after_own", hold)
    await a.set("mine", b"v", TTL)
    await _until(lambda: paused_after, "the reader to pause after reading its own entry")
    own_id = paused_after[0]
    await b.set("k", b"new", TTL)  # in the stream now, while A's reader pauses
    assert stream.last_id == own_id and _l1(a, "k") == b"old"
    held.set()
    await _until(lambda: _l1(a, "k") is None, "A to apply B's write after the pause")
    assert paused_after == [own_id]  # the read that brought B's entry was not followed by a pause
