"""Stampede leases: at most one computation per key on this host, and across hosts.

:class:`LeaseRegistry` (this host). A lease is taken by one connection for one
key. Every other ``LEASE`` request for that key while the lease is held becomes
a waiter. The holder ends the lease with a fill (every waiter receives the
value) or a failure (every waiter receives the error), or gives it up (the next
waiter takes it). If the holder's connection closes, or the lease runs past its
TTL, the lease passes to the oldest waiter still waiting, with a new token, so a
dead or hung holder costs the others at most one lease TTL. The TTL starts when
the lease is *granted* (handed to the worker to compute), not while the
coordinator is still waiting for another host's lease on the caller's behalf.

Each grant is remembered with the key's version and the stamp of the moment it
was granted: a fill is judged against them (a write after the grant wins), also
a fill that arrives after the lease passed on.

:class:`DistributedLeases` (across hosts): ``SET <prefix>lease:<key> <owner> NX
PX <ttl>``, held by the host on behalf of its local holder.

Outcomes delivered to waiters (the result of their future):

* ``("value", value_bytes, version, ttl)``
* ``("granted", token)`` — the waiter now holds the lease (not yet granted: see :meth:`LeaseRegistry.grant`)
* ``("error", exc_type, message)``
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from mtcache.coordinator.l2 import L2Tier

__all__ = ["DistributedLeases", "Grant", "Lease", "LeaseRegistry", "LeaseStats"]

Outcome = tuple[Any, ...]


@dataclass(eq=False)
class Lease:
    """One key's lease: who holds it, who waits."""

    key: str
    token: bytes
    holder: Hashable
    timer: asyncio.TimerHandle | None = None
    granted_at: float = 0.0
    alive_at: float = 0.0
    waiters: deque[tuple[Hashable, asyncio.Future[Outcome]]] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease handed to a worker to compute: the key's version and the stamp at that moment."""

    key: str
    version: int
    stamp: int
    at: float


@dataclass(frozen=True, slots=True)
class LeaseStats:
    """Counters of the registry (a snapshot)."""

    granted: int
    coalesced: int
    handovers: int
    expired: int
    inflight: int
    renewed: int = 0


class LeaseRegistry:
    """Per-host lease registry (single-threaded: used from the event loop only).

    ``on_end(key)`` is called whenever a key's lease ends (filled, failed, or
    nobody left to hand it to); ``on_renew(key)`` whenever a granted lease is
    renewed for a holder still computing (the cross-host lease follows it);
    ``alive(holder)`` says whether a holder still lives (see the module docstring).
    """

    def __init__(
        self,
        lease_ttl: float,
        on_end: Callable[[str], None] | None = None,
        *,
        lease_max: float | None = None,
        alive: Callable[[Hashable], bool] = lambda _holder: True,
        on_renew: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not lease_ttl > 0:
            raise ValueError(f"lease_ttl must be positive, got {lease_ttl!r}")
        self.lease_ttl = lease_ttl
        self.lease_max = lease_ttl if lease_max is None else lease_max
        self._on_end = on_end
        self._on_renew = on_renew
        self._alive = alive
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._by_holder: dict[Hashable, set[str]] = {}
        self._grants: dict[bytes, Grant] = {}
        self._granted = 0
        self._coalesced = 0
        self._handovers = 0
        self._expired = 0
        self._renewed = 0

    def get(self, key: str) -> Lease | None:
        """The lease held on ``key``, if any."""
        return self._leases.get(key)

    def acquire(self, key: str, holder: Hashable) -> bytes | asyncio.Future[Outcome]:
        """Give the lease on ``key`` to ``holder`` (returns the token; :meth:`grant` it
        once the caller may compute), or, if one is held, register ``holder`` as a
        waiter (returns a future of its outcome).

        A waiter that stops waiting cancels its future; the lease then skips it.
        """
        lease = self._leases.get(key)
        if lease is None:
            self._granted += 1
            token = secrets.token_bytes(16)
            lease = Lease(key, token, holder)
            self._leases[key] = lease
            self._hold(lease, holder)
            return token
        self._coalesced += 1
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        lease.waiters.append((holder, fut))
        return fut

    def try_acquire(self, key: str, holder: Hashable) -> bytes | None:
        """The lease on ``key`` for ``holder`` (its token) if nobody holds it, else None: never waits."""
        if key in self._leases:
            return None
        token = self.acquire(key, holder)
        assert isinstance(token, bytes)
        return token

    def grant(self, key: str, token: bytes, version: int, stamp: int) -> bool:
        """The holder of ``token`` starts computing: its TTL starts now, and the grant
        (``version``, ``stamp``) is remembered for its fill. False for a stale token."""
        lease = self._leases.get(key)
        if lease is None or lease.token != token:
            return False
        now = self._clock()
        lease.granted_at = lease.alive_at = now
        self._arm(lease)
        self._grants[token] = Grant(key, version, stamp, now)
        return True

    def _arm(self, lease: Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
        lease.timer = asyncio.get_running_loop().call_later(self.lease_ttl / 3, self._check, lease.key, lease.token)

    def grant_of(self, token: bytes) -> Grant | None:
        """The grant of ``token`` (also after its lease passed on), until it is used or pruned."""
        return self._grants.get(token)

    def forget_grant(self, token: bytes) -> None:
        """``token``'s fill or failure arrived: its grant is used."""
        self._grants.pop(token, None)

    def prune_grants(self, older_than: float) -> int:
        """Forget grants made more than ``older_than`` seconds ago (a fill that late is not
        accepted); the number forgotten."""
        limit = self._clock() - older_than
        old = [token for token, grant in self._grants.items() if grant.at < limit]
        for token in old:
            del self._grants[token]
        return len(old)

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

    def _check(self, key: str, token: bytes) -> None:
        # the lease timer, every third of the TTL: renew for a holder that lives, else expire
        lease = self._leases.get(key)
        if lease is None or lease.token != token:
            return
        lease.timer = None
        now = self._clock()
        if self._alive(lease.holder):
            lease.alive_at = now
        if now - lease.granted_at < self.lease_max and now - lease.alive_at < self.lease_ttl:
            self._renewed += 1
            if self._on_renew is not None:
                self._on_renew(key)
            self._arm(lease)
            return
        self._expired += 1
        self._handover(lease)

    def _handover(self, lease: Lease) -> None:
        self._release(lease)
        while lease.waiters:
            holder, fut = lease.waiters.popleft()
            if fut.done():
                continue
            self._handovers += 1
            lease.holder = holder
            lease.token = secrets.token_bytes(16)
            self._hold(lease, holder)
            fut.set_result(("granted", lease.token))
            return
        self._end(lease)

    def _hold(self, lease: Lease, holder: Hashable) -> None:
        self._by_holder.setdefault(holder, set()).add(lease.key)

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

    def waiting(self) -> int:
        """Callers waiting now for a lease held by another."""
        return sum(1 for lease in self._leases.values() for _, fut in lease.waiters if not fut.done())

    def stats(self) -> LeaseStats:
        """A snapshot of the counters."""
        return LeaseStats(self._granted, self._coalesced, self._handovers, self._expired, len(self._leases),
                          self._renewed)


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
    Every Redis call goes through :meth:`L2Tier.run`: a failure is an
    :class:`~mtcache.errors.L2Error`, as on every other L2 path.

    It also keeps which keys this host holds a Redis lease for, and who waits for
    another host's fill of a key (woken by the fill notice on the stream).
    """

    def __init__(self, l2: L2Tier, owner: str, ttl: float) -> None:
        self.l2 = l2
        self.owner = owner
        self.ttl_ms = max(1, round(ttl * 1000))
        self.held: set[str] = set()
        self._waiting: dict[str, set[asyncio.Event]] = {}

    def key(self, key: str) -> str:
        """The Redis key of ``key``'s lease (in the slot of its record on a cluster, see
        :class:`~mtcache.coordinator.l2.Layout`)."""
        return self.l2.layout.lease(key)

    async def take(self, key: str) -> bool:
        """Take the lease if nobody holds it (one round trip). Counted as held
        before the round trip: if the caller is cancelled while the ``SET NX`` is in
        flight, the lease's end still releases it (the release only deletes a lease
        this host owns).

        :raises L2Error: Redis failed.
        """
        self.held.add(key)
        try:
            taken = bool(await self.l2.run("lease", self.l2.redis.set(self.key(key), self.owner, nx=True,
                                                                      px=self.ttl_ms)))
        except BaseException:
            self.held.discard(key)
            raise
        if not taken:
            self.held.discard(key)
        return taken

    async def renew(self, key: str) -> bool:
        """Give a new local holder a full TTL; False (and no longer held) if the
        lease is not ours any more.

        :raises L2Error: Redis failed.
        """
        renewed = bool(await self.l2.run("lease", self.l2.redis.eval(_RENEW, 1, self.key(key), self.owner,
                                                                      self.ttl_ms)))
        if not renewed:
            self.held.discard(key)
        return renewed

    def queue_release(self, pipe: Any, key: str) -> None:
        """Queue the release of ``key``'s lease (if still ours) into ``pipe``."""
        self.held.discard(key)
        pipe.eval(_RELEASE, 1, self.key(key), self.owner)

    async def release(self, key: str) -> None:
        """Release ``key``'s lease now, if still ours.

        :raises L2Error: Redis failed (the lease then expires by its TTL).
        """
        await self.l2.pipeline("release", lambda pipe: self.queue_release(pipe, key))

    async def wait_for_fill(self, key: str, timeout: float) -> None:
        """Wait until another host's fill notice for ``key`` arrives, or ``timeout`` passes."""
        event = asyncio.Event()
        waiting = self._waiting.setdefault(key, set())
        waiting.add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            waiting.discard(event)
            if not waiting and self._waiting.get(key) is waiting:
                del self._waiting[key]

    def filled(self, key: str) -> None:
        """Another host filled ``key``: wake whoever waits for it."""
        for event in self._waiting.pop(key, ()):
            event.set()
