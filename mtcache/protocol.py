"""The coordinator wire protocol: bytes in, messages out. No I/O here.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.
Every message is a msgpack array.

* request:  ``[op, request_id, *args]``
* response: ``[request_id, status, *payload]``

The first request on a connection must be ``[HELLO, id, PROTOCOL_VERSION,
namespace, pid]``; the coordinator answers ``[id, OK, info]`` (``info`` is a map
with the protocol version, the coordinator's pid, the shared-memory name and
slot count) or ``[id, ERROR, "protocol", message]`` and closes the connection.
The namespace :data:`INSPECT` is accepted by any coordinator, for STATS, HEALTH
and PING only (the command-line tools).

Requests and their successful replies (``ttl`` in seconds, ``version`` the key's
version counter as read when the reply was made):

=========  ==============================================  ===========================================
op         args                                            reply payload
=========  ==============================================  ===========================================
GET        key                                             OK value version ttl / MISS version
SET        key value ttl                                   OK version kept
DELETE     key                                             OK existed
CLEAR      —                                               OK removed
STATS      —                                               OK map
HEALTH     —                                               OK map
LEASE      key wait_seconds                                OK value version ttl / GRANTED token version /
                                                           COMPUTE_ERROR type message / TIMEOUT
FILL       key token value ttl                             OK version stored
FAIL       key token type message                          OK
RELEASE    key token                                       OK
PING       —                                               OK
=========  ==============================================  ===========================================

``kept`` (SET) and ``stored`` (FILL) say whether the worker may keep a near copy
(not when a newer write from another host already replaced the value). RELEASE
gives a lease up without a value or an error (its holder was cancelled).

Any request may instead get ``ERROR kind message``.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from mtcache.errors import ProtocolError

__all__ = [
    "INSPECT",
    "MAX_FRAME",
    "MAX_KEY_BYTES",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "Op",
    "Status",
    "check_key",
    "encode_frame",
    "validate_request",
]

PROTOCOL_VERSION = 2
#: The hello namespace of a client that only inspects (any coordinator accepts it).
INSPECT = "*"
#: Largest frame either side accepts: an 8 MiB value plus generous room.
MAX_FRAME = 16 * 1024 * 1024
#: Longest key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024

_HEADER = struct.Struct(">I")


class Op:
    """Request codes."""

    HELLO = 0
    GET = 1
    SET = 2
    DELETE = 3
    CLEAR = 4
    STATS = 5
    HEALTH = 6
    LEASE = 7
    FILL = 8
    FAIL = 9
    PING = 10
    RELEASE = 11


class Status:
    """Response codes."""

    OK = 0
    MISS = 1
    ERROR = 2
    GRANTED = 3
    COMPUTE_ERROR = 4
    TIMEOUT = 5


def check_key(key: object) -> str:
    """Return ``key`` if it is a valid cache key: a non-empty ``str`` of at most
    :data:`MAX_KEY_BYTES` UTF-8 bytes.

    :raises TypeError: ``key`` is not a ``str``.
    :raises ValueError: ``key`` is empty, too long, or not encodable as UTF-8.
    """
    if not isinstance(key, str):
        raise TypeError(f"cache key must be a str, not {type(key).__name__}: {key!r}")
    if not key:
        raise ValueError("cache key must not be empty")
    try:
        n = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"cache key {key!r} is not valid UTF-8 text") from None
    if n > MAX_KEY_BYTES:
        raise ValueError(f"cache key is {n} bytes long; the limit is {MAX_KEY_BYTES}: {key[:40]!r}...")
    return key


def encode_frame(message: list[Any], *, max_frame: int = MAX_FRAME) -> bytes:
    """One frame holding ``message``.

    :raises ProtocolError: the encoded message is larger than ``max_frame``.
    """
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > max_frame:
        raise ProtocolError(f"frame of {len(body):,} bytes exceeds the limit of {max_frame:,}")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental frame decoder: :meth:`feed` bytes as they arrive, get back every
    complete message. After it raises, the stream is unusable (close it)."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[Any]:
        """Add ``data``; return the messages completed by it (maybe none).

        :raises ProtocolError: a length prefix over the limit, or a body that is not
            one msgpack array.
        """
        buf = self._buf
        buf += data
        out: list[Any] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if size > self._max:
                raise ProtocolError(f"frame length {size:,} exceeds the limit of {self._max:,}")
            if end - pos - 4 < size:
                break
            body = bytes(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
            try:
                msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
            except Exception as exc:  # msgpack raises several unrelated types on junk
                raise ProtocolError(f"undecodable frame: {exc}") from exc
            if not isinstance(msg, list) or len(msg) < 2:
                raise ProtocolError("a frame must hold a msgpack array of at least two items")
            out.append(msg)
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)


def _num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# op -> (number of args after the request id, per-arg checks)
_SHAPES: dict[int, tuple[type | str, ...]] = {
    Op.HELLO: (int, str, int),
    Op.GET: ("key",),
    Op.SET: ("key", bytes, "ttl"),
    Op.DELETE: ("key",),
    Op.CLEAR: (),
    Op.STATS: (),
    Op.HEALTH: (),
    Op.LEASE: ("key", "seconds"),
    Op.FILL: ("key", bytes, bytes, "ttl"),
    Op.FAIL: ("key", bytes, str, str),
    Op.PING: (),
    Op.RELEASE: ("key", bytes),
}


def validate_request(msg: list[Any]) -> tuple[int, int, list[Any]]:
    """Check a decoded request and split it into ``(op, request_id, args)``.

    :raises ProtocolError: unknown op, wrong arity, or an argument of the wrong type
        or out of range (a bad key, a non-positive TTL).
    """
    op, rid = msg[0], msg[1]
    if not isinstance(op, int) or isinstance(op, bool) or op not in _SHAPES:
        raise ProtocolError(f"unknown op {op!r}")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ProtocolError(f"request id must be an int, not {type(rid).__name__}")
    shape = _SHAPES[op]
    args = msg[2:]
    if len(args) != len(shape):
        raise ProtocolError(f"op {op} takes {len(shape)} arguments, got {len(args)}")
    for i, (want, arg) in enumerate(zip(shape, args, strict=True)):
        if want == "key":
            try:
                check_key(arg)
            except (TypeError, ValueError) as exc:
                raise ProtocolError(f"argument {i} of op {op}: {exc}") from None
        elif want == "ttl":
            if not _num(arg) or not 0 < arg < 1e12:
                raise ProtocolError(f"argument {i} of op {op} must be a positive TTL, got {arg!r}")
        elif want == "seconds":
            if not _num(arg) or not 0 <= arg < 1e9:
                raise ProtocolError(f"argument {i} of op {op} must be a non-negative duration, got {arg!r}")
        elif isinstance(want, type) and (not isinstance(arg, want) or isinstance(arg, bool)):
            raise ProtocolError(f"argument {i} of op {op} must be {want.__name__}, got {type(arg).__name__}")
    return op, rid, args
