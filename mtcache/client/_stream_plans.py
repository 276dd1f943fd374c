"""The logic of the Redis Streams helpers, with no I/O: validation, the Redis
commands each operation needs, and the parsing of their raw replies.

Every operation is a *plan*, a generator that yields :class:`_Command` (and, for
``subscribe``, :class:`_Pause` and :class:`_Emit`) and receives raw replies;
:mod:`mtcache.client.streams` carries plans out, blocking or with ``await``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from ._entry import Entry

__all__ = ["BLOCK_CHUNK_MS", "Entry", "stream_key"]


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
    """``[[id, [f1, v1, ...]], ...]`` (or ``[(id, {f1: v1}), ...]``, as redis-py parses it) →
    ``[(id, {f1: v1}), ...]``; an entry deleted while it was pending comes as ``(id, None)``."""
    parsed: list[tuple[str, dict[str, Any] | None]] = []
    for item in raw_entries or ():
        if item is None:  # XAUTOCLAIM before Redis 7 marks a deleted entry this way
            continue
        entry_id, flat = _text(item[0]), item[1]
        if flat is None:
            parsed.append((entry_id, None))
            continue
        # a cluster client parses entries itself (its nodes keep redis-py's reply callbacks): fields as a dict
        pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
        parsed.append((entry_id, {_text(n): _value(entry_id, _text(n), v, decode) for n, v in pairs}))
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
