"""Stamps: the hybrid logical clock that orders every write, and its form in Redis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtcache.coordinator.stamps import HybridClock, format_stamp, parse_stamp, stamp_ms


def test_stamps_follow_the_wall_clock_and_never_go_back() -> None:
    wall = [5_000_000]
    clock = HybridClock(node=3, wall_us=lambda: wall[0])
    first = clock.now()
    assert stamp_ms(first) == 5_000
    second = clock.now()  # the clock did not move: the stamp still does
    wall[0] = 4_000_000  # the wall clock steps back (NTP)
    third = clock.now()
    assert first < second < third
    wall[0] = 9_000_000
    assert stamp_ms(clock.now()) == 9_000


def test_a_stamp_seen_from_another_host_makes_later_stamps_larger() -> None:
    slow = HybridClock(node=1, wall_us=lambda: 1_000_000)  # its clock lags
    fast = HybridClock(node=2, wall_us=lambda: 9_000_000)
    theirs = fast.now()
    assert slow.now() < theirs
    slow.observe(theirs)
    assert slow.now() > theirs
    slow.observe_ms(20_000)
    assert stamp_ms(slow.now()) >= 20_000


def test_two_clocks_never_issue_equal_stamps() -> None:
    a, b = HybridClock(node=1, wall_us=lambda: 7), HybridClock(node=2, wall_us=lambda: 7)
    assert a.now() != b.now()


@pytest.mark.parametrize("node", [0, -1, 1 << 31])
def test_node_must_fit_31_bits(node: int) -> None:
    with pytest.raises(ValueError, match="node"):
        HybridClock(node)


_stamps = st.builds(lambda hlc, node: hlc << 32 | node, st.integers(0, (1 << 53) - 1), st.integers(0, (1 << 32) - 1))


@given(_stamps, _stamps)
def test_the_redis_form_round_trips_and_sorts_like_the_stamp(one: int, two: int) -> None:
    digits = format_stamp(one)
    assert len(digits) == 26 and digits.isdigit()
    assert parse_stamp(digits) == one
    assert (digits < format_stamp(two)) is (one < two)


@pytest.mark.parametrize("digits", [b"", b"1" * 25, b"1" * 27, b"x" * 26, b"9" * 16 + b"0" * 10, b"0" * 16 + b"9" * 10])
def test_parse_refuses_what_is_not_a_stamp(digits: bytes) -> None:
    with pytest.raises(ValueError, match="stamp"):
        parse_stamp(digits)
