"""The timed operation loops of W1 (reads) and W2 (90/9/1 mix), sync and async.

The sync and async twins differ only by ``await``: keep them side by side and
change both. Each operation is timed alone with ``perf_counter_ns``; the loop
runs until its deadline, so every peer gets the same wall time.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .common import SEQUENCE_LEN, WORKERS, IntArray, Job, key_name, make_value, mix_sequence, zipf_sequence

if TYPE_CHECKING:
    from .adapters import SyncCache
    from .adapters_async import AsyncCache

__all__ = ["MixPlan", "MixStats", "ReadPlan", "mix_async", "mix_sync", "read_result", "reads_async", "reads_sync"]

_UNTIMED_BATCH = 256


@dataclass(frozen=True)
class ReadPlan:
    """W1: the keys one worker reads, in order (Zipf(0.99), hottest key id 0)."""

    seq: list[str]

    @classmethod
    def make(cls, job: Job, index: int) -> ReadPlan:
        keys = [key_name(kid) for kid in range(job.n_keys)]
        return cls([keys[kid] for kid in zipf_sequence(job.n_keys, SEQUENCE_LEN, job.seed * 1000 + index)])


def reads_sync(
    get: Callable[[str], Any], plan: ReadPlan, seconds: float, lat: array[int] | None
) -> tuple[int, int, int]:
    """Read for ``seconds``; time each read into ``lat`` (untimed if None).
    Returns (operations, misses, elapsed ns)."""
    seq = plan.seq
    mask = len(seq) - 1
    clock = time.perf_counter_ns
    start = clock()
    end = start + int(seconds * 1e9)
    ops = misses = 0
    if lat is None:
        while clock() < end:
            for _ in range(_UNTIMED_BATCH):
                if get(seq[ops & mask]) is None:
                    misses += 1
                ops += 1
        return ops, misses, clock() - start
    append = lat.append
    t0 = now = start
    while now < end:
        value = get(seq[ops & mask])
        now = clock()
        append(now - t0)
        if value is None:
            misses += 1
        ops += 1
        t0 = clock()
    return ops, misses, now - start


async def reads_async(
    get: Callable[[str], Awaitable[Any]], plan: ReadPlan, seconds: float, lat: array[int] | None
) -> tuple[int, int, int]:
    """The asyncio twin of :func:`reads_sync`."""
    seq = plan.seq
    mask = len(seq) - 1
    clock = time.perf_counter_ns
    start = clock()
    end = start + int(seconds * 1e9)
    ops = misses = 0
    if lat is None:
        while clock() < end:
            for _ in range(_UNTIMED_BATCH):
                if await get(seq[ops & mask]) is None:
                    misses += 1
                ops += 1
        return ops, misses, clock() - start
    append = lat.append
    t0 = now = start
    while now < end:
        value = await get(seq[ops & mask])
        now = clock()
        append(now - t0)
        if value is None:
            misses += 1
        ops += 1
        t0 = clock()
    return ops, misses, now - start


def read_result(ops: int, misses: int, elapsed_ns: int, lat: array[int], local: list[int] | None) -> dict[str, Any]:
    """What a W1 worker reports."""
    return {"ops": ops, "misses": misses, "elapsed_ns": elapsed_ns, "lat": lat.tobytes(), "local": local}


@dataclass
class MixPlan:
    """W2: the operation kinds, the keys read (all keys) and the keys written
    (only this worker's own keys, ``kid % WORKERS == index``, so the versions of a
    key grow in one process and ``versions[kid]`` is written by its owner only)."""

    kinds: list[int]
    reads: list[int]
    writes: list[int]
    keys: list[str]
    size: int
    last_version: dict[int, int] = field(default_factory=dict)

    @classmethod
    def make(cls, job: Job, index: int) -> MixPlan:
        seed = job.seed * 1000 + index
        own = list(range(index, job.n_keys, WORKERS))
        return cls(
            kinds=mix_sequence(SEQUENCE_LEN, seed),
            reads=zipf_sequence(job.n_keys, SEQUENCE_LEN, seed + 1),
            writes=zipf_sequence(len(own), SEQUENCE_LEN // 8, seed + 2, population=own),
            keys=[key_name(kid) for kid in range(job.n_keys)],
            size=job.value_size,
            last_version=dict.fromkeys(own, 1),
        )


@dataclass
class MixStats:
    """Counters and latencies of one W2 worker."""

    elapsed_ns: int = 0
    gets: int = 0
    sets: int = 0
    deletes: int = 0
    misses: int = 0
    stale: int = 0
    wrong: int = 0
    errors: int = 0
    dropped: int = 0
    get_lat: array[int] = field(default_factory=lambda: array("q"))
    write_lat: array[int] = field(default_factory=lambda: array("q"))

    def result(self) -> dict[str, Any]:
        return {
            "ops": self.gets + self.sets + self.deletes, "elapsed_ns": self.elapsed_ns, "gets": self.gets,
            "sets": self.sets, "deletes": self.deletes, "misses": self.misses, "stale": self.stale,
            "wrong": self.wrong, "errors": self.errors, "dropped": self.dropped,
            "get_lat": self.get_lat.tobytes(), "write_lat": self.write_lat.tobytes(),
        }


def mix_sync(
    cache: SyncCache, plan: MixPlan, versions: IntArray, seconds: float, *, record: bool
) -> MixStats:
    """Run the 90/9/1 mix for ``seconds``. A read is stale when it returns a version
    older than ``versions[kid]`` read just before the read started."""
    st = MixStats()
    dropped = getattr(cache, "dropped_writes", 0)
    get, put, delete = cache.get, cache.set, cache.delete
    kinds, reads, writes, keys, last = plan.kinds, plan.reads, plan.writes, plan.keys, plan.last_version
    kmask, wmask = len(kinds) - 1, len(writes) - 1
    get_append, write_append = st.get_lat.append, st.write_lat.append
    clock = time.perf_counter_ns
    start = now = clock()
    end = start + int(seconds * 1e9)
    i = r = w = 0
    while now < end:
        op = kinds[i & kmask]
        i += 1
        if op == 0:
            kid = reads[r & kmask]
            r += 1
            expected = versions[kid]
            t0 = clock()
            try:
                value = get(keys[kid])
            except Exception:  # counted: a peer that fails under load shows it
                st.errors += 1
                now = clock()
                continue
            now = clock()
            get_append(now - t0)
            st.gets += 1
            if value is None:
                st.misses += 1
            else:
                if value["v"] < expected:
                    st.stale += 1
                if value["k"] != kid:
                    st.wrong += 1
            continue
        kid = writes[w & wmask]
        w += 1
        version = last[kid] + 1
        fresh = make_value(kid, version, plan.size) if op == 1 else None
        t0 = clock()
        try:
            if fresh is not None:
                put(keys[kid], fresh)
            else:
                delete(keys[kid])
        except Exception:  # counted, and the version is not published
            st.errors += 1
            now = clock()
            continue
        now = clock()
        last[kid] = version
        versions[kid] = version
        write_append(now - t0)
        if fresh is not None:
            st.sets += 1
        else:
            st.deletes += 1
    st.elapsed_ns = now - start
    st.dropped = getattr(cache, "dropped_writes", 0) - dropped
    if not record:
        st.get_lat, st.write_lat = array("q"), array("q")
    return st


async def mix_async(
    cache: AsyncCache, plan: MixPlan, versions: IntArray, seconds: float, *, record: bool
) -> MixStats:
    """The asyncio twin of :func:`mix_sync`."""
    st = MixStats()
    dropped = getattr(cache, "dropped_writes", 0)
    get, put, delete = cache.get, cache.set, cache.delete
    kinds, reads, writes, keys, last = plan.kinds, plan.reads, plan.writes, plan.keys, plan.last_version
    kmask, wmask = len(kinds) - 1, len(writes) - 1
    get_append, write_append = st.get_lat.append, st.write_lat.append
    clock = time.perf_counter_ns
    start = now = clock()
    end = start + int(seconds * 1e9)
    i = r = w = 0
    while now < end:
        op = kinds[i & kmask]
        i += 1
        if op == 0:
            kid = reads[r & kmask]
            r += 1
            expected = versions[kid]
            t0 = clock()
            try:
                value = await get(keys[kid])
            except Exception:  # counted: a peer that fails under load shows it
                st.errors += 1
                now = clock()
                continue
            now = clock()
            get_append(now - t0)
            st.gets += 1
            if value is None:
                st.misses += 1
            else:
                if value["v"] < expected:
                    st.stale += 1
                if value["k"] != kid:
                    st.wrong += 1
            continue
        kid = writes[w & wmask]
        w += 1
        version = last[kid] + 1
        fresh = make_value(kid, version, plan.size) if op == 1 else None
        t0 = clock()
        try:
            if fresh is not None:
                await put(keys[kid], fresh)
            else:
                await delete(keys[kid])
        except Exception:  # counted, and the version is not published
            st.errors += 1
            now = clock()
            continue
        now = clock()
        last[kid] = version
        versions[kid] = version
        write_append(now - t0)
        if fresh is not None:
            st.sets += 1
        else:
            st.deletes += 1
    st.elapsed_ns = now - start
    st.dropped = getattr(cache, "dropped_writes", 0) - dropped
    if not record:
        st.get_lat, st.write_lat = array("q"), array("q")
    return st
