"""The Redis L2 tier of the coordinator, on ``redis.asyncio`` (hiredis parser when installed).

Every L2 entry is a *record*: a 27-byte header (``V`` for a value or ``T`` for a tombstone, then the stamp of
the write that made it, see :mod:`mtcache.coordinator.stamps`) followed by msgpack of ``[format_version,
logical_expiry_ms, value, tags]``, where ``value`` is the user value as the worker encoded it (never decoded
here). It is stored under ``mtcache:<namespace>:v<FORMAT_VERSION>:k:<key>`` with a physical TTL (``PX``).
Writes are conditional (one Lua script each, reading only the header with ``GETRANGE``): a record replaces
another only if its stamp is newer, and only if it is newer than the namespace *floor*, the stamp of the last
``clear``. The format version is part of the prefix: a build with another format reads and writes other keys
instead of misreading these.

Failure: whatever Redis does wrong (refuses, resets, times out, is paused, answers an error) reaches the caller
as :class:`~mtcache.errors.L2Error`, naming the operation and the redacted URL, with the redis-py exception
chained as ``__cause__``. Every round trip is bounded by socket timeouts and by a deadline of twice ``timeout``
around the whole call, so a stopped Redis gives an error, not a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import socket
import ssl
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import msgpack
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AuthenticationError, NoPermissionError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mtcache.config import redact_url
from mtcache.coordinator.lane import Batch, Lane, _sha, first_error, settles
from mtcache.coordinator.stamps import format_stamp, parse_stamp
from mtcache.errors import L2Error
from mtcache.redis_urls import async_client

if sys.version_info >= (3, 11, 3):
    from asyncio import timeout as _deadline
else:
    # asyncio.timeout misbehaves before 3.11.3 (redis-py issue #2633); redis-py requires async-timeout there
    from async_timeout import timeout as _deadline  # type: ignore[no-redef, import-not-found, unused-ignore]

__all__ = [
    "CLUSTER_GROUPS",
    "FOREVER_MS",
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "Batch",
    "Envelope",
    "L2Tier",
    "Layout",
    "RedisFailure",
    "WriteResult",
    "classify_failure",
    "decode_envelope",
    "encode_envelope",
    "key_prefix",
    "missing_permission",
]

FORMAT_VERSION = 2
#: A record starts with its kind (``V`` or ``T``) and its stamp in 26 digits.
HEADER_BYTES = 27

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# What a Redis call fails with: redis-py's errors, raw socket errors, the deadline around the call, and
# the RuntimeError uvloop raises when redis-py writes to a transport a reset already closed
# ("unable to perform operation on <TCPTransport closed=True>").
_FAILURES = (RedisError, OSError, asyncio.TimeoutError, RuntimeError)
# ... and, from a call in flight, the AttributeError redis-py raises when its connection is torn down under it
# ("'NoneType' object has no attribute 'writelines'": a failed ping dropped the pool meanwhile)
_CALL_FAILURES = (*_FAILURES, AttributeError)
# An expiry must stay a signed 64-bit integer for msgpack and for Redis.
_MAX_EXPIRY_MS = 2**62
#: The logical expiry of a value stored with no expiry (FOREVER); exact as a Lua number (a double).
FOREVER_MS = 2**61
_SCAN_COUNT = 1000
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
#: How many shard groups a namespace's keys form on a Redis Cluster (see :class:`Layout`).
CLUSTER_GROUPS = 16
_SLOTS = 16384

#: A client of one Redis (or of Sentinel's master) or of a Redis Cluster.
AnyRedis = Redis | RedisCluster


class Envelope(NamedTuple):
    """What L2 stores for one key: a value, or a tombstone (a delete), with the stamp of the write."""

    format_version: int
    #: wall-clock epoch milliseconds after which the value (or tombstone) is logically expired
    logical_expiry_ms: int
    #: the encoded user value (empty for a tombstone); the coordinator never decodes it
    value: bytes
    tags: tuple[str, ...]
    #: the stamp of the write that made this record (see :mod:`mtcache.coordinator.stamps`)
    stamp: int = 0
    #: a delete: read as a miss by every tier, kept so that older writes cannot land after it
    tombstone: bool = False
    #: epoch milliseconds until which a logically expired value may still be served when its source fails
    #: (fail-safe); 0: not past its logical expiry
    stale_until_ms: int = 0


class RedisFailure(NamedTuple):
    """Why Redis could not be used, as an operator needs it: ``kind`` is ``"auth"``
    (Redis refused the password or ACL user), ``"permission"`` (the ACL user may not run a
    command or touch a key mtcache needs: a ``NOPERM`` reply), ``"tls"`` (the TLS handshake failed),
    ``"unreachable"`` (no connection: refused, reset, timed out, unknown host) or
    ``"error"`` (Redis answered with an error); ``detail`` is the underlying message."""

    kind: str
    detail: str

    @property
    def reason(self) -> str:
        """One line saying what happened and what to check."""
        if self.kind == "auth":
            return f"authentication refused ({self.detail}): check the password and ACL user in REDIS_URL"
        if self.kind == "permission":
            return (f"permission denied ({self.detail}): the ACL user lacks {missing_permission(self.detail)}; "
                    f"grant it (the README's minimal ACL lists what mtcache needs)")
        if self.kind == "tls":
            return (f"TLS handshake failed ({self.detail}): check rediss:// and its certificates "
                    f"(ssl_ca_certs, ssl_certfile, ssl_keyfile in REDIS_URL)")
        if self.kind == "unreachable":
            return f"unreachable ({self.detail})"
        return f"answered an error ({self.detail})"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__context__, e.__cause__]
    return seen


_NOPERM_COMMAND = re.compile(r"permissions? to run the '([^']+)' command")
_NOPERM_KEY = re.compile(r"permissions? to access (?:a|one of the) key")


def missing_permission(detail: str) -> str:
    """The ACL rule a ``NOPERM`` message (``detail``) says is missing: ``+<command>`` when it names a command
    (``+config|get``), ``~mtcache:*`` when a key was refused, else ``a permission``. Never raises."""
    found = _NOPERM_COMMAND.search(detail)
    if found:
        return f"+{found.group(1).lower()}"
    if _NOPERM_KEY.search(detail):
        return "~mtcache:*"
    return "a permission"


def classify_failure(exc: BaseException) -> RedisFailure:
    """What kind of failure ``exc`` (a redis-py error, an :class:`~mtcache.errors.L2Error`
    raised from one, an OSError) is: see :class:`RedisFailure`. Never raises."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, NoPermissionError) or (isinstance(e, ResponseError) and "NOPERM" in str(e)):
            return RedisFailure("permission", str(e) or type(e).__name__)
    for e in chain:
        if isinstance(e, AuthenticationError):
            return RedisFailure("auth", str(e) or type(e).__name__)
    for e in chain:
        if isinstance(e, ssl.SSLError):
            return RedisFailure("tls", str(e) or type(e).__name__)
    for e in chain:
        if isinstance(e, (RedisConnectionError, RedisTimeoutError, ConnectionError, socket.gaierror, TimeoutError)):
            return RedisFailure("unreachable", str(e) or f"no answer ({type(e).__name__})")
    leaf = next((e for e in chain if isinstance(e, RedisError)), exc)
    return RedisFailure("error", str(leaf) or type(leaf).__name__)


def _is_int(obj: object) -> bool:
    return isinstance(obj, int) and not isinstance(obj, bool)


def encode_envelope(env: Envelope) -> bytes:
    """Encode ``env`` as a record: its kind (``V`` value, ``T`` tombstone) and its stamp in 26 ASCII digits
    (the header the Lua scripts read with ``GETRANGE``), then msgpack ``[format_version, logical_expiry_ms,
    value, list(tags), stale_until_ms]``.

    :raises TypeError: ``env`` is not an :class:`Envelope` or a field has the wrong type.
    :raises ValueError: the format version is not :data:`FORMAT_VERSION`, or the expiry or stamp is out of range.
    """
    if not isinstance(env, Envelope):
        raise TypeError(f"expected an Envelope, got {type(env).__name__}")
    if not all(_is_int(n) for n in (env.format_version, env.logical_expiry_ms, env.stamp, env.stale_until_ms)):
        raise TypeError("Envelope.format_version, logical_expiry_ms, stamp and stale_until_ms must be int")
    if env.format_version != FORMAT_VERSION:
        raise ValueError(f"Envelope.format_version is {env.format_version}; this build writes {FORMAT_VERSION}")
    if not 0 <= env.logical_expiry_ms < _MAX_EXPIRY_MS or not 0 <= env.stale_until_ms < _MAX_EXPIRY_MS:
        raise ValueError(f"Envelope.logical_expiry_ms {env.logical_expiry_ms} or stale_until_ms is out of range")
    if not isinstance(env.value, bytes):
        raise TypeError(f"Envelope.value must be bytes, got {type(env.value).__name__}")
    if not isinstance(env.tags, tuple) or not all(isinstance(t, str) for t in env.tags):
        raise TypeError("Envelope.tags must be a tuple of str")
    return _pack_record(env.tombstone, format_stamp(env.stamp), env.logical_expiry_ms, env.value, env.tags,
                        env.stale_until_ms)


def _pack_record(
    tombstone: bool, digits: bytes, expiry_ms: int, value: bytes, tags: Sequence[str], stale_until_ms: int
) -> bytes:
    """The bytes of a record whose fields are already checked (see :func:`encode_envelope`); ``digits``:
    its stamp as :func:`format_stamp` writes it. (A Packer kept for every call would be a little faster,
    but keeps the buffer of the largest record it ever packed.)"""
    return (b"T" if tombstone else b"V") + digits + msgpack.packb(
        [FORMAT_VERSION, expiry_ms, value, list(tags), stale_until_ms], use_bin_type=True)


def decode_envelope(data: bytes) -> Envelope:
    """Decode bytes written by :func:`encode_envelope`.

    :raises TypeError: ``data`` is not bytes-like.
    :raises ValueError: ``data`` is not a well-formed record of format :data:`FORMAT_VERSION`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"envelope data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    kind = data[:1]
    if kind not in (b"V", b"T") or len(data) < HEADER_BYTES:
        raise ValueError("malformed L2 envelope: no V/T header")
    try:
        stamp = parse_stamp(data[1:HEADER_BYTES])
    except ValueError as exc:
        raise ValueError(f"malformed L2 envelope: {exc}") from None
    try:
        obj = msgpack.unpackb(data[HEADER_BYTES:], raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed L2 envelope: not msgpack ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, list) or len(obj) != 5:
        raise ValueError(f"malformed L2 envelope: expected an array of 5 items, got {type(obj).__name__}")
    version, expiry, value, tags, stale_until = obj
    if not _is_int(version) or version != FORMAT_VERSION:
        shown = version if _is_int(version) else type(version).__name__
        raise ValueError(f"L2 envelope has format version {shown}; this build reads {FORMAT_VERSION}")
    if not _is_int(expiry) or not 0 <= expiry < _MAX_EXPIRY_MS:
        raise ValueError("malformed L2 envelope: logical expiry is not a non-negative 64-bit integer")
    if not _is_int(stale_until) or not 0 <= stale_until < _MAX_EXPIRY_MS:
        raise ValueError("malformed L2 envelope: the fail-safe limit is not a non-negative 64-bit integer")
    if not isinstance(value, bytes):
        raise ValueError(f"malformed L2 envelope: value is {type(value).__name__}, not bytes")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("malformed L2 envelope: tags are not an array of strings")
    return Envelope(version, expiry, value, tuple(tags), stamp, kind == b"T", stale_until)


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


def _group_tag(namespace: str, group: int, groups: int) -> str:
    """The hash tag of ``group`` of ``groups``: the first ``<namespace>.<group>.<n>`` whose hash slot falls in
    the group's share of the 16384 slots, so that the groups spread evenly over a cluster's masters (which
    ``redis-cli --cluster create`` gives equal, contiguous slot ranges)."""
    low, high = group * _SLOTS // groups, (group + 1) * _SLOTS // groups
    n = 0
    while not low <= key_slot(f"{namespace}.{group}.{n}".encode()) < high:
        n += 1
    return f"{namespace}.{group}.{n}"


class Layout:
    """Where one namespace's keys live in Redis.

    On one Redis (or Sentinel's master) there is one group, and every key is under the prefix:
    ``<prefix>k:<key>`` (the record), ``<prefix>lease:<key>``, ``<prefix>floor`` and ``<prefix>inval``
    (the invalidation stream). On a Redis Cluster, where a Lua script may touch keys of one hash slot
    only, the keys form :data:`CLUSTER_GROUPS` groups, each under ``<prefix>{<tag>}:`` with its own
    hash tag: a key's record, its tombstone, its lease, its group's copy of the namespace floor and its
    group's invalidation stream share one slot, and the groups' slots spread over the masters, so no
    one slot carries every write. A key's group is the CRC-32 of its UTF-8 bytes modulo the groups.
    Tag stamps (``<prefix>tag:<tag>``) are single keys and need no group.
    """

    __slots__ = ("_base_set", "bases", "prefix")

    def __init__(self, prefix: str, namespace: str, groups: int = 1) -> None:
        self.prefix = prefix
        #: the prefix of each group's keys
        self.bases: tuple[str, ...] = (prefix,) if groups == 1 else tuple(
            f"{prefix}{{{_group_tag(namespace, g, groups)}}}:" for g in range(groups))
        self._base_set = frozenset(self.bases)

    @property
    def sharded(self) -> bool:
        """True on a cluster (more than one group)."""
        return len(self.bases) > 1

    def group(self, key: str) -> int:
        """The group of ``key``."""
        bases = self.bases
        return 0 if len(bases) == 1 else zlib.crc32(key.encode("utf-8", "surrogatepass")) % len(bases)

    def record(self, key: str) -> str:
        """The Redis key of ``key``'s record."""
        return self.bases[self.group(key)] + "k:" + key

    def lease(self, key: str) -> str:
        """The Redis key of ``key``'s distributed lease."""
        return self.bases[self.group(key)] + "lease:" + key

    def floor(self, key: str) -> str:
        """The namespace floor as ``key``'s group holds it."""
        return self.bases[self.group(key)] + "floor"

    def floors(self) -> list[str]:
        """Every group's copy of the namespace floor (a clear raises them all)."""
        return [base + "floor" for base in self.bases]

    def streams(self) -> list[str]:
        """Every group's invalidation stream."""
        return [base + "inval" for base in self.bases]

    def stream(self, key: str) -> str:
        """The invalidation stream of ``key``'s group."""
        return self.bases[self.group(key)] + "inval"

    def floor_of_record(self, rkey: str) -> str:
        """The floor key of the group a record key (one :meth:`record` made) belongs to."""
        if len(self.bases) == 1:
            return self.bases[0] + "floor"
        return rkey[: rkey.index("}:", len(self.prefix)) + 2] + "floor"

    def is_record(self, rkey: str) -> bool:
        """True if ``rkey`` (a key found by a scan of the prefix) is a record of this layout."""
        if len(self.bases) == 1:
            return rkey.startswith(self.prefix + "k:")
        end = rkey.find("}:", len(self.prefix))
        return end > 0 and rkey[: end + 2] in self._base_set and rkey.startswith("k:", end + 2)


def _text(key: bytes | str) -> str:
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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


def _check_stamp(stamp: object) -> int:
    if not _is_int(stamp):
        raise TypeError(f"stamp must be an int, got {type(stamp).__name__}")
    assert isinstance(stamp, int)
    return stamp


def _check_tags(tags: object) -> tuple[str, ...]:
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Sequence):
        raise TypeError(f"tags must be a sequence of str (not a single string), got {type(tags).__name__}")
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"every tag must be a str, got {type(tag).__name__}")
    return tuple(tags)


# Lua helpers of every script: a stamp is exactly 26 digits (anything else is not a stamp: never
# trusted, never compared), and Lua compares its two parts as numbers (both below 2**53).
_STAMP_LUA = """
local function stamp(s)
  if string.len(s) ~= 26 or string.find(s, '%D') then return nil end
  return tonumber(string.sub(s, 1, 16)), tonumber(string.sub(s, 17, 26))
end
local function newer(h1, n1, h2, n2) return h1 > h2 or (h1 == h2 and n1 > n2) end
local function store(key, record, px)
  if px == '0' then return redis.call('SET', key, record) end  -- FOREVER: no expiry
  return redis.call('SET', key, record, 'PX', px)
end
local function record_stamp(header)
  local kind = string.sub(header, 1, 1)
  if kind ~= 'V' and kind ~= 'T' then return nil end
  local h, n = stamp(string.sub(header, 2, 27))
  return h, n, kind
end
"""

# KEYS: the record's key, the namespace floor; ARGV: record, px ms (0: none), hlc (16 digits), node (10 digits),
# mode.
# Stores the record only if its stamp is newer than the floor and than the record Redis holds (what is not
# a record, foreign data, is overwritten). Returns -1 (older than the floor: a clear came after it),
# 0 (older than what Redis holds), 1 (stored; no live value was there), 2 (stored over a live value),
# 3 (this very write is there already: a replay; with mode "renew" it is stored again, with its new
# expiry: fail-safe keeps an old value fresh for a while, but never over a newer write).
_WRITE_BODY = """
local hlc, node = tonumber(ARGV[3]), tonumber(ARGV[4])
local fh, fn = nil, nil
local floor = redis.call('GET', KEYS[2])
if floor then fh, fn = stamp(floor) end
if fh and not newer(hlc, node, fh, fn) then return -1 end
local ch, cn, kind = record_stamp(redis.call('GETRANGE', KEYS[1], 0, 26))
if ch then
  if ch == hlc and cn == node then
    if ARGV[5] == 'renew' then store(KEYS[1], ARGV[1], ARGV[2]) end
    return 3
  end
  if not newer(hlc, node, ch, cn) then return 0 end
end
store(KEYS[1], ARGV[1], ARGV[2])
if ch and kind == 'V' and (not fh or newer(ch, cn, fh, fn)) then return 2 end
return 1
"""
_WRITE = _STAMP_LUA + _WRITE_BODY

# The publication of a write on the invalidation stream (KEYS stream; ARGV maxlen, origin, op, key, stamp):
# the new entry's seq follows the newest entry that carries one, counting every entry after it (entries
# written by others than mtcache take a number too).
PUBLISH_LUA = """
local function seq_of(entry)
  local f = entry[2]
  for j = 1, #f, 2 do
    if f[j] == 'seq' then return tonumber(f[j + 1]) end
  end
  return nil
end
local function publish(stream, maxlen, origin, op, key, stamp)
  local seq = 1
  -- the newest entry first (almost always one of ours); further back only past foreign entries
  local recent = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  local found = recent[1] and seq_of(recent[1])
  if found then
    seq = found + 1
  elseif recent[1] then
    recent = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 16)
    for i, entry in ipairs(recent) do
      found = seq_of(entry)
      if found then seq = found + i break end
    end
  end
  return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
                    'seq', seq, 'origin', origin, 'op', op, 'key', key, 'stamp', stamp)
end
"""

# _WRITE and the write's stream entry in one call (KEYS: the record's key, the floor, the stream; ARGV: as
# _WRITE, then the entry's maxlen, origin, op, key, stamp): half the script calls of a write.
_WRITE_AND_PUBLISH = _STAMP_LUA + PUBLISH_LUA + "local function write()\n" + _WRITE_BODY + """end
local code = write()
publish(KEYS[3], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
return code
"""

# KEYS: the namespace floor; ARGV: a stamp (26 digits). Raises the floor to it; 1 if it moved.
_RAISE_FLOOR = _STAMP_LUA + """
local nh, nn = stamp(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if cur then
  local h, n = stamp(cur)
  if h and not newer(nh, nn, h, n) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# KEYS: a record's key; ARGV: the floor (26 digits). Removes the record unless it is newer than the floor
# (what is not a record goes too); 1 if a value was removed.
_PURGE = _STAMP_LUA + """
local fh, fn = stamp(ARGV[1])
local header = redis.call('GETRANGE', KEYS[1], 0, 26)
if header == '' then return 0 end
local h, n, kind = record_stamp(header)
if h and newer(h, n, fh, fn) then return 0 end
redis.call('UNLINK', KEYS[1])
if h and kind == 'V' then return 1 end
return 0
"""


# The envelope of a record starts with its array header, its format version (2) and its logical expiry as a
# msgpack uint64 (0xcf and 8 bytes: every expiry is past 2**32 ms): bytes 28-38 of the record. Lua reads the
# expiry from there (exact to the millisecond up to 2**53, past every real date; FOREVER_MS is 2**61).
_ENVELOPE_LUA = """
local function expiry_of(rec)
  local a, b, c = string.byte(rec, 28, 30)
  if a ~= 0x95 or b ~= 0x02 or c ~= 0xcf or string.len(rec) < 38 then return nil end
  local e = 0
  for i = 31, 38 do e = e * 256 + string.byte(rec, i) end
  return e
end
local function floor_of(key)
  local floor = redis.call('GET', key)
  if floor then return stamp(floor) end
  return nil, nil
end
-- a live value: a V record newer than the floor whose logical expiry (nil: unreadable, taken as live) is ahead
local function live(rec, kind, h, n, fh, fn, now)
  if kind ~= 'V' or (fh and not newer(h, n, fh, fn)) then return false end
  local e = expiry_of(rec)
  return e == nil or e > now
end
"""

# KEYS: the record's key, the namespace floor; ARGV: record, px ms (0: none), hlc, node, now (epoch ms).
# ADD: stores the record only if no live value is there (and its stamp is newer than the floor and than
# the record there). Returns 1 (stored), 0 (a live value, or a newer record, is there), -1 (below the floor).
_ADD = _STAMP_LUA + _ENVELOPE_LUA + """
local hlc, node, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fh, fn = floor_of(KEYS[2])
if fh and not newer(hlc, node, fh, fn) then return -1 end
local head = redis.call('GETRANGE', KEYS[1], 0, 37)
local ch, cn, kind = record_stamp(head)
if ch then
  if not newer(hlc, node, ch, cn) or live(head, kind, ch, cn, fh, fn, now) then return 0 end
end
store(KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: the record's key, the namespace floor; ARGV: delta, hlc, node, now (epoch ms), the stamp's 26 digits.
# INCR: adds delta to the live value, which must be a msgpack integer (a missing or dead one counts from 0,
# and the new record gets no expiry; a live one keeps its expiry, tags and physical TTL). Lua numbers are
# doubles: the counter must stay within +-2**53. Returns {1, value (decimal text), pttl (-1: none)},
# {0, stamp digits} (a record as new as this stamp is there: take a newer stamp and try again),
# {-1, floor digits} (likewise for the floor), {-2} (the value is not an integer), {-3} (out of range).
_INCR = _STAMP_LUA + _ENVELOPE_LUA + """
local delta, hlc, node, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local limit = 9007199254740992
local fh, fn = floor_of(KEYS[2])
if fh and not newer(hlc, node, fh, fn) then return {-1, redis.call('GET', KEYS[2])} end
local n, expiry, rest, pttl = 0, nil, nil, -1
local rec = redis.call('GET', KEYS[1])
if rec then
  local ch, cn, kind = record_stamp(rec)
  if ch and not newer(hlc, node, ch, cn) then return {0, string.sub(rec, 2, 27)} end
  if ch and live(rec, kind, ch, cn, fh, fn, now) then
    if not expiry_of(rec) then return {-2} end
    local t, len, off = string.byte(rec, 39), 0, 0
    if t == 0xc4 then len, off = string.byte(rec, 40), 41
    elseif t == 0xc5 then len, off = string.byte(rec, 40) * 256 + string.byte(rec, 41), 42
    else return {-2} end
    local b = string.byte(rec, off)
    if not b or len < 1 or not (b <= 0x7f or b >= 0xe0 or (b >= 0xcc and b <= 0xd3)) then return {-2} end
    n = cmsgpack.unpack(string.sub(rec, off, off + len - 1))
    if type(n) ~= 'number' or n > limit or n < -limit then return {-3} end
    expiry, rest, pttl = string.sub(rec, 30, 38), string.sub(rec, off + len), redis.call('PTTL', KEYS[1])
  end
end
local m = n + delta
if m > limit or m < -limit then return {-3} end
local packed = cmsgpack.pack(m)
if not expiry then
  expiry, rest = string.char(0xcf, 0x20, 0, 0, 0, 0, 0, 0, 0), string.char(0x90, 0x00)  -- FOREVER_MS, no tags
end
local record = 'V' .. ARGV[5] .. string.char(0x95, 0x02) .. expiry .. string.char(0xc4, string.len(packed))
  .. packed .. rest
if pttl > 0 then redis.call('SET', KEYS[1], record, 'PX', pttl) else redis.call('SET', KEYS[1], record) end
return {1, string.format('%.0f', m), pttl}
"""

# KEYS: the record's key, the namespace floor; ARGV: px ms (0: none), the new logical expiry (8 bytes, big
# endian), now (epoch ms). TOUCH: gives a live value a new expiry (same stamp: the same write, kept longer).
# Returns 1 if there was one, else 0.
_TOUCH = _STAMP_LUA + _ENVELOPE_LUA + """
local now = tonumber(ARGV[3])
local fh, fn = floor_of(KEYS[2])
local rec = redis.call('GET', KEYS[1])
if not rec then return 0 end
local ch, cn, kind = record_stamp(rec)
if not ch or not live(rec, kind, ch, cn, fh, fn, now) or not expiry_of(rec) then return 0 end
store(KEYS[1], string.sub(rec, 1, 30) .. ARGV[2] .. string.sub(rec, 39), ARGV[1])
return 1
"""


class _ClusterLane:
    """What a :class:`Lane` is, on a Redis Cluster: a batch goes as one non-transactional redis-py cluster
    pipeline, which sends each node its commands in one round trip (the nodes in parallel), follows
    ``MOVED`` and ``ASK`` and relearns the slot map after a failover. Scripts go as ``EVALSHA``, and those a
    node does not have cached go again as ``EVAL``. Batches take turns, in the order they come, so two
    writes of one key reach its node in the order they were queued. Each batch, its wait for its turn
    included, is bounded by ``bound`` seconds (``asyncio.timeout``: the cluster pipeline's own round trips
    cost far more than its timer)."""

    def __init__(self, redis: RedisCluster, bound: float) -> None:
        self._redis = redis
        self._lock = asyncio.Lock()
        self._bound = bound

    async def run(self, batch: Batch) -> list[Any]:
        """The replies of ``batch``, in order, within the lane's bound.

        :raises RedisError, OSError: Redis failed (an error reply: the first one, after every reply came).
        :raises asyncio.TimeoutError: the batch did not end within the bound.
        """
        async with _deadline(self._bound):
            async with self._lock:
                replies = await self._send([args if s is None else ("EVALSHA", _sha(s), n, *args)
                                            for s, n, args in batch.commands])
                missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if missing:
                    again = await self._send([("EVAL", batch.commands[i][0], batch.commands[i][1],
                                               *batch.commands[i][2]) for i in missing])
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
            error = first_error(replies)
            if error is not None:
                raise error
            return replies

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        if not commands:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    async def drop(self) -> None:
        """Nothing of its own to drop: the cluster client's connections are the tier's."""

    async def aclose(self) -> None:
        """Nothing of its own to close: the cluster client's connections are the tier's."""


def _lane(redis: AnyRedis, bound: float) -> Lane | _ClusterLane:
    """The lane for ``redis``, which bounds each batch by ``bound`` seconds: its callers need no deadline
    of their own."""
    return _ClusterLane(redis, bound) if isinstance(redis, RedisCluster) else Lane(redis, bound)


def nobody_waiting() -> bool:
    """The ``others_waiting`` of a coordinator that has not said otherwise: no request waits to start."""
    return False


#: What a read answered by a callback gets: the replies of its ``MGET`` (each key's data, then the floor's), or the
#: exception that failed its round trip.
ReadDone = Callable[[list[Any] | BaseException], None]


class _Reads:
    """Reads that share round trips: the keys asked in one loop turn, or while one ``MGET`` is on its way, go
    together in the next (the floor read once for all), on a connection of their own (a :class:`Lane`):
    workers that miss L1 at the same moment cost one round trip, not one each, and a read never waits behind a
    write batch. Each round trip is bounded by ``bound`` seconds; its failure is every waiting caller's. As
    writes are (see :mod:`mtcache.coordinator.writes`), reads are sent from loop callbacks: at the end of the
    loop turn they came in (a turn later while ``others_waiting()``), or when the round trip in flight is over;
    a read answered by a callback (:meth:`mget_soon`) costs no task. On a cluster, or while the lane is busy,
    a task sends them.

    On a cluster each key is read with its group's floor (``MGET record floor``, one slot), the keys of a
    node together in one round trip, and the newest of the floors read stands for the namespace floor."""

    def __init__(self, redis: AnyRedis, layout: Layout, bound: float) -> None:
        self._lane = _lane(redis, bound)
        self._layout = layout
        self._waiting: list[tuple[list[str], ReadDone]] = []
        #: the task sending the waiting reads when a callback cannot (see the class docstring)
        self._task: asyncio.Task[None] | None = None
        #: a round trip sent from a callback is in flight
        self._in_flight = False
        #: a callback is due at the end of this loop turn to send the waiting reads
        self._scheduled = False
        #: whether requests that came in this loop turn have yet to start: a read then waits for the round
        #: trip that carries theirs too (see ``CacheEngine.share_round_trips_while``)
        self.others_waiting: Callable[[], bool] = nobody_waiting
        #: round trips made (each carried the reads that were waiting)
        self.batches = 0

    async def mget(self, rkeys: list[str]) -> list[Any]:
        """What ``MGET *rkeys floor`` answers: each key's data, then the floor's."""
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.mget_soon(rkeys, settles(fut))
        return await fut

    def mget_soon(self, rkeys: list[str], done: ReadDone) -> None:
        """What :meth:`mget` answers, handed to ``done``: once, and never from this call."""
        self._waiting.append((rkeys, done))
        self._wake()

    def _wake(self) -> None:
        if (self._scheduled or self._in_flight or not self._waiting
                or (self._task is not None and not self._task.done())):
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Send the waiting reads: from this callback if the lane is idle, else from the task."""
        self._scheduled = False
        if not self._waiting or self._in_flight or (self._task is not None and not self._task.done()):
            return
        if self.others_waiting():  # requests of this turn yet to start: a turn more, for their reads
            self._wake()
            return
        lane = self._lane
        if self._layout.sharded or not isinstance(lane, Lane) or not lane.ready():
            self._task = task = asyncio.get_running_loop().create_task(self._step())
            task.add_done_callback(lambda _: self._wake())
            return
        waiting, self._waiting = self._waiting, []
        self.batches += 1
        batch = Batch()
        batch.command("MGET", *[key for keys, _ in waiting for key in keys], self._layout.floors()[0])
        self._in_flight = True

        def answered(outcome: list[Any] | BaseException) -> None:
            self._in_flight = False
            if not isinstance(outcome, BaseException):
                outcome = outcome[0] if isinstance(outcome[0], Exception) else list(outcome[0])
            self._answer(waiting, outcome)
            self._wake()

        lane.submit(batch, answered)

    async def _step(self) -> None:
        """The task's part: read every waiting caller's keys in one round trip and answer each caller, whatever
        failed (a cancellation of the round trip is re-raised)."""
        waiting, self._waiting = self._waiting, []
        self.batches += 1
        try:
            replies = await self._read([key for keys, _ in waiting for key in keys])
        except BaseException as exc:  # every waiting caller gets an answer, whatever failed
            self._answer(waiting, exc if isinstance(exc, Exception) else L2Error("the coordinator is stopping"))
            if not isinstance(exc, Exception):
                raise
            return
        self._answer(waiting, replies)

    async def _read(self, rkeys: list[str]) -> list[Any]:
        """``MGET *rkeys floor`` on one Redis; on a cluster, the same answer from one ``MGET record floor``
        per key."""
        batch = Batch()
        layout = self._layout
        if not layout.sharded:
            batch.command("MGET", *rkeys, layout.floors()[0])
            return list((await self._lane.run(batch))[0])
        for rkey in rkeys:
            batch.command("MGET", rkey, layout.floor_of_record(rkey))
        pairs = await self._lane.run(batch)
        floors = [floor for _, floor in pairs if floor is not None]
        return [data for data, _ in pairs] + [max(floors) if floors else None]

    @staticmethod
    def _answer(waiting: list[tuple[list[str], ReadDone]], outcome: list[Any] | BaseException) -> None:
        """Hand each waiting read its keys' part of ``outcome`` (with the floor), or the exception."""
        start = 0
        for keys, done in waiting:
            try:
                if isinstance(outcome, BaseException):
                    done(outcome)
                else:
                    done([*outcome[start : start + len(keys)], outcome[-1]])
            except Exception:  # a bug there must not leave the other readers unanswered
                _log.exception("answering an L2 read failed")
            start += len(keys)

    async def drop_connection(self) -> None:
        """Close the connection (a read on it is sent again on a new one)."""
        await self._lane.drop()

    async def aclose(self) -> None:
        """Stop reading (waiting callers fail) and close the connection."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        waiting, self._waiting = self._waiting, []
        self._answer(waiting, L2Error("the coordinator is stopping"))
        await self._lane.aclose()


class WriteResult:
    """What :data:`_WRITE` answered."""

    BELOW_FLOOR = -1
    OLDER = 0
    STORED = 1
    REPLACED = 2
    SAME = 3


class L2Tier:
    """Stamped records in Redis under one namespace's prefix.

    Every write is one Lua script that stores a record only if its stamp is newer than what Redis holds for the
    key and than the namespace *floor* (the stamp of the last ``clear``), so no write, replayed or late, ever
    replaces a newer one, from any host. A delete writes a tombstone (see :class:`Envelope`).

    Builds its client with ``redis.asyncio.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)``
    (a :class:`~redis.asyncio.cluster.RedisCluster` for a ``redis+cluster://`` URL, whose keys then form groups,
    see :class:`Layout`) unless ``client`` is given (the tier then owns it and closes it in :meth:`aclose`).
    The client retries a command once, at once, only after a connection error (a pooled connection that Redis
    dropped while idle, as in a Redis restart); timeouts are not retried, so a call against a dead or stopped
    Redis fails within about ``2 * timeout``.

    :raises TypeError: an argument has the wrong type.
    :raises ValueError: ``url`` is not a Redis URL, ``namespace`` is invalid (see :func:`key_prefix`) or
        ``timeout`` is not a positive finite number.
    """

    prefix: str
    redis: AnyRedis

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        timeout: float = 1.0,
        client: AnyRedis | None = None,
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
                client = async_client(
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
        elif not isinstance(client, (Redis, RedisCluster)):
            raise TypeError(f"client must be a redis.asyncio.Redis or RedisCluster, got {type(client).__name__}")
        self.redis = client
        #: where the namespace's keys live (one group, or :data:`CLUSTER_GROUPS` on a cluster)
        self.layout = Layout(self.prefix, namespace, CLUSTER_GROUPS if isinstance(client, RedisCluster) else 1)
        self._bound = 2 * timeout
        self._lane = _lane(client, self._bound)
        self._reads = _Reads(client, self.layout, self._bound)
        #: the namespace floor as last read: records with an older stamp are dead
        self.floor = 0
        # clear() removes records only: the invalidation stream, the floor and leases under the same
        # prefix must survive it (on a cluster the scan finds every key under the prefix, and only records
        # are purged)
        self._match = _GLOB_SPECIAL.sub(r"\\\1", self.prefix) + ("*" if self.layout.sharded else "k:*")
        self._gets = self._hits = self._misses = self._sets = self._errors = self._corrupt = 0
        #: why the last ping failed (None after a ping that succeeded)
        self.last_failure: RedisFailure | None = None
        #: deletions of malformed records found by reads answered by a callback
        self._cleanups: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"L2Tier(url={self._url!r}, prefix={self.prefix!r})"

    @property
    def floor_key(self) -> str:
        """The namespace floor's key (the first group's copy on a cluster)."""
        return self.layout.floors()[0]

    def key(self, key: str) -> str:
        """The Redis key that holds the record of ``key``: ``prefix + "k:" + key`` on one Redis (see
        :class:`Layout` for a cluster).

        :raises TypeError: ``key`` is not a str.
        :raises ValueError: ``key`` is empty.
        """
        return self.layout.record(_check_key(key))

    # -- reads ------------------------------------------------------------------

    async def get(self, key: str) -> Envelope | None:
        """The record of ``key`` (a value or a tombstone), or None when there is none or it is older than the
        namespace floor. One round trip; a malformed record counts as absent and is deleted.

        :raises TypeError, ValueError: ``key`` is invalid.
        :raises L2Error: Redis failed.
        """
        return (await self._read("get", [key]))[0]

    async def mget(self, keys: Sequence[str]) -> list[Envelope | None]:
        """What :meth:`get` gives, for each of ``keys`` in order, in one round trip.

        :raises TypeError, ValueError: a key is invalid.
        :raises L2Error: Redis failed.
        """
        if isinstance(keys, str) or not isinstance(keys, Sequence):
            raise TypeError(f"keys must be a sequence of str, got {type(keys).__name__}")
        return await self._read("mget", keys)

    async def _read(self, op: str, keys: Sequence[str]) -> list[Envelope | None]:
        rkeys = [self.key(k) for k in keys]
        if not rkeys:
            return []
        replies: list[Any] = await self._run(op, self._reads.mget(rkeys))
        found, corrupt = self._found(rkeys, replies)
        if corrupt:
            # A cache may always drop an entry: at worst a value written since the read is recomputed.
            await self._run(op, self.redis.unlink(*dict.fromkeys(corrupt)))
        return found

    def get_soon(self, key: str, done: Callable[[Envelope | L2Error | None], None]) -> None:
        """What :meth:`get` answers (or the :class:`L2Error` it would raise), handed to ``done`` once, never from
        this call: the read goes with the others of this loop turn, and costs its caller no task. A malformed
        record is deleted in the background.

        :raises TypeError, ValueError: ``key`` is invalid.
        """
        rkey = self.key(key)

        def answered(outcome: list[Any] | BaseException) -> None:
            if isinstance(outcome, BaseException):
                done(self._failure("get", outcome))
                return
            found, corrupt = self._found([rkey], outcome)
            if corrupt:
                task = asyncio.get_running_loop().create_task(self._unlink_quietly(corrupt))
                self._cleanups.add(task)
                task.add_done_callback(self._cleanups.discard)
            done(found[0])

        self._reads.mget_soon([rkey], answered)

    async def _unlink_quietly(self, rkeys: list[str]) -> None:
        with contextlib.suppress(L2Error):
            await self._run("get", self.redis.unlink(*rkeys))

    def _found(self, rkeys: list[str], replies: list[Any]) -> tuple[list[Envelope | None], list[str]]:
        """The records an ``MGET *rkeys floor`` answered (counted), and the keys of the malformed ones."""
        *datas, floor = replies
        self._note_floor(floor)
        found: list[Envelope | None] = []
        corrupt: list[str] = []
        for rkey, data in zip(rkeys, datas, strict=True):
            found.append(self._entry(rkey, data, corrupt))
        self._gets += len(found)
        hits = sum(entry is not None and not entry.tombstone for entry in found)
        self._hits += hits
        self._misses += len(found) - hits
        return found, corrupt

    def _note_floor(self, data: bytes | None) -> None:
        if data is None:
            return
        try:
            self.floor = max(self.floor, parse_stamp(data))
        except ValueError:
            _log.warning("ignoring the malformed namespace floor %r on %s", data[:40], self._url)

    def _entry(self, rkey: str, data: bytes | None, corrupt: list[str]) -> Envelope | None:
        if data is None:
            return None
        try:
            env = decode_envelope(data)
        except ValueError as exc:
            self._corrupt += 1
            corrupt.append(rkey)
            _log.warning("dropping the malformed L2 entry %r on %s: %s", rkey, self._url, exc)
            return None
        return env if env.stamp > self.floor else None

    # -- writes -----------------------------------------------------------------

    def record(
        self, value: bytes | None, ttl: float, stamp: int, tags: Sequence[str] = (), stale_for: float = 0.0
    ) -> tuple[bytes, int]:
        """The record of a write (``value`` None: a tombstone) and its physical TTL in ms: ``ttl`` plus
        ``stale_for``, the seconds its value may still be served after ``ttl`` when its source fails; for
        ``ttl`` FOREVER (``math.inf``), a logical expiry of :data:`FOREVER_MS` and a physical TTL of 0 (none).

        :raises TypeError, ValueError: an argument is invalid (``value`` must be bytes, ``ttl`` positive,
            ``stale_for`` non-negative).
        """
        return self._record(value, ttl, format_stamp(_check_stamp(stamp)), tags, stale_for)

    @staticmethod
    def _record(
        value: bytes | None, ttl: float, digits: bytes, tags: Sequence[str], stale_for: float
    ) -> tuple[bytes, int]:
        """:meth:`record` of a write whose stamp is ``digits`` (see :func:`format_stamp`)."""
        if value is not None and not isinstance(value, bytes):
            raise TypeError(f"value must be bytes (the encoded value), got {type(value).__name__}")
        if ttl == math.inf:
            return _pack_record(value is None, digits, FOREVER_MS, value or b"", _check_tags(tags), 0), 0
        ttl_ms = max(1, round(_check_seconds("ttl", ttl) * 1000))
        stale_ms = round(stale_for * 1000) if stale_for else 0
        if stale_ms < 0:
            raise ValueError(f"stale_for must not be negative, got {stale_for!r}")
        expiry_ms = time.time_ns() // 1_000_000 + ttl_ms
        if expiry_ms + stale_ms >= _MAX_EXPIRY_MS:
            raise ValueError(f"ttl {ttl!r} s is too long")
        if expiry_ms < 0:
            raise ValueError(f"the expiry of ttl {ttl!r} s falls before 1970: this host's clock is wrong")
        return (_pack_record(value is None, digits, expiry_ms, value or b"", _check_tags(tags),
                             expiry_ms + stale_ms if stale_ms else 0), ttl_ms + stale_ms)

    def queue_write(
        self, pipe: Batch, key: str, value: bytes | None, ttl: float, stamp: int, tags: Sequence[str] = (),
        stale_for: float = 0.0, *, renew: bool = False, entry: tuple[str, Sequence[Any]] | None = None,
    ) -> None:
        """Queue the conditional write of ``key`` (``value`` None: a tombstone) into ``pipe``; its reply is a
        :class:`WriteResult` code. ``stale_for``: see :meth:`record`. With ``renew``, the write (its value and
        stamp already in Redis) is stored again with this new expiry if it is still the newest there. With
        ``entry`` (a stream and its entry's arguments, see ``InvalidationStream.entry``), the same call
        publishes the write on the invalidation stream, whatever the write's outcome."""
        rkey = self.key(key)
        floor_key = self.layout.floor(key)
        digits = format_stamp(_check_stamp(stamp))
        data, ttl_ms = self._record(value, ttl, digits, tags, stale_for)
        args = (data, ttl_ms, digits[:16], digits[16:], "renew" if renew else "")
        if entry is None:
            pipe.eval(_WRITE, 2, rkey, floor_key, *args)
        else:
            stream, fields = entry
            pipe.eval(_WRITE_AND_PUBLISH, 3, rkey, floor_key, stream, *args, *fields)
        self._sets += 1

    async def write(
        self, key: str, value: bytes | None, ttl: float, stamp: int, tags: Sequence[str] = ()
    ) -> int:
        """Write ``key`` conditionally (see :meth:`queue_write`) in one round trip; the :class:`WriteResult`.

        :raises TypeError, ValueError: an argument is invalid.
        :raises L2Error: Redis failed; the key may or may not have been written.
        """
        replies = await self.pipeline("write", lambda pipe: self.queue_write(pipe, key, value, ttl, stamp, tags))
        return int(replies[0])

    def queue_add(
        self, pipe: Batch, key: str, value: bytes, ttl: float, stamp: int, tags: Sequence[str] = ()
    ) -> None:
        """Queue the write of ``key`` only if it holds no live value (see :data:`_ADD`); its reply is 1 if
        stored, 0 if not, -1 if ``stamp`` is older than the namespace floor.

        :raises TypeError, ValueError: an argument is invalid.
        """
        data, ttl_ms = self.record(value, ttl, stamp, tags)
        digits = format_stamp(stamp)
        pipe.eval(_ADD, 2, self.key(key), self.layout.floor(key), data, ttl_ms, digits[:16], digits[16:], _now_ms())

    def queue_incr(self, pipe: Batch, key: str, delta: int, stamp: int) -> None:
        """Queue the addition of ``delta`` to the integer value of ``key`` (see :data:`_INCR` for the reply).

        :raises TypeError, ValueError: an argument is invalid.
        """
        digits = format_stamp(_check_stamp(stamp))
        pipe.eval(_INCR, 2, self.key(key), self.layout.floor(key), int(delta), digits[:16], digits[16:], _now_ms(),
                  digits)

    def queue_touch(self, pipe: Batch, key: str, ttl: float) -> None:
        """Queue giving the live value of ``key`` a new expiry ``ttl`` from now (FOREVER: none); its reply is
        1 if there was one, else 0.

        :raises TypeError, ValueError: ``ttl`` is invalid.
        """
        now = _now_ms()
        if ttl == math.inf:
            expiry, px = FOREVER_MS, 0
        else:
            px = max(1, round(_check_seconds("ttl", ttl) * 1000))
            expiry = now + px
        pipe.eval(_TOUCH, 2, self.key(key), self.layout.floor(key), px, expiry.to_bytes(8, "big"), now)

    def tag_key(self, tag: str) -> str:
        """The Redis key holding the stamp of the last invalidation of ``tag``."""
        return f"{self.prefix}tag:{tag}"

    def queue_raise_tag(self, pipe: Batch, tag: str, stamp: int) -> None:
        """Queue raising the invalidation stamp of ``tag`` to ``stamp`` (never lowered; no expiry).

        :raises TypeError, ValueError: ``stamp`` is not a stamp.
        """
        pipe.eval(_RAISE_FLOOR, 1, self.tag_key(tag), format_stamp(_check_stamp(stamp)))

    async def tag_stamps(self, tags: Sequence[str]) -> dict[str, int]:
        """The invalidation stamp of each of ``tags`` (0: never invalidated, or unreadable), in one round trip.

        :raises L2Error: Redis failed.
        """
        tag_keys = [self.tag_key(tag) for tag in tags]
        # each tag's key is in a slot of its own on a cluster: one GET per key, a node's together
        redis = self.redis
        read = redis.mget_nonatomic(tag_keys) if isinstance(redis, RedisCluster) else redis.mget(tag_keys)
        datas: list[Any] = await self._run("tags", read)
        out: dict[str, int] = {}
        for tag, data in zip(tags, datas, strict=True):
            try:
                out[tag] = parse_stamp(data) if data is not None else 0
            except ValueError:
                out[tag] = 0
        return out

    def queue_raise_floor(self, pipe: Batch, stamp: int) -> None:
        """Queue the move of the namespace floor up to ``stamp`` (a clear): every record older is dead.

        :raises TypeError, ValueError: ``stamp`` is not a stamp.
        """
        digits = format_stamp(_check_stamp(stamp))
        for floor_key in self.layout.floors():
            pipe.eval(_RAISE_FLOOR, 1, floor_key, digits)

    async def pipeline(self, op: str, build: Callable[[Batch], None]) -> list[Any]:
        """Run the commands ``build(batch)`` queues in one non-transactional round trip on the tier's own
        connection (see :class:`Lane`), in the order calls come, under the deadline, failures translated
        into :class:`L2Error`."""
        batch = Batch()
        build(batch)
        return await self._run(op, self._lane.run(batch), bounded=True)

    def can_send_now(self) -> bool:
        """Whether :meth:`send_now` would send a batch at once: the tier's lane is idle on an open connection
        (not on a cluster, whose pipelines take their own round trips)."""
        lane = self._lane
        return isinstance(lane, Lane) and lane.ready()

    def send_now(self, op: str, build: Callable[[Batch], None], done: Callable[[list[Any] | L2Error], None]) -> None:
        """What :meth:`pipeline` does, from this call, without a task or a loop turn (:meth:`can_send_now` must be
        true): the commands ``build(batch)`` queues are written to Redis before this returns, and ``done`` gets
        their replies or the :class:`L2Error` of their failure, once, later.

        :raises TypeError, ValueError: ``build`` raised it (nothing was sent).
        """
        lane = self._lane
        assert isinstance(lane, Lane)
        batch = Batch()
        build(batch)

        def answered(outcome: Any) -> None:
            error = outcome if isinstance(outcome, BaseException) else first_error(outcome)
            done(outcome if error is None else self._failure(op, error))

        lane.submit(batch, answered)

    def share_reads_while(self, others_waiting: Callable[[], bool]) -> None:
        """A read that finds no round trip in flight sends its own at once, but not while
        ``others_waiting()``: then it waits a loop turn for the reads of the requests that came with it."""
        self._reads.others_waiting = others_waiting

    async def purge(self, floor: int) -> int:
        """Remove the records of this namespace older than ``floor`` (after a clear), by ``SCAN MATCH`` and a
        conditional delete per record, so a write that raced the clear and is newer survives. The number of
        values removed. Each round trip is bounded on its own.

        :raises TypeError, ValueError: ``floor`` is not a stamp.
        :raises L2Error: Redis failed; the records removed so far stay removed.
        """
        digits = format_stamp(_check_stamp(floor))
        removed = 0
        cursor = 0
        while True:
            cursor, batch = await self._scan(cursor)
            batch = [rkey for rkey in batch if self.layout.is_record(_text(rkey))]
            if batch:

                def build(pipe: Batch, batch: list[Any] = batch) -> None:
                    for rkey in batch:
                        pipe.eval(_PURGE, 1, rkey, digits)

                removed += sum(int(r) for r in await self.pipeline("clear", build))
            if not cursor:
                return removed

    async def _scan(self, cursor: Any) -> tuple[Any, list[Any]]:
        """One ``SCAN MATCH`` round trip over the namespace's keys, from ``cursor`` (0: the start): the next
        cursor (falsy at the end) and the keys found. On a cluster the cursor is one per master, and one step
        scans each master once."""
        redis = self.redis
        if not isinstance(redis, RedisCluster):
            cursor, keys = await self._run("clear", redis.scan(cursor, match=self._match, count=_SCAN_COUNT))
            return int(cursor), keys
        # redis-py's cluster SCAN answers a cursor per node: {node name: cursor}
        cursors: dict[str, Any] = {}
        found: list[Any] = []
        if not cursor:  # the first step scans every master
            reply: Any = await self._run("clear", redis.scan(match=self._match, count=_SCAN_COUNT))
            cursors, found = reply
        for name, at in cursor.items() if cursor else ():
            node = redis.get_node(node_name=name)
            if node is None:  # the node left (a failover): its replica's promotion is scanned by a later clear
                continue
            reply = await self._run("clear", redis.scan(at, match=self._match, count=_SCAN_COUNT, target_nodes=node))
            cursors[name] = reply[0][name]
            found.extend(reply[1])
        return {name: at for name, at in cursors.items() if int(at)}, found

    # -- the rest ---------------------------------------------------------------

    async def server_time_ms(self) -> tuple[float, float]:
        """Redis' clock and ours at the middle of one ``TIME`` round trip: ``(redis_ms, local_ms)``.

        :raises L2Error: Redis failed.
        """
        before = time.time()
        secs, usecs = await self._run("time", self.redis.time())
        after = time.time()
        return secs * 1000 + usecs / 1000, (before + after) * 500

    async def ping(self) -> bool:
        """True if Redis answers PING within the deadline; False on any Redis failure (why: in
        :attr:`last_failure`). Never raises one. A failed ping drops every pooled connection: after
        a reset they may all be dead, and the pool would hand them out one by one to the pings that
        follow."""
        try:
            async with _deadline(self._bound):
                answered = bool(await self.redis.ping())
        except _FAILURES as exc:
            self.last_failure = classify_failure(exc)
            with contextlib.suppress(*_FAILURES):
                await self._disconnect()
            return False
        self.last_failure = None
        return answered

    async def drop_connections(self) -> None:
        """Close every connection now, the lanes' too (a batch on one is sent again on a new one): the next
        calls connect again, to the master the sentinels name now (see :mod:`mtcache.coordinator.sentinel`)."""
        await self._lane.drop()
        await self._reads.drop_connection()
        await self._disconnect()

    async def _disconnect(self) -> None:
        """Drop every pooled connection (a cluster client also forgets its slot map and learns it again at
        its next call)."""
        if isinstance(self.redis, RedisCluster):
            await self.redis.aclose()
        else:
            await self.redis.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close the client and its connections. The tier cannot be used afterwards."""
        await self._lane.aclose()
        await self._reads.aclose()
        for task in list(self._cleanups):
            task.cancel()
        await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self.redis.aclose()

    def stats(self) -> dict[str, int]:
        """Counters since the tier was built: ``gets`` (keys asked for), ``hits`` (values found), ``misses``
        (absent, dead or tombstones), ``sets`` (writes sent), ``errors`` (calls that raised :class:`L2Error`) and
        ``corrupt`` (malformed records found and dropped, also counted as misses)."""
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

    async def _run(self, op: str, call: Awaitable[_T], *, bounded: bool = False) -> _T:
        """Await one Redis call under the deadline (``bounded``: the call keeps it itself, as a lane's batch
        does), translating its failure into :class:`L2Error`."""
        try:
            if bounded:
                return await call
            async with _deadline(self._bound):
                return await call
        except _CALL_FAILURES as exc:
            if isinstance(exc, RuntimeError):
                # redis-py does not drop a connection on this error: drop them all, or the pool
                # hands out the dead one again
                await self._disconnect()
            raise self._failure(op, exc) from exc

    def _failure(self, op: str, exc: BaseException) -> L2Error:
        """The :class:`L2Error` of a call ``op`` that failed with ``exc`` (counted)."""
        self._errors += 1
        if isinstance(exc, RedisError) or str(exc):
            detail = f"{type(exc).__name__}: {exc}"
        else:
            detail = f"no answer within {self._bound:g} s"
        error = L2Error(f"L2 {op} failed on {self._url}: {detail}")
        error.__cause__ = exc
        return error
