"""The recorded history of a chaos run: operations, faults, killed workers and final reads.

Layout of a history directory (every time is ``time.monotonic_ns()``, one clock for every process
on Linux):

- ``ops-<worker>.jsonl``: one line per operation, written by the worker when the call returns; a
  write (set, delete, get_or_compute) is preceded by a ``{"b": 1, ...}`` line written just before
  the call, so the operation a SIGKILLed worker was in the middle of is known too; a
  get_or_compute that left its computation to the background (past its soft timeout) is followed,
  when that ends, by a ``{"bg": 1, "i", "t", "fn", "fn_end", "stale", "act"}`` line.
- ``faults.jsonl``: ``{"i", "kind", "target", "phase": "apply" | "heal", "t", "detail"}`` (a
  ``master_kill``'s apply detail: ``master``, ``slots``, ``killed_at``, ``new_master``; every slot
  on Sentinel).
- ``workers.jsonl``: ``{"event": "start" | "killed" | "exited", "w", "host", "slot", "t", ...}``.
- ``final.json``: ``{"<host>": {"<key>": [first read, second read]}}`` after the run;
  ``final-time.json``: ``{"start", "end"}`` of those reads; ``redis-final.json``: what Redis held
  for each key then (stamp, tombstone, value: for diagnosis, the checker does not read it).
- ``run.json``: the run's configuration, seed, schedule and ``t0``.
- ``redis-logs/``: the logs of the Redis servers (and sentinels) the run used, copied at its end, for
  diagnosis (the checker does not read them).
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

#: Faults after which a Redis Cluster (or Sentinel) may have lost the writes its killed master
#: acknowledged and had not yet replicated, in the slots it served (the README's "What a failover can
#: lose"): their ``detail`` holds ``killed_at`` (when the SIGKILL was sent) and ``slots``
#: (``[[first, last], ...]``; on Sentinel, whose one master holds every key, ``[[0, 16383]]``).
REPLICATION_LOSS = frozenset({"master_kill"})


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

    Fail-safe (get_or_compute): ``ttl`` of the write (set, get_or_compute; None in histories
    recorded before it was), ``fail_safe`` and ``throttle`` of the call (0: not passed), ``soft``
    and ``hard`` its timeouts; ``stale``: the call itself counted a stale value it served (the
    client's ``stale_served``), ``act``: the client's ``fail_safe_activations`` grew during the
    call (maybe by a background completion of an earlier call: an over-approximation).
    ``fn_result`` is then also ``"bg"`` (the caller took a stale value at the soft timeout and the
    computation went on in the background) or ``"abandoned"`` (given up at the hard timeout). A
    background completion that was recorded gives ``bg_end`` (when it was over: its fill, if any,
    had landed), ``bg_fn`` (the function's outcome, ``"abandoned"`` if it passed the hard timeout
    there), ``bg_stale``, ``bg_act`` and ``bg_deg`` (as ``stale``, ``act`` and ``degraded``, for the
    completion); ``fn_end`` is then the function's end.
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
    ttl: float | None = None
    fail_safe: float = 0.0
    throttle: float = 0.0
    soft: float | None = None
    hard: float | None = None
    stale: bool = False
    act: bool = False
    bg_end: int | None = None
    bg_fn: str | None = None
    bg_stale: bool = False
    bg_act: bool = False
    bg_deg: bool = False

    @property
    def finished(self) -> int:
        """The end, or :data:`INF` for an operation that never finished."""
        return INF if self.end is None else self.end

    def to_json(self) -> dict[str, Any]:
        """The record as written (fields at their defaults left out)."""
        out = {"w": self.worker, "h": self.host, "i": self.index, "op": self.op, "k": self.key,
               "start": self.start, "end": self.end, "out": self.outcome, "v": self.value}
        extra = {"ack": self.ack, "fn_start": self.fn_start, "fn_end": self.fn_end, "fn": self.fn_result,
                 "slow": self.slow, "cancel": self.cancelled, "local": self.local, "deg": self.degraded,
                 "ttl": self.ttl, "fs": self.fail_safe or None, "thr": self.throttle or None, "soft": self.soft,
                 "hard": self.hard, "stale": self.stale, "act": self.act, "bg_end": self.bg_end,
                 "bg_fn": self.bg_fn, "bg_stale": self.bg_stale, "bg_act": self.bg_act, "bg_deg": self.bg_deg}
        out.update({k: v for k, v in extra.items() if v not in (None, False)})
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Op:
        """The inverse of :meth:`to_json`."""
        return cls(d["w"], d["h"], d["i"], d["op"], d["k"], d["start"], d.get("end"), d.get("out", "ok"),
                   d.get("v"), d.get("ack"), d.get("fn_start"), d.get("fn_end"), d.get("fn"),
                   d.get("slow", False), d.get("cancel", False), d.get("local", False), d.get("deg", False),
                   d.get("ttl"), d.get("fs") or 0.0, d.get("thr") or 0.0, d.get("soft"), d.get("hard"),
                   d.get("stale", False), d.get("act", False), d.get("bg_end"), d.get("bg_fn"),
                   d.get("bg_stale", False), d.get("bg_act", False), d.get("bg_deg", False))

    def join_background(self, rec: dict[str, Any]) -> None:
        """Take in the ``{"bg": 1, ...}`` line of this call's background completion."""
        self.bg_end, self.bg_fn = rec["t"], rec.get("fn", "abandoned")
        self.bg_stale, self.bg_act, self.bg_deg = bool(rec.get("stale")), bool(rec.get("act")), bool(rec.get("deg"))
        if self.bg_fn != "abandoned" and rec.get("fn_end") is not None:
            self.fn_end = rec["fn_end"]

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
        if self.bg_end is not None:
            text += f" bg[.. {(self.bg_end - t0) / 1e9:.4f}]={self.bg_fn}"
        if self.ttl is not None and self.ttl < 3600:
            text += f" ttl={self.ttl:.3f}"
        if self.fail_safe:
            text += f" fs={self.fail_safe:.3g}/{self.throttle:.3g}"
        flags = [f for f, on in (("slow", self.slow), ("cancelled", self.cancelled), ("local", self.local),
                                 ("degraded", self.degraded), ("stale", self.stale), ("activated", self.act),
                                 ("bg-stale", self.bg_stale), ("bg-activated", self.bg_act),
                                 ("bg-degraded", self.bg_deg)) if on]
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
    #: ``(start, end)`` of the final reads (None: not recorded)
    final_time: tuple[int, int] | None = None
    #: ``(start, end)`` of each period in which a coordinator worked without Redis (taking leases
    #: for its host only), as it reported them: at the end of the run, and before a SIGKILL
    down: list[tuple[int, int]] = field(default_factory=list)


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
    outcome ``"killed"`` and its ``ack`` ``"unknown"``); background completions are joined to
    their calls."""
    done: dict[int, Op] = {}
    begun: dict[int, dict[str, Any]] = {}
    background: dict[int, dict[str, Any]] = {}
    for rec in _read_jsonl(path):
        if rec.get("b"):
            begun[rec["i"]] = rec
        elif rec.get("bg"):
            background[rec["i"]] = rec
        else:
            op = Op.from_json(rec)
            done[op.index] = op
    for index, rec in begun.items():
        if index not in done:
            done[index] = Op(rec["w"], rec["h"], index, rec["op"], rec["k"], rec["start"], None,
                             "killed" if killed_at is not None else "unfinished",
                             rec.get("v"), "unknown" if rec["op"] != "goc" else None,
                             fn_result="unknown" if rec["op"] == "goc" else None, ttl=rec.get("ttl"),
                             fail_safe=rec.get("fs") or 0.0, throttle=rec.get("thr") or 0.0,
                             soft=rec.get("soft"), hard=rec.get("hard"))
    for index, rec in background.items():
        if index in done:
            done[index].join_background(rec)
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
    time_path = directory / "final-time.json"
    final_time = None
    if time_path.exists():
        times = json.loads(time_path.read_text())
        final_time = (times["start"], times["end"])
    faults = load_faults(directory / "faults.jsonl")
    reported = [f.detail.get("l2_down_periods", []) for f in faults]
    stats_path = directory / "coordinators.json"
    if stats_path.exists():
        reported += [st.get("l2_down_periods", []) for st in json.loads(stats_path.read_text()).values()]
    down = sorted({(int(start * 1e9), INF if end is None else int(end * 1e9))
                   for periods in reported for start, end in periods})
    return History(ops, faults, killed, final, t0, crashed, final_time, down)


def fault_json(fault: Fault) -> dict[str, Any]:
    """A fault as JSON (for reports)."""
    return asdict(fault)
