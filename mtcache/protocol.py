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
and PING only (the command-line tools). A coordinator that takes worker reports says
``"reports": true`` in the hello (an optional field: clients send REPORT, and STATS
with options, only to one that does).

Requests and their successful replies (``ttl`` in seconds, ``version`` the key's
version counter as read when the reply was made):

=========  ==============================================  ===========================================
op         args                                            reply payload
=========  ==============================================  ===========================================
GET        key                                             OK value version ttl / MISS version
SET        key value ttl tags                              OK version kept
DELETE     key                                             OK existed
CLEAR      —                                               OK removed
STATS      [options]                                       OK map
HEALTH     —                                               OK map
LEASE      key wait_seconds fail_safe soft                 OK value version ttl / GRANTED token version stale /
                                                           COMPUTE_ERROR type message stale / TIMEOUT stale
REFRESH    key version fail_safe                           OK value version ttl / GRANTED token version stale /
                                                           BUSY
FILL       key token value ttl stale_for store tags        OK version stored
FAIL       key token type message throttle                 OK
RELEASE    key token                                       OK
PING       —                                               OK
GET_MANY   [key, ...]                                      OK [[key, value, version, ttl], ...] (hits only)
SET_MANY   [[key, value, ttl, tags], ...]                  OK [[version, kept], ...] (in order)
DELETE_MANY [key, ...]                                     OK existed (how many)
ADD        key value ttl tags                              OK stored version
INCR       key delta                                       OK value version / REFUSED kind message
TOUCH      key ttl                                         OK touched
INVALIDATE_TAGS [tag, ...]                                 OK acknowledged (Redis has it)
SET_BEHIND key value ttl max_delay tags                    OK version kept
DELETE_BEHIND key max_delay                                OK existed (in L1)
REPORT     map                                             none (see :mod:`mtcache.fleet`)
=========  ==============================================  ===========================================

STATS ``options`` (a map, optional): ``workers`` true adds each reporting worker's
counters. REPORT carries a worker's own counters (near hits, mirror reads...) and gets
no reply; its arguments are not checked here but by :func:`mtcache.fleet.parse_report`,
and a coordinator ignores a report it cannot read rather than closing the connection.

A ``ttl`` is positive seconds, ``math.inf`` (``mtcache.FOREVER``: no expiry), or nil
(SET, FILL, ADD, TOUCH, SET_MANY: the call gave no TTL; the coordinator's L1 and L2
defaults). Batches hold 1 to :data:`MAX_BATCH` keys. ADD stores only if no live value
exists (in Redis, on every host; on this host only while Redis is unreachable). INCR
adds ``delta`` to a counter in Redis (a missing key counts from 0 and gets no expiry);
REFUSED with kind ``type`` (the value is not an integer), ``range`` (past +-2**53) or
``l2`` (Redis is unreachable: a counter is never kept on one host alone). TOUCH gives a
live value a new TTL. ``tags`` (a list of strings, see :func:`check_tags`; a trailing
``tags`` of SET, FILL, ADD or a SET_MANY item may be left out) ties an entry to tags that
INVALIDATE_TAGS kills on every host (see :mod:`mtcache.coordinator.tags`).

SET_BEHIND and DELETE_BEHIND (write-behind) are answered once L1, the mirror and the version
table hold the write; its L2 write and stream entry follow through the same ordered write
queue, held at most ``max_delay`` seconds to share a round trip with other writes.

``kept`` (SET) and ``stored`` (FILL) say whether the worker may keep a near copy
(not when a newer write from another host already replaced the value). RELEASE
gives a lease up without a value or an error (its holder was cancelled).

Fail-safe: ``fail_safe`` (LEASE, REFRESH) is how long past its TTL a value may
still serve the caller if the source fails; ``stale`` is such a value (bytes),
or nil. ``soft`` (LEASE, 0: none): with such a value at hand the caller waits at
most this long for another worker's computation (then TIMEOUT with the value).
``stale_for`` (FILL) keeps the filled value that long past its TTL.
``throttle`` (FAIL) > 0: the holder serves the stale value instead of the error,
and the coordinator makes it fresh again for that long (every waiter, worker and
host takes it, so a failing source is not asked again meanwhile). ``store``
false (FILL): hand the value to the waiters, keep it nowhere. REFRESH (eager
refresh) never waits: BUSY when someone already computes the key, OK with the
current value when it was refreshed meanwhile (its version moved since
``version``).

Any request may instead get ``ERROR kind message``. Clients check every reply
against these shapes (:func:`check_reply`): a coordinator's reply is not trusted.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack

from mtcache.errors import ProtocolError

__all__ = [
    "INSPECT",
    "INT64",
    "MAX_BATCH",
    "MAX_FRAME",
    "MAX_KEY_BYTES",
    "MAX_TAGS",
    "MAX_TAG_BYTES",
    "MAX_VALUE_LIMIT",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "Op",
    "Status",
    "check_key",
    "check_reply",
    "check_tags",
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
#: Most keys in one GET_MANY, SET_MANY or DELETE_MANY (clients split longer batches).
MAX_BATCH = 1000
#: Most tags on one entry, and the longest tag (UTF-8 bytes).
MAX_TAGS = 32
MAX_TAG_BYTES = 256
#: Room a request needs in its frame besides its value: the key, up to MAX_TAGS tags, the
#: numbers and msgpack's headers (about 10 KiB at most), with a margin.
FRAME_OVERHEAD = 64 * 1024
#: The largest encoded value a frame can carry: ``MTCACHE_MAX_VALUE_BYTES`` may not exceed it.
MAX_VALUE_LIMIT = MAX_FRAME - FRAME_OVERHEAD
#: Counters (INCR) stay within a signed 64-bit integer.
INT64 = (-(2**63), 2**63 - 1)

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
    REFRESH = 12
    GET_MANY = 13
    SET_MANY = 14
    DELETE_MANY = 15
    ADD = 16
    INCR = 17
    TOUCH = 18
    INVALIDATE_TAGS = 19
    REPORT = 20
    #: a set acknowledged once this host holds it; Redis follows within a delay (write_mode="behind")
    SET_BEHIND = 21
    DELETE_BEHIND = 22


class Status:
    """Response codes."""

    OK = 0
    MISS = 1
    ERROR = 2
    GRANTED = 3
    COMPUTE_ERROR = 4
    TIMEOUT = 5
    BUSY = 6
    #: the request was understood and refused: ``kind message`` (kind ``"type"``: the value is not
    #: what the op needs; ``"range"``: the result would leave the range; ``"l2"``: the op needs Redis)
    REFUSED = 7


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


def check_tags(tags: object) -> tuple[str, ...]:
    """``tags`` as a tuple if they are valid: at most :data:`MAX_TAGS` non-empty ``str`` of at most
    :data:`MAX_TAG_BYTES` UTF-8 bytes each.

    :raises TypeError: ``tags`` is a single string, not a list or tuple, or holds a non-str.
    :raises ValueError: too many tags, or one is empty, too long or not valid UTF-8.
    """
    if isinstance(tags, (str, bytes)) or not isinstance(tags, (list, tuple)):
        raise TypeError(f"tags must be a list or tuple of str (not a single string), got {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags per entry, got {len(tags)}")
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"every tag must be a str, not {type(tag).__name__}: {tag!r}")
        try:
            size = len(tag.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"tag {tag!r} is not valid UTF-8 text") from None
        if not 0 < size <= MAX_TAG_BYTES:
            raise ValueError(f"a tag must be 1 to {MAX_TAG_BYTES} UTF-8 bytes: {tag[:40]!r}")
    return tuple(tags)


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
    complete message. After it raises, the stream is unusable (close it).

    A reader that must not decode ahead of what it can handle (the coordinator, which
    stops taking requests from a peer that does not read its replies) uses
    :meth:`push` and :meth:`next_message` instead: the frames not yet taken stay in
    the buffer as bytes, and each one is checked against :attr:`max_frame` as it is
    reached (so a limit raised after the first frame applies to the second)."""

    __slots__ = ("_buf", "_max", "_pos")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._pos = 0  # start of the first frame not yet taken (push and next_message)

    @property
    def max_frame(self) -> int:
        """The largest frame accepted from now on (may be changed between frames)."""
        return self._max

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max = value

    def feed(self, data: bytes) -> list[Any]:
        """Add ``data``; return the messages completed by it (maybe none).

        :raises ProtocolError: a length prefix over the limit, or a body that is not
            one msgpack array.
        """
        buf = self._buf
        buf += data
        out: list[Any] = []
        pos = self._pos
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
            self._pos = 0
        return out

    def push(self, data: bytes) -> None:
        """Add ``data`` without decoding it; take messages with :meth:`next_message`."""
        buf = self._buf
        if self._pos:
            del buf[: self._pos]
            self._pos = 0
        buf += data

    def next_message(self) -> Any:
        """The next complete message, or None if the buffer holds no whole frame.

        :raises ProtocolError: the next frame's length prefix is over the limit (as
            soon as the prefix is there, before its body), or its body is not one
            msgpack array.
        """
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 4:
            return None
        (size,) = _HEADER.unpack_from(buf, pos)
        if size > self._max:
            raise ProtocolError(f"frame length {size:,} exceeds the limit of {self._max:,}")
        if avail - 4 < size:
            return None
        body = bytes(buf[pos + 4 : pos + 4 + size])
        if avail == 4 + size:
            buf.clear()
            self._pos = 0
        else:
            self._pos = pos + 4 + size
        try:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types on junk
            raise ProtocolError(f"undecodable frame: {exc}") from exc
        if not isinstance(msg, list) or len(msg) < 2:
            raise ProtocolError("a frame must hold a msgpack array of at least two items")
        return msg

    @property
    def pending(self) -> int:
        """Bytes received and not yet taken: with :meth:`feed`, those that do not yet
        form a whole frame."""
        return len(self._buf) - self._pos


def _num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# op -> (number of args after the request id, per-arg checks)
_SHAPES: dict[int, tuple[type | str, ...]] = {
    Op.HELLO: (int, str, int),
    Op.GET: ("key",),
    Op.SET: ("key", bytes, "ttl?", "tags"),
    Op.DELETE: ("key",),
    Op.CLEAR: (),
    Op.STATS: (),
    Op.HEALTH: (),
    Op.LEASE: ("key", "seconds", "seconds", "seconds"),
    Op.REFRESH: ("key", "version", "seconds"),
    Op.FILL: ("key", bytes, bytes, "ttl?", "seconds", bool, "tags"),
    Op.FAIL: ("key", bytes, str, str, "seconds"),
    Op.PING: (),
    Op.RELEASE: ("key", bytes),
    Op.GET_MANY: ("keys",),
    Op.SET_MANY: ("items",),
    Op.DELETE_MANY: ("keys",),
    Op.ADD: ("key", bytes, "ttl?", "tags"),
    Op.INCR: ("key", "int64"),
    Op.TOUCH: ("key", "ttl?"),
    Op.INVALIDATE_TAGS: ("tags",),
    Op.SET_BEHIND: ("key", bytes, "ttl?", "seconds", "tags"),
    Op.DELETE_BEHIND: ("key", "seconds"),
    Op.REPORT: (),  # not checked here (see validate_request)
}


_ITEM: tuple[type | str, ...] = ("key", bytes, "ttl?", "tags")


def _ttl_ok(x: object) -> bool:
    """A TTL: positive seconds below 1e12, or math.inf (FOREVER: no expiry)."""
    return _num(x) and (0 < x < 1e12 or x == math.inf)  # type: ignore[operator]


def _check_arg(i: int, op: int, want: type | str, arg: object) -> None:
    if want == "key":
        try:
            check_key(arg)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"argument {i} of op {op}: {exc}") from None
    elif want in ("ttl", "ttl?"):
        if not (_ttl_ok(arg) or (arg is None and want == "ttl?")):
            raise ProtocolError(f"argument {i} of op {op} must be a positive TTL, got {arg!r}")
    elif want == "seconds":
        if not _num(arg) or not 0 <= arg < 1e9:  # type: ignore[operator]
            raise ProtocolError(f"argument {i} of op {op} must be a non-negative duration, got {arg!r}")
    elif want == "version":
        if not isinstance(arg, int) or isinstance(arg, bool) or arg < 0:
            raise ProtocolError(f"argument {i} of op {op} must be a version counter, got {arg!r}")
    elif want == "int64":
        if not _int(arg) or not INT64[0] <= arg <= INT64[1]:  # type: ignore[operator]
            raise ProtocolError(f"argument {i} of op {op} must be a 64-bit integer, got {arg!r}")
    elif want in ("keys", "items"):
        if not isinstance(arg, list) or not 0 < len(arg) <= MAX_BATCH:
            raise ProtocolError(f"argument {i} of op {op} must be a list of 1 to {MAX_BATCH} entries")
        for entry in arg:
            if want == "keys":
                _check_arg(i, op, "key", entry)
            elif not isinstance(entry, list) or not len(_ITEM) - 1 <= len(entry) <= len(_ITEM):
                raise ProtocolError(f"argument {i} of op {op} must hold [key, value, ttl, tags] entries")
            else:
                if len(entry) < len(_ITEM):
                    entry.append([])  # tags left out: none
                for part, item in zip(_ITEM, entry, strict=True):
                    _check_arg(i, op, part, item)
    elif want == "tags":
        try:
            check_tags(arg)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"argument {i} of op {op}: {exc}") from None
    elif want is bool:
        if not isinstance(arg, bool):
            raise ProtocolError(f"argument {i} of op {op} must be a bool, got {type(arg).__name__}")
    elif isinstance(want, type) and (not isinstance(arg, want) or isinstance(arg, bool)):
        raise ProtocolError(f"argument {i} of op {op} must be {want.__name__}, got {type(arg).__name__}")


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
    if op == Op.REPORT:
        return op, rid, args  # a report the coordinator cannot read is ignored, not an error
    if op == Op.STATS and len(args) == 1 and isinstance(args[0], dict):
        return op, rid, args  # its options (unknown ones are ignored)
    if shape and shape[-1] == "tags" and len(args) == len(shape) - 1 and op != Op.INVALIDATE_TAGS:
        args = [*args, []]  # trailing tags may be left out: none
    if len(args) != len(shape):
        raise ProtocolError(f"op {op} takes {len(shape)} arguments, got {len(args)}")
    for i, (want, arg) in enumerate(zip(shape, args, strict=True)):
        _check_arg(i, op, want, arg)
    return op, rid, args


# -- replies, checked on the client side (a coordinator's reply is not trusted either) ------------------

_REPLY_SHAPES: dict[int, dict[int, tuple[type | str, ...]]] = {
    Op.HELLO: {Status.OK: (dict,)},
    Op.GET: {Status.OK: (bytes, "version", "seconds"), Status.MISS: ("version",)},
    Op.SET: {Status.OK: ("version", bool)},
    Op.DELETE: {Status.OK: (bool,)},
    Op.CLEAR: {Status.OK: ("count",)},
    Op.STATS: {Status.OK: (dict,)},
    Op.HEALTH: {Status.OK: (dict,)},
    Op.LEASE: {
        Status.OK: (bytes, "version", "seconds"),
        Status.GRANTED: (bytes, "version", "stale"),
        Status.COMPUTE_ERROR: (str, str, "stale"),
        Status.TIMEOUT: ("stale",),
    },
    Op.REFRESH: {
        Status.OK: (bytes, "version", "seconds"),
        Status.GRANTED: (bytes, "version", "stale"),
        Status.BUSY: (),
    },
    Op.FILL: {Status.OK: ("version", bool)},
    Op.FAIL: {Status.OK: ()},
    Op.RELEASE: {Status.OK: ()},
    Op.PING: {Status.OK: ()},
    Op.GET_MANY: {Status.OK: ("hits",)},
    Op.SET_MANY: {Status.OK: ("results",)},
    Op.DELETE_MANY: {Status.OK: ("count",)},
    Op.ADD: {Status.OK: (bool, "version")},
    Op.INCR: {Status.OK: ("int64", "version"), Status.REFUSED: (str, str)},
    Op.TOUCH: {Status.OK: (bool,)},
    Op.INVALIDATE_TAGS: {Status.OK: (bool,)},
    Op.SET_BEHIND: {Status.OK: ("version", bool)},
    Op.DELETE_BEHIND: {Status.OK: (bool,)},
    Op.REPORT: {},  # never answered: any reply to it is unexpected
}
_ERROR_SHAPE: tuple[type | str, ...] = (str, str)
_HIT: tuple[type | str, ...] = (bytes, "version", "seconds")
_HELLO_INFO = {"protocol": int, "pid": int, "namespace": str, "versions": str, "generation": int,
               "mirror_generation": int}
_HEALTH_INFO = {"coordinator": str, "redis": str, "mode": str}


def check_reply(op: int, reply: object) -> list[Any]:
    """Check a coordinator's reply to a request of ``op`` and return it: ``[request_id,
    status, *payload]`` of one of the shapes in the table at the top of this module.

    :raises ProtocolError: anything else (a hostile or broken coordinator).
    """
    if not isinstance(reply, list) or len(reply) < 2:
        raise ProtocolError(f"malformed reply to op {op}: {_shown(reply)}")
    status, payload = reply[1], reply[2:]
    shapes = _REPLY_SHAPES[op]
    shape = _ERROR_SHAPE if status == Status.ERROR else shapes.get(status) if _int(status) else None
    if shape is None or len(payload) != len(shape):
        raise ProtocolError(f"unexpected reply to op {op}: {_shown(reply)}")
    for want, item in zip(shape, payload, strict=True):
        if not _reply_item_ok(want, item):
            raise ProtocolError(f"unexpected reply to op {op}: {_shown(reply)}")
    if status == Status.OK and op in (Op.HELLO, Op.HEALTH):
        fields = _HELLO_INFO if op == Op.HELLO else _HEALTH_INFO
        info = payload[0]
        for name, kind in fields.items():
            if not isinstance(info.get(name), kind) or isinstance(info.get(name), bool):
                raise ProtocolError(f"the coordinator's {'hello' if op == Op.HELLO else 'health'} lacks {name!r}")
        if op == Op.HELLO and not isinstance(info.get("mirror"), (str, type(None))):
            raise ProtocolError("the coordinator's hello has a malformed mirror path")
    return reply


def _reply_item_ok(want: type | str, item: object) -> bool:
    if want in ("version", "count"):
        return _int(item) and item >= 0  # type: ignore[operator]
    if want == "seconds":
        return _num(item) and (0 <= item < 1e12 or item == math.inf)  # type: ignore[operator]
    if want == "int64":
        return _int(item) and INT64[0] <= item <= INT64[1]  # type: ignore[operator]
    if want == "hits":  # GET_MANY: [key, value, version, seconds] per key found
        return isinstance(item, list) and len(item) <= MAX_BATCH and all(
            isinstance(hit, list) and len(hit) == 4 and isinstance(hit[0], str)
            and all(_reply_item_ok(w, x) for w, x in zip(_HIT, hit[1:], strict=True))
            for hit in item)
    if want == "results":  # SET_MANY: [version, kept] per item, in order
        return isinstance(item, list) and len(item) <= MAX_BATCH and all(
            isinstance(r, list) and len(r) == 2 and _reply_item_ok("version", r[0]) and isinstance(r[1], bool)
            for r in item)
    if want == "stale":
        return item is None or isinstance(item, bytes)
    assert isinstance(want, type)
    return isinstance(item, want)


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _shown(reply: object) -> str:
    text = repr(reply)
    return text if len(text) <= 120 else text[:117] + "..."
