"""The L2 tier's own connections to one Redis, driven below redis-py.

A :class:`Lane` sends one batch of commands at a time (a :class:`Batch`: the coordinator's write scripts, or
reads) in one round trip, and hands back their replies. Every write and every L2 read of the coordinator
goes through one, so its cost is on the path of every call a worker makes through the coordinator.

redis-py opens the connection (address, TLS, ``AUTH``, ``SELECT``, Sentinel's master, client name: all of
its handshake) and the lane then takes its transport over: it writes each batch to the transport itself and
a protocol of its own (:class:`_Replies`) parses what comes back with hiredis and hands each batch's replies,
once all are in, to a callback. A batch then costs one ``write`` and the parsing of its replies, where
redis-py's stream reader and reply loop cost several times the round trip's own CPU (``bench/paths.py``).
A connection whose transport cannot be taken over (fakeredis's has none) is driven through redis-py's own
calls instead (:class:`_Calls`).

Batches take turns, in the order they come: two writes of one key reach Redis in the order they were
queued. :meth:`Lane.submit` sends a batch from its caller's own call, without a task, when the lane is idle
on an open connection, and hands its replies to a callback: the write queue and the reads send their batches
so, from loop callbacks (see :mod:`mtcache.coordinator.writes`). :meth:`Lane.run` waits for its turn and
is what every other caller uses.

Each batch is bounded by the lane's ``bound``, its retries and a new connection included: a batch still
unanswered then ends with ``asyncio.TimeoutError`` and its connection is closed (replies read later would be
out of step). One timer serves the lane (``asyncio.timeout`` arms and cancels a loop timer per call: 6.4 µs
of CPU here, on the path of every write). Scripts go as ``EVALSHA``; those Redis does not have cached (it
restarted, or ``SCRIPT FLUSH``) go again as ``EVAL``, in order, in a second round trip: a script that is not
cached ran nowhere. A batch whose connection is lost (Redis, or a reset link, dropped it while idle: redis-py's
ConnectionError, an OSError, or uvloop's RuntimeError for a closed transport) is sent once more on a new
connection; writes are conditional on their stamps, so one that ran twice stores once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from hiredis import pack_command as _pack_command
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError

if sys.version_info >= (3, 11, 3):
    from asyncio import timeout as _deadline
else:
    # asyncio.timeout misbehaves before 3.11.3 (redis-py issue #2633); redis-py requires async-timeout there
    from async_timeout import timeout as _deadline  # type: ignore[no-redef, import-not-found, unused-ignore]

__all__ = ["Batch", "Lane", "ensure_connected", "first_error", "pack_commands", "settles"]

log = logging.getLogger("mtcache.coordinator")

#: What a lost connection fails with: a batch is sent once more on a new one (see :func:`_lost`).
STALE_CONNECTION = (RedisConnectionError, OSError, RuntimeError)

#: A batch's outcome, as its callback gets it: its replies (an error reply as its exception, in its place),
#: or the exception that ended it.
Outcome = list[Any] | BaseException
Done = Callable[[Outcome], None]

_NOT_YET = object()  # hiredis's answer while a reply is incomplete (False is a RESP3 reply)


def pack_commands(commands: Sequence[Sequence[Any]]) -> bytes:
    """``commands`` in the Redis protocol (RESP arrays of bulk strings). Arguments are ``bytes``, ``str``
    (UTF-8), ``int`` or ``float``, written as redis-py's encoder writes them. Packed by hiredis (C; redis-py's
    hiredis extra, a dependency), on the path of every write: half of what a packer in Python cost. hiredis
    also takes subclasses of str, bytes and float (a float subclass as its own ``repr``) and memoryview;
    every caller here passes plain values.

    :raises TypeError: an argument of another type (a bool included, as redis-py refuses it).
    """
    try:
        return b"".join([_pack_command(command if type(command) is tuple else tuple(command)) for command in commands])
    except TypeError:
        for command in commands:
            for arg in command:
                if not _packable(arg):
                    raise TypeError("a Redis command argument must be bytes, str, int or float, "
                                    f"not {type(arg).__name__}") from None
        raise


def _packable(arg: object) -> bool:
    """Whether hiredis packs ``arg`` (an int must be exactly an int: it refuses bool and IntEnum)."""
    return type(arg) is int or isinstance(arg, (bytes, str, float, memoryview))


async def ensure_connected(conn: AbstractConnection) -> None:
    """Connect ``conn`` unless it is connected. By ``connect()`` itself, not the send's implicit connect:
    a Sentinel-managed connection asks the sentinels for the master only there. Only when not connected:
    ``connect()`` on a connected connection goes through redis-py's retry wrapper only to find it
    connected, on every blocking read."""
    if not conn.is_connected:
        await conn.connect()


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class Batch:
    """The commands of one round trip to Redis: Lua scripts with their keys and arguments (what every write of
    the coordinator is) and plain commands (reads). Sent by a :class:`Lane`."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        #: (script, numkeys, args); a plain command has no script and its whole command in args
        self.commands: list[tuple[str | None, int, tuple[Any, ...]]] = []

    def eval(self, script: str, numkeys: int, *args: Any) -> None:
        """Queue a call of ``script`` with ``numkeys`` keys first in ``args``."""
        self.commands.append((script, numkeys, args))

    def command(self, *args: Any) -> None:
        """Queue a plain command (``"MGET", key, ...``)."""
        self.commands.append((None, 0, args))

    def __len__(self) -> int:
        return len(self.commands)

    def packed(self) -> bytes:
        """The batch in the Redis protocol, its scripts as ``EVALSHA``."""
        return pack_commands([args if script is None else ("EVALSHA", _sha(script), numkeys, *args)
                              for script, numkeys, args in self.commands])


def _lost(outcome: object) -> bool:
    """Whether ``outcome`` says the connection was lost (not that the bound passed: asyncio's TimeoutError
    is an OSError since Python 3.11, and a batch past its bound is not sent again)."""
    return isinstance(outcome, STALE_CONNECTION) and not isinstance(outcome, asyncio.TimeoutError)


def settles(fut: asyncio.Future[list[Any]]) -> Done:
    """A callback that settles ``fut`` with a batch's outcome (its replies, or the exception that ended it),
    unless the caller awaiting it is gone."""

    def done(outcome: Outcome) -> None:
        if fut.done():
            return
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
            fut.exception()  # retrieved here: its caller may go before it looks (a closed connection)
        else:
            fut.set_result(outcome)

    return done


def first_error(replies: list[Any]) -> Exception | None:
    """The first error reply among ``replies`` (each read whole: the connection is in step), if any."""
    for reply in replies:
        if isinstance(reply, Exception):
            return reply
    return None


def _call(done: Done, outcome: Outcome) -> None:
    """Hand ``outcome`` to ``done``; a bug there is logged, never raised into the transport or the loop."""
    try:
        done(outcome)
    except Exception:
        log.exception("handling the replies of an L2 batch failed")


class _Replies(asyncio.Protocol):
    """A connection redis-py opened, taken over: batches are written to its transport, and the replies that
    come back are parsed by hiredis and handed, a batch's at a time, to their callbacks in order."""

    def __init__(self, conn: AbstractConnection, transport: asyncio.Transport) -> None:
        self.conn = conn
        self.transport = transport
        options: dict[str, Any] = {"protocolError": InvalidResponse, "replyError": BaseParser.parse_error,
                                   "notEnoughData": _NOT_YET}
        if conn.encoder.decode_responses:
            options.update(encoding=conn.encoder.encoding, errors=conn.encoder.encoding_errors)
        self._reader = hiredis.Reader(**options)
        #: the batches sent and not wholly answered: (replies expected, replies so far, callback)
        self._waiting: deque[tuple[int, list[Any], Done]] = deque()
        #: why the connection is over (None while it is open)
        self.lost: BaseException | None = None
        transport.set_protocol(self)

    @property
    def open(self) -> bool:
        return self.lost is None and not self.transport.is_closing()

    @property
    def busy(self) -> bool:
        return bool(self._waiting)

    def send(self, data: bytes, count: int, done: Done) -> None:
        """Write ``data`` (``count`` commands); ``done`` gets their replies, or what ended the connection."""
        self._waiting.append((count, [], done))
        try:
            self.transport.write(data)
        except Exception as exc:  # uvloop's RuntimeError for a transport closed under it
            self.fail(exc)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        waiting = self._waiting
        try:
            reader.feed(data)
            while True:
                reply = reader.gets()
                if reply is _NOT_YET:
                    return
                if not waiting:
                    raise InvalidResponse("Redis sent a reply nobody asked for")
                count, replies, done = waiting[0]
                replies.append(reply)
                if len(replies) == count:
                    waiting.popleft()
                    _call(done, replies)
        except InvalidResponse as exc:
            self.fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"lost the connection to Redis: {exc}" if exc else
                                       "Redis closed the connection"))

    def fail(self, error: BaseException) -> None:
        """End the connection: every batch still waiting gets ``error``."""
        if self.lost is None:
            self.lost = error
        self.transport.abort()
        waiting = self._waiting
        while waiting:
            _call(waiting.popleft()[2], error)

    async def aclose(self) -> None:
        self.fail(RedisConnectionError("the connection was closed"))
        with contextlib.suppress(Exception):
            await self.conn.disconnect(nowait=True)  # the transport is closed: only redis-py's state is reset


class _Calls:
    """What :class:`_Replies` does, for a connection whose transport cannot be taken over: each batch is
    written and read through the connection's own calls, by a task."""

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.lost: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._done: Done | None = None

    @property
    def open(self) -> bool:
        return self.lost is None and self.conn.is_connected

    @property
    def busy(self) -> bool:
        return self._done is not None

    def send(self, data: bytes, count: int, done: Done) -> None:
        self._done = done
        self._task = asyncio.get_running_loop().create_task(self._io(data, count))

    async def _io(self, data: bytes, count: int) -> None:
        conn = self.conn
        try:
            await conn.send_packed_command(data, check_health=False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:  # read whole: the connection is still in step
                    replies.append(exc)
        except Exception as exc:
            self.fail(exc)
        else:
            done, self._done = self._done, None
            if done is not None:
                _call(done, replies)

    def fail(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        done, self._done = self._done, None
        if done is not None:
            _call(done, error)

    async def aclose(self) -> None:
        self.fail(RedisConnectionError("the connection was closed"))
        with contextlib.suppress(Exception):
            await self.conn.disconnect(nowait=True)


def _take_over(conn: AbstractConnection) -> _Replies | _Calls:
    """``conn``, connected, as the lane drives it."""
    writer = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    reader = getattr(conn, "_reader", None)
    if transport is None or not hasattr(transport, "set_protocol") or len(getattr(reader, "_buffer", b"")) > 0:
        return _Calls(conn)
    return _Replies(conn, transport)


class Lane:
    """One connection of the L2 tier's own to ``redis`` (not a cluster); see the module docstring. Each batch
    is bounded by ``bound`` seconds."""

    def __init__(self, redis: Redis, bound: float) -> None:
        self._pool = redis.connection_pool
        self._bound = bound
        self._pipe: _Replies | _Calls | None = None
        #: a batch holds the lane (in flight, or about to be sent by the caller whose turn it is)
        self._busy = False
        #: callers of run() waiting for their turn, in order
        self._turns: deque[asyncio.Future[None]] = deque()
        #: the loop time by which the batch in flight must end (None: no batch in flight)
        self._due: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: batches being sent again (a new connection, or scripts as EVAL)
        self._retries: set[asyncio.Task[None]] = set()
        #: closed for good: a batch whose connection is lost is not sent again
        self._closed = False

    def ready(self) -> bool:
        """Whether :meth:`submit` may send a batch now: the lane is idle, nobody waits, its connection open."""
        pipe = self._pipe
        return not self._busy and pipe is not None and pipe.open

    def submit(self, batch: Batch, done: Done) -> None:
        """Send ``batch`` now, from this call (:meth:`ready` must be true): its bytes are written before this
        returns. ``done`` is called once, later (or from this call if the write itself failed), with the
        batch's replies or the exception that ended it (``asyncio.TimeoutError`` past the bound)."""
        assert self.ready()
        self._busy = True
        self._start(batch, done)

    async def run(self, batch: Batch) -> list[Any]:
        """The replies of ``batch``, in order, within the lane's bound, after the batches before it.

        :raises RedisError, OSError: Redis failed (an error reply: the first one, after every reply is read).
        :raises asyncio.TimeoutError: the batch did not end within the bound (its connection is closed).
        """
        loop = asyncio.get_running_loop()
        if self._busy:
            turn: asyncio.Future[None] = loop.create_future()
            self._turns.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():  # handed the turn, then cancelled: pass it on
                    self._release()
                raise
        else:
            self._busy = True
        answer: asyncio.Future[list[Any]] = loop.create_future()
        self._start(batch, settles(answer))
        replies = await answer
        error = first_error(replies)
        if error is not None:
            raise error
        return replies

    def _start(self, batch: Batch, done: Done) -> None:
        loop = asyncio.get_running_loop()
        self._due = due = loop.time() + self._bound
        if self._timer is None:
            self._timer = loop.call_at(due, self._check)
        pipe = self._pipe
        if pipe is None or not pipe.open:
            self._again(batch, None, done, retries=1)
            return
        try:
            data = batch.packed()
        except Exception as exc:
            self._finish(done, exc)
            return
        pipe.send(data, len(batch), lambda outcome: self._answered(batch, outcome, done))

    def _answered(self, batch: Batch, outcome: Outcome, done: Done) -> None:
        if _lost(outcome) and not self._closed:  # lost under this batch: once more on a new connection
            self._again(batch, None, done, retries=0)
        elif not isinstance(outcome, BaseException) and any(isinstance(r, NoScriptError) for r in outcome):
            self._again(batch, outcome, done, retries=0)
        else:
            self._finish(done, outcome)

    def _again(self, batch: Batch, replies: list[Any] | None, done: Done, *, retries: int) -> None:
        """Finish ``batch`` in a task: on a new connection unless ``replies`` came (sent once more after
        ``retries`` more losses of it), then its uncached scripts as ``EVAL``."""
        task = asyncio.get_running_loop().create_task(self._finish_in_task(batch, replies, done, retries))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _finish_in_task(self, batch: Batch, replies: list[Any] | None, done: Done, retries: int) -> None:
        try:
            while replies is None:
                try:
                    replies = await self._round_trip(batch.packed(), len(batch))
                except STALE_CONNECTION as exc:
                    if not retries or not _lost(exc) or self._closed:
                        raise
                    retries -= 1
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                commands = batch.commands
                again = await self._round_trip(pack_commands(
                    [("EVAL", commands[i][0], commands[i][1], *commands[i][2]) for i in missing]), len(missing))
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except asyncio.CancelledError:
            self._finish(done, RedisConnectionError("the connection was closed"))
            raise
        except Exception as exc:
            self._finish(done, exc)
        else:
            self._finish(done, replies)

    async def _round_trip(self, data: bytes, count: int) -> list[Any]:
        """Send ``data`` (``count`` commands), on a new connection if the lane has none open, and read its
        replies, within what is left of the batch's bound (a rare path: its own deadline is cheap enough)."""
        loop = asyncio.get_running_loop()
        try:
            async with _deadline(max(0.0, (self._due or loop.time()) - loop.time())):
                pipe = await self._open()
                answer: asyncio.Future[list[Any]] = loop.create_future()
                pipe.send(data, count, settles(answer))
                return await answer
        except asyncio.TimeoutError:
            await self.drop()  # replies read later would be out of step
            raise

    async def _open(self) -> _Replies | _Calls:
        """The lane's connection, a new one if it has none open."""
        pipe = self._pipe
        if pipe is not None and pipe.open:
            return pipe
        await self.drop()
        pool = self._pool
        conn = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        try:
            await ensure_connected(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise
        self._pipe = pipe = _take_over(conn)
        return pipe

    def _finish(self, done: Done, outcome: Outcome) -> None:
        self._due = None
        self._release()
        _call(done, outcome)

    def _release(self) -> None:
        """The batch holding the lane is over: the next caller waiting for its turn holds it."""
        self._busy = False
        turns = self._turns
        while turns:
            turn = turns.popleft()
            if not turn.done():
                self._busy = True
                turn.set_result(None)
                return

    def _check(self) -> None:
        """The lane's timer: end the batch in flight if it is due, else wait for it to be."""
        self._timer = None
        due = self._due
        if due is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < due:
            self._timer = loop.call_at(due, self._check)
            return
        pipe = self._pipe
        if pipe is not None and pipe.busy:  # (a batch being sent again keeps a deadline of its own)
            pipe.fail(asyncio.TimeoutError())

    async def drop(self) -> None:
        """Close the connection: a batch in flight on it is sent once more on a new one."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.aclose()

    async def aclose(self) -> None:
        """Close the connection for good, once the batches already sent or waiting have ended (within the
        lane's bound: those still in flight then fail)."""
        turn: asyncio.Future[None] | None = None
        if self._busy:
            turn = asyncio.get_running_loop().create_future()
            self._turns.append(turn)
            with contextlib.suppress(asyncio.TimeoutError):
                async with _deadline(self._bound):
                    await turn
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.drop()
        for task in list(self._retries):
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)
        if turn is not None and turn.done() and not turn.cancelled():
            self._release()  # its turn: the callers after it go on (on a new connection)
