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
from mtcache.coordinator.l2 import Envelope, L2Tier
from mtcache.coordinator.leases import LeaseRegistry
from mtcache.coordinator.store import L1Store
from mtcache.errors import L2Error
from mtcache.protocol import Status
from mtcache.shm import VersionTable

__all__ = ["CacheEngine"]

log = logging.getLogger("mtcache.coordinator")
T = TypeVar("T")
Reply = list[Any]


class CacheEngine:
    """L1 → L2 read-through, write-through sets, stampede leases, version bumps.

    ``l2`` is None when the coordinator runs without Redis. When Redis fails, the
    engine marks it down, serves from L1 alone (``mode`` = degraded) and pings it
    in the background until it answers again.
    """

    def __init__(self, settings: Settings, table: VersionTable, l2: L2Tier | None) -> None:
        self.settings = settings
        self.table = table
        self.l2 = l2
        self.l2_up = False
        self.store = L1Store(
            capacity=settings.l1_capacity,
            max_bytes=settings.l1_max_bytes,
            default_ttl=settings.l1_ttl,
            on_remove=self._on_remove,
        )
        self.leases = LeaseRegistry(settings.lease_ttl, self.version_of)
        # L2 writes go one at a time so that two sets of one key reach Redis in the
        # order they reached L1 (a connection pool would otherwise reorder them).
        self._l2_write_lock = asyncio.Lock()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self.counters: dict[str, int] = dict.fromkeys(
            ("l2_hits", "l2_misses", "promotions", "l2_errors", "l2_skipped", "sets", "deletes", "clears",
             "fills", "fills_discarded", "compute_errors", "lease_timeouts"),
            0,
        )

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Check Redis once; if it does not answer, start degraded and keep trying."""
        if self.l2 is None:
            return
        if await self.l2.ping():
            self.l2_up = True
        else:
            log.warning("Redis at %s does not answer; serving L1 only until it does", self.settings.redacted_redis_url)
            self._start_reconnect()

    async def close(self) -> None:
        """Stop background work and close the Redis connection."""
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        if self.l2 is not None:
            await self.l2.aclose()

    def sweep(self) -> int:
        """Drop expired L1 entries (called periodically by the server)."""
        return self.store.sweep()

    # -- versions -----------------------------------------------------------

    def version_of(self, key: str) -> int:
        """The key's current version counter."""
        table = self.table
        return table.get(table.slot(key))

    def _on_remove(self, key: str, reason: str) -> None:
        self.table.bump_key(key)

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

    def _start_reconnect(self) -> None:
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        assert self.l2 is not None
        delay = 0.05
        while not await self.l2.ping():
            await asyncio.sleep(delay)  # backoff between reconnect attempts
            delay = min(delay * 2, 2.0)
        self.l2_up = True
        log.info("Redis at %s answers again", self.settings.redacted_redis_url)

    # -- reads --------------------------------------------------------------

    def get_l1(self, key: str) -> Reply | None:
        """The reply for an L1 hit, or None."""
        value = self.store.get(key)
        if value is None:
            return None
        return [Status.OK, value, self.version_of(key), self.store.remaining_ttl(key) or 0.0]

    def _usable(self, found: tuple[Envelope, float] | None) -> tuple[bytes, float] | None:
        if found is None:
            self.counters["l2_misses"] += 1
            return None
        env, remaining = found
        logical_left = env.logical_expiry_ms / 1000.0 - time.time()
        ttl = min(remaining, logical_left)
        if ttl <= 0:
            self.counters["l2_misses"] += 1
            return None
        self.counters["l2_hits"] += 1
        return env.value, ttl

    async def _read_l2(self, key: str) -> Reply | None:
        """Read ``key`` from L2 and promote it into L1 if no write raced the read.

        Returns the reply for a hit, None for a miss. If a set or delete of the key
        happened while the read was in flight, the L1 state (newer) wins.
        """
        if self.l2 is None or not self.l2_up:
            return None
        before = self.version_of(key)
        found = self._usable(await self._l2(lambda l2: l2.get(key)))
        if found is None:
            return None
        if self.version_of(key) != before:
            return self.get_l1(key)
        value, ttl = found
        if self.store.set(key, value, min(ttl, self.settings.l1_ttl)):
            self.counters["promotions"] += 1
        return [Status.OK, value, before, ttl]

    async def get_miss(self, key: str) -> Reply:
        """After an L1 miss (see :meth:`get_l1`): L2, promoting a hit, else a miss."""
        reply = await self._read_l2(key)
        return reply if reply is not None else [Status.MISS, self.version_of(key)]

    # -- writes -------------------------------------------------------------

    async def set(self, key: str, value: bytes, ttl: float) -> Reply:
        """Store in L1 (bumping the version before the ack) and in L2."""
        self.counters["sets"] += 1
        self.store.set(key, value, min(ttl, self.settings.l1_ttl))
        version = self.table.bump_key(key)
        async with self._l2_write_lock:
            await self._l2(lambda l2: l2.set(key, value, ttl))
        return [Status.OK, version]

    async def delete(self, key: str) -> Reply:
        """Remove from L1 and L2; the reply says whether either held the key."""
        self.counters["deletes"] += 1
        existed = self.store.delete(key)
        self.table.bump_key(key)
        async with self._l2_write_lock:
            removed = await self._l2(lambda l2: l2.delete(key))
        return [Status.OK, bool(existed or removed)]

    async def clear(self) -> Reply:
        """Empty L1 and this namespace in L2; every version moves on."""
        self.counters["clears"] += 1
        removed = self.store.clear()
        self.table.bump_all()
        async with self._l2_write_lock:
            removed += await self._l2(lambda l2: l2.clear()) or 0
        return [Status.OK, removed]

    # -- leases -------------------------------------------------------------

    async def lease_miss(self, holder: Hashable, key: str, wait: float) -> Reply:
        """After an L1 miss (see :meth:`get_l1`): take the key's lease (and read L2
        as its holder, so one L2 read serves every waiter) or wait for its holder."""
        start = self.version_of(key)
        got = self.leases.acquire(key, holder, start)
        if isinstance(got, bytes):
            reply = await self._read_l2(key)
            if reply is None:
                return [Status.GRANTED, got, start]
            self.leases.finish(key, got, ("value", *reply[1:]))
            return reply
        try:
            outcome = await asyncio.wait_for(got, wait)
        except TimeoutError:
            self.counters["lease_timeouts"] += 1
            return [Status.TIMEOUT]
        kind = outcome[0]
        if kind == "value":
            return [Status.OK, *outcome[1:]]
        if kind == "granted":
            return [Status.GRANTED, *outcome[1:]]
        return [Status.COMPUTE_ERROR, *outcome[1:]]

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
            outcome = ("value", *newer[1:]) if newer else ("value", value, current, ttl)
            self.leases.finish(key, token, outcome)
            return [Status.OK, current, False]
        self.store.set(key, value, min(ttl, self.settings.l1_ttl))
        self.leases.finish(key, token, ("value", value, current, ttl))
        async with self._l2_write_lock:
            await self._l2(lambda l2: l2.set_nx(key, value, ttl))
        return [Status.OK, current, True]

    def fail(self, key: str, token: bytes, exc_type: str, message: str) -> Reply:
        """The holder's function raised: every waiter gets the error; nothing is cached."""
        self.counters["compute_errors"] += 1
        self.leases.finish(key, token, ("error", exc_type, message))
        return [Status.OK]

    def drop_holder(self, holder: Hashable) -> None:
        """A connection closed: pass on the leases it held."""
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
