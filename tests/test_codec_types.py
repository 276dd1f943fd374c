"""MsgpackCodec conveniences: exact containers (tuple, set, frozenset), registered
dataclasses and pydantic models, and zstd compression above a threshold."""

from __future__ import annotations

import enum
import random
import sys
import uuid
from collections import OrderedDict
from dataclasses import InitVar, dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtcache.codec import MsgpackCodec, get_codec


@dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclass
class Shape:
    name: str
    points: list[Point]
    tags: frozenset[str] = frozenset()
    origin: tuple[int, int] = (0, 0)
    area: float = field(default=0.0, init=False)
    when: datetime | None = None


@dataclass(slots=True)
class Slotted:
    a: int
    b: bytes


def typed(value: Any) -> Any:
    """A structure equal for two values only if they hold the same types in the same places."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [typed(item) for item in value])
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(repr(typed(item)) for item in value))
    if isinstance(value, dict):
        return ("dict", sorted((repr(typed(k)), repr(typed(v))) for k, v in value.items()))
    return (type(value).__name__, repr(value))


def assert_same(decoded: Any, value: Any) -> None:
    assert decoded == value
    assert typed(decoded) == typed(value)


def exact(**kwargs: Any) -> MsgpackCodec:
    return MsgpackCodec(exact_containers=True, **kwargs)


# --- exact containers -------------------------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.dates()
    | st.datetimes().map(lambda moment: moment.replace(fold=0))  # the datetime ext never kept fold
    | st.decimals(allow_nan=False)
    | st.uuids()
)
HASHABLE = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
VALUES = st.recursive(
    SCALARS | HASHABLE,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(HASHABLE, inner, max_size=4)
        | st.sets(HASHABLE, max_size=4)
        | st.frozensets(HASHABLE, max_size=4)
    ),
    max_leaves=16,
)


@settings(deadline=None)
@given(VALUES)
def test_exact_containers_round_trip_anything(value: Any) -> None:
    codec = exact()
    assert_same(codec.decode(codec.encode(value)), value)


@settings(deadline=None)
@given(VALUES)
def test_a_codec_without_the_option_decodes_exact_containers_too(value: Any) -> None:
    assert_same(MsgpackCodec().decode(exact().encode(value)), value)


NESTED = [
    (),
    (1,),
    set(),
    frozenset(),
    {(1, 2): {3, 4}, (1, (2, 3)): frozenset({(5, 6)}), frozenset({"a", "b"}): ((), [()])},
    [(1, [2, (3, {"k": (4,)})])],
    {"s": {(1, 2), (2, 1)}, "f": frozenset({frozenset({1}), frozenset()})},
    ((date(2024, 1, 1), Decimal("1.10")), {uuid.UUID(int=3)}, (2**70, -(2**70))),
    {((1, 2), "k"): [{"inner": ((),)}]},
]


@pytest.mark.parametrize("value", NESTED, ids=repr)
def test_nested_exact_containers_keys_and_values(value: Any) -> None:
    codec = exact()
    assert_same(codec.decode(codec.encode(value)), value)


class Pair(NamedTuple):
    left: int
    right: str


class Colour(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def test_exact_containers_encode_subclasses_as_their_base_type() -> None:
    codec = exact()
    value = [Pair(1, "a"), Colour.RED, Level.HIGH, OrderedDict(a=1), 2**80]
    assert_same(codec.decode(codec.encode(value)), [(1, "a"), "red", 3, {"a": 1}, 2**80])
    assert codec.encode([Colour.RED, Level.HIGH]) == MsgpackCodec().encode([Colour.RED, Level.HIGH])


def test_without_the_option_a_set_names_it() -> None:
    with pytest.raises(TypeError, match=r"frozenset.*MsgpackCodec\(exact_containers=True\)"):
        MsgpackCodec().encode({"k": frozenset({1})})


def test_without_the_option_the_wire_format_is_unchanged() -> None:
    value = {"a": [1, "x"], "t": (1, 2)}
    assert MsgpackCodec().encode(value) == msgpack.packb(value, use_bin_type=True)


TUPLE = msgpack.ExtType(6, b"")
SET = msgpack.ExtType(7, b"")
REGISTERED = msgpack.ExtType(9, b"")


def test_wire_format_is_a_marked_array() -> None:
    assert exact().encode((1, {2})) == msgpack.packb([TUPLE, 1, [SET, 2]])
    assert MsgpackCodec(types=[("p", Point)]).encode(Point(1, 2)) == msgpack.packb([REGISTERED, "p", {"x": 1, "y": 2}])


def nested_tuples(depth: int) -> Any:
    value: Any = ()
    for _ in range(depth - 1):
        value = (value,)
    return value


def test_deep_tuples_round_trip_and_too_deep_is_a_type_error() -> None:
    codec = exact()
    back = codec.decode(codec.encode(nested_tuples(500)))
    assert back == nested_tuples(500)
    for _ in range(499):
        assert type(back) is tuple
        (back,) = back
    assert back == ()
    with pytest.raises(TypeError, match="tuple"):
        codec.encode(nested_tuples(5_000))


def test_crafted_too_deep_nesting_is_a_value_error() -> None:
    data = b"\x92\xc7\x00\x06" * 5_000 + b"\x90"  # [mark, [mark, [... []]]]
    with pytest.raises(ValueError):
        MsgpackCodec().decode(data)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([SET, [1, 2]], "malformed set"),
        ([msgpack.ExtType(8, b""), {"a": 1}], "malformed set"),
        ([REGISTERED, "p"], "malformed registered"),
        ([REGISTERED, 1, {}], "malformed registered"),
        ([REGISTERED, "p", {"x": 1}, "extra"], "malformed registered"),
        ([REGISTERED, "p", [1, 2]], "not a mapping of fields"),
    ],
    ids=repr,
)
def test_malformed_marked_array_is_a_value_error(items: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MsgpackCodec(types=[("p", Point)]).decode(msgpack.packb(items))


def test_a_mark_anywhere_else_stays_an_ext_type() -> None:
    data = msgpack.packb({"k": TUPLE, "l": [1, TUPLE], "t": [TUPLE, 1]})
    assert MsgpackCodec().decode(data) == {"k": TUPLE, "l": [1, TUPLE], "t": (1,)}


def test_exact_containers_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="exact_containers"):
        MsgpackCodec(exact_containers="yes")  # type: ignore[arg-type]


def test_backward_compatible_constructor_and_name() -> None:
    codec = MsgpackCodec(1234)
    assert codec.max_bytes == 1234
    assert codec.name == exact().name == "msgpack"
    assert type(get_codec("msgpack", max_bytes=99)) is MsgpackCodec


# --- registered dataclasses -------------------------------------------------------------------------------------------


def test_registered_dataclasses_round_trip_nested() -> None:
    codec = exact(types=[Point, Shape, Slotted])
    shape = Shape("tri", [Point(0, 0), Point(1, 0)], frozenset({"x"}), (2, 3), when=datetime(2024, 1, 1))
    shape.area = 0.5
    value = {Point(1, 2): [shape, Slotted(1, b"\x00")], "p": (Point(3, 4),)}
    back = codec.decode(codec.encode(value))
    assert_same(back, value)
    assert back["p"][0].__class__ is Point
    assert back[Point(1, 2)][0].area == 0.5


def test_registered_dataclass_without_exact_containers_gets_lists_for_tuples() -> None:
    @dataclass
    class Segment:
        ends: tuple[Point, Point]

    codec = MsgpackCodec(types=[Point, Segment])
    back = codec.decode(codec.encode(Segment((Point(1, 2), Point(3, 4)))))
    assert_same(back.ends, [Point(1, 2), Point(3, 4)])


def test_explicit_wire_name_survives_renaming_the_class() -> None:
    @dataclass
    class PointV2:
        x: int
        y: int
        z: int = 0

    writer = MsgpackCodec(types=[("point", Point)])
    reader = MsgpackCodec(types=[("point", PointV2)])
    assert reader.decode(writer.encode([Point(1, 2)])) == [PointV2(1, 2, 0)]


@pytest.mark.parametrize("value", [Point(1, 2), [{"k": Point(1, 2)}]], ids=repr)
def test_unregistered_dataclass_names_the_option(value: Any) -> None:
    with pytest.raises(TypeError, match=r"register it: MsgpackCodec\(types=\[Point\]\)"):
        MsgpackCodec(types=[Slotted]).encode(value)


def test_unknown_registered_name_is_a_value_error_naming_it() -> None:
    data = MsgpackCodec(types=[Point]).encode(Point(1, 2))
    with pytest.raises(ValueError, match=r"'tests\.test_codec_types\.Point'"):
        MsgpackCodec(types=[Slotted]).decode(data)


def test_decoding_never_imports_the_name_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "codec_probe_module.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Thing:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = msgpack.packb([REGISTERED, "codec_probe_module.Thing", {}])
    with pytest.raises(ValueError, match=r"codec_probe_module\.Thing"):
        MsgpackCodec(types=[Point]).decode(data)
    assert "codec_probe_module" not in sys.modules
    assert not marker.exists()


def test_a_field_the_class_no_longer_has_is_a_value_error() -> None:
    @dataclass
    class Old:
        x: int
        gone: int

    @dataclass
    class New:
        x: int

    data = MsgpackCodec(types=[("thing", Old)]).encode(Old(1, 2))
    with pytest.raises(ValueError, match="cannot rebuild 'thing'"):
        MsgpackCodec(types=[("thing", New)]).decode(data)


@dataclass
class WithInitVar:
    a: int
    scale: InitVar[int]


class CustomInit:
    def __init__(self, value: int) -> None:
        self.value = value


@dataclass(init=False)
class HandWrittenInit:
    a: int

    def __init__(self, raw: str) -> None:
        self.a = int(raw)


@pytest.mark.parametrize(
    ("types", "error", "message"),
    [
        (Point, TypeError, "list of classes"),
        ({"point": Point}, TypeError, "got 'point'"),
        ([Point(1, 2)], TypeError, "got Point"),
        ([("p", Point(1, 2))], TypeError, "class or a"),
        ([CustomInit], TypeError, "only dataclasses and pydantic"),
        ([WithInitVar], TypeError, "mismatch: scale"),
        ([HandWrittenInit], TypeError, "mismatch: a, raw"),
        ([("p", Point), ("p", Slotted)], ValueError, "name 'p'"),
        ([Point, ("p", Point)], ValueError, "registered twice"),
        ([("", Point)], ValueError, "must not be empty"),
    ],
)
def test_bad_registrations(types: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        MsgpackCodec(types=types)


# --- pydantic models --------------------------------------------------------------------------------------------------


def _models() -> tuple[Any, Any]:
    pydantic = pytest.importorskip("pydantic", reason="pydantic is optional; install it to test models")

    class Address(pydantic.BaseModel):
        city: str
        codes: tuple[int, ...] = ()

    class User(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        user_id: int = pydantic.Field(alias="id")
        address: Address
        roles: set[str] = set()
        seen: datetime | None = None

        @pydantic.computed_field
        @property
        def label(self) -> str:
            return f"{self.user_id}@{self.address.city}"

    return Address, User


def test_registered_pydantic_model_round_trips() -> None:
    address, user = _models()
    codec = exact(types=[user, Point])
    value = user(id=7, address=address(city="Oslo", codes=(1, 2)), roles={"admin"}, seen=datetime(2024, 5, 1))
    back = codec.decode(codec.encode({"u": value, "p": Point(1, 2)}))
    assert back == {"u": value, "p": Point(1, 2)}
    assert type(back["u"]) is user
    assert back["u"].address.codes == (1, 2)
    assert back["u"].label == "7@Oslo"


def test_unregistered_pydantic_model_names_the_option() -> None:
    address, _ = _models()
    with pytest.raises(TypeError, match=r"register it: MsgpackCodec\(types=\[Address\]\)"):
        exact().encode([address(city="Oslo")])


def test_pydantic_model_that_no_longer_validates_is_a_value_error() -> None:
    pydantic = pytest.importorskip("pydantic", reason="pydantic is optional; install it to test models")

    class Before(pydantic.BaseModel):
        n: str

    class After(pydantic.BaseModel):
        n: int

    data = MsgpackCodec(types=[("m", Before)]).encode(Before(n="not a number"))
    with pytest.raises(ValueError, match="valid integer"):
        MsgpackCodec(types=[("m", After)]).decode(data)


# --- compression ------------------------------------------------------------------------------------------------------


@pytest.fixture
def zstd() -> Any:
    return pytest.importorskip("zstandard", reason="the zstd extra is not installed: pip install mtcache[zstd]")


def test_compression_threshold_both_ways(zstd: Any) -> None:
    value = "abc" * 100
    size = len(MsgpackCodec().encode(value))
    at = MsgpackCodec(compress_above=size).encode(value)
    below = MsgpackCodec(compress_above=size - 1).encode(value)
    assert at == MsgpackCodec().encode(value)
    assert below[:1] == b"\xc1"
    assert len(below) < size
    for data in (at, below):
        assert MsgpackCodec(compress_above=size).decode(data) == value


def test_incompressible_value_is_stored_plain(zstd: Any) -> None:
    value = random.Random(0).randbytes(600)
    data = MsgpackCodec(compress_above=0).encode(value)
    assert data == MsgpackCodec().encode(value)


@settings(deadline=None, max_examples=50)
@given(VALUES)
def test_compressed_round_trip(value: Any) -> None:
    pytest.importorskip("zstandard", reason="the zstd extra is not installed: pip install mtcache[zstd]")
    codec = exact(compress_above=0)
    assert_same(codec.decode(codec.encode(value)), value)


def test_a_codec_without_compression_detects_a_compressed_value(zstd: Any) -> None:
    data = MsgpackCodec(compress_above=10).encode("x" * 1000)
    with pytest.raises(ValueError, match=r"zstd-compressed.*compress_above"):
        MsgpackCodec().decode(data)


def test_max_bytes_applies_before_compression(zstd: Any) -> None:
    codec = MsgpackCodec(max_bytes=1000, compress_above=100)
    assert len(codec.encode("x" * 990)) < 100
    with pytest.raises(ValueError, match="limit of 1,000 bytes"):
        codec.encode("x" * 1000)


@pytest.mark.parametrize("write_content_size", [True, False])
def test_decompression_bomb_is_refused(zstd: Any, write_content_size: bool) -> None:
    bomb = b"\xc1" + zstd.ZstdCompressor(write_content_size=write_content_size).compress(b"\x00" * 10_000_000)
    assert len(bomb) < 1000
    with pytest.raises(ValueError, match="1,048,576"):
        MsgpackCodec(max_bytes=1024 * 1024, compress_above=0).decode(bomb)


def test_value_of_exactly_max_bytes_decompresses(zstd: Any) -> None:
    value = "y" * 5000
    size = len(MsgpackCodec().encode(value))
    codec = MsgpackCodec(max_bytes=size, compress_above=0)
    data = codec.encode(value)
    assert data[:1] == b"\xc1"
    assert codec.decode(data) == value


def test_corrupt_frame_is_a_value_error(zstd: Any) -> None:
    with pytest.raises(ValueError, match="cannot decompress"):
        MsgpackCodec(compress_above=0).decode(b"\xc1garbage")


def test_frame_with_trailing_bytes_is_a_value_error(zstd: Any) -> None:
    codec = MsgpackCodec(compress_above=0)
    data = codec.encode("z" * 500)
    with pytest.raises(ValueError, match="cannot decompress"):
        codec.decode(data + b"\x00")


@pytest.mark.parametrize("threshold", [-1, True, 1.5, "100"])
def test_invalid_compress_above(threshold: Any) -> None:
    with pytest.raises(ValueError, match="compress_above"):
        MsgpackCodec(compress_above=threshold)


def test_missing_zstandard_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ImportError, match=r"pip install mtcache\[zstd\]"):
        MsgpackCodec(compress_above=1024)
