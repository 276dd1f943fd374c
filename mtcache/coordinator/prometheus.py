"""``mtcache-coordinator --metrics ADDR:PORT``: ``/metrics`` for Prometheus.

prometheus_client's HTTP server runs in a daemon thread of the coordinator; on each scrape
its collector asks the event loop for one statistics snapshot (the same map STATS
answers) and turns it into the metrics of :data:`mtcache.metrics.METRICS`. Nothing is
counted twice and nothing is updated on the request path for this: the collector only
reads the counters the coordinator keeps anyway.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric as PromMetric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mtcache.metrics import METRICS, histogram_buckets

__all__ = ["MetricsServer", "StatsCollector", "parse_address"]

log = logging.getLogger("mtcache.coordinator")


def parse_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6; ``:PORT`` for every interface) as ``(host, port)``.

    :raises ValueError: not of that form, or the port is not 0-65535.
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"--metrics takes ADDR:PORT (e.g. 127.0.0.1:9464), got {text!r}")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # raises ValueError naming the address
    elif ":" in host:
        raise ValueError(f"--metrics: write an IPv6 address in brackets ([::1]:9464), got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--metrics: the port must be a number, got {port_text!r} in {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--metrics: the port must be 0-65535, got {port}")
    return host or "0.0.0.0", port


class StatsCollector(Collector):
    """A prometheus_client collector over ``source()``, which returns a coordinator's
    statistics map (or None when it cannot: the scrape then has no mtcache metrics)."""

    def __init__(self, source: Callable[[], dict[str, Any] | None], namespace: str) -> None:
        self._source = source
        self._namespace = namespace

    def collect(self) -> Iterator[PromMetric]:
        stats = self._source()
        if stats is None:
            return
        ns = self._namespace
        for metric in METRICS:
            labels = ["namespace", *metric.labels]
            family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
            if metric.kind == "counter":
                family = CounterMetricFamily(metric.name, metric.help, labels=labels)
            elif metric.kind == "gauge":
                family = GaugeMetricFamily(metric.name, metric.help, labels=labels)
            else:
                family = HistogramMetricFamily(metric.name, metric.help, labels=labels)
            for sample in metric.read(stats):
                values = [ns, *sample.labels]
                if isinstance(sample.value, tuple):
                    counts, total_us = sample.value
                    buckets = [(floatToGoString(bound), count) for bound, count in histogram_buckets(counts)]
                    family.add_metric(values, buckets, total_us / 1e6)  # type: ignore[call-arg, arg-type]
                else:
                    family.add_metric(values, sample.value)  # type: ignore[call-arg, arg-type]
            yield family


class MetricsServer:
    """The ``/metrics`` endpoint: started with :meth:`start`, stopped with :meth:`stop`."""

    def __init__(self, host: str, port: int, source: Callable[[], dict[str, Any] | None], namespace: str) -> None:
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(source, namespace))
        self._httpd: Any = None

    def start(self) -> None:
        """Bind and serve in a daemon thread; :attr:`port` is the bound port afterwards.

        :raises OSError: the address cannot be bound (in use, not local...).
        """
        self._httpd, _thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._httpd.server_address[1]
        log.info("serving Prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        """Stop serving and close the socket. Safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
