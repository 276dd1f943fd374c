"""What a chaos run reports: operations, faults, violations with examples, the documented
replication loss of a master SIGKILL (counted apart, not a violation), the longest call,
coordinator memory; as a dict (``report.json``), as markdown (``report.md``) and as a short text
for an assertion message."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.chaos.checker import CheckResult
from tests.chaos.history import History, Op
from tests.chaos.schedule import Window

#: The coordinator counters a report shows (from each host's final STATS).
COORDINATOR_FIELDS = ("mode", "redis", "stream_reader", "invalidation_gaps", "invalidations_applied", "staleness_drops",
                      "backlog_replayed", "l2_errors", "fills_discarded", "redis_leases_taken", "fail_safe_activations",
                      "writes_superseded", "lease_releases")


def _rel(t: int, t0: int) -> float:
    return round((t - t0) / 1e9, 4)


def _outcome_class(op: Op) -> str:
    return op.outcome.split(":", 1)[0]


def longest_call(history: History) -> dict[str, Any] | None:
    """The finished operation that took longest, and the faults active while it ran."""
    done = [op for op in history.ops if op.end is not None]
    if not done:
        return None
    op = max(done, key=lambda op: op.finished - op.start)
    faults = [f"{f.kind}@{f.target}" for f in history.faults if f.start <= op.finished and f.end >= op.start]
    return {"op": op.describe(history.t0), "seconds": round((op.finished - op.start) / 1e9, 4),
            "at": _rel(op.start, history.t0), "faults": faults}


def summarize(history: History, result: CheckResult, *, config: dict[str, Any], schedule: list[Window],
              command: str, wall_seconds: float, rss: list[dict[str, Any]], history_dir: str,
              coordinators: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report as a JSON-able dict; ``coordinators``: each host's final STATS (a few shown)."""
    ops = history.ops
    by_kind: dict[str, Counter[str]] = {}
    for op in ops:
        by_kind.setdefault(op.op, Counter())[_outcome_class(op)] += 1
    gocs = [op for op in ops if op.op == "goc"]
    return {
        "seed": config.get("seed"),
        "command": command,
        "history": history_dir,
        "wall_seconds": round(wall_seconds, 1),
        "config": config,
        "schedule": [w.describe() for w in schedule],
        "operations": {"total": len(ops), "by_kind": {k: dict(c) for k, c in sorted(by_kind.items())}},
        "writes": dict(Counter(op.ack for op in ops if op.op in ("set", "delete"))),
        "computes": {
            "ran": sum(op.fn_start is not None for op in gocs),
            "filled": sum(op.fn_result == "ok" for op in gocs),
            "injected_failures": sum(op.fn_result == "raised" for op in gocs),
            "slow": sum(op.slow for op in gocs),
            "cancelled": sum(op.cancelled for op in gocs),
            "local": sum(op.local for op in gocs),
        },
        "fail_safe": {
            "calls": sum(op.fail_safe > 0 for op in gocs),
            "stale_served": sum(op.stale for op in gocs),
            "activations": sum(op.act for op in gocs),
            "abandoned_at_hard_timeout": sum(op.fn_result == "abandoned" for op in gocs),
            "left_to_background": sum(op.fn_result == "bg" for op in gocs),
            "background_filled": sum(op.fn_result == "bg" and op.bg_fn == "ok" for op in gocs),
            "background_unrecorded": sum(op.fn_result == "bg" and op.bg_end is None for op in gocs),
            "background_stale_counted": sum(op.bg_stale for op in gocs),
            "background_activations": sum(op.bg_act for op in gocs),
        },
        "degraded_calls": sum(op.degraded for op in ops),
        "faults": dict(Counter(f.kind for f in history.faults)),
        "fault_errors": [f"{f.kind}: {f.detail['error']}" for f in history.faults if "error" in f.detail],
        "workers_killed": len(history.killed),
        "worker_crashes": history.crashed,
        "longest_call": longest_call(history),
        "violations": dict(result.counts),
        #: the documented loss (see tests/chaos/checker.py): not in "violations", not held against ok()
        "documented_loss": dict(result.documented),
        "examples": {kind: [{"at": _rel(v.time, history.t0), "why": v.why,
                             "ops": [op.describe(history.t0) for op in v.ops]} for v in vs]
                     for kind, vs in result.examples.items() if vs},
        "coordinator_rss_kib": rss,
        "coordinators": {h: {k: v for k, v in st.items() if k in COORDINATOR_FIELDS}
                         for h, st in (coordinators or {}).items()},
    }


def ok(summary: dict[str, Any]) -> bool:
    """No violation, and no worker crashed."""
    return not any(summary["violations"].values()) and not summary["worker_crashes"]


def short_text(summary: dict[str, Any], examples: int = 2) -> str:
    """A few lines: the verdict, violations with examples, the seed and the rerun command."""
    lines = [f"chaos run, seed {summary['seed']}: {summary['operations']['total']} operations, "
             f"faults {summary['faults']}, {summary['wall_seconds']}s",
             f"violations: { {k: n for k, n in summary['violations'].items() if n} or 'none'}"]
    documented = {k: n for k, n in summary.get("documented_loss", {}).items() if n}
    if documented:
        lines.append(f"documented loss (a killed master's unreplicated writes; not violations): {documented}")
    if summary.get("fail_safe", {}).get("calls"):
        lines.append(f"fail-safe: {summary['fail_safe']}")
    for kind, vs in summary["examples"].items():
        for v in vs[:examples]:
            lines.append(f"  {kind} at {v['at']}s: {v['why']}")
            lines.extend(f"      {op}" for op in v["ops"])
    if summary["worker_crashes"]:
        lines.append(f"worker crashes: {summary['worker_crashes']}")
    lines.append(f"longest call: {summary['longest_call']}")
    lines.append(f"coordinators at the end: {summary['coordinators']}")
    lines.append(f"schedule: {'; '.join(summary['schedule']) or 'no faults'}")
    lines.append(f"history: {summary['history']}")
    lines.append(f"rerun: {summary['command']}")
    return "\n".join(lines)


def markdown(summary: dict[str, Any]) -> str:
    """The whole report for a human."""
    out = [f"# mtcache chaos run (seed {summary['seed']})", "",
           f"Rerun: `{summary['command']}`  ", f"Wall time: {summary['wall_seconds']} s; history in "
           f"`{summary['history']}`", "", "## Violations", "", "| kind | count |", "|---|---:|"]
    out += [f"| {k} | {n} |" for k, n in summary["violations"].items()]
    out += ["", "Documented loss (writes a killed master acknowledged and had not replicated; not counted as "
            "violations):", "", "| kind | count |", "|---|---:|"]
    out += [f"| {k} | {n} |" for k, n in summary.get("documented_loss", {}).items()]
    for kind, vs in summary["examples"].items():
        documented = " (documented loss, not a violation)" if kind in summary.get("documented_loss", {}) else ""
        out += ["", f"### {kind}{documented}", ""]
        for v in vs:
            out += [f"- at {v['at']} s: {v['why']}"] + [f"  - `{op}`" for op in v["ops"]]
    out += ["", "## Operations", "", f"Total: {summary['operations']['total']}", "",
            "| op | outcomes |", "|---|---|"]
    out += [f"| {k} | {', '.join(f'{o}: {n}' for o, n in c.items())} |"
            for k, c in summary["operations"]["by_kind"].items()]
    out += ["", f"Writes: {summary['writes']}  ", f"Computations: {summary['computes']}  ",
            f"Fail-safe: {summary.get('fail_safe', {})}  ",
            f"Degraded calls: {summary['degraded_calls']}; workers killed: {summary['workers_killed']}; "
            f"worker crashes: {len(summary['worker_crashes'])}", "",
            "## Faults", "", "| kind | count |", "|---|---:|"]
    out += [f"| {k} | {n} |" for k, n in sorted(summary["faults"].items())]
    if summary["fault_errors"]:
        out += ["", "Errors applying faults:"] + [f"- {e}" for e in summary["fault_errors"]]
    out += ["", "Schedule:", "", "```", *summary["schedule"], "```", "", "## Longest call", "",
            f"`{summary['longest_call']}`", "", "## Coordinators at the end", "",
            *[f"- host {h}: {st}" for h, st in summary["coordinators"].items()], "",
            "## Coordinator RSS (KiB)", "", "| t (s) | per host |", "|---:|---|"]
    out += [f"| {s['t']} | {s['kib']} |" for s in summary["coordinator_rss_kib"]]
    return "\n".join(out) + "\n"
