"""The in-process test double of :class:`~mtcache.Client` and :class:`~mtcache.AsyncClient`.

``Client(local=True)`` gives a :class:`LocalClient` and ``AsyncClient(local=True)`` an
:class:`AsyncLocalClient` (issue 13): the same methods, arguments, validation, codec round trip
and errors, with every value held in this process: no coordinator, no Redis, no shared memory.
Each instance is a cache of its own. ``clock`` (default ``time.monotonic``) times expiry, so a
test moves TTLs on without sleeping; waits and soft/hard timeouts run on real time.

The twins are thin: :class:`_Store` holds the entries, the rules and the counters under one
lock, and ``get_or_compute``'s leader runs :func:`_fill_flow` through the real clients' own
drivers (``_drive``), so ``fn`` runs in a thread or task exactly as it does there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

from mtcache.codec import Codec
from mtcache.errors import CacheTimeout
from mtcache.stats import Health, Stats
from mtcache.strategies import FOREVER, CacheStrategy

from . import decorator
from ._core import MISSING, RETRY, ClientCore, Stale
from ._flows import COUNTER_LIMIT, Compute, Flow
from .aio import AsyncClient
from .policy import Policy
from .sync import Client

__all__ = ["AsyncLocalClient", "LocalClient"]

log = logging.getLogger("mtcache.client")

T = TypeVar("T")

_COUNTS = ("hits", "misses", "computes", "coalesced", "stale_served", "fail_safe_activations")


def _check_tags(tags: object) -> frozenset[str]:
    """``tags`` as a set of str.

    :raises TypeError: ``tags`` is a single string, not iterable, or holds something else than str.
    """
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise TypeError(f"tags must be an iterable of str (not a single string), got {type(tags).__name__}")
    found = tuple(tags)
    for tag in found:
        if not isinstance(tag, str):
            raise TypeError(f"every tag must be a str, got {type(tag).__name__}: {tag!r}")
    return frozenset(found)


def _check_delta(delta: object) -> int:
    """``delta``, checked as ``_flows.incr_flow`` checks it.

    :raises TypeError: ``delta`` is not an int. :raises ValueError: it is past a counter's range.
    """
    if not isinstance(delta, int) or isinstance(delta, bool):
        raise TypeError(f"delta must be an int, not {type(delta).__name__}: {delta!r}")
    if not -COUNTER_LIMIT <= delta <= COUNTER_LIMIT:
        raise ValueError(f"delta must be within +-2**53 (a counter's range), got {delta!r}")
    return delta


@dataclass(frozen=True, slots=True)
class _Entry:
    data: bytes
    #: when its TTL ends, on the client's clock (math.inf: never)
    expires: float
    #: how long after ``expires`` it may still stand in for a failing source (fail-safe)
    stale_for: float
    tags: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Call:
    """A ``get_or_compute`` call's checked arguments."""

    key: str
    #: None: the default lifetime (see :meth:`_Store.lifetime`)
    seconds: float | None
    wait: float
    policy: Policy
    tags: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Claim:
    """What a ``get_or_compute`` caller found: a live value (``data``), a computation to wait for
    (``flight``), or one it runs itself (``lead``; ``stale`` is the value past its TTL that may
    stand in, ``token`` the key's writes so far: a fill after another write is dropped)."""

    data: bytes | None = None
    flight: Any = None
    lead: bool = False
    stale: bytes | None = None
    token: tuple[int, int] = (0, 0)


class _Store:
    """Everything both twins share: the entries with their tags, the in-flight computations, the
    counters (one lock for all), and each call's checks, made as the real clients make them."""

    def __init__(self, core: ClientCore, clock: Callable[[], float], name: str) -> None:
        self.core = core
        self.codec: Codec = core.codec
        self.clock = clock
        self.name = name
        self.closed = False
        self.lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._versions: dict[str, int] = {}
        self._epoch = 0
        self._flights: dict[str, Any] = {}
        self._counts = dict.fromkeys(_COUNTS, 0)

    # -- under the lock -------------------------------------------------------

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or now < entry.expires:
            return entry
        if now >= entry.expires + entry.stale_for:
            del self._entries[key]
        return None

    def _looked_up(self, entry: _Entry | None) -> None:
        self._counts["hits" if entry is not None else "misses"] += 1

    def _put(
        self, key: str, data: bytes, seconds: float | None, tags: frozenset[str], stale_for: float = 0.0
    ) -> None:
        self._entries[key] = _Entry(data, self.clock() + self.lifetime(seconds), stale_for, tags)
        self._wrote(key)

    def _wrote(self, key: str) -> None:
        # a computation that began before this write must not store over it
        self._versions[key] = self._versions.get(key, 0) + 1

    def _drop(self, key: str) -> bool:
        self._wrote(key)
        held = self._live(key, self.clock()) is not None
        self._entries.pop(key, None)
        return held

    def _token(self, key: str) -> tuple[int, int]:
        return self._epoch, self._versions.get(key, 0)

    # -- the API --------------------------------------------------------------

    def lifetime(self, seconds: float | None) -> float:
        """How long a write lives: its TTL; for one that gave none, as long as the real cache keeps
        it (``MTCACHE_L1_TTL`` in L1, then ``MTCACHE_L2_TTL`` in Redis, which promotes it back)."""
        if seconds is not None:
            return seconds
        return max(self.core.settings.l1_ttl, self.core.settings.l2_ttl)

    def open(self) -> ClientCore:
        """The core, for a call on this client.

        :raises RuntimeError: the client is closed.
        """
        if self.closed:
            raise RuntimeError(f"this mtcache {self.name} is closed")
        return self.core

    def get(self, key: object, default: Any) -> Any:
        """A decoded copy of ``key``'s live value, or ``default``."""
        key = self.open().check_key(key)
        with self.lock:
            entry = self._live(key, self.clock())
            self._looked_up(entry)
        return default if entry is None else self.codec.decode(entry.data)

    def get_many(self, keys: object) -> dict[str, Any]:
        """Decoded copies of the live values among ``keys``."""
        self.open()
        wanted = ClientCore.check_keys(keys)
        with self.lock:
            now = self.clock()
            found = {}
            for key in dict.fromkeys(wanted):
                entry = self._live(key, now)
                self._looked_up(entry)
                if entry is not None:
                    found[key] = entry.data
        return {key: self.codec.decode(data) for key, data in found.items()}

    def set(
        self, key: object, value: Any, args: tuple[Any, ...], strategy: CacheStrategy | None,
        ttl: float | timedelta | None, tags: object,
    ) -> bool:
        """Store ``value`` (checked in the real client's order: TTL by keyword, key, TTL, tags, value)."""
        core = self.open()
        core.no_positional_ttl("set", args)
        return self._store_all([(core.check_key(key), value)], strategy, ttl, tags)

    def set_many(
        self, mapping: object, strategy: CacheStrategy | None, ttl: float | timedelta | None, tags: object
    ) -> bool:
        """Store every item of ``mapping`` (all checked and encoded before any is stored)."""
        return self._store_all(self.open().check_items(mapping), strategy, ttl, tags)

    def _store_all(
        self, items: list[tuple[str, Any]], strategy: CacheStrategy | None, ttl: float | timedelta | None,
        tags: object,
    ) -> bool:
        seconds, tagged = ClientCore.ttl_for(strategy, ttl), _check_tags(tags)
        encoded = [(key, self.core.encode(value)) for key, value in items]
        with self.lock:
            for key, data in encoded:
                self._put(key, data, seconds, tagged)
        return True

    def add(
        self, key: object, value: Any, args: tuple[Any, ...], strategy: CacheStrategy | None,
        ttl: float | timedelta | None, tags: object,
    ) -> bool:
        """Store ``value`` if ``key`` holds no live value; whether it did."""
        core = self.open()
        core.no_positional_ttl("add", args)
        key = core.check_key(key)
        seconds, tagged = ClientCore.ttl_for(strategy, ttl), _check_tags(tags)
        data = core.encode(value)
        with self.lock:
            if self._live(key, self.clock()) is not None:
                return False
            self._put(key, data, seconds, tagged)
        return True

    def delete(self, key: object) -> bool:
        """Remove ``key``; whether it held a live value."""
        key = self.open().check_key(key)
        with self.lock:
            return self._drop(key)

    def delete_many(self, keys: object) -> int:
        """Remove ``keys``; how many held a live value."""
        self.open()
        wanted = ClientCore.check_keys(keys)
        with self.lock:
            return sum(self._drop(key) for key in dict.fromkeys(wanted))

    def incr(self, key: object, delta: int) -> int:
        """Add ``delta`` to the int ``key`` holds (0 and no expiry when it holds nothing)."""
        core = self.open()
        key = core.check_key(key)
        _check_delta(delta)
        if not core.counts:
            raise TypeError(f"incr and decr keep counters as msgpack integers: they need a codec that reads them, "
                            f"such as msgpack (this client uses {self.codec.name!r})")
        with self.lock:
            entry = self._live(key, self.clock())
            current = 0 if entry is None else self.codec.decode(entry.data)
            if not isinstance(current, int) or isinstance(current, bool):
                raise TypeError(f"cannot increment {key!r}: it holds a {type(current).__name__}, not an int")
            result = current + delta
            if not -COUNTER_LIMIT <= result <= COUNTER_LIMIT:
                raise ValueError(f"incrementing {key!r} by {delta} leaves a counter's range (+-2**53)")
            data = self.codec.encode(result)
            if entry is None:
                self._put(key, data, FOREVER, frozenset())
            else:  # its TTL and tags stay
                self._entries[key] = replace(entry, data=data)
                self._wrote(key)
        return result

    def touch(self, key: object, ttl: float | timedelta | None) -> bool:
        """Give ``key``'s live value ``ttl`` (default as for ``set``) from now; False if none."""
        key = self.open().check_key(key)
        seconds = ClientCore.ttl_for(None, ttl)
        with self.lock:
            entry = self._live(key, self.clock())
            if entry is None:
                return False
            self._entries[key] = replace(entry, expires=self.clock() + self.lifetime(seconds))
        return True

    def ttl(self, key: object) -> float | None:
        """Seconds ``key``'s live value has left (math.inf: no expiry), or None."""
        key = self.open().check_key(key)
        with self.lock:
            now = self.clock()
            entry = self._live(key, now)
        return None if entry is None else entry.expires - now

    def exists(self, key: object) -> bool:
        """Whether ``key`` holds a live value."""
        key = self.open().check_key(key)
        with self.lock:
            return self._live(key, self.clock()) is not None

    def invalidate_tags(self, tags: tuple[object, ...]) -> None:
        """Drop every entry stored with one of ``tags``."""
        self.open()
        wanted = _check_tags(tags)
        with self.lock:
            for key in [key for key, entry in self._entries.items() if entry.tags & wanted]:
                self._drop(key)

    def clear(self) -> None:
        """Drop every entry; a computation running now stores nothing."""
        self.open()
        with self.lock:
            self._entries.clear()
            self._epoch += 1

    def stats(self) -> Stats:
        """Lookups (as near hits and misses), computations, coalesced waits, fail-safe."""
        self.open()
        with self.lock:
            c = dict(self._counts)
        return Stats(
            near_hits=c["hits"], near_misses=c["misses"], computes=c["computes"], local_coalesced=c["coalesced"],
            stale_served=c["stale_served"], fail_safe_activations=c["fail_safe_activations"],
        )

    def health(self) -> Health:
        """Always whole: mode ``"local"``."""
        self.open()
        with self.lock:
            now = self.clock()
            entries = sum(now < entry.expires for entry in self._entries.values())
        return Health("ok", "disabled", "local", {"namespace": self.core.settings.namespace, "entries": entries})

    def close(self) -> None:
        """Drop every entry; later calls raise RuntimeError."""
        self.closed = True
        with self.lock:
            self._entries.clear()
            self._epoch += 1

    # -- get_or_compute -------------------------------------------------------

    def begin(
        self,
        key: object,
        fn: object,
        strategy: CacheStrategy | None,
        ttl: float | timedelta | None,
        timeout: float | None,
        tags: object,
        **policy: Any,
    ) -> _Call:
        """Check ``get_or_compute``'s arguments, in the real clients' order.

        :raises TypeError, ValueError: an argument is invalid (``fn`` not callable too).
        """
        core = self.open()
        merged = core.call_policy(tags=(), **policy)
        key = core.check_key(key)
        seconds = ClientCore.ttl_for(strategy, ttl)
        wait = core.lease_wait(timeout)
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        return _Call(key, seconds, wait, merged, _check_tags(tags))

    def claim(self, key: str, new_flight: Callable[[], Any]) -> _Claim:
        """Look ``key`` up; on a miss, join its computation or start one (``new_flight()``)."""
        with self.lock:
            entry = self._live(key, self.clock())
            self._looked_up(entry)
            if entry is not None:
                return _Claim(data=entry.data)
            flight = self._flights.get(key)
            if flight is not None:
                self._counts["coalesced"] += 1
                return _Claim(flight=flight)
            flight = self._flights[key] = new_flight()
            stale = self._entries.get(key)  # past its TTL, within its fail-safe time
            return _Claim(flight=flight, lead=True, stale=None if stale is None else stale.data, token=self._token(key))

    def refresh_claim(self, call: _Call, new_flight: Callable[[], Any]) -> _Claim | None:
        """Start an eager refresh of ``call.key`` if one is due (less than ``1 - eager_refresh`` of
        its TTL left) and nothing computes it already."""
        eager = call.policy.eager_refresh
        assert eager is not None
        with self.lock:
            now = self.clock()
            entry = self._live(call.key, now)
            due = (1.0 - eager) * self.lifetime(call.seconds)
            if entry is None or call.key in self._flights or entry.expires - now > due:
                return None
            flight = self._flights[call.key] = new_flight()
            return _Claim(flight=flight, lead=True, stale=entry.data, token=self._token(call.key))

    def fill(self, call: _Call, data: bytes, seconds: float | None, token: tuple[int, int]) -> None:
        """Store a computed value, unless a write to its key came since ``token``."""
        with self.lock:
            if self._token(call.key) == token:
                self._put(call.key, data, seconds, call.tags, call.policy.stale_for)

    def revive(self, key: str, throttle: float, token: tuple[int, int]) -> None:
        """Fail-safe: the stale value of ``key`` counts as fresh for ``throttle`` seconds more."""
        with self.lock:
            self._counts["fail_safe_activations"] += 1
            entry = self._entries.get(key)
            now = self.clock()
            if entry is not None and self._token(key) == token and now < entry.expires + entry.stale_for:
                self._entries[key] = replace(
                    entry, expires=now + throttle, stale_for=max(0.0, entry.expires + entry.stale_for - now)
                )

    def land(self, key: str, flight: Any) -> None:
        """``flight`` ended: the next miss of ``key`` computes again."""
        with self.lock:
            if self._flights.get(key) is flight:
                del self._flights[key]

    def count(self, name: str) -> None:
        """One more ``name`` event."""
        with self.lock:
            self._counts[name] += 1

    def deliver(self, result: Any) -> Any:
        """What a caller receives: a :class:`Stale` value unwrapped and counted once per caller."""
        if isinstance(result, Stale):
            self.count("stale_served")
            return result.value
        return result


def _fill_flow(store: _Store, call: _Call, claim: _Claim, *, background: bool = False) -> Flow:
    """The leader's computation (``_flows._compute_and_fill``, with this process in the coordinator's
    place): one :class:`Compute` step; fail-safe serves the stale value when ``fn`` fails; the value
    is stored unless a write to the key came meanwhile. Lets the claim's flight go however it ends."""
    try:
        stale = MISSING if claim.stale is None else store.codec.decode(claim.stale)
        store.count("computes")
        has_stale = claim.stale is not None
        soft = call.policy.soft_timeout if has_stale and not background else None
        ok, result = yield Compute(soft, call.policy.hard_timeout, stale)
        if not ok:
            if not isinstance(result, Exception):
                raise result  # cancelled or interrupted: nothing is wrong with the key
            if has_stale and call.policy.fail_safe:
                store.revive(call.key, call.policy.fail_safe_throttle, claim.token)
                return Stale(stale)
            if isinstance(result, CacheTimeout):
                raise result
            raise store.core.compute_error(call.key, result) from result
        data = store.core.encode(result)
        if result is not None or call.policy.cache_none:
            store.fill(call, data, call.policy.ttl(call.seconds), claim.token)
        return result
    finally:
        store.land(call.key, claim.flight)


def _no_streams(name: str) -> Any:
    """A Redis Streams method of the double: it has no Redis."""

    def unsupported(self: object, *args: object, **kwargs: object) -> NoReturn:
        raise NotImplementedError(f"{name}: the local test double has no Redis Streams; use a real client")

    unsupported.__name__ = unsupported.__qualname__ = name
    unsupported.__doc__ = "Not in the local test double (it has no Redis).\n\n:raises NotImplementedError: always."
    return unsupported


class _LocalTwin:
    """The constructor and the Redis Streams stand-ins both twins share.

    Takes every parameter of :class:`~mtcache.client._core.ClientBase` and checks them as the real
    clients do; ``socket_path``, ``redis_url``, ``spawn``, the near cache's sizes and
    ``request_timeout`` have no effect, and every read decodes a fresh copy (``copy_on_read``).

    :param clock: the seconds TTLs are measured on (default ``time.monotonic``).
    :raises TypeError, ValueError: an argument is of the wrong type or out of range.
    """

    _core: ClientCore
    _store: _Store

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        namespace: str | None = None,
        redis_url: str | None = None,
        spawn: bool = True,
        near_capacity: int | None = None,
        near_max_age: float = 30.0,
        near_max_bytes: int | None = None,
        codec: str | Codec | None = None,
        copy_on_read: bool = False,
        request_timeout: float = 5.0,
        fail_safe: float | None = None,
        fail_safe_throttle: float = 30.0,
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        eager_refresh: float | None = None,
        jitter: float | None = None,
        cache_none: bool = True,
        local: bool = True,
        write_mode: str = "through",
        write_behind_max_delay: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # ``local`` was taken by ClientBase.__new__; the parents' __init__ is never called: it sets up a
        # real client's state (connections, flights), none of which the double uses
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, not {type(clock).__name__}")
        policy = Policy(fail_safe, fail_safe_throttle, soft_timeout, hard_timeout, eager_refresh, jitter, cache_none)
        self._core = ClientCore(
            socket_path, namespace=namespace, redis_url=redis_url, spawn=spawn, near_capacity=near_capacity,
            near_max_bytes=near_max_bytes, near_max_age=near_max_age, codec=codec, copy_on_read=copy_on_read,
            request_timeout=request_timeout, policy=policy, write_mode=write_mode,
            write_behind_max_delay=write_behind_max_delay,
        )
        self._closed = False
        self._store = _Store(self._core, clock, type(self).__name__)
        self._setup()

    def _setup(self) -> None:
        """The twin's own state."""

    streams = property(_no_streams("streams"))
    publish_to_stream = _no_streams("publish_to_stream")
    read_stream_latest = _no_streams("read_stream_latest")
    read_stream = _no_streams("read_stream")
    create_consumer_group = _no_streams("create_consumer_group")
    read_group = _no_streams("read_group")
    ack = _no_streams("ack")
    claim_stale = _no_streams("claim_stale")
    subscribe = _no_streams("subscribe")


class LocalClient(_LocalTwin, Client):
    """:class:`~mtcache.Client` held in this process: same API, semantics and errors, no coordinator
    or Redis (``Client(local=True)``). Thread-safe. Parameters: see :class:`_LocalTwin`."""

    def get(self, key: str, default: Any = None) -> Any:
        """A fresh decoded copy of ``key``'s value, or ``default``.

        :raises TypeError, ValueError: ``key`` is not a valid key.
        """
        return self._store.get(key, default)

    def set(
        self, key: str, value: Any, *args: Any, ttl: float | timedelta | None = None,
        strategy: CacheStrategy | None = None, tags: Iterable[str] = (),
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds (``FOREVER``: no expiry) or ``strategy.ttl`` (by keyword),
        with ``tags``; with neither, as long as the real cache keeps it (the longer of ``MTCACHE_L1_TTL``
        and ``MTCACHE_L2_TTL``: 1 h by default). Always True.

        :raises TypeError: ``value`` cannot be encoded, the TTL was given by position, or an argument
            is of the wrong type.
        :raises ValueError: the encoding is too large, key/ttl are invalid, or both ttl and strategy given.
        """
        return self._store.set(key, value, args, strategy, ttl, tags)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of those of ``keys`` that are cached (the others are absent).

        :raises TypeError, ValueError: ``keys`` is a single string, or holds an invalid key.
        """
        return self._store.get_many(keys)

    def set_many(
        self, mapping: Mapping[str, Any], *, ttl: float | timedelta | None = None,
        strategy: CacheStrategy | None = None, tags: Iterable[str] = (),
    ) -> bool:
        """``set`` every item (nothing is stored if one cannot be). Always True.

        :raises TypeError, ValueError: as :meth:`set`; ``mapping`` is not a Mapping.
        """
        return self._store.set_many(mapping, strategy, ttl, tags)

    def add(
        self, key: str, value: Any, *args: Any, ttl: float | timedelta | None = None,
        strategy: CacheStrategy | None = None, tags: Iterable[str] = (),
    ) -> bool:
        """``set`` only if ``key`` holds no value: True if stored.

        :raises TypeError, ValueError: as :meth:`set`.
        """
        return self._store.add(key, value, args, strategy, ttl, tags)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it held a value.

        :raises TypeError, ValueError: ``key`` is not a valid key.
        """
        return self._store.delete(key)

    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; how many held a value.

        :raises TypeError, ValueError: ``keys`` is a single string, or holds an invalid key.
        """
        return self._store.delete_many(keys)

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the int ``key`` holds and return the sum; a missing key counts from 0 and
        is created without expiry; an existing one keeps its TTL and tags.

        :raises TypeError: ``delta`` is not an int, or ``key`` holds something else (named).
        :raises ValueError: ``key`` is invalid, or ``delta`` or the counter would leave +-2**53.
        """
        return self._store.incr(key, delta)

    def decr(self, key: str, delta: int = 1) -> int:
        """``incr(key, -delta)``.

        :raises TypeError, ValueError: as :meth:`incr`.
        """
        return self._store.incr(key, -_check_delta(delta))

    def touch(self, key: str, *, ttl: float | timedelta | None = None) -> bool:
        """Give ``key``'s value a new TTL from now (default as for ``set``); False if none.

        :raises TypeError, ValueError: ``key`` or ``ttl`` is invalid.
        """
        return self._store.touch(key, ttl)

    def ttl(self, key: str) -> float | None:
        """Seconds ``key``'s value has left (``math.inf`` for ``FOREVER``), or None if absent.

        :raises TypeError, ValueError: ``key`` is not a valid key.
        """
        return self._store.ttl(key)

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a value.

        :raises TypeError, ValueError: ``key`` is not a valid key.
        """
        return self._store.exists(key)

    def invalidate_tags(self, *tags: str) -> None:
        """Every value stored with one of ``tags`` becomes a miss.

        :raises TypeError: a tag is not a str.
        """
        self._store.invalidate_tags(tags)

    def get_or_compute(
        self,
        key: str,
        fn: Callable[[], T],
        *,
        strategy: CacheStrategy | None = None,
        ttl: float | timedelta | None = None,
        timeout: float | None = None,
        fail_safe: float | None = None,
        fail_safe_throttle: float | None = None,
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        eager_refresh: float | None = None,
        jitter: float | None = None,
        cache_none: bool | None = None,
        tags: Iterable[str] = (),
    ) -> T:
        """The cached value of ``key``; on a miss ``fn()``, run once however many threads ask (the
        others wait for its value or its error). Arguments: see :meth:`mtcache.Client.get_or_compute`.

        :raises ComputeError: ``fn`` raised and no stale value could stand in; nothing was cached.
        :raises CacheTimeout: the wait passed ``timeout``, or ``fn`` passed ``hard_timeout``, and no
            stale value could stand in.
        :raises TypeError, ValueError: an argument is invalid, or ``fn``'s value cannot be encoded.
        """
        store = self._store
        call = store.begin(
            key, fn, strategy, ttl, timeout, tags, fail_safe=fail_safe, fail_safe_throttle=fail_safe_throttle,
            soft_timeout=soft_timeout, hard_timeout=hard_timeout, eager_refresh=eager_refresh, jitter=jitter,
            cache_none=cache_none,
        )
        deadline = time.monotonic() + call.wait
        while True:
            claim = store.claim(call.key, concurrent.futures.Future)
            if claim.data is not None:
                value = store.codec.decode(claim.data)
                break
            if claim.lead:
                value = store.deliver(self._lead(call, claim, fn))
                break
            try:
                result = claim.flight.result(timeout=max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                if claim.flight.done():
                    raise  # the computing thread's own error (a CacheTimeout is a TimeoutError too)
                raise CacheTimeout(f"gave up waiting for another thread to compute {call.key!r}") from None
            if result is not RETRY:  # else the computing thread was interrupted, not this one: try again
                value = store.deliver(result)
                break
        if call.policy.eager_refresh:
            refresh = store.refresh_claim(call, concurrent.futures.Future)
            if refresh is not None:
                threading.Thread(
                    target=self._refresh_quietly, args=(call, refresh, fn), name="mtcache-refresh", daemon=True
                ).start()
        return value

    def cached(
        self,
        ttl: float | timedelta | None = None,
        *,
        strategy: CacheStrategy | None = None,
        key: str | Callable[..., str] | None = None,
        tags: Iterable[str] = (),
        **policy: Any,
    ) -> Callable[[Callable[..., Any]], decorator.CachedFunction]:
        """A decorator caching a function's results with :meth:`get_or_compute`, keyed by its arguments;
        see :func:`mtcache.client.decorator.cached`.

        :raises TypeError, ValueError: see :func:`mtcache.client.decorator.cached`.
        """
        return decorator.cached(self, ttl, strategy=strategy, key=key, tags=tags, **policy)

    def _lead(self, call: _Call, claim: _Claim, fn: Callable[[], Any], *, background: bool = False) -> Any:
        """Compute as the leader, through :meth:`Client._drive`; its waiters get the outcome."""
        try:
            value = self._drive(_fill_flow(self._store, call, claim, background=background), fn)
        except BaseException as exc:
            if isinstance(exc, Exception):
                claim.flight.set_exception(exc)
            else:
                claim.flight.set_result(RETRY)  # interrupted: its waiters were not, they try again
            raise
        claim.flight.set_result(value)
        return value

    def _refresh_quietly(self, call: _Call, claim: _Claim, fn: Callable[[], Any]) -> None:
        try:
            self._lead(call, claim, fn, background=True)
        except Exception as exc:  # a failed refresh changes nothing: the current value stays
            log.debug("mtcache: the eager refresh of %r failed: %s", call.key, exc)

    def clear(self) -> None:
        """Drop every value of this client."""
        self._store.clear()

    def stats(self, *, workers: bool = False) -> Stats:
        """``near_hits``/``near_misses`` (every lookup), ``computes``, ``local_coalesced``,
        ``stale_served``, ``fail_safe_activations``; the other counters, and the host-wide
        ``fleet`` (there is no host here), stay 0. ``workers`` is accepted and changes nothing."""
        return self._store.stats()

    def health(self) -> Health:
        """``Health("ok", "disabled", "local", {"namespace", "entries"})``."""
        return self._store.health()

    def close(self) -> None:
        """Drop every value; later calls raise RuntimeError. Safe to call twice."""
        self._closed = True
        self._store.close()

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLocalClient(_LocalTwin, AsyncClient):
    """:class:`~mtcache.AsyncClient` held in this process (``AsyncClient(local=True)``); see
    :class:`LocalClient`. ``fn`` may be a coroutine function or a plain callable; tasks of this
    client share one computation per key."""

    def _setup(self) -> None:
        #: background work (eager refreshes, computations past their soft timeout)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def get(self, key: str, default: Any = None) -> Any:
        """See :meth:`LocalClient.get`."""
        return self._store.get(key, default)

    async def set(
        self, key: str, value: Any, *args: Any, ttl: float | timedelta | None = None,
        strategy: CacheStrategy | None = None, tags: Iterable[str] = (),
    ) -> bool:
        """See :meth:`LocalClient.set`."""
        return self._store.set(key, value, args, strategy, ttl, tags)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """See :meth:`LocalClient.get_many`."""
        return self._store.get_many(keys)

    async def set_many(
        self, mapping: Mapping[str, Any], *, ttl: float | timedelta | None = None,
        strategy: CacheStrategy | None = None, tags: Iterable[str] = (),
    ) -> bool:
        """See :meth:`LocalClient.set_many`."""
        return self._store.set_many(mapping, strategy, ttl, tags)

    async def add(
        self, key: str, value: Any, *args: Any, ttl: float | timedelta | None = None,
        strategy: CacheStrategy | None = None, tags: Iterable[str] = (),
    ) -> bool:
        """See :meth:`LocalClient.add`."""
        return self._store.add(key, value, args, strategy, ttl, tags)

    async def delete(self, key: str) -> bool:
        """See :meth:`LocalClient.delete`."""
        return self._store.delete(key)

    async def delete_many(self, keys: Iterable[str]) -> int:
        """See :meth:`LocalClient.delete_many`."""
        return self._store.delete_many(keys)

    async def incr(self, key: str, delta: int = 1) -> int:
        """See :meth:`LocalClient.incr`."""
        return self._store.incr(key, delta)

    async def decr(self, key: str, delta: int = 1) -> int:
        """See :meth:`LocalClient.decr`."""
        return self._store.incr(key, -_check_delta(delta))

    async def touch(self, key: str, *, ttl: float | timedelta | None = None) -> bool:
        """See :meth:`LocalClient.touch`."""
        return self._store.touch(key, ttl)

    async def ttl(self, key: str) -> float | None:
        """See :meth:`LocalClient.ttl`."""
        return self._store.ttl(key)

    async def exists(self, key: str) -> bool:
        """See :meth:`LocalClient.exists`."""
        return self._store.exists(key)

    async def invalidate_tags(self, *tags: str) -> None:
        """See :meth:`LocalClient.invalidate_tags`."""
        self._store.invalidate_tags(tags)

    async def get_or_compute(
        self,
        key: str,
        fn: Callable[[], Awaitable[T]] | Callable[[], T],
        *,
        strategy: CacheStrategy | None = None,
        ttl: float | timedelta | None = None,
        timeout: float | None = None,
        fail_safe: float | None = None,
        fail_safe_throttle: float | None = None,
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        eager_refresh: float | None = None,
        jitter: float | None = None,
        cache_none: bool | None = None,
        tags: Iterable[str] = (),
    ) -> T:
        """See :meth:`LocalClient.get_or_compute`; under a soft or hard timeout ``fn`` runs as a task
        of its own (cancelled at the hard timeout)."""
        store = self._store
        call = store.begin(
            key, fn, strategy, ttl, timeout, tags, fail_safe=fail_safe, fail_safe_throttle=fail_safe_throttle,
            soft_timeout=soft_timeout, hard_timeout=hard_timeout, eager_refresh=eager_refresh, jitter=jitter,
            cache_none=cache_none,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + call.wait
        while True:
            claim = store.claim(call.key, loop.create_future)
            if claim.data is not None:
                value = store.codec.decode(claim.data)
                break
            if claim.lead:
                value = store.deliver(await self._lead(call, claim, fn))
                break
            try:
                result = await asyncio.wait_for(asyncio.shield(claim.flight), max(0.0, deadline - loop.time()))
            except TimeoutError:
                if claim.flight.done():
                    raise  # the computing task's own error (a CacheTimeout is a TimeoutError too)
                raise CacheTimeout(f"gave up waiting for another task to compute {call.key!r}") from None
            if result is not RETRY:  # else the computing task was cancelled, not this one: try again
                value = store.deliver(result)
                break
        if call.policy.eager_refresh:
            refresh = store.refresh_claim(call, loop.create_future)
            if refresh is not None:
                self._background(self._refresh_quietly(call, refresh, fn))
        return value

    def cached(
        self,
        ttl: float | timedelta | None = None,
        *,
        strategy: CacheStrategy | None = None,
        key: str | Callable[..., str] | None = None,
        tags: Iterable[str] = (),
        **policy: Any,
    ) -> Callable[[Callable[..., Any]], decorator.CachedFunction]:
        """A decorator caching a coroutine function's results with :meth:`get_or_compute`, keyed by its arguments;
        see :func:`mtcache.client.decorator.cached`.

        :raises TypeError, ValueError: see :func:`mtcache.client.decorator.cached`.
        """
        return decorator.cached(self, ttl, strategy=strategy, key=key, tags=tags, **policy)

    async def _lead(self, call: _Call, claim: _Claim, fn: Callable[[], Any], *, background: bool = False) -> Any:
        """Compute as the leader, through :meth:`AsyncClient._drive`; its waiters get the outcome."""
        try:
            value = await self._drive(_fill_flow(self._store, call, claim, background=background), fn)
        except BaseException as exc:
            if isinstance(exc, Exception):
                claim.flight.set_exception(exc)
                claim.flight.exception()  # mark retrieved: waiters may be none
            else:
                claim.flight.set_result(RETRY)  # cancelled: its waiters were not, they try again
            raise
        claim.flight.set_result(value)
        return value

    async def _refresh_quietly(self, call: _Call, claim: _Claim, fn: Callable[[], Any]) -> None:
        try:
            await self._lead(call, claim, fn, background=True)
        except Exception as exc:  # a failed refresh changes nothing: the current value stays
            log.debug("mtcache: the eager refresh of %r failed: %s", call.key, exc)

    async def clear(self) -> None:
        """See :meth:`LocalClient.clear`."""
        self._store.clear()

    async def stats(self, *, workers: bool = False) -> Stats:
        """See :meth:`LocalClient.stats`."""
        return self._store.stats()

    async def health(self) -> Health:
        """See :meth:`LocalClient.health`."""
        return self._store.health()

    async def close(self) -> None:
        """Cancel background work and drop every value; later calls raise RuntimeError. Safe to call twice."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._closed = True
        self._store.close()

    async def __aenter__(self) -> AsyncLocalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
