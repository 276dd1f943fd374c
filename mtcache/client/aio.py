"""The asyncio client: one multiplexed connection, many requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
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
    from .streams import AsyncStreams

__all__ = ["AsyncClient"]

log = logging.getLogger("mtcache.client")


async def _call(fn: Callable[[], Any]) -> Any:
    """``fn()``, awaited if it returns an awaitable."""
    result = fn()
    if inspect.isawaitable(result):
        result = await result
    return result

T = TypeVar("T")


#: Requests whose reply may grant a lease (which must be released if nobody reads that reply).
_GRANTS = frozenset((Op.LEASE, Op.REFRESH))


class _AsyncConn:
    """One connection; replies are matched to requests by id, so any number of
    requests may be in flight."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.rid = 0
        self.pending: dict[int, asyncio.Future[list[Any]]] = {}
        #: LEASE/REFRESH requests whose caller stopped waiting (cancelled): their key, by request id
        self.abandoned: dict[int, str] = {}
        self.reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(cls, path: str) -> _AsyncConn:
        _trust.check_socket_dir(path)  # the socket's folder is this user's alone (FileNotFoundError: missing)
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
        try:
            _trust.check_peer(writer.get_extra_info("socket"))  # served by this uid: checked before anything is sent
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer)

    async def _read_loop(self) -> None:
        error: BaseException = CoordinatorUnavailable("the coordinator closed the connection")
        try:
            while True:
                data = await self.reader.read(262_144)
                if not data:
                    break
                for reply in self.decoder.feed(data):
                    if not isinstance(reply[0], int) or isinstance(reply[0], bool):
                        raise ProtocolError(f"a reply without a request id: {reply[:2]!r}")
                    fut = self.pending.pop(reply[0], None)
                    if fut is not None and not fut.done():
                        fut.set_result(reply)
                    elif reply[0] in self.abandoned:
                        self._release_abandoned(reply)
        except (OSError, ProtocolError) as exc:
            error = CoordinatorUnavailable(f"connection to the coordinator failed: {exc}")
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(error)
            self.pending.clear()

    def _release_abandoned(self, reply: list[Any], key: str | None = None) -> None:
        """A lease granted to a caller that was cancelled meanwhile: give it up at once, or the
        coordinator would keep renewing it for this live connection while others wait."""
        if key is None:
            key = self.abandoned.pop(reply[0])
        if len(reply) >= 3 and reply[1] == Status.GRANTED and isinstance(reply[2], bytes):
            with contextlib.suppress(CoordinatorUnavailable):
                self.send([Op.RELEASE, 0, key, reply[2]])

    @property
    def alive(self) -> bool:
        return not self.reader_task.done()

    def send(self, msg: list[Any]) -> int:
        if not self.alive:
            raise CoordinatorUnavailable("the coordinator closed the connection")
        self.rid += 1
        rid = msg[1] = self.rid
        self.writer.write(encode_frame(msg))
        return rid

    async def request(self, msg: list[Any], timeout: float, stalled: Callable[[], bool]) -> list[Any]:
        """See :meth:`mtcache.client.sync._Conn.request`."""
        if not self.alive:
            raise CoordinatorUnavailable("the coordinator closed the connection")
        self.rid += 1
        rid = msg[1] = self.rid
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self.pending[rid] = fut
        self.writer.write(encode_frame(msg))
        deadline = loop.time() + timeout
        read = False
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise CoordinatorUnavailable(f"no reply from the coordinator within {timeout:g}s")
                done, _ = await asyncio.wait({fut}, timeout=min(_core.WAIT_SLICE, remaining))
                if done:
                    read = True
                    return fut.result()
                if stalled():
                    raise CoordinatorUnavailable("the coordinator stopped beating (stopped or paused)")
        finally:
            if self.pending.pop(rid, None) is not None:
                if msg[0] in _GRANTS:
                    self.abandoned[rid] = msg[2]  # its reply comes to nobody: release a lease it grants
            elif not read and msg[0] in _GRANTS and fut.done() and not fut.cancelled() and fut.exception() is None:
                # the reply came, but its caller was cancelled before it read it
                self._release_abandoned(fut.result(), msg[2])

    async def close(self) -> None:
        self.reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader_task
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def _report_timer(ref: weakref.ReferenceType[AsyncClient]) -> None:
    """Once per report interval (a loop callback), until the client is closed or collected:
    send its report if it is due (no request carried one)."""
    client = ref()
    if client is None or client._closed:
        return
    conn = client._conn_obj
    reporter = client._core.reporter
    if conn is not None and conn.alive and reporter.due():
        payload = reporter.payload()
        if payload is not None:
            try:
                conn.send([Op.REPORT, 0, payload])
            except (OSError, CoordinatorUnavailable) as exc:  # its next request finds out
                log.debug("mtcache: a report failed: %s", exc)
    client._report_handle = asyncio.get_running_loop().call_later(REPORT_INTERVAL, _report_timer, ref)


class AsyncClient(ClientBase):
    """The asyncio twin of :class:`~mtcache.Client`: the same parameters, the same
    methods as coroutines, the same promises. Use it from one event loop.
    ``get_or_compute`` accepts a coroutine function or a plain callable (a plain
    callable runs on the loop: keep it quick, or make it a coroutine)."""

    _LOCAL_TWIN = "AsyncLocalClient"

    def _setup(self) -> None:
        #: background work (eager refreshes, computations past their soft timeout)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conn_obj: _AsyncConn | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._streams: AsyncStreams | None = None
        self._report_handle: asyncio.TimerHandle | None = None

    # -- plumbing -----------------------------------------------------------

    def _check_fork(self) -> None:
        if self._core.forked():
            # the parent's connection belongs to the parent's loop: forget it
            self._conn_obj = None
            self._connect_lock = None
            self._flights = {}
            self._report_handle = None  # a callback of the parent's loop

    async def _conn(self) -> _AsyncConn:
        conn = self._conn_obj
        if conn is not None and conn.alive:
            return conn
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            conn = self._conn_obj
            if conn is not None and conn.alive:
                return conn
            core = self._core
            try:
                conn = await _AsyncConn.open(core.socket_path)
            except (FileNotFoundError, ConnectionRefusedError):
                if not core.spawn or not await asyncio.to_thread(
                    _spawn.ensure_coordinator,
                    core.socket_path,
                    namespace=core.settings.namespace,
                    redis_url=core.explicit_redis_url,
                    idle_exit=core.settings.idle_exit,
                ):
                    raise
                conn = await _AsyncConn.open(core.socket_path)
            try:
                core.accept_hello(await conn.request(core.hello(), core.hello_timeout, lambda: False))
            except BaseException:
                await conn.close()
                raise
            self._conn_obj = conn
            if self._report_handle is None and core.reporter.enabled:
                self._report_handle = asyncio.get_running_loop().call_later(
                    REPORT_INTERVAL, _report_timer, weakref.ref(self))
            return conn

    async def _drop_conn(self) -> None:
        conn, self._conn_obj = self._conn_obj, None
        if conn is not None:
            await conn.close()

    async def _request(self, op: int, *args: Any, timeout: float | None = None, reply: bool = True) -> Any:
        """See :meth:`mtcache.Client._request`."""
        if self._closed:
            raise RuntimeError("this mtcache AsyncClient is closed")
        core = self._core
        if core.backing_off():
            return None
        if op not in _core.ENDS_LEASE and core.stalled():
            # it would only wait; and close the connection, so that what it holds there (a
            # lease, a wait) is handed on when the coordinator runs again
            await self._drop_conn()
            return None
        try:
            conn = await self._conn()
        except (OSError, ProtocolError) as exc:
            core.unavailable(exc)
            return None
        reporter = core.reporter
        try:
            if reporter.due():
                payload = reporter.payload()
                if payload is not None:
                    conn.send([Op.REPORT, 0, payload])
        except (OSError, ProtocolError) as exc:
            await self._drop_conn()
            core.unavailable(exc)
            return None
        reporter.requests += 1
        try:
            if not reply:
                conn.send([op, 0, *args])
                return None
            started = time.perf_counter_ns()
            answer = check_reply(op, await conn.request([op, 0, *args], timeout or core.request_timeout,
                                                        core.stalled))
            if op not in _core.WAITS:
                reporter.roundtrip.record_ns(time.perf_counter_ns() - started)
        except (OSError, ProtocolError) as exc:
            await self._drop_conn()
            if not self._closed:  # a request cut short by close() (work in the background) is no fault
                core.unavailable(exc)
            return UNKNOWN
        if answer[1] == Status.ERROR:
            await self._drop_conn()
            core.unavailable(ProtocolError(f"coordinator error: {answer[2]}: {answer[3]}"))
            return UNKNOWN
        core.connected()
        return answer

    # -- the API ------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """See :meth:`mtcache.Client.get`."""
        if self._core.fork_gen != _core.FORK_GEN:
            self._check_fork()
        try:
            value = self._near.get(key)
        except TypeError:  # unhashable: check_key below says what is wrong
            value = MISSING
        if value is not MISSING:
            return value
        return await self._drive(get_flow(self._core, self._core.check_key(key), default))

    async def set(
        self,
        key: str,
        value: Any,
        *args: Any,
        strategy: CacheStrategy | None = None,
        ttl: float | timedelta | None = None,
        tags: Iterable[str] = (),
    ) -> bool:
        """See :meth:`mtcache.Client.set`."""
        self._check_fork()
        core = self._core
        core.no_positional_ttl("set", args)
        return bool(await self._drive(set_flow(core, core.check_key(key), value, core.ttl_for(strategy, ttl),
                                          core.check_tags(tags))))

    async def delete(self, key: str) -> bool:
        """See :meth:`mtcache.Client.delete`."""
        self._check_fork()
        return await self._drive(delete_flow(self._core, self._core.check_key(key)))

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """See :meth:`mtcache.Client.get_many`."""
        self._check_fork()
        return await self._drive(get_many_flow(self._core, self._core.check_keys(keys)))

    async def set_many(
        self,
        mapping: Mapping[str, Any],
        *,
        ttl: float | timedelta | None = None,
        strategy: CacheStrategy | None = None,
        tags: Iterable[str] = (),
    ) -> bool:
        """See :meth:`mtcache.Client.set_many`."""
        self._check_fork()
        core = self._core
        items = core.check_items(mapping)
        return bool(await self._drive(set_many_flow(core, items, core.ttl_for(strategy, ttl), core.check_tags(tags))))

    async def delete_many(self, keys: Iterable[str]) -> int:
        """See :meth:`mtcache.Client.delete_many`."""
        self._check_fork()
        return await self._drive(delete_many_flow(self._core, self._core.check_keys(keys)))

    async def add(
        self,
        key: str,
        value: Any,
        *args: Any,
        ttl: float | timedelta | None = None,
        strategy: CacheStrategy | None = None,
        tags: Iterable[str] = (),
    ) -> bool:
        """See :meth:`mtcache.Client.add`."""
        self._check_fork()
        core = self._core
        core.no_positional_ttl("add", args)
        return bool(await self._drive(add_flow(core, core.check_key(key), value, core.ttl_for(strategy, ttl),
                                          core.check_tags(tags))))

    async def incr(self, key: str, delta: int = 1) -> int:
        """See :meth:`mtcache.Client.incr`."""
        self._check_fork()
        return await self._drive(incr_flow(self._core, self._core.check_key(key), delta))

    async def decr(self, key: str, delta: int = 1) -> int:
        """See :meth:`mtcache.Client.decr`."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}: {delta!r}")
        return await self.incr(key, -delta)

    async def touch(self, key: str, *, ttl: float | timedelta | None = None) -> bool:
        """See :meth:`mtcache.Client.touch`."""
        self._check_fork()
        core = self._core
        return bool(await self._drive(touch_flow(core, core.check_key(key), core.ttl_for(None, ttl))))

    async def ttl(self, key: str) -> float | None:
        """See :meth:`mtcache.Client.ttl`."""
        self._check_fork()
        return await self._drive(ttl_flow(self._core, self._core.check_key(key)))

    async def invalidate_tags(self, *tags: str) -> None:
        """See :meth:`mtcache.Client.invalidate_tags`."""
        self._check_fork()
        await self._drive(invalidate_tags_flow(self._core, self._core.check_tags(tags)))

    async def exists(self, key: str) -> bool:
        """See :meth:`mtcache.Client.exists`."""
        self._check_fork()
        return bool(await self._drive(exists_flow(self._core, self._core.check_key(key))))

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
        """See :meth:`mtcache.Client.get_or_compute`; tasks of this client share one
        request per key. Under a soft or hard timeout ``fn`` runs as a task of its own
        (cancelled at the hard timeout)."""
        self._check_fork()
        core = self._core
        policy = core.call_policy(fail_safe, fail_safe_throttle, soft_timeout, hard_timeout, eager_refresh, jitter,
                                  cache_none, tags)
        key, seconds, wait, value = core.begin_compute(key, fn, strategy, ttl, timeout)
        if value is MISSING:
            value = core.deliver(await self._get_or_compute(key, fn, seconds, wait, policy))
        if policy.eager_refresh:
            version = core.refresh_due(key, seconds, policy)
            if version is not None:
                self._background(self._refresh(key, fn, seconds, policy, version))
        return value

    async def _get_or_compute(
        self, key: str, fn: Callable[[], Any], seconds: float | None, wait: float, policy: Policy
    ) -> Any:
        """After near and mirror missed: one request per key for this client's tasks."""
        core = self._core
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (flight := self._flights.get(key)) is not None:
            core.counters["local_coalesced"] += 1
            try:
                value = await asyncio.wait_for(asyncio.shield(flight), max(0.0, deadline - loop.time()))
            except TimeoutError:
                if flight.done():
                    raise  # the computing task's own error (a CacheTimeout is a TimeoutError too)
                raise CacheTimeout(f"gave up waiting for another task to compute {key!r}") from None
            if value is not RETRY:
                return value
            # the task computing it was cancelled, not this one: try again
        flight = self._flights[key] = loop.create_future()
        try:
            flow = compute_flow(core, key, seconds, max(0.001, deadline - loop.time()), policy)
            value = await self._drive(flow, fn)
        except BaseException as exc:
            if isinstance(exc, Exception):
                flight.set_exception(exc)
                flight.exception()  # mark retrieved: followers may be none
            else:
                flight.set_result(RETRY)  # cancelled: its followers were not, they try again
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            self._flights.pop(key, None)

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cached(
        self,
        ttl: float | timedelta | None = None,
        *,
        strategy: CacheStrategy | None = None,
        key: str | Callable[..., str] | None = None,
        tags: Iterable[str] = (),
        **policy: Any,
    ) -> Callable[[Callable[..., Any]], CachedFunction]:
        """A decorator caching a function's results with :meth:`get_or_compute` (for coroutine functions),
        keyed by its arguments; see :func:`mtcache.client.decorator.cached`."""
        from .decorator import cached  # the decorator module imports the clients

        return cached(self, ttl, strategy=strategy, key=key, tags=tags, **policy)

    async def _refresh(
        self, key: str, fn: Callable[[], Any], seconds: float | None, policy: Policy, version: int
    ) -> None:
        """An eager refresh, as a task of its own (see :func:`refresh_flow`)."""
        try:
            await self._drive(refresh_flow(self._core, key, seconds, policy, version), fn)
        except Exception as exc:  # a failed refresh changes nothing: the current value stays
            log.debug("mtcache: the eager refresh of %r failed: %s", key, exc)
        finally:
            self._core.refreshed(key)

    async def _drive(self, flow: Flow, fn: Callable[[], Any] | None = None, sent: Any = None) -> Any:
        """Carry a flow out (see :mod:`mtcache.client._flows`): requests are awaited,
        ``fn`` is called and awaited if it returns an awaitable (as a task of its own
        under a soft or hard timeout). ``sent``: what the flow's current step receives."""
        while True:
            try:
                step = flow.send(sent)
            except StopIteration as stop:
                return stop.value
            if isinstance(step, Compute):
                assert fn is not None
                started = time.perf_counter_ns()
                sent = await self._compute(step, fn)
                if not isinstance(sent, asyncio.Task):
                    self._core.reporter.compute.record_ns(time.perf_counter_ns() - started)
                if isinstance(sent, asyncio.Task):
                    # past the soft timeout: the caller takes the stale value now, and the
                    # computation's end (its fill) is carried out in the background
                    self._background(self._finish(flow, sent, step))
                    return Stale(step.stale)
            else:
                sent = await self._request(step.op, *step.args, timeout=step.timeout, reply=step.reply)

    @staticmethod
    async def _compute(step: Compute, fn: Callable[[], Any]) -> tuple[bool, Any] | asyncio.Task[Any]:
        """Run ``fn`` as ``step`` says: ``(True, value)``, ``(False, exception)``, or, past a
        soft timeout, the task still computing."""
        if step.soft is None and step.hard is None:
            try:
                return True, await _call(fn)
            except BaseException as exc:  # also a cancel: the flow frees the lease, then re-raises
                return False, exc
        task = asyncio.get_running_loop().create_task(_call(fn))
        try:
            done, _ = await asyncio.wait({task}, timeout=step.soft if step.soft is not None else step.hard)
        except BaseException as exc:  # this caller was cancelled: so is its computation
            task.cancel()
            return False, exc
        if done:
            try:
                return True, task.result()
            except BaseException as exc:
                return False, exc
        if step.soft is not None:
            return task
        task.cancel()
        return False, CacheTimeout(f"the computation passed its hard timeout of {step.hard:g}s and was abandoned")

    async def _finish(self, flow: Flow, task: asyncio.Task[Any], step: Compute) -> None:
        """The rest of a flow whose caller took a stale value at the soft timeout: wait for the
        computation (up to the hard timeout), then fill."""
        limit = None if step.hard is None or step.soft is None else step.hard - step.soft
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            task.cancel()
            sent: tuple[bool, Any] = False, CacheTimeout("the computation passed its hard timeout and was abandoned")
        else:
            try:
                sent = True, task.result()
            except BaseException as exc:
                sent = False, exc
        try:
            await self._drive(flow, None, sent)
        except Exception as exc:  # its caller has its value already
            log.debug("mtcache: a computation finished in the background failed: %s", exc)

    async def clear(self) -> None:
        """See :meth:`mtcache.Client.clear`."""
        self._check_fork()
        self._near.clear()
        await self._request(Op.CLEAR)

    async def stats(self, *, workers: bool = False) -> Stats:
        """See :meth:`mtcache.Client.stats`."""
        self._check_fork()
        core = self._core
        if workers and not core.hello_info:
            await self._request(Op.PING, timeout=core.read_timeout)  # connect: the options depend on the hello
        core.reporter.hurry()
        reply = await self._request(Op.STATS, *core.stats_options(workers), timeout=core.read_timeout)
        return core.stats(reply[2] if isinstance(reply, list) else None)

    async def health(self) -> Health:
        """See :meth:`mtcache.Client.health`."""
        self._check_fork()
        reply = await self._request(Op.HEALTH, timeout=self._core.read_timeout)
        return self._core.health(reply[2] if isinstance(reply, list) else None)

    # -- Redis Streams (own connections, straight to Redis) -------------------

    @property
    def streams(self) -> AsyncStreams:
        """The Redis Streams helpers of this client (created on first use, on
        connections of their own so a blocking read never holds up a cache call)."""
        if self._streams is None:
            # imported here: a worker that does not use streams never loads redis-py (about 10 MiB)
            from .streams import AsyncStreams

            self._streams = AsyncStreams(self._core.settings.redis_url, self._core.stream_prefix)
        return self._streams

    async def publish_to_stream(
        self,
        stream: str,
        fields: Mapping[str, str | bytes | int | float],
        *,
        maxlen: int | None = None,
        approximate: bool = True,
        raw: bool = False,
    ) -> str:
        """See :meth:`mtcache.Client.publish_to_stream`."""
        maxlen = self._core.settings.stream_maxlen if maxlen is None else maxlen
        return await self.streams.publish_to_stream(stream, fields, maxlen=maxlen, approximate=approximate, raw=raw)

    async def read_stream_latest(
        self, stream: str, count: int = 10, *, raw: bool = False, decode: bool = True
    ) -> list[Entry]:
        """See :meth:`mtcache.Client.read_stream_latest`."""
        return await self.streams.read_stream_latest(stream, count, raw=raw, decode=decode)

    async def read_stream(
        self, stream: str, last_id: str = "$", count: int = 10, block_ms: int | None = None,
        *, raw: bool = False, decode: bool = True,
    ) -> list[Entry]:
        """See :meth:`mtcache.Client.read_stream`."""
        return await self.streams.read_stream(stream, last_id, count, block_ms, raw=raw, decode=decode)

    async def create_consumer_group(
        self, stream: str, group: str, *, start_id: str = "$", mkstream: bool = True, raw: bool = False
    ) -> bool:
        """See :meth:`mtcache.Client.create_consumer_group`."""
        return await self.streams.create_consumer_group(stream, group, start_id=start_id, mkstream=mkstream, raw=raw)

    async def read_group(
        self, stream: str, group: str, consumer: str, *, count: int = 10, block_ms: int | None = None,
        raw: bool = False, decode: bool = True,
    ) -> list[Entry]:
        """See :meth:`mtcache.Client.read_group`."""
        return await self.streams.read_group(
            stream, group, consumer, count=count, block_ms=block_ms, raw=raw, decode=decode
        )

    async def ack(self, stream: str, group: str, *ids: str, raw: bool = False) -> int:
        """See :meth:`mtcache.Client.ack`."""
        return await self.streams.ack(stream, group, *ids, raw=raw)

    async def claim_stale(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 10,
        raw: bool = False, decode: bool = True,
    ) -> list[Entry]:
        """See :meth:`mtcache.Client.claim_stale`."""
        return await self.streams.claim_stale(
            stream, group, consumer, min_idle_ms=min_idle_ms, count=count, raw=raw, decode=decode
        )

    def subscribe(
        self, stream: str, *, last_id: str = "$", group: str | None = None, consumer: str | None = None,
        raw: bool = False, decode: bool = True,
    ) -> AsyncIterator[Entry]:
        """See :meth:`mtcache.Client.subscribe` (an async iterator)."""
        return self.streams.subscribe(stream, last_id=last_id, group=group, consumer=consumer, raw=raw, decode=decode)

    async def close(self) -> None:
        """Cancel background work and close the connection. Safe to call twice."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._report_handle is not None:
            self._report_handle.cancel()
            self._report_handle = None
            self._last_report()
        self._closed = True
        if self._streams is not None:
            await self._streams.aclose()
        await self._drop_conn()
        self._core.close()

    def _last_report(self) -> None:
        """Tell the coordinator this client is done (its counters stay in the host's)."""
        conn = self._conn_obj
        reporter = self._core.reporter
        if conn is not None and conn.alive and reporter.enabled:
            payload = reporter.payload(closing=True)
            if payload is not None:
                with contextlib.suppress(OSError, CoordinatorUnavailable):
                    conn.send([Op.REPORT, 0, payload])

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

