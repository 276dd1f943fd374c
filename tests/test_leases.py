"""The stampede registry on its own, in an event loop."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from mtcache.coordinator.leases import Lease, LeaseRegistry, LeaseStats

#: long enough that no lease expires during a test that does not ask for it
LONG = 60.0
#: how long a test waits for an outcome that must come (a failure, never a pause)
WAIT = 5.0


def _registry(ttl: float = LONG) -> LeaseRegistry:
    return LeaseRegistry(ttl)


def _granted(reg: LeaseRegistry, key: str, got: Any) -> bytes:
    """The caller holding ``got`` starts computing (the lease TTL starts)."""
    token = _token(got)
    assert reg.grant(key, token, 0, 0)
    return token


def _token(got: Any) -> bytes:
    assert isinstance(got, bytes), got
    return got


def _waiter(got: Any) -> asyncio.Future[Any]:
    assert isinstance(got, asyncio.Future), got
    return got


async def _outcome(fut: asyncio.Future[Any]) -> Any:
    return await asyncio.wait_for(asyncio.shield(fut), WAIT)


@pytest.mark.parametrize("ttl", [0, -1.0, math.nan])
def test_lease_ttl_must_be_positive(ttl: float) -> None:
    with pytest.raises(ValueError, match="lease_ttl"):
        LeaseRegistry(ttl)


async def test_first_caller_gets_the_lease() -> None:
    reg = _registry()
    token = _token(reg.acquire("k", "a"))
    assert len(token) == 16
    lease = reg.get("k")
    assert isinstance(lease, Lease)
    assert (lease.key, lease.holder, lease.token) == ("k", "a", token)
    assert reg.grant_of(token) is None  # not granted yet
    assert reg.grant("k", token, 4, 77)
    grant = reg.grant_of(token)
    assert grant is not None and (grant.key, grant.version, grant.stamp) == ("k", 4, 77)
    assert reg.is_holder("k", token)
    assert not reg.is_holder("k", b"x" * 16)
    assert not reg.is_holder("other", token)
    assert reg.get("other") is None


async def test_leases_on_different_keys_are_independent() -> None:
    reg = _registry()
    t1 = _token(reg.acquire("k1", "a"))
    t2 = _token(reg.acquire("k2", "b"))
    assert t1 != t2
    assert reg.is_holder("k1", t1) and reg.is_holder("k2", t2)


async def test_waiters_get_the_fill_outcome() -> None:
    reg = _registry()
    token = _token(reg.acquire("k", "a"))
    w1 = _waiter(reg.acquire("k", "b"))
    w2 = _waiter(reg.acquire("k", "c"))
    assert not w1.done() and not w2.done()
    outcome = ("value", b"v", 1, 10.0)
    lease = reg.finish("k", token, outcome)
    assert isinstance(lease, Lease) and lease.key == "k"
    assert await _outcome(w1) == outcome
    assert await _outcome(w2) == outcome
    assert reg.get("k") is None
    assert not reg.is_holder("k", token)


async def test_waiters_get_the_failure_outcome() -> None:
    reg = _registry()
    token = _token(reg.acquire("k", "a"))
    waiter = _waiter(reg.acquire("k", "b"))
    outcome = ("error", "ValueError", "boom")
    assert reg.finish("k", token, outcome) is not None
    assert await _outcome(waiter) == outcome
    assert reg.get("k") is None


async def test_after_finish_the_next_caller_gets_a_new_lease() -> None:
    reg = _registry()
    token = _token(reg.acquire("k", "a"))
    reg.finish("k", token, ("value", b"v", 0, 1.0))
    again = _token(reg.acquire("k", "b"))
    assert again != token
    lease = reg.get("k")
    assert lease is not None and lease.holder == "b"


async def test_finish_with_a_stale_token_changes_nothing() -> None:
    reg = _registry()
    token = _token(reg.acquire("k", "a"))
    waiter = _waiter(reg.acquire("k", "b"))
    assert reg.finish("k", b"stale-token-0000", ("value", b"v", 0, 1.0)) is None
    assert reg.finish("other", token, ("value", b"v", 0, 1.0)) is None
    assert not waiter.done()
    assert reg.is_holder("k", token)
    assert reg.finish("k", token, ("value", b"v", 0, 1.0)) is not None
    assert (await _outcome(waiter))[0] == "value"


async def test_drop_holder_hands_the_lease_to_the_next_waiter() -> None:
    reg = _registry()
    old = _token(reg.acquire("k", "a"))
    w_b = _waiter(reg.acquire("k", "b"))
    w_c = _waiter(reg.acquire("k", "c"))
    reg.drop_holder("a")
    kind, new = await _outcome(w_b)
    assert kind == "granted"
    assert isinstance(new, bytes) and new != old
    assert not reg.is_holder("k", old)
    assert reg.is_holder("k", new)
    lease = reg.get("k")
    assert lease is not None and lease.holder == "b"
    assert not w_c.done()
    # the old holder's late fill is ignored; the new holder's reaches "c"
    assert reg.finish("k", old, ("value", b"late", 0, 1.0)) is None
    assert not w_c.done()
    assert reg.finish("k", new, ("value", b"v", 9, 1.0)) is not None
    assert await _outcome(w_c) == ("value", b"v", 9, 1.0)


async def test_drop_holder_without_waiters_ends_the_lease() -> None:
    reg = _registry()
    token = _token(reg.acquire("k", "a"))
    reg.drop_holder("a")
    assert reg.get("k") is None
    assert not reg.is_holder("k", token)
    assert isinstance(reg.acquire("k", "b"), bytes)
    assert reg.stats().handovers == 0


async def test_drop_holder_passes_on_every_lease_it_held() -> None:
    reg = _registry()
    _token(reg.acquire("k1", "a"))
    _token(reg.acquire("k2", "a"))
    _token(reg.acquire("k3", "b"))
    w1 = _waiter(reg.acquire("k1", "c"))
    w3 = _waiter(reg.acquire("k3", "c"))
    reg.drop_holder("a")
    assert (await _outcome(w1))[0] == "granted"
    assert reg.get("k2") is None
    lease3 = reg.get("k3")
    assert lease3 is not None and lease3.holder == "b"
    assert not w3.done()


async def test_drop_of_a_holder_that_holds_nothing_is_a_no_op() -> None:
    reg = _registry()
    token = _token(reg.acquire("k", "a"))
    waiter = _waiter(reg.acquire("k", "b"))
    reg.drop_holder("b")  # a waiter, not the holder
    reg.drop_holder("nobody")
    assert reg.is_holder("k", token)
    assert not waiter.done()


async def test_new_holder_that_goes_away_hands_on_again() -> None:
    reg = _registry()
    _token(reg.acquire("k", "a"))
    w_b = _waiter(reg.acquire("k", "b"))
    w_c = _waiter(reg.acquire("k", "c"))
    reg.drop_holder("a")
    assert (await _outcome(w_b))[0] == "granted"
    reg.drop_holder("b")
    kind, token = await _outcome(w_c)
    assert kind == "granted"
    assert reg.is_holder("k", token)
    assert reg.stats().handovers == 2


async def test_cancelled_waiters_are_skipped() -> None:
    reg = _registry()
    _token(reg.acquire("k", "a"))
    w_b = _waiter(reg.acquire("k", "b"))
    w_c = _waiter(reg.acquire("k", "c"))
    w_b.cancel()
    reg.drop_holder("a")
    kind, token = await _outcome(w_c)
    assert kind == "granted"
    lease = reg.get("k")
    assert lease is not None and lease.holder == "c" and lease.token == token
    assert reg.stats().handovers == 1


async def test_lease_ends_when_every_waiter_cancelled() -> None:
    reg = _registry()
    _token(reg.acquire("k", "a"))
    waiter = _waiter(reg.acquire("k", "b"))
    waiter.cancel()
    reg.drop_holder("a")
    assert reg.get("k") is None
    assert reg.stats().handovers == 0


async def test_finish_skips_cancelled_waiters() -> None:
    reg = _registry()
    token = _token(reg.acquire("k", "a"))
    w_b = _waiter(reg.acquire("k", "b"))
    w_c = _waiter(reg.acquire("k", "c"))
    w_b.cancel()
    reg.finish("k", token, ("value", b"v", 0, 1.0))
    assert w_b.cancelled()
    assert await _outcome(w_c) == ("value", b"v", 0, 1.0)


async def test_lease_ttl_expiry_hands_over() -> None:
    reg = _registry(ttl=0.05)
    old = _granted(reg, "k", reg.acquire("k", "a"))
    waiter = _waiter(reg.acquire("k", "b"))
    kind, new = await _outcome(waiter)
    assert kind == "granted"
    assert new != old
    assert not reg.is_holder("k", old)
    assert reg.is_holder("k", new)
    stats = reg.stats()
    assert (stats.expired, stats.handovers, stats.inflight) == (1, 1, 1)
    # the holder that ran past its lease cannot fill any more
    assert reg.finish("k", old, ("value", b"late", 0, 1.0)) is None


async def test_a_lease_not_yet_granted_does_not_expire() -> None:
    # review finding: the local lease timer ran while the host waited for another host's
    # Redis lease, and the caller got CacheTimeout long before its own timeout
    reg = _registry(ttl=0.05)
    token = _token(reg.acquire("k", "a"))
    waiter = _waiter(reg.acquire("k", "b"))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(waiter), 0.3)
    assert reg.is_holder("k", token)
    assert reg.stats().expired == 0
    assert reg.grant("k", token, 0, 0)
    assert (await _outcome(waiter))[0] == "granted"


async def test_handed_over_lease_expires_again() -> None:
    reg = _registry(ttl=0.05)
    _granted(reg, "k", reg.acquire("k", "a"))
    w_b = _waiter(reg.acquire("k", "b"))
    w_c = _waiter(reg.acquire("k", "c"))
    kind, b_token = await _outcome(w_b)
    assert kind == "granted"
    _granted(reg, "k", b_token)
    kind, token = await _outcome(w_c)
    assert kind == "granted"
    lease = reg.get("k")
    assert lease is not None and lease.holder == "c" and lease.token == token
    assert reg.stats().expired == 2


async def test_finished_lease_does_not_expire_into_a_new_one() -> None:
    reg = _registry(ttl=0.05)
    first = _granted(reg, "k", reg.acquire("k", "a"))
    reg.finish("k", first, ("value", b"v", 0, 1.0))
    # a new lease on the same key, with a waiter: the first lease's timer must not
    # count as an expiry; the second lease's own timer hands it over exactly once
    _granted(reg, "k", reg.acquire("k", "b"))
    waiter = _waiter(reg.acquire("k", "c"))
    assert (await _outcome(waiter))[0] == "granted"
    assert reg.stats().expired == 1


async def test_stats_counters() -> None:
    reg = _registry()
    assert reg.stats() == LeaseStats(granted=0, coalesced=0, handovers=0, expired=0, inflight=0)
    t1 = _token(reg.acquire("k1", "a"))
    _token(reg.acquire("k2", "a"))
    w1 = _waiter(reg.acquire("k1", "b"))
    _waiter(reg.acquire("k1", "c"))
    assert reg.stats() == LeaseStats(granted=2, coalesced=2, handovers=0, expired=0, inflight=2)
    reg.finish("k1", t1, ("value", b"v", 0, 1.0))
    await _outcome(w1)
    assert reg.stats() == LeaseStats(granted=2, coalesced=2, handovers=0, expired=0, inflight=1)
    w2 = _waiter(reg.acquire("k2", "b"))
    reg.drop_holder("a")
    await _outcome(w2)
    assert reg.stats() == LeaseStats(granted=2, coalesced=3, handovers=1, expired=0, inflight=1)


async def test_stats_is_a_frozen_snapshot() -> None:
    reg = _registry()
    snap = reg.stats()
    _token(reg.acquire("k", "a"))
    assert snap.granted == 0
    with pytest.raises(AttributeError):
        snap.granted = 5  # type: ignore[misc]


async def test_a_fill_older_than_a_delete_reaches_no_waiter(tmp_path: Path) -> None:
    # review finding: a caller that asked after delete() returned was handed the holder's
    # computation from before the delete; now the lease passes on and that caller computes
    from mtcache.config import Settings
    from mtcache.coordinator.cache import CacheEngine
    from mtcache.protocol import Status
    from mtcache.shm import VersionTable

    settings = Settings.load(socket_path=str(tmp_path / "x.sock"), environ={}, cwd=tmp_path)
    table = VersionTable.create(1024, directory=tmp_path)
    engine = CacheEngine(settings, table, None)
    try:
        holder, late = object(), object()
        granted = await engine.lease_miss(holder, "k", 5.0)
        assert granted[0] == Status.GRANTED
        await engine.delete("k")  # the application changed the source, then deleted the key
        waiting = asyncio.create_task(engine.lease_miss(late, "k", 5.0))
        await asyncio.sleep(0)  # let the late caller register as a waiter
        assert (await engine.fill("k", granted[1], b"OLD-ROW", 60.0))[2] is False  # not stored
        reply = await asyncio.wait_for(waiting, 5.0)
        assert reply[0] == Status.GRANTED  # it computes afresh instead of receiving OLD-ROW
        assert engine.local.peek("k") is None
    finally:
        await engine.close()
        table.close()
