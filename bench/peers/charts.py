"""PNG charts of one run (matplotlib, Agg backend); a chart with nothing to show is skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import LARGE, SMALL
from .registry import PEERS

__all__ = ["draw"]

_MTCACHE = "#1f77b4"
_PEER = "#9e9e9e"
_SECOND = "#ff7f0e"
Rows = list[tuple[str, dict[str, Any]]]


def _ok(entry: Any) -> bool:
    return isinstance(entry, dict) and bool(entry) and not ({"na", "failed", "note"} & entry.keys())


def _rows(results: dict[str, Any], workload: str, size: int | None = None) -> Rows:
    out = []
    for peer in PEERS:
        entry = results[workload].get(peer.name)
        if size is not None and isinstance(entry, dict):
            entry = entry.get(str(size))
        if _ok(entry):
            out.append((peer.name, entry))
    return out


def _bars(ax: Any, rows: Rows, key: str, label: str, *, log: bool = False, scale: float = 1.0) -> None:
    names = [n for n, _ in rows]
    values = [e[key] * scale for _, e in rows]
    ax.barh(names, values, color=[_MTCACHE if n.startswith("mtcache") else _PEER for n in names])
    ax.invert_yaxis()
    ax.set_xlabel(label)
    if log and all(v > 0 for v in values):
        _log(ax)
    for y, v in enumerate(values):
        text = f" {v:,.0f}" if v >= 10 or float(v).is_integer() else f" {v:,.2f}"
        ax.text(v, y, text, va="center", fontsize=8)


def _log(ax: Any) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap


def _pair(
    ax: Any, rows: Rows, keys: tuple[str, str], labels: tuple[str, str], xlabel: str, *, log: bool = True
) -> None:
    ys = range(len(rows))
    ax.barh([y - 0.2 for y in ys], [e[keys[0]] for _, e in rows], height=0.4, label=labels[0], color=_MTCACHE)
    ax.barh([y + 0.2 for y in ys], [e[keys[1]] for _, e in rows], height=0.4, label=labels[1], color=_SECOND)
    ax.set_yticks(list(ys), [n for n, _ in rows])
    ax.invert_yaxis()
    if log:
        _log(ax)
    ax.set_xlabel(xlabel)
    ax.legend()


def draw(results: dict[str, Any], folder: Path) -> list[Path]:
    """Draw every chart the results allow into ``folder``; the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    sizes = [s for s in (SMALL, LARGE) if s in results["plan"]["w1_sizes"] and _rows(results, "w1", s)]
    if sizes:
        fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4), squeeze=False)
        for ax, size in zip(axes[0], sizes, strict=True):
            _bars(ax, _rows(results, "w1", size), "ops_per_s", "ops/s, 8 workers (log)", log=True)
            label = f"{size} B" if size < 1024 else f"{size // 1024} KiB"
            ax.set_title(f"W1 hot reads, {label} values")
        save(fig, "w1_throughput.png")

    rows = _rows(results, "w1", SMALL)
    if rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        _pair(ax, rows, ("p50_us", "p99_us"), ("p50", "p99"), "µs per read (log)")
        ax.set_title("W1 read latency, 200 B values")
        save(fig, "w1_latency.png")

    rows = _rows(results, "w2")
    if rows:
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4))
        _bars(left, rows, "ops_per_s", "ops/s (log)", log=True)
        left.set_title("W2 mixed 90/9/1: throughput")
        _bars(right, rows, "stale", "stale reads")
        right.set_title("W2: reads older than an acknowledged write")
        save(fig, "w2_mixed.png")

    rows = _rows(results, "w3")
    if rows:
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4))
        _bars(left, rows, "computes_mean", "computes per key, mean (log)", log=True)
        left.set_title("W3 stampede: computations per key (ideal 1)")
        _bars(right, rows, "p99_ms", "p99 ms per call")
        right.set_title("W3 stampede: p99 latency")
        save(fig, "w3_stampede.png")

    rows = _rows(results, "w4")
    if rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = [n for n, _ in rows]
        workers = [e["workers_pss"] / 2**20 for _, e in rows]
        servers = [(e["total_pss"] - e["workers_pss"]) / 2**20 for _, e in rows]
        shm = [(e["total"] - e["total_pss"]) / 2**20 for _, e in rows]
        ax.barh(names, workers, label="8 workers (PSS)", color=_MTCACHE)
        ax.barh(names, servers, left=workers, label="redis-server + coordinator (PSS)", color=_SECOND)
        ax.barh(names, shm, left=[w + s for w, s in zip(workers, servers, strict=True)],
                label="/dev/shm reserved, not yet touched", color="#2ca02c")
        ax.invert_yaxis()
        ax.set_xlabel("MiB")
        ax.set_title("W4 memory after every worker read every 1 KiB value")
        ax.legend(fontsize=8)
        save(fig, "w4_memory.png")

    rows = _rows(results, "w5")
    if rows:
        fig, ax = plt.subplots(figsize=(7, 2.5))
        _pair(ax, rows, ("p50_us", "p99_us"), ("p50", "p99"), "µs from set returning on A to the new value on B",
              log=False)
        ax.set_title("W5 cross-host visibility")
        save(fig, "w5_crosshost.png")
    return written
