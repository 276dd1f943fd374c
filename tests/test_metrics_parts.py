"""The parts of the statistics that need no process: histogram buckets, worker reports,
the fleet collector, the hot-keys summary, and the metric definitions."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from mtcache.coordinator.hotkeys import TopKeys
from mtcache.coordinator.metrics import SILENT_AFTER, FleetCollector
from mtcache.fleet import COUNTERS, parse_report
from mtcache.histogram import (
    BUCKETS,
    LatencyHistogram,
    bucket_lower,
    bucket_of,
    bucket_upper,
    percentile,
)
from mtcache.metrics import HISTOGRAM_BOUNDS, METRICS, histogram_buckets, samples
from mtcache.stats import FleetStats

# -- histogram buckets ---------------------------------------------------------------


@pytest.mark.parametrize("us", [0, 1, 7, 15, 16, 17, 31, 32, 100, 999, 1000, 12_345, 10**6, 2**35, 2**36 - 1])
def test_a_value_lies_in_its_bucket(us: int) -> None:
    index = bucket_of(us)
    assert bucket_lower(index) <= us < bucket_upper(index)


def test_buckets_are_contiguous_and_narrow() -> None:
    for index in range(BUCKETS - 1):
        low, high = bucket_lower(index), bucket_upper(index)
        assert bucket_lower(index + 1) == high
        assert high - low <= max(1, low / 8)  # at most 12.5 % wide
    assert bucket_of(-5) == 0
    assert bucket_of(2**40) == BUCKETS - 1  # the last bucket takes what is beyond


def test_percentiles_are_within_the_bucket_width() -> None:
    rng = random.Random(7)
    values = sorted(rng.randint(1, 5_000_000) for _ in range(20_000))
    hist = LatencyHistogram()
    for us in values:
        hist.record_ns(us * 1000)
    for q in (0.5, 0.9, 0.99):
        true = values[int(q * len(values)) - 1]
        got = percentile(hist.counts, q)
        assert got is not None and abs(got - true) <= true / 8
        assert percentile(hist.sparse(), q) == got  # dense and sparse agree
    assert hist.count == len(values) and hist.total_us == sum(values)
    assert percentile([0] * BUCKETS, 0.5) is None


def test_minus_gives_what_was_counted_since_a_copy() -> None:
    hist = LatencyHistogram()
    hist.record_ns(5_000)
    base = hist.copy()
    hist.record_ns(5_000)
    hist.record_ns(2_000_000)
    assert hist.minus(base) == [[5, 1], [bucket_of(2000), 1]]


def test_exported_buckets_are_cumulative_at_powers_of_two() -> None:
    hist = LatencyHistogram()
    for us in (1, 3, 100, 100, 5000):
        hist.record_ns(us * 1000)
    buckets = dict(histogram_buckets(hist.counts))
    assert buckets[1e-6] == 0  # 1 µs lies in [1, 2): above the bound of 1 µs
    assert buckets[2e-6] == 1
    assert buckets[4e-6] == 2
    assert buckets[128e-6] == 4
    assert buckets[8192e-6] == 5
    assert buckets[float("inf")] == 5
    counts = [count for _, count in histogram_buckets(hist.counts)]
    assert counts == sorted(counts)
    assert len(buckets) == len(HISTOGRAM_BOUNDS) + 1


# -- reports ------------------------------------------------------------------------------


def _report(client: bytes = b"abcdefgh", closing: bool = False, **counters: int) -> list[Any]:
    body: dict[str, Any] = {"id": client, "counters": counters, "latency": {"roundtrip": [[3, 2]]}}
    if closing:
        body["closing"] = True
    return [body]


def test_a_good_report_is_read() -> None:
    report = parse_report(_report(near_hits=5, requests=2, unknown_counter=9))
    assert report is not None
    assert report.counters["near_hits"] == 5 and report.counters["mirror_hits"] == 0
    assert "unknown_counter" not in report.counters
    assert report.latency == {"roundtrip": [[3, 2]], "compute": []}


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-argument"),
        pytest.param([{"id": b"abcdefgh", "counters": {}}, 1], id="two-arguments"),
        pytest.param(["report"], id="not-a-map"),
        pytest.param([{"counters": {}}], id="no-id"),
        pytest.param([{"id": "abcdefgh", "counters": {}}], id="id-str"),
        pytest.param([{"id": b"short", "counters": {}}], id="id-short"),
        pytest.param([{"id": b"abcdefgh"}], id="no-counters"),
        pytest.param([{"id": b"abcdefgh", "counters": []}], id="counters-list"),
        pytest.param([{"id": b"abcdefgh", "counters": {"near_hits": -1}}], id="negative"),
        pytest.param([{"id": b"abcdefgh", "counters": {"near_hits": 1.5}}], id="float"),
        pytest.param([{"id": b"abcdefgh", "counters": {"near_hits": True}}], id="bool"),
        pytest.param([{"id": b"abcdefgh", "counters": {"near_hits": 2**70}}], id="huge"),
        pytest.param([{"id": b"abcdefgh", "counters": {}, "latency": []}], id="latency-list"),
        pytest.param([{"id": b"abcdefgh", "counters": {}, "latency": {"compute": [[BUCKETS, 1]]}}],
                     id="bucket-out-of-range"),
        pytest.param([{"id": b"abcdefgh", "counters": {}, "latency": {"compute": [[1]]}}], id="bucket-pair"),
        pytest.param([{"id": b"abcdefgh", "counters": {}, "latency": {"compute": "x"}}], id="histogram-str"),
        pytest.param([{"id": b"abcdefgh", "counters": {}, "closing": 1}], id="closing-int"),
    ],
)
def test_a_malformed_report_is_ignored(args: list[Any]) -> None:
    assert parse_report(args) is None
    fleet = FleetCollector()
    assert fleet.report(1234, args) is False
    assert fleet.ignored == 1 and fleet.totals()[0] == 0


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_totals_add_every_client_and_never_go_back() -> None:
    clock = _Clock()
    alive = {1: True, 2: True}
    fleet = FleetCollector(alive=lambda pid: alive[pid], clock=clock)
    assert fleet.report(1, _report(b"aaaaaaaa", near_hits=10, near_misses=2))
    assert fleet.report(2, _report(b"bbbbbbbb", near_hits=5))
    assert fleet.report(1, _report(b"aaaaaaaa", near_hits=12, near_misses=2))  # the newer report replaces
    count, counters, latency = fleet.totals()
    assert (count, counters["near_hits"], counters["near_misses"]) == (2, 17, 2)
    assert latency["roundtrip"][3] == 4
    assert not fleet.report(1, _report(b"aaaaaaaa", near_hits=11))  # going back: ignored
    assert fleet.totals()[1]["near_hits"] == 17
    # a process that is gone: its counts stay in the totals, it no longer counts as a client
    alive[2] = False
    clock.now += SILENT_AFTER + 1
    fleet.sweep()
    count, counters, _ = fleet.totals()
    assert (count, counters["near_hits"]) == (1, 17)
    # a closing client likewise; a late report from it is not counted again
    assert fleet.report(1, _report(b"aaaaaaaa", closing=True, near_hits=20, near_misses=2))
    assert fleet.totals()[:2] == (0, {**dict.fromkeys(COUNTERS, 0), "near_hits": 25, "near_misses": 2})
    assert not fleet.report(1, _report(b"aaaaaaaa", near_hits=30))
    assert fleet.totals()[1]["near_hits"] == 25


def test_a_living_silent_client_is_kept() -> None:
    clock = _Clock()
    fleet = FleetCollector(alive=lambda _pid: True, clock=clock)
    fleet.report(7, _report(near_hits=3))
    clock.now += 3600
    fleet.sweep()
    assert fleet.totals()[0] == 1
    assert fleet.workers()[0]["pid"] == 7 and fleet.workers()[0]["age"] == 3600


def test_clients_past_the_bound_are_refused() -> None:
    fleet = FleetCollector(max_reporters=2)
    assert fleet.report(1, _report(b"aaaaaaaa", near_hits=1))
    assert fleet.report(1, _report(b"bbbbbbbb", near_hits=1))
    assert not fleet.report(1, _report(b"cccccccc", near_hits=1))
    assert fleet.refused == 1 and fleet.totals()[0] == 2
    assert fleet.report(1, _report(b"aaaaaaaa", near_hits=2))  # a known client still reports


# -- hot keys ------------------------------------------------------------------------------


def test_top_keys_finds_the_heavy_hitters_in_bounded_memory() -> None:
    rng = random.Random(3)
    keys = [f"k{i}" for i in range(5000)]
    weights = [1 / (i + 1) ** 1.2 for i in range(len(keys))]
    stream = rng.choices(keys, weights, k=50_000)
    top = TopKeys(capacity=32)
    for key in stream:
        top.add(key)
    assert len(top) == 32
    truth = Counter(stream)
    found = top.top(5)
    assert [key for key, _, _ in found] == [key for key, _ in truth.most_common(5)]
    for key, count, error in top.top(32):
        assert count - error <= truth[key] <= count  # the space-saving guarantee
    # every key seen more than total / capacity times is counted
    assert {key for key, n in truth.items() if n > len(stream) / 32} <= {key for key, _, _ in top.top(32)}


def test_top_keys_decay_halves_and_forgets() -> None:
    top = TopKeys(capacity=4)
    for key, n in (("a", 8), ("b", 3), ("c", 1)):
        for _ in range(n):
            top.add(key)
    top.decay()
    assert top.top(4) == [("a", 4, 0), ("b", 1, 0)]
    top.add("d")
    top.add("d")
    assert top.top(1) == [("a", 4, 0)] and top.top(4)[1] == ("d", 2, 0)
    with pytest.raises(ValueError, match="capacity"):
        TopKeys(0)


# -- metric definitions ------------------------------------------------------------------------


def test_metric_names_follow_the_conventions() -> None:
    names = [metric.name for metric in METRICS]
    assert len(names) == len(set(names))
    for metric in METRICS:
        assert metric.name.startswith("mtcache_")
        assert metric.kind in ("counter", "gauge", "histogram")
        assert (metric.name.endswith("_total")) == (metric.kind == "counter")
        if metric.unit:
            assert metric.unit in metric.name


def test_samples_skip_what_a_map_lacks_and_read_what_it_has() -> None:
    stats = {"fleet": {"near_hits": 4, "workers": 2}, "l1": {"hits": 1}, "redis": "down",
             "stream_reader": "disabled", "latency": {"l1": {"buckets": [[3, 2]], "sum_us": 6}, "l2": "junk"}}
    got = {(metric.name, sample.labels): sample.value for metric, sample in samples(stats)}
    assert got[("mtcache_hits_total", ("near",))] == 4
    assert got[("mtcache_hits_total", ("l1",))] == 1
    assert ("mtcache_hits_total", ("mirror",)) not in got
    assert got[("mtcache_workers", ())] == 2
    assert got[("mtcache_redis_up", ())] == 0.0
    assert ("mtcache_stream_reader_up", ()) not in got  # no Redis configured: absent
    counts, total = got[("mtcache_request_duration_seconds", ("l1",))]  # type: ignore[misc]
    assert counts[3] == 2 and total == 6
    assert ("mtcache_request_duration_seconds", ("l2",)) not in got


def test_fleet_shares_add_up() -> None:
    fleet = FleetStats(near_hits=90, near_misses=10, mirror_hits=5, mirror_misses=5, l1_hits=2, l1_misses=3,
                       l2_hits=1, l2_misses=2, computes=1, coalesced=1, compute_seconds=0.5)
    assert fleet.reads == 100
    assert fleet.answered() == {"near": 90, "mirror": 5, "l1": 2, "l2": 1, "compute": 1, "waited": 1, "miss": 0}
    assert sum(fleet.served.values()) == pytest.approx(1.0)
    assert fleet.hit_rates["near"] == 0.9 and fleet.hit_rates["l1"] == 0.4
    assert fleet.source_seconds_saved == pytest.approx(99 * 0.5)
