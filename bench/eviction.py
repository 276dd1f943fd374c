"""L1 eviction: hit ratio of LRU, S3-FIFO, W-TinyLFU and Belady's optimum on three traces.

    .venv/bin/python bench/eviction.py [--quick] [--out DIR]

Generates three seeded traces of key ids (Zipf 0.9; Zipf 0.9 with periodic scans of
keys read once; a Zipf hot set that moves to other keys every phase) and replays
each through every policy at a few cache sizes (entries; every key costs the same),
counting hits. Policies:

* ``LRU``: what the coordinator's L1 does (an ``OrderedDict``, ``move_to_end`` on
  a hit, the oldest out); the coordinator's ``L1Store`` itself is replayed too, as a
  check that the simulation is the store.
* ``S3-FIFO`` (Yang et al., SOSP 2023, Algorithm 1): a small FIFO (10 %) that new
  keys enter, a main FIFO (90 %) with reinsertion of keys read since they were last
  looked at (a 2-bit frequency), and a ghost FIFO of keys recently evicted from the
  small queue (which re-enter straight into main).
* ``W-TinyLFU`` (Einziger et al. 2017, as Caffeine builds it): a 1 % window LRU,
  a segmented LRU main (20 % probation, 80 % protected) and a count-min sketch of
  4-bit counters (depth 4, halved every 10 x capacity accesses) that admits a
  window victim into main only if it was seen more often than main's victim.
  Written here as a small simulation, and measured through the ``theine``
  library (a Rust W-TinyLFU) as a cross-check.
* ``Moka`` (``moka-py``): the cache the Rust multi-tier-cache crate builds its L1
  on (TinyLFU admission, LRU eviction).
* ``Belady``: the offline optimum with bypass (knows every future access; evicts,
  or declines to admit, the key used farthest in the future). No policy can beat it.

Each replay is timed too (µs per access, the simulation's own Python code on this
machine: what the policy's bookkeeping costs when written in Python, as it would be
in the coordinator; the library rows include their call overhead).

Writes ``eviction.md`` and ``eviction.json`` into ``bench/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from _util import machine, versions

BENCH = Path(__file__).resolve().parent


# traces ---------------------------------------------------------------------------------------------------


def _zipf_p(n: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** s
    return weights / weights.sum()


def zipf_trace(n: int, length: int, seed: int, s: float = 0.9) -> list[int]:
    """``length`` key ids drawn by Zipf(``s``) over ``n`` keys (the hottest ranks spread over the ids)."""
    rng = np.random.default_rng(seed)
    ranks = rng.choice(n, size=length, p=_zipf_p(n, s))
    return rng.permutation(n)[ranks].tolist()


def scan_trace(n: int, length: int, seed: int, period: int, scan: int, s: float = 0.9) -> list[int]:
    """Zipf(``s``) over ``n`` keys, and every ``period`` requests a scan: ``scan``
    consecutive keys that are read once each (ids from ``n`` up, a fresh range each time,
    like a batch job walking a table). The scans are part of ``length``."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    background = perm[rng.choice(n, size=length, p=_zipf_p(n, s))].tolist()
    out: list[int] = []
    next_cold = n
    i = 0
    while len(out) < length:
        take = min(period - scan, length - len(out))
        out += background[i : i + take]
        i += take
        run = min(scan, length - len(out))
        out += range(next_cold, next_cold + run)
        next_cold += run
    return out


def shifting_trace(n: int, length: int, seed: int, phase: int, s: float = 0.9) -> list[int]:
    """Zipf(``s``) over ``n`` keys whose ranks are dealt to other keys every ``phase``
    requests: the hot set moves at once to keys that were cold (a new trading day,
    a new front page)."""
    rng = np.random.default_rng(seed)
    ranks = rng.choice(n, size=length, p=_zipf_p(n, s))
    out: list[int] = []
    for start in range(0, length, phase):
        perm = rng.permutation(n)
        out += perm[ranks[start : start + phase]].tolist()
    return out


# policies (entries; every key costs one slot) -----------------------------------------------------------


class Policy(Protocol):
    def access(self, key: int) -> bool: ...


class LRU:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data: OrderedDict[int, None] = OrderedDict()

    def access(self, key: int) -> bool:
        data = self.data
        if key in data:
            data.move_to_end(key)
            return True
        data[key] = None
        if len(data) > self.capacity:
            data.popitem(last=False)
        return False


class S3FIFO:
    """The paper's algorithm (Algorithm 1): small 10 %, main 90 %, ghost as large as main."""

    def __init__(self, capacity: int, small_ratio: float = 0.1) -> None:
        self.capacity = capacity
        self.small_cap = max(1, int(capacity * small_ratio))
        self.main_cap = capacity - self.small_cap
        self.small: OrderedDict[int, None] = OrderedDict()  # first item: the tail (oldest)
        self.main: OrderedDict[int, None] = OrderedDict()
        self.ghost: OrderedDict[int, None] = OrderedDict()
        self.freq: dict[int, int] = {}

    def access(self, key: int) -> bool:
        freq = self.freq
        f = freq.get(key)
        if f is not None:
            if f < 3:
                freq[key] = f + 1
            return True
        while len(self.small) + len(self.main) >= self.capacity:
            self._evict()
        if key in self.ghost:
            del self.ghost[key]
            self.main[key] = None
        else:
            self.small[key] = None
        freq[key] = 0
        return False

    def _evict(self) -> None:
        if len(self.small) >= self.small_cap or not self.main:
            self._evict_small()
        else:
            self._evict_main()

    def _evict_small(self) -> None:
        small, freq = self.small, self.freq
        while small:
            key, _ = small.popitem(last=False)
            if freq[key] > 1:
                self.main[key] = None
                if len(self.main) > self.main_cap:
                    self._evict_main()
            else:
                del freq[key]
                self.ghost[key] = None
                if len(self.ghost) > self.main_cap:
                    self.ghost.popitem(last=False)
                return

    def _evict_main(self) -> None:
        main, freq = self.main, self.freq
        while main:
            key, _ = main.popitem(last=False)
            f = freq[key]
            if f > 0:
                freq[key] = f - 1
                main[key] = None
            else:
                del freq[key]
                return


class CountMinSketch:
    """4 rows of 4-bit counters (saturating at 15), all halved every ``sample`` additions."""

    _SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)

    def __init__(self, capacity: int) -> None:
        width = 1 << max(4, (capacity - 1).bit_length())
        self.mask = width - 1
        self.rows = [[0] * width for _ in self._SEEDS]
        self.sample = 10 * capacity
        self.added = 0

    def _slots(self, key: int) -> list[int]:
        h = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
        return [((h * seed) & 0xFFFF_FFFF_FFFF_FFFF) >> 40 & self.mask for seed in self._SEEDS]

    def add(self, key: int) -> None:
        for row, slot in zip(self.rows, self._slots(key), strict=True):
            if row[slot] < 15:
                row[slot] += 1
        self.added += 1
        if self.added >= self.sample:
            self.added //= 2
            for row in self.rows:
                row[:] = [c >> 1 for c in row]

    def estimate(self, key: int) -> int:
        return min(row[slot] for row, slot in zip(self.rows, self._slots(key), strict=True))


class WTinyLFU:
    """Caffeine's layout: window LRU 1 %, main SLRU (probation 20 %, protected 80 %), TinyLFU admission."""

    def __init__(self, capacity: int) -> None:
        self.window_cap = max(1, capacity // 100)
        main = capacity - self.window_cap
        self.protected_cap = int(main * 0.8)
        self.main_cap = main
        self.window: OrderedDict[int, None] = OrderedDict()
        self.probation: OrderedDict[int, None] = OrderedDict()
        self.protected: OrderedDict[int, None] = OrderedDict()
        self.sketch = CountMinSketch(capacity)

    def access(self, key: int) -> bool:
        self.sketch.add(key)
        if key in self.window:
            self.window.move_to_end(key)
            return True
        if key in self.protected:
            self.protected.move_to_end(key)
            return True
        if key in self.probation:
            del self.probation[key]
            self.protected[key] = None
            if len(self.protected) > self.protected_cap:
                demoted, _ = self.protected.popitem(last=False)
                self.probation[demoted] = None
            return True
        self.window[key] = None
        if len(self.window) > self.window_cap:
            candidate, _ = self.window.popitem(last=False)
            if len(self.probation) + len(self.protected) < self.main_cap:
                self.probation[candidate] = None
            else:
                victims = self.probation or self.protected
                victim = next(iter(victims))
                if self.sketch.estimate(candidate) > self.sketch.estimate(victim):
                    del victims[victim]
                    self.probation[candidate] = None
        return False


class Theine:
    """``theine.Cache`` (a Rust W-TinyLFU core), as a library user would run it."""

    def __init__(self, capacity: int) -> None:
        from theine import Cache

        self.cache = Cache(capacity, nolock=True)

    def access(self, key: int) -> bool:
        _, found = self.cache.get(key)
        if not found:
            self.cache.set(key, True)
        return found


class Moka:
    """``moka_py.Moka`` (the Rust Moka cache: TinyLFU admission, LRU eviction)."""

    def __init__(self, capacity: int) -> None:
        from moka_py import Moka as Cache

        self.cache = Cache(capacity)

    def access(self, key: int) -> bool:
        if self.cache.get(key) is not None:
            return True
        self.cache.set(key, True)
        return False


class Store:
    """The coordinator's ``L1Store`` itself, bounded by entries (get, then set on a miss)."""

    def __init__(self, capacity: int) -> None:
        from mtcache.coordinator.store import L1Store

        self.store = L1Store(capacity=capacity, max_bytes=2**40, default_ttl=1e9, clock=lambda: 0.0)

    def access(self, key: int) -> bool:
        name = str(key)
        if self.store.get(name) is not None:
            return True
        self.store.set(name, b"v")
        return False


def belady_hits(trace: Sequence[int], capacity: int) -> int:
    """Hits of the offline optimum with bypass: evict (or never admit) the key whose next use is farthest."""
    never = len(trace)
    next_use = [never] * len(trace)
    seen: dict[int, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        next_use[i] = seen.get(trace[i], never)
        seen[trace[i]] = i
    cache: dict[int, int] = {}  # key -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, key), stale items skipped
    hits = 0
    for i, key in enumerate(trace):
        nxt = next_use[i]
        if key in cache:
            hits += 1
        elif nxt == never:
            continue
        elif len(cache) >= capacity:
            while -heap[0][0] != cache.get(heap[0][1]):
                heapq.heappop(heap)
            far, victim = heap[0]
            if -far <= nxt:
                continue  # bypass: the newcomer is needed later than everything held
            heapq.heappop(heap)
            del cache[victim]
        cache[key] = nxt
        heapq.heappush(heap, (-nxt, key))
    return hits


def replay(policy: Policy, trace: Iterable[int]) -> int:
    access = policy.access
    return sum(1 for key in trace if access(key))


POLICIES: dict[str, Callable[[int], Policy]] = {
    "LRU": LRU,
    "L1Store (LRU)": Store,
    "S3-FIFO": S3FIFO,
    "W-TinyLFU": WTinyLFU,
    "W-TinyLFU (theine)": Theine,
    "TinyLFU (Moka)": Moka,
}


# the run --------------------------------------------------------------------------------------------------


def verdict(hit_ratio: dict[str, dict[str, dict[str, float]]], candidate: str) -> dict[str, Any]:
    """The issue's rule for replacing LRU: ``candidate`` wins the scan trace by at least 3 points at every
    size and loses to LRU nowhere. Returns the margins (points) and whether the rule holds."""
    margins = {trace: {size: 100 * (row[candidate] - row["LRU"]) for size, row in table.items()}
               for trace, table in hit_ratio.items()}
    adopt = all(m >= 3 for m in margins["scan"].values()) and all(
        m >= 0 for table in margins.values() for m in table.values())
    return {"candidate": candidate, "margins_points": margins, "adopt": adopt}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/eviction.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short traces (a smoke run); writes to a temporary folder")
    p.add_argument("--out", type=Path, help="output folder (default: bench/)")
    args = p.parse_args(argv)
    n_keys, length = (20_000, 100_000) if args.quick else (100_000, 1_000_000)
    sizes = [n_keys // 100, n_keys // 20, n_keys // 5]
    seed = 20261127
    period, scan, phase = length // 20, length // 80, length // 10
    traces = {
        "zipf": ("Zipf 0.9", zipf_trace(n_keys, length, seed)),
        "scan": (f"Zipf 0.9 + a scan of {scan:,} new keys every {period:,} requests",
                 scan_trace(n_keys, length, seed + 1, period, scan)),
        "shift": (f"Zipf 0.9, the hot set dealt to other keys every {phase:,} requests",
                  shifting_trace(n_keys, length, seed + 2, phase)),
    }
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join([".venv/bin/python", "bench/eviction.py", *(argv or sys.argv[1:])]),
            "machine": machine(), "versions": versions(("mtcache", "numpy", "theine", "moka-py")),
            "keys": n_keys, "requests": length, "sizes": sizes, "seed": seed,
        },
        "traces": {name: desc for name, (desc, _) in traces.items()},
        "hit_ratio": {},
        "us_per_access": {},
    }
    for name, (_, trace) in traces.items():
        table: dict[str, dict[str, float]] = {}
        cost: dict[str, dict[str, float]] = {}
        for size in sizes:
            row = table.setdefault(str(size), {})
            for policy, make in POLICIES.items():
                started = time.perf_counter()
                row[policy] = replay(make(size), trace) / len(trace)
                took = time.perf_counter() - started
                cost.setdefault(str(size), {})[policy] = took / len(trace) * 1e6
                print(f"{name:6} {size:>7,} {policy:20} {100 * row[policy]:6.2f} %  ({took:.1f} s)", flush=True)
            row["Belady"] = belady_hits(trace, size) / len(trace)
            print(f"{name:6} {size:>7,} {'Belady':20} {100 * row['Belady']:6.2f} %", flush=True)
        results["hit_ratio"][name] = table
        results["us_per_access"][name] = cost
    results["verdicts"] = [verdict(results["hit_ratio"], c) for c in ("S3-FIFO", "W-TinyLFU")]
    out = args.out or (Path(tempfile.gettempdir()) / "mtcache-bench-quick" if args.quick else BENCH)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eviction.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "eviction.md").write_text(render(results))
    print(f"wrote {out / 'eviction.md'} and {out / 'eviction.json'}")
    return 0


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    policies = [*POLICIES, "Belady"]
    lines = [
        "# L1 eviction: hit ratios on three traces",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}; "
        f"{', '.join(f'{k} {v}' for k, v in meta['versions'].items())}).",
        f"{meta['keys']:,} keys, {meta['requests']:,} requests per trace, seed {meta['seed']}; cache sizes in "
        "entries (1 %, 5 % and 20 % of the keys). Hit ratio over every request, cold start included. "
        "`L1Store (LRU)` is the coordinator's store itself replaying the trace; the other rows are the "
        "simulations and libraries described in `bench/eviction.py`. µs per access: the replay's wall time "
        "(Python bookkeeping of the simulation, or the library call), one run on a shared 2-core machine.",
        "",
    ]
    for name, table in results["hit_ratio"].items():
        cost = results["us_per_access"][name]
        lines += [f"## {results['traces'][name]}", "",
                  "| policy | " + " | ".join(f"{int(s):,} entries" for s in table) + " | µs per access |",
                  "|---|" + "---:|" * (len(table) + 1)]
        for policy in policies:
            per = " / ".join(f"{cost[s][policy]:.2f}" for s in table) if policy in cost[next(iter(cost))] else "-"
            lines.append(f"| {policy} | " + " | ".join(f"{100 * table[s][policy]:.2f} %" for s in table)
                         + f" | {per} |")
        lines.append("")
    lines += ["## The rule for replacing LRU", "",
              "A policy replaces LRU in the coordinator's L1 only if it wins the scan trace by at least 3 points "
              "and loses to LRU on no trace (at no size). Margins over LRU in points:", "",
              "| candidate | " + " | ".join(f"{t} @ {int(s):,}" for t, tab in results["hit_ratio"].items()
                                         for s in tab) + " | adopted |",
              "|---|" + "---:|" * (sum(len(t) for t in results["hit_ratio"].values()) + 1)]
    for v in results["verdicts"]:
        cells = [f"{m:+.2f}" for tab in v["margins_points"].values() for m in tab.values()]
        lines.append(f"| {v['candidate']} | " + " | ".join(cells) + f" | {'yes' if v['adopt'] else 'no'} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
