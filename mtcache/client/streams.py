"""Redis Streams for applications: publish, read, consumer groups, follow.

Apps that cache market data usually stream it too. :class:`Streams` (threads)
and :class:`AsyncStreams` (asyncio) talk to Redis directly, not through the
coordinator, on connection pools of their own, so a blocking read never holds
up a cache call.

How the code is laid out: every operation is written once, below, as a *plan*,
a generator of pure logic that validates its arguments, yields the Redis
commands it needs, receives their raw replies and returns the parsed result
(``subscribe`` also yields entries for the caller and pauses for back-off).
The two classes are thin twins that only carry plans out, one with blocking
calls and one with ``await``; they hold no logic of their own (STYLE.md, "Sync
and async"; the sans-I/O shape of httpcore and h11).

Replies are parsed from the wire shapes (RESP2 and RESP3) rather than through
redis-py's response callbacks, whose shapes differ between versions and
protocols.

Blocking waits are cut into chunks of at most :data:`BLOCK_CHUNK_MS`, and the
blocking pool's socket timeout is ``timeout`` plus one chunk plus a slack for
Redis's timer (it ends a block at its next event-loop tick, up to 1/hz late).
So a wait of any length never trips the socket timeout, yet a Redis that stops
answering (paused, network gone) is noticed within that time instead of
hanging the reader for good.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from mtcache.config import redact_url
from mtcache.errors import L2Error

__all__ = ["BLOCK_CHUNK_MS", "AsyncStreams", "Entry", "Streams", "stream_key"]

#: One stream entry: its id and its fields. Values are ``str``, or ``bytes``
#: when read with ``decode=False``.
Entry = tuple[str, dict[str, Any]]

#: The longest single ``BLOCK`` sent to Redis, in milliseconds; longer waits
#: are several of these in a row.
BLOCK_CHUNK_MS = 1000

# Redis ends a BLOCK at an event-loop tick, up to 1/hz late (100 ms at the default hz 10).
_BLOCK_SLACK = 0.5
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_FOLLOW_BATCH = 100
_RAW_REPLY_COMMANDS = ("XADD", "XREVRANGE", "XREAD", "XREADGROUP", "XACK", "XAUTOCLAIM", "XGROUP")
# Connection trouble that subscribe() rides out; wrong credentials are not trouble that passes.
_RETRYABLE = (RedisConnectionError, RedisTimeoutError)
_FATAL = (AuthenticationError, AuthorizationError)
_ID = re.compile(r"\d+(-\d+)?")

T = TypeVar("T")

# --------------------------------------------------------------------------------------------------
# The shared core: validation, commands and reply parsing, no I/O.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Command:
    """Send ``args`` to Redis; ``blocking`` commands go to the pool with the long socket timeout."""

    args: tuple[Any, ...]
    blocking: bool = False


@dataclass(frozen=True, slots=True)
class _Pause:
    """Sleep this many seconds (back-off before reconnecting)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class _Emit:
    """Hand this entry to the caller of ``subscribe``."""

    entry: Entry


_Plan = Generator[_Command, Any, T]
_Follow = Generator[_Command | _Pause | _Emit, Any, NoReturn]


def _name(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value


def _int(what: str, value: object, *, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value}")
    return value


def _block_ms(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        raise ValueError("block_ms must be positive; 0 would block forever in Redis, use None not to block")
    return _int("block_ms", value, minimum=1)


def _entry_id(what: str, value: object, *, allow_dollar: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str entry id, got {type(value).__name__}")
    if (allow_dollar and value == "$") or _ID.fullmatch(value):
        return value
    expected = '"$" or an entry id' if allow_dollar else "an entry id"
    raise ValueError(f"{what} must be {expected} such as '1700000000000-0', got {value!r}")


def _flat_fields(fields: object) -> list[Any]:
    if not isinstance(fields, Mapping):
        raise TypeError(f"fields must be a mapping of str to str/bytes/int/float, got {type(fields).__name__}")
    if not fields:
        raise ValueError("fields must not be empty: a stream entry has at least one field")
    flat: list[Any] = []
    for name, value in fields.items():
        if not isinstance(name, str):
            raise TypeError(f"field names must be str, got {type(name).__name__} ({name!r})")
        if isinstance(value, bool) or not isinstance(value, (str, bytes, int, float)):
            raise TypeError(
                f"field {name!r} has a value of type {type(value).__name__}; "
                "expected str, bytes, int or float (bool is not allowed: it is ambiguous)"
            )
        flat += (name, value)
    return flat


def stream_key(prefix: str, stream: str, raw: bool = False) -> str:
    """The Redis key of ``stream``: ``f"{prefix}stream:{stream}"``, or ``stream`` itself
    when ``raw`` (a stream written by another program).

    :raises TypeError: ``stream`` is not a str.
    :raises ValueError: ``stream`` is empty.
    """
    _name("stream", stream)
    return stream if raw else f"{prefix}stream:{stream}"


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "surrogateescape")


def _value(entry_id: str, name: str, raw: bytes | str, decode: bool) -> str | bytes:
    if isinstance(raw, str):
        return raw if decode else raw.encode()
    if not decode:
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"entry {entry_id} field {name!r} is not UTF-8 text; read it with decode=False") from exc


def _parse(raw_entries: list[Any] | None, decode: bool) -> list[tuple[str, dict[str, Any] | None]]:
    """``[[id, [f1, v1, ...]], ...]`` → ``[(id, {f1: v1}), ...]``; an entry deleted while it
    was pending comes as ``(id, None)``."""
    parsed: list[tuple[str, dict[str, Any] | None]] = []
    for item in raw_entries or ():
        if item is None:  # XAUTOCLAIM before Redis 7 marks a deleted entry this way
            continue
        entry_id, flat = _text(item[0]), item[1]
        if flat is None:
            parsed.append((entry_id, None))
            continue
        names = [_text(n) for n in flat[::2]]
        parsed.append((entry_id, {n: _value(entry_id, n, v, decode) for n, v in zip(names, flat[1::2], strict=True)}))
    return parsed


def _entries(raw_entries: list[Any] | None, decode: bool) -> list[Entry]:
    return [(entry_id, fields) for entry_id, fields in _parse(raw_entries, decode) if fields is not None]


def _one_stream(reply: Any) -> list[Any]:
    """The entries of the single stream in an XREAD/XREADGROUP reply (RESP2 or RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return next(iter(reply.values()))
    return reply[0][1]


def _newest_id(reply: list[Any]) -> str:
    return _text(reply[0][0]) if reply else "0-0"


def _newest_command(key: str) -> _Command:
    return _Command(("XREVRANGE", key, "+", "-", "COUNT", 1))


def _publish(key: str, fields: object, maxlen: object, approximate: bool) -> _Plan[str]:
    flat = _flat_fields(fields)
    _int("maxlen", maxlen, minimum=1)
    reply = yield _Command(("XADD", key, "MAXLEN", "~" if approximate else "=", maxlen, "*", *flat))
    return _text(reply)


def _read_latest(key: str, count: object, decode: bool) -> _Plan[list[Entry]]:
    _int("count", count, minimum=1)
    reply = yield _Command(("XREVRANGE", key, "+", "-", "COUNT", count))
    return _entries(reply, decode)


def _wait(command: Callable[[int], _Command], block_ms: int, decode: bool) -> _Plan[list[Entry]]:
    """Send ``command(chunk_ms)`` until it returns entries or ``block_ms`` have passed."""
    deadline = time.monotonic() + block_ms / 1000
    while True:
        remaining_ms = math.ceil((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            return []
        entries = _entries(_one_stream((yield command(min(remaining_ms, BLOCK_CHUNK_MS)))), decode)
        if entries:
            return entries


def _read(key: str, last_id: object, count: object, block_ms: object, decode: bool) -> _Plan[list[Entry]]:
    after = _entry_id("last_id", last_id, allow_dollar=True)
    _int("count", count, minimum=1)
    block = _block_ms(block_ms)
    if block is None:
        if after == "$":
            return []
        return _entries(_one_stream((yield _Command(("XREAD", "COUNT", count, "STREAMS", key, after)))), decode)
    if after == "$" and block > BLOCK_CHUNK_MS:
        # "$" means "newer than now"; sent again with each chunk it would skip what arrived
        # between two chunks, so pin it to the newest id once, before waiting.
        after = _newest_id((yield _newest_command(key)))

    def chunk(ms: int) -> _Command:
        return _Command(("XREAD", "COUNT", count, "BLOCK", ms, "STREAMS", key, after), blocking=True)

    return (yield from _wait(chunk, block, decode))


def _create_group(key: str, group: object, start_id: object, mkstream: bool) -> _Plan[bool]:
    _name("group", group)
    _entry_id("start_id", start_id, allow_dollar=True)
    try:
        yield _Command(("XGROUP", "CREATE", key, group, start_id, *(("MKSTREAM",) if mkstream else ())))
    except ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return False
        raise
    return True


def _group_read(key: str, group: str, consumer: str, count: int, after: str, block: int | None) -> _Command:
    block_args = () if block is None else ("BLOCK", block)
    args = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, *block_args, "STREAMS", key, after)
    return _Command(args, blocking=block is not None)


def _read_group(
    key: str, group: object, consumer: object, count: object, block_ms: object, decode: bool
) -> _Plan[list[Entry]]:
    g, c = _name("group", group), _name("consumer", consumer)
    n = _int("count", count, minimum=1)
    block = _block_ms(block_ms)
    if block is None:
        return _entries(_one_stream((yield _group_read(key, g, c, n, ">", None))), decode)
    return (yield from _wait(lambda ms: _group_read(key, g, c, n, ">", ms), block, decode))


def _ack(key: str, group: object, ids: tuple[object, ...]) -> _Plan[int]:
    _name("group", group)
    for entry_id in ids:
        _entry_id("ack id", entry_id)
    if not ids:
        return 0
    return int((yield _Command(("XACK", key, group, *ids))))


def _claim(
    key: str, group: object, consumer: object, min_idle_ms: object, count: object, decode: bool
) -> _Plan[list[Entry]]:
    _name("group", group)
    _name("consumer", consumer)
    _int("min_idle_ms", min_idle_ms, minimum=0)
    wanted = _int("count", count, minimum=1)
    claimed: list[Entry] = []
    cursor = "0-0"
    while True:
        # XAUTOCLAIM scans a bounded part of the pending list per call: follow its cursor
        # until enough are claimed or the whole list has been scanned (cursor back at 0-0).
        args = ("XAUTOCLAIM", key, group, consumer, min_idle_ms, cursor, "COUNT", wanted - len(claimed))
        reply = yield _Command(args)
        cursor = _text(reply[0])
        claimed += _entries(reply[1], decode)
        if cursor == "0-0" or len(claimed) >= wanted:
            return claimed


class _Backoff:
    """0.05 s, doubling up to 1 s, back to the start after a success."""

    def __init__(self) -> None:
        self._next = _BACKOFF_FIRST

    def reset(self) -> None:
        self._next = _BACKOFF_FIRST

    def pause(self) -> _Pause:
        pause = _Pause(self._next)
        self._next = min(self._next * 2, _BACKOFF_MAX)
        return pause


def _follow(key: str, last_id: str, decode: bool) -> _Follow:
    backoff = _Backoff()
    while True:
        try:
            if last_id == "$":
                # pinned once: after a reconnect "$" would skip what was added meanwhile
                last_id = _newest_id((yield _newest_command(key)))
            reply = yield _Command(
                ("XREAD", "COUNT", _FOLLOW_BATCH, "BLOCK", BLOCK_CHUNK_MS, "STREAMS", key, last_id), blocking=True
            )
        except _RETRYABLE as exc:
            if isinstance(exc, _FATAL):
                raise
            yield backoff.pause()
            continue
        backoff.reset()
        for entry in _entries(_one_stream(reply), decode):
            last_id = entry[0]
            yield _Emit(entry)


def _ack_done(key: str, group: str, done: list[str]) -> _Plan[None]:
    if done:
        yield _Command(("XACK", key, group, *done))
        done.clear()


def _follow_group(key: str, group: str, consumer: str, start_id: str, decode: bool) -> _Follow:
    backoff = _Backoff()
    done: list[str] = []  # ids whose loop body returned but whose XACK Redis has not confirmed yet
    while True:
        try:
            yield from _ack_done(key, group, done)
            yield from _create_group(key, group, start_id, mkstream=True)
            after = "0"  # this consumer's pending entries first (delivered before a reconnect), then ">"
            while True:
                block = BLOCK_CHUNK_MS if after == ">" else None
                batch = _parse(
                    _one_stream((yield _group_read(key, group, consumer, _FOLLOW_BATCH, after, block))), decode
                )
                backoff.reset()
                if not batch and after != ">":
                    after = ">"
                for entry_id, fields in batch:
                    if after != ">":
                        after = entry_id
                    if fields is not None:  # None: deleted while pending, nothing left to deliver
                        yield _Emit((entry_id, fields))
                    done.append(entry_id)
                    yield from _ack_done(key, group, done)
        except _RETRYABLE as exc:
            if isinstance(exc, _FATAL):
                raise
            yield backoff.pause()
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):  # the stream was deleted: create the group again
                raise
            yield backoff.pause()


def _subscribe(key: str, last_id: object, group: object, consumer: object, decode: bool) -> _Follow:
    start = _entry_id("last_id", last_id, allow_dollar=True)
    if group is None and consumer is None:
        return _follow(key, start, decode)
    if group is None or consumer is None:
        raise ValueError("subscribe needs both group and consumer, or neither")
    return _follow_group(key, _name("group", group), _name("consumer", consumer), start, decode)


# --------------------------------------------------------------------------------------------------
# The twins: they carry plans out, nothing else.
# --------------------------------------------------------------------------------------------------


class _StreamsBase:
    """What both twins hold: the URL, the key prefix, and the translation of redis-py errors."""

    def __init__(self, redis_url: str, prefix: str, timeout: float) -> None:
        _name("redis_url", redis_url)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
        if not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._url = redis_url
        self._prefix = prefix
        self._timeout = float(timeout)

    def _options(self, socket_timeout: float, retry_class: type[Any]) -> dict[str, Any]:
        # One immediate retry on a broken connection, as the L2 tier does: a pooled connection
        # that Redis closed (restart, idle timeout) fails on first use, before any server saw
        # the command. No retry on a timeout: Redis may have run the command (an XADD twice).
        # redis-py's default (10 retries with back-off) would stall every call on a dead Redis.
        retry = retry_class(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        return {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": self._timeout,
            "retry": retry,
            "decode_responses": False,
        }

    @staticmethod
    def _raw_replies(client: redis.Redis | redis.asyncio.Redis) -> None:
        for command in _RAW_REPLY_COMMANDS:
            client.set_response_callback(command, _identity)

    def _key(self, stream: str, raw: bool) -> str:
        return stream_key(self._prefix, stream, raw)

    def _step(self, plan: Generator[Any, Any, Any], reply: Any, error: RedisError | None) -> Any:
        """Advance ``plan`` with the last reply (or error); its redis-py errors become L2Error."""
        try:
            return plan.send(reply) if error is None else plan.throw(error)
        except RedisError as exc:
            raise L2Error(f"Redis stream operation failed on {redact_url(self._url)}: {exc}") from exc


def _identity(response: Any, **_options: Any) -> Any:
    return response


class Streams(_StreamsBase):
    """Redis Streams helpers for threads; one object may be shared by any number of threads.

    Normal calls use one connection pool (socket timeout ``timeout``), blocking reads
    another, so a blocking read never delays the other calls.

    :param redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL.
    :param prefix: key prefix, e.g. ``"mtcache:default:"``; streams live at
        ``f"{prefix}stream:{name}"`` unless a call passes ``raw=True``.
    :param timeout: socket timeout of every non-blocking call, in seconds.
    :raises TypeError, ValueError: a bad argument.
    """

    def __init__(self, redis_url: str, prefix: str, *, timeout: float = 2.0) -> None:
        super().__init__(redis_url, prefix, timeout)
        self._client = self._open(self._timeout)
        self._blocking = self._open(self._timeout + BLOCK_CHUNK_MS / 1000 + _BLOCK_SLACK)

    def _open(self, socket_timeout: float) -> redis.Redis:
        client = redis.Redis.from_url(self._url, **self._options(socket_timeout, redis.retry.Retry))
        self._raw_replies(client)
        return client

    def close(self) -> None:
        """Close both connection pools. Idempotent."""
        self._client.close()
        self._blocking.close()

    def __enter__(self) -> Streams:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _execute(self, command: _Command) -> tuple[Any, RedisError | None]:
        client = self._blocking if command.blocking else self._client
        try:
            return client.execute_command(*command.args), None
        except RedisError as exc:
            return None, exc

    def _run(self, plan: _Plan[T]) -> T:
        reply, error = None, None
        while True:
            try:
                command = self._step(plan, reply, error)
            except StopIteration as stop:
                return stop.value
            reply, error = self._execute(command)

    def _drive(self, plan: _Follow) -> Iterator[Entry]:
        reply, error = None, None
        try:
            while True:
                step = self._step(plan, reply, error)
                reply, error = None, None
                if isinstance(step, _Emit):
                    yield step.entry
                elif isinstance(step, _Pause):
                    time.sleep(step.seconds)
                else:
                    reply, error = self._execute(step)
        finally:
            plan.close()

    def publish_to_stream(
        self,
        stream: str,
        fields: Mapping[str, str | bytes | int | float],
        *,
        maxlen: int = 1000,
        approximate: bool = True,
        raw: bool = False,
    ) -> str:
        """Append an entry (XADD) and trim the stream to about ``maxlen`` entries (exactly
        ``maxlen`` with ``approximate=False``, which costs more in Redis).

        :returns: the new entry's id.
        :raises TypeError: ``fields`` is not a mapping, a field name is not a str, or a
            value is not str, bytes, int or float (the message names the field).
        :raises ValueError: ``fields`` is empty or ``maxlen`` is not positive.
        :raises L2Error: Redis failed.
        """
        return self._run(_publish(self._key(stream, raw), fields, maxlen, approximate))

    def read_stream_latest(
        self, stream: str, count: int = 10, *, raw: bool = False, decode: bool = True
    ) -> list[Entry]:
        """The ``count`` newest entries, newest first (XREVRANGE); ``[]`` for a missing stream.

        :raises ValueError: values that are not UTF-8 with ``decode=True``, or bad ``count``.
        :raises L2Error: Redis failed.
        """
        return self._run(_read_latest(self._key(stream, raw), count, decode))

    def read_stream(
        self,
        stream: str,
        last_id: str = "$",
        count: int = 10,
        block_ms: int | None = None,
        *,
        raw: bool = False,
        decode: bool = True,
    ) -> list[Entry]:
        """Up to ``count`` entries after ``last_id``, oldest first (XREAD).

        ``last_id="$"`` means "newer than now": without ``block_ms`` that is ``[]``
        (answered without asking Redis). With ``block_ms`` the call waits up to that many
        milliseconds for an entry and returns ``[]`` if none came; the wait runs on the
        blocking pool and may be longer than ``timeout``.

        :raises ValueError: bad ``last_id``, ``count`` or ``block_ms`` (``0`` is refused:
            Redis would block forever), or values that are not UTF-8 with ``decode=True``.
        :raises L2Error: Redis failed.
        """
        return self._run(_read(self._key(stream, raw), last_id, count, block_ms, decode))

    def create_consumer_group(
        self, stream: str, group: str, *, start_id: str = "$", mkstream: bool = True, raw: bool = False
    ) -> bool:
        """Create ``group`` on ``stream`` reading from after ``start_id`` (``"$"``: only new
        entries, ``"0"``: everything), creating the stream if ``mkstream``.

        :returns: True if created, False if the group already existed.
        :raises L2Error: Redis failed (also: the stream does not exist and not ``mkstream``).
        """
        return self._run(_create_group(self._key(stream, raw), group, start_id, mkstream))

    def read_group(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = 10,
        block_ms: int | None = None,
        raw: bool = False,
        decode: bool = True,
    ) -> list[Entry]:
        """Up to ``count`` entries never delivered to anyone in ``group`` (XREADGROUP ``>``),
        now pending for ``consumer`` until acked; waits up to ``block_ms`` if given.

        :raises L2Error: Redis failed (also: the group does not exist).
        """
        return self._run(_read_group(self._key(stream, raw), group, consumer, count, block_ms, decode))

    def ack(self, stream: str, group: str, *ids: str, raw: bool = False) -> int:
        """Acknowledge entries (XACK). :returns: how many were pending and are now acked."""
        return self._run(_ack(self._key(stream, raw), group, ids))

    def claim_stale(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        min_idle_ms: int,
        count: int = 10,
        raw: bool = False,
        decode: bool = True,
    ) -> list[Entry]:
        """Take over up to ``count`` entries pending in ``group`` for at least ``min_idle_ms``
        (their consumer died or stalls) and return them, now pending for ``consumer``
        (XAUTOCLAIM over the whole pending list). Entries deleted meanwhile are dropped.

        :raises L2Error: Redis failed.
        """
        return self._run(_claim(self._key(stream, raw), group, consumer, min_idle_ms, count, decode))

    def subscribe(
        self,
        stream: str,
        *,
        last_id: str = "$",
        group: str | None = None,
        consumer: str | None = None,
        raw: bool = False,
        decode: bool = True,
    ) -> Iterator[Entry]:
        """Follow the stream forever, yielding entries in order.

        Without a group it yields every entry after ``last_id`` (``"$"``: added after the
        first ``next()``). With ``group`` and ``consumer`` it reads as that consumer (the
        group is created at ``last_id`` if missing): first its own pending entries, then new
        ones, and acks each entry when the loop asks for the next one, so an entry whose
        loop body raised, or after which the loop stopped, stays pending.

        When Redis drops or restarts it reconnects with back-off (0.05 s doubling to 1 s)
        and resumes after the last entry yielded: nothing skipped, nothing repeated.
        Closing the generator (``break``) ends it.

        :raises TypeError, ValueError: bad arguments (raised here, before iterating).
        :raises L2Error: while iterating, a Redis error that reconnecting cannot cure
            (wrong credentials, the key holds another type).
        """
        return self._drive(_subscribe(self._key(stream, raw), last_id, group, consumer, decode))


class AsyncStreams(_StreamsBase):
    """The asyncio twin of :class:`Streams`, with the same methods as coroutines; use one
    object within one event loop. See :class:`Streams` for what each method promises."""

    def __init__(self, redis_url: str, prefix: str, *, timeout: float = 2.0) -> None:
        super().__init__(redis_url, prefix, timeout)
        self._client = self._open(self._timeout)
        self._blocking = self._open(self._timeout + BLOCK_CHUNK_MS / 1000 + _BLOCK_SLACK)

    def _open(self, socket_timeout: float) -> redis.asyncio.Redis:
        client = redis.asyncio.Redis.from_url(self._url, **self._options(socket_timeout, redis.asyncio.retry.Retry))
        self._raw_replies(client)
        return client

    async def aclose(self) -> None:
        """Close both connection pools. Idempotent."""
        await self._client.aclose()
        await self._blocking.aclose()

    async def __aenter__(self) -> AsyncStreams:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _execute(self, command: _Command) -> tuple[Any, RedisError | None]:
        client = self._blocking if command.blocking else self._client
        try:
            return await client.execute_command(*command.args), None
        except RedisError as exc:
            return None, exc

    async def _run(self, plan: _Plan[T]) -> T:
        reply, error = None, None
        while True:
            try:
                command = self._step(plan, reply, error)
            except StopIteration as stop:
                return stop.value
            reply, error = await self._execute(command)

    async def _drive(self, plan: _Follow) -> AsyncIterator[Entry]:
        reply, error = None, None
        try:
            while True:
                step = self._step(plan, reply, error)
                reply, error = None, None
                if isinstance(step, _Emit):
                    yield step.entry
                elif isinstance(step, _Pause):
                    await asyncio.sleep(step.seconds)
                else:
                    reply, error = await self._execute(step)
        finally:
            plan.close()

    async def publish_to_stream(
        self,
        stream: str,
        fields: Mapping[str, str | bytes | int | float],
        *,
        maxlen: int = 1000,
        approximate: bool = True,
        raw: bool = False,
    ) -> str:
        """See :meth:`Streams.publish_to_stream`."""
        return await self._run(_publish(self._key(stream, raw), fields, maxlen, approximate))

    async def read_stream_latest(
        self, stream: str, count: int = 10, *, raw: bool = False, decode: bool = True
    ) -> list[Entry]:
        """See :meth:`Streams.read_stream_latest`."""
        return await self._run(_read_latest(self._key(stream, raw), count, decode))

    async def read_stream(
        self,
        stream: str,
        last_id: str = "$",
        count: int = 10,
        block_ms: int | None = None,
        *,
        raw: bool = False,
        decode: bool = True,
    ) -> list[Entry]:
        """See :meth:`Streams.read_stream`."""
        return await self._run(_read(self._key(stream, raw), last_id, count, block_ms, decode))

    async def create_consumer_group(
        self, stream: str, group: str, *, start_id: str = "$", mkstream: bool = True, raw: bool = False
    ) -> bool:
        """See :meth:`Streams.create_consumer_group`."""
        return await self._run(_create_group(self._key(stream, raw), group, start_id, mkstream))

    async def read_group(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = 10,
        block_ms: int | None = None,
        raw: bool = False,
        decode: bool = True,
    ) -> list[Entry]:
        """See :meth:`Streams.read_group`."""
        return await self._run(_read_group(self._key(stream, raw), group, consumer, count, block_ms, decode))

    async def ack(self, stream: str, group: str, *ids: str, raw: bool = False) -> int:
        """See :meth:`Streams.ack`."""
        return await self._run(_ack(self._key(stream, raw), group, ids))

    async def claim_stale(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        min_idle_ms: int,
        count: int = 10,
        raw: bool = False,
        decode: bool = True,
    ) -> list[Entry]:
        """See :meth:`Streams.claim_stale`."""
        return await self._run(_claim(self._key(stream, raw), group, consumer, min_idle_ms, count, decode))

    def subscribe(
        self,
        stream: str,
        *,
        last_id: str = "$",
        group: str | None = None,
        consumer: str | None = None,
        raw: bool = False,
        decode: bool = True,
    ) -> AsyncIterator[Entry]:
        """See :meth:`Streams.subscribe`; iterate with ``async for`` and close with
        ``aclose()`` (or ``contextlib.aclosing``)."""
        return self._drive(_subscribe(self._key(stream, raw), last_id, group, consumer, decode))
