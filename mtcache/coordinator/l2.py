"""The Redis L2 tier of the coordinator, on ``redis.asyncio`` (hiredis parser when installed).

Every L2 value is an *envelope*: msgpack of ``[format_version, logical_expiry_ms, value, tags]``, where ``value``
is the user value as the worker encoded it (never decoded here). It is stored under
``mtcache:<namespace>:v<FORMAT_VERSION>:k:<key>`` with a physical TTL (``PX``) equal to the TTL it was set with;
other modules (leases, streams) put their keys under the same :attr:`L2Tier.prefix`, so :meth:`L2Tier.clear`
removes them too. The format version is part of the prefix: a build with another envelope format reads and
writes other keys instead of misreading these.

Failure: whatever Redis does wrong (refuses, resets, times out, is paused, answers an error) reaches the caller
as :class:`~mtcache.errors.L2Error`, naming the operation and the redacted URL, with the redis-py exception
chained as ``__cause__``. Every round trip is bounded by socket timeouts and by a deadline of twice ``timeout``
around the whole call, so a stopped Redis gives an error, not a hang.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import msgpack
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from mtcache.config import redact_url
from mtcache.errors import L2Error

if sys.version_info >= (3, 11, 3):
    from asyncio import timeout as _deadline
else:
    # asyncio.timeout misbehaves before 3.11.3 (redis-py issue #2633); redis-py requires async-timeout there
    from async_timeout import timeout as _deadline  # type: ignore[no-redef, import-not-found, unused-ignore]

__all__ = ["FORMAT_VERSION", "Envelope", "L2Tier", "decode_envelope", "encode_envelope", "key_prefix"]

FORMAT_VERSION = 1

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# What a Redis call fails with: redis-py's errors, raw socket errors, and the deadline around the call.
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
# An expiry must stay a signed 64-bit integer for msgpack and for Redis.
_MAX_EXPIRY_MS = 2**62
_SCAN_COUNT = 1000
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class Envelope(NamedTuple):
    """What L2 stores for one key."""

    format_version: int
    #: wall-clock epoch milliseconds after which the value is logically expired
    logical_expiry_ms: int
    #: the encoded user value; the coordinator never decodes it
    value: bytes
    tags: tuple[str, ...]


def _is_int(obj: object) -> bool:
    return isinstance(obj, int) and not isinstance(obj, bool)


def encode_envelope(env: Envelope) -> bytes:
    """Encode ``env`` as msgpack ``[format_version, logical_expiry_ms, value, list(tags)]``.

    :raises TypeError: ``env`` is not an :class:`Envelope` or a field has the wrong type.
    :raises ValueError: the format version is not :data:`FORMAT_VERSION` or the expiry is out of range.
    """
    if not isinstance(env, Envelope):
        raise TypeError(f"expected an Envelope, got {type(env).__name__}")
    if not _is_int(env.format_version) or not _is_int(env.logical_expiry_ms):
        raise TypeError("Envelope.format_version and Envelope.logical_expiry_ms must be int")
    if env.format_version != FORMAT_VERSION:
        raise ValueError(f"Envelope.format_version is {env.format_version}; this build writes {FORMAT_VERSION}")
    if not 0 <= env.logical_expiry_ms < _MAX_EXPIRY_MS:
        raise ValueError(f"Envelope.logical_expiry_ms {env.logical_expiry_ms} is out of range")
    if not isinstance(env.value, bytes):
        raise TypeError(f"Envelope.value must be bytes, got {type(env.value).__name__}")
    if not isinstance(env.tags, tuple) or not all(isinstance(t, str) for t in env.tags):
        raise TypeError("Envelope.tags must be a tuple of str")
    return msgpack.packb([env.format_version, env.logical_expiry_ms, env.value, list(env.tags)], use_bin_type=True)


def decode_envelope(data: bytes) -> Envelope:
    """Decode bytes written by :func:`encode_envelope`.

    :raises TypeError: ``data`` is not bytes-like.
    :raises ValueError: ``data`` is not a well-formed envelope of format :data:`FORMAT_VERSION`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"envelope data must be bytes, got {type(data).__name__}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed L2 envelope: not msgpack ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, list) or len(obj) != 4:
        raise ValueError(f"malformed L2 envelope: expected an array of 4 items, got {type(obj).__name__}")
    version, expiry, value, tags = obj
    if not _is_int(version) or version != FORMAT_VERSION:
        shown = version if _is_int(version) else type(version).__name__
        raise ValueError(f"L2 envelope has format version {shown}; this build reads {FORMAT_VERSION}")
    if not _is_int(expiry) or not 0 <= expiry < _MAX_EXPIRY_MS:
        raise ValueError("malformed L2 envelope: logical expiry is not a non-negative 64-bit integer")
    if not isinstance(value, bytes):
        raise ValueError(f"malformed L2 envelope: value is {type(value).__name__}, not bytes")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("malformed L2 envelope: tags are not an array of strings")
    return Envelope(version, expiry, value, tuple(tags))


def key_prefix(namespace: str) -> str:
    """``mtcache:<namespace>:v<FORMAT_VERSION>:``, the prefix of every Redis key of ``namespace``.

    :raises TypeError: ``namespace`` is not a str.
    :raises ValueError: ``namespace`` is empty or contains ``:`` (which would let one namespace's prefix
        match another's keys).
    """
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
    if not namespace or ":" in namespace:
        raise ValueError(f"namespace must be a non-empty string without ':', got {namespace!r}")
    return f"mtcache:{namespace}:v{FORMAT_VERSION}:"


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("key must be a non-empty string")
    return key


def _check_seconds(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
    return float(value)


def _check_tags(tags: object) -> tuple[str, ...]:
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Sequence):
        raise TypeError(f"tags must be a sequence of str (not a single string), got {type(tags).__name__}")
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"every tag must be a str, got {type(tag).__name__}")
    return tuple(tags)


class L2Tier:
    """Envelopes in Redis under one namespace's prefix.

    Builds its client with ``redis.asyncio.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)``
    unless ``client`` is given (the tier then owns it and closes it in :meth:`aclose`). The client retries a
    command once, at once, only after a connection error (a pooled connection that Redis dropped while idle, as
    in a Redis restart); timeouts are not retried, so a call against a dead or stopped Redis fails within about
    ``2 * timeout``.

    :raises TypeError: an argument has the wrong type.
    :raises ValueError: ``url`` is not a Redis URL, ``namespace`` is invalid (see :func:`key_prefix`) or
        ``timeout`` is not a positive finite number.
    """

    prefix: str
    redis: Redis

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        timeout: float = 1.0,
        client: Redis | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        self.prefix = key_prefix(namespace)
        timeout = _check_seconds("timeout", timeout)
        try:
            self._url = redact_url(url)
        except ValueError:
            raise ValueError("the Redis URL is malformed (not shown: it may hold a password)") from None
        if client is None:
            try:
                client = Redis.from_url(
                    url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                )
            except ValueError as exc:
                # redis-py's reason names the bad part of the URL; never let it carry the password
                password = urlsplit(url).password
                reason = "malformed" if password and password in str(exc) else str(exc)
                raise ValueError(f"invalid Redis URL {self._url!r}: {reason}") from None
        elif not isinstance(client, Redis):
            raise TypeError(f"client must be a redis.asyncio.Redis, got {type(client).__name__}")
        self.redis = client
        self._bound = 2 * timeout
        # clear() removes values only: the invalidation stream and leases under the same
        # prefix must survive it (a clear is itself published on the stream)
        self._match = _GLOB_SPECIAL.sub(r"\\\1", self.prefix) + "k:*"
        self._gets = self._hits = self._misses = self._sets = self._errors = self._corrupt = 0

    def __repr__(self) -> str:
        return f"L2Tier(url={self._url!r}, prefix={self.prefix!r})"

    def key(self, key: str) -> str:
        """The Redis key that holds the envelope of ``key``: ``prefix + "k:" + key``.

        :raises TypeError: ``key`` is not a str.
        :raises ValueError: ``key`` is empty.
        """
        return self.prefix + "k:" + _check_key(key)

    async def get(self, key: str) -> tuple[Envelope, float] | None:
        """The envelope of ``key`` and its remaining physical TTL in seconds (``math.inf`` if the Redis key has
        no TTL), or None when absent. One round trip; a malformed envelope counts as absent and is deleted.

        :raises TypeError, ValueError: ``key`` is invalid.
        :raises L2Error: Redis failed.
        """
        return (await self._read("get", [key]))[0]

    async def mget(self, keys: Sequence[str]) -> list[tuple[Envelope, float] | None]:
        """What :meth:`get` gives, for each of ``keys`` in order, in one pipelined round trip.

        :raises TypeError, ValueError: a key is invalid.
        :raises L2Error: Redis failed.
        """
        if isinstance(keys, str) or not isinstance(keys, Sequence):
            raise TypeError(f"keys must be a sequence of str, got {type(keys).__name__}")
        return await self._read("mget", keys)

    async def _read(self, op: str, keys: Sequence[str]) -> list[tuple[Envelope, float] | None]:
        rkeys = [self.key(k) for k in keys]
        if not rkeys:
            return []
        replies = await self._run(op, self._get_and_pttl(rkeys))
        found: list[tuple[Envelope, float] | None] = []
        corrupt: list[str] = []
        for rkey, data, pttl in zip(rkeys, replies[::2], replies[1::2], strict=True):
            found.append(self._entry(rkey, data, pttl, corrupt))
        self._gets += len(found)
        hits = sum(entry is not None for entry in found)
        self._hits += hits
        self._misses += len(found) - hits
        if corrupt:
            # A cache may always drop an entry: at worst a value written since the read is recomputed.
            await self._run(op, self.redis.unlink(*dict.fromkeys(corrupt)))
        return found

    def _entry(self, rkey: str, data: bytes | None, pttl: int, corrupt: list[str]) -> tuple[Envelope, float] | None:
        if data is None or pttl == -2:  # -2: expired between the GET and the PTTL
            return None
        try:
            env = decode_envelope(data)
        except ValueError as exc:
            self._corrupt += 1
            corrupt.append(rkey)
            _log.warning("dropping the malformed L2 entry %r on %s: %s", rkey, self._url, exc)
            return None
        return env, (math.inf if pttl == -1 else pttl / 1000)

    async def _get_and_pttl(self, rkeys: list[str]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for rkey in rkeys:
                pipe.get(rkey)
                pipe.pttl(rkey)
            return await pipe.execute()

    def _envelope(self, key: str, value: bytes, ttl: float, tags: Sequence[str]) -> tuple[str, bytes, int]:
        rkey = self.key(key)
        if not isinstance(value, bytes):
            raise TypeError(f"value must be bytes (the encoded value), got {type(value).__name__}")
        ttl_ms = max(1, round(_check_seconds("ttl", ttl) * 1000))
        expiry_ms = time.time_ns() // 1_000_000 + ttl_ms
        if expiry_ms >= _MAX_EXPIRY_MS:
            raise ValueError(f"ttl {ttl!r} s is too long")
        data = encode_envelope(Envelope(FORMAT_VERSION, expiry_ms, value, _check_tags(tags)))
        return rkey, data, ttl_ms

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (``SET PX``), overwriting what is there.

        :raises TypeError, ValueError: an argument is invalid (``value`` must be bytes, ``ttl`` positive finite).
        :raises L2Error: Redis failed; the key may or may not have been written.
        """
        rkey, data, ttl_ms = self._envelope(key, value, ttl, tags)
        await self._run("set", self.redis.set(rkey, data, px=ttl_ms))
        self._sets += 1

    async def set_nx(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds only if ``key`` is absent (``SET NX PX``, for fills
        that must not overwrite a newer ``set``). True if it was stored.

        :raises TypeError, ValueError: an argument is invalid.
        :raises L2Error: Redis failed; the key may or may not have been written.
        """
        rkey, data, ttl_ms = self._envelope(key, value, ttl, tags)
        stored = await self._run("set_nx", self.redis.set(rkey, data, px=ttl_ms, nx=True))
        self._sets += 1
        return bool(stored)

    def queue_set(self, pipe: Pipeline, key: str, value: bytes, ttl: float, *, nx: bool = False) -> None:
        """Queue what :meth:`set` (or :meth:`set_nx` with ``nx``) sends into ``pipe``,
        so it can travel with other commands in one round trip (see :meth:`pipeline`)."""
        rkey, data, ttl_ms = self._envelope(key, value, ttl, ())
        pipe.set(rkey, data, px=ttl_ms, nx=nx)
        self._sets += 1

    def queue_delete(self, pipe: Pipeline, key: str) -> None:
        """Queue what :meth:`delete` sends for one key into ``pipe``."""
        pipe.unlink(self.key(key))

    async def pipeline(self, op: str, build: Callable[[Pipeline], None]) -> list[Any]:
        """Run the commands ``build(pipe)`` queues in one non-transactional round
        trip, under the deadline, failures translated into :class:`L2Error`."""
        async with self.redis.pipeline(transaction=False) as pipe:
            build(pipe)
            return await self._run(op, pipe.execute())

    async def delete(self, *keys: str) -> int:
        """Remove ``keys`` (``UNLINK``); the number that existed.

        :raises TypeError, ValueError: a key is invalid.
        :raises L2Error: Redis failed.
        """
        rkeys = [self.key(k) for k in keys]
        if not rkeys:
            return 0
        return int(await self._run("delete", self.redis.unlink(*rkeys)))

    async def clear(self) -> int:
        """Remove every value of this namespace (the keys under ``prefix + "k:"``; leases and the invalidation
        stream stay) with
        ``SCAN MATCH`` and ``UNLINK`` in batches; the number removed. Each round trip is bounded on its own.

        :raises L2Error: Redis failed; the keys removed so far stay removed.
        """
        removed = 0
        cursor = 0
        while True:
            cursor, batch = await self._run("clear", self.redis.scan(cursor, match=self._match, count=_SCAN_COUNT))
            if batch:
                removed += int(await self._run("clear", self.redis.unlink(*batch)))
            if int(cursor) == 0:
                return removed

    async def ping(self) -> bool:
        """True if Redis answers PING within the deadline; False on any Redis failure. Never raises one."""
        try:
            async with _deadline(self._bound):
                return bool(await self.redis.ping())
        except _FAILURES:
            return False

    async def aclose(self) -> None:
        """Close the client and its connections. The tier cannot be used afterwards."""
        await self.redis.aclose()

    def stats(self) -> dict[str, int]:
        """Counters since the tier was built: ``gets`` (keys asked for), ``hits``, ``misses``, ``sets`` (writes
        that Redis answered, including ``set_nx`` that did not store), ``errors`` (calls that raised
        :class:`L2Error`) and ``corrupt`` (malformed envelopes found and dropped, also counted as misses)."""
        return {
            "gets": self._gets,
            "hits": self._hits,
            "misses": self._misses,
            "sets": self._sets,
            "errors": self._errors,
            "corrupt": self._corrupt,
        }

    async def run(self, op: str, call: Awaitable[_T]) -> _T:
        """Await one Redis call (``call``, made on :attr:`redis` or a pipeline of it) under the deadline,
        translating its failure into :class:`L2Error` named after ``op``. For the modules that share this
        connection (leases, invalidation)."""
        return await self._run(op, call)

    async def _run(self, op: str, call: Awaitable[_T]) -> _T:
        """Await one Redis call under the deadline, translating its failure into :class:`L2Error`."""
        try:
            async with _deadline(self._bound):
                return await call
        except _FAILURES as exc:
            self._errors += 1
            if isinstance(exc, RedisError) or str(exc):
                detail = f"{type(exc).__name__}: {exc}"
            else:
                detail = f"no answer within {self._bound:g} s"
            raise L2Error(f"L2 {op} failed on {self._url}: {detail}") from exc
