"""What the sync and async clients share: everything but the I/O.

:class:`ClientCore` holds the settings, the codec, the near cache, the counters
and the "coordinator unavailable" state, and turns replies into values. The two
client classes (:mod:`mtcache.client.sync`, :mod:`mtcache.client.aio`) are thin
twins over it that only move frames (stamina's ``_core.py`` shape).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mtcache.codec import Codec, get_codec, reads_msgpack_integers
from mtcache.config import Settings
from mtcache.errors import ComputeError, ProtocolError, UntrustedSocket
from mtcache.mirror import MirrorReader
from mtcache.protocol import INSPECT, PROTOCOL_VERSION, Op, Status, check_key, check_reply, check_tags
from mtcache.shm import STALL_MS, VersionTable
from mtcache.stats import FleetStats, Health, HotKey, Latency, Stats, WorkerStats
from mtcache.strategies import CacheStrategy, validate_ttl

from .near import NearCache
from .policy import Policy
from .reporting import Reporter

__all__ = ["ENDS_LEASE", "MISSING", "RETRY", "WAITS", "ClientBase", "ClientCore", "Stale", "fork_generation"]

log = logging.getLogger("mtcache.client")

MISSING = NearCache.MISSING


@dataclass(frozen=True, slots=True)
class Stale:
    """A result that is a stale value standing in for a failed or slow source (fail-safe); the
    client counts it when it hands it to a caller (:meth:`ClientCore.deliver`)."""

    value: Any


class _Retry:
    """What a caller sharing another's computation receives when that caller was
    cancelled or interrupted (it was not): it tries again itself."""


RETRY = _Retry()

#: Moves on in every forked child; hot paths compare ``_core.FORK_GEN`` with the
#: value their client saw (a module attribute read, cheaper than a call).
FORK_GEN = 0


def _after_fork_in_child() -> None:
    global FORK_GEN
    FORK_GEN += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_generation() -> int:
    """Moves on in every forked child: a client compares it with the value it saw
    when it connected, instead of calling ``os.getpid()`` on every call."""
    return FORK_GEN


#: Requests that end a lease this client holds: sent even to a coordinator that seems
#: stalled (it handles them when it runs again), never skipped while their connection
#: stays open, or the coordinator would keep the lease for a live connection.
ENDS_LEASE = frozenset({Op.FILL, Op.FAIL, Op.RELEASE})
#: ``write_mode`` values: ``"through"`` (a write returns once Redis has it) and ``"behind"``
WRITE_MODES = ("through", "behind")
#: Requests whose reply may wait for another caller's computation: their round trips are not
#: socket latency (the coordinator times them as ``lease``).
WAITS = frozenset({Op.LEASE, Op.REFRESH})

#: how many keys refused an eager refresh (another worker runs it) a client remembers
REFRESH_BUSY_KEPT = 4096

#: Back-off between attempts to reach a coordinator that did not answer.
RETRY_MIN, RETRY_MAX = 0.5, 5.0
#: The longest a read waits for its reply (see ClientCore.read_timeout).
READ_TIMEOUT = 1.0
#: The longest a new connection waits for the hello's reply.
HELLO_TIMEOUT = 2.0
#: While waiting for a reply, how often a client checks that its coordinator still beats.
WAIT_SLICE = 0.1
#: the call policies a client remembers (see ClientCore.call_policy)
POLICIES_KEPT = 256
#: the types of the arguments whose call policies are remembered
_PLAIN = frozenset({type(None), bool, int, float})


class ClientCore:
    """State and rules shared by :class:`~mtcache.Client` and :class:`~mtcache.AsyncClient`."""

    def __init__(
        self,
        socket_path: str | None,
        *,
        namespace: str | None,
        redis_url: str | None,
        spawn: bool,
        near_capacity: int | None,
        near_max_bytes: int | None,
        near_max_age: float,
        codec: str | Codec | None,
        copy_on_read: bool,
        request_timeout: float,
        policy: Policy,
        write_mode: str = "through",
        write_behind_max_delay: float = 0.005,
    ) -> None:
        self.settings = Settings.load(socket_path=socket_path, namespace=namespace, redis_url=redis_url,
                                      near_capacity=near_capacity, near_max_bytes=near_max_bytes)
        #: the client's defaults for get_or_compute's fail-safe and timing arguments
        self.policy = policy
        #: the policies of calls that gave arguments (see call_policy)
        self._policies: dict[tuple[tuple[Any, ...], tuple[type, ...]], Policy] = {}
        self.explicit_redis_url = redis_url
        self.spawn = spawn
        self.codec = get_codec(codec, max_bytes=self.settings.max_value_bytes)
        #: incr/decr need a codec that reads the msgpack integers Redis keeps counters as
        self.counts = reads_msgpack_integers(self.codec)
        self.near = NearCache(
            self.settings.near_capacity, self.settings.near_max_bytes, near_max_age, copy_on_read=copy_on_read,
            decode=self.codec.decode,
        )
        if not isinstance(request_timeout, (int, float)) or not request_timeout > 0:
            raise ValueError(f"request_timeout must be a positive number of seconds, got {request_timeout!r}")
        self.request_timeout = float(request_timeout)
        if write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode must be one of {', '.join(map(repr, WRITE_MODES))}, got {write_mode!r}")
        #: write-behind: set and delete are acknowledged once this host's coordinator holds them
        self.write_behind = write_mode == "behind"
        if (not isinstance(write_behind_max_delay, (int, float)) or isinstance(write_behind_max_delay, bool)
                or not 0 <= write_behind_max_delay <= 1):
            raise ValueError(f"write_behind_max_delay must be 0 to 1 seconds, got {write_behind_max_delay!r}")
        self.write_behind_max_delay = float(write_behind_max_delay)
        self.fork_gen = fork_generation()
        self.counters = dict.fromkeys(
            ("computes", "local_computes", "local_coalesced", "coordinator_errors", "decode_errors",
             "skipped_writes", "unknown_writes", "stale_served", "fail_safe_activations", "eager_refreshes"),
            0,
        )
        self.hello_info: dict[str, Any] = {}
        #: an inspecting client (the CLI): any coordinator answers its STATS and HEALTH
        self.inspect_only = False
        self.mirror: MirrorReader | None = None
        # hits, misses, torn retries of mirrors detached so far
        self.mirror_counters = [0, 0, 0]
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN
        self._warned = False
        #: why the coordinator last could not be used (see unavailable_reason)
        self.last_reason = "no request was made yet"
        self._state_lock = threading.Lock()
        #: keys whose eager refresh this client runs
        self._refreshing: set[str] = set()
        #: key -> version of the copy whose eager refresh another worker runs (not asked for again)
        self._refresh_busy: dict[str, int] = {}
        #: what this client reports to its coordinator (see reporting.py)
        self.reporter = Reporter(self)

    @property
    def socket_path(self) -> str:
        """The coordinator's socket."""
        return self.settings.socket_path

    @property
    def stream_prefix(self) -> str:
        """Where this namespace's application streams live in Redis."""
        return f"mtcache:{self.settings.namespace}:"

    # -- arguments ----------------------------------------------------------

    @staticmethod
    def check_key(key: object) -> str:
        """See :func:`mtcache.protocol.check_key`."""
        return check_key(key)

    @staticmethod
    def check_keys(keys: object) -> list[str]:
        """``keys`` as a list of valid keys.

        :raises TypeError: ``keys`` is a single string (or bytes), not iterable, or holds a non-str.
        :raises ValueError: a key is empty or too long.
        """
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise TypeError(f"keys must be an iterable of str (not a single string), got {type(keys).__name__}")
        return [check_key(key) for key in keys]

    @staticmethod
    def check_items(mapping: object) -> list[tuple[str, Any]]:
        """The items of ``mapping`` with valid keys.

        :raises TypeError: ``mapping`` is not a Mapping, or a key is not a str.
        :raises ValueError: a key is empty or too long.
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(f"set_many takes a mapping of key to value, got {type(mapping).__name__}")
        return [(check_key(key), value) for key, value in mapping.items()]

    def call_policy(
        self,
        fail_safe: float | None,
        fail_safe_throttle: float | None,
        soft_timeout: float | None,
        hard_timeout: float | None,
        eager_refresh: float | None,
        jitter: float | None,
        cache_none: bool | None,
        tags: object,
    ) -> Policy:
        """The policy of one ``get_or_compute`` call: the client's, with the call's arguments applied
        (see :meth:`Policy.with_call`). A call that gives none (the usual one, on every hit) gets the
        client's own at once; the policies derived for the same arguments, of the same types (None,
        bool, int or float: not subclasses, whose == and hash may say anything), are remembered
        (:data:`POLICIES_KEPT` of them), so a call site that passes, say, ``eager_refresh=0.8`` on every
        hit does not build and check a new one each time. A call with tags is derived afresh: its tags
        often differ from call to call.

        :raises TypeError, ValueError: an argument is invalid (an invalid call is never remembered).
        """
        untagged = type(tags) is tuple and not tags
        if (untagged and fail_safe is None and fail_safe_throttle is None and soft_timeout is None
                and hard_timeout is None and eager_refresh is None and jitter is None and cache_none is None):
            return self.policy
        key: tuple[tuple[Any, ...], tuple[type, ...]] | None = None
        if untagged:
            given = (fail_safe, fail_safe_throttle, soft_timeout, hard_timeout, eager_refresh, jitter, cache_none)
            types = tuple(map(type, given))
            # only plain numbers and None are remembered, whose == and hash nothing can redefine; the types are
            # part of the key: True == 1, but cache_none=1 or fail_safe=True must still raise
            if _PLAIN.issuperset(types):
                key = (given, types)
                found = self._policies.get(key)
                if found is not None:
                    return found
        policy = self.policy.with_call(
            fail_safe=fail_safe, fail_safe_throttle=fail_safe_throttle, soft_timeout=soft_timeout,
            hard_timeout=hard_timeout, eager_refresh=eager_refresh, jitter=jitter, cache_none=cache_none,
            tags=self.check_tags(tags) or None,
        )
        if key is not None:
            if len(self._policies) >= POLICIES_KEPT:
                self._policies.clear()
            self._policies[key] = policy
        return policy

    @staticmethod
    def check_tags(tags: object) -> tuple[str, ...]:
        """``tags`` (any iterable of str, not a single string) as a checked tuple.

        :raises TypeError, ValueError: see :func:`mtcache.protocol.check_tags`.
        """
        if type(tags) is tuple and not tags:  # the default, on every call that gives none
            return ()
        if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
            raise TypeError(f"tags must be an iterable of str (not a single string), got {type(tags).__name__}")
        return check_tags(tuple(tags))

    @staticmethod
    def no_positional_ttl(call: str, args: tuple[Any, ...]) -> None:
        """Refuse a TTL given by position (``set(key, value, 60)``), saying how to give it.

        :raises TypeError: ``args`` is not empty.
        """
        if args:
            raise TypeError(f"{call}() takes the TTL by keyword: {call}(key, value, ttl={args[0]!r}) "
                            f"(or strategy=CacheStrategy...)")

    @staticmethod
    def ttl_for(strategy: CacheStrategy | None, ttl: float | timedelta | None) -> float | None:
        """The TTL in seconds: ``ttl`` if given (FOREVER included), else ``strategy.ttl``, else None
        (the coordinator's defaults: ``MTCACHE_L1_TTL`` in L1, ``MTCACHE_L2_TTL`` in Redis).

        :raises ValueError: both were given, or ``ttl`` is not positive and finite.
        :raises TypeError: ``strategy`` is not a CacheStrategy or ``ttl`` not a number/timedelta.
        """
        if strategy is not None and ttl is not None:
            raise ValueError("give either strategy or ttl, not both")
        if ttl is not None:
            return validate_ttl(ttl)
        if strategy is None:
            return None
        if not isinstance(strategy, CacheStrategy):
            raise TypeError(f"strategy must be a CacheStrategy, not {type(strategy).__name__}: {strategy!r}")
        return strategy.ttl

    def lease_wait(self, timeout: float | None) -> float:
        """How long a lease waiter waits: ``timeout`` or twice the lease TTL."""
        if timeout is None:
            return 2 * self.settings.lease_ttl
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout < 1e9:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return float(timeout)

    # -- connection state ---------------------------------------------------

    def hello(self) -> list[Any]:
        """The hello request's arguments."""
        namespace = INSPECT if self.inspect_only else self.settings.namespace
        return [Op.HELLO, 0, PROTOCOL_VERSION, namespace, os.getpid()]

    def accept_hello(self, reply: list[Any]) -> None:
        """Check the hello reply and map the coordinator's version table. A new
        coordinator (another table) invalidates every near copy.

        :raises ProtocolError: the coordinator refused the hello, or its reply is malformed.
        """
        reply = check_reply(Op.HELLO, reply)
        if reply[1] != Status.OK:
            raise ProtocolError(f"coordinator refused the connection: {reply[2]}: {reply[3]}")
        info = reply[2]
        with self._state_lock:
            table = self.near.table
            if table is None or table.path != info["versions"] or table.generation != info["generation"]:
                if table is not None:
                    self.reporter.rebase()  # another coordinator: its figures start now
                self.near.clear()
                # the old mapping is dropped, never closed: another thread may be reading
                # it right now (it is unmapped once nothing refers to it)
                self.near.table = VersionTable.attach(info["versions"])
            mirror = self.mirror
            if mirror is None or mirror.path != info["mirror"] or mirror.generation != info["mirror_generation"]:
                self._detach_mirror()
                if info["mirror"]:
                    try:
                        self.mirror = MirrorReader.attach(info["mirror"])
                    except (OSError, ValueError) as exc:  # the socket path still serves everything
                        log.warning("mtcache: cannot map the L1 mirror %s: %s", info["mirror"], exc)
            self.hello_info = info
            self.reporter.enabled = info.get("reports") is True and not self.inspect_only
            self._retry_delay = RETRY_MIN
            if self._warned:
                log.warning("mtcache: coordinator on %s answers again", self.socket_path)
            self._warned = False

    def backing_off(self) -> bool:
        """True while backing off after the coordinator failed to answer."""
        return bool(self._retry_at) and time.monotonic() < self._retry_at

    def stalled(self) -> bool:
        """True while this client's coordinator has not beaten for :data:`STALL_MS` and its
        process still exists (stopped, or paused): no reply will come for now. A retired
        table (a clean stop, or a successor took over) or a dead process is not stalled:
        connecting again finds out what serves the socket now."""
        table = self.near.table
        if table is None:
            return False
        silent = table.silent_ms()
        if silent is None or silent < STALL_MS:
            return False
        pid = self.hello_info.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a process of another user took the pid: ours is gone
            return False
        return True

    @property
    def hello_timeout(self) -> float:
        """How long a new connection waits for the hello's reply (before it, the client cannot
        see the coordinator's heartbeat)."""
        return min(self.request_timeout, HELLO_TIMEOUT)

    @property
    def read_timeout(self) -> float:
        """How long a read (GET, STATS, HEALTH) waits for its reply: a get is not worth the
        whole request timeout (a miss is cheaper)."""
        return min(self.request_timeout, READ_TIMEOUT)

    def begin_compute(
        self,
        key: object,
        fn: object,
        strategy: CacheStrategy | None,
        ttl: float | timedelta | None,
        timeout: float | None,
    ) -> tuple[str, float | None, float, Any]:
        """Check ``get_or_compute``'s arguments and look in near and the mirror:
        ``(key, ttl seconds (None: the defaults), wait seconds, value or MISSING)``.

        :raises TypeError, ValueError: an argument is invalid (``fn`` not callable too).
        """
        key = self.check_key(key)
        seconds = self.ttl_for(strategy, ttl)
        wait = self.lease_wait(timeout)
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        value = self.near.get(key)
        if value is MISSING:
            value = self.from_mirror(key)
        return key, seconds, wait, value

    def _detach_mirror(self) -> None:
        # dropped, never closed: another thread may be reading it right now (it is
        # unmapped once nothing refers to it)
        mirror, self.mirror = self.mirror, None
        if mirror is not None:
            self.mirror_counters = [a + b for a, b in zip(self.mirror_counters, _mirror_counts(mirror), strict=True)]

    def from_mirror(self, key: str) -> Any:
        """``key``'s value from the shared-memory L1 mirror, kept in near too, or
        MISSING. The version is read before the mirror: a write landing between the
        two then invalidates the near copy rather than pairing an old value with a
        new version."""
        mirror = self.mirror
        table = self.near.table
        if mirror is None or table is None or not table.alive():
            return MISSING
        version = table.counters[table.slot(key)]
        found = mirror.entry(key)
        if found is None:
            return MISSING
        data, expiry_ns = found
        # the mirror holds a value while it is fresh: its near copy lives no longer
        return self.accept_value(key, data, version, (expiry_ns - time.monotonic_ns()) / 1e9)

    def unavailable(self, exc: BaseException) -> None:
        """The coordinator did not answer: back off, warn once, and stop reading the mirror.
        Near copies stay: they are served only while the coordinator beats (see
        :class:`NearCache`), and they are a fail-safe caller's fallback otherwise."""
        with self._state_lock:
            self._detach_mirror()
            self.counters["coordinator_errors"] += 1
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
            self.last_reason = unavailable_reason(exc, self.socket_path)
            if not self._warned:
                self._warned = True
                level = logging.ERROR if isinstance(exc, (ProtocolError, UntrustedSocket)) else logging.WARNING
                log.log(
                    level,
                    "mtcache: coordinator on %s unavailable: %s; computing locally and retrying in the background",
                    self.socket_path, self.last_reason,
                )

    def connected(self) -> None:
        """A request went through: stop backing off."""
        self._retry_at = 0.0

    def forked(self) -> bool:
        """True (once) in a forked child: the caller drops its connections."""
        gen = fork_generation()
        if gen == self.fork_gen:
            return False
        self.fork_gen = gen
        self._state_lock = threading.Lock()
        self.near.reset_after_fork()
        self.mirror = None  # the parent's mapping: still valid, but reattached on the hello
        self._retry_at = 0.0
        self.reporter.enabled = False  # until the child's own hello
        self.reporter.rebase()  # the parent reports what it counted
        return True

    # -- values -------------------------------------------------------------

    def encode(self, value: Any) -> bytes:
        """Encode with the client's codec (TypeError / ValueError for bad values)."""
        return self.codec.encode(value)

    @staticmethod
    def refuse_coroutine(result: Any) -> None:
        """A coroutine where a value was expected: ``fn`` is async and the client is not.

        :raises TypeError: saying to use AsyncClient (the coroutine is closed, never awaited).
        """
        if inspect.iscoroutine(result):
            result.close()
            raise TypeError("fn returned a coroutine: Client runs plain functions; for a coroutine function "
                            "use AsyncClient (or call it yourself inside fn)")

    def accept_value(self, key: str, data: bytes, version: int, ttl: float) -> Any:
        """Decode a value the coordinator sent and keep a near copy. MISSING if it
        cannot be decoded (another codec wrote it): counted, never raised."""
        try:
            value = self.codec.decode(data)
        except Exception:  # any codec's decode error is a cache miss
            self.counters["decode_errors"] += 1
            log.warning("mtcache: value of %r cannot be decoded with the %s codec", key, self.codec.name)
            return MISSING
        self.near.put(key, value, data, version, ttl)
        return value

    def decode_stale(self, key: str, data: object) -> Any:
        """A stale value a reply carries (bytes, or nil), decoded but kept nowhere; MISSING
        if there is none or it cannot be decoded."""
        if not isinstance(data, bytes):
            return MISSING
        try:
            return self.codec.decode(data)
        except Exception:  # any codec's decode error: no fallback value
            self.counters["decode_errors"] += 1
            return MISSING

    def deliver(self, result: Any) -> Any:
        """What a caller of get_or_compute receives from a flow's ``result``: a :class:`Stale`
        value is unwrapped and counted (``stale_served``) once per caller."""
        if isinstance(result, Stale):
            self.counters["stale_served"] += 1
            return result.value
        return result

    def nominal(self, seconds: float | None) -> float:
        """The lifetime of a write here (near copy, eager refresh): its TTL, or for one that gave
        none the L1 default its coordinator applies."""
        return self.settings.l1_ttl if seconds is None else seconds

    def refresh_due(self, key: str, seconds: float | None, policy: Policy) -> int | None:
        """The version of this worker's copy of ``key`` if an eager refresh of it is due (it has
        less than ``1 - eager_refresh`` of its lifetime left to live) and none is running from
        this client; it then counts as running until :meth:`refreshed`."""
        eager = policy.eager_refresh
        if not eager:
            return None
        held = self.near.freshness(key)
        if held is None or held[1] > (1.0 - eager) * self.nominal(seconds):
            return None
        with self._state_lock:
            if key in self._refreshing or self._refresh_busy.get(key) == held[0]:
                return None
            self._refreshing.add(key)
        return held[0]

    def refresh_busy(self, key: str, version: int) -> None:
        """Another worker refreshes ``key``: this client does not ask again for its copy at ``version``
        (the refreshed value comes with a new version)."""
        with self._state_lock:
            if len(self._refresh_busy) >= REFRESH_BUSY_KEPT:
                self._refresh_busy.clear()
            self._refresh_busy[key] = version

    def refreshed(self, key: str) -> None:
        """The eager refresh of ``key`` started by this client is over."""
        with self._state_lock:
            self._refreshing.discard(key)

    def failure(self, exc: BaseException) -> tuple[str, str]:
        """``(type name, message)`` of an exception, for a FAIL request."""
        t = type(exc)
        name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
        return name, str(exc)

    def compute_error(self, key: str, exc: Exception) -> ComputeError:
        """The ComputeError for ``fn`` raising ``exc`` in this process."""
        name, message = self.failure(exc)
        err = ComputeError(key, name, message)
        err.__cause__ = exc
        return err

    def filled(self, key: str, value: Any, data: bytes, ttl: float | None, reply: Any) -> None:
        """After a fill: keep a near copy if the coordinator stored the value."""
        if isinstance(reply, list) and reply[1] == Status.OK and reply[3]:
            self.near.put(key, self.codec.decode(data), data, reply[2], self.nominal(ttl))

    def close(self) -> None:
        """Let go of the shared memory (version table, mirror): unmapped once no
        thread still reading it refers to it."""
        with self._state_lock:
            self._detach_mirror()
            self.near.table = None
            self.near.clear()

    # -- reports ------------------------------------------------------------

    def stats_options(self, workers: bool) -> list[dict[str, bool]]:
        """The STATS request's arguments: the options map only when asked for and understood
        (a coordinator that takes reports takes options)."""
        return [{"workers": True}] if workers and self.hello_info.get("reports") is True else []

    def mirror_totals(self) -> list[int]:
        """This client's mirror hits, misses and torn retries, of every mirror it has read."""
        counts = self.mirror_counters
        mirror = self.mirror
        if mirror is not None:
            counts = [a + b for a, b in zip(counts, _mirror_counts(mirror), strict=True)]
        return counts

    def stats(self, coordinator: dict[str, Any] | None) -> Stats:
        """A Stats snapshot from this client's counters and the coordinator's."""
        c = coordinator or {}
        l1 = c.get("l1", {})
        mirror = c.get("mirror", {})
        counts = self.mirror_totals()
        return Stats(
            near_hits=self.near.hits,
            near_misses=self.near.misses,
            l1_hits=l1.get("hits", 0),
            l1_misses=l1.get("misses", 0),
            l2_hits=c.get("l2_hits", 0),
            l2_misses=c.get("l2_misses", 0),
            promotions=c.get("promotions", 0),
            computes=self.counters["computes"],
            local_computes=self.counters["local_computes"],
            coalesced=c.get("coalesced", 0),
            local_coalesced=self.counters["local_coalesced"],
            inflight_leases=c.get("inflight_leases", 0),
            evictions=l1.get("evictions", 0),
            l2_errors=c.get("l2_errors", 0),
            coordinator_errors=self.counters["coordinator_errors"],
            stale_served=self.counters["stale_served"],
            fail_safe_activations=self.counters["fail_safe_activations"],
            mirror_hits=counts[0],
            mirror_misses=counts[1],
            mirror_torn_retries=counts[2],
            mirror_not_mirrored=mirror.get("not_mirrored", 0),
            mirror_arena_used=mirror.get("arena_used", 0),
            fleet=_fleet(c),
            hot_keys=_hot_keys(c),
            coordinator=c,
        )

    def health(self, coordinator: dict[str, Any] | None) -> Health:
        """A Health snapshot; degraded when the coordinator or Redis is not ok."""
        if coordinator is None:
            details = {"socket": self.socket_path, "reason": self.last_reason}
            return Health("unavailable", "unknown", "degraded", details)
        return Health(coordinator["coordinator"], coordinator["redis"], coordinator["mode"], coordinator)


def unavailable_reason(exc: BaseException, socket_path: str) -> str:
    """One line saying why the coordinator on ``socket_path`` could not be used, from
    the error the attempt raised: a socket this client refuses to trust (another
    user's folder or process), no socket, nobody listening, a bad reply, silence."""
    if isinstance(exc, UntrustedSocket):
        return f"{exc} (a socket of another user, or in a folder others may write to, is never used)"
    if isinstance(exc, FileNotFoundError):
        return f"no socket at {socket_path}: no coordinator runs there"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing listens on {socket_path}: the coordinator that made it is gone"
    if isinstance(exc, PermissionError):
        return f"no permission to connect to {socket_path} ({exc})"
    if isinstance(exc, ProtocolError):
        return f"the coordinator's reply was not understood ({exc})"
    if isinstance(exc, TimeoutError):
        return f"the coordinator did not reply in time ({exc})"
    return str(exc) or type(exc).__name__


def _mirror_counts(mirror: MirrorReader) -> list[int]:
    return [mirror.hits, mirror.misses, mirror.torn_retries]


#: What a malformed part of a coordinator's statistics raises while it is read.
_MALFORMED = (TypeError, ValueError, AttributeError, IndexError, KeyError)


def _hot_keys(c: dict[str, Any]) -> tuple[HotKey, ...]:
    """The coordinator's hottest keys (none if it sent none, or sent them malformed)."""
    try:
        keys = tuple(HotKey(str(key), int(count), int(error)) for key, count, error in c.get("hot_keys") or ())
    except _MALFORMED:
        log.debug("mtcache: the coordinator's hot keys are malformed; left out")
        return ()
    return keys


def _fleet(c: dict[str, Any]) -> FleetStats:
    """The host's figures from a coordinator's statistics (empty ones from a coordinator that
    takes no reports, or that sent them malformed: statistics never fail a caller)."""
    try:
        return _read_fleet(c)
    except _MALFORMED:
        log.debug("mtcache: the coordinator's host-wide statistics are malformed; left out")
        return FleetStats()


def _read_fleet(c: dict[str, Any]) -> FleetStats:
    fleet = c.get("fleet") or {}
    l1 = c.get("l1") or {}
    latency = c.get("latency") or {}
    return FleetStats(
        workers=fleet.get("workers", 0),
        near_hits=fleet.get("near_hits", 0),
        near_misses=fleet.get("near_misses", 0),
        mirror_hits=fleet.get("mirror_hits", 0),
        mirror_misses=fleet.get("mirror_misses", 0),
        l1_hits=l1.get("hits", 0),
        l1_misses=l1.get("misses", 0),
        l2_hits=c.get("l2_hits", 0),
        l2_misses=c.get("l2_misses", 0),
        computes=fleet.get("computes", 0),
        coalesced=c.get("coalesced", 0),
        compute_seconds=fleet.get("compute_us", 0) / 1e6,
        latency={name: Latency.from_wire(data) for name, data in latency.items()},
        per_worker=tuple(WorkerStats(**worker) for worker in c.get("workers", ())),
    )


class ClientBase:
    """The constructor both clients share (their parameters are one list).

    :param socket_path: the coordinator's socket (default: ``MTCACHE_SOCKET`` or a
        per-user path).
    :param namespace: keys of different namespaces never meet; one coordinator
        serves one namespace (default: ``MTCACHE_NAMESPACE``, ``.env``, else ``"default"``).
    :param redis_url: passed to a coordinator this client starts, and used by the
        stream helpers.
    :param spawn: start a coordinator when none answers.
    :param near_capacity: near cache entries, the secondary bound (default ``MTCACHE_NEAR_CAPACITY``,
        else 65,536; 0 disables the near cache).
    :param near_max_age: seconds a near copy may be served without asking.
    :param near_max_bytes: near cache bytes: the encoded sizes of the values held, plus their keys
        (default ``MTCACHE_NEAR_MAX_BYTES``, else 128 MiB; 0 disables the near cache).
    :param codec: ``"msgpack"`` (default), ``"json"``, ``"pickle"`` or a codec object.
    :param copy_on_read: decode a fresh copy on every near hit.
    :param request_timeout: seconds to wait for a reply (lease waits excepted).
    :param write_mode: ``"through"`` (default): ``set``/``delete`` return once Redis holds the
        write. ``"behind"``: once this host's coordinator holds it (L1, mirror, version table:
        every worker of the host sees it); Redis and the other hosts follow within
        ``write_behind_max_delay`` seconds (default 5 ms) plus a round trip. A coordinator that
        crashes in between loses those writes (see the README's write-behind section).
    :param fail_safe, fail_safe_throttle, soft_timeout, hard_timeout, eager_refresh, jitter,
        cache_none: the defaults of ``get_or_compute``'s arguments of the same names (see
        :class:`~mtcache.client.policy.Policy`).
    :param local: an in-process cache with the same API, semantics and errors, and no
        coordinator or Redis: a test double for unit tests (:mod:`mtcache.client.local`).
    :raises TypeError, ValueError: an argument is of the wrong type or out of range.
    """

    #: the in-process twin ``local=True`` gives (module :mod:`mtcache.client.local`, class name)
    _LOCAL_TWIN = ""

    def __new__(cls, *args: Any, local: bool = False, **kwargs: Any) -> Any:
        if local and cls._LOCAL_TWIN and cls.__name__ != cls._LOCAL_TWIN:
            from . import local as local_module  # imported on first use: production code never needs it

            cls = getattr(local_module, cls._LOCAL_TWIN)
        return super().__new__(cls)

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
        local: bool = False,
        write_mode: str = "through",
        write_behind_max_delay: float = 0.005,
    ) -> None:
        # ``local`` was taken by __new__ (True gives the in-process twin, which has its own __init__)
        policy = Policy(fail_safe, fail_safe_throttle, soft_timeout, hard_timeout, eager_refresh, jitter, cache_none)
        self._core = ClientCore(
            socket_path,
            namespace=namespace,
            redis_url=redis_url,
            spawn=spawn,
            near_capacity=near_capacity,
            near_max_bytes=near_max_bytes,
            near_max_age=near_max_age,
            codec=codec,
            copy_on_read=copy_on_read,
            request_timeout=request_timeout,
            policy=policy,
            write_mode=write_mode,
            write_behind_max_delay=write_behind_max_delay,
        )
        self._near = self._core.near
        self._closed = False
        self._setup()

    def _setup(self) -> None:
        """The twin's own state (connections, locks)."""
        raise NotImplementedError
