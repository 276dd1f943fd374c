"""``@cache.cached(...)``: a function's results cached with ``get_or_compute`` (issue 13).

The wrapper keys each call by the function's arguments. The default key is
``"<module>.<qualname>:"`` followed by the bound arguments (defaults applied), each
written as ``name=value`` in an encoding that depends only on the values: keyword
order, positional or keyword passing, and dict or set order do not change it, and
values of different types (``1``, ``1.0``, ``True``, ``"1"``) never share one.
"""

from __future__ import annotations

import datetime
import enum
import functools
import hashlib
import inspect
import string
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Protocol, cast

from mtcache.protocol import MAX_KEY_BYTES, check_key
from mtcache.strategies import CacheStrategy

from ._core import ClientCore

__all__ = ["CachedFunction", "cached"]

#: what the default key can encode (also named in its error message)
_SUPPORTED = (
    "None, bool, int, float, str, bytes, tuple, list, dict, set, frozenset, datetime, date, Decimal, UUID, Enum"
)
#: get_or_compute's parameters that are not policy keywords
_NOT_POLICY = frozenset({"key", "fn", "strategy", "ttl", "tags"})


class CachedFunction(Protocol):
    """What :func:`cached` returns: the function, plus its key and invalidation."""

    __wrapped__: Callable[..., Any]
    __name__: str
    __qualname__: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The cached result of the function for these arguments."""

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of a call with these arguments (no I/O)."""

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        """Delete the cached result of a call with these arguments: ``client.delete(key)``'s
        result (a coroutine on an ``AsyncClient``)."""


class _Unencodable(TypeError):
    """A value the default key cannot encode (``kind``: its type's name)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _encode(value: Any, active: set[int]) -> str:
    """``value`` written so that equal values of the same types give the same text, and
    values of different types different texts. ``active``: ids of the containers being
    encoded (a container holding itself cannot be encoded).

    :raises _Unencodable: ``value`` is, or holds, a value of an unsupported type.
    """
    if value is None:
        return "None"
    # Enum before int and str (IntEnum, StrEnum), bool before int, datetime before date:
    # each is a subclass of the next
    if isinstance(value, enum.Enum):
        cls = type(value)
        return f"{cls.__module__}.{cls.__qualname__}.{value.name}"
    if isinstance(value, bool):
        return "True" if value else "False"
    # the base types' own reprs: a subclass's __repr__ may vary from run to run
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, str):
        return str.__repr__(value)
    if isinstance(value, bytes):
        return bytes.__repr__(value)
    if isinstance(value, datetime.datetime):
        return f"datetime({value.isoformat()})"
    if isinstance(value, datetime.date):
        return f"date({value.isoformat()})"
    if isinstance(value, Decimal):
        return f"Decimal({value})"
    if isinstance(value, uuid.UUID):
        return f"UUID({value})"
    if not isinstance(value, (tuple, list, dict, set, frozenset)):
        raise _Unencodable(type(value).__qualname__)
    if id(value) in active:
        raise _Unencodable(f"{type(value).__name__} that contains itself")
    active.add(id(value))
    try:
        if isinstance(value, dict):
            items = sorted(f"{_encode(k, active)}:{_encode(v, active)}" for k, v in value.items())
            return "{" + ",".join(items) + "}"
        parts = [_encode(item, active) for item in value]
        if isinstance(value, tuple):
            return "(" + ",".join(parts) + ")"
        if isinstance(value, list):
            return "[" + ",".join(parts) + "]"
        return f"{type(value).__name__}{{{','.join(sorted(parts))}}}"
    finally:
        active.discard(id(value))


def _default_key(prefix: str, arguments: dict[str, Any], skip: str | None) -> str:
    """``prefix`` and the encoded arguments (but ``skip``); a blake2b digest of the arguments
    instead when the whole would pass the key length limit.

    :raises TypeError: an argument cannot be encoded (named with its type).
    """
    parts = []
    for name, value in arguments.items():
        if name == skip:
            continue
        try:
            parts.append(f"{name}={_encode(value, set())}")
        except _Unencodable as exc:
            raise TypeError(
                f"cannot build a cache key from parameter {name!r} of {prefix[:-1]}: it holds a value of type "
                f"{exc.kind}; the default key encodes {_SUPPORTED}: pass key= to cached() for other arguments"
            ) from None
    encoded = ",".join(parts)
    key = prefix + encoded
    if len(key.encode("utf-8")) <= MAX_KEY_BYTES:
        return key
    # '#' cannot start a readable argument part (a parameter name does)
    return prefix + "#" + hashlib.blake2b(encoded.encode("utf-8"), digest_size=16).hexdigest()


def _check_format(template: str, sig: inspect.Signature) -> None:
    """Check that every field of ``template`` (nested ones in format specs too) starts with
    a parameter name of ``sig``.

    :raises TypeError: a field names no parameter, or is positional (``{}``, ``{0}``).
    :raises ValueError: ``template`` is not a valid format string.
    """
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise TypeError(f"key format {template!r}: fields must name parameters, not positions ({{{field}}})")
        if root not in sig.parameters:
            raise TypeError(
                f"key format {template!r} names {root!r}, which is not a parameter of the function "
                f"(parameters: {', '.join(sig.parameters) or 'none'})"
            )
        if spec:
            _check_format(spec, sig)


def _first_parameter(fn: Callable[..., Any]) -> str | None:
    """The name of ``fn``'s first parameter (None: none, or no signature)."""
    try:
        return next(iter(inspect.signature(fn).parameters), None)
    except (TypeError, ValueError):
        return None


def _key_maker(
    fn: Callable[..., Any], key: str | Callable[..., str] | None
) -> Callable[[tuple[Any, ...], dict[str, Any]], str]:
    """What turns a call's arguments into its cache key, for :func:`cached`.

    :raises TypeError: ``key`` names no parameter, or there is no signature or name to key by.
    :raises ValueError: ``key`` is not a valid format string.
    """
    if callable(key):
        custom = key

        def from_callable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            made = custom(*args, **kwargs)
            if not isinstance(made, str):
                raise TypeError(f"the key callable {custom!r} returned a {type(made).__name__}, not a str")
            return check_key(made)

        return from_callable

    try:
        sig = inspect.signature(fn)
    except ValueError as exc:
        raise TypeError(f"cannot read the signature of {fn!r} ({exc}): pass a callable key=") from None

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    if isinstance(key, str):
        _check_format(key, sig)
        template = key
        return lambda args, kwargs: check_key(template.format(**bind(args, kwargs)))
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        raise TypeError(f"{fn!r} has no __qualname__ to build a default key from: pass key= to cached()")
    prefix = f"{getattr(fn, '__module__', None)}.{qualname}:"
    first = _first_parameter(fn)
    # a method's instance or class is no part of the default key
    skip = first if first in ("self", "cls") else None
    return lambda args, kwargs: check_key(_default_key(prefix, bind(args, kwargs), skip))


class _Method:
    """A cached method (a first parameter named ``self``): through an instance it is bound like a
    method, and so are its ``key_for`` and ``invalidate`` (``service.lookup.invalidate(42)``);
    through the class all three take the instance first (``Service.lookup.invalidate(service, 42)``).
    A bound one is a :class:`functools.partial` of the wrapper, so ``inspect.iscoroutinefunction``
    still sees a coroutine function through it."""

    def __init__(self, wrapper: Callable[..., Any]) -> None:
        self._wrapper = wrapper
        functools.update_wrapper(self, wrapper)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapper(*args, **kwargs)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        bound = functools.partial(self._wrapper, instance)
        bound.key_for = functools.partial(self.key_for, instance)  # type: ignore[attr-defined]
        bound.invalidate = functools.partial(self.invalidate, instance)  # type: ignore[attr-defined]
        return bound


def cached(
    client: Any,
    ttl: float | datetime.timedelta | None = None,
    *,
    strategy: CacheStrategy | None = None,
    key: str | Callable[..., str] | None = None,
    tags: Iterable[str] = (),
    **policy: Any,
) -> Callable[[Callable[..., Any]], CachedFunction]:
    """A decorator caching a function's results in ``client`` with ``get_or_compute``.

    A ``Client`` takes plain functions, an ``AsyncClient`` coroutine functions. Each call
    is ``client.get_or_compute(key, lambda: fn(*args, **kwargs), ttl=ttl, strategy=strategy,
    **policy)``: computed once per key across every worker. The wrapper keeps ``fn`` as
    ``__wrapped__`` and adds ``key_for(*args, **kwargs)`` (the key, no I/O) and
    ``invalidate(*args, **kwargs)`` (``client.delete`` of that key; a coroutine on an
    ``AsyncClient``). On a method (a first parameter named ``self``) both are bound with it
    through an instance (``service.lookup.invalidate(42)``) and take the instance first
    through the class (``Service.lookup.invalidate(service, 42)``).

    :param client: a ``Client`` or an ``AsyncClient``.
    :param ttl, strategy: as in ``get_or_compute`` (at most one of them).
    :param key: ``None``: the function's module and qualified name, then its bound arguments
        (defaults applied; a first parameter named ``self`` or ``cls`` left out), encoded
        readably, or as a blake2b digest when that would pass the key length limit. A format
        string over parameter names (``"user:{user_id}"``, ``"{self.tenant}:{user_id}"``), or a
        callable taking the function's arguments and returning the key.
    :param tags: tags of every value the function computes (passed on only when given).
    :param policy: further ``get_or_compute`` keywords (``timeout``, ``fail_safe``, ...).
    :raises TypeError: at decoration: an unknown ``policy`` keyword, ``key`` or ``tags`` of
        the wrong type, a format field naming no parameter, a coroutine function given to a
        ``Client`` or a plain one to an ``AsyncClient``; at a call: an argument the default
        key cannot encode (named), or a key callable that returns no ``str``.
    :raises ValueError: at decoration: both ``ttl`` and ``strategy``, a bad ``ttl``, or a
        malformed format string; at a call: a key that is empty or too long.
    """
    ClientCore.ttl_for(strategy, ttl)
    if key is not None and not isinstance(key, str) and not callable(key):
        raise TypeError(f"key must be a format string or a callable, not {type(key).__name__}: {key!r}")
    accepted = inspect.signature(client.get_or_compute).parameters
    unknown = sorted(name for name in policy if name in _NOT_POLICY or name not in accepted)
    if unknown:
        allowed = sorted(set(accepted) - _NOT_POLICY)
        raise TypeError(f"unknown cached() argument(s): {', '.join(unknown)} (policy keywords: {', '.join(allowed)})")
    if isinstance(tags, (str, bytes)):
        raise TypeError(f"tags must be an iterable of str, not a single {type(tags).__name__}: {tags!r}")
    tag_tuple = tuple(tags)
    for tag in tag_tuple:
        if not isinstance(tag, str):
            raise TypeError(f"tags must be str, not {type(tag).__name__}: {tag!r}")
    options: dict[str, Any] = {"ttl": ttl, "strategy": strategy, **policy}
    if tag_tuple:
        if "tags" not in accepted:
            raise TypeError(f"{type(client).__name__}.get_or_compute does not take tags")
        options["tags"] = tag_tuple
    is_async = inspect.iscoroutinefunction(client.get_or_compute)

    def decorate(fn: Callable[..., Any]) -> CachedFunction:
        if isinstance(fn, (staticmethod, classmethod)):
            raise TypeError(f"put @{type(fn).__name__} above the cached() decorator, not below it")
        if not callable(fn):
            raise TypeError(f"cached() decorates a function, not {type(fn).__name__}: {fn!r}")
        name = getattr(fn, "__qualname__", repr(fn))
        if is_async and not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"{type(client).__name__}.cached() needs a coroutine function (async def); {name} is not one: "
                "use Client for plain functions"
            )
        if not is_async and inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"{name} is a coroutine function; {type(client).__name__}.cached() takes plain functions: "
                "use AsyncClient"
            )
        make_key = _key_maker(fn, key)

        def key_for(*args: Any, **kwargs: Any) -> str:
            return make_key(args, kwargs)

        wrapper: Callable[..., Any]
        invalidate: Callable[..., Any]
        if is_async:

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await client.get_or_compute(make_key(args, kwargs), lambda: fn(*args, **kwargs), **options)

            async def invalidate(*args: Any, **kwargs: Any) -> bool:
                return bool(await client.delete(make_key(args, kwargs)))

        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return client.get_or_compute(make_key(args, kwargs), lambda: fn(*args, **kwargs), **options)

            def invalidate(*args: Any, **kwargs: Any) -> bool:
                return bool(client.delete(make_key(args, kwargs)))

        functools.update_wrapper(wrapper, fn)
        wrapper.__dict__.update(key_for=key_for, invalidate=invalidate)
        if _first_parameter(fn) == "self":
            return cast(CachedFunction, _Method(wrapper))
        return cast(CachedFunction, wrapper)

    return decorate
