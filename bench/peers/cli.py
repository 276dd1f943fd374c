"""The command behind ``bench/peers.py``: run every step, show progress, write the outputs."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from _util import machine, versions

from . import charts, crosshost, report, runner
from .common import Plan
from .pool import Pool, WorkerFailed
from .registry import PEERS, Peer

__all__ = ["main"]

BENCH = Path(__file__).resolve().parent.parent
WORKLOADS = ("w1", "w2", "w3", "w4", "w5")
LIBRARIES = ("mtcache", "redis", "hiredis", "msgpack", "uvloop", "cachetools", "cashews", "aiocache",
             "dogpile.cache", "diskcache", "numpy", "matplotlib", "rich")


@dataclass(frozen=True)
class Step:
    """One measurement: where its figure goes, and how to get it (given the peer's pool)."""

    label: str
    workload: str
    peer: str
    size: str | None
    run: Callable[[Pool], dict[str, Any]]


def _steps(plan: Plan, peer: Peer, workloads: Sequence[str], results: dict[str, Any]) -> list[Step]:
    """The measurements of ``peer``, W1-W3 first (they share its pool); what needs
    none (n/a, or a figure by construction) goes into ``results`` at once."""
    steps: list[Step] = []
    for wl in workloads:
        if wl in peer.skip:
            entry: dict[str, Any] = {"na": peer.skip[wl]}
            if wl == "w1":
                results["w1"][peer.name] = {str(size): entry for size in plan.w1_sizes}
            else:
                results[wl][peer.name] = entry
        elif wl == "w1":
            steps += [Step(f"W1 hot reads {size:,} B · {peer.name}", "w1", peer.name, str(size),
                           partial(runner.w1, peer=peer, plan=plan, size=size)) for size in plan.w1_sizes]
        elif wl == "w2":
            steps.append(Step(f"W2 mixed · {peer.name}", wl, peer.name, None, partial(runner.w2, peer=peer, plan=plan)))
        elif wl == "w3":
            steps.append(Step(f"W3 stampede · {peer.name}", wl, peer.name, None,
                              partial(runner.w3, peer=peer, plan=plan)))
        elif wl == "w4":
            steps.append(Step(f"W4 memory · {peer.name}", wl, peer.name, None, partial(_w4, peer=peer, plan=plan)))
        elif peer.name in crosshost.MEASURED:
            steps.append(Step(f"W5 cross-host · {peer.name}", wl, peer.name, None,
                              partial(_w5, peer=peer, plan=plan)))
        else:
            results["w5"][peer.name] = {"note": peer.crosshost or "n/a"}
    return steps


def _w4(_pool: Pool, *, peer: Peer, plan: Plan) -> dict[str, Any]:
    return runner.w4(peer, plan)  # in fresh processes, not the peer's pool: their memory is measured


def _w5(_pool: Pool, *, peer: Peer, plan: Plan) -> dict[str, Any]:
    return crosshost.w5(peer.name, plan.crosshost_samples)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _run(step: Step, pool: Pool, results: dict[str, Any], console: Any) -> int:
    """Run ``step`` and file its figure (or its failure); 1 if it failed."""
    if step.workload in ("w4", "w5"):
        # no idle workers around: W4 measures its own processes, and PSS splits shared pages among all mappers
        pool.close()
    started = time.monotonic()
    failed = 0
    try:
        figure = step.run(pool)
    except Exception as exc:  # one peer's failure is a figure ("failed: ..."), not the end of the run
        failed = 1
        text = str(exc).strip() if isinstance(exc, WorkerFailed) else f"{type(exc).__name__}: {exc}"
        figure = {"failed": text}
        console.print(f"[red]{step.label} failed:[/red] {text.splitlines()[-1]}")
    figure["step_s"] = round(time.monotonic() - started, 2)
    if step.size is None:
        results[step.workload][step.peer] = figure
    else:
        results[step.workload].setdefault(step.peer, {})[step.size] = figure
    return failed


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/peers.py",
        description="mtcache side by side with redis-py, cachetools+redis, cashews, aiocache, dogpile.cache and "
                    "diskcache on five workloads; writes RESULTS.md, results.json and charts/.",
    )
    p.add_argument("--quick", action="store_true",
                   help="short smoke run (~1.5 min); writes to a temporary folder unless --out is given")
    p.add_argument("--out", type=Path, help="output folder (default: bench/ for a full run)")
    p.add_argument("--peer", action="append", choices=[peer.name for peer in PEERS],
                   help="run only this peer (repeatable)")
    p.add_argument("--workload", action="append", choices=WORKLOADS, help="run only this workload (repeatable)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if any measurement failed."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    args = _parse(argv)
    plan = Plan.make(args.quick)
    out = args.out or (Path(tempfile.gettempdir()) / "mtcache-bench-quick" if args.quick else BENCH)
    peers = [p for p in PEERS if not args.peer or p.name in args.peer]
    workloads = [w for w in WORKLOADS if not args.workload or w in args.workload]
    console = Console()
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join([".venv/bin/python", "bench/peers.py", *(argv if argv is not None else sys.argv[1:])]),
            "quick": plan.quick, "machine": machine(), "cpu": _cpu(), "memory": _memory(),
            "load_before": _load(), "versions": versions(LIBRARIES),
        },
        "plan": asdict(plan),
        "peers": {p.name: {"setup": p.setup, "stampede": p.stampede} for p in PEERS},
        **{wl: {} for wl in WORKLOADS},
    }
    groups = [(peer, _steps(plan, peer, workloads, results)) for peer in peers]
    failures = 0
    columns = (TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("starting", total=sum(len(steps) for _, steps in groups))
        for _peer, steps in groups:
            with Pool() as pool:
                for step in steps:
                    progress.update(task, description=step.label)
                    failures += _run(step, pool, results, progress.console)
                    progress.advance(task)
    results["meta"]["load_after"] = _load()
    results["meta"]["duration_s"] = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(results, out / "results.json")
    (out / "RESULTS.md").write_text(report.render(results))
    drawn = charts.draw(results, out / "charts")
    console.print(f"wrote {out / 'RESULTS.md'}, {out / 'results.json'} and {len(drawn)} charts in {out / 'charts'} "
                  f"({results['meta']['duration_s'] / 60:.1f} min)")
    return 1 if failures else 0
