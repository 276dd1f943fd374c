"""RESULTS.md and results.json from one run's figures.

Every cell comes from ``results``; a peer that cannot run a workload shows
"n/a" with the reason, one that failed shows "failed" with the error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import COMPUTE_S, LARGE, SMALL, THREADS, WORKERS, ZIPF_S
from .registry import PEERS

__all__ = ["render", "write_json"]

Entry = dict[str, Any]
BASE = "mtcache"


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write ``results`` as indented JSON (NaN as null)."""
    path.write_text(json.dumps(_clean(results), indent=2, sort_keys=False) + "\n")


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


# -- formatting ---------------------------------------------------------------


def _num(x: float, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _us(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:,.2f}" if x < 10 else f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def _ratio(a: float, b: float) -> str:
    if not a or not b or not math.isfinite(a) or not math.isfinite(b):
        return "-"
    r = a / b
    return f"{r:,.2f}x" if r < 10 else f"{r:,.0f}x"


def _special(entry: Entry | None, width: int) -> str | None:
    """The cells of a row that has no figures (the reason in the first), or None if it has."""
    if entry is None:
        text = "not run"
    elif "na" in entry:
        text = f"n/a: {entry['na']}"
    elif "failed" in entry:
        text = "failed: " + entry["failed"].strip().splitlines()[-1][:160]
    else:
        return None
    return text + " |" * width


def _table(head: list[str], rows: Sequence[tuple[str, Entry | None, Callable[[Entry], list[str]]]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, entry, cells in rows:
        special = _special(entry, len(head) - 1)
        if special is not None:
            out.append(f"| {name} | {special}")
        else:
            assert entry is not None
            out.append(f"| {name} | " + " | ".join(cells(entry)) + " |")
    return "\n".join(out)


def _ok(entry: Entry | None) -> bool:
    return bool(entry) and not ({"na", "failed", "note"} & entry.keys())  # type: ignore[union-attr]


# -- sections -----------------------------------------------------------------


def _summary(r: dict[str, Any]) -> str:
    w1, w2, w3, w4 = r["w1"], r["w2"], r["w3"], r["w4"]
    base1 = w1.get(BASE, {})
    lines = [
        "Ratios are mtcache ÷ peer: above 1x mtcache has more throughput, below 1x (latency, memory) it has less. "
        "Stale reads and computes are shown as *mtcache vs peer*.",
        "",
        "| peer | W1 200 B ops/s | W1 10 KiB ops/s | W1 200 B p99 | W2 ops/s | W2 stale reads | W3 computes/key "
        "| W4 total PSS (with /dev/shm reserved) | W5 p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for peer in PEERS:
        if peer.name == BASE:
            continue
        p1 = w1.get(peer.name, {})
        cells = []
        for size in (str(SMALL), str(LARGE)):
            a, b = base1.get(size), p1.get(size)
            cells.append(_ratio(a["ops_per_s"], b["ops_per_s"]) if _ok(a) and _ok(b) else "n/a")
        a, b = base1.get(str(SMALL)), p1.get(str(SMALL))
        cells.append(_ratio(a["p99_us"], b["p99_us"]) if _ok(a) and _ok(b) else "n/a")
        a, b = w2.get(BASE), w2.get(peer.name)
        cells.append(_ratio(a["ops_per_s"], b["ops_per_s"]) if _ok(a) and _ok(b) else "n/a")
        cells.append(f"{a['stale']:,} vs {b['stale']:,}" if _ok(a) and _ok(b) else "n/a")
        a, b = w3.get(BASE), w3.get(peer.name)
        cells.append(f"{a['computes_mean']:.2f} vs {b['computes_mean']:.2f}" if _ok(a) and _ok(b) else "n/a")
        a, b = w4.get(BASE), w4.get(peer.name)
        cells.append(f"{_ratio(a['total_pss'], b['total_pss'])} ({_ratio(a['total'], b['total'])})"
                     if _ok(a) and _ok(b) else "n/a")
        b5 = r["w5"].get(peer.name, {})
        a5 = r["w5"].get(BASE, {})
        if _ok(a5) and _ok(b5):
            cells.append(f"{_us(a5['p50_us'])} vs {_us(b5['p50_us'])} µs")
        else:
            cells.append("see W5")
        lines.append(f"| {peer.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _w1(r: dict[str, Any]) -> str:
    parts = []
    for size in r["plan"]["w1_sizes"]:
        rows = []
        for peer in PEERS:
            entry = r["w1"].get(peer.name, {}).get(str(size))
            rows.append((peer.name, entry, lambda e: [
                _num(e["ops_per_s"]), _us(e["p50_us"]), _us(e["p90_us"]), _us(e["p99_us"]),
                _local(e),
                _num(e["misses"]),
            ]))
        label = f"{size} B" if size < 1024 else f"{size // 1024} KiB"
        parts.append(f"**values of {label}**\n\n" + _table(
            ["peer", "ops/s (8 workers)", "p50 µs", "p90 µs", "p99 µs", "in-process hits (near / mirror)", "misses"],
            rows))
    return "\n\n".join(parts)


def _local(e: Entry) -> str:
    if "local_hit_ratio" not in e:
        return "-"
    mirror = e.get("mirror_hit_ratio", 0.0)
    near = f"{100 * e['local_hit_ratio']:.1f} %"
    return f"{near} / {100 * mirror:.1f} %" if mirror else near


def _w2(r: dict[str, Any]) -> str:
    rows = [(peer.name, r["w2"].get(peer.name), lambda e: [
        _num(e["ops_per_s"]), _us(e["p50_us"]), _us(e["p99_us"]), _us(e["get_p50_us"]), _us(e["get_p99_us"]),
        _us(e["write_p50_us"]), _us(e["write_p99_us"]), f"**{e['stale']:,}**", f"{e['stale_pct']:.3f} %",
        _num(e["gets"]), f"{100 * e['misses'] / max(1, e['gets']):.2f} %", _num(e["errors"] + e["wrong"]),
        _num(e.get("dropped", 0)),
    ]) for peer in PEERS]
    return _table(["peer", "ops/s", "p50 µs", "p99 µs", "get p50 µs", "get p99 µs", "set/delete p50 µs",
                   "set/delete p99 µs", "stale reads", "stale % of gets", "gets", "miss %", "errors",
                   "writes not stored"], rows)


def _w3(r: dict[str, Any]) -> str:
    rows = [(peer.name, r["w3"].get(peer.name), lambda e: [
        f"{e['computes_mean']:.2f}", _num(e["computes_max"]), _num(e["computes_total"]),
        _num(e["p50_ms"], 1), _num(e["p99_ms"], 1), f"{e['wall_s']:.1f}",
        _num(e["errors"]) + (f" ({e['first_error'][:80]})" if e["errors"] else ""),
    ]) for peer in PEERS]
    return _table(["peer", "computes/key mean", "max", "total", "p50 ms", "p99 ms", "run s", "errors"], rows)


def _w4(r: dict[str, Any]) -> str:
    def cells(e: Entry) -> list[str]:
        servers = ", ".join(f"{name} {_mib(s['rss'])} / {_mib(s['pss'])}" for name, s in e["servers"].items())
        disk = f"; disk {_mib(e['disk_bytes'])}" if "disk_bytes" in e else ""
        return [
            _mib(e["workers_rss"]), _mib(e["workers_pss"]), _mib(e["workers_pss"] - e["workers_idle_pss"]),
            (servers or "-") + disk, _mib(e["shm_reserved"]), _mib(e["total_rss"]), _mib(e["total_pss"]),
            f"**{_mib(e['total'])}**",
        ]

    rows = [(peer.name, r["w4"].get(peer.name), cells) for peer in PEERS]
    return _table(["peer", "workers RSS", "workers PSS", "workers PSS Δ vs idle", "servers RSS / PSS",
                   "/dev/shm reserved", "total RSS", "total PSS", "total memory"], rows)


def _w5(r: dict[str, Any]) -> str:
    lines = ["| peer | p50 µs | p99 µs | max µs | samples | seen before `set` returned |",
             "|---|---:|---:|---:|---:|---:|"]
    for peer in PEERS:
        e = r["w5"].get(peer.name)
        if e is None:
            lines.append(f"| {peer.name} | not run | | | | |")
        elif "note" in e:
            lines.append(f"| {peer.name} | {e['note']} | | | | |")
        elif "failed" in e:
            lines.append(f"| {peer.name} | failed: {e['failed'].strip().splitlines()[-1][:160]} | | | | |")
        else:
            lines.append(f"| {peer.name} | {_us(e['p50_us'])} | {_us(e['p99_us'])} | {_us(e['max_us'])} "
                         f"| {e['seen']:,} of {e['samples']:,} | {e['before_return']:,} |")
    return "\n".join(lines)


def _notes(r: dict[str, Any]) -> str:
    """Plain statements about this run's figures, each printed only when the data shows it."""
    notes: list[str] = []
    w1 = r["w1"].get(BASE, {}).get(str(SMALL))
    w2, w3 = r["w2"], r["w3"]
    m2, redis2 = w2.get(BASE), w2.get("redis-py")
    if _ok(w1) and "local_hit_ratio" in w1:
        notes.append(f"W1: {100 * w1['local_hit_ratio']:.0f} % of mtcache's reads were near-cache hits (up to "
                     "128 MiB / 65,536 entries per worker by default) and "
                     f"{100 * w1.get('mirror_hit_ratio', 0):.0f} % were read from the shared-memory L1 mirror (a copy "
                     "and a decode: that is its p90/p99).")
    for size in (SMALL, LARGE):
        mine, theirs = r["w1"].get(BASE, {}).get(str(size)), r["w1"].get("cashews", {}).get(str(size))
        if _ok(mine) and _ok(theirs) and theirs["ops_per_s"] > mine["ops_per_s"]:
            notes.append(f"W1 ({size:,} B): cashews read faster than mtcache ({_num(theirs['ops_per_s'])} against "
                         f"{_num(mine['ops_per_s'])} ops/s): its per-process cache holds 10,000 entries by default, "
                         "every key here, and returns the object it holds, while mtcache copies and decodes what its "
                         "near cache does not hold from the mirror.")
    if _ok(m2) and _ok(redis2) and m2["write_p50_us"] > 2 * redis2["write_p50_us"]:
        notes.append(f"W2: mtcache's set/delete p50 is {_us(m2['write_p50_us'])} µs against redis-py's "
                     f"{_us(redis2['write_p50_us'])} µs: a write makes two hops and waits for both "
                     "(worker to coordinator, then coordinator to Redis with its invalidation-stream entry, "
                     "written through so that other hosts see it before `set` returns), and with 8 busy workers "
                     "on 2 cores each hop also waits for a CPU. Queued writes share one pipeline "
                     "(coordinator/writes.py).")
    if _ok(m2) and m2["stale"]:
        notes.append(f"W2: **mtcache returned {m2['stale']:,} stale reads** ({m2['stale_pct']:.2f} % of gets), "
                     "although its README promises that once `set` or `delete` returns no worker on the host "
                     "returns the old value.")
    two = w2.get("cachetools+redis")
    if _ok(two) and two["stale"]:
        notes.append(f"W2: cachetools+redis returned {two['stale']:,} stale reads ({two['stale_pct']:.1f} % of gets): "
                     "a worker keeps serving its TTLCache copy for up to 30 s after another worker's write.")
    c2, c3 = w2.get("cashews"), w2.get("cashews (RESP3)")
    if _ok(c2) and _ok(c3):
        notes.append(f"W2: cashews returned {c2['stale']:,} stale reads with `protocol=2` (invalidations arrive "
                     f"a little after the write) and {c3['stale']:,} with redis-py's default RESP3, where no "
                     "invalidation reaches its local cache at all.")
    d1 = r["w1"].get("diskcache", {}).get(str(SMALL))
    d2 = w2.get("diskcache")
    if _ok(d1) and _ok(d2) and (d1["misses"] or d2.get("dropped")):
        dropped = d2.get("dropped", 0)
        notes.append(f"diskcache: {d1['misses']:,} W1 reads came back empty although every key had been written, "
                     f"and {dropped:,} W2 write{'s were' if dropped != 1 else ' was'} not stored: a `FanoutCache` "
                     "call that waits longer than its 10 ms timeout for SQLite's lock gives up quietly (`get` "
                     "returns the default, `set` stores nothing and returns False).")
    m4 = r["w4"].get(BASE)
    if _ok(m4) and m4["shm_reserved"] > 2**20:
        notes.append(f"W4: {_mib(m4['shm_reserved'])} MiB of mtcache's total memory is shared memory the coordinator "
                     "reserved: its version table, and the L1 mirror's buckets and the part of its arena that holds "
                     "entries (the arena is reserved as it fills, up to `--l1-shm-bytes`).")
    a3 = w3.get("aiocache")
    if _ok(a3) and a3["computes_mean"] > 1:
        notes.append(f"W3: aiocache computed each key {a3['computes_mean']:.0f} times although `cached_stampede` "
                     "takes a Redis lock: its waiters wait on an in-process event, so callers in other processes "
                     "that lose the lock compute anyway.")
    return "\n".join(f"- {n}" for n in notes) if notes else "- nothing beyond the tables."


def _setup() -> str:
    lines = ["| peer | configuration | W3 stampede handling |", "|---|---|---|"]
    lines += [f"| {p.name} | {p.setup} | {p.stampede} |" for p in PEERS]
    return "\n".join(lines)


def _machine(r: dict[str, Any]) -> str:
    m = r["meta"]
    versions = ", ".join(f"{name} {v}" for name, v in m["versions"].items())
    return "\n".join([
        f"- date: {m['date']} (run took {m['duration_s'] / 60:.1f} min; mode: {'quick' if m['quick'] else 'full'})",
        f"- command: `{m['command']}`",
        f"- machine: {m['machine']}; CPU: {m['cpu']}; memory: {m['memory']}",
        f"- load average (1/5/15 min) before: {m['load_before']}, after: {m['load_after']}",
        f"- versions: {versions}",
    ])


def render(r: dict[str, Any]) -> str:
    """The whole RESULTS.md."""
    plan = r["plan"]
    return f"""# mtcache side by side with the caches a Python team would use instead

Generated by `bench/peers.py`; every figure below was measured in the run described here, on one machine,
with the same workloads for every peer. Raw figures: `results.json`; charts: `charts/`.

## Machine and versions

{_machine(r)}

## Summary: mtcache against each peer

{_summary(r)}

## Notes on this run

{_notes(r)}

## How each peer is configured

{_setup()}

Every peer gets fresh servers for every workload (a new `redis-server` on a free port, a new coordinator on a
temporary socket, a new diskcache directory). Workers are {WORKERS} processes started with the `spawn` context;
asyncio peers run one uvloop loop per worker.

## W1 hot reads

{WORKERS} workers read Zipf({ZIPF_S}) keys over {plan['n_keys']:,} keys. Before the measurement: the values are
written through the cache (an eighth by each worker), the workers idle {plan['settle_s']} s (asyncio peers'
background tasks, such as cashews' invalidation listener, catch up), each worker reads every key once (so every
local tier starts full, as after hours of traffic), then {plan['warmup_s']} s of Zipf reads are discarded. Then
each worker reads for {plan['measure_s']} s, timing every read with `perf_counter_ns`. ops/s is the sum of the
workers' rates; percentiles are over every read of every worker. "in-process hits": the share of reads served
without a socket round trip, where the peer reports it (warm-up included): from the near cache (mtcache) or the
TTLCache (cachetools+redis), and for mtcache from the coordinator's shared-memory L1 mirror.

{_w1(r)}

## W2 mixed 90 % get / 9 % set / 1 % delete

Same keys, Zipf reads and preparation as W1 (write, idle, read every key once, {plan['warmup_s']} s of the mix
discarded), {SMALL}-byte values, {plan['measure_s']} s measured. Each value carries its key id and a version.
A key is written only by the worker that owns it (key id mod {WORKERS}), which publishes the version to a
shared `int64` array after `set`/`delete` returns (a delete publishes a version no value carries). A read is
**stale** when it returns a version older than the array held for that key just before the read started: a
write had been acknowledged and the read still returned what it replaced. A miss is not stale. "writes not
stored": `set` calls that returned without storing (diskcache's `FanoutCache` returns False when SQLite's lock
is not free within its timeout).

{_w2(r)}

## W3 stampede

{WORKERS} processes x {THREADS} threads (tasks for asyncio peers) = {WORKERS * THREADS} callers pass a barrier
together and ask for the same {plan['stampede_keys']} cold keys in the same order, each through the peer's
`get_or_compute` (see the configuration table); a compute takes {int(COMPUTE_S * 1000)} ms and is counted in a
shared array. Ideal: 1 compute per key. Latency is per `get_or_compute` call.

{_w3(r)}

## W4 memory

{WORKERS} workers each read all {plan['memory_keys']:,} values of 1 KiB once through the cache (written
beforehand through the cache, an eighth by each worker). RSS from `/proc/<pid>/status` (VmRSS), PSS from
`/proc/<pid>/smaps` (shared pages divided among the processes that map them, so PSS sums honestly).
"idle" is after each worker connected, before any value was written. "/dev/shm reserved": the allocated size of
the shared-memory files the processes map (mtcache's version table and L1 mirror, whose arena is reserved as
it fills), which is memory whether touched or not. **total memory** = the PSS of all the processes outside
`/dev/shm` + that reserved size (counted once). MiB throughout.

{_w4(r)}

## W5 cross-host visibility

Time from `set` returning on host A until a reader on host B returns the new value. mtcache: two coordinators
(two hosts) on one Redis, a writer process on A and a reader process on B that polls the key in a loop
(yielding the CPU between polls); cashews: two processes (its local tier is per process). {plan['crosshost_samples']}
writes, 2-5 ms apart; a value seen before `set` returned counts as 0. All on one machine, so no network
latency: over a network add one Redis round trip.

{_w5(r)}
"""
