"""When the source fails: mtcache's fail-safe side by side with what other caches do.

    .venv/bin/python bench/failsafe.py [--quick] [--out DIR] [--peer NAME ...] [--duration S] [--note TEXT]

A price service behind the cache fails 20 % of its calls (it raises after ~5 ms), stalls
5 % of them for 2 s (then answers), and answers the rest in ~5 ms. Four worker processes,
four callers each (threads, or tasks for the asyncio peers), read 20 keys (Zipf 0.99) through
each peer's ``get_or_compute``-style call with a 1 s TTL, one read every 20 ms per caller,
for 60 s after a discarded 3 s warm-up (about 9 minutes for the eight peers). Every peer gets
a fresh redis-server (and mtcache a fresh coordinator), started here and stopped on exit.

Per peer: errors seen by callers, read latency (p50/p99/max), source calls (total and per key
per TTL period), and stale values served: every value carries the time the source produced
it, so a value older than the TTL (+50 ms) when a caller gets it is counted as stale whatever
the peer says; where the peer can tell (mtcache ``stats().stale_served``, cashews' failover
via its ``context_cache_detect``) its own count is shown too.

Writes FAILSAFE.md and failsafe.json (into bench/ for a full run; a ``--quick`` run, ~1
minute, writes to a temporary folder unless ``--out`` is given).

Worker processes are started with the ``spawn`` context, which imports this file in each of
them as ``__mp_main__``: keep everything that runs below the guard.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import math
import multiprocessing
import os
import queue
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from _util import coordinator_process, machine, percentile, redis_server_process, versions
from peers.common import zipf_sequence
from peers.report import write_json

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

BENCH = Path(__file__).resolve().parent

# -- the scenario --------------------------------------------------------------

#: The source: share of calls that raise, share that stall, how long a stall and an answer take.
FAIL_P = 0.20
STALL_P = 0.05
STALL_S = 2.0
ANSWER_S = 0.005
#: A value is counted stale when a caller gets it more than TTL + this after the source produced it.
STALE_SLACK_S = 0.05
#: mtcache's fail-safe settings (issue 12).
FAIL_SAFE: dict[str, Any] = {"fail_safe": 60.0, "fail_safe_throttle": 5.0, "soft_timeout": 0.1, "hard_timeout": 1.0}
#: How long cashews' failover keeps the last good value (the same window as mtcache's fail_safe).
FAILOVER_TTL = 60
#: Refresh-ahead point, a fraction of the TTL (cashews' docs example: early_ttl 7m of ttl 10m).
EARLY = 0.7
#: The hard timeout of the cashews variant that has one (the same as mtcache's hard_timeout).
CASHEWS_TIMEOUT = 1.0

LIBRARIES = ("mtcache", "redis", "hiredis", "msgpack", "uvloop", "cashews", "aiocache", "dogpile.cache")


@dataclass(frozen=True)
class Config:
    """One run's shape (full or ``--quick``)."""

    quick: bool = False
    workers: int = 4
    callers: int = 4
    keys: int = 20
    ttl: float = 1.0
    interval: float = 0.02
    warmup: float = 3.0
    duration: float = 60.0
    seed: int = 12

    @classmethod
    def make(cls, quick: bool, **overrides: Any) -> Config:
        base = cls(quick=True, warmup=1.0, duration=4.0) if quick else cls()
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**asdict(base), **given})


@dataclass(frozen=True)
class Env:
    """Where a peer's servers are."""

    redis_url: str
    socket: str | None = None


@dataclass(frozen=True)
class Peer:
    """One cache (and configuration) under test."""

    name: str
    is_async: bool
    setup: str
    on_failure: str
    coordinator: bool = False


PEERS: tuple[Peer, ...] = (
    Peer(
        "mtcache fail-safe", False,
        "`Client(socket, spawn=False)`; `get_or_compute(key, fn, ttl=1.0, fail_safe=60, fail_safe_throttle=5, "
        "soft_timeout=0.1, hard_timeout=1.0)`; one coordinator (defaults) on the run's redis-server",
        "a failure (or `fn` past 1 s) serves the last value if it is under 60 s past its TTL and makes it fresh "
        "again for 5 s on every worker; one computation per key at a time across the workers; with a stale value "
        "at hand the caller computing it (and the threads of its process waiting for it) gets that value after "
        "0.1 s while the computation goes on in the background; callers of other workers wait for that "
        "computation until it fills or passes the 1 s hard timeout",
        coordinator=True,
    ),
    Peer(
        "mtcache fail-safe + eager refresh", False,
        f"as `mtcache fail-safe`, plus `eager_refresh={EARLY}` (not part of the issue's configuration: shown "
        "next to cashews' early expiration, which does the same)",
        "as `mtcache fail-safe`; besides, the first hit past 70 % of the TTL starts one background refresh (no "
        "soft timeout applies to it); once the TTL passes, callers wait for that refresh until it fills or passes "
        "the 1 s hard timeout",
        coordinator=True,
    ),
    Peer(
        "mtcache defaults", False,
        "`Client(socket, spawn=False)`; `get_or_compute(key, fn, ttl=1.0)` (no fail-safe, no timeouts)",
        "the error reaches the caller and every caller waiting on the same computation; a stall is waited out "
        "(one computation per key at a time across the workers)",
        coordinator=True,
    ),
    Peer(
        "cashews failover + early", True,
        f"`Cache().setup(url, client_side=True, protocol=2)` (as in bench/peers.py); "
        f"`@cache.failover(ttl={FAILOVER_TTL}, key='{{key}}')` over `@cache.early(ttl=1, early_ttl={EARLY}, "
        "key='{key}')` (the stacking of its README: failover outside, the caching decorator inside; "
        f"early_ttl/ttl = {EARLY} as in its README example); uvloop",
        "a hit past early_ttl starts one background refresh (a Redis NX lock per key) and returns the current "
        "value; past the ttl every caller computes on its own (no lock); an exception of the computation returns "
        "the last good value (the failover copy, written on every successful call, kept 60 s); no timeout: a "
        "stall is waited out",
    ),
    Peer(
        "cashews failover + early + 1 s timeout", True,
        f"as `cashews failover + early`, the source call wrapped in `asyncio.wait_for(..., {CASHEWS_TIMEOUT})` "
        "(not a cashews feature: what an application adds to get mtcache's hard_timeout)",
        "as `cashews failover + early`, and a call past 1 s raises TimeoutError, which the failover answers",
    ),
    Peer(
        "redis-py cache-aside", False,
        "`redis.Redis.from_url(url)` (hiredis), msgpack values: GET, on a miss call the source and `SET ... PX "
        "1000`",
        "none: the error reaches the caller, a stall is waited out, every caller that misses calls the source",
    ),
    Peer(
        "dogpile.cache", False,
        "`make_region().configure('dogpile.cache.redis', expiration_time=1, arguments={url, "
        "redis_expiration_time: 61, distributed_lock: True, thread_local_lock: False, lock_timeout: 30})` "
        "(as in bench/peers.py; its docs: redis_expiration_time larger than expiration_time); "
        "`region.get_or_create(key, fn)`",
        "one caller (the Redis lock's holder) calls the source and gets its error or waits out its stall; while "
        "it does, other callers get the expired value if Redis still holds it (dogpile's design), or wait for "
        "the lock when it does not",
    ),
    Peer(
        "aiocache", True,
        "`@cached_stampede(lease=2, ttl=1, cache=RedisCache, endpoint, port)` (JSON serializer, its default); "
        "uvloop",
        "none: the error reaches the caller, a stall is waited out; callers of the same process wait up to the "
        "2 s lease for the holder, others call the source too",
    ),
)


def peer_named(name: str) -> Peer:
    """The peer called ``name``.

    :raises KeyError: no such peer.
    """
    for peer in PEERS:
        if peer.name == name:
            return peer
    raise KeyError(name)


# -- the source ----------------------------------------------------------------


class SourceError(RuntimeError):
    """The price service failed."""


@dataclass
class SourceCounts:
    """Calls of the source per key, in one phase of one worker."""

    calls: list[int]
    failures: list[int]
    stalls: list[int]

    @classmethod
    def zero(cls, keys: int) -> SourceCounts:
        return cls([0] * keys, [0] * keys, [0] * keys)


class Source:
    """The flaky price service of one worker process: ``call(kid)`` (threads) or
    ``acall(kid)`` (asyncio). Calls are counted when they start, per phase."""

    def __init__(self, keys: int, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.phase = "warmup"
        self.counts = {phase: SourceCounts.zero(keys) for phase in ("warmup", "measure", "after")}

    def _draw(self, kid: int) -> tuple[str, float]:
        with self._lock:
            counts = self.counts[self.phase]
            counts.calls[kid] += 1
            u = self._rng.random()
            pause = self._rng.uniform(0.8, 1.2) * ANSWER_S
            if u < FAIL_P:
                counts.failures[kid] += 1
                return "fail", pause
            if u < FAIL_P + STALL_P:
                counts.stalls[kid] += 1
                return "stall", STALL_S
            return "ok", pause

    @staticmethod
    def _answer(kid: int, outcome: str) -> dict[str, Any]:
        if outcome == "fail":
            raise SourceError(f"price service failed for key {kid}")
        return {"k": kid, "price": round(100 + random.random(), 4), "t": time.time()}

    def call(self, kid: int) -> dict[str, Any]:
        outcome, pause = self._draw(kid)
        time.sleep(pause)
        return self._answer(kid, outcome)

    async def acall(self, kid: int) -> dict[str, Any]:
        outcome, pause = self._draw(kid)
        await asyncio.sleep(pause)
        return self._answer(kid, outcome)


# -- the peers -----------------------------------------------------------------


class SyncPeer(Protocol):
    """A synchronous cache's read-through call."""

    told_stale: int | None

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


AsyncFn = Callable[[], Awaitable[Any]]


class AsyncPeer(Protocol):
    """An asyncio cache's read-through call."""

    told_stale: int | None

    async def get_or_compute(self, key: str, fn: AsyncFn) -> Any: ...
    async def stats(self) -> dict[str, int]: ...
    async def close(self) -> None: ...


class Mtcache:
    """mtcache ``Client``; ``policy`` goes to every ``get_or_compute`` call."""

    def __init__(self, env: Env, ttl: float, policy: dict[str, Any]) -> None:
        from mtcache import Client

        if env.socket is None:
            raise ValueError("mtcache needs a coordinator socket")
        self._client = Client(env.socket, spawn=False)
        self._ttl = ttl
        self._policy = policy
        self.told_stale: int | None = 0

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any:
        return self._client.get_or_compute(key, fn, ttl=self._ttl, **self._policy)

    def stats(self) -> dict[str, int]:
        s = self._client.stats()
        self.told_stale = s.stale_served
        return {"stale_served": s.stale_served, "fail_safe_activations": s.fail_safe_activations,
                "computes": s.computes, "local_computes": s.local_computes,
                "local_coalesced": s.local_coalesced, "near_hits": s.near_hits, "mirror_hits": s.mirror_hits}

    def close(self) -> None:
        self._client.close()


class RedisAside:
    """redis-py cache-aside: GET, on a miss compute and SET with PX."""

    def __init__(self, env: Env, ttl: float) -> None:
        import msgpack
        import redis

        self._r = redis.Redis.from_url(env.redis_url)
        self._pack, self._unpack = msgpack.packb, msgpack.unpackb
        self._px = int(ttl * 1000)
        self.told_stale: int | None = None

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any:
        raw = self._r.get(key)
        if raw is not None:
            return self._unpack(raw)
        value = fn()
        self._r.set(key, self._pack(value), px=self._px)
        return value

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._r.close()


class Dogpile:
    """dogpile.cache region on Redis with its distributed lock."""

    def __init__(self, env: Env, ttl: float) -> None:
        from dogpile.cache import make_region

        self._region = make_region().configure(
            "dogpile.cache.redis",
            expiration_time=ttl,
            arguments={
                "url": env.redis_url,
                "redis_expiration_time": math.ceil(ttl) + 60,
                "distributed_lock": True,
                "thread_local_lock": False,  # its docs require it with distributed_lock
                "lock_timeout": 30,
            },
        )
        self.told_stale: int | None = None

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> Any:
        return self._region.get_or_create(key, fn)

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        backend: Any = self._region.backend
        backend.writer_client.close()
        backend.reader_client.close()


class Cashews:
    """cashews on Redis (client-side cache, RESP2): failover over early expiration."""

    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout
        self.told_stale: int | None = 0
        self._early_refreshes = 0

    async def setup(self, env: Env, ttl: float) -> None:
        from cashews import Cache
        from cashews.decorators.cache.defaults import context_cache_detect

        self._detect = context_cache_detect
        self._cache = Cache()
        self._cache.setup(env.redis_url, client_side=True, protocol=2)
        await self._cache.init()
        timeout = self._timeout

        async def load(key: str, fn: AsyncFn) -> Any:
            if timeout is None:
                return await fn()
            return await asyncio.wait_for(fn(), timeout)

        early = self._cache.early(ttl=ttl, early_ttl=EARLY * ttl, key="{key}")(load)
        self._load = self._cache.failover(ttl=FAILOVER_TTL, key="{key}")(early)

    async def get_or_compute(self, key: str, fn: AsyncFn) -> Any:
        with self._detect as detector:
            value = await self._load(key, fn)
            if any(info.get("name") == "failover" for _, info in detector.calls_list):
                self.told_stale = (self.told_stale or 0) + 1
        return value

    async def stats(self) -> dict[str, int]:
        return {"failover_served": self.told_stale or 0}

    async def close(self) -> None:
        await self._cache.close()


class Aiocache:
    """aiocache ``@cached_stampede`` on its Redis backend."""

    async def setup(self, env: Env, ttl: float) -> None:
        from aiocache import RedisCache, cached_stampede

        url = urlparse(env.redis_url)

        async def load(key: str, fn: AsyncFn) -> Any:
            return await fn()

        self._load = cached_stampede(
            lease=2, ttl=ttl, key_builder=lambda _f, key, _fn: key, cache=RedisCache,
            endpoint=url.hostname, port=url.port,
        )(load)
        self.told_stale: int | None = None

    async def get_or_compute(self, key: str, fn: AsyncFn) -> Any:
        return await self._load(key, fn)

    async def stats(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        await self._load.cache.close()


def make_sync(peer: str, env: Env, ttl: float) -> SyncPeer:
    """The synchronous wrapper of ``peer``."""
    if peer == "mtcache fail-safe":
        return Mtcache(env, ttl, FAIL_SAFE)
    if peer == "mtcache fail-safe + eager refresh":
        return Mtcache(env, ttl, {**FAIL_SAFE, "eager_refresh": EARLY})
    if peer == "mtcache defaults":
        return Mtcache(env, ttl, {})
    if peer == "redis-py cache-aside":
        return RedisAside(env, ttl)
    if peer == "dogpile.cache":
        return Dogpile(env, ttl)
    raise KeyError(peer)


async def make_async(peer: str, env: Env, ttl: float) -> AsyncPeer:
    """The connected asyncio wrapper of ``peer``."""
    cache: Cashews | Aiocache
    if peer == "cashews failover + early":
        cache = Cashews(timeout=None)
    elif peer == "cashews failover + early + 1 s timeout":
        cache = Cashews(timeout=CASHEWS_TIMEOUT)
    elif peer == "aiocache":
        cache = Aiocache()
    else:
        raise KeyError(peer)
    await cache.setup(env, ttl)
    return cache


# -- the workers ---------------------------------------------------------------


@dataclass
class Tally:
    """What one caller saw."""

    ttl: float
    reads: int = 0
    ok: int = 0
    stale: int = 0
    wrong: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)
    lat: array[int] = field(default_factory=lambda: array("q"))
    ages: array[float] = field(default_factory=lambda: array("d"))

    def good(self, kid: int, value: Any, elapsed_ns: int) -> None:
        self.reads += 1
        self.lat.append(elapsed_ns)
        if not isinstance(value, dict) or value.get("k") != kid:
            self.wrong += 1
            return
        self.ok += 1
        age = time.time() - value["t"]
        self.ages.append(age)
        if age > self.ttl + STALE_SLACK_S:
            self.stale += 1

    def bad(self, exc: BaseException, elapsed_ns: int) -> None:
        self.reads += 1
        self.lat.append(elapsed_ns)
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1
        self.first_errors.setdefault(name, str(exc)[:200])

    def merge(self, other: Tally) -> None:
        self.reads += other.reads
        self.ok += other.ok
        self.stale += other.stale
        self.wrong += other.wrong
        for name, n in other.errors.items():
            self.errors[name] = self.errors.get(name, 0) + n
        for name, text in other.first_errors.items():
            self.first_errors.setdefault(name, text)
        self.lat.extend(other.lat)
        self.ages.extend(other.ages)


def _key_plan(cfg: Config, index: int, caller: int) -> list[int]:
    n = max(1024, int(cfg.duration / cfg.interval) + 64)
    return zipf_sequence(cfg.keys, n, cfg.seed * 10_000 + index * 100 + caller)


def _report(tally: Tally, source: Source, stats_before: dict[str, int], stats_after: dict[str, int],
            told_stale: int | None, background_errors: int) -> dict[str, Any]:
    measure = source.counts["measure"]
    return {
        "reads": tally.reads, "ok": tally.ok, "stale": tally.stale, "wrong": tally.wrong,
        "errors": tally.errors, "first_errors": tally.first_errors,
        "lat": tally.lat.tobytes(), "ages": tally.ages.tobytes(),
        "source_calls": measure.calls, "source_failures": measure.failures, "source_stalls": measure.stalls,
        "told_stale": told_stale,
        "stats": {k: stats_after.get(k, 0) - stats_before.get(k, 0) for k in stats_after},
        "background_errors": background_errors,
    }


def worker_main(peer_name: str, index: int, cfg: Config, env: Env, barrier: Barrier,
                results: Queue[tuple[str, int, Any]]) -> None:
    """Worker ``index``: read through ``peer_name`` for the warm-up, then for the measured
    duration; put ``("result", index, report)`` or ``("error", index, traceback)``."""
    try:
        if peer_named(peer_name).is_async:
            import uvloop

            payload = uvloop.run(_run_async(peer_name, index, cfg, env, barrier))
        else:
            payload = _run_sync(peer_name, index, cfg, env, barrier)
        results.put(("result", index, payload))
    except BaseException:
        barrier.abort()
        results.put(("error", index, traceback.format_exc()))


def _run_sync(peer_name: str, index: int, cfg: Config, env: Env, barrier: Barrier) -> dict[str, Any]:
    cache = make_sync(peer_name, env, cfg.ttl)
    source = Source(cfg.keys, cfg.seed * 1000 + index)
    plans = [_key_plan(cfg, index, c) for c in range(cfg.callers)]
    keys = [f"price:{kid}" for kid in range(cfg.keys)]
    fns = [(lambda kid=kid: source.call(kid)) for kid in range(cfg.keys)]

    def caller(plan: list[int], seconds: float, tally: Tally) -> None:
        clock = time.perf_counter
        start = next_at = clock()
        end = start + seconds
        i = 0
        while (now := clock()) < end:
            if next_at > now:
                time.sleep(next_at - now)
            kid = plan[i % len(plan)]
            i += 1
            t0 = time.perf_counter_ns()
            try:
                value = cache.get_or_compute(keys[kid], fns[kid])
            except Exception as exc:  # counted: what a caller sees is the point
                tally.bad(exc, time.perf_counter_ns() - t0)
            else:
                tally.good(kid, value, time.perf_counter_ns() - t0)
            next_at = max(next_at + cfg.interval, clock())

    def phase(seconds: float) -> Tally:
        tallies = [Tally(cfg.ttl) for _ in plans]
        threads = [threading.Thread(target=caller, args=(plan, seconds, t), daemon=True)
                   for plan, t in zip(plans, tallies, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = Tally(cfg.ttl)
        for part in tallies:
            total.merge(part)
        return total

    try:
        barrier.wait(120)
        phase(cfg.warmup)
        barrier.wait(120)
        source.phase = "measure"
        before = cache.stats()
        told_before = cache.told_stale
        tally = phase(cfg.duration)
        source.phase = "after"
        after = cache.stats()
        told = None if told_before is None or cache.told_stale is None else cache.told_stale - told_before
        return _report(tally, source, before, after, told, 0)
    finally:
        _join_background(STALL_S + 0.5)
        cache.close()


def _join_background(seconds: float) -> None:
    """Let computations mtcache carries on in the background (past a soft timeout, eager
    refreshes) end before the client closes, so they fill instead of warning about a closed
    socket. They run in daemon threads named "mtcache-compute"."""
    end = time.monotonic() + seconds
    for thread in threading.enumerate():
        if thread.name.startswith("mtcache-compute"):
            thread.join(max(0.0, end - time.monotonic()))


async def _run_async(peer_name: str, index: int, cfg: Config, env: Env, barrier: Barrier) -> dict[str, Any]:
    background_errors = 0

    def on_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # a failed background refresh (cashews' early) ends as "Task exception was never retrieved"
        nonlocal background_errors
        background_errors += 1

    asyncio.get_running_loop().set_exception_handler(on_error)
    cache = await make_async(peer_name, env, cfg.ttl)
    source = Source(cfg.keys, cfg.seed * 1000 + index)
    plans = [_key_plan(cfg, index, c) for c in range(cfg.callers)]
    keys = [f"price:{kid}" for kid in range(cfg.keys)]
    fns = [(lambda kid=kid: source.acall(kid)) for kid in range(cfg.keys)]

    async def caller(plan: list[int], seconds: float, tally: Tally) -> None:
        clock = time.perf_counter
        start = next_at = clock()
        end = start + seconds
        i = 0
        while (now := clock()) < end:
            if next_at > now:
                await asyncio.sleep(next_at - now)
            kid = plan[i % len(plan)]
            i += 1
            t0 = time.perf_counter_ns()
            try:
                value = await cache.get_or_compute(keys[kid], fns[kid])
            except Exception as exc:  # counted: what a caller sees is the point
                tally.bad(exc, time.perf_counter_ns() - t0)
            else:
                tally.good(kid, value, time.perf_counter_ns() - t0)
            next_at = max(next_at + cfg.interval, clock())

    async def phase(seconds: float) -> Tally:
        tallies = [Tally(cfg.ttl) for _ in plans]
        await asyncio.gather(*(caller(plan, seconds, t) for plan, t in zip(plans, tallies, strict=True)))
        total = Tally(cfg.ttl)
        for part in tallies:
            total.merge(part)
        return total

    try:
        # blocking on the barrier inside the loop is deliberate: nothing else may run until all arrived
        barrier.wait(120)
        await phase(cfg.warmup)
        barrier.wait(120)
        source.phase = "measure"
        errors_before = background_errors
        before = await cache.stats()
        told_before = cache.told_stale
        tally = await phase(cfg.duration)
        source.phase = "after"
        after = await cache.stats()
        told = None if told_before is None or cache.told_stale is None else cache.told_stale - told_before
        return _report(tally, source, before, after, told, background_errors - errors_before)
    finally:
        # background refreshes still running (cashews' early) end against a closed connection: quietly
        logging.getLogger("cashews").setLevel(logging.CRITICAL)
        await cache.close()


# -- the parent ----------------------------------------------------------------

_CTX = multiprocessing.get_context("spawn")


@contextlib.contextmanager
def servers_for(peer: Peer) -> Iterator[Env]:
    """A fresh redis-server, and a coordinator on it if ``peer`` needs one."""
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server_process())
        sock = None
        if peer.coordinator:
            sock = stack.enter_context(coordinator_process(redis.address)).address
        yield Env(redis.address, sock)


def run_peer(peer: Peer, cfg: Config) -> dict[str, Any]:
    """Run the workers of ``peer``; their reports folded into one figure.

    :raises RuntimeError: a worker failed or did not report in time.
    """
    with servers_for(peer) as env:
        barrier = _CTX.Barrier(cfg.workers)
        results: Queue[tuple[str, int, Any]] = _CTX.Queue()
        procs = [
            _CTX.Process(target=worker_main, args=(peer.name, i, cfg, env, barrier, results),
                         name=f"failsafe-worker-{i}", daemon=True)
            for i in range(cfg.workers)
        ]
        for proc in procs:
            proc.start()
        try:
            parts = _collect(procs, results, timeout=cfg.warmup + cfg.duration + 120)
        except BaseException:  # failed or interrupted: no need to let the others finish their run
            for proc in procs:
                proc.terminate()
            raise
        finally:
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
            results.close()
    return fold(parts, cfg)


def _collect(procs: Sequence[multiprocessing.process.BaseProcess], results: Queue[tuple[str, int, Any]],
             timeout: float) -> list[dict[str, Any]]:
    got: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"{len(got)} of {len(procs)} workers reported within {timeout:.0f} s")
        try:
            kind, index, payload = results.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            dead = [p.name for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"worker(s) died: {', '.join(dead)}") from None
            continue
        if kind == "error":
            raise RuntimeError(f"worker {index} failed:\n{payload}")
        got[index] = payload
    return [got[i] for i in range(len(procs))]


#: Read-latency buckets (ms): fast, a source call, up to the soft timeout, between, around the hard
#: timeout, between, a whole stall.
BUCKETS_MS: tuple[tuple[str, float, float], ...] = (
    ("< 10 ms", 0, 10), ("10-100 ms", 10, 100), ("0.1-0.2 s", 100, 200), ("0.2-0.9 s", 200, 900),
    ("0.9-1.1 s", 900, 1100), ("1.1-1.9 s", 1100, 1900), ("≥ 1.9 s", 1900, math.inf),
)


def _histogram(lat_ms: list[float]) -> dict[str, int]:
    counts = dict.fromkeys((name for name, _, _ in BUCKETS_MS), 0)
    for x in lat_ms:
        for name, low, high in BUCKETS_MS:
            if low <= x < high:
                counts[name] += 1
                break
    return counts


def fold(parts: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """One peer's figure from its workers' reports."""
    lat: array[int] = array("q")
    ages: array[float] = array("d")
    errors: dict[str, int] = {}
    first_errors: dict[str, str] = {}
    calls = [0] * cfg.keys
    failures = [0] * cfg.keys
    stalls = [0] * cfg.keys
    stats: dict[str, int] = {}
    for p in parts:
        lat.frombytes(p["lat"])
        ages.frombytes(p["ages"])
        for name, n in p["errors"].items():
            errors[name] = errors.get(name, 0) + n
        for name, text in p["first_errors"].items():
            first_errors.setdefault(name, text)
        for i in range(cfg.keys):
            calls[i] += p["source_calls"][i]
            failures[i] += p["source_failures"][i]
            stalls[i] += p["source_stalls"][i]
        for k, v in p["stats"].items():
            stats[k] = stats.get(k, 0) + v
    lat_ms = sorted(x / 1e6 for x in lat)
    ages_s = sorted(ages)
    reads = sum(p["reads"] for p in parts)
    n_errors = sum(errors.values())
    stale = sum(p["stale"] for p in parts)
    periods = cfg.duration / cfg.ttl
    told = [p["told_stale"] for p in parts]
    return {
        "reads": reads,
        "reads_per_s": reads / cfg.duration,
        "reads_scheduled": round(cfg.workers * cfg.callers * cfg.duration / cfg.interval),
        "reads_pct_of_schedule": 100 * reads / (cfg.workers * cfg.callers * cfg.duration / cfg.interval),
        "ok": sum(p["ok"] for p in parts),
        "errors": n_errors,
        "errors_pct": 100 * n_errors / max(1, reads),
        "errors_by_type": errors,
        "first_errors": first_errors,
        "wrong": sum(p["wrong"] for p in parts),
        "p50_ms": percentile(lat_ms, 0.50),
        "p99_ms": percentile(lat_ms, 0.99),
        "max_ms": lat_ms[-1] if lat_ms else float("nan"),
        "reads_over_1s": sum(1 for x in lat_ms if x >= 1000),
        "latency_histogram": _histogram(lat_ms),
        "source_calls": sum(calls),
        "source_calls_per_key_per_ttl": sum(calls) / (cfg.keys * periods),
        "source_calls_per_key_per_ttl_max": max(calls) / periods,
        "source_failures": sum(failures),
        "source_stalls": sum(stalls),
        "source_calls_by_key": calls,
        "stale": stale,
        "stale_pct": 100 * stale / max(1, reads),
        "told_stale": None if any(t is None for t in told) else sum(told),
        "age_p50_s": percentile(ages_s, 0.50),
        "age_p99_s": percentile(ages_s, 0.99),
        "age_max_s": ages_s[-1] if ages_s else float("nan"),
        "background_errors": sum(p["background_errors"] for p in parts),
        "peer_stats": stats,
    }


# -- the report ----------------------------------------------------------------


def _f(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _ms(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x:,.2f}" if x < 10 else f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def render(results: dict[str, Any]) -> str:
    """FAILSAFE.md."""
    meta, cfg = results["meta"], results["config"]
    periods = cfg["duration"] / cfg["ttl"]
    out = [
        "# When the source fails: mtcache's fail-safe side by side",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['duration_s'] / 60:.1f} min). "
        f"Machine: {meta['machine']}; load average before / after: {meta['load_before']} / {meta['load_after']}."
        + (f" **{meta['note']}**" if meta.get("note") else ""),
        "",
        "## The scenario",
        "",
        f"A price service fails {FAIL_P:.0%} of its calls (raises after ~{ANSWER_S * 1000:.0f} ms), stalls "
        f"{STALL_P:.0%} of them for {STALL_S:g} s (then answers), and answers the rest in ~{ANSWER_S * 1000:.0f} "
        f"ms. {cfg['workers']} worker processes x {cfg['callers']} callers (threads; tasks on uvloop for the "
        f"asyncio peers) read {cfg['keys']} keys (Zipf 0.99) through each peer, TTL {cfg['ttl']:g} s, one read "
        f"every {cfg['interval'] * 1000:g} ms per caller (the next read starts on schedule, or at once when a "
        f"read took longer), for {cfg['duration']:g} s after a discarded {cfg['warmup']:g} s warm-up. Every peer "
        "gets a fresh redis-server (and mtcache a fresh coordinator).",
        "",
        "## Results",
        "",
        "| peer | reads (share of the schedule) | errors seen by callers | p50 ms | p99 ms | max ms | reads ≥ 1 s "
        "| source calls | per key per TTL | stale served (age > TTL) | stale, as the peer tells "
        "| oldest value served |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["peers"].items():
        if "failed" in r:
            out.append(f"| {name} | failed: {r['failed'].strip().splitlines()[-1][:160]} |" + " |" * 10)
            continue
        told = "-" if r["told_stale"] is None else _f(r["told_stale"])
        out.append(
            f"| {name} | {_f(r['reads'])} ({r['reads_pct_of_schedule']:.0f} %) "
            f"| {_f(r['errors'])} ({r['errors_pct']:.1f} %) | {_ms(r['p50_ms'])} "
            f"| {_ms(r['p99_ms'])} | {_ms(r['max_ms'])} | {_f(r['reads_over_1s'])} | {_f(r['source_calls'])} "
            f"| {r['source_calls_per_key_per_ttl']:.2f} | {_f(r['stale'])} ({r['stale_pct']:.1f} %) | {told} "
            f"| {r['age_max_s']:.1f} s |"
        )
    out += [
        "",
        "- **errors seen by callers**: reads that raised, and their share of all reads. By type: "
        + "; ".join(
            f"{name}: " + (", ".join(f"{k} {v:,}" for k, v in r["errors_by_type"].items()) or "none")
            for name, r in results["peers"].items() if "failed" not in r
        ) + ".",
        "- **reads**: reads made in the measured time, and their share of the "
        f"{cfg['workers'] * cfg['callers'] * cfg['duration'] / cfg['interval']:,.0f} the schedule asks for: a "
        "caller blocked in a slow read makes fewer (the next read starts at once, the missed slots are not "
        "made up).",
        "- **p50 / p99 / max**: the time of one read as its caller saw it (errors included); **reads ≥ 1 s**: "
        "reads that waited out a stall (or most of one).",
        f"- **source calls**: calls of the price service that started during the measured {cfg['duration']:g} s "
        "(background ones included); **per key per TTL**: that over "
        f"{cfg['keys']} keys x {periods:g} TTL periods (1.00 = one call per key each time its TTL runs out; "
        "more: callers computed the same key at once, or retried a failure; fewer: a value was kept past its "
        "TTL). By key, hottest first: "
        + "; ".join(
            f"{name}: {', '.join(str(c) for c in r['source_calls_by_key'][:5])}, ..."
            for name, r in results["peers"].items() if "failed" not in r
        ) + ".",
        f"- **stale served**: reads whose value the source had produced more than TTL + "
        f"{STALE_SLACK_S * 1000:.0f} ms earlier (every value carries its production time), whatever the peer "
        "says; **stale, as the peer tells**: mtcache's `stats().stale_served` (callers handed a stale value "
        "by fail-safe or a soft timeout; not the hits on a value fail-safe made fresh again for the throttle "
        "window), cashews' failover as its `context_cache_detect` reports it; \"-\": the peer cannot tell.",
        "- **oldest value served**: the largest such age. Value ages p50 / p99: "
        + "; ".join(
            f"{name}: {r['age_p50_s']:.2f} / {r['age_p99_s']:.2f} s"
            for name, r in results["peers"].items() if "failed" not in r
        ) + ".",
    ]
    out += [
        "",
        "Reads by latency (the soft timeout of mtcache's fail-safe is 0.1 s, its hard timeout and the cashews "
        "variant's timeout 1 s, a stall 2 s):",
        "",
        "| peer | " + " | ".join(name for name, _, _ in BUCKETS_MS) + " |",
        "|---|" + "---:|" * len(BUCKETS_MS),
    ]
    for name, r in results["peers"].items():
        if "failed" not in r:
            out.append(f"| {name} | " + " | ".join(_f(r["latency_histogram"][b]) for b, _, _ in BUCKETS_MS) + " |")
    loads = ", ".join(f"{n} {r['load_1min_after']:.2f}" for n, r in results["peers"].items()
                      if "load_1min_after" in r)
    busy = {n: sorted({w for c in r["other_processes"] for w in NOISY if w in c})
            for n, r in results["peers"].items() if r.get("other_processes")}
    out += ["", f"1-minute load average after each row: {loads}."]
    if busy:
        out += ["", "**Measured while other benchmarks or tests ran on this machine** (figures are noisier; their "
                "command lines are in the JSON, `other_processes`): "
                + "; ".join(f"{n}: {', '.join(f'`{w}`' for w in words)}" for n, words in busy.items()) + "."]
    extra = [(n, r) for n, r in results["peers"].items() if "failed" not in r and (r["peer_stats"]
             or r["background_errors"] or r["wrong"])]
    if extra:
        out += ["", "What the peers counted themselves (summed over the workers, measured phase):", ""]
        for name, r in extra:
            items = [f"{k} {v:,}" for k, v in r["peer_stats"].items()]
            if r["background_errors"]:
                items.append(f"background task failures (asyncio 'exception never retrieved') "
                             f"{r['background_errors']:,}")
            if r["wrong"]:
                items.append(f"wrong values {r['wrong']:,}")
            out.append(f"- {name}: " + ", ".join(items))
    out += ["", "## How each peer is configured", "", "| peer | configuration | when the source fails or stalls |",
            "|---|---|---|"]
    for name in results["peers"]:
        p = peer_named(name)
        out.append(f"| {name} | {p.setup} | {p.on_failure} |")
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    out += [
        "",
        "## Rerun",
        "",
        "```",
        ".venv/bin/python bench/failsafe.py            # full run (~9 min), writes bench/FAILSAFE.md and "
        "bench/failsafe.json",
        ".venv/bin/python bench/failsafe.py --quick    # ~1 min smoke run, writes to a temporary folder",
        ".venv/bin/python bench/failsafe.py --peer 'mtcache fail-safe' --peer aiocache --duration 20 --out /tmp/fs",
        "```",
        "",
        "Needs `pip install -e '.[bench]'` and `redis-server` on PATH. The run is seeded (`--seed`), but the "
        "source's draws follow the order in which callers reach it, so two runs differ a little.",
        "",
        f"Versions: {versions}.",
        "",
    ]
    return "\n".join(out)


# -- the command ---------------------------------------------------------------


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


#: Other processes that would make the figures noisy (this machine runs tests and soaks too).
NOISY = ("bench/chaos.py", "bench/peers.py", "pytest")


def _noisy_processes() -> list[str]:
    """Command lines of other benchmarks or test runs on this machine right now."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(word in cmd for word in NOISY) and "failsafe.py" not in cmd:
            found.append(cmd[:160])
    return sorted(set(found))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/failsafe.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~1 minute smoke run (1 s warm-up, 4 s per peer)")
    p.add_argument("--out", type=Path, help="output folder (default: bench/ for a full run, a temporary one for "
                                            "--quick)")
    p.add_argument("--peer", action="append", choices=[peer.name for peer in PEERS], help="only this peer "
                                                                                            "(repeatable)")
    p.add_argument("--duration", type=float, help="measured seconds per peer (default 60; 4 with --quick)")
    p.add_argument("--warmup", type=float, help="discarded seconds per peer before that (default 3; 1 with --quick)")
    p.add_argument("--workers", type=int, help="worker processes (default 4)")
    p.add_argument("--callers", type=int, help="callers per worker (default 4)")
    p.add_argument("--seed", type=int, help="seed of the key sequences and the source's draws (default 12)")
    p.add_argument("--note", help="a remark printed in the report (e.g. that the machine was busy)")
    return p.parse_args(argv)


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(143)  # unwinds the with-blocks: workers, coordinator and redis-server are stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Run every peer; exit status 1 if one failed."""
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = Config.make(args.quick, duration=args.duration, warmup=args.warmup, workers=args.workers,
                      callers=args.callers, seed=args.seed)
    out = args.out or (Path(tempfile.gettempdir()) / "mtcache-failsafe-quick" if cfg.quick else BENCH)
    peers = [p for p in PEERS if not args.peer or p.name in args.peer]
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join([".venv/bin/python", "bench/failsafe.py",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine(), "load_before": _load(), "versions": versions(LIBRARIES), "note": args.note,
        },
        "config": asdict(cfg),
        "source": {"fail_p": FAIL_P, "stall_p": STALL_P, "stall_s": STALL_S, "answer_s": ANSWER_S,
                   "stale_slack_s": STALE_SLACK_S},
        "configuration": {p.name: {"setup": p.setup, "on_failure": p.on_failure} for p in peers},
        "peers": {},
    }
    failures = 0
    for peer in peers:
        t0 = time.monotonic()
        noisy = set(_noisy_processes())
        print(f"{peer.name:<40} ", end="", flush=True)
        try:
            figure = run_peer(peer, cfg)
        except Exception as exc:  # one peer's failure is a row ("failed: ..."), not the end of the run
            failures += 1
            figure = {"failed": f"{type(exc).__name__}: {exc}"}
            print(f"failed: {str(exc).strip().splitlines()[-1]}")
        else:
            print(f"errors {figure['errors']:>6,} ({figure['errors_pct']:4.1f} %)  p50 {_ms(figure['p50_ms']):>6} ms"
                  f"  p99 {_ms(figure['p99_ms']):>6} ms  max {_ms(figure['max_ms']):>6} ms  source calls "
                  f"{figure['source_calls']:>5,} ({figure['source_calls_per_key_per_ttl']:.2f}/key/TTL)  stale "
                  f"{figure['stale']:,}  ({time.monotonic() - t0:.0f} s)")
        figure["step_s"] = round(time.monotonic() - t0, 2)
        figure["load_1min_after"] = round(os.getloadavg()[0], 2)
        figure["other_processes"] = sorted(noisy | set(_noisy_processes()))
        if figure["other_processes"]:
            print(f"    (measured while these ran: {'; '.join(figure['other_processes'])})")
        results["peers"][peer.name] = figure
    results["meta"]["load_after"] = _load()
    results["meta"]["duration_s"] = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "failsafe.json")
    (out / "FAILSAFE.md").write_text(render(results))
    print(f"wrote {out / 'FAILSAFE.md'} and {out / 'failsafe.json'} ({results['meta']['duration_s'] / 60:.1f} min)")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the with-blocks stopped the workers and servers on the way out
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
