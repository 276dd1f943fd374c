"""The mirror's memory grows with what it holds (issue 15, point 4): its arena is reserved
as it fills, stays within about twice what it holds under churn, is never read past
what is reserved, and stops growing (without breaking) when ``/dev/shm`` is full. And
the coordinator's L1 mirrors again what the mirror lost."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mtcache.mirror as mirror_module
from mtcache.coordinator.local import LocalTier
from mtcache.mirror import GROW_STEP, WAYS, MirrorReader, MirrorWriter
from mtcache.shm import VersionTable

CAP = 64 * 2**20


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def big(tmp_path: Path) -> Iterator[tuple[MirrorWriter, MirrorReader]]:
    # a 64 MiB cap in the real /dev/shm (tmpfs), where reservations are memory
    with MirrorWriter.create(CAP, sets=4096, prefix="mtcache-test") as w, MirrorReader.attach(w.path) as r:
        yield w, r


def test_only_header_and_buckets_are_reserved_at_creation(big: tuple[MirrorWriter, MirrorReader]) -> None:
    w, _ = big
    buckets = 16 * 8 + w.sets * WAYS * 64
    assert w.stats()["arena_committed"] == 0
    assert allocated(w.path) <= buckets + 2 * 4096
    assert os.stat(w.path).st_size == CAP  # the whole size is mapped (sparse)


def test_the_arena_is_reserved_as_it_fills(big: tuple[MirrorWriter, MirrorReader]) -> None:
    w, r = big
    before = allocated(w.path)
    value = b"v" * 1000
    for i in range(100):
        assert w.put(f"k{i}", value, time.monotonic() + 60)
    assert w.stats()["arena_committed"] == GROW_STEP
    assert allocated(w.path) - before == GROW_STEP
    for i in range(100, 5000):  # ~5 MB: it keeps growing, never far past what it holds
        assert w.put(f"k{i}", value, time.monotonic() + 60)
    stats = w.stats()
    assert stats["arena_used"] <= stats["arena_committed"] <= stats["arena_used"] * 9 // 8 + GROW_STEP
    assert allocated(w.path) - before == stats["arena_committed"]
    assert all(r.get(f"k{i}") == value for i in range(0, 5000, 7))


def test_churn_keeps_the_arena_within_twice_what_it_holds(big: tuple[MirrorWriter, MirrorReader]) -> None:
    w, r = big
    latest: dict[str, bytes] = {}
    for n in range(30_000):  # ~60 MB written over 500 keys holding ~1 MB
        key = f"k{n % 500}"
        value = n.to_bytes(4, "little") * (n % 1000 + 1)
        assert w.put(key, value, time.monotonic() + 60)
        latest[key] = value
    stats = w.stats()
    assert stats["arena_committed"] <= 2 * 500 * 4000 + 2 * GROW_STEP
    assert stats["arena_committed"] < CAP // 8
    for key, value in latest.items():
        assert r.get(key) in (None, value)


def test_a_reader_never_reads_past_the_reserved_arena(big: tuple[MirrorWriter, MirrorReader]) -> None:
    w, r = big
    assert w.put("key7", b"x" * 100, time.monotonic() + 60)
    committed = w.stats()["arena_committed"]
    before = allocated(w.path)
    first = 16 * 8
    fd = os.open(w.path, os.O_RDWR)
    try:
        tags = memoryview(os.pread(fd, w.sets * WAYS * 64, first)).cast("Q").tolist()[1::8]
        bucket = tags.index(next(t for t in tags if t))
        # a consistent-looking entry whose value runs from the reserved part into the hole after it
        os.pwrite(fd, (committed + 3 * 4096).to_bytes(8, "little"), first + bucket * 64 + 5 * 8)
    finally:
        os.close(fd)
    assert r.get("key7") is None
    assert allocated(w.path) == before  # the hole was not touched (a tmpfs read fault allocates a page)


def test_a_full_dev_shm_stops_growth_without_breaking(
    big: tuple[MirrorWriter, MirrorReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, r = big
    for i in range(10):
        assert w.put(f"k{i}", b"a" * 1000, time.monotonic() + 60)
    full = OSError(errno.ENOSPC, "No space left on device")

    def no_room(fd: int, offset: int, length: int) -> None:
        raise full

    monkeypatch.setattr(mirror_module, "_reserve", no_room)
    committed = w.stats()["arena_committed"]
    latest = {}
    for i in range(3000):  # 3 MB through a 1 MiB ring: it turns instead of growing
        key, value = f"k{i % 1500}", i.to_bytes(4, "little") * 250
        assert w.put(key, value, time.monotonic() + 60)
        latest[key] = value
    assert w.put("huge", b"h" * (committed + 8), time.monotonic() + 60) is False
    stats = w.stats()
    assert stats["arena_committed"] == committed
    assert stats["evicted_by_ring"] > 0 and stats["not_mirrored"] == 1
    assert r.get("huge") is None
    assert all(r.get(k) in (None, v) for k, v in latest.items())
    assert sum(r.get(k) == v for k, v in latest.items()) == stats["entries"] > 0


def test_l1_mirrors_again_what_the_mirror_lost(tmp_path: Path) -> None:
    table = VersionTable.create(64, directory=tmp_path)
    writer = MirrorWriter.create(1 << 20, sets=16, directory=tmp_path)
    try:
        local = LocalTier(table, writer, capacity=100, max_bytes=1 << 20, default_ttl=60.0)
        version = local.put("k", b"value", 30.0, stamp=1)
        with MirrorReader.attach(writer.path) as reader:
            assert reader.get("k") == b"value"
            writer.delete("k")  # what a reused ring or bucket does to an entry L1 keeps
            assert reader.get("k") is None
            hit = local.get("k")  # a read through the socket
            assert hit is not None and hit.value == b"value"
            assert reader.get("k") == b"value"
            assert local.version_of("k") == hit.version == version  # same value: no version moved
    finally:
        writer.close()
        table.close()
