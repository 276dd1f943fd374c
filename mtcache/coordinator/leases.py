"""The stampede registry: at most one computation per key on this host.

A lease is granted to one connection for one key. Every other ``LEASE`` request
for that key while the lease is held becomes a waiter. The holder ends the
lease with a fill (every waiter receives the value) or a failure (every waiter
receives the error). If the holder's connection closes, or the lease runs past
its TTL, the lease passes to the oldest waiter still waiting, with a new token,
so a dead or hung holder costs the others at most one lease TTL.

Outcomes delivered to waiters (the result of their future):

* ``("value", value_bytes, version, ttl)``
* ``("granted", token, version)`` — the waiter now holds the lease
* ``("error", exc_type, message)``
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Lease", "LeaseRegistry", "LeaseStats"]

Outcome = tuple[Any, ...]


@dataclass(eq=False)
class Lease:
    """One key's lease: who holds it, since which version, who waits."""

    key: str
    token: bytes
    holder: Hashable
    version: int
    timer: asyncio.TimerHandle | None = None
    waiters: deque[tuple[Hashable, asyncio.Future[Outcome]]] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class LeaseStats:
    """Counters of the registry (a snapshot)."""

    granted: int
    coalesced: int
    handovers: int
    expired: int
    inflight: int


class LeaseRegistry:
    """Per-host lease registry (single-threaded: used from the event loop only).

    ``version_of(key)`` gives a key's current version; a lease handed over starts
    from the version current at the handover. ``on_end(key)`` is called whenever
    a key's lease ends (filled, failed, or nobody left to hand it to).
    """

    def __init__(
        self,
        lease_ttl: float,
        version_of: Callable[[str], int],
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        if not lease_ttl > 0:
            raise ValueError(f"lease_ttl must be positive, got {lease_ttl!r}")
        self.lease_ttl = lease_ttl
        self._version_of = version_of
        self._on_end = on_end
        self._leases: dict[str, Lease] = {}
        self._by_holder: dict[Hashable, set[str]] = {}
        self._granted = 0
        self._coalesced = 0
        self._handovers = 0
        self._expired = 0

    def get(self, key: str) -> Lease | None:
        """The lease held on ``key``, if any."""
        return self._leases.get(key)

    def acquire(self, key: str, holder: Hashable, version: int) -> bytes | asyncio.Future[Outcome]:
        """Grant a lease on ``key`` to ``holder`` (returns the token), or, if one is
        held, register ``holder`` as a waiter (returns a future of its outcome).

        A waiter that stops waiting cancels its future; the lease then skips it.
        """
        lease = self._leases.get(key)
        if lease is None:
            self._granted += 1
            token = secrets.token_bytes(16)
            lease = Lease(key, token, holder, version)
            self._leases[key] = lease
            self._hold(lease, holder)
            return token
        self._coalesced += 1
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        lease.waiters.append((holder, fut))
        return fut

    def is_holder(self, key: str, token: bytes) -> bool:
        """True if ``token`` is the current token of ``key``'s lease."""
        lease = self._leases.get(key)
        return lease is not None and lease.token == token

    def finish(self, key: str, token: bytes, outcome: Outcome) -> Lease | None:
        """End ``key``'s lease if ``token`` is current and deliver ``outcome`` to every
        waiter. Returns the ended lease, or None (stale token: nothing changes)."""
        lease = self._leases.get(key)
        if lease is None or lease.token != token:
            return None
        self._end(lease)
        while lease.waiters:
            _, fut = lease.waiters.popleft()
            if not fut.done():
                fut.set_result(outcome)
        return lease

    def pass_on(self, key: str, token: bytes) -> None:
        """The holder of ``token`` gives the lease up without a value: the next
        waiter gets it (or the lease ends). A stale token changes nothing."""
        lease = self._leases.get(key)
        if lease is not None and lease.token == token:
            self._handover(lease)

    def drop_waiter(self, holder: Hashable) -> None:
        """``holder`` went away: cancel its waits at once, so that a handover in the
        same loop step cannot grant it a lease it will never fill."""
        for lease in self._leases.values():
            for waiter, fut in lease.waiters:
                if waiter == holder and not fut.done():
                    fut.cancel()

    def drop_holder(self, holder: Hashable) -> None:
        """``holder`` went away: pass each lease it holds to the next waiter."""
        for key in list(self._by_holder.get(holder, ())):
            lease = self._leases.get(key)
            if lease is not None and lease.holder == holder:
                self._handover(lease)

    def _expire(self, key: str, token: bytes) -> None:
        # the lease timer: the holder ran past the TTL
        lease = self._leases.get(key)
        if lease is not None and lease.token == token:
            self._expired += 1
            self._handover(lease)

    def _handover(self, lease: Lease) -> None:
        self._release(lease)
        version = self._version_of(lease.key)
        while lease.waiters:
            holder, fut = lease.waiters.popleft()
            if fut.done():
                continue
            self._handovers += 1
            lease.holder = holder
            lease.token = secrets.token_bytes(16)
            lease.version = version
            self._hold(lease, holder)
            fut.set_result(("granted", lease.token, version))
            return
        self._end(lease)

    def _hold(self, lease: Lease, holder: Hashable) -> None:
        self._by_holder.setdefault(holder, set()).add(lease.key)
        loop = asyncio.get_running_loop()
        lease.timer = loop.call_later(self.lease_ttl, self._expire, lease.key, lease.token)

    def _release(self, lease: Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        keys = self._by_holder.get(lease.holder)
        if keys is not None:
            keys.discard(lease.key)
            if not keys:
                del self._by_holder[lease.holder]

    def _end(self, lease: Lease) -> None:
        self._release(lease)
        if self._leases.get(lease.key) is lease:
            del self._leases[lease.key]
            if self._on_end is not None:
                self._on_end(lease.key)

    def stats(self) -> LeaseStats:
        """A snapshot of the counters."""
        return LeaseStats(self._granted, self._coalesced, self._handovers, self._expired, len(self._leases))


# KEYS: lease key; ARGV: owner. Deletes the lease only if this owner still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# KEYS: lease key; ARGV: owner, ttl ms. Extends the lease only if this owner holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class DistributedLeases:
    """The cross-host half: ``SET <prefix>lease:<key> <owner> NX PX <ttl>``.

    The owner is the coordinator's origin id: the host holds the Redis lease on
    behalf of whichever local caller holds the local lease, so a local handover
    (a worker died) keeps it. Release is a compare-and-delete script, so a
    coordinator never deletes a lease that expired and was taken by another host.
    """

    def __init__(self, prefix: str, owner: str, ttl: float) -> None:
        self.prefix = prefix + "lease:"
        self.owner = owner
        self.ttl_ms = max(1, round(ttl * 1000))

    def key(self, key: str) -> str:
        """The Redis key of ``key``'s lease."""
        return self.prefix + key

    async def try_take(self, redis: Any, key: str) -> bool:
        """Take the lease if nobody holds it (one round trip on ``redis``)."""
        return bool(await redis.set(self.key(key), self.owner, nx=True, px=self.ttl_ms))

    async def renew(self, redis: Any, key: str) -> bool:
        """Give the new local holder a full TTL (a handover within this host)."""
        return bool(await redis.eval(_RENEW, 1, self.key(key), self.owner, self.ttl_ms))

    def queue_release(self, pipe: Any, key: str) -> None:
        """Queue the release of ``key``'s lease (if still ours) into ``pipe``."""
        pipe.eval(_RELEASE, 1, self.key(key), self.owner)
