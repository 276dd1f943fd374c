"""Cache strategies: named time-to-live presets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

__all__ = ["FOREVER", "CacheStrategy", "validate_ttl"]

#: A TTL meaning "no expiry": the value stays until it is deleted, replaced, cleared or
#: evicted (L1 by its size bounds, Redis by its ``maxmemory`` policy).
FOREVER: float = math.inf


def validate_ttl(ttl: object, *, what: str = "ttl", forever: bool = True) -> float:
    """Return ``ttl`` as a positive number of seconds: finite, or :data:`FOREVER` if
    ``forever`` allows it.

    Accepts an ``int``, a ``float`` or a ``datetime.timedelta``.

    :raises TypeError: ``ttl`` is of another type (``bool`` included).
    :raises ValueError: ``ttl`` is zero, negative, NaN, or infinite where FOREVER is not allowed.
    """
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        try:
            seconds = float(ttl)
        except OverflowError:
            raise ValueError(f"{what} must be a positive, finite duration, got {ttl!r}") from None
    else:
        raise TypeError(
            f"{what} must be seconds (int or float) or a timedelta, "
            f"not {type(ttl).__name__}: {ttl!r}"
        )
    if seconds == FOREVER and forever:
        return FOREVER
    if math.isnan(seconds) or math.isinf(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be a positive, finite duration{' or FOREVER' if forever else ''}, got {ttl!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class CacheStrategy:
    """How long a value lives in the cache.

    Use a preset (``REALTIME`` 10 s, ``SHORT_TERM`` 5 min, ``MEDIUM_TERM`` 1 h,
    ``LONG_TERM`` 3 h, ``DEFAULT`` 5 min) or :meth:`custom`. ``ttl`` is in seconds
    (or :data:`FOREVER`), and holds on every tier.
    """

    name: str
    ttl: float

    REALTIME: ClassVar[CacheStrategy]
    SHORT_TERM: ClassVar[CacheStrategy]
    MEDIUM_TERM: ClassVar[CacheStrategy]
    LONG_TERM: ClassVar[CacheStrategy]
    DEFAULT: ClassVar[CacheStrategy]

    def __post_init__(self) -> None:
        # frozen: normalise through object.__setattr__ (a timedelta becomes seconds)
        object.__setattr__(self, "ttl", validate_ttl(self.ttl))

    @classmethod
    def custom(cls, ttl: float | timedelta) -> CacheStrategy:
        """A strategy with ``ttl`` seconds (int/float) or a ``timedelta``.

        :raises TypeError: ``ttl`` is not a number or a timedelta.
        :raises ValueError: ``ttl`` is zero, negative, NaN or infinite.
        """
        return cls("custom", validate_ttl(ttl))


CacheStrategy.REALTIME = CacheStrategy("realtime", 10.0)
CacheStrategy.SHORT_TERM = CacheStrategy("short_term", 300.0)
CacheStrategy.MEDIUM_TERM = CacheStrategy("medium_term", 3600.0)
CacheStrategy.LONG_TERM = CacheStrategy("long_term", 10800.0)
CacheStrategy.DEFAULT = CacheStrategy("default", 300.0)
