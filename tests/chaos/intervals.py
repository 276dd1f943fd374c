"""Interval helpers for the checker: the union of fault windows, and range maxima."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

from tests.chaos.history import Fault


class Timeline:
    """The union of some fault windows, for "is one active at t / between a and b" questions."""

    def __init__(self, faults: Iterable[Fault]) -> None:
        merged: list[list[int]] = []
        for f in sorted(faults, key=lambda f: f.start):
            if merged and f.start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], f.end)
            else:
                merged.append([f.start, f.end])
        self.starts = [m[0] for m in merged]
        self.ends = [m[1] for m in merged]

    def intersects(self, a: int, b: int) -> bool:
        """Some window overlaps ``[a, b]``."""
        i = bisect_right(self.starts, b) - 1
        return i >= 0 and self.ends[i] >= a

    def active(self, t: int) -> bool:
        """Some window covers ``t``."""
        return self.intersects(t, t)

    def end_of_overlap(self, a: int, b: int) -> int | None:
        """The latest end of a window that overlaps ``[a, b]``, or None if none does."""
        i = bisect_right(self.starts, b) - 1
        return self.ends[i] if i >= 0 and self.ends[i] >= a else None

    def last_end_before(self, t: int) -> int | None:
        """The end of the latest window over before ``t``."""
        i = bisect_left(self.ends, t) - 1
        return self.ends[i] if i >= 0 else None


class RangeMax:
    """Maximum of ``values[lo:hi]`` in O(1) after an O(n log n) build (sparse table)."""

    def __init__(self, values: list[int]) -> None:
        self.levels = [values]
        width = 1
        while 2 * width <= len(values):
            prev = self.levels[-1]
            self.levels.append([max(prev[i], prev[i + width]) for i in range(len(values) - 2 * width + 1)])
            width *= 2

    def query(self, lo: int, hi: int) -> int:
        """``max(values[lo:hi])``; ``hi > lo``."""
        k = (hi - lo).bit_length() - 1
        level = self.levels[k]
        return max(level[lo], level[hi - (1 << k)])
