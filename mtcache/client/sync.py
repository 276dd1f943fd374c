"""The synchronous client, thread-safe: one blocking socket per thread."""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from mtcache.errors import CacheTimeout, CoordinatorUnavailable, ProtocolError
from mtcache.fleet import REPORT_INTERVAL
from mtcache.protocol import FrameDecoder, Op, Status, check_reply, encode_frame
from mtcache.stats import Health, Stats
from mtcache.strategies import CacheStrategy

from . import _core
from . import spawn as _spawn
from . import trust as _trust
from ._core import MISSING, RETRY, ClientBase, Stale
from ._entry import Entry
from ._flows import (
    UNKNOWN,
    Compute,
    Flow,
    add_flow,
    compute_flow,
    delete_flow,
    delete_many_flow,
    exists_flow,
    get_flow,
    get_many_flow,
    incr_flow,
    invalidate_tags_flow,
    refresh_flow,
    set_flow,
    set_many_flow,
    touch_flow,
    ttl_flow,
)
from .policy import Policy

if TYPE_CHECKING:
    from .decorator import CachedFunction
    from .streams import Streams

__all__ = ["Client"]

log = logging.getLogger("mtcache.client")


def _never() -> bool:
    return False


class _Later:
    """A computation still running past its soft timeout, and how much longer it may run."""

    __slots__ = ("future", "hard")

    def __init__(self, future: concurrent.futures.Future[Any], hard: float | None) -> None:
        self.future, self.hard = future, hard


def _background(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
    """Run ``fn(*args)`` in a daemon thread (an abandoned computation must not keep the
    process from exiting); its outcome in a future."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="mtcache-compute", daemon=True).start()
    return future


T = TypeVar("T")


class _Conn:
    """One blocking connection to the coordinator (used by one thread; the report timer
    borrows it while that thread does not use it, see :func:`_report_timer`)."""

    def __init__(self, path: str, timeout: float) -> None:
        _trust.check_socket_dir(path)  # the socket's folder is this user's alone (FileNotFoundError: missing)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.timeout = timeout
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
            _trust.check_peer(self.sock)  # served by this uid: checked before anything is sent
        except OSError:
            self.sock.close()
            raise
        self.decoder = FrameDecoder()
        self.rid = 0
        self.ready: list[list[Any]] = []
        #: held while a request or a send uses the connection
        self.lock = threading.Lock()

    def send(self, msg: list[Any]) -> int:
        with self.lock:
            return self._send(msg)

    def _send(self, msg: list[Any]) -> int:
        self.rid += 1
        rid = msg[1] = self.rid
        self.sock.sendall(encode_frame(msg))
        return rid

    def request(self, msg: list[Any], timeout: float, stalled: Callable[[], bool]) -> list[Any]:
        """Send ``msg`` and return its reply; give up after ``timeout`` seconds, or as soon as
        ``stalled()`` says the coordinator stopped beating (checked every WAIT_SLICE)."""
        with self.lock:
            return self._request(msg, timeout, stalled)

    def _request(self, msg: list[Any], timeout: float, stalled: Callable[[], bool]) -> list[Any]:
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        rid = self._send(msg)
        while True:
            while self.ready:
                reply = self.ready.pop(0)
                if reply[0] == rid:
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply from the coordinator within {timeout:g}s")
            self.sock.settimeout(min(_core.WAIT_SLICE, remaining))
            try:
                data = self.sock.recv(262_144)
            except TimeoutError:
                if stalled():
                    raise CoordinatorUnavailable("the coordinator stopped beating (stopped or paused)") from None
                continue
            if not data:
                raise CoordinatorUnavailable("the coordinator closed the connection")
            self.ready.extend(self.decoder.feed(data))

    def close(self) -> None:
        self.sock.close()


class _ThreadMark:
    """Kept in a thread's thread-local beside its connection: it goes when the thread ends, and its
    finalizer (:func:`_thread_ended`) closes the connection."""

    __slots__ = ("__weakref__",)


def _thread_ended(client_ref: weakref.ref[Client], conn: _Conn) -> None:
    """The thread that owned ``conn`` ended: close it and let its client forget it. Without taking the
    client's lock: this runs wherever the thread's locals are freed (a forked child included, whose copy
    of the lock another thread of the parent may hold); ``set.discard`` is atomic."""
    client = client_ref()
    if client is not None:
        client._conns.discard(conn)
    with contextlib.suppress(OSError):
        conn.close()


def _report_timer(ref: weakref.ReferenceType[Client], stop: threading.Event) -> None:
    """Once per report interval, until the client is closed or collected: send its report
    if it is due (no request carried one) on one of its connections that no thread uses."""
    while not stop.wait(REPORT_INTERVAL):
        client = ref()
        if client is None or client._closed:
            return
        try:
            client._report_idle()
        except Exception as exc:  # statistics never take a worker down
            log.debug("mtcache: a report failed: %s", exc)
        del client


class Client(ClientBase):
    """A worker's handle on the host's coordinator. Thread-safe and fork-safe.
    Parameters: see :class:`~mtcache.client._core.ClientBase`.

    A coordinator that is missing, or dies, never raises into the application:
    ``get`` returns the default, ``set``/``delete`` are skipped, ``get_or_compute``
    calls ``fn`` itself; one warning is logged and the client retries with back-off.
    """

    _LOCAL_TWIN = "LocalClient"

    def _setup(self) -> None:
        self._local = threading.local()
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()
        self._flights: dict[str, concurrent.futures.Future[Any]] = {}
        self._streams: Streams | None = None
        self._report_stop: threading.Event | None = None

    # -- plumbing -----------------------------------------------------------

    def _check_fork(self) -> None:
        if self._core.forked():
            # the parent's sockets are the parent's: close our copies of the fds
            # (no shutdown(), which would cut the parent's connection too)
            for conn in self._conns:
                conn.close()
            self._conns = set()
            self._local = threading.local()
            self._lock = threading.Lock()
            self._flights = {}
            self._report_stop = None  # the parent's timer thread is not in this process

    def _conn(self) -> _Conn:
        conn: _Conn | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        core = self._core
        try:
            conn = _Conn(core.socket_path, core.request_timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            if not core.spawn or not _spawn.ensure_coordinator(
                core.socket_path, namespace=core.settings.namespace, redis_url=core.explicit_redis_url,
                idle_exit=core.settings.idle_exit,
            ):
                raise
            conn = _Conn(core.socket_path, core.request_timeout)
        try:
            core.accept_hello(conn.request(core.hello(), core.hello_timeout, _never))
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        # a thread that ends takes its connection with it (a thread per request would otherwise leave one
        # open socket, here and in the coordinator, per thread it ever ran)
        self._local.mark = mark = _ThreadMark()
        self._local.ended = weakref.finalize(mark, _thread_ended, weakref.ref(self), conn)
        with self._lock:
            self._conns.add(conn)
            if self._report_stop is None and core.reporter.enabled:
                self._report_stop = stop = threading.Event()
                threading.Thread(target=_report_timer, args=(weakref.ref(self), stop), name="mtcache-report",
                                 daemon=True).start()
        return conn

    def _report_idle(self) -> None:
        """The timer's report: sent on a connection no thread is using, if one is due."""
        core = self._core
        if not core.reporter.due() or core.backing_off() or core.stalled():
            return
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            if conn.lock.acquire(blocking=False):
                try:
                    payload = core.reporter.payload()
                    if payload is not None:
                        conn._send([Op.REPORT, 0, payload])
                except OSError:
                    pass  # the thread that owns the connection finds out on its next request
                finally:
                    conn.lock.release()
                return

    def _drop_conn(self) -> None:
        ended = getattr(self._local, "ended", None)
        if ended is not None:
            ended()  # what the thread's end would do: close its connection and drop it from _conns (once)
            self._local.conn = self._local.mark = self._local.ended = None

    def _request(self, op: int, *args: Any, timeout: float | None = None, reply: bool = True) -> Any:
        """Send one request and return its reply; never raises for an unavailable
        coordinator: None if the request was not sent, UNKNOWN if it was sent but no
        reply came (see :mod:`mtcache.client._flows`). With ``reply=False`` the
        request is only sent (None)."""
        if self._closed:
            raise RuntimeError("this mtcache Client is closed")
        core = self._core
        if core.backing_off():
            return None
        if op not in _core.ENDS_LEASE and core.stalled():
            # it would only wait; and close the connection, so that what it holds there (a
            # lease, a wait) is handed on when the coordinator runs again
            self._drop_conn()
            return None
        try:
            conn = self._conn()
        except (OSError, ProtocolError) as exc:
            core.unavailable(exc)
            return None
        reporter = core.reporter
        if reporter.due():
            payload = reporter.payload()
            if payload is not None:
                try:
                    conn.send([Op.REPORT, 0, payload])
                except OSError as exc:
                    self._drop_conn()
                    core.unavailable(exc)
                    return None
        reporter.requests += 1
        try:
            if not reply:
                conn.send([op, 0, *args])
                return None
            started = time.perf_counter_ns()
            answer = check_reply(op, conn.request([op, 0, *args], timeout or core.request_timeout, core.stalled))
            if op not in _core.WAITS:
                reporter.roundtrip.record_ns(time.perf_counter_ns() - started)
        except (OSError, ProtocolError) as exc:
            self._drop_conn()
            if not self._closed:  # a request cut short by close() (work in the background) is no fault
                core.unavailable(exc)
            return UNKNOWN
        except BaseException:
            # interrupted while waiting (KeyboardInterrupt...): the reply would come to nobody, and a
            # lease granted in it would stay with a live connection; closing it hands that on
            self._drop_conn()
            raise
        if answer[1] == Status.ERROR:
            self._drop_conn()
            core.unavailable(ProtocolError(f"coordinator error: {answer[2]}: {answer[3]}"))
            return UNKNOWN
        core.connected()
        return answer

    # -- the API ------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value of ``key``, or ``default``.

        :raises TypeError, ValueError: ``key`` is not a valid key.
        """
        if self._core.fork_gen != _core.FORK_GEN:
            self._check_fork()
        try:
            value = self._near.get(key)
        except TypeError:  # unhashable: check_key below says what is wrong
            value = MISSING
        if value is not MISSING:
            return value
        return self._drive(get_flow(self._core, self._core.check_key(key), default))

    def set(
        self,
        key: str,
        value: Any,
        *args: Any,
        strategy: CacheStrategy | None = None,
        ttl: float | timedelta | None = None,
        tags: Iterable[str] = (),
    ) -> bool:
        """Store ``value`` for ``ttl`` seconds (or ``strategy.ttl``; ``FOREVER``: no expiry) in
        L1 and L2; with neither, ``MTCACHE_L1_TTL`` (5 min) in L1 and ``MTCACHE_L2_TTL`` (1 h)
        in Redis. The TTL is given by keyword. Every worker on this host sees it from the moment this
        returns True. False: the coordinator did not acknowledge the write (it is
        unavailable: the write was skipped, or its outcome is unknown; either way
        this worker keeps no copy of it).

        :raises TypeError: ``value`` cannot be encoded (the message names its type).
        :raises ValueError: the encoding is too large, or key/ttl are invalid.
        """
        self._check_fork()
        core = self._core
        core.no_positional_ttl("set", args)
        return bool(self._drive(set_flow(core, core.check_key(key), value, core.ttl_for(strategy, ttl),
                                          core.check_tags(tags))))

    def delete(self, key: str) -> bool:
        """Remove ``key`` from every tier; True if some tier held it."""
        self._check_fork()
        return self._drive(delete_flow(self._core, self._core.check_key(key)))

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values of ``keys`` that are there (missing keys are absent from the dict), in
        the order given: near copies first, the rest in one round trip per 1,000 keys (and one
        pipelined Redis read for what the coordinator's L1 lacks).

        :raises TypeError, ValueError: a key is not a valid key (``keys`` a single string included).
        """
        self._check_fork()
        return self._drive(get_many_flow(self._core, self._core.check_keys(keys)))

    def set_many(
        self,
        mapping: Mapping[str, Any],
        *,
        ttl: float | timedelta | None = None,
        strategy: CacheStrategy | None = None,
        tags: Iterable[str] = (),
    ) -> bool:
        """:meth:`set` for every item of ``mapping``, in one round trip per 1,000 items (and one
        Redis pipeline); True once every write was acknowledged.

        :raises TypeError, ValueError: a key, a value (checked before anything is written) or the TTL is invalid.
        """
        self._check_fork()
        core = self._core
        items = core.check_items(mapping)
        return bool(self._drive(set_many_flow(core, items, core.ttl_for(strategy, ttl), core.check_tags(tags))))

    def delete_many(self, keys: Iterable[str]) -> int:
        """:meth:`delete` for every key, in one round trip per 1,000 keys; how many of them some tier held.

        :raises TypeError, ValueError: a key is not a valid key.
        """
        self._check_fork()
        return self._drive(delete_many_flow(self._core, self._core.check_keys(keys)))

    def add(
        self,
        key: str,
        value: Any,
        *args: Any,
        ttl: float | timedelta | None = None,
        strategy: CacheStrategy | None = None,
        tags: Iterable[str] = (),
    ) -> bool:
        """Store ``value`` only if ``key`` has no live value; True if it was stored. Decided in Redis,
        so of concurrent adds of one key on any hosts exactly one stores (while this host cannot
        reach Redis, on this host only; then False may also mean "not acknowledged").

        :raises TypeError, ValueError: as :meth:`set`.
        """
        self._check_fork()
        core = self._core
        core.no_positional_ttl("add", args)
        return bool(self._drive(add_flow(core, core.check_key(key), value, core.ttl_for(strategy, ttl),
                                          core.check_tags(tags))))

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the integer stored under ``key``, atomically across every host (in Redis),
        and return the new value; a missing key counts from 0 and is stored with no expiry (a live
        one keeps its TTL). Never answered from a near copy. Counters stay within +-2**53.

        :raises TypeError: the value is not an integer, ``delta`` is not an int, or the client's
            codec is not msgpack.
        :raises ValueError: the result would leave +-2**53.
        :raises L2Error: Redis is unreachable (a counter is never kept by one host alone).
        :raises CoordinatorUnavailable: no coordinator answers (or it did not reply: the increment
            may or may not have been made).
        """
        self._check_fork()
        return self._drive(incr_flow(self._core, self._core.check_key(key), delta))

    def decr(self, key: str, delta: int = 1) -> int:
        """:meth:`incr` by ``-delta``."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}: {delta!r}")
        return self.incr(key, -delta)

    def touch(self, key: str, *, ttl: float | timedelta | None = None) -> bool:
        """Give the live value of ``key`` a new TTL (from now; None: the tier defaults, as for a
        :meth:`set` without one); True if there was one.

        :raises TypeError, ValueError: the key or TTL is invalid.
        """
        self._check_fork()
        core = self._core
        return bool(self._drive(touch_flow(core, core.check_key(key), core.ttl_for(None, ttl))))

    def ttl(self, key: str) -> float | None:
        """Seconds before the value of ``key`` expires (``math.inf`` for one stored with
        ``ttl=FOREVER``), as its coordinator knows it; None if there is none (or no coordinator answers).

        :raises TypeError, ValueError: the key is invalid.
        """
        self._check_fork()
        return self._drive(ttl_flow(self._core, self._core.check_key(key)))

    def invalidate_tags(self, *tags: str) -> None:
        """Make every entry carrying one of ``tags`` a miss on every host: at once on this host, within
        the propagation bound elsewhere, and for hosts that were away or a Redis that restarted with its
        data (the tags' stamps live in Redis). One small Redis write per tag; no key is scanned. Not
        acknowledged (no coordinator answered) is counted as a skipped write.

        :raises TypeError, ValueError: a tag is not a non-empty str of at most 256 UTF-8 bytes.
        """
        self._check_fork()
        self._drive(invalidate_tags_flow(self._core, self._core.check_tags(tags)))

    def exists(self, key: str) -> bool:
        """Whether ``key`` has a live value.

        :raises TypeError, ValueError: the key is invalid.
        """
        self._check_fork()
        return bool(self._drive(exists_flow(self._core, self._core.check_key(key))))

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
        """The cached value of ``key``; on a miss, ``fn()`` computed exactly once per
        key across every worker of the host (threads of this process share one
        request; other callers wait for the value).

        :param timeout: longest wait for another caller's computation (default
            twice the lease TTL). A holder that dies passes the lease on first.
        :param fail_safe, fail_safe_throttle, soft_timeout, hard_timeout, eager_refresh, jitter,
            cache_none: what to do when the source fails or is slow (see
            :class:`~mtcache.client.policy.Policy`); None: the client's default. With a soft or
            hard timeout, ``fn`` runs in a thread of its own (the caller's thread waits for it).
        :raises ComputeError: ``fn`` raised, here or in the worker computing it, and no
            stale value could stand in (fail-safe); nothing was cached.
        :raises CacheTimeout: the wait passed ``timeout``, or ``fn`` passed ``hard_timeout``,
            and no stale value could stand in.
        :raises TypeError: ``fn`` is not callable or its value cannot be encoded.
        """
        self._check_fork()
        core = self._core
        policy = core.call_policy(fail_safe, fail_safe_throttle, soft_timeout, hard_timeout, eager_refresh, jitter,
                                  cache_none, tags)
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"fn {fn.__qualname__} is a coroutine function: Client runs plain functions; "
                            "use AsyncClient for coroutine functions")
        key, seconds, wait, value = core.begin_compute(key, fn, strategy, ttl, timeout)
        if value is MISSING:
            value = core.deliver(self._get_or_compute(key, fn, seconds, wait, policy))
        if policy.eager_refresh:
            version = core.refresh_due(key, seconds, policy)
            if version is not None:
                _background(self._refresh, key, fn, seconds, policy, version)
        return value

    def _get_or_compute(
        self, key: str, fn: Callable[[], Any], seconds: float | None, wait: float, policy: Policy
    ) -> Any:
        """After near and mirror missed: one request per key for this client's threads."""
        core = self._core
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = concurrent.futures.Future()
                    break
                core.counters["local_coalesced"] += 1
            try:
                value = flight.result(timeout=max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                if flight.done():
                    raise  # the computing thread's own error (a CacheTimeout is a TimeoutError too)
                raise CacheTimeout(f"gave up waiting for another thread to compute {key!r}") from None
            if value is not RETRY:
                return value
            # the thread computing it was interrupted, not this one: try again
        try:
            flow = compute_flow(core, key, seconds, max(0.001, deadline - time.monotonic()), policy)
            value = self._drive(flow, fn)
        except BaseException as exc:
            if isinstance(exc, Exception):
                flight.set_exception(exc)
            else:
                flight.set_result(RETRY)  # interrupted: its followers were not, they try again
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            with self._lock:
                self._flights.pop(key, None)

    def cached(
        self,
        ttl: float | timedelta | None = None,
        *,
        strategy: CacheStrategy | None = None,
        key: str | Callable[..., str] | None = None,
        tags: Iterable[str] = (),
        **policy: Any,
    ) -> Callable[[Callable[..., Any]], CachedFunction]:
        """A decorator caching a function's results with :meth:`get_or_compute` (for functions),
        keyed by its arguments; see :func:`mtcache.client.decorator.cached`."""
        from .decorator import cached  # the decorator module imports the clients

        return cached(self, ttl, strategy=strategy, key=key, tags=tags, **policy)

    def _refresh(self, key: str, fn: Callable[[], Any], seconds: float | None, policy: Policy, version: int) -> None:
        """An eager refresh, in a background thread (see :func:`refresh_flow`)."""
        try:
            self._drive(refresh_flow(self._core, key, seconds, policy, version), fn)
        except Exception as exc:  # a failed refresh changes nothing: the current value stays
            log.debug("mtcache: the eager refresh of %r failed: %s", key, exc)
        finally:
            self._core.refreshed(key)

    def _drive(self, flow: Flow, fn: Callable[[], Any] | None = None, sent: Any = None) -> Any:
        """Carry a flow out (see :mod:`mtcache.client._flows`): requests block, ``fn``
        runs here (in a thread of its own under a soft or hard timeout). ``sent``: what
        the flow's current step receives (to carry on a flow already started)."""
        while True:
            try:
                step = flow.send(sent)
            except StopIteration as stop:
                return stop.value
            if isinstance(step, Compute):
                assert fn is not None
                started = time.perf_counter_ns()
                sent = self._compute(step, fn)
                if not isinstance(sent, _Later):
                    self._core.reporter.compute.record_ns(time.perf_counter_ns() - started)
                if isinstance(sent, _Later):
                    # past the soft timeout: the caller takes the stale value now, and the
                    # computation's end (its fill) is carried out in the background
                    _background(self._finish, flow, sent)
                    return Stale(step.stale)
            else:
                sent = self._request(step.op, *step.args, timeout=step.timeout, reply=step.reply)

    @staticmethod
    def _compute(step: Compute, fn: Callable[[], Any]) -> tuple[bool, Any] | _Later:
        """Run ``fn`` as ``step`` says: ``(True, value)``, ``(False, exception)``, or, past a
        soft timeout, the computation still running."""
        if step.soft is None and step.hard is None:
            try:
                return True, fn()
            except BaseException as exc:  # the flow frees the lease, then re-raises
                return False, exc
        future = _background(fn)
        try:
            return True, future.result(timeout=step.soft if step.soft is not None else step.hard)
        except concurrent.futures.TimeoutError:
            pass
        except BaseException as exc:
            return False, exc
        if step.soft is not None:
            return _Later(future, None if step.hard is None else step.hard - step.soft)
        return False, CacheTimeout(f"the computation passed its hard timeout of {step.hard:g}s and was abandoned")

    def _finish(self, flow: Flow, later: _Later) -> None:
        """The rest of a flow whose caller took a stale value at the soft timeout (in a
        background thread): wait for the computation (up to the hard timeout), then fill."""
        try:
            sent: tuple[bool, Any] = True, later.future.result(timeout=later.hard)
        except concurrent.futures.TimeoutError:
            sent = False, CacheTimeout("the computation passed its hard timeout and was abandoned")
        except BaseException as exc:
            sent = False, exc
        try:
            self._drive(flow, None, sent)
        except Exception as exc:  # its caller has its value already
            log.debug("mtcache: a computation finished in the background failed: %s", exc)

    def clear(self) -> None:
        """Empty this namespace in every tier (this host's L1 and Redis)."""
        self._check_fork()
        self._near.clear()
        self._request(Op.CLEAR)

    def stats(self, *, workers: bool = False) -> Stats:
        """Counters of this client and of its coordinator, and the whole host's (``fleet``:
        every worker's near and mirror reads, this client's as of now); with ``workers``, each
        reporting worker's too (``fleet.per_worker``)."""
        self._check_fork()
        core = self._core
        if workers and not core.hello_info:
            self._request(Op.PING, timeout=core.read_timeout)  # connect: the options depend on the hello
        core.reporter.hurry()
        reply = self._request(Op.STATS, *core.stats_options(workers), timeout=core.read_timeout)
        return core.stats(reply[2] if isinstance(reply, list) else None)

    def health(self) -> Health:
        """Whether the coordinator and Redis answer; ``mode`` is ``"degraded"`` if not."""
        self._check_fork()
        reply = self._request(Op.HEALTH, timeout=self._core.read_timeout)
        return self._core.health(reply[2] if isinstance(reply, list) else None)

    # -- Redis Streams (own connections, straight to Redis) -------------------

    @property
    def streams(self) -> Streams:
        """The Redis Streams helpers of this client (created on first use, on
        connections of their own so a blocking read never holds up a cache call)."""
        # imported here, not under the lock (which misses share): a worker that does not use streams never
        # loads redis-py (about 10 MiB)
        from .streams import Streams

        with self._lock:
            if self._streams is None:
                self._streams = Streams(self._core.settings.redis_url, self._core.stream_prefix)
            return self._streams

    def publish_to_stream(
        self,
        stream: str,
        fields: Mapping[str, str | bytes | int | float],
        *,
        maxlen: int | None = None,
        approximate: bool = True,
        raw: bool = False,
    ) -> str:
        """Append an entry and trim to about ``maxlen`` (default the ``stream_maxlen``
        setting, 1,000); see :meth:`Streams.publish_to_stream`."""
        maxlen = self._core.settings.stream_maxlen if maxlen is None else maxlen
        return self.streams.publish_to_stream(stream, fields, maxlen=maxlen, approximate=approximate, raw=raw)

    def read_stream_latest(
        self, stream: str, count: int = 10, *, raw: bool = False, decode: bool = True
    ) -> list[Entry]:
        """The newest entries first; see :meth:`Streams.read_stream_latest`."""
        return self.streams.read_stream_latest(stream, count, raw=raw, decode=decode)

    def read_stream(
        self, stream: str, last_id: str = "$", count: int = 10, block_ms: int | None = None,
        *, raw: bool = False, decode: bool = True,
    ) -> list[Entry]:
        """Entries after ``last_id``, oldest first; see :meth:`Streams.read_stream`."""
        return self.streams.read_stream(stream, last_id, count, block_ms, raw=raw, decode=decode)

    def create_consumer_group(
        self, stream: str, group: str, *, start_id: str = "$", mkstream: bool = True, raw: bool = False
    ) -> bool:
        """Create a consumer group (idempotent); see :meth:`Streams.create_consumer_group`."""
        return self.streams.create_consumer_group(stream, group, start_id=start_id, mkstream=mkstream, raw=raw)

    def read_group(
        self, stream: str, group: str, consumer: str, *, count: int = 10, block_ms: int | None = None,
        raw: bool = False, decode: bool = True,
    ) -> list[Entry]:
        """New entries for ``consumer``; see :meth:`Streams.read_group`."""
        return self.streams.read_group(stream, group, consumer, count=count, block_ms=block_ms, raw=raw, decode=decode)

    def ack(self, stream: str, group: str, *ids: str, raw: bool = False) -> int:
        """Acknowledge entries; see :meth:`Streams.ack`."""
        return self.streams.ack(stream, group, *ids, raw=raw)

    def claim_stale(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 10,
        raw: bool = False, decode: bool = True,
    ) -> list[Entry]:
        """Take over entries idle for ``min_idle_ms``; see :meth:`Streams.claim_stale`."""
        return self.streams.claim_stale(
            stream, group, consumer, min_idle_ms=min_idle_ms, count=count, raw=raw, decode=decode
        )

    def subscribe(
        self, stream: str, *, last_id: str = "$", group: str | None = None, consumer: str | None = None,
        raw: bool = False, decode: bool = True,
    ) -> Iterator[Entry]:
        """Follow the stream across reconnects; see :meth:`Streams.subscribe`."""
        return self.streams.subscribe(stream, last_id=last_id, group=group, consumer=consumer, raw=raw, decode=decode)

    def close(self) -> None:
        """Close every connection of this client. Safe to call twice."""
        if not self._closed and self._report_stop is not None:
            self._report_stop.set()
            self._last_report()
        self._closed = True
        if self._streams is not None:
            self._streams.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()
        self._core.close()

    def _last_report(self) -> None:
        """Tell the coordinator this client is done (its counters stay in the host's), on this
        thread's connection if it has one."""
        conn: _Conn | None = getattr(self._local, "conn", None)
        reporter = self._core.reporter
        payload = reporter.payload(closing=True) if conn is not None and reporter.enabled else None
        if conn is not None and payload is not None:
            with contextlib.suppress(OSError):
                conn.send([Op.REPORT, 0, payload])

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

