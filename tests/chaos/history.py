"""The recorded history of a chaos run: operations, faults, killed workers and final reads.

Layout of a history directory (every time is ``time.monotonic_ns()``, one clock for every process
on Linux):

- ``ops-<worker>.jsonl``: one line per operation, written by the worker when the call returns; a
  write (set, delete, get_or_compute) is preceded by a ``{"b": 1, ...}`` line written just before
  the call, so the operation a SIGKILLed worker was in the middle of is known too.
- ``faults.jsonl``: ``{"i", "kind", "target", "phase": "apply" | "heal", "t", "detail"}``.
- ``workers.jsonl``: ``{"event": "start" | "killed" | "exited", "w", "host", "slot", "t", ...}``.
- ``final.json``: ``{"<host>": {"<key>": [first read, second read]}}`` after the run.
- ``run.json``: the run's configuration, seed, schedule and ``t0``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: "Never": the end of an operation that never finished.
INF = 2**63

#: Faults after which Redis may have lost data (mtcache's own keys included).
DATA_LOSS = frozenset({"redis_restart_empty", "maxmemory_allkeys_lru"})


@dataclass(slots=True)
class Op:
    """One operation as a worker saw it.

    ``value``: what a set wrote, or what a get / get_or_compute returned. ``ack`` (set, delete):
    ``"ack"``, ``"skipped"`` (definitely not applied) or ``"unknown"`` (maybe applied; also every
    write that raised or never finished). ``fn_result`` (get_or_compute): None if the function did
    not run in this call, else ``"ok"``, ``"raised"`` or ``"cancelled"``; ``fn_end`` is when it
    returned or raised. ``local``: the function ran without the coordinator; ``degraded``: the
    client did not ask the coordinator (backing off) or lost it during the call; ``cancelled``: the
    worker cancelled the call on purpose. ``end`` is None for an operation that never finished.
    """

    worker: int
    host: int
    index: int
    op: str
    key: str
    start: int
    end: int | None
    outcome: str = "ok"
    value: Any = None
    ack: str | None = None
    fn_start: int | None = None
    fn_end: int | None = None
    fn_result: str | None = None
    slow: bool = False
    cancelled: bool = False
    local: bool = False
    degraded: bool = False

    @property
    def finished(self) -> int:
        """The end, or :data:`INF` for an operation that never finished."""
        return INF if self.end is None else self.end

    def to_json(self) -> dict[str, Any]:
        """The record as written (fields at their defaults left out)."""
        out = {"w": self.worker, "h": self.host, "i": self.index, "op": self.op, "k": self.key,
               "start": self.start, "end": self.end, "out": self.outcome, "v": self.value}
        extra = {"ack": self.ack, "fn_start": self.fn_start, "fn_end": self.fn_end, "fn": self.fn_result,
                 "slow": self.slow, "cancel": self.cancelled, "local": self.local, "deg": self.degraded}
        out.update({k: v for k, v in extra.items() if v not in (None, False)})
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Op:
        """The inverse of :meth:`to_json`."""
        return cls(d["w"], d["h"], d["i"], d["op"], d["k"], d["start"], d.get("end"), d.get("out", "ok"),
                   d.get("v"), d.get("ack"), d.get("fn_start"), d.get("fn_end"), d.get("fn"),
                   d.get("slow", False), d.get("cancel", False), d.get("local", False), d.get("deg", False))

    def describe(self, t0: int = 0) -> str:
        """One line for a report: who, what, when (seconds since ``t0``), how it ended."""
        end = "never" if self.end is None else f"{(self.end - t0) / 1e9:.4f}"
        text = f"w{self.worker}@h{self.host} #{self.index} {self.op} {self.key}"
        if self.value is not None or self.op in ("get", "goc"):
            text += f" -> {json.dumps(self.value, separators=(',', ':'))}" if self.op != "set" else \
                f" {json.dumps(self.value, separators=(',', ':'))}"
        text += f" [{(self.start - t0) / 1e9:.4f} .. {end}]"
        if self.fn_start is not None:
            fn_end = "?" if self.fn_end is None else f"{(self.fn_end - t0) / 1e9:.4f}"
            text += f" fn[{(self.fn_start - t0) / 1e9:.4f} .. {fn_end}]={self.fn_result}"
        flags = [f for f, on in (("slow", self.slow), ("cancelled", self.cancelled), ("local", self.local),
                                 ("degraded", self.degraded)) if on]
        return " ".join([text, self.ack or "", self.outcome if self.outcome != "ok" else "", *flags]).rstrip()


@dataclass(frozen=True)
class Fault:
    """One fault window as applied: ``start`` when applied, ``end`` when healed (== start for an
    instantaneous fault). Every kind but ``worker_kill`` is *disruptive*."""

    index: int
    kind: str
    target: Any
    start: int
    end: int
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def disruptive(self) -> bool:
        return self.kind != "worker_kill"


@dataclass
class History:
    """Everything the checker judges. ``killed``: worker id -> when it was SIGKILLed (its last
    operation may be unrecorded); ``final``: host -> key -> the final reads (None if not taken)."""

    ops: list[Op]
    faults: list[Fault] = field(default_factory=list)
    killed: dict[int, int] = field(default_factory=dict)
    final: dict[int, dict[str, list[Any]]] | None = None
    t0: int = 0
    crashed: list[dict[str, Any]] = field(default_factory=list)


def append_json(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (the harness's own logs; small and rare)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by SIGKILL
                continue
    return out


def load_ops(path: Path, killed_at: int | None) -> list[Op]:
    """A worker's operations; a write begun but never recorded becomes an unfinished op (its
    outcome ``"killed"`` and its ``ack`` ``"unknown"``)."""
    done: dict[int, Op] = {}
    begun: dict[int, dict[str, Any]] = {}
    for rec in _read_jsonl(path):
        if rec.get("b"):
            begun[rec["i"]] = rec
        else:
            op = Op.from_json(rec)
            done[op.index] = op
    for index, rec in begun.items():
        if index not in done:
            done[index] = Op(rec["w"], rec["h"], index, rec["op"], rec["k"], rec["start"], None,
                             "killed" if killed_at is not None else "unfinished",
                             rec.get("v"), "unknown" if rec["op"] != "goc" else None,
                             fn_result="unknown" if rec["op"] == "goc" else None)
    return sorted(done.values(), key=lambda op: op.index)


def load_faults(path: Path) -> list[Fault]:
    """Fault windows from their apply and heal lines (one never healed ends at INF)."""
    applied: dict[int, dict[str, Any]] = {}
    healed: dict[int, int] = {}
    for rec in _read_jsonl(path) if path.exists() else []:
        if rec["phase"] == "apply":
            applied[rec["i"]] = rec
        elif rec["phase"] == "heal":
            healed[rec["i"]] = rec["t"]
    return [Fault(i, r["kind"], r.get("target"), r["t"], healed.get(i, INF), r.get("detail", {}))
            for i, r in sorted(applied.items())]


def load_history(directory: Path) -> History:
    """Read a history directory (see the module docstring)."""
    killed: dict[int, int] = {}
    crashed: list[dict[str, Any]] = []
    workers_log = directory / "workers.jsonl"
    for rec in _read_jsonl(workers_log) if workers_log.exists() else []:
        if rec["event"] == "killed":
            killed[rec["w"]] = rec["t"]
        elif rec["event"] == "exited" and rec.get("code") != 0:
            crashed.append(rec)
    ops: list[Op] = []
    for path in sorted(directory.glob("ops-*.jsonl")):
        worker = int(path.stem.split("-", 1)[1])
        ops.extend(load_ops(path, killed.get(worker)))
    final_path, run_path = directory / "final.json", directory / "run.json"
    final = None
    if final_path.exists():
        final = {int(h): keys for h, keys in json.loads(final_path.read_text()).items()}
    t0 = json.loads(run_path.read_text()).get("t0", 0) if run_path.exists() else 0
    return History(ops, load_faults(directory / "faults.jsonl"), killed, final, t0, crashed)


def fault_json(fault: Fault) -> dict[str, Any]:
    """A fault as JSON (for reports)."""
    return asdict(fault)
