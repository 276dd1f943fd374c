"""The wire protocol without I/O: frames, the incremental decoder, request validation."""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtcache.errors import ProtocolError
from mtcache.protocol import (
    MAX_FRAME,
    MAX_KEY_BYTES,
    PROTOCOL_VERSION,
    FrameDecoder,
    Op,
    Status,
    check_key,
    encode_frame,
    validate_request,
)

# -- strategies ---------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_map_keys = st.text(max_size=5) | st.integers(min_value=-(2**63), max_value=2**63 - 1)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_map_keys, inner, max_size=4),
    max_leaves=12,
)
#: what a frame may carry: a msgpack array of at least two items
_messages = st.lists(_values, min_size=2, max_size=6)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- frames -------------------------------------------------------------------


def test_frame_round_trip() -> None:
    msg = [Op.SET, 7, "key", b"\x00\xffvalue", 1.5]
    frame = encode_frame(msg)
    assert frame[:4] == struct.pack(">I", len(frame) - 4)
    decoder = FrameDecoder()
    assert decoder.feed(frame) == [msg]
    assert decoder.pending == 0


def test_reply_frames_round_trip_with_maps() -> None:
    msg = [3, Status.OK, {"protocol": PROTOCOL_VERSION, "versions": "/dev/shm/x.ver", "generation": 2**55}]
    assert FrameDecoder().feed(encode_frame(msg)) == [msg]


def test_str_and_bytes_stay_apart() -> None:
    [msg] = FrameDecoder().feed(encode_frame([1, 2, "text", b"bytes"]))
    assert type(msg[2]) is str
    assert type(msg[3]) is bytes


@settings(deadline=None)
@given(messages=st.lists(_messages, min_size=1, max_size=5))
def test_byte_by_byte_feeding_yields_the_same_messages(messages: list[list[Any]]) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    out: list[Any] = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
    assert out == messages
    assert decoder.pending == 0


@settings(deadline=None)
@given(messages=st.lists(_messages, min_size=1, max_size=8), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_chunked_feeding_yields_the_same_messages(messages: list[list[Any]], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    out: list[Any] = []
    for chunk in _chunks(stream, cuts):
        out.extend(decoder.feed(chunk))
    assert out == messages
    assert decoder.pending == 0


def test_partial_frame_is_pending_until_complete() -> None:
    frame = encode_frame([Op.PING, 1])
    decoder = FrameDecoder()
    assert decoder.feed(frame[:3]) == []
    assert decoder.pending == 3
    assert decoder.feed(frame[3:-1]) == []
    assert decoder.pending == len(frame) - 1
    assert decoder.feed(frame[-1:] + frame[:2]) == [[Op.PING, 1]]
    assert decoder.pending == 2


def test_oversized_length_prefix_raises_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=100)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder.feed(struct.pack(">I", 101))


def test_default_limit_rejects_a_prefix_just_over_max_frame() -> None:
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME + 1))


def test_prefix_at_the_limit_waits_for_the_body() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(struct.pack(">I", 100)) == []
    assert decoder.pending == 4


def test_largest_prefix_raises() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xc1", id="never-used-byte"),
        pytest.param(b"\x92\x01", id="truncated-array"),
        pytest.param(msgpack.packb([1, 2]) + b"\x01", id="trailing-bytes"),
        pytest.param(b"\x92\xa2\xff\xfe\x01", id="invalid-utf8-str"),
        pytest.param(b"", id="empty-body"),
    ],
)
def test_undecodable_body_raises(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(_frame(body))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"op": 1, "id": 2}, id="map"),
        pytest.param(5, id="int"),
        pytest.param("hello", id="str"),
        pytest.param(b"hello", id="bytes"),
        pytest.param(None, id="nil"),
        pytest.param([], id="empty-array"),
        pytest.param([Op.PING], id="one-item-array"),
    ],
)
def test_body_that_is_not_an_array_of_two_raises(value: object) -> None:
    with pytest.raises(ProtocolError, match="at least two items"):
        FrameDecoder().feed(_frame(msgpack.packb(value, use_bin_type=True)))


def test_a_bad_frame_after_a_good_one_raises() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame([Op.PING, 1]) + _frame(b"\xc1"))


@settings(deadline=None, max_examples=300)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_fuzz_arbitrary_bytes_yield_lists_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_frame=1024)
    try:
        for chunk in _chunks(data, cuts):
            for msg in decoder.feed(chunk):
                assert isinstance(msg, list)
                assert len(msg) >= 2
    except ProtocolError:
        pass


@settings(deadline=None, max_examples=300)
@given(body=st.binary(max_size=200))
def test_fuzz_arbitrary_bodies_yield_lists_or_protocol_error(body: bytes) -> None:
    # a valid length prefix, so the body really reaches the msgpack decoder
    try:
        out = FrameDecoder().feed(_frame(body))
    except ProtocolError:
        return
    assert len(out) == 1
    assert isinstance(out[0], list)
    assert len(out[0]) >= 2


@settings(deadline=None, max_examples=500)
@given(
    op=st.integers(min_value=-1, max_value=12) | _values,
    rid=st.integers(min_value=0, max_value=2**32) | _values,
    args=st.lists(_values | st.sampled_from(["k", b"v", 1, 0.5, 0, -1.0]), max_size=5),
)
def test_fuzz_validate_request_returns_or_raises_protocol_error(op: Any, rid: Any, args: list[Any]) -> None:
    msg = [op, rid, *args]
    try:
        op, rid, args = validate_request(msg)
    except ProtocolError:
        return
    assert (op, rid, args) == (msg[0], msg[1], msg[2:])


def test_encode_frame_rejects_a_message_over_max_frame() -> None:
    msg = [Op.SET, 1, "k", b"x" * 200, 1.0]
    size = len(encode_frame(msg)) - 4
    assert len(encode_frame(msg, max_frame=size)) == size + 4
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        encode_frame(msg, max_frame=size - 1)


def test_encode_frame_default_limit() -> None:
    with pytest.raises(ProtocolError):
        encode_frame([Op.SET, 1, "k", b"x" * MAX_FRAME, 1.0])


# -- check_key ------------------------------------------------------------------


def test_check_key_accepts_and_returns_the_key() -> None:
    assert check_key("k") == "k"
    long_ok = "é" * (MAX_KEY_BYTES // 2)
    assert check_key(long_ok) is long_ok


@pytest.mark.parametrize("key", [None, 1, b"k", ["k"]])
def test_check_key_rejects_non_str(key: object) -> None:
    with pytest.raises(TypeError, match="str"):
        check_key(key)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("k" * (MAX_KEY_BYTES + 1), id="too-long-ascii"),
        pytest.param("é" * (MAX_KEY_BYTES // 2 + 1), id="too-long-in-utf8-bytes"),
        pytest.param("\ud800", id="lone-surrogate"),
    ],
)
def test_check_key_rejects_bad_str(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)


# -- validate_request -------------------------------------------------------------

#: one well-formed request per op
GOOD: dict[int, list[Any]] = {
    Op.HELLO: [PROTOCOL_VERSION, "default", 1234],
    Op.GET: ["k"],
    Op.SET: ["k", b"v", 10.0, []],
    Op.DELETE: ["k"],
    Op.CLEAR: [],
    Op.STATS: [],
    Op.HEALTH: [],
    Op.LEASE: ["k", 2.5, 0, 0],
    Op.FILL: ["k", b"token", b"v", 10, 0.0, True, ["t"]],
    Op.FAIL: ["k", b"token", "ValueError", "boom", 0],
    Op.PING: [],
    Op.RELEASE: ["k", b"token"],
    Op.REFRESH: ["k", 3, 0.0],
    Op.GET_MANY: [["a", "b"]],
    Op.SET_MANY: [[["a", b"v", 10.0, []], ["b", b"w", None, ["t", "u"]]]],
    Op.DELETE_MANY: [["a"]],
    Op.ADD: ["k", b"v", None, []],
    Op.INCR: ["k", -5],
    Op.TOUCH: ["k", 60],
    Op.INVALIDATE_TAGS: [["users", "prices"]],
    Op.SET_BEHIND: ["k", b"v", 10.0, 0.005, ["t"]],
    Op.DELETE_BEHIND: ["k", 0.0],
    Op.REPORT: [{"id": b"12345678", "counters": {"near_hits": 3}}],
}
#: ops whose arguments validate_request does not check (their handler reads them leniently)
UNCHECKED = (Op.REPORT,)
CHECKED = sorted(op for op in GOOD if op not in UNCHECKED)


def test_every_op_has_a_good_example() -> None:
    ops = {v for k, v in vars(Op).items() if not k.startswith("_")}
    assert ops == set(GOOD)


@pytest.mark.parametrize("op", sorted(GOOD))
def test_valid_request_is_split(op: int) -> None:
    assert validate_request([op, 42, *GOOD[op]]) == (op, 42, GOOD[op])


@pytest.mark.parametrize("args", [[], [1, 2], ["junk"], [{"id": 5}], [None]])
def test_a_report_of_any_shape_passes_validation(args: list[Any]) -> None:
    # the coordinator ignores a report it cannot read (mtcache.fleet.parse_report), it does not close
    assert validate_request([Op.REPORT, 1, *args]) == (Op.REPORT, 1, args)


def test_stats_takes_an_optional_options_map() -> None:
    assert validate_request([Op.STATS, 1, {"workers": True}]) == (Op.STATS, 1, [{"workers": True}])
    with pytest.raises(ProtocolError, match="takes 0 arguments"):
        validate_request([Op.STATS, 1, ["workers"]])


@pytest.mark.parametrize("op", CHECKED)
def test_one_argument_too_many(op: int) -> None:
    with pytest.raises(ProtocolError, match=f"takes {len(GOOD[op])} arguments"):
        validate_request([op, 1, *GOOD[op], "extra"])


#: ops whose trailing tags may be left out
OPTIONAL_TAGS = (Op.SET, Op.FILL, Op.ADD, Op.SET_BEHIND)


@pytest.mark.parametrize("op", sorted(op for op, args in GOOD.items() if args and op not in UNCHECKED))
def test_one_argument_too_few(op: int) -> None:
    drop = 2 if op in OPTIONAL_TAGS else 1
    with pytest.raises(ProtocolError, match=f"takes {len(GOOD[op])} arguments"):
        validate_request([op, 1, *GOOD[op][:-drop]])


@pytest.mark.parametrize("op", OPTIONAL_TAGS)
def test_trailing_tags_may_be_left_out(op: int) -> None:
    assert validate_request([op, 1, *GOOD[op][:-1]])[2] == [*GOOD[op][:-1], []]


@pytest.mark.parametrize("op", [-1, 23, 99, 2**40, "GET", None, 1.0, True, False, [1]])
def test_unknown_op(op: object) -> None:
    with pytest.raises(ProtocolError, match="unknown op"):
        validate_request([op, 1])


@pytest.mark.parametrize("rid", [True, "1", 1.0, None, b"\x01"])
def test_request_id_must_be_an_int(rid: object) -> None:
    with pytest.raises(ProtocolError, match="request id"):
        validate_request([Op.PING, rid])


@pytest.mark.parametrize("rid", [0, -1, 2**64 - 1])
def test_any_int_request_id_is_accepted(rid: int) -> None:
    assert validate_request([Op.PING, rid]) == (Op.PING, rid, [])


KEY_OPS = [op for op, args in GOOD.items() if args and args[0] == "k"]
BAD_KEYS = [
    pytest.param(1, id="int"),
    pytest.param(b"k", id="bytes"),
    pytest.param(None, id="nil"),
    pytest.param(["k"], id="list"),
    pytest.param(True, id="bool"),
    pytest.param("", id="empty"),
    pytest.param("k" * (MAX_KEY_BYTES + 1), id="over-long"),
    pytest.param("\ud800", id="lone-surrogate"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
@pytest.mark.parametrize("op", KEY_OPS)
def test_bad_key(op: int, key: object) -> None:
    with pytest.raises(ProtocolError, match=f"argument 0 of op {op}"):
        validate_request([op, 1, key, *GOOD[op][1:]])


@pytest.mark.parametrize("op", KEY_OPS)
def test_longest_key_is_accepted(op: int) -> None:
    key = "k" * MAX_KEY_BYTES
    assert validate_request([op, 1, key, *GOOD[op][1:]])[2][0] == key


BAD_TTLS = [
    pytest.param(0, id="zero"),
    pytest.param(0.0, id="zero-float"),
    pytest.param(-1, id="negative"),
    pytest.param(math.nan, id="nan"),
    pytest.param(-math.inf, id="-inf"),
    pytest.param(1e12, id="too-large"),
    pytest.param(True, id="bool"),
    pytest.param("10", id="str"),
]


#: where each op's TTL argument is
_TTL_AT = {Op.SET: 2, Op.FILL: 3, Op.SET_BEHIND: 2}


def _with_ttl(op: int, ttl: object) -> list[Any]:
    args = list(GOOD[op])
    args[_TTL_AT[op]] = ttl
    return [op, 1, *args]


@pytest.mark.parametrize("ttl", BAD_TTLS)
@pytest.mark.parametrize("op", [Op.SET, Op.FILL, Op.SET_BEHIND])
def test_bad_ttl(op: int, ttl: object) -> None:
    with pytest.raises(ProtocolError, match="positive TTL"):
        validate_request(_with_ttl(op, ttl))


@pytest.mark.parametrize("ttl", [1, 0.001, 1e11, math.inf, None])  # FOREVER; nil: the coordinator's defaults
@pytest.mark.parametrize("op", [Op.SET, Op.FILL, Op.SET_BEHIND])
def test_good_ttl(op: int, ttl: float) -> None:
    assert validate_request(_with_ttl(op, ttl))[2][_TTL_AT[op]] == ttl


@pytest.mark.parametrize(
    "wait",
    [
        pytest.param(-0.5, id="negative"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param(True, id="bool"),
        pytest.param("1", id="str"),
        pytest.param(None, id="nil"),
    ],
)
def test_bad_lease_wait(wait: object) -> None:
    with pytest.raises(ProtocolError, match="non-negative duration"):
        validate_request([Op.LEASE, 1, "k", wait, 0, 0])


@pytest.mark.parametrize("wait", [0, 0.0, 30])
def test_zero_and_positive_lease_wait_are_accepted(wait: float) -> None:
    assert validate_request([Op.LEASE, 1, "k", wait, 0, 0])[2] == ["k", wait, 0, 0]


@pytest.mark.parametrize(
    ("op", "index", "bad"),
    [
        pytest.param(Op.HELLO, 0, True, id="hello-version-bool"),
        pytest.param(Op.HELLO, 0, 1.0, id="hello-version-float"),
        pytest.param(Op.HELLO, 0, "1", id="hello-version-str"),
        pytest.param(Op.HELLO, 1, b"default", id="hello-namespace-bytes"),
        pytest.param(Op.HELLO, 1, None, id="hello-namespace-nil"),
        pytest.param(Op.HELLO, 2, False, id="hello-pid-bool"),
        pytest.param(Op.HELLO, 2, "1234", id="hello-pid-str"),
        pytest.param(Op.SET, 1, "v", id="set-value-str"),
        pytest.param(Op.SET, 1, None, id="set-value-nil"),
        pytest.param(Op.SET, 1, 5, id="set-value-int"),
        pytest.param(Op.FILL, 1, "token", id="fill-token-str"),
        pytest.param(Op.FILL, 2, ["v"], id="fill-value-list"),
        pytest.param(Op.FAIL, 1, None, id="fail-token-nil"),
        pytest.param(Op.FAIL, 2, b"ValueError", id="fail-type-bytes"),
        pytest.param(Op.FAIL, 3, 7, id="fail-message-int"),
    ],
)
def test_argument_of_the_wrong_type(op: int, index: int, bad: object) -> None:
    args = list(GOOD[op])
    args[index] = bad
    with pytest.raises(ProtocolError, match=f"argument {index} of op {op} must be"):
        validate_request([op, 1, *args])
