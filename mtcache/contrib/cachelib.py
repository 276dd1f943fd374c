"""mtcache as a ``cachelib.BaseCache`` (the cache interface Flask-Caching and Flask-Session use).

.. code-block:: python

    from mtcache.contrib.cachelib import MtcacheCache

    cache = MtcacheCache(default_timeout=300, key_prefix="myapp:", socket_path="/run/app/mtcache.sock",
                         spawn=False)

Timeouts follow cachelib: ``None`` is ``default_timeout``, ``0`` never expires (``mtcache.FOREVER``),
a negative one expires at once (nothing is stored). Values are pickled, as cachelib's backends
store them, except integers, kept as msgpack integers so that ``inc``/``dec`` run in Redis,
atomic on every host (:class:`~mtcache.contrib._shared.PickleIntCodec`; ``codec="msgpack"``
stores plain data only). A key longer than mtcache's 1,024 UTF-8 bytes is stored under its
SHA-256. Every instance of the process with the same client arguments shares one client.
``clear()`` empties the coordinator's whole namespace, whatever the ``key_prefix``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import cachelib

from mtcache.errors import CacheError
from mtcache.protocol import MAX_KEY_BYTES
from mtcache.strategies import FOREVER

from ._shared import SharedClients, shared_clients

__all__ = ["MtcacheCache"]

T = TypeVar("T")


class MtcacheCache(cachelib.BaseCache):
    """A cachelib cache on mtcache (see the module docstring).

    :param default_timeout: seconds (or a timedelta) for a ``set`` without a timeout; 0: no expiry.
    :param key_prefix: put before every key (several apps can share one coordinator).
    :param ignore_delete_many_errors: cachelib's option (``delete_many`` never fails here: an
        acknowledged delete removes every key on every tier).
    :param client_kwargs: :class:`mtcache.Client` arguments (``socket_path``, ``namespace``,
        ``spawn``, ``codec``, ...).
    :raises TypeError, ValueError: an argument is of the wrong type or out of range.
    """

    def __init__(
        self,
        default_timeout: int | dt.timedelta = 300,
        key_prefix: str = "",
        *,
        ignore_delete_many_errors: bool = True,
        **client_kwargs: Any,
    ) -> None:
        super().__init__(default_timeout, ignore_delete_many_errors=ignore_delete_many_errors)
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a str, not {type(key_prefix).__name__}")
        self.key_prefix = key_prefix
        socket_path = client_kwargs.pop("socket_path", None)
        self._clients: SharedClients = shared_clients(socket_path, client_kwargs)

    def _key(self, key: str) -> str:
        full = self.key_prefix + key
        if len(full) * 4 <= MAX_KEY_BYTES or len(full.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES:
            return full
        return "cachelib-sha256:" + hashlib.sha256(full.encode("utf-8", "surrogatepass")).hexdigest()

    def _ttl(self, timeout: int | float | dt.timedelta | None) -> float:
        """mtcache's TTL: FOREVER for 0, else seconds (negative: expired at once)."""
        if timeout is None:
            seconds: float = self.default_timeout
        elif isinstance(timeout, dt.timedelta):
            seconds = timeout.total_seconds()
        else:
            seconds = float(timeout)
        return FOREVER if seconds == 0 else seconds

    def get(self, key: str) -> Any:
        """The value of ``key``, or None."""
        return self._clients.sync.get(self._key(key))

    def delete(self, key: str) -> bool:
        """Remove ``key`` from every tier and host; whether some tier held it."""
        return self._clients.sync.delete(self._key(key))

    def get_many(self, *keys: str) -> list[Any]:
        """The values of ``keys`` (None for a missing one), in one round trip."""
        made = [self._key(key) for key in keys]
        if not made:
            return []
        found = self._clients.sync.get_many(made)
        return [found.get(key) for key in made]

    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        """Store ``value``; False if the coordinator did not acknowledge it.

        :raises pickle.PickleError, TypeError: ``value`` cannot be pickled (as cachelib's backends raise).
        """
        ttl = self._ttl(timeout)
        if ttl < 0:
            self._clients.sync.delete(self._key(key))
            return True
        return self._clients.sync.set(self._key(key), value, ttl=ttl)

    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        """Store ``value`` if ``key`` has no live value (decided in Redis, across hosts); whether it did."""
        ttl = self._ttl(timeout)
        if ttl < 0:
            return not self._clients.sync.exists(self._key(key))
        return self._clients.sync.add(self._key(key), value, ttl=ttl)

    def set_many(self, mapping: dict[str, Any], timeout: int | dt.timedelta | None = None) -> list[Any]:
        """Store every item in one round trip; the keys stored (all, or none if not acknowledged)."""
        if not mapping:
            return []
        ttl = self._ttl(timeout)
        made = {self._key(key): value for key, value in mapping.items()}
        if ttl < 0:
            self._clients.sync.delete_many(made)
            return list(mapping)
        return list(mapping) if self._clients.sync.set_many(made, ttl=ttl) else []

    def delete_many(self, *keys: str) -> list[Any]:
        """Remove every key in one round trip; the keys now absent (all of them)."""
        if keys:
            self._clients.sync.delete_many([self._key(key) for key in keys])
        return list(keys)

    def has(self, key: str) -> bool:
        """Whether ``key`` has a live value."""
        return self._clients.sync.exists(self._key(key))

    def clear(self) -> bool:
        """Empty the coordinator's namespace in every tier and on every host (every prefix in it)."""
        self._clients.sync.clear()
        return True

    def get_or_compute(self, key: str, fn: Callable[[], T], timeout: int | dt.timedelta | None = None) -> T:
        """The value of ``key``; on a miss, ``fn()`` computed once across every worker and host and
        stored for ``timeout`` (mtcache's ``get_or_compute``; cachelib has no such call, and
        Flask-Caching's ``cached``/``memoize`` get and then set, so each worker that misses computes).

        :raises mtcache.ComputeError: ``fn`` raised (here or in the worker computing it).
        """
        ttl = self._ttl(timeout)
        if ttl < 0:
            return fn()
        return self._clients.sync.get_or_compute(self._key(key), fn, ttl=ttl)

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Add ``delta`` atomically in Redis (a missing key counts from 0); None if the coordinator
        or Redis did not answer.

        :raises TypeError: the value is not an integer.
        """
        try:
            return self._clients.sync.incr(self._key(key), delta)
        except CacheError:
            return None

    def dec(self, key: str, delta: int = 1) -> int | None:
        """:meth:`inc` by ``-delta``."""
        return self.inc(key, -delta)
