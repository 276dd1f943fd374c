"""mtcache's metrics as OpenTelemetry instruments (``pip install 'mtcache[otel]'``).

The instruments are those of :data:`mtcache.metrics.METRICS`, observed from one statistics
snapshot per collection (the same map the Prometheus endpoint reads):

* a counter becomes an observable counter named without ``_total`` (OpenTelemetry
  exporters add their own suffixes), a gauge an observable gauge of the same name;
* the API has no observable histogram, so a histogram ``X`` becomes observable counters
  ``X_count`` and ``X_sum`` and an observable gauge ``X`` with a ``quantile`` attribute
  (``"0.5"``, ``"0.9"``, ``"0.99"``), as a Prometheus summary would;
* every observation carries ``namespace`` and the metric's other labels as attributes;
  units are UCUM (``s``, ``By``, ``1``).

In the coordinator: ``mtcache-coordinator --otel`` registers them on the global meter
provider (configure the SDK and an exporter around it, e.g. with ``opentelemetry-instrument``).
In an application that has an SDK set up, one process may call
``instrument(lambda: client.stats().coordinator, namespace=...)`` instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from mtcache.histogram import percentile
from mtcache.metrics import METRICS, Metric

__all__ = ["QUANTILES", "instrument"]

#: The quantiles a histogram is observed at.
QUANTILES = (0.5, 0.9, 0.99)
#: Callbacks of one collection within this many seconds share one snapshot.
SNAPSHOT_REUSE = 0.5
_UNITS = {"seconds": "s", "bytes": "By", "": "1"}


class _Snapshot:
    """``source()``, taken at most once per SNAPSHOT_REUSE seconds (every instrument's
    callback of one collection reads the same map)."""

    def __init__(self, source: Callable[[], dict[str, Any] | None]) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._at = -SNAPSHOT_REUSE
        self._stats: dict[str, Any] | None = None

    def get(self) -> dict[str, Any] | None:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= SNAPSHOT_REUSE:
                self._stats = self._source()
                self._at = now
            return self._stats


def _attributes(namespace: str, metric: Metric, labels: tuple[str, ...]) -> dict[str, str]:
    return {"namespace": namespace, **dict(zip(metric.labels, labels, strict=True))}


def _plain(snapshot: _Snapshot, metric: Metric, namespace: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        stats = snapshot.get()
        if stats is None:
            return []
        return [Observation(sample.value, _attributes(namespace, metric, sample.labels))
                for sample in metric.read(stats) if not isinstance(sample.value, tuple)]

    return observe


def _histogram_part(
    snapshot: _Snapshot, metric: Metric, namespace: str, part: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """Observations of a histogram's ``count``, ``sum`` (seconds) or ``quantile`` gauges."""

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        stats = snapshot.get()
        if stats is None:
            return []
        out = []
        for sample in metric.read(stats):
            if not isinstance(sample.value, tuple):
                continue
            counts, total_us = sample.value
            attributes = _attributes(namespace, metric, sample.labels)
            if part == "count":
                out.append(Observation(sum(counts), attributes))
            elif part == "sum":
                out.append(Observation(total_us / 1e6, attributes))
            else:
                for q in QUANTILES:
                    value = percentile(counts, q)
                    if value is not None:
                        out.append(Observation(value / 1e6, {**attributes, "quantile": str(q)}))
        return out

    return observe


def instrument(
    source: Callable[[], dict[str, Any] | None], *, namespace: str, meter_provider: MeterProvider | None = None
) -> None:
    """Register every mtcache metric as an observable instrument of ``meter_provider`` (the
    global one by default), each reading ``source()``: a coordinator's statistics map, or
    None when there is none to read (nothing is observed then). ``source`` is called from
    the SDK's collecting thread, at most once per collection."""
    provider = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
    try:
        version = metadata.version("mtcache")
    except metadata.PackageNotFoundError:
        version = None
    meter = provider.get_meter("mtcache", version)
    snapshot = _Snapshot(source)
    for metric in METRICS:
        unit = _UNITS[metric.unit]
        if metric.kind == "counter":
            meter.create_observable_counter(metric.name.removesuffix("_total"), [_plain(snapshot, metric, namespace)],
                                            unit=unit, description=metric.help)
        elif metric.kind == "gauge":
            meter.create_observable_gauge(metric.name, [_plain(snapshot, metric, namespace)], unit=unit,
                                          description=metric.help)
        else:
            meter.create_observable_counter(f"{metric.name}_count", [_histogram_part(snapshot, metric, namespace,
                                                                                      "count")],
                                            unit="1", description=f"{metric.help} (how many)")
            meter.create_observable_counter(f"{metric.name}_sum", [_histogram_part(snapshot, metric, namespace, "sum")],
                                            unit=unit, description=f"{metric.help} (their sum)")
            meter.create_observable_gauge(metric.name, [_histogram_part(snapshot, metric, namespace, "quantile")],
                                          unit=unit, description=f"{metric.help} (quantiles)")
