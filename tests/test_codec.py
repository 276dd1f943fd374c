"""Codecs: round trips, refusals (TypeError for what cannot be encoded, ValueError
for what is too large) and get_codec, from the outside."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgpack
import pytest

from mtcache.codec import DEFAULT_MAX_BYTES, Codec, JsonCodec, MsgpackCodec, PickleCodec, get_codec

CODECS = [MsgpackCodec, JsonCodec, PickleCodec]

COMMON_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**70,
    -(2**70),
    1.5,
    -0.0,
    1e308,
    "",
    "héllo wörld ✓",
    [],
    [1, "two", 3.0, None],
    {},
    {"a": {"b": [1, {"c": None}], "d": "e"}},
]


@dataclass(frozen=True)
class Point:
    x: int
    y: int


def assert_same(decoded: Any, value: Any) -> None:
    assert decoded == value
    assert type(decoded) is type(value)


# --- round trips ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec_type", CODECS)
@pytest.mark.parametrize("value", COMMON_VALUES, ids=repr)
def test_common_values_round_trip(codec_type: type[Codec], value: Any) -> None:
    codec = codec_type()
    data = codec.encode(value)
    assert isinstance(data, bytes)
    assert_same(codec.decode(data), value)


MSGPACK_ONLY_VALUES = [
    b"",
    b"\x00\xffbinary",
    {1: "int key", b"k": "bytes key"},
    datetime(2024, 2, 29, 13, 45, 7, 123456),
    datetime(2024, 2, 29, 13, 45, 7, tzinfo=timezone.utc),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=-8))),
    date(2024, 2, 29),
    Decimal("3.14159265358979323846264338327950288"),
    Decimal("-0.000001"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    {"when": date(2020, 1, 1), "ids": [uuid.UUID(int=1), uuid.UUID(int=2)], "big": [2**100]},
]


@pytest.mark.parametrize("value", MSGPACK_ONLY_VALUES, ids=repr)
def test_msgpack_round_trips_its_extra_types(value: Any) -> None:
    codec = MsgpackCodec()
    assert_same(codec.decode(codec.encode(value)), value)


def test_msgpack_keeps_datetime_offset_and_decimal_exponent() -> None:
    codec = MsgpackCodec()
    aware = datetime(2024, 5, 1, 8, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    back = codec.decode(codec.encode(aware))
    assert back.utcoffset() == timedelta(hours=5, minutes=30)
    naive = codec.decode(codec.encode(datetime(2024, 5, 1, 8, 0)))
    assert naive.tzinfo is None
    assert str(codec.decode(codec.encode(Decimal("1.10")))) == "1.10"


def test_msgpack_zoneinfo_comes_back_as_its_offset() -> None:
    try:
        zone = ZoneInfo("Europe/Paris")
    except ZoneInfoNotFoundError:
        pytest.skip("no time zone database (tzdata) on this system")
    value = datetime(2024, 7, 1, 12, 0, tzinfo=zone)
    back = MsgpackCodec().decode(MsgpackCodec().encode(value))
    assert back == value
    assert back.utcoffset() == timedelta(hours=2)


def test_msgpack_decimal_nan_round_trips() -> None:
    back = MsgpackCodec().decode(MsgpackCodec().encode(Decimal("NaN")))
    assert isinstance(back, Decimal)
    assert back.is_nan()


@pytest.mark.parametrize("codec_type", [MsgpackCodec, JsonCodec])
def test_tuple_comes_back_as_list(codec_type: type[Codec]) -> None:
    codec = codec_type()
    assert_same(codec.decode(codec.encode((1, (2, "x")))), [1, [2, "x"]])


def test_msgpack_unknown_ext_type_is_returned_as_ext() -> None:
    data = msgpack.packb(msgpack.ExtType(42, b"raw"))
    assert MsgpackCodec().decode(data) == msgpack.ExtType(42, b"raw")


def test_json_writes_utf8_text_and_keeps_nan() -> None:
    codec = JsonCodec()
    assert codec.encode({"k": "é"}) == '{"k":"é"}'.encode()
    assert math.isnan(codec.decode(codec.encode(math.nan)))


@pytest.mark.parametrize(
    "value",
    [
        (1, "tuple", None),
        {1, 2, 3},
        frozenset({"a"}),
        b"bytes",
        Point(1, 2),
        datetime(2024, 1, 1, tzinfo=timezone.utc),
        Decimal("1.5"),
        uuid.UUID(int=7),
        {("tuple", "key"): [Point(3, 4)]},
        complex(1, 2),
    ],
    ids=repr,
)
def test_pickle_round_trips_python_objects(value: Any) -> None:
    codec = PickleCodec()
    assert_same(codec.decode(codec.encode(value)), value)


# --- refusals ---------------------------------------------------------------------------------------------------------


def _generator() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    ("codec_type", "value", "type_name"),
    [
        (MsgpackCodec, object(), "object"),
        (MsgpackCodec, {1, 2}, "set"),
        (MsgpackCodec, {"nested": [complex(1, 2)]}, "complex"),
        (MsgpackCodec, Point(1, 2), "Point"),
        (JsonCodec, b"bytes", "bytes"),
        (JsonCodec, {"when": datetime(2024, 1, 1)}, "datetime"),
        (JsonCodec, {1, 2}, "set"),
        (JsonCodec, Point(1, 2), "Point"),
        (PickleCodec, _generator(), "generator"),
        (PickleCodec, threading.Lock(), "lock"),
        (PickleCodec, lambda: None, "function"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_value_that_cannot_be_encoded_is_a_type_error_naming_the_type(
    codec_type: type[Codec], value: Any, type_name: str
) -> None:
    with pytest.raises(TypeError, match=type_name):
        codec_type().encode(value)


def test_circular_structures_are_type_errors_for_msgpack_and_json() -> None:
    loop: list[Any] = []
    loop.append(loop)
    for codec in (MsgpackCodec(), JsonCodec()):
        with pytest.raises(TypeError, match="list"):
            codec.encode(loop)


@pytest.mark.parametrize("codec_type", CODECS)
def test_oversized_value_is_a_value_error(codec_type: type[Codec]) -> None:
    codec = codec_type(max_bytes=64)
    with pytest.raises(ValueError, match=r"limit of 64 bytes \(a client's limit is MTCACHE_MAX_VALUE_BYTES\)"):
        codec.encode("x" * 100)


@pytest.mark.parametrize("codec_type", CODECS)
def test_value_of_exactly_max_bytes_is_accepted(codec_type: type[Codec]) -> None:
    value = ["x" * 50, 2**70]
    size = len(codec_type().encode(value))
    assert codec_type(max_bytes=size).decode(codec_type(max_bytes=size).encode(value)) == value
    with pytest.raises(ValueError, match=f"limit of {size - 1}"):
        codec_type(max_bytes=size - 1).encode(value)


@pytest.mark.parametrize("codec_type", CODECS)
@pytest.mark.parametrize("max_bytes", [0, -1, True, 1.5, "10"])
def test_invalid_max_bytes(codec_type: type[Codec], max_bytes: object) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        codec_type(max_bytes=max_bytes)  # type: ignore[arg-type]


@pytest.mark.parametrize("codec_type", CODECS)
def test_default_limit_and_protocol(codec_type: type[Codec]) -> None:
    codec = codec_type()
    assert codec.max_bytes == DEFAULT_MAX_BYTES == 8 * 1024 * 1024
    assert isinstance(codec, Codec)


def test_msgpack_tuple_dict_keys_come_back_as_tuples() -> None:
    codec = MsgpackCodec()
    value = {(1, 2): 3, (1, (2, 3)): [4, 5], "plain": {(6,): 7}}
    assert codec.decode(codec.encode(value)) == value


def _deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_msgpack_refuses_too_deep_nesting_with_type_error() -> None:
    with pytest.raises(TypeError, match="list"):
        MsgpackCodec().encode(_deep_list(10_000))


def test_json_refuses_too_deep_nesting_with_type_error() -> None:
    with pytest.raises(TypeError):
        JsonCodec().encode(_deep_list(10_000))


def test_pickle_refuses_too_deep_nesting_with_type_error() -> None:
    with pytest.raises(TypeError):
        PickleCodec().encode(_deep_list(10_000))


# --- get_codec --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec_type"),
    [(None, MsgpackCodec), ("msgpack", MsgpackCodec), ("json", JsonCodec), ("pickle", PickleCodec)],
)
def test_get_codec_by_name(name: str | None, codec_type: type[Codec]) -> None:
    codec = get_codec(name, max_bytes=1234)
    assert type(codec) is codec_type
    assert codec.max_bytes == 1234
    assert type(get_codec(name)) is codec_type


def test_get_codec_returns_a_codec_object_as_is() -> None:
    class Reversing:
        name = "reversing"
        max_bytes = 10

        def encode(self, value: Any) -> bytes:
            return bytes(reversed(value))

        def decode(self, data: bytes) -> Any:
            return bytes(reversed(data))

    mine = Reversing()
    assert get_codec(mine) is mine
    json_codec = JsonCodec()
    assert get_codec(json_codec) is json_codec


@pytest.mark.parametrize("name", ["yaml", "MsgPack", ""])
def test_get_codec_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown codec {name!r}"):
        get_codec(name)


@pytest.mark.parametrize("thing", [42, b"json", object()])
def test_get_codec_rejects_other_things(thing: object) -> None:
    with pytest.raises(TypeError, match=type(thing).__name__):
        get_codec(thing)  # type: ignore[arg-type]


def test_get_codec_rejects_bad_max_bytes() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        get_codec("json", max_bytes=0)
