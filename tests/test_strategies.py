"""CacheStrategy presets, custom TTLs and TTL validation, from the outside."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import timedelta

import pytest

from mtcache.strategies import FOREVER, CacheStrategy, validate_ttl


@pytest.mark.parametrize(
    ("strategy", "name", "ttl"),
    [
        (CacheStrategy.REALTIME, "realtime", 10.0),
        (CacheStrategy.SHORT_TERM, "short_term", 300.0),
        (CacheStrategy.MEDIUM_TERM, "medium_term", 3600.0),
        (CacheStrategy.LONG_TERM, "long_term", 10800.0),
        (CacheStrategy.DEFAULT, "default", 300.0),
    ],
)
def test_presets(strategy: CacheStrategy, name: str, ttl: float) -> None:
    assert strategy.name == name
    assert strategy.ttl == ttl
    assert isinstance(strategy, CacheStrategy)


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [
        (7, 7.0),
        (2.5, 2.5),
        (0.001, 0.001),
        (timedelta(minutes=2), 120.0),
        (timedelta(hours=1, milliseconds=500), 3600.5),
    ],
)
def test_custom_accepts_int_float_timedelta_and_gives_float_seconds(ttl: float | timedelta, seconds: float) -> None:
    strategy = CacheStrategy.custom(ttl)
    assert strategy.name == "custom"
    assert strategy.ttl == seconds
    assert type(strategy.ttl) is float


INVALID_TTLS = [
    (0, ValueError),
    (0.0, ValueError),
    (-1, ValueError),
    (-0.5, ValueError),
    (math.nan, ValueError),
    (-math.inf, ValueError),
    (timedelta(0), ValueError),
    (timedelta(seconds=-5), ValueError),
    ("10", TypeError),
    (None, TypeError),
    (True, TypeError),
    (False, TypeError),
    ([10], TypeError),
]


@pytest.mark.parametrize(("ttl", "exc"), INVALID_TTLS)
def test_custom_rejects_invalid_ttl_naming_it(ttl: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=re.escape(repr(ttl))):
        CacheStrategy.custom(ttl)  # type: ignore[arg-type]


@pytest.mark.parametrize(("ttl", "exc"), INVALID_TTLS)
def test_direct_construction_rejects_invalid_ttl(ttl: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        CacheStrategy("mine", ttl)  # type: ignore[arg-type]


def test_validate_ttl_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="lease_timeout"):
        validate_ttl(-1, what="lease_timeout")
    with pytest.raises(TypeError, match=r"lease_timeout.*str"):
        validate_ttl("1", what="lease_timeout")


def test_validate_ttl_returns_float_seconds() -> None:
    assert validate_ttl(3) == 3.0
    assert type(validate_ttl(3)) is float
    assert validate_ttl(timedelta(seconds=1.5)) == 1.5


def test_strategy_is_frozen_and_compares_by_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CacheStrategy.REALTIME.ttl = 1.0  # type: ignore[misc]
    assert CacheStrategy.custom(10) == CacheStrategy("custom", 10.0)
    assert CacheStrategy.SHORT_TERM != CacheStrategy.DEFAULT  # same ttl, different name


def test_huge_int_ttl_raises_value_error() -> None:
    with pytest.raises(ValueError):
        validate_ttl(10**400)


def test_direct_construction_with_timedelta_gives_seconds() -> None:
    strategy = CacheStrategy("mine", timedelta(seconds=5))  # type: ignore[arg-type]
    assert strategy.ttl == 5.0


def test_forever_is_a_ttl_and_means_no_expiry() -> None:
    assert validate_ttl(FOREVER) == math.inf
    assert CacheStrategy.custom(FOREVER).ttl == math.inf
    with pytest.raises(ValueError, match="finite"):
        validate_ttl(FOREVER, what="lease_ttl", forever=False)
