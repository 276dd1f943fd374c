"""The coordinator's metrics exports: ``/metrics`` for Prometheus (``--metrics ADDR:PORT``)
and OpenTelemetry instruments (``--otel``), both reading the statistics map STATS
answers. The exports run in threads of their own (prometheus_client's HTTP server, the
OpenTelemetry SDK's reader); each of their reads takes one snapshot on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SNAPSHOT_TIMEOUT", "MetricsExports", "MetricsUnavailable"]

log = logging.getLogger("mtcache.coordinator")

#: How long a read from an export's thread waits for the event loop's snapshot.
SNAPSHOT_TIMEOUT = 5.0


class MetricsUnavailable(RuntimeError):
    """An export asked for cannot be served (its address cannot be bound, or the
    OpenTelemetry API is not installed)."""


class MetricsExports:
    """The exports asked for: ``address`` (host, port) for Prometheus, ``otel`` for
    OpenTelemetry (on the global meter provider). :meth:`start` from the event loop."""

    def __init__(self, address: tuple[str, int] | None = None, otel: bool = False) -> None:
        self.address = address
        self.otel = otel
        self._server: Any = None
        self._stats: Callable[[], dict[str, Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._stopped = False

    def start(self, stats: Callable[[], dict[str, Any]], namespace: str) -> None:
        """Serve ``stats()`` (called on this event loop) through each export asked for.

        :raises MetricsUnavailable: one cannot be started.
        """
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.address is not None:
            from mtcache.coordinator.prometheus import MetricsServer

            host, port = self.address
            server = MetricsServer(host, port, self.snapshot, namespace)
            try:
                server.start()
            except OSError as exc:
                raise MetricsUnavailable(f"cannot serve metrics on {host}:{port}: {exc}") from exc
            self._server = server
        if self.otel:
            try:
                from mtcache.otel import instrument
            except ImportError as exc:
                raise MetricsUnavailable(f"--otel needs the OpenTelemetry API: pip install 'mtcache[otel]' ({exc})") \
                    from exc
            instrument(self.snapshot, namespace=namespace)

    def snapshot(self) -> dict[str, Any] | None:
        """The statistics, from any thread: taken on the event loop; None once stopped, or if
        the loop does not answer within SNAPSHOT_TIMEOUT."""
        loop, stats = self._loop, self._stats
        if loop is None or stats is None or self._stopped:
            return None
        if threading.get_ident() == self._loop_thread:
            return stats()

        async def take() -> dict[str, Any]:
            return stats()

        try:
            return asyncio.run_coroutine_threadsafe(take(), loop).result(SNAPSHOT_TIMEOUT)
        except Exception as exc:  # the loop is stopping, or too busy: this read has nothing
            log.warning("no statistics for the metrics export: %s", exc or type(exc).__name__)
            return None

    async def stop(self) -> None:
        """Stop serving (waiting, off the loop, for the HTTP server to close). Safe to call twice."""
        self._stopped = True
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.stop)
