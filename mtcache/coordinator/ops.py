"""The coordinator's batches and small operations: GET_MANY, SET_MANY, DELETE_MANY, ADD, INCR, TOUCH.

Each is built on :class:`~mtcache.coordinator.cache.CacheEngine` and keeps its rules: every write is
stamped, goes through the one write queue (so a batch is one pipelined round trip, and writes of a key
reach Redis in the order they reached L1), moves the key's version with L1, and tells the other hosts.

- A batch read answers from L1 what it can and reads the rest from Redis with one ``MGET``.
- ADD is decided in Redis by a script (no live value there: store), so one ADD of a key wins across
  hosts; while Redis is unreachable it is decided by this host's L1 and backlogged like a set (then it
  is atomic on this host only, as leases are).
- INCR runs in Redis (a script adds to the stored msgpack integer), so counters are exact across hosts;
  with Redis unreachable it is refused (a counter kept by one host alone would be wrong everywhere else).
  L1 lets the counter go (its version moves), so the next read takes it from Redis.
- TOUCH gives a live value a new expiry where it lives (Redis, and this host's L1).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from mtcache.coordinator.backlog import Write
from mtcache.coordinator.stamps import parse_stamp
from mtcache.errors import L2Error
from mtcache.protocol import Status

if TYPE_CHECKING:
    from mtcache.coordinator.cache import CacheEngine

__all__ = ["add", "delete_many", "get_many", "incr", "set_many", "touch"]

Reply = list[Any]
#: INCR attempts when a record as new as the chosen stamp is in Redis (another host wrote it meanwhile,
#: or its clock is ahead: each attempt moves this host's clock past what it met)
INCR_ATTEMPTS = 16


async def get_many(engine: CacheEngine, keys: list[str]) -> Reply:
    """``[OK, [[key, value, version, ttl], ...]]`` for the keys found (each once), from L1, else from
    Redis in one round trip (promoting what it finds)."""
    hits: list[list[Any]] = []
    missing: list[str] = []
    for key in dict.fromkeys(keys):
        reply = engine.get_l1(key)
        if reply is not None:
            hits.append([key, *reply[1:4]])
        else:
            missing.append(key)
    if missing:
        for key, reply in zip(missing, await engine.read_l2_many(missing), strict=True):
            if reply is not None:
                hits.append([key, *reply[1:4]])
    return [Status.OK, hits]


async def set_many(engine: CacheEngine, items: list[list[Any]]) -> Reply:
    """``[OK, [[version, kept], ...]]``: each ``[key, value, ttl, tags]`` set in order (one pipeline)."""
    replies = await asyncio.gather(*(engine.set(key, value, ttl, tags) for key, value, ttl, tags in items))
    return [Status.OK, [reply[1:3] for reply in replies]]


async def delete_many(engine: CacheEngine, keys: list[str]) -> Reply:
    """``[OK, n]``: each key deleted (one pipeline); ``n`` of them held a value on some tier."""
    replies = await asyncio.gather(*(engine.delete(key) for key in dict.fromkeys(keys)))
    return [Status.OK, sum(1 for reply in replies if reply[1])]


def _put_if_newest(engine: CacheEngine, key: str, value: bytes, ttl: float, stamp: int, tags: tuple[str, ...]) -> int:
    """Put into L1 unless it holds a newer write of ``key`` (one made here after this one began); the
    key's version."""
    held = engine.local.stamp_of(key)
    if held is None or held < stamp:
        return engine.local.put(key, value, ttl, stamp, tags=tags)
    return engine.local.version_of(key)


async def add(
    engine: CacheEngine, key: str, value: bytes, ttl: float | None, tags: list[str] | tuple[str, ...] = ()
) -> Reply:
    """``[OK, stored, version]``: ``value`` stored only if ``key`` has no live value (see the module
    docstring)."""
    engine.counters["adds"] += 1
    if engine.get_l1(key) is not None:
        return [Status.OK, False, engine.local.version_of(key)]
    l1_ttl, l2_ttl = engine.lifetimes(ttl)
    stamp = engine.clock.now()
    writes, l2 = engine.writes, engine.l2
    if writes is not None and l2 is not None and engine.l2_up:

        def build(pipe: Any) -> None:
            l2.queue_add(pipe, key, value, l2_ttl, stamp, tags)
            engine.publish(pipe, "set", key, stamp)

        try:
            stored = int((await writes.write(key, build))[0]) == 1
        except L2Error as exc:
            engine.l2_failed(exc)
        else:
            version = (_put_if_newest(engine, key, value, l1_ttl, stamp, tuple(tags)) if stored
                       else engine.local.version_of(key))
            return [Status.OK, stored, version]
    # Redis unreachable: this host decides, and the write waits in the backlog like a set
    if engine.get_l1(key) is not None:
        return [Status.OK, False, engine.local.version_of(key)]
    version = engine.local.put(key, value, l1_ttl, stamp, tags=tuple(tags))
    engine.backlog.add(Write(key, value, l2_ttl, stamp, tags=tuple(tags)))
    return [Status.OK, True, version]


async def incr(engine: CacheEngine, key: str, delta: int) -> Reply:
    """``[OK, value, version]``, the counter after adding ``delta`` in Redis; ``[REFUSED, kind,
    message]`` if the value is not an integer (``type``), the result leaves +-2**53 (``range``), or
    Redis is unreachable (``l2``)."""
    engine.counters["incrs"] += 1
    writes, l2 = engine.writes, engine.l2
    if writes is None or l2 is None or not engine.l2_up:
        return [Status.REFUSED, "l2", f"incr of {key!r} needs Redis, which does not answer"]
    for _ in range(INCR_ATTEMPTS):
        stamped: list[int] = []

        def build(pipe: Any, stamped: list[int] = stamped) -> None:
            # stamped as its batch leaves (not as it was queued), so that a busy counter written by
            # several hosts rarely meets a write newer than its stamp
            stamped.append(engine.clock.now())
            l2.queue_incr(pipe, key, delta, stamped[0])
            engine.publish(pipe, "set", key, stamped[0])

        engine.incrs_in_flight[key] += 1
        try:
            result = (await writes.write(key, build))[0]
        except L2Error as exc:
            engine.l2_failed(exc)
            return [Status.REFUSED, "l2", f"incr of {key!r} failed: {exc}"]
        finally:
            engine.incrs_in_flight[key] -= 1
            if not engine.incrs_in_flight[key]:
                del engine.incrs_in_flight[key]
        code = int(result[0])
        if code == 1:
            # L1 lets the counter go (its version moves): the next read takes it from Redis with its tags
            before = engine.local.version_of(key)
            engine.local.drop_older(key, stamped[0] + 1)
            engine.benign_moves[engine.table.slot(key)] += engine.local.version_of(key) - before
            return [Status.OK, int(result[1]), engine.local.version_of(key)]
        if code in (0, -1):  # a newer record, or floor, is there: move this host's clock past it
            engine.clock.observe(parse_stamp(result[1]))
            continue
        if code == -2:
            return [Status.REFUSED, "type", f"the value of {key!r} is not an integer"]
        return [Status.REFUSED, "range", f"incr of {key!r} by {delta} leaves the range of +-2**53"]
    return [Status.REFUSED, "l2", f"incr of {key!r} kept meeting newer writes of it"]


async def touch(engine: CacheEngine, key: str, ttl: float | None) -> Reply:
    """``[OK, touched]``: a live value of ``key`` lives ``ttl`` from now (in Redis and this host's L1)."""
    engine.counters["touches"] += 1
    l1_ttl, l2_ttl = engine.lifetimes(ttl)
    touched = False
    writes, l2 = engine.writes, engine.l2
    if writes is not None and l2 is not None and engine.l2_up:
        try:
            touched = int((await writes.write(key, lambda pipe: l2.queue_touch(pipe, key, l2_ttl)))[0]) == 1
        except L2Error as exc:
            engine.l2_failed(exc)
    held = engine.local.peek(key)
    if held is not None:
        value, _, stamp = held
        engine.local.put(key, value, l1_ttl, stamp, tags=engine.local.tags.tags_of(key))
        touched = True
    return [Status.OK, touched]
