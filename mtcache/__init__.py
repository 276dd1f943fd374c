"""mtcache: a multi-tier cache for multi-process Python servers.

``mtcache.dashboard`` (public): the renderer of ``mtcache top``, for live views of your own
(``take_sample``, ``render_dashboard``, ``Sample``), as the demo builds one."""

from mtcache import dashboard
from mtcache.client.aio import AsyncClient
from mtcache.client.sync import Client
from mtcache.codec import Codec, JsonCodec, MsgpackCodec, PickleCodec
from mtcache.config import Settings
from mtcache.errors import (
    CacheError,
    CacheTimeout,
    ComputeError,
    CoordinatorUnavailable,
    L2Error,
    ProtocolError,
    UntrustedSocket,
)
from mtcache.lifecycle import CoordinatorHandle, start_coordinator, stop_coordinator
from mtcache.stats import Health, Stats
from mtcache.strategies import FOREVER, CacheStrategy

__version__ = "0.1.0"

__all__ = [
    "FOREVER",
    "AsyncClient",
    "CacheError",
    "CacheStrategy",
    "CacheTimeout",
    "Client",
    "Codec",
    "ComputeError",
    "CoordinatorHandle",
    "CoordinatorUnavailable",
    "Health",
    "JsonCodec",
    "L2Error",
    "MsgpackCodec",
    "PickleCodec",
    "ProtocolError",
    "Settings",
    "Stats",
    "UntrustedSocket",
    "__version__",
    "dashboard",
    "start_coordinator",
    "stop_coordinator",
]
