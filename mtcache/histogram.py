"""Latency histograms: HDR-style log-linear buckets of microseconds, cheap to update.

A value ``v`` (whole microseconds) falls in bucket ``v`` while ``v < 16``; above, each
power of two is split into :data:`SUB_BUCKETS` equal buckets, and the bucket index
comes from ``v.bit_length()`` and the top bits of ``v``: no search, no sorting, no
float. A bucket is at most 1/8 of its lower bound wide, so a percentile read from
the buckets is within 12.5 % of the true value. Values from 2**36 µs (19 hours) on
share the last bucket.

The coordinator keeps histograms of its own tiers, workers keep histograms of their
round trips and computations and report them (:mod:`mtcache.fleet`); both travel
as sparse ``[[index, count], ...]`` lists, and adding histograms is adding counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "BUCKETS",
    "SUB_BUCKETS",
    "LatencyHistogram",
    "bucket_lower",
    "bucket_of",
    "bucket_upper",
    "merge_sparse",
    "percentile",
]

SUB_BITS = 3
#: Buckets per power of two.
SUB_BUCKETS = 1 << SUB_BITS
_TOP_BITS = 36
#: Number of buckets: every value of at most _TOP_BITS bits has its own.
BUCKETS = ((_TOP_BITS - SUB_BITS) << SUB_BITS) + SUB_BUCKETS
_LAST = BUCKETS - 1


def bucket_of(us: int) -> int:
    """The bucket of ``us`` microseconds (negative counts as 0)."""
    if us < 2 * SUB_BUCKETS:
        return us if us > 0 else 0
    shift = us.bit_length() - SUB_BITS - 1
    index = (shift << SUB_BITS) + (us >> shift)
    return index if index < _LAST else _LAST


def bucket_lower(index: int) -> int:
    """The smallest value (µs) of bucket ``index``."""
    if index < 2 * SUB_BUCKETS:
        return index
    shift = (index >> SUB_BITS) - 1
    return (SUB_BUCKETS | (index & (SUB_BUCKETS - 1))) << shift


def bucket_upper(index: int) -> int:
    """The smallest value (µs) of the next bucket: bucket ``index`` holds ``[lower, upper)``."""
    return bucket_lower(index + 1)


class LatencyHistogram:
    """Counts of durations per bucket, plus their number and sum. Not thread-safe: one
    writer (the coordinator's event loop; a client's counters are written by its threads
    as its other counters are, where a lost increment only undercounts)."""

    __slots__ = ("count", "counts", "total_us")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.total_us = 0

    def record_ns(self, ns: int) -> None:
        """Count one duration of ``ns`` nanoseconds."""
        us = ns // 1000
        self.counts[bucket_of(us)] += 1
        self.count += 1
        self.total_us += us

    def sparse(self) -> list[list[int]]:
        """The non-empty buckets as ``[[index, count], ...]`` in index order."""
        return [[i, c] for i, c in enumerate(self.counts) if c]

    def minus(self, base: LatencyHistogram | None) -> list[list[int]]:
        """:meth:`sparse` of what was counted since ``base`` (a copy taken earlier)."""
        if base is None:
            return self.sparse()
        return [[i, c - b] for i, (c, b) in enumerate(zip(self.counts, base.counts, strict=True)) if c - b > 0]

    def copy(self) -> LatencyHistogram:
        """A snapshot of this histogram."""
        other = LatencyHistogram()
        other.counts = list(self.counts)
        other.count = self.count
        other.total_us = self.total_us
        return other


def merge_sparse(into: list[int], sparse: Iterable[Sequence[int]]) -> None:
    """Add a sparse histogram to ``into`` (a list of :data:`BUCKETS` counts)."""
    for index, count in sparse:
        into[index] += count


def percentile(counts: Sequence[int] | Iterable[Sequence[int]], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) in microseconds of a histogram given as dense
    counts or sparse ``[index, count]`` pairs: the middle of the bucket holding it (the
    value itself below 16 µs). None when the histogram is empty."""
    pairs = _pairs(counts)
    total = sum(c for _, c in pairs)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in pairs:
        seen += count
        if seen >= rank:
            low = bucket_lower(index)
            return float(low) if index < 2 * SUB_BUCKETS else (low + bucket_upper(index)) / 2
    return float(bucket_lower(pairs[-1][0]))


def _pairs(counts: Sequence[int] | Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    items = list(counts)
    if items and isinstance(items[0], int):
        return [(i, c) for i, c in enumerate(items) if c]  # type: ignore[misc]
    return sorted((int(p[0]), int(p[1])) for p in items if p[1])  # type: ignore[index]
