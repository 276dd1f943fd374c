"""The shared-memory L1 mirror: single-process behaviour, a dict-model state
machine, and cross-process torture (a reader process against a busy writer)."""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import stat
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mtcache.mirror import WAYS, MirrorReader, MirrorWriter
from mtcache.shm import VersionTable, shm_dir

WAIT = 30.0  # seconds a test waits for another process before failing
SMALL = 64 * 1024 + 4096  # up to 15 sets: one page of header and buckets, then a 64 KiB arena


class FakeClock:
    """A ``time.monotonic_ns`` stand-in that only moves when told."""

    def __init__(self) -> None:
        self.now = 1_000 * 10**9

    def __call__(self) -> int:
        return self.now

    def at(self, seconds: float) -> float:
        """``expires_at`` for ``seconds`` from now."""
        return self.now / 1e9 + seconds

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * 1e9)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def writer(tmp_path: Path, clock: FakeClock) -> Iterator[MirrorWriter]:
    w = MirrorWriter.create(1 << 20, sets=64, directory=tmp_path, clock=clock)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def reader(writer: MirrorWriter, clock: FakeClock) -> Iterator[MirrorReader]:
    r = MirrorReader.attach(writer.path, clock=clock)
    try:
        yield r
    finally:
        r.close()


def keys_in_one_set(sets: int, count: int, remainder: int = 0) -> list[str]:
    """``count`` keys whose crc32 falls into set ``remainder`` of ``sets``."""
    found: list[str] = []
    i = 0
    while len(found) < count:
        key = f"k{i}"
        if zlib.crc32(key.encode()) % sets == remainder:
            found.append(key)
        i += 1
    return found


def test_put_get_delete_clear(writer: MirrorWriter, reader: MirrorReader, clock: FakeClock) -> None:
    assert writer.put("a", b"alpha", clock.at(60))
    assert writer.put("b", b"beta", clock.at(60))
    assert reader.get("a") == b"alpha"
    assert reader.get("b") == b"beta"
    assert reader.get("c") is None
    assert writer.stats()["entries"] == 2

    assert writer.delete("a") is True
    assert writer.delete("a") is False
    assert reader.get("a") is None
    assert reader.get("b") == b"beta"

    writer.put("c", b"gamma", clock.at(60))
    writer.clear()
    assert reader.get("b") is None and reader.get("c") is None
    stats = writer.stats()
    assert stats["entries"] == 0 and stats["arena_used"] == 0
    assert writer.put("b", b"again", clock.at(60))
    assert reader.get("b") == b"again"
    assert (reader.hits, reader.misses, reader.torn_retries) == (4, 4, 0)


def test_overwrite_with_different_sizes(writer: MirrorWriter, reader: MirrorReader, clock: FakeClock) -> None:
    for size in (0, 1, 7, 8, 9, 5000, 3, 200, 0, 12_000, 64):
        value = bytes([size % 251]) * size
        assert writer.put("key", value, clock.at(60))
        assert reader.get("key") == value
    stats = writer.stats()
    assert stats["entries"] == 1
    assert stats["arena_used"] == 72  # "key" + 64 bytes, rounded up to 8
    assert stats["puts"] == 11


def test_keys_of_any_length_and_script(writer: MirrorWriter, reader: MirrorReader, clock: FakeClock) -> None:
    keys = ["", "ключ-🔑", "x" * 10_000, "a\x00b"]
    for i, key in enumerate(keys):
        assert writer.put(key, f"value {i}".encode(), clock.at(60))
    for i, key in enumerate(keys):
        assert reader.get(key) == f"value {i}".encode()
    assert reader.get("a\x00c") is None


def test_expiry_follows_the_clock(writer: MirrorWriter, reader: MirrorReader, clock: FakeClock) -> None:
    assert writer.put("k", b"v", clock.at(10))
    assert writer.put("forever", b"f", math.inf)
    clock.advance(9.999)
    assert reader.get("k") == b"v"
    clock.advance(0.001)
    assert reader.get("k") is None
    clock.advance(10**9)
    assert reader.get("forever") == b"f"


def test_put_already_expired_is_not_mirrored_and_drops_the_old_value(
    writer: MirrorWriter, reader: MirrorReader, clock: FakeClock
) -> None:
    assert writer.put("k", b"old", clock.at(10))
    assert writer.put("k", b"new", clock.at(-1)) is False
    assert reader.get("k") is None
    assert writer.put("k", b"new", 0) is False
    stats = writer.stats()
    assert stats["not_mirrored"] == 2 and stats["entries"] == 0


def test_a_fifth_key_in_a_set_evicts_the_earliest_expiring(tmp_path: Path, clock: FakeClock) -> None:
    sets = 16
    keys = keys_in_one_set(sets, WAYS + 1)
    ttls = [50, 20, 70, 40]  # keys[1] expires first
    with MirrorWriter.create(SMALL, sets=sets, directory=tmp_path, clock=clock) as w, \
            MirrorReader.attach(w.path, clock=clock) as r:
        for key, ttl in zip(keys, ttls, strict=False):
            assert w.put(key, key.encode(), clock.at(ttl))
        assert w.put(keys[0], b"rewritten", clock.at(50))  # its own bucket: nothing evicted
        assert w.stats()["evicted_by_set"] == 0
        assert w.put(keys[4], b"fifth", clock.at(60))
        assert r.get(keys[1]) is None
        assert [r.get(k) for k in (keys[0], keys[2], keys[3], keys[4])] == [b"rewritten", keys[2].encode(),
                                                                              keys[3].encode(), b"fifth"]
        stats = w.stats()
        assert stats["evicted_by_set"] == 1 and stats["entries"] == WAYS


def test_keys_with_the_same_crc32_never_read_each_other(writer: MirrorWriter, reader: MirrorReader,
                                                        clock: FakeClock) -> None:
    assert zlib.crc32(b"plumless") == zlib.crc32(b"buckeroo")
    assert writer.put("plumless", b"P", clock.at(60))
    assert writer.put("buckeroo", b"B", clock.at(60))  # replaces plumless: one entry per tag in a set
    assert reader.get("buckeroo") == b"B"
    assert reader.get("plumless") is None
    assert writer.stats()["evicted_by_set"] == 1


def test_ring_wraps_around_and_never_serves_overwritten_bytes(tmp_path: Path, clock: FakeClock) -> None:
    sets = 16
    size = 8192 + 16 * 1024  # 16 KiB arena behind two pages of header and buckets
    with MirrorWriter.create(size, sets=sets, directory=tmp_path, clock=clock) as w, \
            MirrorReader.attach(w.path, clock=clock) as r:
        assert w.arena_size == 16 * 1024
        latest: dict[str, bytes] = {}
        written = 0
        n = 0
        while written < 8 * w.arena_size:
            key = f"key{n % 97}"
            value = f"{key}:{n}:".encode() + bytes([n % 256]) * ((n * 37) % (w.max_entry - 20))
            assert w.put(key, value, clock.at(60))
            assert r.get(key) == value
            latest[key] = value
            written += len(value)
            n += 1
            if n % 50 == 0:
                for k, v in latest.items():
                    assert r.get(k) in (None, v)
        stats = w.stats()
        assert stats["evicted_by_ring"] > 0
        assert stats["arena_used"] <= stats["arena_size"]
        readable = [k for k, v in latest.items() if r.get(k) == v]
        assert len(readable) == stats["entries"] > 0


def test_ring_reclaim_keeps_its_bookkeeping_bounded(tmp_path: Path, clock: FakeClock) -> None:
    with MirrorWriter.create(SMALL, sets=4, directory=tmp_path, clock=clock) as w:
        for i in range(20_000):  # tiny rewrites of one key: many dead ring records
            w.put("k", i.to_bytes(4, "little"), clock.at(60))
        assert len(w._ring) <= 2 * w.stats()["entries"] + 4096 + 1
        with MirrorReader.attach(w.path, clock=clock) as r:
            assert r.get("k") == (19_999).to_bytes(4, "little")


def test_oversized_value_is_not_mirrored(writer: MirrorWriter, reader: MirrorReader, clock: FakeClock) -> None:
    limit = writer.max_entry
    assert limit == writer.arena_size // 8
    assert writer.put("k", b"small", clock.at(60))
    assert writer.put("k", b"x" * (limit - 1 + 1), clock.at(60)) is False  # key + value = limit + 1
    assert reader.get("k") is None  # the old value is gone too
    assert writer.put("k", b"x" * (limit - 1), clock.at(60))
    assert reader.get("k") == b"x" * (limit - 1)
    assert writer.stats()["not_mirrored"] == 1


def test_segment_file_mode_location_and_close(clock: FakeClock) -> None:
    w = MirrorWriter.create(SMALL, sets=4, prefix="mtcache-test", clock=clock)
    try:
        path = Path(w.path)
        assert path.parent == shm_dir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        r = MirrorReader.attach(w.path, clock=clock)
        assert r.generation == w.generation
        w.put("k", b"v", clock.at(60))
        assert r.get("k") == b"v"
    finally:
        w.close()
    assert not path.exists()
    assert r.get("k") is None  # close invalidated every entry before unlinking
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.put("k", b"v", clock.at(60))
    r.close()
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.get("k")


def test_two_mirrors_have_different_generations(tmp_path: Path) -> None:
    with MirrorWriter.create(SMALL, sets=4, directory=tmp_path) as a, \
            MirrorWriter.create(SMALL, sets=4, directory=tmp_path) as b:
        assert a.path != b.path
        assert a.generation != b.generation


def test_attach_refuses_what_is_not_a_mirror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        MirrorReader.attach(str(tmp_path / "missing.l1m"))
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(SMALL))
    with pytest.raises(ValueError, match="not an mtcache L1 mirror"):
        MirrorReader.attach(str(junk))
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="too small"):
        MirrorReader.attach(str(tiny))
    table = VersionTable.create(16, directory=tmp_path)
    try:
        with pytest.raises(ValueError, match="not an mtcache L1 mirror"):
            MirrorReader.attach(table.path)
    finally:
        table.close()
    with MirrorWriter.create(SMALL, sets=4, directory=tmp_path) as w:
        cut = tmp_path / "cut"
        cut.write_bytes(Path(w.path).read_bytes()[: SMALL - 8])  # a mirror's header, the wrong size
        with pytest.raises(ValueError, match="not an mtcache L1 mirror"):
            MirrorReader.attach(str(cut))


def test_reader_survives_any_bucket_contents(writer: MirrorWriter, reader: MirrorReader, clock: FakeClock) -> None:
    keys = [f"key{i}" for i in range(50)]
    for key in keys:
        writer.put(key, key.encode() * 3, clock.at(60))
    first, count = 128, writer.sets * WAYS * 8  # the bucket words, after a 16-word header
    fd = os.open(writer.path, os.O_RDWR)
    try:
        # a consistent entry whose value would run past the arena: a miss, not the arena's tail
        tags = memoryview(os.pread(fd, count * 8, first)).cast("Q").tolist()[1::8]
        bucket = tags.index(zlib.crc32(b"key7") | 1 << 32)
        assert reader.get("key7") == b"key7" * 3
        os.pwrite(fd, writer.arena_size.to_bytes(8, "little"), first + bucket * 64 + 5 * 8)  # value length
        assert reader.get("key7") is None
        # every field of every bucket but the tag (so reads get past the probe) made nonsense
        rng = random.Random(7)
        garbage = [0, 1, 3, 4, 2**32, 2**63, 2**64 - 1, writer.arena_size, writer.arena_size - 1]
        for _ in range(20):
            words = memoryview(os.pread(fd, count * 8, first)).cast("Q").tolist()
            for i in range(count):
                if i % 8 != 1:
                    words[i] = rng.choice(garbage) if rng.random() < 0.7 else rng.getrandbits(64)
            os.pwrite(fd, b"".join(w.to_bytes(8, "little") for w in words), first)
            for key in keys:
                assert reader.get(key) in (None, key.encode() * 3)
    finally:
        os.close(fd)


def test_bad_arguments_are_named(writer: MirrorWriter, reader: MirrorReader, clock: FakeClock,
                                 tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="key"):
        writer.put(1, b"v", clock.at(60))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value"):
        writer.put("k", "text", clock.at(60))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expires_at"):
        writer.put("k", b"v", "soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        writer.put("k", b"v", math.nan)
    with pytest.raises(TypeError, match="key"):
        writer.delete(b"k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        reader.get(b"k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sets"):
        MirrorWriter.create(SMALL, sets=0, directory=tmp_path)
    with pytest.raises(TypeError, match="size"):
        MirrorWriter.create(2.5, directory=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        MirrorWriter.create(8192, sets=64, directory=tmp_path)
    assert writer.stats()["puts"] == 0
    assert list(tmp_path.iterdir()) == [Path(writer.path)]


MODEL_KEYS = [f"k{i}" for i in range(12)] + ["plumless", "buckeroo"]  # the last two share a crc32


class MirrorVersusDict(RuleBasedStateMachine):
    """The mirror may forget anything, but what it returns is the model's value."""

    keys = st.sampled_from(MODEL_KEYS)

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.writer = MirrorWriter.create(8192 + 4096, sets=2, prefix="mtcache-test", clock=self.clock)
        self.reader = MirrorReader.attach(self.writer.path, clock=self.clock)
        self.model: dict[str, tuple[bytes, float]] = {}

    @rule(key=keys, size=st.integers(0, 1100), ttl=st.sampled_from([-1.0, 1.0, 5.0, 30.0, math.inf]),
          fill=st.integers(0, 255))
    def put(self, key: str, size: int, ttl: float, fill: int) -> None:
        value = bytes([fill]) * size
        expires_at = self.clock.at(ttl)
        mirrored = self.writer.put(key, value, expires_at)
        assert mirrored == (ttl > 0 and len(key) + size <= self.writer.max_entry)
        if mirrored:
            assert self.reader.get(key) == value
        self.model[key] = (value, expires_at)

    @rule(key=keys)
    def delete(self, key: str) -> None:
        self.writer.delete(key)
        self.model.pop(key, None)
        assert self.reader.get(key) is None

    @precondition(lambda self: len(self.model) > 8)
    @rule()
    def clear(self) -> None:
        self.writer.clear()
        self.model.clear()

    @rule(seconds=st.sampled_from([0.5, 2.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def reads_agree_with_the_model(self) -> None:
        for key in MODEL_KEYS:
            got = self.reader.get(key)
            if got is not None:
                value, expires_at = self.model[key]
                assert got == value
                assert self.clock() < expires_at * 1e9
        stats = self.writer.stats()
        assert stats["entries"] <= 2 * WAYS
        assert 0 <= stats["arena_used"] <= stats["arena_size"]

    def teardown(self) -> None:
        self.reader.close()
        self.writer.close()


MirrorVersusDict.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_mirror_versus_dict = MirrorVersusDict.TestCase


# ---- across processes ------------------------------------------------------------------------------

TORTURE_SECONDS = 3.0


def make_value(key: str, n: int) -> bytes:
    """``key|n|`` + a payload whose size and bytes change with n + crc32 of the rest."""
    body = f"{key}|{n}|".encode() + bytes([n % 256]) * ((n * 7919) % 8000)
    return body + zlib.crc32(body).to_bytes(4, "little")


def check_value(key: str, value: bytes) -> int | None:
    """The sequence number in ``value`` if it is an intact value of ``key``, else None."""
    body, crc = value[:-4], value[-4:]
    parts = body.split(b"|", 2)
    if zlib.crc32(body).to_bytes(4, "little") != crc or len(parts) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1]) if parts[0] == key.encode() else None


def torture_reader(path: str, keys: list[str], ready: Any, stop: Any, results: Any) -> None:
    """Child process: read ``keys`` round-robin until ``stop``; report what it saw."""
    counts = {"reads": 0, "bad": 0, "stale": 0}
    last = dict.fromkeys(keys, -1)
    with MirrorReader.attach(path) as r:
        get = r.get
        ready.set()
        while not stop.is_set():
            for _ in range(200):
                for key in keys:
                    value = get(key)
                    if value is None:
                        continue
                    n = check_value(key, value)
                    if n is None:
                        counts["bad"] += 1
                    elif n < last[key]:
                        counts["stale"] += 1
                    else:
                        last[key] = n
            counts["reads"] += 200 * len(keys)
        counts.update(hits=r.hits, misses=r.misses, torn=r.torn_retries)
    results.put(counts)


def serve_gets(path: str, requests: Any, answers: Any) -> None:
    """Child process: answer each key from ``requests`` with ``get(key)``; None ends."""
    with MirrorReader.attach(path) as r:
        while (key := requests.get()) is not None:
            answers.put(r.get(key))


@pytest.fixture
def spawn() -> Any:
    return multiprocessing.get_context("spawn")


@pytest.mark.slow
def test_torture_reader_process_never_sees_a_torn_value(spawn: Any) -> None:
    # 4 sets of 4 ways: 4 keys in each set, 2 more in one of them (set evictions there); 64 KiB of
    # arena for ~72 KB of live values (4 KB on average), so the ring reclaims live entries too
    keys = [key for s in range(4) for key in keys_in_one_set(4, 4 + 2 * (s == 0), remainder=s)]
    with MirrorWriter.create(64 * 1024 + 4096, sets=4, prefix="mtcache-test") as w:
        ready, stop, results = spawn.Event(), spawn.Event(), spawn.Queue()
        proc = spawn.Process(target=torture_reader, args=(w.path, keys, ready, stop, results))
        proc.start()
        try:
            assert ready.wait(WAIT), f"reader process did not start (exit code {proc.exitcode})"
            n = rounds = 0
            deadline = time.monotonic() + TORTURE_SECONDS
            while time.monotonic() < deadline:
                for key in keys:
                    w.put(key, make_value(key, n), time.monotonic() + 60)
                    n += 1
                rounds += 1
                if rounds % 100 == 0:
                    w.delete(keys[rounds // 100 % len(keys)])
            stop.set()
            counts = results.get(timeout=WAIT)
            proc.join(WAIT)
            assert proc.exitcode == 0
        finally:
            proc.kill()
            proc.join(WAIT)
            results.close()
            results.join_thread()
        stats = w.stats()
    print(f"\ntorture: {n:,} puts, {counts}, writer {stats}")
    assert counts["bad"] == 0, counts
    assert counts["stale"] == 0, counts
    assert counts["hits"] > 0, counts
    assert stats["evicted_by_ring"] > 0 and stats["evicted_by_set"] > 0


def test_delete_is_visible_to_another_process_when_it_returns(spawn: Any) -> None:
    with MirrorWriter.create(SMALL, sets=16, prefix="mtcache-test") as w:
        requests, answers = spawn.Queue(), spawn.Queue()
        proc = spawn.Process(target=serve_gets, args=(w.path, requests, answers))
        proc.start()

        def remote_get(key: str) -> bytes | None:
            requests.put(key)
            return answers.get(timeout=WAIT)

        try:
            for i in range(20):
                key = f"key{i}"
                assert w.put(key, b"v%d" % i, time.monotonic() + 60)
                assert remote_get(key) == b"v%d" % i
                assert w.delete(key)
                assert remote_get(key) is None
            w.put("last", b"x", time.monotonic() + 60)
            assert remote_get("last") == b"x"
            w.clear()
            assert remote_get("last") is None
            requests.put(None)
            proc.join(WAIT)
            assert proc.exitcode == 0
        finally:
            proc.kill()
            proc.join(WAIT)
            for q in (requests, answers):
                q.close()
                q.join_thread()
