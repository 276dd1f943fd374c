"""The coordinator's L1 store: TTL, bounds, LRU eviction, stats, removal callback.

Time moves only through an injected fake clock; nothing sleeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mtcache.coordinator.store import ENTRY_OVERHEAD, L1Store, RemoveReason, StoreStats


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Removals:
    """Records every on_remove call."""

    calls: list[tuple[str, RemoveReason]] = field(default_factory=list)

    def __call__(self, key: str, reason: RemoveReason) -> None:
        self.calls.append((key, reason))


def cost(key: str, value: bytes) -> int:
    return len(key.encode("utf-8")) + len(value) + ENTRY_OVERHEAD


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def removals() -> Removals:
    return Removals()


def make(clock: FakeClock, removals: Removals | None = None, **kwargs: object) -> L1Store:
    return L1Store(clock=clock, on_remove=removals, **kwargs)  # type: ignore[arg-type]


# --- TTL --------------------------------------------------------------------------------------------------------------


def test_default_ttl_applies_when_set_has_none(clock: FakeClock) -> None:
    store = make(clock, default_ttl=10.0)
    assert store.set("k", b"v")
    assert store.remaining_ttl("k") == pytest.approx(10.0)
    clock.advance(9.999)
    assert store.get("k") == b"v"
    clock.advance(0.001)
    assert store.get("k") is None


def test_per_entry_ttl_overrides_default(clock: FakeClock) -> None:
    store = make(clock, default_ttl=100.0)
    store.set("short", b"1", ttl=2)
    store.set("long", b"2", ttl=50.5)
    clock.advance(2)
    assert store.get("short") is None
    assert store.get("long") == b"2"
    assert store.remaining_ttl("long") == pytest.approx(48.5)


def test_lazy_expiry_on_get_calls_on_remove_once(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals, default_ttl=5.0)
    store.set("k", b"value")
    clock.advance(5)
    assert len(store) == 1  # still held until found
    assert store.get("k") is None
    assert removals.calls == [("k", "expired")]
    assert len(store) == 0
    assert store.stats().bytes == 0
    assert store.get("k") is None
    assert removals.calls == [("k", "expired")]


def test_sweep_removes_expired_earliest_first_up_to_limit(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals)
    store.set("c", b"", ttl=3)
    store.set("a", b"", ttl=1)
    store.set("b", b"", ttl=2)
    store.set("live", b"", ttl=100)
    clock.advance(10)
    assert store.sweep(limit=2) == 2
    assert removals.calls == [("a", "expired"), ("b", "expired")]
    assert store.sweep() == 1
    assert removals.calls[-1] == ("c", "expired")
    assert store.sweep() == 0
    assert store.keys() == ["live"]
    assert store.stats().expirations == 3
    assert store.stats().bytes == cost("live", b"")


def test_sweep_skips_entries_made_stale_by_overwrite_and_delete(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals)
    store.set("k", b"old", ttl=1)
    store.set("k", b"new", ttl=100)  # the ttl=1 heap item is now stale
    store.set("gone", b"x", ttl=1)
    assert store.delete("gone")
    clock.advance(50)
    assert store.sweep() == 0
    assert removals.calls == []
    assert store.get("k") == b"new"


def test_many_overwrites_keep_the_heap_bounded_and_sweep_exact(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals)
    for i in range(5_000):
        store.set("k", str(i).encode(), ttl=1 + i % 7)
    # White-box: the heap of expiry times is compacted once it passes ~2x the live entries.
    assert len(store._heap) <= 2 * len(store) + 64
    clock.advance(100)
    assert store.sweep(limit=10) == 1
    assert removals.calls == [("k", "expired")]


def test_remaining_ttl_counts_down_and_is_none_when_absent_or_expired(clock: FakeClock) -> None:
    store = make(clock)
    assert store.remaining_ttl("nope") is None
    store.set("k", b"v", ttl=30)
    clock.advance(12.5)
    assert store.remaining_ttl("k") == pytest.approx(17.5)
    clock.advance(17.5)
    assert store.remaining_ttl("k") is None


def test_expired_entry_is_invisible_to_peek_contains_keys(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals)
    store.set("k", b"v", ttl=1)
    clock.advance(1)
    assert store.peek("k") is None
    assert "k" not in store
    assert store.keys() == []
    assert removals.calls == []  # only get, sweep and set remove on their own
    assert store.stats().misses == 0


# --- bounds and eviction ----------------------------------------------------------------------------------------------


def test_count_bound_evicts_least_recently_used(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals, capacity=3)
    for key in "abc":
        store.set(key, b"v")
    store.set("d", b"v")
    assert store.keys() == ["b", "c", "d"]
    assert removals.calls == [("a", "evicted")]
    assert store.stats().evictions == 1
    assert len(store) == 3


def test_get_refreshes_lru_order(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals, capacity=3)
    for key in "abc":
        store.set(key, b"v")
    assert store.get("a") == b"v"
    store.set("d", b"v")
    assert removals.calls == [("b", "evicted")]
    assert store.keys() == ["c", "a", "d"]


def test_set_of_existing_key_refreshes_lru_order(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals, capacity=2)
    store.set("a", b"1")
    store.set("b", b"1")
    store.set("a", b"2")
    store.set("c", b"1")
    assert removals.calls == [("b", "evicted")]
    assert store.peek("a") == b"2"


def test_byte_bound_evicts_until_it_holds(clock: FakeClock, removals: Removals) -> None:
    unit = cost("a", b"x" * 36)  # 101 bytes
    store = make(clock, removals, capacity=100, max_bytes=3 * unit)
    for key in "abc":
        store.set(key, b"x" * 36)
    assert store.stats().bytes == 3 * unit
    assert removals.calls == []
    big = b"y" * (36 + unit)  # needs the room of two entries
    assert store.set("d", big)
    assert removals.calls == [("a", "evicted"), ("b", "evicted")]
    assert store.keys() == ["c", "d"]
    assert store.stats().bytes == unit + cost("d", big) <= 3 * unit


def test_expired_entries_make_room_before_live_ones_are_evicted(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals, capacity=2)
    store.set("old-live", b"", ttl=100)
    store.set("young-expired", b"", ttl=1)
    clock.advance(1)
    store.set("new", b"")
    assert removals.calls == [("young-expired", "expired")]
    assert store.keys() == ["old-live", "new"]
    stats = store.stats()
    assert (stats.evictions, stats.expirations) == (0, 1)


def test_oversized_entry_is_refused_and_removes_the_old_one(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals, max_bytes=200)
    store.set("k", b"small")
    store.set("other", b"v")
    too_big = b"x" * (200 - ENTRY_OVERHEAD)  # + 1 byte of key is one over
    assert store.set("k", too_big) is False
    assert store.get("k") is None
    assert store.keys() == ["other"]
    assert store.stats().bytes == cost("other", b"v")
    assert removals.calls == []  # the caller learns it from the return value


def test_entry_of_exactly_max_bytes_fits(clock: FakeClock) -> None:
    store = make(clock, max_bytes=100)
    value = b"x" * (100 - ENTRY_OVERHEAD - 1)
    assert store.set("k", value)
    assert store.stats().bytes == 100


def test_byte_accounting_uses_utf8_key_length(clock: FakeClock) -> None:
    store = make(clock)
    store.set("é€", b"abc")  # 2 + 3 UTF-8 bytes
    assert store.stats().bytes == 5 + 3 + ENTRY_OVERHEAD


def test_overwrite_updates_bytes(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals)
    store.set("k", b"x" * 100)
    store.set("k", b"x" * 10)
    stats = store.stats()
    assert (stats.size, stats.bytes) == (1, cost("k", b"x" * 10))
    assert removals.calls == []


# --- stats, peek, delete, clear ---------------------------------------------------------------------------------------


def test_stats_counters(clock: FakeClock) -> None:
    store = make(clock, capacity=2, max_bytes=10_000)
    store.set("a", b"1", ttl=1)
    store.set("b", b"22")
    assert store.get("a") == b"1"
    assert store.get("b") == b"22"
    assert store.get("zzz") is None
    clock.advance(1)
    assert store.get("a") is None  # expired: a miss and an expiration
    store.set("c", b"333")
    store.set("d", b"4444")  # evicts b
    stats = store.stats()
    assert stats == StoreStats(
        hits=2,
        misses=2,
        evictions=1,
        expirations=1,
        size=2,
        bytes=cost("c", b"333") + cost("d", b"4444"),
        capacity=2,
        max_bytes=10_000,
    )
    assert stats.as_dict() == {
        "hits": 2,
        "misses": 2,
        "evictions": 1,
        "expirations": 1,
        "size": 2,
        "bytes": cost("c", b"333") + cost("d", b"4444"),
        "capacity": 2,
        "max_bytes": 10_000,
    }


def test_stats_is_a_frozen_snapshot(clock: FakeClock) -> None:
    store = make(clock)
    before = store.stats()
    store.set("k", b"v")
    store.get("k")
    assert before.size == 0 and before.hits == 0
    with pytest.raises(AttributeError):
        before.hits = 5  # type: ignore[misc]


def test_peek_and_contains_touch_neither_stats_nor_order(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals, capacity=2)
    store.set("a", b"1")
    store.set("b", b"2")
    assert store.peek("a") == b"1"
    assert "a" in store
    assert store.peek("missing") is None
    assert "missing" not in store
    assert 42 not in store
    assert store.stats().hits == 0 and store.stats().misses == 0
    store.set("c", b"3")
    assert removals.calls == [("a", "evicted")]  # peek did not refresh "a"


def test_delete(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals)
    store.set("k", b"v")
    store.set("e", b"v", ttl=1)
    assert store.delete("k") is True
    assert store.delete("k") is False
    assert store.get("k") is None
    clock.advance(1)
    assert store.delete("e") is False  # expired: already invisible, but removed
    assert len(store) == 0
    assert store.stats().bytes == 0
    assert removals.calls == []


def test_clear_returns_count_keeps_counters(clock: FakeClock, removals: Removals) -> None:
    store = make(clock, removals)
    for key in "abc":
        store.set(key, b"v", ttl=1 + len(key))
    store.get("a")
    assert store.clear() == 3
    assert len(store) == 0
    assert store.keys() == []
    assert store.stats().bytes == 0
    assert store.stats().hits == 1
    assert removals.calls == []
    clock.advance(100)
    assert store.sweep() == 0  # the heap went with the entries
    assert store.clear() == 0


def test_keys_are_live_keys_least_recently_used_first(clock: FakeClock) -> None:
    store = make(clock)
    store.set("a", b"", ttl=10)
    store.set("b", b"", ttl=1)
    store.set("c", b"", ttl=10)
    store.get("a")
    clock.advance(1)
    assert store.keys() == ["c", "a"]
    assert len(store) == 3


# --- the removal callback ---------------------------------------------------------------------------------------------


def test_on_remove_sees_the_entry_already_gone(clock: FakeClock) -> None:
    seen: list[tuple[str, bool, int]] = []

    def on_remove(key: str, reason: RemoveReason) -> None:
        seen.append((key, key in store, len(store)))

    store = L1Store(capacity=1, clock=clock, on_remove=on_remove)
    store.set("a", b"1")
    store.set("b", b"2")
    assert seen == [("a", False, 1)]


def test_raising_on_remove_leaves_store_consistent_and_all_callbacks_run(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def on_remove(key: str, reason: RemoveReason) -> None:
        calls.append(key)
        raise RuntimeError(f"boom {key}")

    store = L1Store(capacity=10, clock=clock, on_remove=on_remove)
    for key in "abc":
        store.set(key, b"v", ttl=1)
    clock.advance(1)
    with pytest.raises(RuntimeError, match="boom a"):
        store.sweep()
    assert calls == ["a", "b", "c"]
    assert "on_remove('b', 'expired') raised" in caplog.text
    assert len(store) == 0
    assert store.stats().bytes == 0
    assert store.stats().expirations == 3
    assert store.sweep() == 0  # nothing is reported twice


def test_raising_on_remove_during_set_still_stores(clock: FakeClock) -> None:
    def on_remove(key: str, reason: RemoveReason) -> None:
        raise RuntimeError("boom")

    store = L1Store(capacity=1, clock=clock, on_remove=on_remove)
    store.set("a", b"1")
    with pytest.raises(RuntimeError):
        store.set("b", b"2")
    assert store.keys() == ["b"]
    assert store.stats().bytes == cost("b", b"2")


def test_on_remove_may_reenter_the_store(clock: FakeClock) -> None:
    def on_remove(key: str, reason: RemoveReason) -> None:
        store.delete(key)
        store.set("log:" + key, b"", ttl=100)

    store = L1Store(capacity=10, clock=clock, on_remove=on_remove)
    store.set("a", b"v", ttl=1)
    clock.advance(1)
    assert store.get("a") is None
    assert store.keys() == ["log:a"]


# --- invalid arguments ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"capacity": 0}, ValueError, "capacity"),
        ({"capacity": -1}, ValueError, "-1"),
        ({"capacity": 2.5}, TypeError, "2.5"),
        ({"capacity": True}, TypeError, "capacity"),
        ({"max_bytes": 0}, ValueError, "max_bytes"),
        ({"max_bytes": "10"}, TypeError, "'10'"),
        ({"default_ttl": 0}, ValueError, "default_ttl"),
        ({"default_ttl": -3}, ValueError, "-3"),
        ({"default_ttl": math.nan}, ValueError, "nan"),
        ({"default_ttl": "5"}, TypeError, "'5'"),
        ({"default_ttl": False}, TypeError, "default_ttl"),
        ({"clock": 5}, TypeError, "clock"),
        ({"on_remove": "nope"}, TypeError, "on_remove"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, object], exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=fragment):
        L1Store(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ttl", "exc", "fragment"),
    [
        (0, ValueError, "0"),
        (-1.5, ValueError, "-1.5"),
        (math.nan, ValueError, "nan"),
        (-math.inf, ValueError, "-inf"),
        ("10", TypeError, "'10'"),
        (True, TypeError, "True"),
    ],
)
def test_set_rejects_bad_ttl_and_stores_nothing(
    clock: FakeClock, ttl: object, exc: type[Exception], fragment: str
) -> None:
    store = make(clock)
    with pytest.raises(exc, match=fragment):
        store.set("k", b"v", ttl=ttl)  # type: ignore[arg-type]
    assert len(store) == 0


@pytest.mark.parametrize("value", ["text", bytearray(b"x"), memoryview(b"x"), None, 5])
def test_set_rejects_non_bytes_value(clock: FakeClock, value: object) -> None:
    store = make(clock)
    with pytest.raises(TypeError, match=type(value).__name__):
        store.set("k", value)  # type: ignore[arg-type]
    assert len(store) == 0


def test_set_rejects_bad_keys(clock: FakeClock) -> None:
    store = make(clock)
    with pytest.raises(TypeError, match="bytes"):
        store.set(b"k", b"v")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="UTF-8"):
        store.set("\ud800", b"v")
    assert len(store) == 0


@pytest.mark.parametrize(("limit", "exc"), [(0, ValueError), (-1, ValueError), (1.0, TypeError), (None, TypeError)])
def test_sweep_rejects_bad_limit(clock: FakeClock, limit: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="limit"):
        make(clock).sweep(limit)  # type: ignore[arg-type]


# --- the store against a reference model ------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d", "é", "key-five"])
VALUES = st.binary(max_size=48)
TTLS = st.sampled_from([None, 0.5, 1, 2.5, 4])
DEFAULT_TTL = 3.0


@dataclass
class ModelEntry:
    value: bytes
    expires_at: float
    seq: int
    nbytes: int


class StoreMachine(RuleBasedStateMachine):
    """Drives L1Store and a plain model (a dict plus a recency list) with the same
    operations and compares every answer, every removal and every counter."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.removals = Removals()
        self.model: dict[str, ModelEntry] = {}
        self.order: list[str] = []  # least recently used first
        self.expected_removals: list[tuple[str, RemoveReason]] = []
        self.seq = 0
        self.hits = self.misses = self.evictions = self.expirations = 0
        self.store: L1Store | None = None

    @initialize(capacity=st.integers(1, 5), max_bytes=st.integers(ENTRY_OVERHEAD + 2, 4 * ENTRY_OVERHEAD + 100))
    def create(self, capacity: int, max_bytes: int) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self.store = L1Store(
            capacity=capacity, max_bytes=max_bytes, default_ttl=DEFAULT_TTL, clock=self.clock, on_remove=self.removals
        )

    # model helpers

    def _drop(self, key: str) -> None:
        del self.model[key]
        self.order.remove(key)

    def _expired_by_expiry(self) -> list[str]:
        now = self.clock.now
        expired = [k for k, e in self.model.items() if e.expires_at <= now]
        return sorted(expired, key=lambda k: (self.model[k].expires_at, self.model[k].seq))

    def _over(self) -> bool:
        return len(self.model) > self.capacity or sum(e.nbytes for e in self.model.values()) > self.max_bytes

    # operations

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        assert self.store is not None
        stored = self.store.set(key, value, ttl)
        if key in self.model:
            self._drop(key)
        nbytes = cost(key, value)
        assert stored == (nbytes <= self.max_bytes)
        if not stored:
            return
        self.seq += 1
        self.model[key] = ModelEntry(value, self.clock.now + (DEFAULT_TTL if ttl is None else ttl), self.seq, nbytes)
        self.order.append(key)
        while self._over():
            expired = self._expired_by_expiry()
            if expired:
                self._drop(expired[0])
                self.expirations += 1
                self.expected_removals.append((expired[0], "expired"))
            else:
                victim = self.order[0]
                self._drop(victim)
                self.evictions += 1
                self.expected_removals.append((victim, "evicted"))

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        assert self.store is not None
        got = self.store.get(key)
        entry = self.model.get(key)
        if entry is None:
            self.misses += 1
            assert got is None
        elif entry.expires_at <= self.clock.now:
            self.misses += 1
            self.expirations += 1
            self._drop(key)
            self.expected_removals.append((key, "expired"))
            assert got is None
        else:
            self.hits += 1
            self.order.remove(key)
            self.order.append(key)
            assert got == entry.value

    @rule(key=KEYS)
    def peek_contains_ttl(self, key: str) -> None:
        assert self.store is not None
        entry = self.model.get(key)
        live = entry is not None and entry.expires_at > self.clock.now
        assert self.store.peek(key) == (entry.value if live and entry else None)
        assert (key in self.store) == live
        remaining = self.store.remaining_ttl(key)
        if live and entry:
            assert remaining == pytest.approx(entry.expires_at - self.clock.now)
        else:
            assert remaining is None

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        assert self.store is not None
        entry = self.model.get(key)
        expected = entry is not None and entry.expires_at > self.clock.now
        if entry is not None:
            self._drop(key)
        assert self.store.delete(key) == expected

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(limit=st.integers(1, 4))
    def sweep(self, limit: int) -> None:
        assert self.store is not None
        victims = self._expired_by_expiry()[:limit]
        for key in victims:
            self._drop(key)
            self.expected_removals.append((key, "expired"))
        self.expirations += len(victims)
        assert self.store.sweep(limit) == len(victims)

    @precondition(lambda self: self.store is not None and len(self.model) > 0)
    @rule()
    def clear(self) -> None:
        assert self.store is not None
        assert self.store.clear() == len(self.model)
        self.model.clear()
        self.order.clear()

    # invariants

    @invariant()
    def agrees_with_model(self) -> None:
        if self.store is None:
            return
        now = self.clock.now
        stats = self.store.stats()
        expected_bytes = sum(e.nbytes for e in self.model.values())
        assert len(self.store) == len(self.model) == stats.size <= self.capacity
        assert stats.bytes == expected_bytes <= self.max_bytes
        assert self.store.keys() == [k for k in self.order if self.model[k].expires_at > now]
        assert (stats.hits, stats.misses, stats.evictions, stats.expirations) == (
            self.hits,
            self.misses,
            self.evictions,
            self.expirations,
        )
        assert self.removals.calls == self.expected_removals


StoreMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None, database=None)
test_store_matches_reference_model = StoreMachine.TestCase
