"""What ``get_or_compute`` does when the source is slow or fails: fail-safe, soft and hard
timeouts, eager refresh, jitter, and whether ``None`` is cached.

A client holds the defaults (its constructor's arguments); each call may override any of
them (``None`` in a call means "the client's default"; ``0`` turns a duration off).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace
from typing import Any

from mtcache.protocol import check_tags

__all__ = ["Policy"]


def _seconds(name: str, value: object, *, zero: bool = True) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (value >= 0 if zero else value > 0) or not value < math.inf:
        raise ValueError(f"{name} must be a {'non-negative' if zero else 'positive'} finite number of seconds, "
                         f"got {value!r}")
    return float(value)


def _fraction(name: str, value: object, *, low_open: bool) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a fraction, got {type(value).__name__}")
    if not (0 < value < 1 if low_open else 0 <= value < 1):
        raise ValueError(f"{name} must be a fraction {'between 0 and 1' if low_open else 'in [0, 1)'}, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Policy:
    """How a ``get_or_compute`` call treats its source.

    :param fail_safe: seconds a value stays usable after its TTL when the source fails (it raises,
        passes ``hard_timeout``, or the wait for another worker's computation fails): the caller
        gets the stale value instead of the error. None or 0: off.
    :param fail_safe_throttle: seconds a stale value served by fail-safe counts as fresh again, on
        every worker and host, so a dead source is not asked again meanwhile.
    :param soft_timeout: with a stale value at hand, the caller gets it after this many seconds,
        and the computation goes on in the background and fills every tier when it ends.
    :param hard_timeout: the computation is abandoned after this many seconds: the stale value if
        there is one, else ``CacheTimeout``.
    :param eager_refresh: a fraction of the TTL: the first hit after it starts one refresh in the
        background (one per key on every host); callers keep getting the current value.
    :param jitter: each stored TTL is shortened by up to this fraction, so keys written together
        do not expire together.
    :param cache_none: False: a ``None`` result is handed to the callers waiting for it but not
        cached.
    :param tags: the tags the computed value carries (see ``invalidate_tags``).
    """

    fail_safe: float | None = None
    fail_safe_throttle: float = 30.0
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    eager_refresh: float | None = None
    jitter: float | None = None
    cache_none: bool = True
    tags: tuple[str, ...] = ()
    #: the call itself asked for fail-safe (not only the client's default): only then may a
    #: near copy no coordinator vouches for be served when the source fails
    explicit_fail_safe: bool = False

    def __post_init__(self) -> None:
        _seconds("fail_safe", self.fail_safe)
        _seconds("fail_safe_throttle", self.fail_safe_throttle, zero=False)
        _seconds("soft_timeout", self.soft_timeout, zero=False)
        _seconds("hard_timeout", self.hard_timeout, zero=False)
        _fraction("eager_refresh", self.eager_refresh, low_open=True)
        _fraction("jitter", self.jitter, low_open=False)
        check_tags(self.tags)
        if not isinstance(self.cache_none, bool):
            raise TypeError(f"cache_none must be a bool, got {type(self.cache_none).__name__}")
        if self.soft_timeout and self.hard_timeout and self.soft_timeout >= self.hard_timeout:
            raise ValueError(f"soft_timeout ({self.soft_timeout:g} s) must be shorter than hard_timeout "
                             f"({self.hard_timeout:g} s)")

    def with_call(self, **given: Any) -> Policy:
        """This policy with a call's arguments applied (``None``: keep this policy's).

        :raises TypeError: an unknown argument, or one of the wrong type.
        :raises ValueError: an argument out of range.
        """
        unknown = given.keys() - _CALL_NAMES
        if unknown:
            raise TypeError(f"unknown get_or_compute argument(s): {', '.join(sorted(unknown))}")
        changes = {name: value for name, value in given.items() if value is not None}
        if not changes:  # the usual call: this policy as it is (on every hit, so kept cheap)
            return self
        if changes.get("fail_safe"):
            changes["explicit_fail_safe"] = True
        return replace(self, **changes)

    @property
    def stale_for(self) -> float:
        """Seconds a computed value is kept past its TTL (0: fail-safe off)."""
        return self.fail_safe or 0.0

    def ttl(self, seconds: float | None) -> float | None:
        """``seconds`` shortened at random by up to ``jitter`` (not a FOREVER or a default TTL)."""
        if not self.jitter or seconds is None or seconds == math.inf:
            return seconds
        return seconds * (1.0 - self.jitter * random.random())


#: the arguments :meth:`Policy.with_call` takes
_CALL_NAMES = frozenset(f.name for f in fields(Policy)) - {"explicit_fail_safe"}
