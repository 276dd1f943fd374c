"""What a worker reports to its coordinator (the REPORT request), both sides of it.

Near hits and mirror reads never reach the coordinator, so each client reports its
own counters, and the coordinator adds up the host's (``stats()`` on any client,
``mtcache stats``, ``/metrics``). A report is one msgpack map, sent with no reply:

* ``id``: 8 random bytes naming the reporting client (a new one in a forked child);
* ``counters``: a map of the names in :data:`COUNTERS` to non-negative integers, each
  counted since that client began (so a lost report loses nothing but freshness);
* ``latency``: a map of the names in :data:`LATENCIES` to sparse histograms
  (``[[bucket, count], ...]``, see :mod:`mtcache.histogram`), also since the start;
* ``closing``: true on the last report of a client being closed.

Unknown counters and histograms are ignored (a newer client may report more); a
report that is not of this shape is ignored as a whole (:func:`parse_report` returns
None). Reports cost the worker nothing on its near-hit path: they are sent with a
request it makes anyway, at most once a second, or by a background timer when it
made none (see :mod:`mtcache.client.reporting`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtcache.histogram import BUCKETS

__all__ = ["COUNTERS", "LATENCIES", "REPORT_INTERVAL", "Report", "parse_report"]

#: What a client counts and reports.
COUNTERS = (
    "near_hits", "near_misses", "mirror_hits", "mirror_misses", "mirror_torn_retries", "requests", "computes",
    "local_computes", "local_coalesced", "stale_served", "fail_safe_activations", "coordinator_errors",
    # the sums of the two histograms below, in microseconds
    "roundtrip_us", "compute_us",
)
#: The histograms a client keeps: ``roundtrip`` (its socket requests, lease requests excepted:
#: they wait for computations) and ``compute`` (its runs of ``fn``).
LATENCIES = ("roundtrip", "compute")
#: Seconds between two reports of one client, at least.
REPORT_INTERVAL = 1.0
_ID_BYTES = 8
_MAX_COUNT = 2**63


@dataclass(frozen=True, slots=True)
class Report:
    """One checked report."""

    client_id: bytes
    counters: dict[str, int]
    latency: dict[str, list[list[int]]]
    closing: bool


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT


def _sparse(value: object) -> list[list[int]] | None:
    if not isinstance(value, list) or len(value) > BUCKETS:
        return None
    out = []
    for pair in value:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not _count(pair[0]) or pair[0] >= BUCKETS
                or not _count(pair[1])):
            return None
        out.append([pair[0], pair[1]])
    return out


def parse_report(args: list[Any]) -> Report | None:
    """The report a REPORT request carries (its arguments after the request id), or None
    if it is not one (any shape, any types: a worker's report is not trusted)."""
    if len(args) != 1 or not isinstance(args[0], dict):
        return None
    body = args[0]
    client_id, counters, latency = body.get("id"), body.get("counters"), body.get("latency", {})
    closing = body.get("closing", False)
    if not isinstance(client_id, bytes) or len(client_id) != _ID_BYTES or not isinstance(closing, bool):
        return None
    if not isinstance(counters, dict) or not isinstance(latency, dict):
        return None
    known = {}
    for name in COUNTERS:
        value = counters.get(name, 0)
        if not _count(value):
            return None
        known[name] = value
    histograms = {}
    for name in LATENCIES:
        sparse = _sparse(latency.get(name, []))
        if sparse is None:
            return None
        histograms[name] = sparse
    return Report(client_id, known, histograms, closing)
