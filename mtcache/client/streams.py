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
import time
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    RedisError,
)

from mtcache.config import redact_url
from mtcache.errors import L2Error
from mtcache.redis_urls import async_client, sync_client

from ._stream_plans import (
    _BLOCK_SLACK,
    _RAW_REPLY_COMMANDS,
    BLOCK_CHUNK_MS,
    Entry,
    T,
    _ack,
    _claim,
    _Command,
    _create_group,
    _Emit,
    _Follow,
    _name,
    _Pause,
    _Plan,
    _publish,
    _read,
    _read_group,
    _read_latest,
    _subscribe,
    stream_key,
)

__all__ = ["BLOCK_CHUNK_MS", "AsyncStreams", "Entry", "Streams", "stream_key"]


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
    def _raw_replies(client: redis.Redis | redis.asyncio.Redis | redis.cluster.RedisCluster
                     | redis.asyncio.cluster.RedisCluster) -> None:
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

    :param redis_url: a Redis URL (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
        ``redis+cluster://``); on a cluster each stream lives on the node of its key's slot.
    :param prefix: key prefix, e.g. ``"mtcache:default:"``; streams live at
        ``f"{prefix}stream:{name}"`` unless a call passes ``raw=True``.
    :param timeout: socket timeout of every non-blocking call, in seconds.
    :raises TypeError, ValueError: a bad argument.
    """

    def __init__(self, redis_url: str, prefix: str, *, timeout: float = 2.0) -> None:
        super().__init__(redis_url, prefix, timeout)
        self._client = self._open(self._timeout)
        self._blocking = self._open(self._timeout + BLOCK_CHUNK_MS / 1000 + _BLOCK_SLACK)

    def _open(self, socket_timeout: float) -> redis.Redis | redis.cluster.RedisCluster:
        client = sync_client(self._url, **self._options(socket_timeout, redis.retry.Retry))
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

    def _open(self, socket_timeout: float) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
        client = async_client(self._url, **self._options(socket_timeout, redis.asyncio.retry.Retry))
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
