"""mtcache: a multi-tier cache for multi-process Python servers."""

from mtcache.codec import Codec, JsonCodec, MsgpackCodec, PickleCodec
from mtcache.config import Settings
from mtcache.errors import (
    CacheError,
    CacheTimeout,
    ComputeError,
    CoordinatorUnavailable,
    L2Error,
    ProtocolError,
)
from mtcache.strategies import CacheStrategy

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "CacheStrategy",
    "CacheTimeout",
    "Codec",
    "ComputeError",
    "CoordinatorUnavailable",
    "JsonCodec",
    "L2Error",
    "MsgpackCodec",
    "PickleCodec",
    "ProtocolError",
    "Settings",
    "__version__",
]
