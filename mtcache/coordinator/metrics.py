"""The coordinator's statistics collector: its latency histograms, the hottest keys, and
the host-wide figures its workers report. Kept apart from the cache logic; the server
feeds it (a few counter updates per request) and adds :meth:`CoordinatorMetrics.snapshot`
to what STATS answers.

Host-wide counters must never go back (Prometheus reads a drop as a restart): the
collector keeps each reporting client's latest report, and when a client closes or its
process is gone, adds what it had reported to the ``retired`` totals before forgetting it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtcache.coordinator.hotkeys import TopKeys
from mtcache.fleet import COUNTERS, LATENCIES, Report, parse_report
from mtcache.histogram import BUCKETS, LatencyHistogram, merge_sparse

__all__ = ["COORDINATOR_LATENCIES", "CoordinatorMetrics", "FleetCollector"]

log = logging.getLogger("mtcache.coordinator")

#: The coordinator's own histograms (see :class:`mtcache.stats.FleetStats` for what each times).
COORDINATOR_LATENCIES = ("l1", "l2", "lease", "write")
#: Most clients reporting at once; reports of further ones are refused (counted) until some leave.
MAX_REPORTERS = 1024
#: A client silent this long is checked for a living process (at the next sweep).
SILENT_AFTER = 5.0
#: Closed clients remembered, so that a late report of one is not counted twice.
CLOSED_KEPT = 4096
#: Keys counted for the hottest-keys list, and how many of them STATS shows.
HOT_CAPACITY = 64
HOT_SHOWN = 10
#: Seconds between two halvings of the hot keys' counts, and between two sweeps of the reporters.
DECAY_INTERVAL = 60.0
SWEEP_INTERVAL = 2.0


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user took the pid: the reporter is gone
        return False
    return True


@dataclass(slots=True)
class _Reporter:
    report: Report
    at: float


class FleetCollector:
    """The latest report of each reporting client, keyed by its process (from the socket's
    peer credentials, not from the report) and its own id, plus what departed clients had
    reported. ``alive(pid)`` says whether a process still runs; ``clock`` is monotonic."""

    def __init__(
        self,
        *,
        max_reporters: int = MAX_REPORTERS,
        alive: Callable[[int], bool] = _pid_running,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_reporters = max_reporters
        self._alive = alive
        self._clock = clock
        self._clients: dict[tuple[int, bytes], _Reporter] = {}
        self._retired = dict.fromkeys(COUNTERS, 0)
        self._retired_latency = {name: [0] * BUCKETS for name in LATENCIES}
        self._closed: deque[tuple[int, bytes]] = deque(maxlen=CLOSED_KEPT)
        self._closed_set: set[tuple[int, bytes]] = set()
        #: reports taken; ignored (unreadable, going back, or of a closed client); refused (too many clients)
        self.accepted = 0
        self.ignored = 0
        self.refused = 0

    def report(self, pid: int, args: list[Any]) -> bool:
        """Take a REPORT request's arguments from process ``pid``; False if it was ignored
        or refused (never raises: a worker's report is not trusted)."""
        report = parse_report(args)
        if report is None:
            self.ignored += 1
            return False
        key = (pid, report.client_id)
        if key in self._closed_set:
            self.ignored += 1
            return False
        held = self._clients.get(key)
        if held is None:
            if len(self._clients) >= self.max_reporters:
                self.refused += 1
                return False
        elif _goes_back(held.report, report):
            self.ignored += 1
            return False
        self._clients[key] = _Reporter(report, self._clock())
        self.accepted += 1
        if report.closing:
            self._retire(key)
        return True

    def _retire(self, key: tuple[int, bytes]) -> None:
        held = self._clients.pop(key)
        for name, value in held.report.counters.items():
            self._retired[name] += value
        for name, sparse in held.report.latency.items():
            merge_sparse(self._retired_latency[name], sparse)
        if len(self._closed) == self._closed.maxlen:
            self._closed_set.discard(self._closed[0])
        self._closed.append(key)
        self._closed_set.add(key)

    def sweep(self) -> None:
        """Retire the clients that have been silent a while and whose process is gone."""
        now = self._clock()
        for key, held in list(self._clients.items()):
            if now - held.at > SILENT_AFTER and not self._alive(key[0]):
                self._retire(key)

    def totals(self) -> tuple[int, dict[str, int], dict[str, list[int]]]:
        """``(clients reporting, counters, dense histograms)`` of the whole host so far."""
        counters = dict(self._retired)
        latency = {name: list(counts) for name, counts in self._retired_latency.items()}
        for held in self._clients.values():
            for name, value in held.report.counters.items():
                counters[name] += value
            for name, sparse in held.report.latency.items():
                merge_sparse(latency[name], sparse)
        return len(self._clients), counters, latency

    def workers(self) -> list[dict[str, Any]]:
        """Each reporting client's counters, by process id (oldest report first)."""
        now = self._clock()
        out = []
        for (pid, _), held in sorted(self._clients.items(), key=lambda item: item[1].at):
            c = held.report.counters
            out.append({"pid": pid, "near_hits": c["near_hits"], "near_misses": c["near_misses"],
                        "mirror_hits": c["mirror_hits"], "mirror_misses": c["mirror_misses"],
                        "requests": c["requests"], "computes": c["computes"], "age": round(now - held.at, 3)})
        return out


def _goes_back(old: Report, new: Report) -> bool:
    """True if ``new`` counts less than ``old`` anywhere it can cheaply tell (a broken client:
    taking it would make the host's totals go back)."""
    if any(new.counters[name] < old.counters[name] for name in COUNTERS):
        return True
    return any(sum(c for _, c in new.latency[name]) < sum(c for _, c in old.latency[name]) for name in LATENCIES)


def _wire(counts: list[int], total_us: int) -> dict[str, Any]:
    return {"buckets": [[i, c] for i, c in enumerate(counts) if c], "sum_us": total_us}


class CoordinatorMetrics:
    """Everything the coordinator measures beyond the engine's counters."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.latency = {name: LatencyHistogram() for name in COORDINATOR_LATENCIES}
        self.hot = TopKeys(HOT_CAPACITY)
        self.fleet = FleetCollector(clock=clock)
        now = clock()
        self._next_decay = now + DECAY_INTERVAL
        self._next_sweep = now + SWEEP_INTERVAL

    def report(self, pid: int, args: list[Any]) -> None:
        """A worker's report (see :meth:`FleetCollector.report`); a fault in reading it is
        logged and the report ignored, never raised."""
        try:
            self.fleet.report(pid, args)
        except Exception:  # a bug here must cost one report, never the connection
            log.exception("a report from pid %d could not be read", pid)
            self.fleet.ignored += 1

    def tick(self) -> None:
        """Periodic upkeep (the server's sweep): halve the hot keys' counts once a minute,
        retire departed reporters every two seconds."""
        now = self._clock()
        if now >= self._next_decay:
            self._next_decay = now + DECAY_INTERVAL
            self.hot.decay()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self.fleet.sweep()

    def snapshot(self, *, workers: bool = False) -> dict[str, Any]:
        """What STATS adds to the engine's counters: ``fleet`` (the host's worker counters
        and how many clients report), ``latency`` (every histogram, sparse, with its sum),
        ``hot_keys`` (``[key, requests, error]``, hottest first), ``reports`` (taken, ignored,
        refused) and, with ``workers``, each reporting client's counters."""
        count, counters, dense = self.fleet.totals()
        latency = {name: _wire(h.counts, h.total_us) for name, h in self.latency.items()}
        latency["roundtrip"] = _wire(dense["roundtrip"], counters["roundtrip_us"])
        latency["compute"] = _wire(dense["compute"], counters["compute_us"])
        fleet = self.fleet
        out: dict[str, Any] = {
            "fleet": {"workers": count, **counters},
            "latency": latency,
            "hot_keys": [list(entry) for entry in self.hot.top(HOT_SHOWN)],
            "reports": {"accepted": fleet.accepted, "ignored": fleet.ignored, "refused": fleet.refused},
        }
        if workers:
            out["workers"] = fleet.workers()
        return out
