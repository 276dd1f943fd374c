"""The hottest keys, in bounded memory and constant time per request.

Space-saving (Metwally, Agrawal and El Abbadi, "Efficient computation of frequent and
top-k elements in data streams", 2005): at most ``capacity`` keys are counted; a key
not counted yet takes the place of one with the smallest count and starts from that
count plus one, remembering it as its possible overcount (``error``). Every key seen
more than ``total / capacity`` times is among those counted, and a count is never
below the key's true count nor above it by more than its error.

Counts live in a "stream summary": a map from each count to the keys that have it (in
insertion order) and the smallest count present, so a request is a few dict operations,
never a scan or a sort. :meth:`decay` halves every count (the server calls it once a
minute), so the list follows what is hot now rather than since the start.
"""

from __future__ import annotations

__all__ = ["TopKeys"]


class TopKeys:
    """The most requested keys, approximately (see the module docstring)."""

    __slots__ = ("_buckets", "_counts", "_errors", "_min", "capacity")

    def __init__(self, capacity: int = 64) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._buckets: dict[int, dict[str, None]] = {}
        self._min = 0

    def add(self, key: str) -> None:
        """Count one request of ``key``."""
        counts = self._counts
        buckets = self._buckets
        count = counts.get(key)
        if count is not None:
            bucket = buckets[count]
            del bucket[key]
            if not bucket:
                del buckets[count]
                if count == self._min:
                    self._min = count + 1
        elif len(counts) < self.capacity:
            count = 0
            self._errors[key] = 0
            self._min = 1
        else:
            count = self._min
            bucket = buckets[count]
            victim = next(iter(bucket))
            del bucket[victim], counts[victim], self._errors[victim]
            self._errors[key] = count
            if not bucket:
                del buckets[count]
                self._min = count + 1
        count += 1
        counts[key] = count
        above = buckets.get(count)
        if above is None:
            buckets[count] = {key: None}
        else:
            above[key] = None

    def top(self, n: int) -> list[tuple[str, int, int]]:
        """The ``n`` keys with the highest counts, highest first: ``(key, count, error)``
        (the true count lies between ``count - error`` and ``count``)."""
        out: list[tuple[str, int, int]] = []
        for count in sorted(self._buckets, reverse=True):
            for key in self._buckets[count]:
                out.append((key, count, self._errors[key]))
                if len(out) >= n:
                    return out
        return out

    def decay(self) -> None:
        """Halve every count and error; keys whose count falls to 0 are forgotten."""
        counts, errors, buckets = self._counts, self._errors, self._buckets
        self._counts, self._errors, self._buckets = {}, {}, {}
        for count in sorted(buckets):
            for key in buckets[count]:
                half = counts[key] // 2
                if half:
                    self._counts[key] = half
                    self._errors[key] = errors[key] // 2
                    self._buckets.setdefault(half, {})[key] = None
        self._min = min(self._buckets) if self._buckets else 0

    def __len__(self) -> int:
        return len(self._counts)
