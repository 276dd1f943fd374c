"""Every metric mtcache exports, defined once: name, type, unit, labels, meaning, and how
to read it from a coordinator's statistics (the map STATS answers).

The Prometheus endpoint (``mtcache-coordinator --metrics ADDR:PORT``,
:mod:`mtcache.coordinator.prometheus`) and the OpenTelemetry instruments
(:mod:`mtcache.otel`) both read :data:`METRICS`, so they always agree, and the README's
table is checked against it. Names follow Prometheus' conventions: ``mtcache_`` first,
the unit last (``_seconds``, ``_bytes``), counters end in ``_total``. Every metric has a
``namespace`` label; per-tier ones a ``tier`` label. Keys never become labels (unbounded,
and private): the hottest keys are in ``stats()`` and ``mtcache top`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mtcache.histogram import BUCKETS, bucket_lower

__all__ = ["HISTOGRAM_BOUNDS", "METRICS", "Metric", "Sample", "histogram_buckets", "samples"]

#: The upper bounds (seconds) of the exported histogram buckets: every power of two from 1 µs
#: to about 67 s (each is a bucket boundary of :mod:`mtcache.histogram`, so the counts are exact).
HISTOGRAM_BOUNDS = tuple(2**k / 1e6 for k in range(27))

#: A histogram's value: dense bucket counts (see :mod:`mtcache.histogram`) and the sum in µs.
Histogram = tuple[list[int], int]


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a metric: the values of its labels besides ``namespace`` (in the order of
    :attr:`Metric.labels`) and a number, or a :data:`Histogram` for a histogram."""

    labels: tuple[str, ...]
    value: float | Histogram


@dataclass(frozen=True, slots=True)
class Metric:
    """One exported metric. ``kind`` is ``counter``, ``gauge`` or ``histogram``; ``unit`` is
    ``seconds``, ``bytes`` or empty (a count); ``labels`` are those besides ``namespace``."""

    name: str
    kind: str
    unit: str
    labels: tuple[str, ...]
    help: str
    read: Callable[[dict[str, Any]], Iterator[Sample]]


def _one(path: str, scale: float = 1.0) -> Callable[[dict[str, Any]], Iterator[Sample]]:
    """A reader of one number at ``path`` (dot-separated) in the statistics; none if absent."""
    parts = path.split(".")

    def read(stats: dict[str, Any]) -> Iterator[Sample]:
        value: Any = stats
        for part in parts:
            if not isinstance(value, dict) or part not in value:
                return
            value = value[part]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield Sample((), value * scale)

    return read


def _each(label_paths: dict[str, str], scale: float = 1.0) -> Callable[[dict[str, Any]], Iterator[Sample]]:
    """A reader of one number per label value (``{label value: path}``)."""
    readers = {label: _one(path, scale) for label, path in label_paths.items()}

    def read(stats: dict[str, Any]) -> Iterator[Sample]:
        for label, reader in readers.items():
            for sample in reader(stats):
                yield Sample((label,), sample.value)

    return read


def _state(path: str, up: str) -> Callable[[dict[str, Any]], Iterator[Sample]]:
    """1 when the string at ``path`` is ``up``, else 0; none when absent or ``"disabled"``."""

    def read(stats: dict[str, Any]) -> Iterator[Sample]:
        value = stats.get(path)
        if isinstance(value, str) and value != "disabled":
            yield Sample((), 1.0 if value == up else 0.0)

    return read


def _histograms(names: tuple[str, ...], labelled: bool) -> Callable[[dict[str, Any]], Iterator[Sample]]:
    def read(stats: dict[str, Any]) -> Iterator[Sample]:
        latency = stats.get("latency")
        if not isinstance(latency, dict):
            return
        for name in names:
            data = latency.get(name)
            if not isinstance(data, dict):
                continue
            counts = [0] * BUCKETS
            try:
                for index, count in data.get("buckets", ()):
                    counts[index] += count
                total = int(data.get("sum_us", 0))
            except (TypeError, ValueError, IndexError):
                continue
            yield Sample((name,) if labelled else (), (counts, total))

    return read


_TIER_HITS = {"near": "fleet.near_hits", "mirror": "fleet.mirror_hits", "l1": "l1.hits", "l2": "l2_hits"}
_TIER_MISSES = {"near": "fleet.near_misses", "mirror": "fleet.mirror_misses", "l1": "l1.misses", "l2": "l2_misses"}
_WRITES = {"set": "sets", "delete": "deletes", "clear": "clears", "fill": "fills", "add": "adds", "incr": "incrs",
           "touch": "touches", "invalidate_tags": "tag_invalidations"}
_REPORTS = {"accepted": "reports.accepted", "ignored": "reports.ignored", "refused": "reports.refused"}

#: Every exported metric.
METRICS: tuple[Metric, ...] = (
    Metric("mtcache_hits_total", "counter", "", ("tier",),
           "Lookups that found a value, per tier (near and mirror: every worker of the host, as reported)",
           _each(_TIER_HITS)),
    Metric("mtcache_misses_total", "counter", "", ("tier",), "Lookups that found nothing, per tier",
           _each(_TIER_MISSES)),
    Metric("mtcache_computes_total", "counter", "", (),
           "Computations run by workers holding the key's lease", _one("fleet.computes")),
    Metric("mtcache_local_computes_total", "counter", "", (),
           "Computations run by workers that could not reach the coordinator", _one("fleet.local_computes")),
    Metric("mtcache_coalesced_total", "counter", "", (),
           "Callers that waited for another caller's computation instead of computing", _one("coalesced")),
    Metric("mtcache_compute_seconds_total", "counter", "seconds", (),
           "Time workers spent computing values (the source's time)", _one("fleet.compute_us", 1e-6)),
    Metric("mtcache_stale_served_total", "counter", "", (),
           "Stale values handed to callers by fail-safe", _one("fleet.stale_served")),
    Metric("mtcache_fail_safe_activations_total", "counter", "", (),
           "Source failures answered by fail-safe", _one("fail_safe_activations")),
    Metric("mtcache_writes_total", "counter", "", ("op",), "Writes accepted by the coordinator, per operation",
           _each(_WRITES)),
    Metric("mtcache_l1_evictions_total", "counter", "", (), "L1 entries evicted to stay within its bounds",
           _one("l1.evictions")),
    Metric("mtcache_l1_expirations_total", "counter", "", (), "L1 entries removed at their TTL",
           _one("l1.expirations")),
    Metric("mtcache_l2_errors_total", "counter", "", (), "Redis calls that failed", _one("l2_errors")),
    Metric("mtcache_invalidation_gaps_total", "counter", "", (),
           "Times the invalidation stream had a gap (L1 dropped)", _one("invalidation_gaps")),
    Metric("mtcache_protocol_errors_total", "counter", "", (), "Connections closed for a protocol error",
           _one("protocol_errors")),
    Metric("mtcache_worker_reports_total", "counter", "", ("outcome",),
           "Worker reports taken (accepted), unreadable (ignored) or over the client bound (refused)",
           _each(_REPORTS)),
    Metric("mtcache_workers", "gauge", "", (), "Clients reporting their counters", _one("fleet.workers")),
    Metric("mtcache_connections", "gauge", "", (), "Open connections to the coordinator", _one("connections")),
    Metric("mtcache_l1_entries", "gauge", "", (), "Entries in L1", _one("l1.size")),
    Metric("mtcache_l1_max_entries", "gauge", "", (), "L1 entry bound", _one("l1.capacity")),
    Metric("mtcache_l1_size_bytes", "gauge", "bytes", (), "Bytes held by L1", _one("l1.bytes")),
    Metric("mtcache_l1_max_size_bytes", "gauge", "bytes", (), "L1 byte bound", _one("l1.max_bytes")),
    Metric("mtcache_mirror_entries", "gauge", "", (), "Entries in the shared-memory mirror", _one("mirror.entries")),
    Metric("mtcache_mirror_used_bytes", "gauge", "bytes", (), "Mirror arena bytes held by live entries",
           _one("mirror.arena_used")),
    Metric("mtcache_mirror_size_bytes", "gauge", "bytes", (), "Mirror arena size", _one("mirror.arena_size")),
    Metric("mtcache_leases_in_flight", "gauge", "", (), "Keys being computed now", _one("inflight_leases")),
    Metric("mtcache_lease_waiters", "gauge", "", (), "Callers waiting now for another's computation",
           _one("lease_waiters")),
    Metric("mtcache_writes_in_flight", "gauge", "", (),
           "Writes accepted and not yet acknowledged (the write queue to Redis)", _one("writes_in_flight")),
    Metric("mtcache_backlog_writes", "gauge", "", (), "Writes kept while Redis is unreachable", _one("l2_backlog")),
    Metric("mtcache_backlog_bytes", "gauge", "bytes", (), "Bytes of the writes kept while Redis is unreachable",
           _one("l2_backlog_bytes")),
    Metric("mtcache_redis_up", "gauge", "", (), "1 while Redis answers, 0 while it does not (absent without Redis)",
           _state("redis", "ok")),
    Metric("mtcache_stream_reader_up", "gauge", "", (),
           "1 while the invalidation stream reader reads, else 0 (absent without Redis)",
           _state("stream_reader", "connected")),
    Metric("mtcache_stream_reader_lag_seconds", "gauge", "seconds", (),
           "Age of the last invalidation entry when it was applied", _one("stream_reader_lag_ms", 1e-3)),
    Metric("mtcache_uptime_seconds", "gauge", "seconds", (), "Time since the coordinator started", _one("uptime")),
    Metric("mtcache_request_duration_seconds", "histogram", "seconds", ("tier",),
           "Coordinator time per request: l1 (answered from L1), l2 (reads after an L1 miss), "
           "lease (lease requests after an L1 miss, waits included), write (until acknowledged)",
           _histograms(("l1", "l2", "lease", "write"), labelled=True)),
    Metric("mtcache_worker_roundtrip_seconds", "histogram", "seconds", (),
           "Socket round trips as workers see them (lease requests excepted)",
           _histograms(("roundtrip",), labelled=False)),
    Metric("mtcache_compute_duration_seconds", "histogram", "seconds", (), "Workers' computations of values",
           _histograms(("compute",), labelled=False)),
)


def samples(stats: dict[str, Any]) -> Iterator[tuple[Metric, Sample]]:
    """Every sample of every metric that ``stats`` (a coordinator's STATS map) has."""
    for metric in METRICS:
        for sample in metric.read(stats):
            yield metric, sample


def histogram_buckets(counts: list[int]) -> list[tuple[float, int]]:
    """Cumulative counts at each of :data:`HISTOGRAM_BOUNDS` and +Inf, as Prometheus wants
    them (``le``: at most the bound; a bucket of :mod:`mtcache.histogram` holds values below
    its upper bound, so its counts belong to every bound at or above that)."""
    out: list[tuple[float, int]] = []
    index = 0
    running = 0
    for bound in HISTOGRAM_BOUNDS:
        limit_us = round(bound * 1e6)
        while index < BUCKETS and bucket_lower(index + 1) <= limit_us:
            running += counts[index]
            index += 1
        out.append((bound, running))
    out.append((float("inf"), running + sum(counts[index:])))
    return out
