"""The coordinator's cache logic: L1, L2, versions and leases, without sockets.

Every method returns the reply payload of the protocol (``[status, *payload]``,
see :mod:`mtcache.protocol`); the server adds the request id and writes it.
User values are bytes here: the coordinator never decodes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from mtcache.config import Settings
from mtcache.coordinator.backlog import WriteBacklog
from mtcache.coordinator.invalidation import InvalidationStream, new_origin
from mtcache.coordinator.l2 import Envelope, L2Tier
from mtcache.coordinator.leases import DistributedLeases, LeaseRegistry
from mtcache.coordinator.store import L1Store
from mtcache.coordinator.writes import WriteQueue
from mtcache.errors import L2Error
from mtcache.mirror import MirrorWriter
from mtcache.protocol import Status
from mtcache.shm import VersionTable

__all__ = ["CacheEngine"]

log = logging.getLogger("mtcache.coordinator")
#: Expired entries removed per sweep: a near copy may outlive its value's TTL until
#: the sweep that removes the entry bumps its version.
SWEEP_LIMIT = 4096
T = TypeVar("T")
Reply = list[Any]


class CacheEngine:
    """L1 → L2 read-through, write-through sets, stampede leases, version bumps.

    ``l2`` is None when the coordinator runs without Redis. When Redis fails, the
    engine marks it down, serves from L1 alone (``mode`` = degraded) and pings it
    in the background until it answers again.
    """

    def __init__(
        self, settings: Settings, table: VersionTable, l2: L2Tier | None, mirror: MirrorWriter | None = None
    ) -> None:
        self.settings = settings
        self.table = table
        self.mirror = mirror
        self.l2 = l2
        self.l2_up = False
        self.store = L1Store(
            capacity=settings.l1_capacity,
            max_bytes=settings.l1_max_bytes,
            default_ttl=settings.l1_ttl,
            on_remove=self._on_remove,
        )
        self.leases = LeaseRegistry(settings.lease_ttl, self.version_of, on_end=self._lease_ended)
        self.origin = new_origin()
        self.inval: InvalidationStream | None = None
        self.dist: DistributedLeases | None = None
        if l2 is not None:
            self.inval = InvalidationStream(
                l2.redis,
                l2.prefix,
                reader_url=settings.redis_url,
                maxlen=settings.inval_maxlen,
                timeout=settings.redis_timeout,
                origin=self.origin,
                on_invalidate=self._invalidated,
                on_clear=self._cleared,
                on_fill=self._filled_elsewhere,
            )
            self.dist = DistributedLeases(l2.prefix, self.origin, settings.lease_ttl)
        # keys whose Redis lease this host holds, and keys other hosts are filling
        self._redis_leases: set[str] = set()
        self._fill_events: dict[str, asyncio.Event] = {}
        self._stale_dropped = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # every L2 write goes through one ordered, batching queue (see writes.py)
        self.writes = WriteQueue(l2) if l2 is not None else None
        # writes acknowledged while Redis was unreachable (see backlog.py)
        self.backlog = WriteBacklog()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self.counters: dict[str, int] = dict.fromkeys(
            ("l2_hits", "l2_misses", "promotions", "l2_errors", "l2_skipped", "sets", "deletes", "clears",
             "fills", "fills_discarded", "compute_errors", "lease_timeouts", "cross_host_lease_waits",
             "redis_leases_taken", "staleness_drops", "backlog_replayed"),
            0,
        )

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Check Redis once; if it does not answer, start degraded and keep trying."""
        if self.l2 is None:
            return
        assert self.inval is not None
        self.inval.start()
        if await self.l2.ping():
            self.l2_up = True
            # let the stream reader find its start before serving the first request:
            # its first connection drops whatever L1 holds (none of it saw the stream),
            # which should be nothing, not the first values workers set
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.inval.synced.wait(), 2 * self.settings.redis_timeout)
        else:
            log.warning("Redis at %s does not answer; serving L1 only until it does", self.settings.redacted_redis_url)
            self._start_reconnect()

    async def close(self) -> None:
        """Stop background work and close the Redis connection."""
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.writes is not None:
            await self.writes.close()
        if self.inval is not None:
            await self.inval.close()
        if self.l2 is not None:
            await self.l2.aclose()

    def sweep(self) -> int:
        """Drop expired L1 entries and enforce the staleness bound (called
        periodically by the server).

        Staleness bound: once the invalidation reader has not heard from Redis for
        longer than ``staleness_bound`` seconds (its blocking read returns every
        second when all is well), L1 is dropped once, so it holds
        only what this host wrote or computed since; when the reader is back, the
        stream is replayed (or L1 dropped again on a gap).
        """
        self.table.beat()
        inval = self.inval
        bound = self.settings.staleness_bound
        if inval is not None and inval.ever_connected and time.monotonic() - inval.last_ok > bound:
            if not self._stale_dropped:
                log.warning("invalidation stream unreachable for over %.1fs: dropping L1", bound)
                self.counters["staleness_drops"] += 1
                self._cleared(False)
                self._stale_dropped = True
        else:
            self._stale_dropped = False
        return self.store.sweep(SWEEP_LIMIT)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- invalidation from other hosts ------------------------------------------

    def _invalidated(self, key: str) -> None:
        self._l1_delete(key)
        self.table.bump_key(key)

    def _cleared(self, is_gap: bool) -> None:
        self._l1_clear()
        self.table.bump_all()

    def _filled_elsewhere(self, key: str) -> None:
        event = self._fill_events.pop(key, None)
        if event is not None:
            event.set()

    # -- versions -----------------------------------------------------------

    def version_of(self, key: str) -> int:
        """The key's current version counter."""
        table = self.table
        return table.get(table.slot(key))

    def _on_remove(self, key: str, reason: str) -> None:
        # evicted or expired: the mirror first, then the version (a worker reads the
        # version before the mirror, so it can never pair an old value with a new version)
        if self.mirror is not None:
            self.mirror.delete(key)
        self.table.bump_key(key)

    # -- L1 and its shared-memory mirror change together -------------------------

    def _l1_put(self, key: str, value: bytes, ttl: float) -> bool:
        ttl = min(ttl, self.settings.l1_ttl)
        stored = self.store.set(key, value, ttl)
        if self.mirror is not None:
            if stored:
                self.mirror.put(key, value, time.monotonic() + ttl)
            else:
                self.mirror.delete(key)
        return stored

    def _l1_delete(self, key: str) -> bool:
        existed = self.store.delete(key)
        if self.mirror is not None:
            self.mirror.delete(key)
        return existed

    def _l1_clear(self) -> int:
        removed = self.store.clear()
        if self.mirror is not None:
            self.mirror.clear()
        return removed

    # -- L2 with failure handling --------------------------------------------

    async def _l2(self, op: Callable[[L2Tier], Awaitable[T]]) -> T | None:
        """Run ``op`` against L2 if it is up; on failure mark it down and return None."""
        l2 = self.l2
        if l2 is None or not self.l2_up:
            self.counters["l2_skipped"] += 1
            return None
        try:
            return await op(l2)
        except L2Error as exc:
            self.counters["l2_errors"] += 1
            if self.l2_up:
                log.warning("Redis failed (%s); serving L1 only until it answers again", exc)
            self.l2_up = False
            self._start_reconnect()
            return None

    async def _write(self, key: str, build: Callable[[Any], None]) -> list[Any] | None:
        """Queue an L2 write of ``key`` (see writes.py); its replies, or None if
        Redis is down or failed."""
        writes = self.writes
        if writes is None:
            return None
        return await self._l2(lambda l2: writes.write(key, build))

    def _start_reconnect(self) -> None:
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        assert self.l2 is not None
        delay = 0.05
        writes = self.writes
        assert writes is not None
        while True:
            if await self.l2.ping():
                try:
                    replayed = await self.backlog.replay(writes, self.l2, self._publish, self._l1_current)
                except L2Error:
                    self.counters["l2_errors"] += 1
                else:
                    break
            await asyncio.sleep(delay)  # backoff between reconnect attempts
            delay = min(delay * 2, 2.0)
        self.l2_up = True
        self.counters["backlog_replayed"] += replayed
        log.info("Redis at %s answers again (%d writes made meanwhile replayed)", self.settings.redacted_redis_url,
                 replayed)

    def _l1_current(self, key: str) -> tuple[bytes, float] | None:
        value = self.store.peek(key)
        ttl = self.store.remaining_ttl(key)
        if value is None or ttl is None:
            return None
        return value, min(ttl, self.settings.l2_ttl)

    # -- reads --------------------------------------------------------------

    def get_l1(self, key: str) -> Reply | None:
        """The reply for an L1 hit, or None."""
        value = self.store.get(key)
        if value is None:
            return None
        return [Status.OK, value, self.version_of(key), self.store.remaining_ttl(key) or 0.0]

    def _usable(self, found: tuple[Envelope, float] | None, count_miss: bool) -> tuple[bytes, float] | None:
        if found is None:
            self.counters["l2_misses"] += count_miss
            return None
        env, remaining = found
        logical_left = env.logical_expiry_ms / 1000.0 - time.time()
        ttl = min(remaining, logical_left)
        if ttl <= 0:
            self.counters["l2_misses"] += count_miss
            return None
        self.counters["l2_hits"] += 1
        return env.value, ttl

    async def _read_l2(self, key: str, *, recheck: bool = False) -> Reply | None:
        """Read ``key`` from L2 and promote it into L1 if no write raced the read.
        A ``recheck`` (looking again for a key already counted as a miss, while
        waiting for another host) counts its hit but not its miss.

        Returns the reply for a hit, None for a miss. If a set or delete of the key
        happened while the read was in flight, the L1 state (newer) wins.
        """
        if self.l2 is None or not self.l2_up:
            return None
        if self.backlog.covers(key) or (self.writes is not None and self.writes.busy(key)):
            # a write of this key is on its way to Redis, or did not get there while it
            # was down: what L2 holds may be what that write replaced, so do not read it
            return None
        before = self.version_of(key)
        found = self._usable(await self._l2(lambda l2: l2.get(key)), count_miss=not recheck)
        if found is None:
            return None
        if self.version_of(key) != before:
            return self.get_l1(key)
        value, ttl = found
        if self._l1_put(key, value, ttl):
            self.counters["promotions"] += 1
        return [Status.OK, value, before, ttl]

    async def get_miss(self, key: str) -> Reply:
        """After an L1 miss (see :meth:`get_l1`): L2, promoting a hit, else a miss."""
        reply = await self._read_l2(key)
        return reply if reply is not None else [Status.MISS, self.version_of(key)]

    # -- writes -------------------------------------------------------------

    def _publish(self, pipe: Any, op: str, key: str = "") -> None:
        if self.inval is not None:
            self.inval.publish(pipe, op, key)

    async def set(self, key: str, value: bytes, ttl: float) -> Reply:
        """Store in L1 (bumping the version before the ack) and in L2, and tell
        the other hosts, in one round trip."""
        self.counters["sets"] += 1
        self._l1_put(key, value, ttl)
        version = self.table.bump_key(key)

        def build(pipe: Any) -> None:
            assert self.l2 is not None
            self.l2.queue_set(pipe, key, value, min(ttl, self.settings.l2_ttl))
            self._publish(pipe, "set", key)

        if await self._write(key, build) is None and self.l2 is not None:
            self.backlog.add(key)
        return [Status.OK, version]

    async def delete(self, key: str) -> Reply:
        """Remove from L1 and L2 and tell the other hosts; the reply says whether
        either tier held the key."""
        self.counters["deletes"] += 1
        existed = self._l1_delete(key)
        self.table.bump_key(key)

        def build(pipe: Any) -> None:
            assert self.l2 is not None
            self.l2.queue_delete(pipe, key)
            self._publish(pipe, "del", key)

        replies = await self._write(key, build)
        if replies is None and self.l2 is not None:
            self.backlog.add(key)
        return [Status.OK, bool(existed or (replies and replies[0]))]

    async def clear(self) -> Reply:
        """Empty L1 and this namespace in L2, tell the other hosts; every version
        moves on."""
        self.counters["clears"] += 1
        removed = self._l1_clear()
        self.table.bump_all()
        writes = self.writes
        if writes is not None:
            cleared = await self._l2(lambda l2: writes.clear(lambda pipe: self._publish(pipe, "clear")))
            if cleared is None:
                self.backlog.add_all()
            removed += cleared or 0
        return [Status.OK, removed]

    # -- leases -------------------------------------------------------------

    async def lease_miss(self, holder: Hashable, key: str, wait: float) -> Reply:
        """After an L1 miss (see :meth:`get_l1`): take the key's lease (and read L2
        as its holder, so one L2 read serves every waiter) or wait for its holder."""
        deadline = time.monotonic() + wait
        start = self.version_of(key)
        got = self.leases.acquire(key, holder, start)
        if isinstance(got, bytes):
            reply = await self._read_l2(key)
            if reply is not None:
                self.leases.finish(key, got, ("value", *reply[1:]))
                return reply
            return await self._granted(key, got, start, deadline)
        # asyncio.wait, not wait_for: since Python 3.12 wait_for drops a result that
        # arrives in the same loop step as the timeout, and a lease handed over then
        # would stay with a waiter that already answered TIMEOUT
        done, _ = await asyncio.wait({got}, timeout=wait)
        if not done:
            got.cancel()  # the registry skips it from now on
            self.counters["lease_timeouts"] += 1
            return [Status.TIMEOUT]
        outcome = got.result()
        kind = outcome[0]
        if kind == "value":
            return [Status.OK, *outcome[1:]]
        if kind == "granted":  # handed over: the holder died, ran out of time, or filled too late
            token = outcome[1]
            reply = await self._read_l2(key)  # a write may have put the value there meanwhile
            if reply is not None:
                self.leases.finish(key, token, ("value", *reply[1:]))
                return reply
            return await self._granted(key, token, outcome[2], deadline)
        return [Status.COMPUTE_ERROR, *outcome[1:]]

    async def _granted(self, key: str, token: bytes, version: int, deadline: float) -> Reply:
        """This host's lease on ``key`` is ours: take the Redis lease too (when
        Redis is up), or wait for the host that holds it to fill L2."""
        if self.dist is None:
            return [Status.GRANTED, token, version]
        dist = self.dist
        if key in self._redis_leases:  # handed over within this host: the new holder gets a full TTL
            await self._l2(lambda l2: dist.renew(l2.redis, key))
            return [Status.GRANTED, token, version]
        delay = 0.02
        waited = False
        try:
            while True:
                # counted as ours before the take: if this task is cancelled while the
                # SET NX is in flight, the lease's end still releases it (the release
                # only deletes a lease this host owns)
                self._redis_leases.add(key)
                taken = await self._l2(lambda l2: dist.try_take(l2.redis, key))
                if taken is False:
                    self._redis_leases.discard(key)
                if not self.leases.is_holder(key, token):
                    if taken and self.leases.get(key) is None:
                        self._lease_ended(key)  # the local lease is over: free the Redis one
                    return [Status.TIMEOUT]  # our caller went away meanwhile; nobody reads this
                if taken:
                    self.counters["redis_leases_taken"] += 1
                    # another host may have filled and released between our L2 miss and
                    # the take: look once more, or we would compute what L2 already holds
                    reply = await self._read_l2(key, recheck=True)
                    if reply is not None:
                        self.leases.finish(key, token, ("value", *reply[1:]))  # also frees the Redis lease
                        return reply
                if taken is None or taken:  # None: Redis down, per-host lease only (degraded)
                    return [Status.GRANTED, token, self.version_of(key)]
                if not waited:
                    waited = True
                    self.counters["cross_host_lease_waits"] += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.counters["lease_timeouts"] += 1
                    self.leases.pass_on(key, token)  # the next local waiter tries, with its own deadline
                    return [Status.TIMEOUT]
                # another host computes: woken by its fill notice, or poll as a back-up
                event = self._fill_events.setdefault(key, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(delay, remaining))
                delay = min(delay * 2, 0.5)
                reply = await self._read_l2(key, recheck=True)
                if reply is not None:
                    self.leases.finish(key, token, ("value", *reply[1:]))
                    return reply
        finally:
            self._fill_events.pop(key, None)

    def _lease_ended(self, key: str) -> None:
        # the local lease ended without a fill (failure, or nobody left to take it
        # over): free the Redis lease so another host need not wait for its TTL
        if key in self._redis_leases:
            self._redis_leases.discard(key)
            self._spawn(self._release_redis_lease(key))

    async def _release_redis_lease(self, key: str) -> None:
        dist = self.dist
        assert dist is not None
        await self._l2(lambda l2: l2.pipeline("release", lambda pipe: dist.queue_release(pipe, key)))

    async def fill(self, key: str, token: bytes, value: bytes, ttl: float) -> Reply:
        """The lease holder's computed value: stored in L1 only if the key's version
        did not move since the lease began (else a newer write wins), written to L2
        with SET NX, and handed to every waiter."""
        self.counters["fills"] += 1
        lease = self.leases.get(key)
        current = self.version_of(key)
        if lease is None or lease.token != token or lease.version != current:
            self.counters["fills_discarded"] += 1
            newer = self.get_l1(key)
            if newer is not None:
                self.leases.finish(key, token, ("value", *newer[1:]))
            else:
                # the value predates a write (a delete, another host's set): waiters may
                # have asked after that write, so none gets it; the next one computes
                self.leases.pass_on(key, token)
            return [Status.OK, current, False]
        self._l1_put(key, value, ttl)
        cross_host = key in self._redis_leases
        self._redis_leases.discard(key)  # released below, with the write
        self.leases.finish(key, token, ("value", value, current, ttl))

        def build(pipe: Any) -> None:
            assert self.l2 is not None
            self.l2.queue_set(pipe, key, value, min(ttl, self.settings.l2_ttl), nx=True)
            if cross_host and self.dist is not None:
                self.dist.queue_release(pipe, key)
                self._publish(pipe, "fill", key)

        await self._write(key, build)
        return [Status.OK, current, True]

    def fail(self, key: str, token: bytes, exc_type: str, message: str) -> Reply:
        """The holder's function raised: every waiter gets the error; nothing is cached."""
        self.counters["compute_errors"] += 1
        self.leases.finish(key, token, ("error", exc_type, message))
        return [Status.OK]

    def drop_connection(self, holder: Hashable) -> None:
        """A connection closed: forget its waits (so no lease is handed to it) and
        pass on the leases it held."""
        self.leases.drop_waiter(holder)
        self.leases.drop_holder(holder)

    # -- introspection ------------------------------------------------------

    @property
    def redis_state(self) -> str:
        """``"disabled"`` (no Redis configured), ``"ok"`` or ``"down"``."""
        if self.l2 is None:
            return "disabled"
        return "ok" if self.l2_up else "down"

    def stats(self) -> dict[str, Any]:
        """Counters of every part, as plain data for the wire."""
        leases = self.leases.stats()
        return {
            "l1": self.store.stats().as_dict(),
            **self.counters,
            "leases_granted": leases.granted,
            "coalesced": leases.coalesced,
            "lease_handovers": leases.handovers,
            "leases_expired": leases.expired,
            "inflight_leases": leases.inflight,
            "l2": self.l2.stats() if self.l2 is not None else {},
            **(self.inval.stats() if self.inval is not None else {}),
            "mirror": self.mirror.stats() if self.mirror is not None else {},
            "l2_write_batches": self.writes.batches if self.writes is not None else 0,
            "l2_writes": self.writes.writes if self.writes is not None else 0,
            "l2_backlog": len(self.backlog),
            "l2_backlog_clear": self.backlog.everything,
        }

    def health(self) -> dict[str, Any]:
        """Liveness and mode, as plain data for the wire."""
        redis = self.redis_state
        return {
            "coordinator": "ok",
            "redis": redis,
            "mode": "ok" if redis == "ok" else "degraded",
            "pid": os.getpid(),
            "uptime": time.monotonic() - self._started,
            "namespace": self.settings.namespace,
            "redis_url": self.settings.redacted_redis_url if self.l2 is not None else None,
        }
