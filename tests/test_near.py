"""The near cache's bounds: bytes first (encoded value + key), entries second, LRU order;
and where the client takes their defaults from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mtcache import Client
from mtcache.client.near import NearCache
from mtcache.shm import VersionTable


@pytest.fixture
def table(tmp_path: Path) -> Iterator[VersionTable]:
    t = VersionTable.create(slots=64, directory=tmp_path)
    yield t
    t.close()


def near(table: VersionTable, capacity: int, max_bytes: int) -> NearCache:
    cache = NearCache(capacity, max_bytes, 60.0)
    cache.table = table
    return cache


def put(cache: NearCache, table: VersionTable, key: str, nbytes: int) -> None:
    encoded = b"x" * nbytes
    cache.put(key, encoded, encoded, table.get(table.slot(key)), 60.0)


def held(cache: NearCache, *keys: str) -> list[str]:
    return [key for key in keys if cache.get(key) is not NearCache.MISSING]


def test_byte_bound_evicts_least_recently_used_until_it_holds(table: VersionTable) -> None:
    cache = near(table, capacity=100, max_bytes=3 * 1001)  # three entries of 1,000 bytes + a 1-byte key
    for key in "abc":
        put(cache, table, key, 1000)
    assert cache.bytes == 3003 and len(cache) == 3
    assert held(cache, "a") == ["a"]  # a is now the most recently used
    put(cache, table, "d", 1000)
    assert held(cache, "a", "b", "c", "d") == ["a", "c", "d"]
    assert cache.bytes == 3003


def test_one_large_value_pushes_out_as_many_small_ones_as_it_needs(table: VersionTable) -> None:
    cache = near(table, capacity=100, max_bytes=10_000)
    for i in range(9):
        put(cache, table, f"s{i}", 999)  # 1,001 bytes each with the key
    put(cache, table, "big", 5_000)
    assert cache.bytes <= 10_000
    assert held(cache, "big") == ["big"]
    assert held(cache, *(f"s{i}" for i in range(9))) == [f"s{i}" for i in range(5, 9)]


def test_entry_count_is_the_second_bound(table: VersionTable) -> None:
    cache = near(table, capacity=2, max_bytes=1 << 20)
    for key in "abc":
        put(cache, table, key, 10)
    assert len(cache) == 2
    assert held(cache, "a", "b", "c") == ["b", "c"]


def test_value_larger_than_the_byte_bound_is_not_held(table: VersionTable) -> None:
    cache = near(table, capacity=10, max_bytes=100)
    put(cache, table, "small", 10)
    put(cache, table, "huge", 100)  # 100 bytes + a 4-byte key: over the bound on its own
    assert held(cache, "small", "huge") == ["small"]
    assert cache.bytes == 15


def test_overwrite_and_discard_keep_the_byte_count(table: VersionTable) -> None:
    cache = near(table, capacity=10, max_bytes=1 << 20)
    put(cache, table, "k", 100)
    put(cache, table, "k", 300)
    assert cache.bytes == 301
    cache.discard("k")
    assert cache.bytes == 0 and len(cache) == 0


def test_a_copy_whose_version_moved_frees_its_bytes(table: VersionTable) -> None:
    cache = near(table, capacity=10, max_bytes=1 << 20)
    put(cache, table, "k", 100)
    table.bump_key("k")
    assert held(cache, "k") == []
    assert cache.bytes == 0


def test_client_defaults_hold_ten_thousand_values_of_10_kib(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MTCACHE_NEAR_MAX_BYTES", "MTCACHE_NEAR_CAPACITY"):
        monkeypatch.delenv(var, raising=False)
    with Client(local=True) as client:
        bounds = client._core.near
        assert bounds.max_bytes >= 10_000 * (10 * 1024 + len("key:9999"))
        assert bounds.capacity >= 10_000


def test_client_takes_the_bounds_from_the_environment_and_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTCACHE_NEAR_MAX_BYTES", "12345")
    monkeypatch.setenv("MTCACHE_NEAR_CAPACITY", "77")
    with Client(local=True) as client:
        assert (client._core.near.max_bytes, client._core.near.capacity) == (12345, 77)
    with Client(local=True, near_max_bytes=999, near_capacity=5) as client:
        assert (client._core.near.max_bytes, client._core.near.capacity) == (999, 5)


@pytest.mark.parametrize(("kwargs", "name"), [({"near_max_bytes": -1}, "near_max_bytes"),
                                              ({"near_capacity": -2}, "near_capacity"),
                                              ({"near_max_bytes": 1.5}, "near_max_bytes")])
def test_bad_bounds_are_a_value_error_naming_them(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Client(local=True, **kwargs)  # type: ignore[arg-type]

