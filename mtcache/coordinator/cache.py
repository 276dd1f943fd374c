"""The coordinator's cache logic: L1, L2, versions and leases, without sockets.

Every method returns the reply payload of the protocol (``[status, *payload]``,
see :mod:`mtcache.protocol`); the server adds the request id and writes it.
User values are bytes here: the coordinator never decodes them.

Every write (set, delete, clear, fill) gets a stamp when the coordinator accepts
it (see :mod:`mtcache.coordinator.stamps`), also while Redis is unreachable, and
carries it to L1, to Redis (where it is written only if newer than what Redis
holds) and to the other hosts (which apply it only if newer than what they hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from mtcache.config import Settings
from mtcache.coordinator.backlog import Write, WriteBacklog
from mtcache.coordinator.invalidation import BLOCK_MS, InvalidationStream, ShardedInvalidation, new_origin
from mtcache.coordinator.l2 import (
    FOREVER_MS,
    Envelope,
    L2Tier,
    RedisFailure,
    WriteResult,
    classify_failure,
    missing_permission,
)
from mtcache.coordinator.leases import DistributedLeases, Lease, LeaseRegistry
from mtcache.coordinator.local import LocalTier
from mtcache.coordinator.sentinel import SentinelWatch
from mtcache.coordinator.stamps import HybridClock, stamp_ms
from mtcache.coordinator.tags import TagStamps
from mtcache.coordinator.writes import WriteQueue
from mtcache.errors import L2Error
from mtcache.mirror import MirrorWriter
from mtcache.protocol import Status
from mtcache.redis_urls import is_sentinel_url
from mtcache.shm import VersionTable

__all__ = ["CacheEngine"]

log = logging.getLogger("mtcache.coordinator")
#: Expired entries removed per sweep: a near copy may outlive its value's TTL until
#: the sweep that removes the entry bumps its version.
SWEEP_LIMIT = 4096
#: Writes replayed per round trip after an outage.
REPLAY_BATCH = 500
#: How many periods without Redis stats() reports (the newest).
DOWN_PERIODS_KEPT = 256
T = TypeVar("T")
Reply = list[Any]


class CacheEngine:
    """L1 → L2 read-through, write-through sets, stampede leases, version bumps.

    ``l2`` is None when the coordinator runs without Redis. When Redis fails, the
    engine marks it down, serves from L1 alone (``mode`` = degraded), keeps the
    writes it acknowledges in its backlog, and pings Redis in the background until
    it answers again; then it replays them before it uses Redis again.
    """

    def __init__(
        self, settings: Settings, table: VersionTable, l2: L2Tier | None, mirror: MirrorWriter | None = None
    ) -> None:
        self.settings = settings
        self.local = LocalTier(
            table, mirror, capacity=settings.l1_capacity, max_bytes=settings.l1_max_bytes, default_ttl=settings.l1_ttl
        )
        self.l2 = l2
        self.l2_up = False
        self.clock = HybridClock()
        #: whether a lease holder (a connection of the server) still lives; the server sets it
        self.holder_alive: Callable[[Hashable], bool] = lambda _holder: True
        self.leases = LeaseRegistry(settings.lease_ttl, on_end=self._lease_ended, lease_max=settings.lease_max,
                                    alive=self._holder_alive, on_renew=self._lease_renewed)
        self.origin = new_origin()
        self.inval: InvalidationStream | ShardedInvalidation | None = None
        self.dist: DistributedLeases | None = None
        if l2 is not None:
            options: dict[str, Any] = {
                "reader_url": settings.redis_url,
                "maxlen": settings.inval_maxlen,
                "timeout": settings.redis_timeout,
                "origin": self.origin,
                "on_invalidate": self._invalidated,
                "on_clear": self._cleared_elsewhere,
                "on_gap": self._unvouched,
                "on_fill": self._filled_elsewhere,
                "on_tag": self._tag_invalidated,
                "on_lost": self._own_write_lost,
                "on_stamp": self._observed,
                # the reader must hear from a healthy Redis well within the staleness bound
                "block_ms": max(10, min(BLOCK_MS, int(settings.staleness_bound * 1000 / 3))),
            }
            self.inval = (ShardedInvalidation(l2.redis, l2.layout, **options) if l2.layout.sharded
                          else InvalidationStream(l2.redis, l2.layout.streams()[0], **options))
            self.dist = DistributedLeases(l2, self.origin, settings.lease_ttl)
        #: on Sentinel: follows the master's moves at once (see sentinel.py)
        self.sentinel_watch = (SentinelWatch(settings.redis_url, settings.redis_timeout, self._master_switched)
                               if l2 is not None and is_sentinel_url(settings.redis_url) else None)
        #: the newest clear this host knows of: entries written before it are dead
        self.floor = 0
        #: the invalidation stamps of the tags this host knows of (see tags.py), and the tag invalidations
        #: made while Redis was unreachable (replayed with the backlog)
        self.tag_stamps = TagStamps()
        self.pending_tags: dict[str, int] = {}
        self._stale_dropped = False
        self._tasks: set[asyncio.Task[Any]] = set()
        #: L2 writes of writes-behind still on their way (see set_behind)
        self._behind: set[asyncio.Task[None]] = set()
        # every L2 write goes through one ordered, batching queue (see writes.py)
        self.writes = WriteQueue(l2) if l2 is not None else None
        # writes acknowledged while Redis was unreachable (see backlog.py)
        self.backlog = WriteBacklog(settings.backlog_max_bytes)
        #: INCRs of each key on their way to Redis (see _l2_readable)
        self.incrs_in_flight: Counter[str] = Counter()
        #: per version slot, how far promotions and the ends of INCRs moved its version: moves that
        #: replaced no value Redis holds (see _promote)
        self.benign_moves: Counter[int] = Counter()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        #: the last periods (CLOCK_MONOTONIC seconds: one clock for every process of the host) in
        #: which this coordinator worked without Redis (leases per host only, writes backlogged)
        self.down_periods: deque[list[float | None]] = deque(maxlen=DOWN_PERIODS_KEPT)
        self.skew_ms: float | None = None
        self.eviction_policy: str | None = None
        #: optional permissions the ACL user lacks (``+time``, ``+config|get``) and what goes unchecked without
        #: them; shown in ``health()``'s warnings
        self.missing_permissions: dict[str, str] = {}
        #: why Redis is not used right now (None while it is, or before it was tried)
        self.redis_failure: RedisFailure | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("l2_hits", "l2_misses", "promotions", "l2_errors", "l2_skipped", "sets", "deletes", "clears",
             "fills", "fills_discarded", "fills_late", "compute_errors", "lease_releases", "lease_timeouts",
             "cross_host_lease_waits", "redis_leases_taken", "staleness_drops", "backlog_replayed",
             "writes_superseded", "backlog_overflows", "redis_leases_lost", "fail_safe_activations", "adds",
             "incrs", "touches", "tag_invalidations", "writes_behind", "master_switches"),
            0,
        )

    @property
    def table(self) -> VersionTable:
        """The version table (shared memory) of this host."""
        return self.local.table

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Check Redis once; if it does not answer, start degraded and keep trying."""
        if self.l2 is None:
            return
        assert self.inval is not None
        self.inval.start()
        if self.sentinel_watch is not None:
            self.sentinel_watch.start()
        if await self.l2.ping():
            self.l2_up = True
            await self._inspect_redis()
            # let the stream reader find its start before serving the first request
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.inval.synced.wait(), 2 * self.settings.redis_timeout)
        else:
            self._note_failure(self.l2.last_failure)
            self.down_periods.append([time.monotonic(), None])
            self._start_reconnect()

    def _note_failure(self, failure: RedisFailure | None) -> None:
        """Record why Redis cannot be used, and log it when the reason changes: a refused
        password, a failed TLS handshake and an unreachable host are three different lines
        (and ``health()`` reasons), so an operator knows what to fix."""
        failure = failure or RedisFailure("unreachable", "no answer")
        previous = self.redis_failure
        self.redis_failure = failure
        if previous is not None and previous.kind == failure.kind:
            return
        log.warning("Redis at %s: %s; serving L1 only, retrying in the background",
                    self.settings.redacted_redis_url, failure.reason)

    async def close(self) -> None:
        """Send the writes-behind still queued (bounded by the Redis deadline), stop background work and
        close the Redis connection."""
        if self._behind:
            if self.writes is not None:
                self.writes.send_now()
            await asyncio.wait(self._behind, timeout=2 * self.settings.redis_timeout)
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        if self.sentinel_watch is not None:
            await self.sentinel_watch.close()
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
        """Drop expired L1 entries, forget stale grants and enforce the staleness
        bound (called periodically by the server).

        Staleness bound: once the invalidation reader has not heard from Redis for
        longer than ``staleness_bound`` seconds (its blocking read returns every
        second when all is well), L1 is dropped once, but for this host's own
        writes still waiting to be replayed: afterwards it holds only what this host
        wrote or computed since. When the reader is back, it resumes the stream (or
        drops L1 again on a gap).
        """
        self.table.beat()
        self.leases.prune_grants(self.settings.tombstone_ttl)
        inval = self.inval
        bound = self.settings.staleness_bound
        if inval is not None and inval.ever_connected and time.monotonic() - inval.last_ok > bound:
            if not self._stale_dropped:
                log.warning("invalidation stream unreachable for over %.1fs: dropping L1", bound)
                self.counters["staleness_drops"] += 1
                self._unvouched("staleness bound")
                self._stale_dropped = True
        else:
            self._stale_dropped = False
        return self.local.sweep(SWEEP_LIMIT)

    def _optional_failed(self, exc: L2Error, what: str, consequence: str) -> None:
        """A check at connect failed: a missing permission is a warning naming it (in the log and in
        ``health()``); mtcache runs without the check."""
        failure = classify_failure(exc)
        if failure.kind != "permission":
            log.info("could not read %s (%s)", what, exc)
            return
        permission = missing_permission(failure.detail)
        if permission not in self.missing_permissions:
            log.warning("Redis at %s: the ACL user may not read %s (%s): %s; grant %s to check it",
                        self.settings.redacted_redis_url, what, failure.detail, consequence, permission)
        self.missing_permissions[permission] = consequence

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _inspect_redis(self) -> None:
        """At connect: measure the clock skew against Redis (and move the clock past
        Redis' time), and warn about an eviction policy that evicts mtcache's keys."""
        assert self.l2 is not None
        l2 = self.l2
        try:
            redis_ms, local_ms = await l2.server_time_ms()
        except L2Error as exc:
            self._optional_failed(exc, "Redis' clock", "the clock skew against Redis is not measured")
        else:
            self.missing_permissions.pop("+time", None)
            self.skew_ms = local_ms - redis_ms
            self.clock.observe_ms(int(redis_ms))
        try:
            policy: Any = await l2.run("config", l2.redis.config_get("maxmemory-policy"))
        except L2Error as exc:
            self._optional_failed(exc, "Redis' eviction policy", "an eviction policy that evicts mtcache's keys "
                                  "goes unnoticed")
            return
        self.missing_permissions.pop("+config|get", None)
        self.eviction_policy = (policy or {}).get("maxmemory-policy")
        if self.eviction_policy and self.eviction_policy.startswith("allkeys"):
            log.warning(
                "Redis at %s evicts with maxmemory-policy %s: it may evict tombstones and the invalidation "
                "stream, so a delete can be undone by an older fill and hosts may drop their L1 on gaps; "
                "use volatile-lru or volatile-ttl (every mtcache value but those stored FOREVER has a TTL)",
                self.settings.redacted_redis_url, self.eviction_policy,
            )

    # -- what other hosts did -----------------------------------------------

    def _observed(self, stamp: int, entry_ms: int) -> None:
        self.clock.observe(stamp)
        self.clock.observe_ms(entry_ms)

    def _invalidated(self, key: str, stamp: int) -> bool:
        return self.local.drop_older(key, stamp)

    def _cleared_elsewhere(self, stamp: int) -> None:
        self.floor = max(self.floor, stamp)
        self.local.clear(keep=lambda _key, held: held > stamp)

    def _unvouched(self, reason: str) -> None:
        """L1 may have missed other hosts' writes: drop it, but for this host's own
        writes that wait to be replayed (the replay decides, by stamp, what wins), and
        forget the tag stamps it knew (they are read again from Redis as tags are met)."""
        self.local.clear(keep=self.backlog.holds)
        self.tag_stamps.forget()

    async def _master_switched(self) -> None:
        """The sentinels moved the master: every connection to the old one goes (see sentinel.py)."""
        self.counters["master_switches"] += 1
        if self.l2 is not None:
            await self.l2.drop_connections()
        if isinstance(self.inval, InvalidationStream):
            await self.inval.drop_connections()

    def _own_write_lost(self, key: str, stamp: int) -> None:
        """This host's write of ``key`` at ``stamp`` is not in the stream after a reconnect (lost with a
        failover, or never sent): L1 no longer vouches for it, unless it waits in the backlog (its replay
        decides, by stamp, what wins)."""
        if not self.backlog.holds(key, stamp):
            self.local.drop_if(key, stamp)

    def _tag_invalidated(self, tag: str, stamp: int) -> None:
        """``tag`` was invalidated at ``stamp`` (here or on another host): its older entries go."""
        self.tag_stamps.raise_to(tag, stamp)
        local = self.local
        for key in local.tags.keys_of(tag):
            held = local.stamp_of(key)
            if held is None or held < stamp:
                local.delete(key)

    async def _know_tags(self, tags: tuple[str, ...]) -> None:
        """Read from Redis the stamps of those of ``tags`` this host does not know yet (a tag it
        cannot read counts as never invalidated: Redis is unreachable, as for any write)."""
        unknown = self.tag_stamps.unknown(tags)
        if not unknown:
            return
        stamps = await self._l2(lambda l2: l2.tag_stamps(unknown))
        for tag, stamp in (stamps or {}).items():
            self.tag_stamps.raise_to(tag, stamp)

    async def invalidate_tags(self, tags: list[str]) -> Reply:
        """Every entry carrying one of ``tags`` dies on every tier and host (see tags.py). The reply
        says whether Redis has the invalidation (else it waits with the backlog)."""
        self.counters["tag_invalidations"] += 1
        stamp = self.clock.now()
        unique = tuple(dict.fromkeys(tags))
        for tag in unique:
            self._tag_invalidated(tag, stamp)
        writes, l2 = self.writes, self.l2
        if writes is None or l2 is None:
            return [Status.OK, False]
        if self.l2_up:

            def build(pipe: Any) -> None:
                for tag in unique:
                    l2.queue_raise_tag(pipe, tag, stamp)
                    self.publish(pipe, "tag", tag, stamp)

            try:
                await writes.write(None, build)
            except L2Error as exc:
                self.l2_failed(exc)
            else:
                return [Status.OK, True]
        for tag in unique:
            self.pending_tags[tag] = max(stamp, self.pending_tags.get(tag, 0))
        return [Status.OK, False]

    def _filled_elsewhere(self, key: str) -> None:
        if self.dist is not None:
            self.dist.filled(key)

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
            self.l2_failed(exc)
            return None

    def share_round_trips_while(self, others_waiting: Callable[[], bool]) -> None:
        """Writes go to Redis at the end of the loop turn they came in, and a lone L2 read at once from its own
        task, but not while ``others_waiting()`` (requests that came in the same loop turn have yet to start):
        then they wait for the round trip that carries theirs too (see :mod:`mtcache.coordinator.writes`)."""
        if self.writes is not None:
            self.writes.others_waiting = others_waiting
        if self.l2 is not None:
            self.l2.share_reads_while(others_waiting)

    def l2_failed(self, exc: L2Error) -> None:
        """Redis failed: serve without it (L1 only, writes backlogged) and reconnect in the background."""
        self.counters["l2_errors"] += 1
        if self.l2_up:
            self.redis_failure = None  # a new outage: log its reason
            self._note_failure(classify_failure(exc))
            self.down_periods.append([time.monotonic(), None])
        self.l2_up = False
        self._start_reconnect()

    async def _write(
        self, write: Write, *, publish: str | None, extra: Callable[[Any], None] | None = None, keep: bool = True,
        delay: float = 0.0,
    ) -> int | None:
        """Send ``write`` (with its stream entry ``publish``) through the write queue;
        the :class:`WriteResult`, or None if Redis is down or failed on this write.
        With ``keep`` such a write goes to the backlog (one that may or may not have
        reached Redis is replayed, which its stamp makes harmless); a fill does not
        (a cache may always lose a computed value)."""
        writes, l2 = self.writes, self.l2
        if writes is None or l2 is None:
            return None
        if not self.l2_up:
            if keep:
                self.backlog.add(write)
            self.counters["l2_skipped"] += 1
            return None

        try:
            replies = await writes.write(write.key, self._build(write, publish, extra), delay=delay,
                                         failed=self._on_failure(write, keep))
        except L2Error:
            return None
        return int(replies[0])

    def _build(self, write: Write, publish: str | None, extra: Callable[[Any], None] | None) -> Callable[[Any], None]:
        """What queues ``write`` (with its stream entry ``publish``, and the commands ``extra`` adds) in a batch."""
        l2, inval = self.l2, self.inval
        assert l2 is not None

        def build(pipe: Any) -> None:
            entry = inval.entry(publish, write.key, write.stamp) if publish is not None and inval is not None else None
            l2.queue_write(pipe, write.key, write.value, write.ttl, write.stamp, write.tags,
                           stale_for=write.stale_for, renew=write.renew, entry=entry)
            if extra is not None:
                extra(pipe)

        return build

    def _on_failure(self, write: Write, keep: bool) -> Callable[[L2Error], None]:
        """What records the failure of ``write``'s round trip (see :meth:`_write`)."""

        def failed(exc: L2Error) -> None:
            # before the queue releases the key: a read missing L1 must not find it readable in L2
            # (which still holds what this write replaced) for the loop turn until this task resumes
            if keep:
                self.backlog.add(write)
            self.l2_failed(exc)

        return failed

    def writes_now(self) -> bool:
        """Whether a write is queued for Redis by its request's own call and answered by a callback
        (:meth:`set_now`, :meth:`delete_now`): Redis is up (while it is not, writes go to the backlog)."""
        return self.writes is not None and self.l2_up

    def _write_now(self, write: Write, publish: str, done: Callable[[int | None], None]) -> None:
        """:meth:`_write` (:meth:`writes_now` must be true) from this call: ``done`` gets the
        :class:`WriteResult`, or None if Redis failed (the write then waits in the backlog), later."""
        assert self.writes is not None
        self.writes.write_soon(write.key, self._build(write, publish, None), failed=self._on_failure(write, True),
                               done=lambda outcome: done(None if isinstance(outcome, L2Error) else int(outcome[0])))

    def _start_reconnect(self) -> None:
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        # Redis may fail again while this task inspects it: l2_failed then finds this task still
        # running and starts none, so the task goes round again until Redis stays up
        while not self.l2_up:
            replayed = await self._until_replayed()
            self.l2_up = True
            self.redis_failure = None
            if self.down_periods and self.down_periods[-1][1] is None:
                self.down_periods[-1][1] = time.monotonic()
            await self._inspect_redis()
            self.counters["backlog_replayed"] += replayed
            log.info("Redis at %s answers again (%d writes made meanwhile replayed)",
                     self.settings.redacted_redis_url, replayed)

    async def _until_replayed(self) -> int:
        """Ping with back-off until Redis answers and the backlog is replayed; how many writes were."""
        assert self.l2 is not None
        delay = 0.05
        while True:
            if await self.l2.ping():
                try:
                    return await self._replay()
                except L2Error:
                    self.counters["l2_errors"] += 1
            else:
                self._note_failure(self.l2.last_failure)
            await asyncio.sleep(delay)  # backoff between reconnect attempts
            delay = min(delay * 2, 2.0)

    async def _replay(self) -> int:
        """Send the backlog with the conditional script (an older write never replaces
        a newer one, from any host); drop from L1 the writes that lost. Returns how many
        writes were replayed.

        :raises L2Error: Redis failed again; what is not replayed stays in the backlog.
        """
        writes, l2, backlog = self.writes, self.l2, self.backlog
        assert writes is not None and l2 is not None
        replayed = 0
        if self.pending_tags:
            pending = dict(self.pending_tags)

            def build_tags(pipe: Any) -> None:
                for tag, stamp in pending.items():
                    l2.queue_raise_tag(pipe, tag, stamp)
                    self.publish(pipe, "tag", tag, stamp)

            await writes.write(None, build_tags)
            for tag, stamp in pending.items():
                if self.pending_tags.get(tag) == stamp:
                    del self.pending_tags[tag]
            replayed += len(pending)
        while backlog:
            if backlog.overflowed:
                # writes were dropped: clear everything, everywhere, newer than any of them
                self.counters["backlog_overflows"] += 1
                floor = self.clock.now()
                await self._send_clear(floor)
                self.floor = max(self.floor, floor)
                self.local.clear(keep=lambda _key, held, floor=floor: held > floor)  # type: ignore[misc]
                backlog.reset()
                continue
            clear = backlog.clear
            if clear is not None:
                await self._send_clear(clear.stamp)
                backlog.done(clear)
                replayed += 1
                continue
            batch = backlog.batch(REPLAY_BATCH)
            # one write each, all queued at once: the write queue sends them in one round trip
            results = await asyncio.gather(*(self._replay_one(w) for w in batch), return_exceptions=True)
            for w, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    raise result
                backlog.done(w)
                if result <= WriteResult.OLDER:
                    self.counters["writes_superseded"] += 1
                    self.local.drop_if(w.key, w.stamp)
            replayed += len(batch)
        return replayed

    async def _replay_one(self, write: Write) -> int:
        writes, l2 = self.writes, self.l2
        assert writes is not None and l2 is not None
        value, ttl = write.value, write.left()
        if value is not None and ttl <= 0:
            # it expired while Redis was unreachable: what it replaced must not come back either
            value, ttl = None, self.settings.tombstone_ttl
        elif value is None:
            ttl = self.settings.tombstone_ttl

        def build(pipe: Any) -> None:
            l2.queue_write(pipe, write.key, value, ttl, write.stamp, write.tags if value is not None else ())
            self.publish(pipe, "set" if value is not None else "del", write.key, write.stamp)

        return int((await writes.write(write.key, build))[0])

    async def _send_clear(self, stamp: int) -> None:
        writes, l2 = self.writes, self.l2
        assert writes is not None and l2 is not None

        def build(pipe: Any) -> None:
            l2.queue_raise_floor(pipe, stamp)
            self.publish(pipe, "clear", "", stamp)

        await writes.clear(stamp, build)

    # -- reads --------------------------------------------------------------

    def get_l1(self, key: str) -> Reply | None:
        """The reply for an L1 hit, or None."""
        hit = self.local.get(key)
        if hit is None:
            return None
        return [Status.OK, hit.value, hit.version, hit.ttl]

    def _usable(self, env: Envelope | None, count_miss: bool) -> tuple[bytes, float, int, float] | None:
        """``(value, fresh seconds left, stamp, seconds kept stale after that)`` of a record a reader may
        take into L1: fresh, or stale but still kept for fail-safe (fresh seconds left <= 0); None for
        anything else."""
        if env is not None:
            self.clock.observe(env.stamp)
        if env is None or env.tombstone or env.stamp <= self.floor or self.tag_stamps.dead(env.tags, env.stamp):
            self.counters["l2_misses"] += count_miss
            return None
        if env.logical_expiry_ms >= FOREVER_MS:
            self.counters["l2_hits"] += 1
            return env.value, math.inf, env.stamp, 0.0
        now = time.time()
        ttl = env.logical_expiry_ms / 1000.0 - now
        stale_for = max(0.0, env.stale_until_ms / 1000.0 - max(now, env.logical_expiry_ms / 1000.0))
        if ttl <= 0 and stale_for <= 0:
            self.counters["l2_misses"] += count_miss
            return None
        if ttl > 0:
            self.counters["l2_hits"] += 1
        else:
            self.counters["l2_misses"] += count_miss
        return env.value, ttl, env.stamp, stale_for

    async def _read_l2(self, key: str, *, recheck: bool = False) -> Reply | None:
        """Read ``key`` from L2 and promote it into L1 if no write raced the read.
        A ``recheck`` (looking again for a key already counted as a miss, while
        waiting for another host) counts its hit but not its miss. A stale record
        still kept for fail-safe is promoted as stale (for a caller whose source
        fails) and reads as a miss.

        Returns the reply for a hit, None for a miss. If a set or delete of the key
        happened while the read was in flight, the L1 state (newer) wins.
        """
        if self.l2 is None or not self.l2_up or not self._l2_readable(key):
            return None
        before = self._read_marks(key)
        env = await self._l2(lambda l2: l2.get(key))
        if env is not None and env.tags:
            await self._know_tags(env.tags)
        return self._promote(key, before, env, count_miss=not recheck)

    async def read_l2_many(self, keys: list[str]) -> list[Reply | None]:
        """:meth:`_read_l2` for each of ``keys``, in one round trip."""
        readable = [key for key in keys if self._l2_readable(key)]
        found: dict[str, Reply | None] = {}
        if readable and self.l2 is not None and self.l2_up:
            befores = [self._read_marks(key) for key in readable]
            envs = await self._l2(lambda l2: l2.mget(readable))
            tags = tuple({tag for env in envs or () if env is not None for tag in env.tags})
            if tags:
                await self._know_tags(tags)
            if envs is not None:
                for key, before, env in zip(readable, befores, envs, strict=True):
                    found[key] = self._promote(key, before, env, count_miss=True)
        return [found.get(key) for key in keys]

    def _l2_readable(self, key: str) -> bool:
        # not while a write of this key is on its way to Redis, or did not get there while it was
        # down: what L2 holds may be what that write replaced. An INCR in flight is no such write:
        # Redis holds the counter before or after it (both true of a read concurrent with it), and
        # a value promoted meanwhile is older than the INCR's stamp, so its end drops it from L1;
        # without this, a counter that other workers keep incrementing read as missing.
        if self.backlog.covers(key):
            return False
        return self.writes is None or not self.writes.busy(key, besides=self.incrs_in_flight.get(key, 0))

    def _read_marks(self, key: str) -> tuple[int, int]:
        """``key``'s version and its slot's INCR moves, taken before a read of L2 (see :meth:`_promote`)."""
        return self.local.version_of(key), self.benign_moves[self.local.table.slot(key)]

    def _promote(self, key: str, before: tuple[int, int], env: Envelope | None, *, count_miss: bool) -> Reply | None:
        """What a read of ``key`` found in L2 (``env``), promoted into L1 unless a write moved its
        version from ``before`` (see :meth:`_read_marks`) meanwhile (then L1, newer, answers). If
        only promotions and ends of INCRs moved it, and L1 has nothing, what was read is true of a
        moment of the read (as a read concurrent with an INCR may see the counter before or after
        it): it is answered, not promoted, with the version from before, so that the worker's near
        copy of it is stale at once (without this, a counter other workers keep incrementing reads
        as missing)."""
        found = self._usable(env, count_miss=count_miss)
        if found is None or env is None:
            return None
        slot = self.local.table.slot(key)
        version = self.local.version_of(key)
        if version != before[0]:
            held = self.get_l1(key)
            if held is None and found[1] > 0 and version - before[0] == self.benign_moves[slot] - before[1]:
                return [Status.OK, found[0], before[0], found[1]]
            return held
        value, ttl, stamp, stale_for = found
        if ttl <= 0:
            if self.local.stamp_of(key) is None:
                self.local.put(key, value, 0.0, stamp, stale_for, env.tags)
                self.benign_moves[slot] += self.local.version_of(key) - version
            return None
        promoted = self.local.put(key, value, ttl, stamp, stale_for, env.tags)
        self.benign_moves[slot] += promoted - version
        self.counters["promotions"] += 1
        return [Status.OK, value, promoted, ttl]

    async def get_miss(self, key: str) -> Reply:
        """After an L1 miss (see :meth:`get_l1`): L2, promoting a hit, else a miss."""
        return self._hit_or_miss(key, await self._read_l2(key))

    def _hit_or_miss(self, key: str, hit: Reply | None) -> Reply:
        """``hit``, or the reply to a miss of ``key`` (with its version)."""
        return hit if hit is not None else [Status.MISS, self.local.version_of(key)]

    def reads_now(self) -> bool:
        """Whether an L1 miss is read from L2 by its request's own call and answered by a callback
        (:meth:`get_miss_now`): Redis is up."""
        return self.l2 is not None and self.l2_up

    def get_miss_now(self, key: str, *, reply: Callable[[Reply], None]) -> None:
        """:meth:`get_miss` (:meth:`reads_now` must be true) without a task: ``reply`` gets the answer, once,
        never from this call. A record with tags whose stamps this host does not know yet is finished by a
        task (their stamps take a round trip of their own)."""
        l2 = self.l2
        assert l2 is not None
        if not self._l2_readable(key):
            asyncio.get_running_loop().call_soon(lambda: reply(self._hit_or_miss(key, None)))
            return
        before = self._read_marks(key)

        def found(env: Envelope | L2Error | None) -> None:
            if isinstance(env, L2Error):
                self.l2_failed(env)
                reply(self._hit_or_miss(key, None))
            elif env is not None and self.tag_stamps.unknown(env.tags):
                self._spawn(self._promote_with_tags(key, before, env, reply))
            else:
                reply(self._hit_or_miss(key, self._promote(key, before, env, count_miss=True)))

        l2.get_soon(key, found)

    async def _promote_with_tags(self, key: str, before: tuple[int, int], env: Envelope,
                                 reply: Callable[[Reply], None]) -> None:
        await self._know_tags(env.tags)
        reply(self._hit_or_miss(key, self._promote(key, before, env, count_miss=True)))

    # -- writes -------------------------------------------------------------

    def publish(self, pipe: Any, op: str, key: str, stamp: int) -> None:
        """Queue the stream entry that tells the other hosts of a write (``op`` set, del, fill, clear)."""
        if self.inval is not None:
            self.inval.publish(pipe, op, key, stamp)

    def lifetimes(self, ttl: float | None) -> tuple[float, float]:
        """How long a write with ``ttl`` lives in L1 and in Redis: its own TTL on both (FOREVER
        included); for a write that gave none, the L1 and L2 defaults (``MTCACHE_L1_TTL``,
        ``MTCACHE_L2_TTL``)."""
        if ttl is None:
            return self.settings.l1_ttl, self.settings.l2_ttl
        return ttl, ttl

    async def set(self, key: str, value: bytes, ttl: float | None, tags: list[str] | tuple[str, ...] = ()) -> Reply:
        """Store in L1 (moving the version before the ack) and in L2, and tell the
        other hosts, in one round trip. The reply says whether the worker may keep a
        near copy (not if a newer write from another host already replaced it)."""
        write = self._setting(key, value, ttl, tags)
        return self._set_reply(write, await self._write(write, publish="set"))

    def set_now(
        self, key: str, value: bytes, ttl: float | None, tags: list[str] | tuple[str, ...],
        *, reply: Callable[[Reply], None],
    ) -> None:
        """:meth:`set` (:meth:`writes_now` must be true) from this call, without a task: L1 holds the value
        when this returns, and ``reply`` gets the answer once Redis holds it too."""
        write = self._setting(key, value, ttl, tags)
        self._write_now(write, "set", lambda result: reply(self._set_reply(write, result)))

    def _setting(self, key: str, value: bytes, ttl: float | None, tags: list[str] | tuple[str, ...]) -> Write:
        """A set's part before Redis (counted, stamped, in L1 with its version moved); the write for L2."""
        self.counters["sets"] += 1
        stamp = self.clock.now()
        l1_ttl, l2_ttl = self.lifetimes(ttl)
        tags = tuple(tags)
        self.local.put(key, value, l1_ttl, stamp, tags=tags)
        return Write(key, value, l2_ttl, stamp, tags=tags)

    def _set_reply(self, write: Write, result: int | None) -> Reply:
        """The reply to a set once L2 answered ``result`` (see :meth:`_stands`)."""
        kept = self._stands(write, result)
        return [Status.OK, self.local.version_of(write.key), kept]

    def _stands(self, write: Write, result: int | None) -> bool:
        """Whether ``write`` of a value stands once L2 answered ``result`` (None: Redis failed, the write
        waits in the backlog): one Redis found older than what it holds is dropped from L1 (counted), and
        no near copy of it may be kept."""
        if result is not None and result <= WriteResult.OLDER:
            self.counters["writes_superseded"] += 1
            self.local.drop_if(write.key, write.stamp)
            return False
        return True

    def delete_now(self, key: str, *, reply: Callable[[Reply], None]) -> None:
        """:meth:`delete` (:meth:`writes_now` must be true) from this call, as :meth:`set_now` does a set."""
        write, existed = self._deleting(key)
        self._write_now(write, "del", lambda result: reply(self._delete_reply(existed, result)))

    def _deleting(self, key: str) -> tuple[Write, bool]:
        """A delete's part before Redis (counted, stamped, gone from L1); its tombstone for L2, and whether L1
        held a value."""
        self.counters["deletes"] += 1
        stamp = self.clock.now()
        existed = self.local.delete(key)
        return Write(key, None, self.settings.tombstone_ttl, stamp), existed

    @staticmethod
    def _delete_reply(existed: bool, result: int | None) -> Reply:
        """The reply to a delete once L2 answered ``result``: whether either tier held a value."""
        return [Status.OK, bool(existed or result == WriteResult.REPLACED)]

    def set_behind(
        self, key: str, value: bytes, ttl: float | None, delay: float, tags: list[str] | tuple[str, ...] = ()
    ) -> Reply:
        """A write-behind: store in L1 (moving the version), answer at once, and send the L2 write and its
        stream entry through the write queue within ``delay`` seconds (sooner with other writes). Ordered
        with every other write by its stamp; if Redis turns out to hold a newer write, L1 drops this one
        (its version moves, so near copies die). Redis down: it goes to the backlog like any write."""
        self.counters["writes_behind"] += 1
        self._send_behind(self._setting(key, value, ttl, tags), "set", delay)
        return [Status.OK, self.local.version_of(key), True]

    def delete_behind(self, key: str, delay: float) -> Reply:
        """A delete-behind: remove from L1 and answer at once (whether L1 held it); the tombstone and
        stream entry follow as in :meth:`set_behind`."""
        self.counters["writes_behind"] += 1
        write, existed = self._deleting(key)
        self._send_behind(write, "del", delay)
        return [Status.OK, bool(existed)]

    def _send_behind(self, write: Write, publish: str, delay: float) -> None:
        task = asyncio.get_running_loop().create_task(self._write_behind(write, publish, delay))
        self._behind.add(task)
        task.add_done_callback(self._behind.discard)

    async def _write_behind(self, write: Write, publish: str, delay: float) -> None:
        result = await self._write(write, publish=publish, delay=delay)
        if write.value is not None:
            self._stands(write, result)

    async def delete(self, key: str) -> Reply:
        """Remove from L1, write a tombstone to L2 and tell the other hosts; the reply
        says whether either tier held a value."""
        write, existed = self._deleting(key)
        return self._delete_reply(existed, await self._write(write, publish="del"))

    async def clear(self) -> Reply:
        """Empty L1 and this namespace in L2, tell the other hosts; every version
        moves on."""
        self.counters["clears"] += 1
        stamp = self.clock.now()
        self.floor = max(self.floor, stamp)
        removed = self.local.clear()
        if self.writes is None:
            return [Status.OK, removed]
        write = Write("", None, self.settings.tombstone_ttl, stamp, clear=True)
        if not self.l2_up:
            self.backlog.add(write)
            return [Status.OK, removed]
        try:
            await self._send_clear(stamp)
        except L2Error as exc:
            self.backlog.add(write)
            self.l2_failed(exc)
        return [Status.OK, removed]

    # -- leases -------------------------------------------------------------

    async def lease_miss(
        self, holder: Hashable, key: str, wait: float, fail_safe: float = 0.0, soft: float = 0.0
    ) -> Reply:
        """After an L1 miss (see :meth:`get_l1`): take the key's lease (and read L2
        as its holder, so one L2 read serves every waiter) or wait for its holder.
        A GRANTED, COMPUTE_ERROR or TIMEOUT reply carries the key's stale value if
        it went stale at most ``fail_safe`` seconds ago (else nil); a caller with
        such a value at hand waits at most ``soft`` seconds (its soft timeout) for
        another worker's computation, then takes the stale value."""
        if soft > 0 and self._stale(key, fail_safe) is not None:
            wait = min(wait, soft)
        reply = await self._lease(holder, key, wait)
        if reply[0] in (Status.GRANTED, Status.COMPUTE_ERROR, Status.TIMEOUT):
            reply.append(self._stale(key, fail_safe))
        return reply

    def _stale(self, key: str, fail_safe: float) -> bytes | None:
        hit = self.local.stale(key, fail_safe) if fail_safe > 0 else None
        return None if hit is None else hit.value

    async def refresh(self, holder: Hashable, key: str, version: int, fail_safe: float) -> Reply:
        """Eager refresh of ``key`` (its caller saw it at ``version``, close to going stale): never
        waits. GRANTED (with the current value as ``stale``) if this caller may compute it now, under
        the key's lease on every host; OK with the current value if it was refreshed (or written)
        meanwhile; BUSY if someone computes it already."""
        hit = self.local.get(key)
        if hit is not None and hit.version != version:
            return [Status.OK, hit.value, hit.version, hit.ttl]
        token = self.leases.try_acquire(key, holder)
        if token is None:
            return [Status.BUSY]
        held = self.local.stamp_of(key)
        dist = self.dist
        for taken in (False, True):
            # before the cross-host lease, and once more after it: another host may have refreshed
            # and released it between our look at L2 and our take
            reply = await self._read_l2(key, recheck=True) if held is None else await self._newer_in_l2(key, held)
            if reply is not None:  # another host refreshed it already
                self.leases.finish(key, token, ("value", *reply[1:]))
                return reply
            if taken or dist is None:
                break
            if await self._l2(lambda _l2: dist.take(key)) is False:
                self.leases.pass_on(key, token)  # another host refreshes it
                return [Status.BUSY]
        return [*self._grant(key, token), hit.value if hit is not None else self._stale(key, fail_safe)]

    async def _newer_in_l2(self, key: str, held: int) -> Reply | None:
        """The reply for a fresh record of ``key`` in L2 newer than the stamp ``held`` (promoted), or None."""
        if self.l2 is None or not self.l2_up or self.backlog.covers(key):
            return None
        env = await self._l2(lambda l2: l2.get(key))
        if env is None or env.stamp <= held:
            return None
        return await self._read_l2(key, recheck=True)

    async def _lease(self, holder: Hashable, key: str, wait: float) -> Reply:
        deadline = time.monotonic() + wait
        got = self.leases.acquire(key, holder)
        if isinstance(got, bytes):
            token = got
        else:
            # asyncio.wait, not wait_for: since Python 3.12 wait_for drops a result that
            # arrives in the same loop step as the timeout, and a lease handed over then
            # would stay with a waiter that already answered TIMEOUT
            done, _ = await asyncio.wait({got}, timeout=wait)
            if not done:
                got.cancel()  # the registry skips it from now on
                self.counters["lease_timeouts"] += 1
                return [Status.TIMEOUT]
            outcome = got.result()
            if outcome[0] == "value":
                return [Status.OK, *outcome[1:]]
            if outcome[0] == "error":
                return [Status.COMPUTE_ERROR, *outcome[1:]]
            token = outcome[1]  # handed over: the holder died, ran out of time, or gave up
        reply = await self._read_l2(key)  # a write may have put the value there meanwhile
        if reply is not None:
            self.leases.finish(key, token, ("value", *reply[1:]))
            return reply
        return await self._take_cross_host(key, token, deadline)

    def _grant(self, key: str, token: bytes) -> Reply:
        version = self.local.version_of(key)
        if not self.leases.grant(key, token, version, self.clock.now()):
            return [Status.TIMEOUT]  # our caller went away meanwhile; nobody reads this
        return [Status.GRANTED, token, version]

    async def _take_cross_host(self, key: str, token: bytes, deadline: float) -> Reply:
        """This host's lease on ``key`` is ours: take the Redis lease too (when
        Redis is up), or wait for the host that holds it to fill L2. The local
        lease's TTL does not run meanwhile; the caller's deadline does."""
        dist = self.dist
        if dist is None:
            return self._grant(key, token)
        # handed over within this host: the new holder gets a full TTL
        if key in dist.held and await self._l2(lambda _l2: dist.renew(key)) is not False:
            return self._grant(key, token)
        delay = 0.02
        waited = False
        while True:
            taken = await self._l2(lambda _l2: dist.take(key))
            if not self.leases.is_holder(key, token):
                if taken and self.leases.get(key) is None:
                    self._lease_ended(key)  # the local lease is over: free the Redis one
                return [Status.TIMEOUT]  # our caller went away meanwhile; nobody reads this
            if taken:
                # another host may have filled and released between our L2 miss and
                # the take: look once more, or we would compute what L2 already holds
                reply = await self._read_l2(key, recheck=True)
                if reply is not None:
                    self.leases.finish(key, token, ("value", *reply[1:]))  # also frees the Redis lease
                    return reply
                self.counters["redis_leases_taken"] += 1  # counted when this host computes under it
            if taken is None or taken:  # None: Redis down, per-host lease only (degraded)
                return self._grant(key, token)
            if not waited:
                waited = True
                self.counters["cross_host_lease_waits"] += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.counters["lease_timeouts"] += 1
                self.leases.pass_on(key, token)  # the next local waiter tries, with its own deadline
                return [Status.TIMEOUT]
            # another host computes: woken by its fill notice, or poll as a back-up
            await dist.wait_for_fill(key, min(delay, remaining))
            delay = min(delay * 2, 0.5)
            reply = await self._read_l2(key, recheck=True)
            if reply is not None:
                self.leases.finish(key, token, ("value", *reply[1:]))
                return reply

    def _lease_ended(self, key: str) -> None:
        # the local lease ended without a fill (failure, or nobody left to take it
        # over): free the Redis lease so another host need not wait for its TTL
        dist = self.dist
        if dist is not None and key in dist.held:
            self._release_redis_lease(key)

    def _holder_alive(self, holder: Hashable) -> bool:
        return self.holder_alive(holder)

    def _lease_renewed(self, key: str) -> None:
        # the local holder still computes: keep the cross-host lease too, or another host would
        # take it over and compute a second time
        dist = self.dist
        if dist is not None and key in dist.held:
            self._spawn(self._renew_redis_lease(key))

    async def _renew_redis_lease(self, key: str) -> None:
        dist = self.dist
        assert dist is not None
        if await self._l2(lambda _l2: dist.renew(key)) is False:
            self.counters["redis_leases_lost"] += 1
            log.warning("the Redis lease on %r expired while its holder computed; another host may compute too", key)

    def _release_redis_lease(self, key: str) -> None:
        dist = self.dist
        assert dist is not None
        dist.held.discard(key)
        self._spawn(self._l2(lambda _l2: dist.release(key)))

    async def fill(
        self, key: str, token: bytes, value: bytes, ttl: float | None, stale_for: float = 0.0, store: bool = True,
        tags: list[str] | tuple[str, ...] = (),
    ) -> Reply:
        """A lease holder's computed value. Stored in L1 if the key's version did not
        move since the lease was granted (else a newer write wins), and in L2 with the
        stamp of the grant (so any write made after the grant, on any host, beats it);
        kept ``stale_for`` seconds past ``ttl`` for fail-safe; handed to every waiter.
        A fill that arrives after its lease passed on is accepted on the same terms.
        With ``store`` false the value only goes to the waiters (a result the caller
        does not want cached). A value with ``tags`` one of which was invalidated after its
        lease began is not stored either (it was computed from what that invalidation retired)."""
        self.counters["fills"] += 1
        tags = tuple(tags)
        if store and tags:
            await self._know_tags(tags)
        grant = self.leases.grant_of(token)
        lease = self.leases.get(key)
        current = lease is not None and lease.token == token
        if not store:
            self.leases.forget_grant(token)
            if current:
                # the waiters take it, but keep no copy of it (a TTL of zero)
                self.leases.finish(key, token, ("value", value, self.local.version_of(key), 0.0))
            return [Status.OK, self.local.version_of(key), False]
        if (grant is None or grant.key != key or grant.version != self.local.version_of(key)
                or self.tag_stamps.dead(tags, grant.stamp)):
            self.counters["fills_discarded"] += 1
            if current:
                newer = self.get_l1(key)
                if newer is not None:
                    self.leases.finish(key, token, ("value", *newer[1:]))
                else:
                    # the value predates a write (a delete, another host's set): waiters may
                    # have asked after that write, so none gets it; the next one computes
                    self.leases.pass_on(key, token)
            self.leases.forget_grant(token)
            return [Status.OK, self.local.version_of(key), False]
        self.leases.forget_grant(token)
        if not current:
            self.counters["fills_late"] += 1
        return await self._store_fill(key, value, ttl, grant.stamp, stale_for, lease, tags=tags)

    async def _store_fill(self, key: str, value: bytes, ttl: float | None, stamp: int, stale_for: float,
                          lease: Lease | None, *, renew: bool = False, tags: tuple[str, ...] = ()) -> Reply:
        """Store a computed value (see :meth:`fill`) and end ``key``'s lease with it."""
        ttl, l2_ttl = self.lifetimes(ttl)
        version = self.local.put(key, value, ttl, stamp, stale_for, tags)
        dist = self.dist
        cross_host = dist is not None and key in dist.held
        if dist is not None:
            dist.held.discard(key)  # released with the write below (so the lease's end does not)
        if lease is not None:  # its waiters (and a later holder's) take this value
            self.leases.finish(key, lease.token, ("value", value, version, ttl))
        age = time.time() - stamp_ms(stamp) / 1000
        if age >= self.settings.tombstone_ttl - self.settings.staleness_bound:
            # a tombstone of a delete made since the grant may be gone from Redis: L1 only
            if cross_host:
                self._release_redis_lease(key)
            return [Status.OK, version, True]

        def release(pipe: Any) -> None:
            if cross_host and dist is not None:
                dist.queue_release(pipe, key)

        # published also without a Redis lease: a fill may win over another host's concurrent set, which
        # that host must then drop (see invalidation.py)
        result = await self._write(Write(key, value, l2_ttl, stamp, stale_for=stale_for, renew=renew, tags=tags),
                                   publish="fill", extra=release, keep=False)
        if result is not None and result <= WriteResult.OLDER:
            # a newer write reached Redis first (another host's set, a delete, a clear)
            self.counters["fills_discarded"] += 1
            self.local.drop_if(key, stamp)
            return [Status.OK, self.local.version_of(key), False]
        return [Status.OK, version, True]

    async def fail(self, key: str, token: bytes, exc_type: str, message: str, throttle: float = 0.0) -> Reply:
        """The holder's function raised. Without ``throttle``, every waiter gets the error and
        nothing is cached. With it (fail-safe), the holder serves the stale value instead, and so does
        everyone: the stale value is made fresh again for ``throttle`` seconds, on every tier, so the
        failing source is not asked again meanwhile."""
        grant = self.leases.grant_of(token)
        self.leases.forget_grant(token)
        stale = self.local.stale(key, float("inf")) if throttle > 0 else None
        lease = self.leases.get(key)
        if stale is None or grant is None or grant.key != key or lease is None or lease.token != token:
            self.counters["compute_errors"] += 1
            self.leases.finish(key, token, ("error", exc_type, message))
            return [Status.OK]
        self.counters["fail_safe_activations"] += 1
        kept = max(0.0, (self.local.store.remaining_ttl(key) or 0.0))
        # with the stale value's own stamp: it is that old write made fresh again, never newer than a
        # write acknowledged since (which beats it in Redis, and on the hosts that have it)
        await self._store_fill(key, stale.value, throttle, stale.stamp, kept, lease, renew=True,
                               tags=self.local.tags.tags_of(key))
        return [Status.OK]

    def release(self, key: str, token: bytes) -> Reply:
        """The holder gives its lease up without a value or an error (it was cancelled
        or interrupted): the next waiter computes; nobody receives an error."""
        self.counters["lease_releases"] += 1
        self.leases.forget_grant(token)
        self.leases.pass_on(key, token)
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
        mirror = self.local.mirror
        return {
            "l1": self.local.store.stats().as_dict(),
            **self.counters,
            "leases_granted": leases.granted,
            "coalesced": leases.coalesced,
            "lease_handovers": leases.handovers,
            "leases_expired": leases.expired,
            "leases_renewed": leases.renewed,
            "inflight_leases": leases.inflight,
            "l2": self.l2.stats() if self.l2 is not None else {},
            **(self.inval.stats() if self.inval is not None else {}),
            "mirror": mirror.stats() if mirror is not None else {},
            "l2_write_batches": self.writes.batches if self.writes is not None else 0,
            "l2_writes": self.writes.writes if self.writes is not None else 0,
            "l2_backlog": len(self.backlog),
            "l2_backlog_bytes": self.backlog.bytes,
            "l2_backlog_overflowed": self.backlog.overflowed,
            "l2_backlog_dropped": self.backlog.dropped,
            "l2_down_periods": [list(period) for period in self.down_periods],
        }

    def health(self) -> dict[str, Any]:
        """Liveness and mode, as plain data for the wire. ``mode`` is ``"ok"`` only
        while Redis answers and the stream reader reads."""
        redis = self.redis_state
        failure = self.redis_failure if redis == "down" else None
        reader = self.inval.state if self.inval is not None else "disabled"
        warnings = []
        if self.eviction_policy and self.eviction_policy.startswith("allkeys"):
            warnings.append(f"Redis maxmemory-policy {self.eviction_policy} may evict mtcache's tombstones and "
                            f"stream; use volatile-lru or volatile-ttl")
        for permission, consequence in self.missing_permissions.items():
            warnings.append(f"the ACL user lacks {permission}: {consequence}")
        if self.backlog.overflowed:
            warnings.append("the outage backlog overflowed: the namespace will be cleared on reconnect")
        return {
            "coordinator": "ok",
            "redis": redis,
            "stream_reader": reader,
            "stream_reader_lag_ms": round(self.inval.lag_ms, 3) if self.inval is not None else None,
            "mode": "ok" if redis == "ok" and reader == "connected" else "degraded",
            "pid": os.getpid(),
            "uptime": time.monotonic() - self._started,
            "namespace": self.settings.namespace,
            "redis_url": self.settings.redacted_redis_url if self.l2 is not None else None,
            "clock_skew_ms": None if self.skew_ms is None else round(self.skew_ms, 3),
            "redis_eviction_policy": self.eviction_policy,
            # why Redis is not used: "auth", "permission", "tls", "unreachable" or "error", and a line saying what
            # to check
            "redis_failure": failure.kind if failure is not None else None,
            "redis_reason": failure.reason if failure is not None else None,
            "warnings": warnings,
        }
