"""Value encoding. Workers encode and decode; the coordinator only moves bytes.

* :class:`MsgpackCodec` (the default) round-trips ``None``, ``bool``, ``int``
  (any size: integers outside 64 bits travel as an ext type), ``float``, ``str``,
  ``bytes``, ``list``, ``dict`` and, through ext types, ``datetime`` (naive or
  with a fixed UTC offset; a ``zoneinfo`` zone comes back as its offset),
  ``date``, ``Decimal`` and ``UUID``. **A tuple comes back as a list**, as with
  JSON, unless the codec is built with ``exact_containers=True``: then tuples,
  sets and frozensets come back as themselves. Dataclasses and pydantic v2
  models travel once registered (``types=[...]``), and values over a size
  threshold can be compressed with zstd (``compress_above=...``).
* :class:`JsonCodec` (opt-in): what ``json`` can carry.
* :class:`PickleCodec` (opt-in): any picklable object. **Unsafe for a shared
  cache**: unpickling runs code chosen by whoever wrote the bytes, so anyone who
  can write to the coordinator or to Redis can run code in every worker. Never
  the default; use it only when every writer is trusted.

Every codec refuses a value whose encoding exceeds ``max_bytes`` (default
8 MiB) with ``ValueError``, and a value it cannot encode with ``TypeError``
naming the type.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pickle
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import msgpack

__all__ = [
    "DEFAULT_MAX_BYTES", "Codec", "JsonCodec", "MsgpackCodec", "PickleCodec", "get_codec", "reads_msgpack_integers",
]

DEFAULT_MAX_BYTES = 8 * 1024 * 1024

_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_DECIMAL = 3
_EXT_UUID = 4
_EXT_BIGINT = 5
_EXT_TUPLE = 6
_EXT_SET = 7
_EXT_FROZENSET = 8
_EXT_REGISTERED = 9

# 0xc1 is the one byte the msgpack spec marks "never used", so no plain value starts with it:
# a compressed value is this marker then one zstd frame, and plain values keep their old bytes.
_ZSTD_MARKER = b"\xc1"
_ZSTD_LEVEL = 3

# A tuple, set or frozenset travels as an array whose first item is an empty ext of its code
# (a registered object as [mark, name, fields]): one msgpack document, decoded in one pass by
# msgpack's own iterative parser. (A separate msgpack document nested per tuple was several
# times slower to encode, and its nested decoding calls could overflow a thread's C stack.)
_TUPLE_MARK = msgpack.ExtType(_EXT_TUPLE, b"")
_SET_MARK = msgpack.ExtType(_EXT_SET, b"")
_FROZENSET_MARK = msgpack.ExtType(_EXT_FROZENSET, b"")
_REGISTERED_MARK = msgpack.ExtType(_EXT_REGISTERED, b"")
_MARKS = {mark.code: mark for mark in (_TUPLE_MARK, _SET_MARK, _FROZENSET_MARK, _REGISTERED_MARK)}
# how every mark starts once packed (ext 8, length 0): a value without it needs no list_hook
_MARK_BYTES = b"\xc7\x00"

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@runtime_checkable
class Codec(Protocol):
    """What a codec offers: ``encode`` to bytes and ``decode`` back."""

    name: str
    max_bytes: int

    def encode(self, value: Any) -> bytes:
        """Encode ``value``.

        :raises TypeError: ``value`` (or something inside it) cannot be encoded.
        :raises ValueError: the encoding is larger than ``max_bytes``.
        """
        ...

    def decode(self, data: bytes) -> Any:
        """Decode bytes produced by :meth:`encode`."""
        ...


def _check_size(codec: Codec, data: bytes) -> bytes:
    if len(data) > codec.max_bytes:
        raise ValueError(
            f"encoded value is {len(data):,} bytes, over the {codec.name} codec's "
            f"limit of {codec.max_bytes:,} bytes (a client's limit is MTCACHE_MAX_VALUE_BYTES)"
        )
    return data


def _check_max(max_bytes: int) -> int:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    return max_bytes


def _pydantic_model_class(cls: type) -> bool:
    # pydantic is never imported here: if it is not loaded yet, no pydantic model exists
    base = getattr(sys.modules.get("pydantic"), "BaseModel", None)
    return base is not None and issubclass(cls, base)


def _msgpack_default(obj: Any) -> msgpack.ExtType:
    # datetime before date: datetime is a subclass of date
    if isinstance(obj, datetime):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, date):
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
    if isinstance(obj, Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    if isinstance(obj, int) and not isinstance(obj, bool):
        return msgpack.ExtType(_EXT_BIGINT, str(obj).encode())
    kind = type(obj).__qualname__
    if isinstance(obj, (set, frozenset)):
        raise TypeError(f"cannot encode a value of type {kind} with msgpack; use MsgpackCodec(exact_containers=True)")
    if (dataclasses.is_dataclass(obj) and not isinstance(obj, type)) or _pydantic_model_class(type(obj)):
        hint = f"register it: MsgpackCodec(types=[{type(obj).__name__}])"
        raise TypeError(f"cannot encode a value of type {kind} with msgpack; {hint}")
    raise TypeError(f"cannot encode a value of type {kind} with msgpack")


def _msgpack_ext(code: int, data: bytes) -> Any:
    if not data and code in _MARKS:
        return _MARKS[code]  # the very object: _list_hook tells a mark by identity
    if code == _EXT_DATETIME:
        return datetime.fromisoformat(data.decode())
    if code == _EXT_DATE:
        return date.fromisoformat(data.decode())
    if code == _EXT_DECIMAL:
        return Decimal(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_BIGINT:
        return int(data.decode())
    return msgpack.ExtType(code, data)


def _container_mark(obj: Any) -> msgpack.ExtType | None:
    """The mark of a tuple (named tuples included), set or frozenset; ``None`` for anything else."""
    if isinstance(obj, tuple):
        return _TUPLE_MARK
    if isinstance(obj, frozenset):
        return _FROZENSET_MARK
    if isinstance(obj, set):
        return _SET_MARK
    return None


def _as_base_type(obj: Any) -> Any:
    """With ``strict_types`` msgpack hands subclasses of its own types (``IntEnum``,
    ``OrderedDict``, ...) to ``default``: they travel as their base type, as they do
    without it. ``None`` for anything else."""
    if isinstance(obj, int) and type(obj) is not int and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, str):
        return str.__str__(obj)  # the text itself: str() of a (str, Enum) member is its name
    if isinstance(obj, bytes):
        return bytes(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    return None


def _frozen(key: Any) -> Any:
    return tuple(_frozen(k) for k in key) if isinstance(key, list) else key


def _tuple_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_frozen(k): v for k, v in pairs}


@dataclasses.dataclass(frozen=True)
class _Registered:
    """One registered type: its name on the wire, how an instance becomes plain data,
    and how that data becomes an instance again."""

    name: str
    dump: Callable[[Any], Any]
    build: Callable[[Any], Any]


def _check_constructor(cls: type, init_fields: set[str]) -> None:
    """Refuse a dataclass whose constructor cannot be called with its init fields by
    name (an ``InitVar`` without default, a hand-written ``__init__``)."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # no signature to read: a mismatch shows when decoding
        return
    required = {p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    by_name = {p.name for p in params if p.kind in _KEYWORD_KINDS}
    problems = required - (init_fields & by_name)
    if all(p.kind is not p.VAR_KEYWORD for p in params):
        problems |= init_fields - by_name
    if problems:
        raise TypeError(
            f"cannot register {cls.__qualname__}: its constructor cannot be called with its "
            f"fields by name (mismatch: {', '.join(sorted(problems))})"
        )


def _dataclass_codec(cls: type, name: str) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    set_after = frozenset(f.name for f in fields if not f.init)
    _check_constructor(cls, {f.name for f in fields if f.init})

    def dump(obj: Any) -> dict[str, Any]:
        try:
            return {field: getattr(obj, field) for field in names}
        except AttributeError as exc:
            raise TypeError(f"cannot encode a value of type {name}: {exc}") from exc

    def build(data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"cached value of registered type {name!r} is not a mapping of fields")
        obj = cls(**{k: v for k, v in data.items() if k not in set_after})
        for field in set_after & data.keys():
            object.__setattr__(obj, field, data[field])  # also works on frozen dataclasses
        return obj

    return dump, build


def _pydantic_codec(cls: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    def dump(obj: Any) -> Any:
        # round_trip leaves computed fields out, so model_validate accepts the result back
        return obj.model_dump(mode="python", by_alias=True, round_trip=True)

    return dump, cls.model_validate


def _registry(types: Iterable[type | tuple[str, type]]) -> tuple[dict[str, _Registered], dict[type, _Registered]]:
    if isinstance(types, (str, bytes, type)) or not isinstance(types, Iterable):
        raise TypeError(f"types must be a list of classes or (name, class) pairs, not {type(types).__name__}")
    by_name: dict[str, _Registered] = {}
    by_type: dict[type, _Registered] = {}
    for item in types:
        if isinstance(item, type):
            cls, name = item, f"{item.__module__}.{item.__qualname__}"
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], type):
            name, cls = item
        else:
            raise TypeError(f"each entry of types must be a class or a (name, class) pair, got {item!r}")
        if not name:
            raise ValueError(f"a registered name must not be empty (registering {cls.__qualname__})")
        if name in by_name:
            raise ValueError(f"two types are registered under the name {name!r}")
        if cls in by_type:
            raise ValueError(f"{cls.__qualname__} is registered twice; one name per type")
        if _pydantic_model_class(cls):
            dump, build = _pydantic_codec(cls)
        elif dataclasses.is_dataclass(cls):
            dump, build = _dataclass_codec(cls, name)
        else:
            raise TypeError(
                f"cannot register {cls.__qualname__}: only dataclasses and pydantic v2 models can be registered"
            )
        by_name[name] = by_type[cls] = _Registered(name, dump, build)
    return by_name, by_type


class _ZstdContexts(threading.local):
    """zstd contexts, one set per thread: a context must not serve two threads at once."""

    def __init__(self, zstd: Any) -> None:
        self.error = zstd.ZstdError
        self.content_size = zstd.frame_content_size
        self.compressor = zstd.ZstdCompressor(level=_ZSTD_LEVEL)
        self.decompressor = zstd.ZstdDecompressor()


def _zstd_module() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        raise ImportError("compress_above needs the zstandard package: pip install mtcache[zstd]") from exc
    return zstandard


class MsgpackCodec:
    """The default codec (see the module docstring for the types it carries).

    :param max_bytes: the largest msgpack encoding accepted, before compression; a
        compressed value is never larger, and decompression stops past it.
    :param exact_containers: encode tuples, sets and frozensets as marked arrays so
        they come back as themselves (dict keys included); otherwise a tuple comes back as
        a list and a set is refused. Decoding understands both, whatever this says.
    :param types: dataclasses and pydantic v2 models this codec may carry, each a class
        (named on the wire ``module.qualname``) or a ``(name, class)`` pair (a name that
        survives renaming the class). Only these are ever built when decoding: no name
        is imported, nothing is unpickled.
    :param compress_above: compress with zstd an encoding longer than this many bytes
        (needs ``pip install mtcache[zstd]``); ``None`` never compresses.
    :raises ValueError: a bad ``max_bytes``/``compress_above``, or a name given twice.
    :raises TypeError: a bad ``exact_containers``, or a ``types`` entry that is not a
        dataclass or pydantic model whose constructor takes its fields by name.
    :raises ImportError: ``compress_above`` without the ``zstandard`` package.
    """

    name = "msgpack"

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        exact_containers: bool = False,
        types: Iterable[type | tuple[str, type]] = (),
        compress_above: int | None = None,
    ) -> None:
        self.max_bytes = _check_max(max_bytes)
        if not isinstance(exact_containers, bool):
            raise TypeError(f"exact_containers must be a bool, not {type(exact_containers).__name__}")
        self.exact_containers = exact_containers
        self._by_name, self._by_type = _registry(types)
        if compress_above is not None and (
            not isinstance(compress_above, int) or isinstance(compress_above, bool) or compress_above < 0
        ):
            raise ValueError(f"compress_above must be None or a non-negative integer, got {compress_above!r}")
        self.compress_above = compress_above
        self._zstd = None if compress_above is None else _ZstdContexts(_zstd_module())

    def _default(self, obj: Any) -> Any:
        entry = self._by_type.get(type(obj))
        if entry is not None:
            return [_REGISTERED_MARK, entry.name, entry.dump(obj)]
        if self.exact_containers:
            mark = _container_mark(obj)
            if mark is not None:
                return [mark, *obj]
            plain = _as_base_type(obj)
            if plain is not None:
                return plain
        return _msgpack_default(obj)

    def encode(self, value: Any) -> bytes:
        """Encode ``value`` with msgpack, then compress it if ``compress_above`` says so
        and that makes it smaller; see :meth:`Codec.encode`.

        A tuple used as a dict key comes back as a tuple (see :meth:`decode`).

        :raises TypeError: something in ``value`` cannot be encoded (nesting too deep
            included); for a set, a dataclass or a pydantic model, the message names the
            option that carries it.
        :raises ValueError: the msgpack encoding is larger than ``max_bytes``.
        """
        try:
            data = msgpack.packb(value, default=self._default, use_bin_type=True, strict_types=self.exact_containers)
        except TypeError:
            raise
        except (ValueError, OverflowError, RecursionError) as exc:
            raise TypeError(f"cannot encode a value of type {type(value).__qualname__}: {exc}") from exc
        _check_size(self, data)
        if self._zstd is not None and self.compress_above is not None and len(data) > self.compress_above:
            framed = _ZSTD_MARKER + self._zstd.compressor.compress(data)
            if len(framed) < len(data):
                return framed
        return data

    def decode(self, data: bytes) -> Any:
        """Decode bytes from :meth:`encode` (compressed or not); see :meth:`Codec.decode`.

        msgpack has one array type, so a tuple dict key written without
        ``exact_containers`` arrives as an (unhashable) list; only then is the value
        decoded again turning such keys into tuples, so ordinary values pay nothing for it.
        Likewise only a value holding marked arrays (tuples, sets, registered objects)
        pays for a hook on every array.

        :raises ValueError: the bytes are not a value this codec can rebuild: a type not
            registered here (named in the message), a compressed value when this codec
            has no ``compress_above`` or one that decompresses past ``max_bytes``, or
            malformed or too deeply nested data.
        """
        if data[:1] == _ZSTD_MARKER:
            data = self._decompress(data)
        list_hook = self._list_hook if _MARK_BYTES in data else None
        try:
            return msgpack.unpackb(data, ext_hook=_msgpack_ext, list_hook=list_hook, raw=False, strict_map_key=False)
        except TypeError:
            return msgpack.unpackb(
                data,
                ext_hook=_msgpack_ext,
                list_hook=list_hook,
                raw=False,
                strict_map_key=False,
                object_pairs_hook=_tuple_keys,
            )

    def _list_hook(self, items: list[Any]) -> Any:
        # never raises TypeError: decode would take that for a list used as a dict key
        if not items:
            return items
        head = items[0]
        if head is _TUPLE_MARK:
            return tuple(items[1:])
        if head is _SET_MARK or head is _FROZENSET_MARK:
            try:
                return set(items[1:]) if head is _SET_MARK else frozenset(items[1:])
            except TypeError as exc:
                raise ValueError(f"malformed set in cached value: {exc}") from exc
        if head is _REGISTERED_MARK:
            return self._rebuild(items)
        return items

    def _rebuild(self, items: list[Any]) -> Any:
        if len(items) != 3 or not isinstance(items[1], str):
            raise ValueError("malformed registered object in cached value: expected [mark, name, fields]")
        name = items[1]
        entry = self._by_name.get(name)
        if entry is None:
            raise ValueError(
                f"cached value holds type {name!r}, which this codec does not know; "
                f"register it: MsgpackCodec(types=[...])"
            )
        try:
            return entry.build(items[2])
        except TypeError as exc:  # for one, the class changed since the value was written
            raise ValueError(f"cannot rebuild {name!r} from its cached fields: {exc}") from exc

    def _decompress(self, data: bytes) -> bytes:
        if self._zstd is None:
            raise ValueError("cached value is zstd-compressed; decode it with MsgpackCodec(compress_above=...)")
        zstd = self._zstd
        frame = data[1:]
        try:
            # the decompressor trusts a size written in the frame header over max_output_size,
            # so that size is checked first (a decompression bomb declares a huge one)
            size = zstd.content_size(frame)
            if size > self.max_bytes:
                raise ValueError(f"cached value decompresses to {size:,} bytes, over the limit of {self.max_bytes:,}")
            return zstd.decompressor.decompress(frame, max_output_size=self.max_bytes, allow_extra_data=False)
        except zstd.error as exc:
            raise ValueError(
                f"cannot decompress the cached value (corrupt, or over {self.max_bytes:,} bytes): {exc}"
            ) from exc


class JsonCodec:
    """Opt-in JSON codec: ``None``, ``bool``, ``int``, ``float``, ``str``,
    ``list``/``tuple`` (back as list) and ``dict`` with ``str`` keys."""

    name = "json"

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = _check_max(max_bytes)

    def encode(self, value: Any) -> bytes:
        """Encode ``value`` as UTF-8 JSON; see :meth:`Codec.encode`."""
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
        except (TypeError, ValueError, RecursionError) as exc:  # ValueError: a circular reference
            raise TypeError(f"cannot encode a value of type {type(value).__qualname__} as JSON: {exc}") from exc
        return _check_size(self, text.encode())

    def decode(self, data: bytes) -> Any:
        """Decode UTF-8 JSON bytes; see :meth:`Codec.decode`."""
        return json.loads(data)


class PickleCodec:
    """Opt-in pickle codec. Unsafe for a shared cache: decoding runs code chosen by
    whoever wrote the bytes. Use only when every writer is trusted."""

    name = "pickle"

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = _check_max(max_bytes)

    def encode(self, value: Any) -> bytes:
        """Pickle ``value``; see :meth:`Codec.encode`."""
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
            raise TypeError(f"cannot pickle a value of type {type(value).__qualname__}: {exc}") from exc
        return _check_size(self, data)

    def decode(self, data: bytes) -> Any:
        """Unpickle ``data``. Runs whatever code the bytes ask for."""
        return pickle.loads(data)


_CODECS: dict[str, type[MsgpackCodec] | type[JsonCodec] | type[PickleCodec]] = {
    "msgpack": MsgpackCodec,
    "json": JsonCodec,
    "pickle": PickleCodec,
}


def get_codec(codec: str | Codec | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Codec:
    """Return a codec: ``None`` → msgpack; a name (``"msgpack"``, ``"json"``,
    ``"pickle"``) → that codec with ``max_bytes``; a codec object → itself.

    :raises ValueError: an unknown codec name.
    :raises TypeError: neither a name nor an object with ``encode``/``decode``.
    """
    if codec is None:
        return MsgpackCodec(max_bytes)
    if isinstance(codec, str):
        try:
            return _CODECS[codec](max_bytes)
        except KeyError:
            raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(_CODECS)}") from None
    if isinstance(codec, Codec):
        return codec
    raise TypeError(f"codec must be a name or an object with encode/decode, not {type(codec).__name__}")


#: Integers a codec must read back from their msgpack encoding to keep counters (see below).
_COUNTER_PROBES = (0, 1, -1, 300, -70_000, 2**40)


def reads_msgpack_integers(codec: Codec) -> bool:
    """Whether ``codec`` decodes a msgpack integer as that ``int``: what ``incr``/``decr`` need,
    since Redis keeps a counter as a msgpack integer and ``get`` decodes it with the client's codec.
    True for :class:`MsgpackCodec`, and for a codec that writes integers as msgpack and the rest its
    own way (as the Django backend's codec does); False for JSON and pickle."""
    try:
        decoded = [codec.decode(msgpack.packb(n)) for n in _COUNTER_PROBES]
    except Exception:  # any codec's decode error: it does not read them
        return False
    return all(type(d) is int and d == n for d, n in zip(decoded, _COUNTER_PROBES, strict=True))

