"""The history checker: pure functions from a recorded :class:`~tests.chaos.history.History` to
violations of mtcache's consistency contract (README, "Consistency: what you can rely on").

Definitions (all times ``monotonic_ns``; ``tol`` absorbs clock-stamp granularity):

- A *write* is a ``set`` (its value), a ``delete`` (value None) or a *fill*: a ``get_or_compute``
  whose function ran and returned, its value written from ``fn_start`` (also one whose caller
  took a stale value at its soft timeout, and whose computation then returned in the background).
  A write is *acknowledged* (``ack``), *skipped* (definitely not applied: it never happened) or
  *unknown* (maybe applied: raised, counted as unknown by the client, cut short by a SIGKILL, or
  a background computation whose end was never recorded).
- Write A *precedes* write B if ``A.order_end + tol < B.start``, where ``order_end`` is the end of an
  acknowledged set or delete, the ``fn_start`` of a fill (mtcache stamps a fill with the moment its
  lease began, before ``fn_start``), and "never" for an unknown write (it may have been applied at
  any time, so it precedes nothing).
- W *supersedes* W' if W' precedes W and W is an acknowledged set or delete. Fills and unknown
  writes never supersede; their values may always be read.
- A *read* is a ``get``, or a ``get_or_compute`` that returned a value it did not compute (a
  stale value served by fail-safe included). A read that returns None is never stale (a miss is
  always allowed; see ``lost_write``).
- A fault is *disruptive* unless it is a ``worker_kill``.
- A *replication loss* (the README's "What a failover can lose"): a ``master_kill`` on a Redis
  Cluster or on Sentinel, SIGKILLed at ``K``, may have lost the writes it acknowledged and had not yet
  replicated. A write *may have been lost* by it if its key's record is in a slot the killed master
  served (on Sentinel it served them all), its
  call began before ``K`` (+ ``tol``) and it landed (its call ended, or its background completion)
  no earlier than ``replication_window`` before ``K`` (or after ``K``: the master's reply may reach
  the worker after the kill). A violation of ``stale_read_same_host``, ``stale_read_cross_host`` or
  ``not_converged`` that such writes alone make (the write the read should have seen, or the write
  missing from the final reads, is one of them, the kill came before the read ended, and without
  them there is no violation) is counted as ``replication_loss`` instead: reported, not a
  violation. Every other violation counts as before.

The violation kinds are the functions below whose names end in ``_violations``; each docstring
defines its kind exactly.
"""

from __future__ import annotations

import functools
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.crc import key_slot

from mtcache.coordinator.l2 import CLUSTER_GROUPS, Layout, key_prefix
from tests.chaos.history import DATA_LOSS, INF, REPLICATION_LOSS, Fault, History, Op
from tests.chaos.intervals import RangeMax, Timeline
from tests.chaos.workload import ValueId, value_id

KINDS = ("stale_read_same_host", "stale_read_cross_host", "lost_write", "unknown_value", "not_converged",
         "unexpected_exception", "duplicate_compute", "expired_value", "uncounted_stale")

#: The documented asynchronous-replication loss of a master SIGKILL (see the module docstring):
#: counted and shown apart, never a violation.
REPLICATION_LOSS_KIND = "replication_loss"


@dataclass(frozen=True)
class CheckParams:
    """Bounds of the contract, in seconds."""

    tol: float = 0.005
    propagation_bound: float = 1.0
    heal_bound: float = 8.0
    #: a duplicate computation this soon after a fault ended is the fault's doing: a coordinator
    #: that lost Redis takes leases per host only until it reconnects (back-off up to 2 s)
    dup_slack: float = 3.0
    #: how long after its deadline a value may still be read: a near copy's deadline is set when
    #: the worker receives the value (its transit added), and a deadline is known only to within
    #: the coordinator's reply (see ``expired_value``)
    expiry_slack: float = 0.25
    #: a write that landed at most this long before a master's SIGKILL may have been lost with it
    #: (see "replication loss" in the module docstring)
    replication_window: float = 1.0
    #: the namespace of the run's keys: where their records live on a cluster
    namespace: str = "chaos"
    examples: int = 5


@dataclass
class Violation:
    """One violation: its kind, when (the read's start, mostly), why, and the operations involved
    (the read first, then the writes that make it wrong)."""

    kind: str
    time: int
    why: str
    ops: list[Op] = field(default_factory=list)


@dataclass
class CheckResult:
    """Counts per kind and the first ``examples`` violations of each, in time order; ``documented``:
    the count of ``replication_loss`` (its examples are in ``examples`` too), not in ``total``."""

    counts: dict[str, int]
    examples: dict[str, list[Violation]]
    documented: dict[str, int] = field(default_factory=lambda: {REPLICATION_LOSS_KIND: 0})

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class Write:
    """A write derived from an operation (see the module docstring)."""

    op: Op
    kind: str  # "set" | "delete" | "fill"
    vid: ValueId | None
    status: str  # "ack" | "skipped" | "unknown" | "fill"
    start: int  # the earliest its value can exist: the call's start, or fn_start for a fill
    order_end: int  # see "precedes" in the module docstring
    #: the latest it can have been applied, as its worker saw it: the call's end, the end of the
    #: background completion of a fill, INF if unknown (see ``expired_value`` for what a degraded
    #: call adds)
    landed: int = INF
    #: its TTL and fail-safe (seconds; TTL None: not recorded, it never expires here)
    ttl: float | None = None
    fail_safe: float = 0.0

    @property
    def supersedes(self) -> bool:
        return self.status == "ack"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def derive_writes(ops: Iterable[Op]) -> list[Write]:
    """Every write of the history, skipped ones included (callers filter)."""
    out = []
    for op in ops:
        if op.op in ("set", "delete"):
            status = op.ack if op.ack in ("ack", "skipped") and op.outcome == "ok" else "unknown"
            vid = _vid(op.value) if op.op == "set" else None
            order_end = op.end if status == "ack" and op.end is not None else INF
            out.append(Write(op, op.op, vid, status, op.start, order_end, op.finished, op.ttl))
            continue
        if op.op != "goc":
            continue
        vid = (op.worker, op.index, 1)
        if op.fn_result == "ok" and op.fn_start is not None:
            out.append(Write(op, "fill", vid, "fill", op.fn_start, op.fn_start, op.finished, op.ttl, op.fail_safe))
        elif op.fn_result == "bg" and op.fn_start is not None and op.bg_fn in ("ok", None):
            if op.bg_fn == "ok" and op.bg_end is not None:  # filled in the background
                out.append(Write(op, "fill", vid, "fill", op.fn_start, op.fn_start, op.bg_end, op.ttl, op.fail_safe))
            else:  # its end was never recorded (the worker was killed or stopped meanwhile)
                out.append(Write(op, "fill", vid, "unknown", op.fn_start, INF, INF, op.ttl, op.fail_safe))
        elif op.fn_result == "unknown":  # a SIGKILLed worker's last call
            out.append(Write(op, "fill", vid, "unknown", op.start, INF, INF, op.ttl, op.fail_safe))
    return out


def reads(ops: Iterable[Op]) -> list[Op]:
    """Operations that read a value: gets, and get_or_compute calls that did not fill (stale values
    served by fail-safe included)."""
    return [op for op in ops if op.outcome == "ok" and op.end is not None
            and (op.op == "get" or (op.op == "goc" and op.fn_result != "ok"))]


def _vid(value: Any) -> ValueId | None:
    try:
        return value_id(value)
    except ValueError:
        return None


class _Acked:
    """The acknowledged sets and deletes of one key by one host, ordered by end."""

    def __init__(self, writes: list[Write]) -> None:
        self.writes = sorted(writes, key=lambda w: w.order_end)
        self.ends = [w.order_end for w in self.writes]
        self.starts = RangeMax([w.start for w in self.writes])

    def witness(self, lo: int, hi: int, after: int) -> Write | None:
        """A write among ``writes[lo:hi]`` that started after ``after``."""
        if hi > lo and self.starts.query(lo, hi) > after:
            return next(w for w in reversed(self.writes[lo:hi]) if w.start > after)
        return None


def _acked_index(writes: list[Write]) -> dict[tuple[str, int], _Acked]:
    groups: dict[tuple[str, int], list[Write]] = defaultdict(list)
    for w in writes:
        if w.supersedes:
            groups[(w.op.key, w.op.host)].append(w)
    return {k: _Acked(v) for k, v in groups.items()}


@dataclass(frozen=True)
class Loss:
    """A master SIGKILLed at ``at`` while it served ``slots`` (inclusive ranges)."""

    at: int
    slots: tuple[tuple[int, int], ...]

    def covers(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def replication_losses(history: History) -> list[Loss]:
    """The masters killed during the run (faults of :data:`REPLICATION_LOSS` that did kill one), by time."""
    out = [Loss(int(f.detail["killed_at"]), tuple((int(a), int(b)) for a, b in f.detail.get("slots", [])))
           for f in history.faults if f.kind in REPLICATION_LOSS and "killed_at" in f.detail]
    return sorted(out, key=lambda loss: loss.at)


@functools.lru_cache(maxsize=8)
def _cluster_layout(namespace: str) -> Layout:
    return Layout(key_prefix(namespace), namespace, CLUSTER_GROUPS)


@functools.lru_cache(maxsize=4096)
def record_slot(key: str, namespace: str) -> int:
    """The hash slot of ``key``'s record on a Redis Cluster."""
    return key_slot(_cluster_layout(namespace).record(key).encode())


class _Lossy:
    """The writes a replication loss may have taken (see the module docstring), each with the
    earliest kill that may have."""

    def __init__(self, history: History, writes: list[Write], p: CheckParams) -> None:
        tol, window = _ns(p.tol), _ns(p.replication_window)
        losses = replication_losses(history)
        self._since: dict[int, int] = {}
        for w in writes if losses else []:
            if w.status == "skipped":
                continue
            for loss in losses:
                if (w.op.start <= loss.at + tol and w.landed + tol >= loss.at - window
                        and loss.covers(record_slot(w.op.key, p.namespace))):
                    self._since[id(w)] = loss.at
                    break
        #: the kills that may have lost a write, in time order
        self.times = sorted(set(self._since.values()))

    def lost(self, w: Write, by: int = INF) -> bool:
        """``w`` may have been lost by a kill at or before ``by``."""
        at = self._since.get(id(w))
        return at is not None and at <= by

    def killed_before(self, t: int) -> int:
        """How many of :attr:`times` are at or before ``t``."""
        return bisect_right(self.times, t)


def _stale_witness(r: Op, after: int, acked: dict[tuple[str, int], _Acked], hosts: list[int], timeline: Timeline,
                   pb: int, heal: int) -> tuple[str, Write, int] | None:
    """What makes read ``r`` of a value whose write ended at ``after`` (+ tol) stale, by the rules of
    ``stale_read_violations``: ``(kind, the superseding write, its host)``, or None."""
    same = acked.get((r.key, r.host))
    if same is not None and (w := same.witness(0, bisect_left(same.ends, r.start), after)) is not None:
        return "stale_read_same_host", w, r.host
    if timeline.active(r.start):
        return None
    last = timeline.last_end_before(r.start)
    if last is not None and r.start <= last + heal:
        return None
    for host in hosts:
        other = acked.get((r.key, host))
        if host == r.host or other is None:
            continue
        lo = 0 if last is None else bisect_right(other.ends, last)
        w = other.witness(lo, bisect_left(other.ends, r.start - pb), after)
        if w is not None:
            return "stale_read_cross_host", w, host
    return None


def stale_read_violations(history: History, writes: list[Write], p: CheckParams) -> list[Violation]:
    """``stale_read_same_host``: a read R on host h returns the value of W' while an acknowledged
    write W by a worker of host h supersedes W' and ``W.end < R.start``. No fault excuses it.

    ``stale_read_cross_host``: the same with W on another host, checked only when
    ``W.end + propagation_bound < R.start``, no disruptive fault is active at ``R.start`` or during
    ``[W.end, R.start]``, and ``R.start`` is more than ``heal_bound`` after the end of the latest
    disruptive fault.

    ``replication_loss`` instead of either: R ended after a master was killed, and only writes that
    kill (or an earlier one) may have lost make R stale (without them, neither rule finds a write)."""
    tol, pb, heal = _ns(p.tol), _ns(p.propagation_bound), _ns(p.heal_bound)
    by_vid = {w.vid: w for w in writes if w.vid is not None}
    lossy = _Lossy(history, writes, p)
    # every acknowledged write; then without those the first kill may have lost, the first two, ...
    indexes = [_acked_index(writes)] + [_acked_index([w for w in writes if not lossy.lost(w, t)])
                                        for t in lossy.times]
    hosts = sorted({h for _, h in indexes[0]})
    timeline = Timeline(f for f in history.faults if f.disruptive)
    out = []
    for r in reads(history.ops):
        vid = _vid(r.value)
        old = by_vid.get(vid) if vid is not None else None
        if old is None or old.order_end == INF:
            continue
        after = old.order_end + tol
        found = _stale_witness(r, after, indexes[0], hosts, timeline, pb, heal)
        if found is None:
            continue
        kills = lossy.killed_before(r.finished)
        if kills:
            real = _stale_witness(r, after, indexes[kills], hosts, timeline, pb, heal)
            if real is None:
                kind, w, host = found
                at = (lossy.times[kills - 1] - history.t0) / 1e9
                out.append(Violation(REPLICATION_LOSS_KIND, r.start, f"{kind}: returned the value of a write "
                                     f"superseded only by writes a master killed by {at:.3f}s may have lost (by "
                                     f"{w.kind} w{w.op.worker}#{w.op.index} of host {host})", [r, old.op, w.op]))
                continue
            found = real
        kind, w, host = found
        if kind == "stale_read_same_host":
            why = f"returned the value of a write superseded by {w.kind} w{w.op.worker}#{w.op.index} of the same host"
        else:
            why = (f"returned the value of a write superseded {(r.start - w.order_end) / 1e9:.3f}s earlier by "
                   f"{w.kind} w{w.op.worker}#{w.op.index} of host {host}")
        out.append(Violation(kind, r.start, why, [r, old.op, w.op]))
    return out


def lost_write_violations(history: History, writes: list[Write], p: CheckParams) -> list[Violation]:
    """``lost_write``: a get R on host h returns None (the client not degraded) while the latest
    acknowledged write of the key by host h that ended before ``R.start`` is a set W, no other write
    of any kind by any host on that key (unknown, skipped, deletes, fills; a fill counted over its
    whole call, and up to the end of its background completion) overlaps W or follows it before
    ``R.end`` (one begun while R ran, a delete, may have been applied before R read), and no
    disruptive fault is active anywhere in ``[W.start, R.start]``."""
    tol = _ns(p.tol)
    acked = _acked_index(writes)
    timeline = Timeline(f for f in history.faults if f.disruptive)
    by_key: dict[str, list[Write]] = defaultdict(list)
    for w in writes:
        by_key[w.op.key].append(w)
    # per key, writes by the start of their call, with the two largest ends so far (and whose)
    starts: dict[str, list[int]] = {}
    tops: dict[str, list[tuple[int, int, int]]] = {}
    for key, ws in by_key.items():
        ws.sort(key=lambda w: w.op.start)
        starts[key] = [w.op.start for w in ws]
        top: list[tuple[int, int, int]] = []
        best = (-INF, -1, -INF)  # (largest end, its write's id, second largest end)
        for w in ws:
            end = max(w.op.finished, w.landed)  # a background fill lands after its call
            best = (end, id(w), best[0]) if end >= best[0] else (best[0], best[1], max(best[2], end))
            top.append(best)
        tops[key] = top
    out = []
    for r in history.ops:
        if r.op != "get" or r.value is not None or r.outcome != "ok" or r.degraded or r.end is None:
            continue
        own = acked.get((r.key, r.host))
        n = bisect_left(own.ends, r.start) if own else 0
        if own is None or n == 0 or own.writes[n - 1].kind != "set":
            continue
        w = own.writes[n - 1]
        i = bisect_left(starts[r.key], r.finished) - 1
        first, whose, second = tops[r.key][i]
        if (second if whose == id(w) else first) >= w.op.start - tol:
            continue
        if timeline.intersects(w.op.start, r.start):
            continue
        out.append(Violation("lost_write", r.start, "host forgot its own acknowledged set", [r, w.op]))
    return out


def unknown_value_violations(history: History, writes: list[Write], p: CheckParams) -> list[Violation]:
    """``unknown_value``: a read returns something no recorded write produced (a malformed value, or
    an id with no write; excused when the writer was SIGKILLed and the id is past its last recorded
    operation), the value of a write reported *skipped* (it happened after all), or a value read
    before its write began (before the set's call, or before the fill's ``fn_start``)."""
    tol = _ns(p.tol)
    by_vid = {w.vid: w for w in writes if w.vid is not None}
    last_index: dict[int, int] = defaultdict(int)
    for op in history.ops:
        last_index[op.worker] = max(last_index[op.worker], op.index)
    out = []
    for r in reads(history.ops):
        if r.value is None:
            continue
        vid = _vid(r.value)
        w = by_vid.get(vid) if vid is not None else None
        if vid is None:
            why = "not a value this workload writes"
        elif w is None:
            if vid[0] in history.killed and vid[1] > last_index[vid[0]]:
                continue
            why = "no recorded write produced it"
        elif w.status == "skipped":
            why = "the value of a write its client reported as skipped"
        elif r.finished + tol < w.start:
            why = "read before its write began"
        else:
            continue
        out.append(Violation("unknown_value", r.start, why, [r] + ([w.op] if w else [])))
    return out


def convergence_violations(history: History, writes: list[Write], p: CheckParams) -> list[Violation]:
    """``not_converged``: after the run (faults healed, ``heal_bound`` of quiet time, workers
    stopped) every host reads every key twice, 1 s apart, with a fresh client. Every one of those
    reads of a key must return the same thing, and that must be the value of a *maximal* write of
    the key: one not superseded by any acknowledged write (skipped writes excluded). None is allowed
    only if there is no write, a maximal write is a delete (acknowledged or unknown), or a
    data-losing fault (``redis_restart_empty``, ``maxmemory_allkeys_lru``) ended after the earliest
    maximal write began (Redis may have lost it).

    A maximal fill with a TTL (fail-safe runs) may expire: if it may have expired before the last
    final read (its function ended at least its TTL before: its value was stored after that), None
    is allowed too, mixed with that one value (some reads before its expiry, some after).

    ``replication_loss`` instead: some writes of the key may have been lost by a master's SIGKILL,
    and every id read is allowed by the writes, or by the writes without some of those (the ones
    that landed after one of them began: a replica misses a suffix of what its master applied).
    Hosts may then disagree: one whose stream reader had not read a lost write's entry keeps serving
    its own copy of it (the README's "What a failover can lose")."""
    if history.final is None:
        return []
    tol = _ns(p.tol)
    final_end = history.final_time[1] if history.final_time is not None else INF
    by_key: dict[str, list[Write]] = defaultdict(list)
    for w in writes:
        if w.status != "skipped":
            by_key[w.op.key].append(w)
    losses = [f.end for f in history.faults if f.kind in DATA_LOSS]
    lossy = _Lossy(history, writes, p)
    keys = sorted({k for per_host in history.final.values() for k in per_host})
    out = []
    for key in keys:
        ws = by_key.get(key, [])
        allowed, expiring, maximal = _allowed(ws, losses, final_end, tol)
        seen = {h: per_host.get(key, []) for h, per_host in history.final.items()}
        ids = {_final_id(v) for vs in seen.values() for v in vs}
        if ids <= allowed and (len(ids) == 1 or (expiring and len(ids - {None}) <= 1)):
            continue
        why = (f"{key}: final reads {seen} (as ids {sorted(map(str, ids))}); maximal writes allow "
               f"{sorted(map(str, allowed))}")
        lost = [w for w in ws if lossy.lost(w)]
        if lost:
            explained = set(allowed)
            for since in sorted({w.op.start for w in lost}):
                gone = {id(w) for w in lost if w.landed >= since}
                explained |= _allowed([w for w in ws if id(w) not in gone], losses, final_end, tol)[0]
            if ids <= explained:
                out.append(Violation(REPLICATION_LOSS_KIND, max((w.op.finished for w in ws), default=0),
                                     f"not_converged: {why}; with writes a killed master may have lost "
                                     f"gone: {sorted(map(str, explained))}", [w.op for w in lost][-4:]))
                continue
        out.append(Violation("not_converged", max((w.op.finished for w in ws), default=0), why,
                             [w.op for w in maximal][:4]))
    return out


def _allowed(ws: list[Write], losses: list[int], final_end: int, tol: int) -> tuple[set[Any], bool, list[Write]]:
    """What the final reads of a key may return given its writes ``ws`` (see ``not_converged``; ``losses``:
    the ends of the data-losing faults): the allowed ids, whether a maximal fill may have expired, and
    the maximal writes."""
    newest = max((w.start for w in ws if w.supersedes), default=-1)
    maximal = [w for w in ws if w.order_end + tol >= newest]
    allowed: set[Any] = {w.vid for w in maximal if w.vid is not None}
    earliest = min((w.start for w in maximal), default=INF)
    if not ws or any(w.kind == "delete" for w in maximal) or any(end >= earliest for end in losses):
        allowed.add(None)
    expiring = any(w.kind == "fill" and w.ttl is not None
                   and (w.op.fn_end or w.start) + _ns(w.ttl) <= final_end for w in maximal)
    if expiring:
        allowed.add(None)
    return allowed, expiring, maximal


def _final_id(value: Any) -> Any:
    """The id of a final read; a malformed value stands for itself (it matches no write)."""
    vid = _vid(value)
    return ("malformed", repr(value)) if vid is None and value is not None else vid


def _excused_exception(op: Op) -> bool:
    if op.outcome in ("ok", "killed", "unfinished"):
        return True
    if op.outcome.startswith("CacheTimeout"):
        return True
    if op.outcome.startswith("ComputeError") and "InjectedFailure" in op.outcome:
        return True
    return op.cancelled and op.outcome.split(":", 1)[0] in ("TimeoutError", "CancelledError")


def exception_violations(history: History, writes: list[Write], p: CheckParams) -> list[Violation]:
    """``unexpected_exception``: an exception reached a caller, other than a ComputeError caused by
    the injected failure (here or in the lease holder), CacheTimeout (also a hard timeout here or in
    the lease holder), and the TimeoutError / CancelledError of the worker's own deliberate
    cancellation."""
    return [Violation("unexpected_exception", op.start, op.outcome, [op])
            for op in history.ops if not _excused_exception(op)]


def duplicate_compute_violations(history: History, writes: list[Write], p: CheckParams) -> list[Violation]:
    """``duplicate_compute``: two executions of a key's function (through the coordinator: not a
    local compute) whose ``[fn_start, fn_end]`` overlap, neither cancelled nor slow, while no slow
    execution of that key was running and no fault window (disruptive or ``worker_kill``) and no
    period in which a coordinator worked without Redis (its leases then hold for its host only),
    each extended by ``dup_slack`` after its end, touched ``[earlier fn_start, later fn_end]``."""
    slack = _ns(p.dup_slack)
    faults = Timeline([*(Fault(f.index, f.kind, f.target, f.start, min(INF, f.end + slack)) for f in history.faults),
                       *(Fault(-1, "l2_down", None, start, min(INF, end + slack)) for start, end in history.down)])
    runs: dict[str, list[Op]] = defaultdict(list)
    for op in history.ops:
        if op.op == "goc" and op.fn_start is not None and op.fn_end is not None:
            runs[op.key].append(op)
    out = []
    for key_runs in runs.values():
        key_runs.sort(key=lambda op: op.fn_start or 0)
        slow = Timeline(Fault(0, "slow", None, op.fn_start or 0, op.fn_end or INF) for op in key_runs if op.slow)
        active: list[Op] = []
        for op in key_runs:
            assert op.fn_start is not None and op.fn_end is not None
            active = [a for a in active if (a.fn_end or 0) >= op.fn_start]
            for a in active:
                pair = (a, op)
                if any(x.slow or x.cancelled or x.local for x in pair):
                    continue
                lo, hi = a.fn_start or 0, max(a.fn_end or 0, op.fn_end)
                if slow.intersects(lo, hi) or faults.intersects(lo, hi):
                    continue
                out.append(Violation("duplicate_compute", op.fn_start, "two computations of one key at once",
                                     [a, op]))
            active.append(op)
    return out


def _settled(op: Op, end: int, degraded: bool, disruptive: Timeline) -> int:
    """The latest a call's requests (up to ``end``) can have been carried out. A call that got its
    replies: ``end``. A degraded one may have left a request the coordinator carries out later (a
    stopped coordinator, continued): the end of the disruptive faults overlapping the call, and if
    none did, never known (INF)."""
    if not degraded or end >= INF:
        return end
    fault_end = disruptive.end_of_overlap(op.start, end)
    return INF if fault_end is None else max(end, fault_end)


@dataclass(frozen=True, slots=True)
class _Activation:
    """A call that may have made a stale value fresh again for ``throttle`` seconds (fail-safe), at
    some moment in ``[start, settled]``."""

    op: Op
    start: int
    settled: int
    throttle: int


def _activations(ops: Iterable[Op], disruptive: Timeline) -> dict[str, list[_Activation]]:
    """Per key, by start: every call that counted an activation (``act``) through the coordinator
    (not a ``local`` one: without the coordinator, a worker serves its own near copy and makes
    nothing fresh), every background completion that did (``bg_act``), and, with no known end
    (they may have activated at any time), every call with fail-safe whose end, or whose background
    completion's end, was never recorded, and every one whose function failed and that was then
    interrupted (cancelled: it may have sent its fail-safe activation, and not waited for the reply
    after which it counts it)."""
    out: dict[str, list[_Activation]] = defaultdict(list)
    for op in ops:
        if op.op != "goc" or op.fail_safe <= 0:
            continue
        throttle = _ns(op.throttle)
        if op.act and op.end is not None and not op.local:
            out[op.key].append(_Activation(op, op.start, _settled(op, op.end, op.degraded, disruptive), throttle))
        if op.bg_act and op.bg_end is not None:
            out[op.key].append(_Activation(op, op.start, _settled(op, op.bg_end, op.bg_deg, disruptive), throttle))
        interrupted = (not op.act and not op.local and op.fn_result in ("raised", "abandoned")
                       and op.outcome != "ok" and not op.outcome.startswith(("ComputeError", "CacheTimeout")))
        if op.end is None or interrupted or (op.fn_result == "bg" and op.bg_end is None):
            out[op.key].append(_Activation(op, op.start, INF, throttle))
    for acts in out.values():
        acts.sort(key=lambda a: a.start)
    return out


def _lifetime(w: Write, acts: list[_Activation], disruptive: Timeline, tol: int) -> list[tuple[int, int, int]]:
    """How long the value of write ``w`` may stay fresh, and kept (stale) on a tier, as activations
    may have extended it: ``[(since, fresh_until, kept_until), ...]``, each entry holding from the
    start of an activation on (the first from the beginning). See ``expired_value``."""
    if w.ttl is None:
        return [(-INF, INF, INF)]
    landed = _settled(w.op, w.landed, w.op.degraded or w.op.bg_deg, disruptive)
    fresh = landed + _ns(w.ttl) if landed < INF else INF
    kept = fresh + _ns(w.fail_safe) if fresh < INF else INF
    out = [(-INF, fresh, kept)]
    for a in acts:
        if a.settled < w.start:
            continue  # over before the value existed
        if a.start > kept + tol:
            break  # the value was gone from every tier before this one (and every later one) began
        if a.settled >= INF:
            return [*out, (a.start, INF, INF)]
        # fresh again until the throttle past its Redis record (written by its settled end); kept its
        # remaining stale time past that: in L1 the throttle longer, in Redis also as long as the
        # record was written after the activation began (at most its settled end - its start)
        fresh = max(fresh, a.settled + a.throttle)
        kept += a.throttle + (a.settled - a.start)
        out.append((a.start, fresh, kept))
    return out


def expired_value_violations(history: History, writes: list[Write], p: CheckParams) -> list[Violation]:
    """``expired_value``: a read R returns the value of write W after it may be served. Times are
    upper bounds, so the rule is sound (``slack`` = ``expiry_slack`` + ``tol``):

    - W *landed* at the end of its call (a set, a fill), or of its background completion (a fill
      after a soft timeout); for a call whose client was degraded, at the end of the disruptive
      faults that overlap it (a stopped coordinator carries a request out when continued), or never
      known if none did. A value with no recorded TTL, or whose landing is not known, never expires.
    - W is *fresh* until ``landed + ttl`` and *kept* (every tier holds it as a stale fallback) until
      ``landed + ttl + fail_safe`` (W's own fail-safe; sets have none).
    - An *activation* is a call (or its background completion) on the key that counted a fail-safe
      activation through the coordinator, whose end was never recorded, or whose function failed
      and that was then cancelled (see :func:`_activations`): somewhere in
      ``[its start, its settled end]`` it may have made the key's stale value fresh again for its
      throttle ``R``: then that value is fresh until at most ``settled end + R`` (its Redis record
      was written by then) and kept ``R + (settled end - start)`` longer (the coordinator keeps its
      remaining stale time as of the activation, and its Redis record may have been written up to
      the settled end); one whose settled end is not known leaves the value unbounded from its
      start on. Activations are taken in order of start while they begin before the value's kept
      deadline so far (plus ``tol``): one that begins after it cannot have found the value (nor can
      any later one). Any activation of the key counts, whichever value it refreshed, if it settled
      after W began.
    - A read that counted no stale serve (a get, a get_or_compute not marked ``stale``) may return
      W's value only if ``R.start <= fresh + slack``. A get_or_compute marked ``stale`` (its own
      fail-safe ``R.fail_safe``) only if ``R.start <= min(kept, fresh + R.fail_safe) + slack``: the
      coordinator hands over a stale value it still keeps, gone stale at most the caller's
      fail-safe ago; for a ``local`` one (no coordinator answered: the worker's own near copy
      stands in) only if ``R.start <= fresh + R.fail_safe + slack``. ``fresh`` and ``kept`` with
      the activations that began before ``R.end``.

    So a value served later than its TTL, or later than its TTL plus fail-safe plus the throttle
    windows of the activations that could have reached it, is caught. A stale serve that was not
    counted, of a value past its fresh deadline, is caught here too (it is held to the fresh bound).
    """
    tol, slack = _ns(p.tol), _ns(p.expiry_slack) + _ns(p.tol)
    disruptive = Timeline(f for f in history.faults if f.disruptive)
    by_vid = {w.vid: w for w in writes if w.vid is not None}
    acts = _activations(history.ops, disruptive)
    lifetimes: dict[ValueId, list[tuple[int, int, int]]] = {}
    out = []
    for r in reads(history.ops):
        vid = _vid(r.value)
        w = by_vid.get(vid) if vid is not None else None
        if vid is None or w is None or w.status == "skipped":
            continue
        life = lifetimes.get(vid)
        if life is None:
            life = lifetimes[vid] = _lifetime(w, acts.get(w.op.key, []), disruptive, tol)
        at = bisect_left(life, (r.finished, -INF, -INF))
        _, fresh, kept = life[at - 1]
        stale = r.op == "goc" and r.stale
        limit = fresh
        if stale:
            limit = fresh + _ns(r.fail_safe) if fresh < INF else INF
            limit = limit if r.local else min(kept, limit)
        if limit >= INF or r.start <= limit + slack:
            continue
        what = "a stale serve allowed until" if stale else "fresh until"
        out.append(Violation("expired_value", r.start, f"{'a stale' if stale else 'a'} read "
                             f"{(r.start - limit) / 1e9:.3f}s after its value could be served: {what} "
                             f"{(limit - history.t0) / 1e9:.3f} (ttl {w.ttl:g}, fail-safe {w.fail_safe:g}, "
                             f"reader's {r.fail_safe:g}; {at - 1} activation(s) may have reached it)", [r, w.op]))
    return out


def uncounted_stale_violations(history: History, writes: list[Write], p: CheckParams) -> list[Violation]:
    """``uncounted_stale``: a get_or_compute returned a value although its own function ran and did
    not give it one (it raised, was cancelled, was given up at the hard timeout, or was left to the
    background at the soft timeout): a stale value served by fail-safe, and the call did not count
    it (``stale_served``)."""
    out = []
    for op in history.ops:
        if (op.op == "goc" and op.outcome == "ok" and op.value is not None and not op.stale
                and op.fn_result in ("raised", "cancelled", "abandoned", "bg")):
            out.append(Violation("uncounted_stale", op.start, f"served a value its failed function "
                                 f"({op.fn_result}) did not give, without counting a stale serve", [op]))
    return out


CHECKS = (stale_read_violations, lost_write_violations, unknown_value_violations, convergence_violations,
          exception_violations, duplicate_compute_violations, expired_value_violations, uncounted_stale_violations)


def check(history: History, params: CheckParams | None = None) -> CheckResult:
    """Run every check; count the violations of each kind (and the documented losses apart) and keep
    the first few of each."""
    p = params or CheckParams()
    writes = derive_writes(history.ops)
    counts = dict.fromkeys(KINDS, 0)
    documented = {REPLICATION_LOSS_KIND: 0}
    examples: dict[str, list[Violation]] = {k: [] for k in (*KINDS, REPLICATION_LOSS_KIND)}
    found = [v for fn in CHECKS for v in fn(history, writes, p)]
    for v in sorted(found, key=lambda v: v.time):
        (documented if v.kind in documented else counts)[v.kind] += 1
        if len(examples[v.kind]) < p.examples:
            examples[v.kind].append(v)
    return CheckResult(counts, examples, documented)
