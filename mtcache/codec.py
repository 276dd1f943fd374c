"""Value encoding. Workers encode and decode; the coordinator only moves bytes.

* :class:`MsgpackCodec` (the default) round-trips ``None``, ``bool``, ``int``
  (any size: integers outside 64 bits travel as an ext type), ``float``, ``str``,
  ``bytes``, ``list``, ``dict`` and, through ext types, ``datetime`` (naive or
  with a fixed UTC offset; a ``zoneinfo`` zone comes back as its offset),
  ``date``, ``Decimal`` and ``UUID``. **A tuple comes back as a list**, as with
  JSON; msgpack has one array type.
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

import json
import pickle
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import msgpack

__all__ = ["DEFAULT_MAX_BYTES", "Codec", "JsonCodec", "MsgpackCodec", "PickleCodec", "get_codec"]

DEFAULT_MAX_BYTES = 8 * 1024 * 1024

_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_DECIMAL = 3
_EXT_UUID = 4
_EXT_BIGINT = 5


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
            f"limit of {codec.max_bytes:,} bytes"
        )
    return data


def _check_max(max_bytes: int) -> int:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    return max_bytes


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
    raise TypeError(f"cannot encode a value of type {type(obj).__qualname__} with msgpack")


def _msgpack_ext(code: int, data: bytes) -> Any:
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


def _frozen(key: Any) -> Any:
    return tuple(_frozen(k) for k in key) if isinstance(key, list) else key


def _tuple_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_frozen(k): v for k, v in pairs}


class MsgpackCodec:
    """The default codec (see the module docstring for the types it carries)."""

    name = "msgpack"

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = _check_max(max_bytes)

    def encode(self, value: Any) -> bytes:
        """Encode ``value`` with msgpack; see :meth:`Codec.encode`.

        A tuple used as a dict key comes back as a tuple (see :meth:`decode`).
        """
        try:
            data = msgpack.packb(value, default=_msgpack_default, use_bin_type=True)
        except TypeError:
            raise
        except (ValueError, OverflowError) as exc:
            raise TypeError(f"cannot encode a value of type {type(value).__qualname__}: {exc}") from exc
        return _check_size(self, data)

    def decode(self, data: bytes) -> Any:
        """Decode msgpack bytes; see :meth:`Codec.decode`.

        msgpack has one array type, so a tuple dict key arrives as an (unhashable)
        list; only then is the value decoded again turning such keys into tuples,
        so ordinary values pay nothing for it.
        """
        try:
            return msgpack.unpackb(data, ext_hook=_msgpack_ext, raw=False, strict_map_key=False)
        except TypeError:
            return msgpack.unpackb(
                data, ext_hook=_msgpack_ext, raw=False, strict_map_key=False, object_pairs_hook=_tuple_keys
            )


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
