"""This client's share of the host's statistics: what it reports to its coordinator, and when.

Near hits and mirror reads never reach the coordinator; a client reports its own
counters (see :mod:`mtcache.fleet` for the report) so that ``stats()``, ``mtcache stats``
and ``/metrics`` show the whole host. The near-hit path is not touched: the counters
reported are those the near cache and the mirror reader keep anyway. A report rides
along with a request the client makes anyway, at most once per
:data:`~mtcache.fleet.REPORT_INTERVAL`; a client that made none (everything served from
near copies and the mirror) is reported by a timer (a daemon thread of the sync client,
a loop callback of the async one) that borrows an idle connection, never opens one.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from mtcache.fleet import COUNTERS, REPORT_INTERVAL
from mtcache.histogram import LatencyHistogram

if TYPE_CHECKING:
    from ._core import ClientCore

__all__ = ["Reporter"]


class Reporter:
    """The counters and histograms a client reports, and the report timing.

    ``enabled`` is set on each hello: the coordinator takes reports, and this client is
    not an inspecting one (the command-line tools are not workers). Several threads may
    build reports at once; a report is a snapshot of counters since the client began, so
    a duplicate or a lost one is harmless."""

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self.enabled = False
        self.client_id = secrets.token_bytes(8)
        #: socket round trips (lease requests excepted) and runs of ``fn``
        self.roundtrip = LatencyHistogram()
        self.compute = LatencyHistogram()
        #: socket requests sent
        self.requests = 0
        self._next = 0.0
        self._sent: tuple[int, ...] | None = None
        # what was counted before the current coordinator (or, in a forked child, by the parent)
        self._base = dict.fromkeys(COUNTERS, 0)
        self._base_latency: dict[str, LatencyHistogram | None] = {"roundtrip": None, "compute": None}

    def due(self) -> bool:
        """True when a report may be sent now (one is sent at most once per interval)."""
        return self.enabled and time.monotonic() >= self._next

    def hurry(self) -> None:
        """Let the next request carry a report whatever the interval (``stats()`` wants its
        own counters in the host's)."""
        self._next = 0.0

    def counters(self) -> dict[str, int]:
        """This client's counters since it began (or since the fork that made this process)."""
        core = self._core
        near = core.near
        mirror = core.mirror_totals()
        c = core.counters
        now = {
            "near_hits": near.hits, "near_misses": near.misses, "mirror_hits": mirror[0], "mirror_misses": mirror[1],
            "mirror_torn_retries": mirror[2], "requests": self.requests, "computes": c["computes"],
            "local_computes": c["local_computes"], "local_coalesced": c["local_coalesced"],
            "stale_served": c["stale_served"], "fail_safe_activations": c["fail_safe_activations"],
            "coordinator_errors": c["coordinator_errors"], "roundtrip_us": self.roundtrip.total_us,
            "compute_us": self.compute.total_us,
        }
        base = self._base
        return {name: max(0, now[name] - base[name]) for name in COUNTERS}

    def payload(self, *, closing: bool = False) -> dict[str, Any] | None:
        """The report to send now, or None when nothing changed since the last one. Starts
        the next interval."""
        self._next = time.monotonic() + REPORT_INTERVAL
        counters = self.counters()
        signature = (*counters.values(), self.roundtrip.count, self.compute.count)
        if signature == self._sent and not closing:
            return None
        self._sent = signature
        latency = {"roundtrip": self.roundtrip.minus(self._base_latency["roundtrip"]),
                   "compute": self.compute.minus(self._base_latency["compute"])}
        report: dict[str, Any] = {"id": self.client_id, "counters": counters, "latency": latency}
        if closing:
            report["closing"] = True
        return report

    def rebase(self) -> None:
        """Report as a new client, counting from now on: in a forked child (the parent reports
        what it counted), and on reaching a coordinator other than the last one (its figures
        are those since it started)."""
        self._base = dict.fromkeys(COUNTERS, 0)
        self._base = self.counters()
        self._base_latency = {"roundtrip": self.roundtrip.copy(), "compute": self.compute.copy()}
        self.client_id = secrets.token_bytes(8)
        self._next = 0.0
        self._sent = None
