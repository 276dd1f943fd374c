"""Redis Streams helpers (mtcache.client.streams) against a real redis-server.

Most checks run over both twins: the ``streams`` fixture gives a :class:`Streams`
behind coroutine wrappers or an :class:`AsyncStreams`, so one test body covers both.
Waits are on events, queues and blocked-client checks with deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import multiprocess
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from mtcache.client import _stream_plans as plans
from mtcache.client.streams import AsyncStreams, Streams, stream_key
from mtcache.errors import L2Error
from tests.redis_server import RedisServer, free_port

PREFIX = "mtcache:test:"
ID = re.compile(r"\d+-\d+")
WAIT = 15.0  # deadline of every wait on another thread, task or process
WAIT_MS = int(WAIT * 1000)


class _AsCoroutines:
    """A :class:`Streams` with the coroutine interface of :class:`AsyncStreams`, so one
    async test body checks both twins."""

    def __init__(self, streams: Streams) -> None:
        self._streams = streams

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._streams, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


@pytest.fixture(params=["sync", "async"])
async def streams(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Any]:
    if request.param == "sync":
        with Streams(redis_url, PREFIX) as sync_streams:
            yield _AsCoroutines(sync_streams)
    else:
        async with AsyncStreams(redis_url, PREFIX) as async_streams:
            yield async_streams


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client for looking behind the helpers (XLEN, XPENDING, CLIENT LIST)."""
    with redis_server.client() as client:
        yield client


def _key(name: str) -> str:
    return stream_key(PREFIX, name)


def _in_order(ids: list[str]) -> list[str]:
    return sorted(ids, key=lambda entry_id: tuple(map(int, entry_id.split("-"))))


def _ids(entries: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [entry_id for entry_id, _ in entries]


def _blocked_in(admin: redis.Redis, command: str) -> bool:
    return any(c["cmd"] == command and "b" in c["flags"] for c in admin.client_list())


def _wait_until_blocked(admin: redis.Redis, command: str) -> None:
    deadline = time.monotonic() + WAIT
    while not _blocked_in(admin, command):
        assert time.monotonic() < deadline, f"no client blocked in {command}"
        time.sleep(0.005)  # polling interval of a deadline-bounded wait


async def _await_blocked(admin: redis.Redis, command: str) -> None:
    deadline = time.monotonic() + WAIT
    while not _blocked_in(admin, command):
        assert time.monotonic() < deadline, f"no client blocked in {command}"
        await asyncio.sleep(0.005)  # polling interval of a deadline-bounded wait; lets the reader task run


# --- publishing and reading -----------------------------------------------------------------------------------


async def test_publish_returns_str_id_and_fields_round_trip(streams: Any, admin: redis.Redis) -> None:
    entry_id = await streams.publish_to_stream("ticks", {"sym": "ACME", "px": 101.5, "qty": 7, "blob": b"\x00\xff"})
    assert isinstance(entry_id, str)
    assert ID.fullmatch(entry_id)
    assert admin.xlen(_key("ticks")) == 1
    [(got_id, fields)] = await streams.read_stream_latest("ticks", decode=False)
    assert (got_id, fields) == (entry_id, {"sym": b"ACME", "px": b"101.5", "qty": b"7", "blob": b"\x00\xff"})
    with pytest.raises(ValueError, match="'blob' is not UTF-8"):
        await streams.read_stream_latest("ticks")
    text_id = await streams.publish_to_stream("ticks", {"sym": "ACME", "px": 102.0})
    assert await streams.read_stream_latest("ticks", 1) == [(text_id, {"sym": "ACME", "px": "102.0"})]


async def test_raw_names_read_streams_written_by_other_programs(streams: Any, admin: redis.Redis) -> None:
    foreign = admin.xadd("other-app:events", {"kind": "login"}).decode()
    assert await streams.read_stream_latest("other-app:events", raw=True) == [(foreign, {"kind": "login"})]
    assert await streams.read_stream_latest("other-app:events") == []  # the prefixed key is another stream
    own = await streams.publish_to_stream("other-app:events", {"kind": "logout"}, raw=True)
    assert _ids(await streams.read_stream("other-app:events", foreign, raw=True)) == [own]


@pytest.mark.parametrize("approximate", [True, False], ids=["approximate", "exact"])
async def test_trimming_keeps_about_maxlen_entries(streams: Any, admin: redis.Redis, approximate: bool) -> None:
    ids = [await streams.publish_to_stream("trim", {"n": n}, maxlen=1000, approximate=approximate) for n in range(5000)]
    length = admin.xlen(_key("trim"))
    if approximate:
        # MAXLEN ~ only drops whole radix-tree nodes, and only while what stays is >= maxlen:
        # what is left over is less than one node, at most stream-node-max-entries (100 by default).
        node = int(admin.config_get("stream-node-max-entries")["stream-node-max-entries"])
        assert 1000 <= length < 1000 + node
    else:
        assert length == 1000
    assert _ids(await streams.read_stream_latest("trim", 1)) == [ids[-1]]
    oldest = admin.xrange(_key("trim"), count=1)[0][0].decode()
    assert oldest == ids[-length]  # trimming removes the oldest entries, and only those


async def test_latest_is_newest_first_and_read_after_id_oldest_first(streams: Any) -> None:
    ids = [await streams.publish_to_stream("seq", {"n": n}) for n in range(20)]
    latest = await streams.read_stream_latest("seq", 5)
    assert _ids(latest) == ids[:-6:-1]
    assert [fields["n"] for _, fields in latest] == ["19", "18", "17", "16", "15"]
    assert _ids(await streams.read_stream("seq", ids[9], count=5)) == ids[10:15]
    assert _ids(await streams.read_stream("seq", ids[14])) == ids[15:]
    assert _ids(await streams.read_stream("seq", "0", count=3)) == ids[:3]
    assert await streams.read_stream("seq", ids[-1]) == []
    assert await streams.read_stream("seq") == []  # "$" without blocking: nothing is newer than now
    assert await streams.read_stream("missing", "0") == []
    assert await streams.read_stream_latest("missing") == []


async def test_blocking_read_without_publish_times_out_empty(streams: Any) -> None:
    last = await streams.publish_to_stream("quiet", {"n": 0})
    assert await streams.read_stream("quiet", block_ms=150) == []
    assert await streams.read_stream("quiet", last, block_ms=150) == []


@pytest.mark.parametrize("flavor", ["sync", "async"])
async def test_wait_longer_than_socket_timeout_is_not_a_timeout(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, flavor: str
) -> None:
    # chunks of 50 ms: the blocking socket timeout is 0.05 + 0.05 + 0.5 s (slack for Redis's timer),
    # so a 700 ms wait needs many chunks, the "$" pinned across them, and never trips it
    monkeypatch.setattr(plans, "BLOCK_CHUNK_MS", 50)
    if flavor == "sync":
        with Streams(redis_url, PREFIX, timeout=0.05) as s:
            s.publish_to_stream("slow", {"n": 0})
            assert s.read_stream("slow", "$", block_ms=700) == []
    else:
        async with AsyncStreams(redis_url, PREFIX, timeout=0.05) as a:
            await a.publish_to_stream("slow", {"n": 0})
            assert await a.read_stream("slow", "$", block_ms=700) == []


def test_chunked_wait_from_dollar_returns_what_arrives_between_chunks(
    redis_url: str, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plans, "BLOCK_CHUNK_MS", 20)
    with Streams(redis_url, PREFIX) as s:
        s.publish_to_stream("chunks", {"old": 1})
        results: queue.Queue[list[Any]] = queue.Queue()
        reader = threading.Thread(target=lambda: results.put(s.read_stream("chunks", block_ms=WAIT_MS)), daemon=True)
        reader.start()
        _wait_until_blocked(admin, "xread")  # the "$" is pinned before the first chunk blocks
        published = [s.publish_to_stream("chunks", {"new": 1})]
        got = results.get(timeout=WAIT)
        reader.join(WAIT)
        assert _ids(got) == published


def _blocking_reader(url: str, stream: str, ready: Any, results: Any) -> None:
    """Child process: announce, then block on "$" until an entry arrives."""
    with Streams(url, PREFIX) as s:
        ready.set()
        results.put(s.read_stream(stream, "$", block_ms=60_000))


def test_blocking_read_in_another_process_is_woken_by_publish(redis_url: str) -> None:
    ctx = multiprocess.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_blocking_reader, args=(redis_url, "wake", ready, results))
    proc.start()
    try:
        assert ready.wait(WAIT), "reader process did not start"
        published: list[str] = []
        deadline = time.monotonic() + WAIT
        with Streams(redis_url, PREFIX) as s:
            # the reader may not be blocking yet when a publish lands: publish again until it reports
            while True:
                published.append(s.publish_to_stream("wake", {"n": len(published)}))
                with contextlib.suppress(queue.Empty):
                    got = results.get(timeout=0.05)
                    break
                assert time.monotonic() < deadline, f"reader never woke (exit code {proc.exitcode})"
        proc.join(WAIT)
        assert proc.exitcode == 0
    finally:
        proc.kill()
        proc.join(WAIT)
        results.close()
    ids = _ids(got)
    assert ids, "the blocking read returned nothing"
    first = published.index(ids[0])
    assert ids == published[first : first + len(ids)]  # only entries published after it blocked, in order
    assert got[0][1] == {"n": str(first)}


def test_blocking_read_in_thread_does_not_delay_other_calls(redis_url: str, admin: redis.Redis) -> None:
    with Streams(redis_url, PREFIX) as s:
        returned = threading.Event()
        results: list[list[Any]] = []

        def reader() -> None:
            # long enough that the 50 calls below cannot outlast it; a publish ends it early
            results.append(s.read_stream("quiet", "$", block_ms=WAIT_MS))
            returned.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        _wait_until_blocked(admin, "xread")
        for n in range(25):
            s.publish_to_stream("busy", {"n": n})
            assert len(s.read_stream_latest("busy", 1)) == 1
        assert not returned.is_set(), "the other calls waited for the blocking read"
        wake = s.publish_to_stream("quiet", {"wake": 1})
        assert returned.wait(WAIT)
        thread.join(WAIT)
    assert _ids(results[0]) == [wake]


async def test_blocking_read_in_task_does_not_delay_other_calls(redis_url: str, admin: redis.Redis) -> None:
    async with AsyncStreams(redis_url, PREFIX) as a:
        reader = asyncio.create_task(a.read_stream("quiet", "$", block_ms=WAIT_MS))
        await _await_blocked(admin, "xread")
        for n in range(25):
            await a.publish_to_stream("busy", {"n": n})
            assert len(await a.read_stream_latest("busy", 1)) == 1
        assert not reader.done(), "the other calls waited for the blocking read"
        wake = await a.publish_to_stream("quiet", {"wake": 1})
        assert _ids(await asyncio.wait_for(reader, WAIT)) == [wake]


# --- consumer groups ------------------------------------------------------------------------------------------


async def test_create_consumer_group_is_idempotent(streams: Any, admin: redis.Redis) -> None:
    assert await streams.create_consumer_group("orders", "billing") is True
    assert await streams.create_consumer_group("orders", "billing") is False
    assert [g["name"] for g in admin.xinfo_groups(_key("orders"))] == [b"billing"]
    with pytest.raises(L2Error, match="requires the key to exist"):
        await streams.create_consumer_group("absent", "billing", mkstream=False)
    with pytest.raises(L2Error, match="NOGROUP"):
        await streams.read_group("orders", "nobody", "c1")


async def test_two_consumers_share_a_group_without_overlap(streams: Any, admin: redis.Redis) -> None:
    ids = [await streams.publish_to_stream("jobs", {"n": n}) for n in range(30)]
    await streams.create_consumer_group("jobs", "workers", start_id="0")
    seen: dict[str, list[str]] = {"c1": [], "c2": []}
    idle: set[str] = set()
    while len(idle) < 2:
        for consumer, got in seen.items():
            batch = _ids(await streams.read_group("jobs", "workers", consumer, count=4))
            got += batch
            if not batch:
                idle.add(consumer)
    assert seen["c1"] and seen["c2"]
    assert not set(seen["c1"]) & set(seen["c2"])
    assert _in_order(seen["c1"] + seen["c2"]) == ids
    assert await streams.ack("jobs", "workers", *seen["c1"]) == len(seen["c1"])
    assert await streams.ack("jobs", "workers", *seen["c2"]) == len(seen["c2"])
    assert await streams.ack("jobs", "workers", *ids) == 0
    assert await streams.ack("jobs", "workers") == 0
    assert admin.xpending(_key("jobs"), "workers")["pending"] == 0


def test_concurrent_consumers_in_threads_split_every_entry_once(redis_url: str) -> None:
    with Streams(redis_url, PREFIX) as s:
        ids = [s.publish_to_stream("jobs", {"n": n}) for n in range(300)]
        s.create_consumer_group("jobs", "workers", start_id="0")
        got: dict[str, list[str]] = {}

        def consume(consumer: str) -> None:
            mine = got.setdefault(consumer, [])
            while batch := _ids(s.read_group("jobs", "workers", consumer, count=7)):
                mine += batch
                assert s.ack("jobs", "workers", *batch) == len(batch)

        threads = [threading.Thread(target=consume, args=(f"c{n}",)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
    all_got = got["c0"] + got["c1"]
    assert len(all_got) == len(set(all_got)) == 300
    assert _in_order(all_got) == ids


async def test_claim_stale_takes_over_idle_entries(streams: Any, admin: redis.Redis) -> None:
    ids = [await streams.publish_to_stream("jobs", {"n": n}) for n in range(5)]
    await streams.create_consumer_group("jobs", "workers", start_id="0")
    assert _ids(await streams.read_group("jobs", "workers", "a", count=10)) == ids
    assert await streams.claim_stale("jobs", "workers", "b", min_idle_ms=3_600_000) == []
    admin.xdel(_key("jobs"), ids[0])  # gone while pending: nothing left to claim for it
    first = await streams.claim_stale("jobs", "workers", "b", min_idle_ms=0, count=3)
    assert _ids(first) == ids[1:4]  # count respected, oldest first, the deleted entry left out
    assert first[0][1] == {"n": "1"}
    everything = await streams.claim_stale("jobs", "workers", "b", min_idle_ms=0, count=10)
    assert _ids(everything) == ids[1:]  # idle for 0 ms includes b's own, just claimed
    pending = admin.xpending_range(_key("jobs"), "workers", "-", "+", 10)
    assert {(p["message_id"].decode(), p["consumer"]) for p in pending} == {(i, b"b") for i in ids[1:]}
    assert await streams.ack("jobs", "workers", *ids[1:]) == 4


def _doomed_consumer(url: str, stream: str, group: str, results: Any, hold: Any) -> None:
    """Child process: read a share of the group, report it, then hang until killed (never acks)."""
    with Streams(url, PREFIX) as s:
        results.put(_ids(s.read_group(stream, group, "doomed", count=10)))
        hold.wait(60)


def test_entries_of_a_killed_consumer_are_claimed_by_another(redis_url: str, admin: redis.Redis) -> None:
    with Streams(redis_url, PREFIX) as s:
        ids = [s.publish_to_stream("jobs", {"n": n}) for n in range(25)]
        s.create_consumer_group("jobs", "workers", start_id="0")
        ctx = multiprocess.get_context("spawn")
        results, hold = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=_doomed_consumer, args=(redis_url, "jobs", "workers", results, hold))
        proc.start()
        try:
            doomed = results.get(timeout=WAIT)
        finally:
            proc.kill()
            proc.join(WAIT)
            results.close()
        assert proc.exitcode == -signal.SIGKILL
        assert len(doomed) == 10

        survivor = _ids(s.read_group("jobs", "workers", "survivor", count=100))
        assert s.ack("jobs", "workers", *survivor) == len(survivor) == 15
        claimed: list[str] = []
        deadline = time.monotonic() + WAIT
        while len(claimed) < len(doomed):  # they become claimable once idle for 20 ms
            claimed += _ids(s.claim_stale("jobs", "workers", "survivor", min_idle_ms=20, count=100))
            assert time.monotonic() < deadline, f"claimed only {claimed}"
        assert claimed == doomed
        assert s.ack("jobs", "workers", *claimed) == 10
    everything = survivor + claimed
    assert len(everything) == len(set(everything)) == 25
    assert _in_order(everything) == ids
    assert admin.xpending(_key("jobs"), "workers")["pending"] == 0


# --- subscribe ------------------------------------------------------------------------------------------------


def test_subscribe_from_dollar_yields_only_new_entries(redis_url: str, admin: redis.Redis) -> None:
    with Streams(redis_url, PREFIX) as s:
        s.publish_to_stream("news", {"old": 1})
        got: queue.Queue[Any] = queue.Queue()

        def follow() -> None:
            with contextlib.closing(s.subscribe("news")) as entries:
                got.put(next(entries))

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        _wait_until_blocked(admin, "xread")
        new = s.publish_to_stream("news", {"new": 1})
        assert got.get(timeout=WAIT) == (new, {"new": "1"})
        thread.join(WAIT)
        assert not thread.is_alive()


def test_group_subscribe_acks_only_after_the_loop_body_returns(redis_url: str, admin: redis.Redis) -> None:
    with Streams(redis_url, PREFIX) as s:
        ids = [s.publish_to_stream("jobs", {"n": n}) for n in range(3)]
        handled = []
        with pytest.raises(RuntimeError, match="handler failed"):
            for entry_id, _ in s.subscribe("jobs", last_id="0", group="g", consumer="c"):
                if entry_id == ids[1]:
                    raise RuntimeError("handler failed")
                handled.append(entry_id)
        assert handled == ids[:1]
        pending = [p["message_id"].decode() for p in admin.xpending_range(_key("jobs"), "g", "-", "+", 10)]
        assert pending == ids[1:]  # the failed entry and the one after it, delivered but never handled

        # the same consumer starts again: its pending entries first, each acked at the next next()
        with contextlib.closing(s.subscribe("jobs", group="g", consumer="c")) as again:
            assert next(again)[0] == ids[1]
            assert next(again)[0] == ids[2]
        pending = [p["message_id"].decode() for p in admin.xpending_range(_key("jobs"), "g", "-", "+", 10)]
        assert pending == ids[2:]  # the loop stopped after the last one: not acked


def test_subscribe_checks_arguments_before_iterating(redis_url: str) -> None:
    with Streams(redis_url, PREFIX) as s:
        with pytest.raises(ValueError, match="both group and consumer"):
            s.subscribe("jobs", group="g")
        with pytest.raises(ValueError, match="last_id"):
            s.subscribe("jobs", last_id="yesterday")


async def test_subscribe_fails_on_errors_reconnecting_cannot_cure(streams: Any, admin: redis.Redis) -> None:
    admin.set(_key("not-a-stream"), "x")
    follower = streams.subscribe("not-a-stream", last_id="0")
    if isinstance(streams, AsyncStreams):
        async with contextlib.aclosing(follower) as entries:
            with pytest.raises(L2Error, match="WRONGTYPE"):
                await anext(entries)
    else:
        with contextlib.closing(await follower) as entries, pytest.raises(L2Error, match="WRONGTYPE"):
            next(entries)


def _pending(admin: redis.Redis, name: str, group: str) -> list[str]:
    return [p["message_id"].decode() for p in admin.xpending_range(_key(name), group, "-", "+", 100)]


@pytest.mark.parametrize("group", [None, "g"], ids=["plain", "group"])
def test_subscribe_in_thread_survives_redis_restart(redis_server_aof: RedisServer, group: str | None) -> None:
    consumer = "c1" if group else None
    with Streams(redis_server_aof.url, PREFIX) as s:
        before = [s.publish_to_stream("feed", {"n": n}) for n in range(5)]
        got: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

        def follow() -> None:
            with contextlib.closing(s.subscribe("feed", last_id="0", group=group, consumer=consumer)) as entries:
                for entry in entries:
                    got.put(entry)
                    if "stop" in entry[1]:
                        return

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        first = [got.get(timeout=WAIT)[0] for _ in before]
        redis_server_aof.restart()
        after = [s.publish_to_stream("feed", {"n": n}) for n in range(5, 10)]
        rest = [got.get(timeout=WAIT)[0] for _ in after]
        stop = s.publish_to_stream("feed", {"stop": 1})
        assert got.get(timeout=WAIT)[0] == stop
        thread.join(WAIT)
        assert not thread.is_alive()
    assert first + rest == before + after  # every entry once, in order, across the restart
    assert got.empty()
    if group:
        with redis_server_aof.client() as admin:
            assert _pending(admin, "feed", group) == [stop]  # all acked but the one the loop stopped after


@pytest.mark.parametrize("group", [None, "g"], ids=["plain", "group"])
async def test_subscribe_in_task_survives_redis_restart(redis_server_aof: RedisServer, group: str | None) -> None:
    consumer = "c1" if group else None
    async with AsyncStreams(redis_server_aof.url, PREFIX) as a:
        before = [await a.publish_to_stream("feed", {"n": n}) for n in range(5)]
        got: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

        async def follow() -> None:
            async with contextlib.aclosing(a.subscribe("feed", last_id="0", group=group, consumer=consumer)) as entries:
                async for entry in entries:
                    await got.put(entry)
                    if "stop" in entry[1]:
                        return

        task = asyncio.create_task(follow())
        first = [(await asyncio.wait_for(got.get(), WAIT))[0] for _ in before]
        redis_server_aof.restart()
        after = [await a.publish_to_stream("feed", {"n": n}) for n in range(5, 10)]
        rest = [(await asyncio.wait_for(got.get(), WAIT))[0] for _ in after]
        stop = await a.publish_to_stream("feed", {"stop": 1})
        assert (await asyncio.wait_for(got.get(), WAIT))[0] == stop
        await asyncio.wait_for(task, WAIT)
    assert first + rest == before + after
    assert got.empty()
    if group:
        with redis_server_aof.client() as admin:
            assert _pending(admin, "feed", group) == [stop]


# --- the subscribe plans, driven by hand: every reconnect path, deterministically ----------------------------


def test_follow_plan_resumes_after_its_last_entry_and_backs_off() -> None:
    plan = plans._follow("k", "$", True)
    assert plan.send(None).args == ("XREVRANGE", "k", "+", "-", "COUNT", 1)  # "$" pinned once
    read = plan.send([[b"5-0", [b"a", b"x"]]])
    assert read.args[-2:] == ("k", "5-0")
    assert read.blocking
    assert plan.send(None).args[-1] == "5-0"  # a block that timed out: read again from the same place
    assert plan.send([[b"k", [[b"6-0", [b"a", b"y"]]]]]) == plans._Emit(("6-0", {"a": "y"}))
    assert plan.send(None).args[-1] == "6-0"
    pauses = []
    for _ in range(7):
        pause = plan.throw(RedisConnectionError("gone"))
        pauses.append(pause.seconds)
        assert plan.send(None).args[-1] == "6-0"  # after the pause: resume after the last entry yielded
    assert pauses == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert plan.send({b"k": [[b"7-0", [b"a", b"z"]]]}) == plans._Emit(("7-0", {"a": "z"}))  # RESP3
    plan.send(None)
    assert plan.throw(RedisConnectionError("gone")).seconds == 0.05  # a success started the back-off over
    plan.send(None)
    with pytest.raises(redis.AuthenticationError):  # reconnecting cannot cure wrong credentials
        plan.throw(redis.AuthenticationError("WRONGPASS"))


def test_group_follow_plan_acks_after_the_body_and_rereads_pending_after_reconnect() -> None:
    plan = plans._follow_group("k", "g", "c", "0", True)
    emit = plans._Emit
    assert plan.send(None).args == ("XGROUP", "CREATE", "k", "g", "0", "MKSTREAM")
    pending = plan.send(b"OK")
    assert pending.args == ("XREADGROUP", "GROUP", "g", "c", "COUNT", 100, "STREAMS", "k", "0")
    assert not pending.blocking
    new = plan.send([[b"k", []]])  # nothing pending: on to new entries
    assert new.args[-1] == ">"
    assert new.blocking
    assert plan.send([[b"k", [[b"1-0", [b"a", b"1"]], [b"2-0", [b"a", b"2"]]]]]) == emit(("1-0", {"a": "1"}))
    assert plan.send(None).args == ("XACK", "k", "g", "1-0")  # the loop body returned
    assert plan.send(1) == emit(("2-0", {"a": "2"}))
    assert plan.send(None).args == ("XACK", "k", "g", "2-0")
    assert plan.throw(RedisConnectionError("gone")).seconds == 0.05  # the ack's reply was lost
    assert plan.send(None).args == ("XACK", "k", "g", "2-0")  # acked first after reconnecting
    assert plan.throw(RedisConnectionError("gone")).seconds == 0.1
    assert plan.send(None).args == ("XACK", "k", "g", "2-0")
    assert plan.send(1).args[:2] == ("XGROUP", "CREATE")
    assert plan.throw(ResponseError("BUSYGROUP Consumer Group name already exists")).args[-1] == "0"
    # its pending entries again: one deleted meanwhile (acked, not yielded), one delivered but not yielded
    deleted_ack = plan.send({b"k": [[b"3-0", None], [b"4-0", [b"a", b"4"]]]})
    assert deleted_ack.args == ("XACK", "k", "g", "3-0")
    assert plan.send(1) == emit(("4-0", {"a": "4"}))
    assert plan.send(None).args == ("XACK", "k", "g", "4-0")
    assert plan.send(1).args[-1] == "4-0"  # pending, after the last one seen
    assert plan.send(None).args[-1] == ">"
    assert plan.throw(ResponseError("NOGROUP No such key")).seconds == 0.05  # the stream was deleted
    assert plan.send(None).args[:2] == ("XGROUP", "CREATE")  # so the group is created again
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        plan.throw(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))


# --- bad input and Redis failures -----------------------------------------------------------------------------


@pytest.fixture(params=["sync", "async"])
async def offline(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Streams pointing at a port nothing listens on, with a password in the URL."""
    url = f"redis://app:s3cret@127.0.0.1:{free_port()}/0"
    if request.param == "sync":
        with Streams(url, PREFIX, timeout=0.5) as sync_streams:
            yield _AsCoroutines(sync_streams)
    else:
        async with AsyncStreams(url, PREFIX, timeout=0.5) as async_streams:
            yield async_streams


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"ok": "x", "flag": True}, "'flag' has a value of type bool"),
        ({"none": None}, "'none' has a value of type NoneType"),
        ({"list": [1, 2]}, "'list' has a value of type list"),
        ({"ba": bytearray(b"x")}, "'ba' has a value of type bytearray"),
        ({5: "x"}, "field names must be str, got int"),
        ([("a", "b")], "fields must be a mapping"),
    ],
)
async def test_bad_fields_raise_type_error_naming_the_field(offline: Any, fields: Any, named: str) -> None:
    with pytest.raises(TypeError, match=re.escape(named)):
        await offline.publish_to_stream("s", fields)


async def test_bad_arguments_raise_value_or_type_error(offline: Any) -> None:
    with pytest.raises(ValueError, match="fields must not be empty"):
        await offline.publish_to_stream("s", {})
    for maxlen in (0, -1):
        with pytest.raises(ValueError, match="maxlen"):
            await offline.publish_to_stream("s", {"a": 1}, maxlen=maxlen)
    for maxlen in (True, 10.0, "10"):
        with pytest.raises(TypeError, match="maxlen"):
            await offline.publish_to_stream("s", {"a": 1}, maxlen=maxlen)
    with pytest.raises(ValueError, match="count"):
        await offline.read_stream_latest("s", 0)
    with pytest.raises(ValueError, match="block forever"):
        await offline.read_stream("s", "0", block_ms=0)
    with pytest.raises(ValueError, match="last_id"):
        await offline.read_stream("s", "latest")
    with pytest.raises(ValueError, match="start_id"):
        await offline.create_consumer_group("s", "g", start_id="0-x")
    with pytest.raises(ValueError, match="ack id"):
        await offline.ack("s", "g", "1-1", ">")
    with pytest.raises(ValueError, match="min_idle_ms"):
        await offline.claim_stale("s", "g", "c", min_idle_ms=-1)
    with pytest.raises(ValueError, match="stream must not be empty"):
        await offline.read_stream_latest("")
    with pytest.raises(TypeError, match="stream must be a str"):
        await offline.read_stream_latest(b"s")
    with pytest.raises(TypeError, match="consumer must be a str"):
        await offline.read_group("s", "g", None)


async def test_redis_errors_become_l2_error_with_redacted_url(offline: Any) -> None:
    with pytest.raises(L2Error) as caught:
        await offline.publish_to_stream("s", {"a": 1})
    assert isinstance(caught.value.__cause__, RedisConnectionError)
    assert "s3cret" not in str(caught.value)
    assert "app:***@127.0.0.1" in str(caught.value)


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Streams("redis://127.0.0.1:1/0", PREFIX, timeout=0)
    with pytest.raises(TypeError, match="prefix"):
        AsyncStreams("redis://127.0.0.1:1/0", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scheme"):
        Streams("http://127.0.0.1:1/0", PREFIX)
