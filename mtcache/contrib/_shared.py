"""What the framework backends share: the codec they store values with, and one set of
mtcache clients per process for each configuration.

Frameworks build backend objects freely (Django one per thread and alias, Flask-Caching one per
app): each would otherwise open its own connections, near cache and shared-memory mappings. The
clients are thread-safe and fork-safe, so one :class:`SharedClients` per ``(socket, options)``
serves every backend object of the process.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
from collections.abc import AsyncGenerator, Hashable, Mapping
from typing import Any

import msgpack

from mtcache.client.aio import AsyncClient
from mtcache.client.sync import Client
from mtcache.codec import DEFAULT_MAX_BYTES, MsgpackCodec
from mtcache.config import Settings

__all__ = ["PickleIntCodec", "SharedClients", "shared_clients"]

#: Every pickle of protocol 2 and later starts with this byte; no msgpack value this codec writes does.
_PICKLE_MARK = 0x80
#: Integers written as msgpack (what Redis adds to in incr/decr); larger ones are pickled.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class PickleIntCodec:
    """The framework backends' codec: ``int`` values as msgpack integers, so that ``incr``/``decr``
    run in Redis (atomic on every host), and every other value pickled, as Django's and cachelib's
    own backends store them (so ``HttpResponse`` objects, model instances and anything picklable
    can be cached). Decoding reads both, and values that plain mtcache clients wrote with the
    default msgpack codec too.

    **Unpickling runs code chosen by whoever wrote the bytes**, as with django-redis, Django's
    ``RedisCache`` and cachelib's ``RedisCache``: anyone who can write to the coordinator or to
    Redis can run code in every worker. Pass ``codec="msgpack"`` in the backend's options to store
    plain data only.

    :param max_bytes: the largest encoding accepted (``ValueError`` past it).
    """

    name = "pickle"

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._msgpack = MsgpackCodec(max_bytes)

    def encode(self, value: Any) -> bytes:
        """``value`` as msgpack if it is a plain ``int`` that fits 64 bits, else pickled.

        :raises pickle.PickleError, TypeError, AttributeError: as :func:`pickle.dumps` raises them
            for a value it cannot pickle (what Django's and cachelib's callers expect).
        :raises ValueError: the encoding is larger than ``max_bytes``.
        """
        if type(value) is int and _INT_MIN <= value <= _INT_MAX:
            return msgpack.packb(value)
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > self.max_bytes:
            raise ValueError(f"encoded value is {len(data):,} bytes, over the limit of {self.max_bytes:,} bytes "
                             "(MTCACHE_MAX_VALUE_BYTES)")
        return data

    def decode(self, data: bytes) -> Any:
        """Unpickle a pickle; decode anything else as msgpack. Runs whatever code a pickle asks for."""
        if data[:1] and data[0] == _PICKLE_MARK:
            return pickle.loads(data)
        return self._msgpack.decode(data)


class _AwaitableFacade:
    """The async face of an in-process test double (``local=True``): its sync methods as
    coroutines, so the sync and async calls of a backend share one in-process store."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


class SharedClients:
    """The mtcache clients of one configuration: one :class:`~mtcache.Client` for the process,
    and one :class:`~mtcache.AsyncClient` per event loop (an AsyncClient serves one loop). The
    async client of a loop is closed when the loop shuts down (``asyncio.run``, asgiref and
    pytest-asyncio close loops that way), through an async generator the loop finalizes."""

    def __init__(self, socket_path: str | None, options: Mapping[str, Any]) -> None:
        self.socket_path = socket_path
        self.options = dict(options)
        if "codec" not in self.options:
            max_bytes = Settings.load(socket_path=socket_path, namespace=self.options.get("namespace")).max_value_bytes
            self.options["codec"] = PickleIntCodec(max_bytes)
        self.local = bool(self.options.get("local", False))
        self.sync: Client = Client(socket_path, **self.options)
        self._async: dict[asyncio.AbstractEventLoop, Any] = {}
        #: per loop, the async generator whose finalization closes that loop's client
        self._closers: dict[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = {}
        self._lock = threading.Lock()

    async def for_loop(self) -> AsyncClient:
        """The AsyncClient of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is not None:
            return client
        if self.local:
            facade: Any = _AwaitableFacade(self.sync)
            self._async[loop] = facade
            return facade
        with self._lock:
            for gone in [old for old in self._async if old.is_closed()]:
                # closed without shutting its async generators down: nothing can await there any more
                del self._async[gone]
                self._closers.pop(gone, None)
            client = self._async[loop] = AsyncClient(self.socket_path, **self.options)
        closer = self._closer(loop, client)
        self._closers[loop] = closer
        await closer.__anext__()  # started: the loop now knows it, and finalizes it at shutdown
        return client

    async def _closer(self, loop: asyncio.AbstractEventLoop, client: AsyncClient) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._async.get(loop) is client:
                    del self._async[loop]
                self._closers.pop(loop, None)
            await client.close()


_SHARED: dict[Hashable, SharedClients] = {}
_SHARED_LOCK = threading.Lock()


def shared_clients(socket_path: str | None, options: Mapping[str, Any]) -> SharedClients:
    """The :class:`SharedClients` of ``(socket_path, options)``, built on first use. ``options``
    are :class:`~mtcache.Client` arguments; without a ``codec``, values are stored with
    :class:`PickleIntCodec`.

    :raises TypeError, ValueError: an option is not a ``Client`` argument, or has a bad value.
    """
    try:
        key: Hashable = (socket_path, tuple(sorted(options.items())))
        hash(key)
    except TypeError:  # an unhashable option value: equal options print alike
        key = (socket_path, repr(sorted(options.items())))
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = SharedClients(socket_path, options)
        return shared
