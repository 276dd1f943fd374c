"""What the parent and the workers share: the plan, values, key sequences and
latency quantiles. Nothing here imports a peer library or numpy at import
time (workers of W4 are measured for memory, so they import only what they use).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any, Protocol

N_KEYS = 10_000
WORKERS = 8
ZIPF_S = 0.99
THREADS = 16
COMPUTE_S = 0.2
L2_TTL = 3_600
SEQUENCE_LEN = 1 << 16

SMALL = 200
LARGE = 10 * 1024
MEMORY_VALUE = 1024

class IntArray(Protocol):
    """A shared array of integers (``multiprocessing`` ``Array``, with or without its lock)."""

    def __getitem__(self, index: int) -> int: ...
    def __setitem__(self, index: int, value: int) -> None: ...
    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of one run (full or ``--quick``)."""

    quick: bool
    n_keys: int
    settle_s: float
    warmup_s: float
    measure_s: float
    stampede_keys: int
    memory_keys: int
    crosshost_samples: int
    w1_sizes: tuple[int, ...]

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 2_000, 0.3, 0.3, 0.8, 3, 2_000, 100, (SMALL,))
        return cls(False, N_KEYS, 1.0, 1.5, 4.0, 50, N_KEYS, 600, (SMALL, LARGE))


@dataclass(frozen=True)
class Env:
    """Where a peer's servers are: a Redis URL, a coordinator socket, a directory."""

    redis_url: str | None = None
    socket: str | None = None
    directory: str | None = None


@dataclass(frozen=True)
class Job:
    """One workload for one peer, as each of the worker processes sees it."""

    workload: str
    peer: str
    env: Env
    value_size: int = SMALL
    n_keys: int = N_KEYS
    settle_s: float = 1.0
    warmup_s: float = 1.0
    measure_s: float = 3.0
    seed: int = 7
    stampede_keys: int = 0


def key_name(kid: int) -> str:
    """The cache key of key id ``kid``."""
    return f"k:{kid}"


def make_value(kid: int, version: int, size: int) -> dict[str, Any]:
    """A fresh dict of about ``size`` bytes (msgpack) carrying its key id and version.

    Built anew on every call so that nothing is shared between cached values.
    """
    value: dict[str, Any] = {
        "k": kid, "v": version, "name": f"item-{kid:05d}", "price": 123.45 + kid % 100, "qty": kid % 17,
        "currency": "EUR", "tags": ["hot", "eu", "retail"], "updated": "2026-11-27T10:00:00Z",
    }
    # msgpack sizes: the dict above 105 bytes, a row 207, the "rows" entry 8, the "note" entry 7 + its length
    n_rows = (size - 113) // 207 if size >= 400 else 0
    if n_rows:
        value["rows"] = [
            {"i": j, "sku": f"SKU-{kid:05d}-{j:03d}", "p": 9.99 + j, "q": j % 5,
             "desc": f"{kid:05d}/{j:03d}:" + "d" * 150, "ok": True}
            for j in range(n_rows)
        ]
    value["note"] = "n" * max(0, size - 105 - (8 + 207 * n_rows if n_rows else 0) - 7)
    return value


def zipf_weights(n: int, s: float = ZIPF_S) -> list[float]:
    """Cumulative Zipf(``s``) weights of ranks 0..n-1 (rank 0 the hottest)."""
    return list(itertools.accumulate(1.0 / (rank + 1) ** s for rank in range(n)))


def zipf_sequence(n: int, length: int, seed: int, population: list[int] | None = None) -> list[int]:
    """``length`` key ids drawn by Zipf(0.99) over ``population`` (ordered hottest
    first; default ``range(n)``)."""
    pop = population if population is not None else list(range(n))
    rng = random.Random(seed)
    return rng.choices(pop, cum_weights=zipf_weights(len(pop)), k=length)


def mix_sequence(length: int, seed: int) -> list[int]:
    """W2's operations: 0 = get (90 %), 1 = set (9 %), 2 = delete (1 %)."""
    return random.Random(seed).choices((0, 1, 2), weights=(90, 9, 1), k=length)


def quantiles_us(chunks: list[bytes], qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[float]:
    """Quantiles in µs (nearest rank) of the latencies in ``chunks`` (each the
    bytes of an ``array("q")`` of nanoseconds); NaN when there are none."""
    import numpy as np

    data = np.concatenate([np.frombuffer(c, dtype=np.int64) for c in chunks]) if chunks else np.empty(0)
    if data.size == 0:
        return [float("nan")] * len(qs)
    data.sort()
    return [float(data[min(data.size - 1, int(q * data.size))]) / 1000 for q in qs]


def exact_quantiles_us(samples_ns: list[int], qs: tuple[float, ...] = (0.5, 0.99)) -> list[float]:
    """Quantiles of a small list of samples in µs (nearest rank)."""
    if not samples_ns:
        return [float("nan")] * len(qs)
    data = sorted(samples_ns)
    return [data[min(len(data) - 1, int(q * len(data)))] / 1000 for q in qs]
