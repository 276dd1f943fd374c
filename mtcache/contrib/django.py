"""mtcache as a Django cache backend.

.. code-block:: python

    CACHES = {
        "default": {
            "BACKEND": "mtcache.contrib.django.MtcacheCache",
            "LOCATION": "/run/app/mtcache.sock",   # the coordinator's socket ("" or absent: MTCACHE_SOCKET,
                                                   # else the per-user default every client uses)
            "OPTIONS": {"spawn": False},           # mtcache.Client arguments
            "TIMEOUT": 300,                        # None: no expiry (mtcache.FOREVER)
        },
    }

Keys are made and checked as Django's ``BaseCache`` makes them (``KEY_PREFIX``, ``VERSION``,
``KEY_FUNCTION``, a ``CacheKeyWarning`` for keys memcached would refuse); a made key longer than
mtcache's 1,024 UTF-8 bytes is replaced by its SHA-256. Timeouts follow Django: ``None`` never
expires, ``0`` or less is not stored (``set`` deletes, ``add`` stores nothing, ``touch`` deletes).
Values are pickled, as every Django backend stores them (:class:`~mtcache.contrib._shared.PickleIntCodec`:
integers stay msgpack integers so that ``incr``/``decr`` run in Redis); ``OPTIONS={"codec":
"msgpack"}`` stores plain data only. ``get_or_set`` is mtcache's ``get_or_compute``: a missing key
is computed once across every worker and host. The async methods (``aget``, ``aset``, ...) run on
an :class:`~mtcache.AsyncClient` of the running loop, not in a thread.

Every backend object of the process with the same ``LOCATION`` and ``OPTIONS`` shares one client
(Django builds one backend per thread). ``clear()`` empties the coordinator's whole namespace,
whatever the ``KEY_PREFIX``, as Django's ``RedisCache`` flushes its database. ``close()``, which
Django calls after every request, keeps the client: its connections are to this host's
coordinator and cost nothing idle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

from mtcache.errors import ComputeError
from mtcache.protocol import MAX_KEY_BYTES
from mtcache.strategies import FOREVER

from ._shared import SharedClients, shared_clients

__all__ = ["MtcacheCache"]

_MISSING = object()
#: Django options of other backends that mean nothing here (L1 is bounded by the coordinator's
#: settings, Redis by its maxmemory policy): refused rather than passed to Client.
_NOT_HERE = ("MAX_ENTRIES", "CULL_FREQUENCY")


def _stored_key(key: str) -> str:
    """The key mtcache stores ``key`` under: itself, or its SHA-256 if it is longer than mtcache allows."""
    if len(key) * 4 <= MAX_KEY_BYTES or len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES:
        return key
    return "django-sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _cause(exc: ComputeError) -> BaseException:
    """What ``get_or_set``'s callable raised in this process (Django callers catch their own
    exceptions), else the ComputeError itself (it failed in another worker)."""
    return exc.__cause__ if isinstance(exc.__cause__, Exception) else exc


class MtcacheCache(BaseCache):
    """A Django cache backend on mtcache (see the module docstring).

    :param server: ``LOCATION``: the coordinator's socket path; empty for mtcache's default.
    :param params: the ``CACHES`` entry; ``OPTIONS`` are :class:`mtcache.Client` arguments.
    :raises ImproperlyConfigured: ``LOCATION`` is not a path, or ``OPTIONS`` holds
        ``MAX_ENTRIES``/``CULL_FREQUENCY``, or something ``Client`` refuses.
    """

    def __init__(self, server: str | None, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        if server is not None and not isinstance(server, str):
            raise ImproperlyConfigured(f"mtcache's LOCATION is the coordinator's socket path (a str), "
                                       f"not {type(server).__name__}: {server!r}")
        options = dict(params.get("OPTIONS") or {})
        unused = [name for name in _NOT_HERE if name in options]
        if unused:
            raise ImproperlyConfigured(
                f"mtcache's OPTIONS are mtcache.Client arguments; {', '.join(unused)} do not apply "
                "(the coordinator bounds L1 with MTCACHE_L1_CAPACITY/MTCACHE_L1_MAX_BYTES, Redis its maxmemory)")
        try:
            self._clients: SharedClients = shared_clients(server or None, options)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"mtcache's OPTIONS: {exc}") from exc

    # -- keys and timeouts ----------------------------------------------------------------------

    def _key(self, key: Any, version: int | None) -> str:
        return _stored_key(self.make_and_validate_key(key, version=version))

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> float | None:
        """Seconds to keep a value: ``None`` for no expiry, ``0`` for "do not store"."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else max(0.0, float(timeout))

    def _ttl(self, timeout: Any) -> float:
        """mtcache's TTL for ``timeout``: FOREVER, seconds, or 0 (do not store)."""
        seconds = self.get_backend_timeout(timeout)
        return FOREVER if seconds is None else seconds

    # -- the sync API ---------------------------------------------------------------------------

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Store ``value`` if ``key`` has no live value (decided in Redis, across hosts); True if stored
        (with a timeout of 0 or less: True if the key was free, and nothing is stored)."""
        key, ttl = self._key(key, version), self._ttl(timeout)
        client = self._clients.sync
        if ttl <= 0:
            return not client.exists(key)
        return client.add(key, value, ttl=ttl)

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """The value of ``key`` (a stored ``None`` included), or ``default``."""
        value = self._clients.sync.get(self._key(key, version), _MISSING)
        return default if value is _MISSING else value

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        """Store ``value`` (a timeout of 0 or less deletes ``key`` instead)."""
        key, ttl = self._key(key, version), self._ttl(timeout)
        if ttl <= 0:
            self._clients.sync.delete(key)
        else:
            self._clients.sync.set(key, value, ttl=ttl)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Give a live value a new timeout (0 or less deletes it); True if there was one."""
        key, ttl = self._key(key, version), self._ttl(timeout)
        if ttl <= 0:
            return self._clients.sync.delete(key)
        return self._clients.sync.touch(key, ttl=ttl)

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Remove ``key`` from every tier and host; True if some tier held it."""
        return self._clients.sync.delete(self._key(key, version))

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """The values of ``keys`` that are there, in one round trip."""
        made = {self._key(key, version): key for key in keys}
        if not made:
            return {}
        found = self._clients.sync.get_many(made)
        return {made[key]: value for key, value in found.items()}

    def get_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> Any:
        """The value of ``key``; if missing, ``default`` (called if callable) stored and returned,
        computed once across every worker and host (``get_or_compute``). What the callable raises
        reaches the caller computing it; callers that waited for it get a ``ComputeError``."""
        ttl = self._ttl(timeout)
        if ttl <= 0:
            return super().get_or_set(key, default, timeout=timeout, version=version)
        fn: Callable[[], Any] = default if callable(default) else (lambda: default)
        try:
            return self._clients.sync.get_or_compute(self._key(key, version), fn, ttl=ttl)
        except ComputeError as exc:
            raise _cause(exc) from None

    def has_key(self, key: Any, version: int | None = None) -> bool:
        """Whether ``key`` has a live value."""
        return self._clients.sync.exists(self._key(key, version))

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        """Add ``delta`` to the integer under ``key``, atomically in Redis; the new value.

        :raises ValueError: ``key`` has no live value (as Django's backends raise).
        :raises TypeError: the value is not an integer.
        :raises mtcache.CacheError: the coordinator or Redis did not answer (the count cannot be kept).
        """
        key = self._key(key, version)
        client = self._clients.sync
        if not client.exists(key):
            raise ValueError(f"Key '{key}' not found")
        return client.incr(key, delta)

    def set_many(self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: int | None = None) -> list[Any]:
        """Store every item in one round trip; the keys that were not stored (all of them when the
        write was not acknowledged, none otherwise)."""
        made = {self._key(key, version): value for key, value in data.items()}
        if not made:
            return []
        ttl = self._ttl(timeout)
        if ttl <= 0:
            self._clients.sync.delete_many(made)
            return []
        return [] if self._clients.sync.set_many(made, ttl=ttl) else list(data)

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Remove every key, in one round trip."""
        made = [self._key(key, version) for key in keys]
        if made:
            self._clients.sync.delete_many(made)

    def clear(self) -> None:
        """Empty the coordinator's namespace in every tier and on every host (every alias and
        ``KEY_PREFIX`` sharing it included)."""
        self._clients.sync.clear()

    def close(self, **kwargs: Any) -> None:
        """Nothing to do: Django calls this after every request, and the shared client keeps its
        connections to this host's coordinator."""

    # -- the async API, on the running loop's AsyncClient ---------------------------------------

    async def aadd(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """See :meth:`add`."""
        key, ttl = self._key(key, version), self._ttl(timeout)
        client = await self._clients.for_loop()
        if ttl <= 0:
            return not await client.exists(key)
        return await client.add(key, value, ttl=ttl)

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """See :meth:`get`."""
        key = self._key(key, version)
        value = await (await self._clients.for_loop()).get(key, _MISSING)
        return default if value is _MISSING else value

    async def aset(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        """See :meth:`set`."""
        key, ttl = self._key(key, version), self._ttl(timeout)
        client = await self._clients.for_loop()
        if ttl <= 0:
            await client.delete(key)
        else:
            await client.set(key, value, ttl=ttl)

    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """See :meth:`touch`."""
        key, ttl = self._key(key, version), self._ttl(timeout)
        client = await self._clients.for_loop()
        if ttl <= 0:
            return await client.delete(key)
        return await client.touch(key, ttl=ttl)

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        """See :meth:`delete`."""
        key = self._key(key, version)
        return await (await self._clients.for_loop()).delete(key)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """See :meth:`get_many`."""
        made = {self._key(key, version): key for key in keys}
        if not made:
            return {}
        found = await (await self._clients.for_loop()).get_many(made)
        return {made[key]: value for key, value in found.items()}

    async def aget_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT,
                          version: int | None = None) -> Any:
        """See :meth:`get_or_set` (a coroutine function as ``default`` is awaited)."""
        ttl = self._ttl(timeout)
        if ttl <= 0:
            return await super().aget_or_set(key, default, timeout=timeout, version=version)
        fn: Callable[[], Any] = default if callable(default) else (lambda: default)
        key = self._key(key, version)
        try:
            return await (await self._clients.for_loop()).get_or_compute(key, fn, ttl=ttl)
        except ComputeError as exc:
            raise _cause(exc) from None

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        """See :meth:`has_key`."""
        key = self._key(key, version)
        return await (await self._clients.for_loop()).exists(key)

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        """See :meth:`incr`."""
        key = self._key(key, version)
        client = await self._clients.for_loop()
        if not await client.exists(key):
            raise ValueError(f"Key '{key}' not found")
        return await client.incr(key, delta)

    async def aset_many(self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT,
                        version: int | None = None) -> list[Any]:
        """See :meth:`set_many`."""
        made = {self._key(key, version): value for key, value in data.items()}
        if not made:
            return []
        ttl = self._ttl(timeout)
        client = await self._clients.for_loop()
        if ttl <= 0:
            await client.delete_many(made)
            return []
        return [] if await client.set_many(made, ttl=ttl) else list(data)

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """See :meth:`delete_many`."""
        made = [self._key(key, version) for key in keys]
        if made:
            await (await self._clients.for_loop()).delete_many(made)

    async def aclear(self) -> None:
        """See :meth:`clear`."""
        await (await self._clients.for_loop()).clear()

    async def aclose(self, **kwargs: Any) -> None:
        """See :meth:`close` (the loop's client is closed when the loop shuts down)."""
