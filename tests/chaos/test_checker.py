"""The checker on small hand-made histories: it catches each violation kind, and accepts valid
histories, including the cases the contract allows (misses, concurrent writes, faults)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.checker import CheckParams, Loss, check, record_slot, replication_losses
from tests.chaos.history import Fault, History, Op, load_history
from tests.chaos.report import markdown, ok, short_text, summarize

MS = 1_000_000
S = 1000 * MS


def v(w: int, s: int, c: int = 0) -> dict[str, int]:
    return {"w": w, "s": s, "c": 1} if c else {"w": w, "s": s}


def put(w: int, s: int, start: int, end: int, *, host: int = 0, key: str = "k", ack: str = "ack") -> Op:
    """A set by worker ``w`` (on ``host``) writing v(w, s)."""
    return Op(w, host, s, "set", key, start, end, value=v(w, s), ack=ack)


def delete(w: int, s: int, start: int, end: int, *, host: int = 0, key: str = "k", ack: str = "ack") -> Op:
    return Op(w, host, s, "delete", key, start, end, ack=ack)


def get(w: int, s: int, start: int, end: int, value: Any, *, host: int = 0, key: str = "k", **kw: Any) -> Op:
    return Op(w, host, s, "get", key, start, end, value=value, **kw)


def fill(w: int, s: int, start: int, fn_start: int, fn_end: int, end: int, *, host: int = 0, key: str = "k",
         **kw: Any) -> Op:
    """A get_or_compute whose function ran and returned (its own value)."""
    return Op(w, host, s, "goc", key, start, end, value=v(w, s, 1), fn_start=fn_start, fn_end=fn_end,
              fn_result="ok", **kw)


def fault(kind: str, start: int, end: int, index: int = 0) -> Fault:
    return Fault(index, kind, 0, start, end)


def kinds(history: History, **params: Any) -> dict[str, int]:
    """The non-zero violation counts, and of the documented loss (a tolerance of 0.5 ms unless told:
    these histories tick in ms)."""
    result = check(history, CheckParams(**{"tol": 0.0005, **params}))
    return {k: n for k, n in {**result.counts, **result.documented}.items() if n}


# -- valid histories -------------------------------------------------------------------------------


def test_a_valid_history_has_no_violation() -> None:
    ops = [
        put(1, 1, 0, 1 * MS),
        get(2, 1, 2 * MS, 3 * MS, v(1, 1)),
        put(3, 1, 4 * MS, 6 * MS, host=1),
        get(2, 2, 5 * MS, 5 * MS + 10, v(1, 1)),  # before the other host's set ended
        get(2, 3, 100 * MS, 101 * MS, v(1, 1)),  # other host, inside the propagation bound
        get(4, 1, 2 * S, 2 * S + MS, v(3, 1), host=1),
        get(2, 4, 3 * S, 3 * S + MS, None),  # a miss is always allowed
        delete(1, 2, 4 * S, 4 * S + MS),
        fill(2, 5, 5 * S, 5 * S + MS, 5 * S + 2 * MS, 5 * S + 3 * MS),
        Op(4, 1, 2, "goc", "k", 6 * S, 6 * S + MS, value=v(2, 5, 1)),  # read the fill
        Op(4, 1, 3, "goc", "k", 7 * S, 7 * S + MS, outcome="CacheTimeout: gave up"),
    ]
    final = {0: {"k": [v(2, 5, 1)] * 2}, 1: {"k": [v(2, 5, 1)] * 2}}
    assert kinds(History(ops, final=final)) == {}


def test_concurrent_writes_may_be_read_in_either_order() -> None:
    ops = [put(1, 1, 0, 10 * MS), put(2, 1, 5 * MS, 15 * MS),
           get(3, 1, 20 * MS, 21 * MS, v(1, 1)), get(3, 2, 30 * MS, 31 * MS, v(2, 1))]
    final = {0: {"k": [v(1, 1), v(1, 1)]}}
    assert kinds(History(ops, final=final)) == {}


def test_skipped_and_unknown_writes_never_supersede() -> None:
    ops = [put(1, 1, 0, MS), put(2, 1, 2 * MS, 3 * MS, ack="skipped"), delete(2, 2, 4 * MS, 5 * MS, ack="unknown"),
           get(3, 1, 10 * MS, 11 * MS, v(1, 1))]
    assert kinds(History(ops)) == {}


# -- stale reads ---------------------------------------------------------------------------------


def test_a_read_of_a_value_its_own_host_overwrote_is_stale() -> None:
    ops = [put(1, 1, 0, MS), put(2, 1, 2 * MS, 3 * MS), get(3, 1, 4 * MS, 5 * MS, v(1, 1))]
    assert kinds(History(ops)) == {"stale_read_same_host": 1}
    # ... also when the newer write was a delete
    ops = [put(1, 1, 0, MS), delete(2, 1, 2 * MS, 3 * MS), get(3, 1, 4 * MS, 5 * MS, v(1, 1))]
    assert kinds(History(ops)) == {"stale_read_same_host": 1}


def test_same_host_staleness_has_no_fault_excuse() -> None:
    ops = [put(1, 1, 0, MS), put(2, 1, 2 * MS, 3 * MS), get(3, 1, 4 * MS, 5 * MS, v(1, 1))]
    assert kinds(History(ops, faults=[fault("coordinator_kill", 0, 10 * MS)])) == {"stale_read_same_host": 1}


def test_a_read_that_began_before_the_newer_write_ended_is_not_stale() -> None:
    ops = [put(1, 1, 0, MS), put(2, 1, 2 * MS, 6 * MS), get(3, 1, 4 * MS, 7 * MS, v(1, 1))]
    assert kinds(History(ops)) == {}


def test_writes_closer_than_the_tolerance_are_concurrent() -> None:
    ops = [put(1, 1, 0, MS), put(2, 1, MS + MS // 2, 3 * MS), get(3, 1, 4 * MS, 5 * MS, v(1, 1))]
    assert kinds(History(ops), tol=0.005) == {}
    assert kinds(History(ops), tol=0.0001) == {"stale_read_same_host": 1}


def test_a_fill_is_written_from_fn_start() -> None:
    # the fill's function began before the delete began: the delete supersedes it
    ops = [fill(1, 1, 0, MS, 50 * MS, 51 * MS), delete(2, 1, 20 * MS, 21 * MS),
           get(3, 1, 60 * MS, 61 * MS, v(1, 1, 1))]
    assert kinds(History(ops)) == {"stale_read_same_host": 1}
    # the function began after the delete began: concurrent, either may win
    ops = [fill(1, 1, 0, 20 * MS, 50 * MS, 51 * MS), delete(2, 1, 19 * MS, 21 * MS),
           get(3, 1, 60 * MS, 61 * MS, v(1, 1, 1))]
    assert kinds(History(ops)) == {}


def test_a_read_of_a_value_another_host_overwrote_is_stale_after_the_propagation_bound() -> None:
    ops = [put(1, 1, 0, MS), put(2, 1, 2 * MS, 3 * MS, host=1)]
    early = get(3, 1, 500 * MS, 501 * MS, v(1, 1))
    late = get(3, 2, 2 * S, 2 * S + MS, v(1, 1))
    assert kinds(History([*ops, early])) == {}
    assert kinds(History([*ops, late])) == {"stale_read_cross_host": 1}


def test_cross_host_staleness_is_excused_around_disruptive_faults() -> None:
    ops = [put(1, 1, 0, MS), put(2, 1, 2 * MS, 3 * MS, host=1)]
    # a fault that healed less than heal_bound before the read
    recent = fault("link_cut", S, 2 * S)
    assert kinds(History([*ops, get(3, 1, 5 * S, 5 * S + MS, v(1, 1))], faults=[recent])) == {}
    # healed long ago, but after the newer write ended: the write may have been lost in it
    assert kinds(History([*ops, get(3, 1, 20 * S, 20 * S + MS, v(1, 1))], faults=[recent])) == {}
    # a fault active at the read
    active = fault("link_slow", 19 * S, 21 * S)
    assert kinds(History([*ops, get(3, 1, 20 * S, 20 * S + MS, v(1, 1))], faults=[active])) == {}
    # a worker_kill is not disruptive
    kill = fault("worker_kill", S, S)
    assert kinds(History([*ops, get(3, 1, 5 * S, 5 * S + MS, v(1, 1))], faults=[kill])) == {
        "stale_read_cross_host": 1}
    # a newer write after the fault healed, read long after
    later = [put(1, 1, 0, MS), put(2, 1, 15 * S, 15 * S + MS, host=1), get(3, 1, 20 * S, 20 * S + MS, v(1, 1))]
    assert kinds(History(later, faults=[recent])) == {"stale_read_cross_host": 1}


# -- lost writes ---------------------------------------------------------------------------------


def test_a_host_that_forgets_its_own_acknowledged_set_lost_it() -> None:
    ops = [put(1, 1, 0, MS), get(2, 1, S, S + MS, None)]
    assert kinds(History(ops)) == {"lost_write": 1}
    # another host's set: not this host's own write
    assert kinds(History([put(1, 1, 0, MS, host=1), get(2, 1, S, S + MS, None)])) == {}


@pytest.mark.parametrize("other", [
    delete(3, 1, 2 * MS, 3 * MS, host=1),  # any later write by any host, deletes included
    put(3, 1, 2 * MS, 3 * MS, host=1, ack="skipped"),  # skipped too
    put(3, 1, -MS, MS // 2, host=1, ack="unknown"),  # overlapping
    fill(3, 1, -5 * MS, -4 * MS, -3 * MS, 2 * MS, host=1),  # a fill whose call overlaps
    Op(3, 1, 1, "goc", "k", 2 * MS, None, outcome="killed", fn_result="unknown"),  # a SIGKILLed call
    delete(3, 1, S + MS // 4, S + 2 * MS),  # begun while the read ran (it may have read after it)
], ids=["delete", "skipped", "overlapping-unknown", "fill", "killed", "during-the-read"])
def test_a_miss_after_any_other_write_is_not_a_lost_write(other: Op) -> None:
    assert kinds(History([put(1, 1, 0, MS), other, get(2, 1, S, S + MS, None)])).get("lost_write", 0) == 0


def test_a_write_begun_after_the_miss_ended_does_not_excuse_it() -> None:
    ops = [put(1, 1, 0, MS), get(2, 1, S, S + MS, None), delete(3, 1, S + 2 * MS, S + 3 * MS)]
    assert kinds(History(ops)) == {"lost_write": 1}


def test_a_miss_is_excused_by_a_fault_a_delete_or_a_degraded_client() -> None:
    ops = [put(1, 1, 0, MS), get(2, 1, S, S + MS, None)]
    assert kinds(History(ops, faults=[fault("stream_trim", S // 2, S // 2)])) == {}
    assert kinds(History(ops, faults=[fault("worker_kill", S // 2, S // 2)])) == {"lost_write": 1}
    assert kinds(History([ops[0], get(2, 1, S, S + MS, None, degraded=True)])) == {}
    assert kinds(History([*ops[:1], delete(1, 2, 2 * MS, 3 * MS), ops[1]])) == {}


# -- unknown values --------------------------------------------------------------------------------


def test_values_no_write_produced_are_unknown() -> None:
    base = [put(1, 1, 0, MS)]
    assert kinds(History([*base, get(2, 1, S, S + MS, v(9, 9))])) == {"unknown_value": 1}
    assert kinds(History([*base, get(2, 1, S, S + MS, "garbage")])) == {"unknown_value": 1}
    assert kinds(History([*base, get(2, 1, S, S + MS, v(1, 1, 1))])) == {"unknown_value": 1}  # not a fill
    # a SIGKILLed writer's unrecorded last operation may have written it
    assert kinds(History([*base, get(2, 1, S, S + MS, v(1, 2))], killed={1: S // 2})) == {}
    assert kinds(History([*base, get(2, 1, S, S + MS, v(1, 1, 0)), put(1, 3, 2 * S, 2 * S + MS)],
                         killed={1: 3 * S})) == {}


def test_a_skipped_write_that_is_read_was_not_skipped() -> None:
    ops = [put(1, 1, 0, MS, ack="skipped"), get(2, 1, S, S + MS, v(1, 1))]
    assert kinds(History(ops)) == {"unknown_value": 1}


def test_a_value_read_before_its_write_began_is_unknown() -> None:
    ops = [get(2, 1, 0, MS, v(1, 1)), put(1, 1, S, S + MS)]
    assert kinds(History(ops)) == {"unknown_value": 1}


# -- convergence -----------------------------------------------------------------------------------


def test_hosts_must_converge_on_a_maximal_write() -> None:
    ops = [put(1, 1, 0, MS), put(2, 1, 2 * MS, 3 * MS, host=1)]
    agree = {0: {"k": [v(2, 1)] * 2}, 1: {"k": [v(2, 1)] * 2}}
    assert kinds(History(ops, final=agree)) == {}
    disagree = {0: {"k": [v(1, 1)] * 2}, 1: {"k": [v(2, 1)] * 2}}
    assert kinds(History(ops, final=disagree)) == {"not_converged": 1}
    superseded = {0: {"k": [v(1, 1)] * 2}, 1: {"k": [v(1, 1)] * 2}}
    assert kinds(History(ops, final=superseded)) == {"not_converged": 1}
    unstable: dict[int, dict[str, list[Any]]] = {0: {"k": [v(2, 1), None]}, 1: {"k": [v(2, 1)] * 2}}
    assert kinds(History(ops, final=unstable)) == {"not_converged": 1}


def test_none_converges_only_after_a_delete_or_data_loss() -> None:
    ops = [put(1, 1, 0, MS)]
    gone: dict[int, dict[str, list[Any]]] = {0: {"k": [None, None]}, 1: {"k": [None, None]}}
    assert kinds(History(ops, final=gone)) == {"not_converged": 1}
    assert kinds(History(ops, final=gone, faults=[fault("redis_restart_empty", S, 2 * S)])) == {}
    assert kinds(History(ops, final=gone, faults=[fault("link_cut", S, 2 * S)])) == {"not_converged": 1}
    assert kinds(History([*ops, delete(2, 1, 2 * MS, 3 * MS, ack="unknown")], final=gone)) == {}
    assert kinds(History([], final=gone)) == {}
    # concurrent set and delete: either outcome
    racing = [put(1, 1, 0, 10 * MS), delete(2, 1, 5 * MS, 15 * MS, host=1)]
    assert kinds(History(racing, final=gone)) == {}
    assert kinds(History(racing, final={0: {"k": [v(1, 1)] * 2}, 1: {"k": [v(1, 1)] * 2}})) == {}


# -- exceptions and duplicate computations -----------------------------------------------------------


@pytest.mark.parametrize(("outcome", "cancelled", "flagged"), [
    ("CacheTimeout: gave up waiting", False, False),
    ("ComputeError: computing 'k' raised tests.chaos.workload.InjectedFailure: planned", False, False),
    ("TimeoutError: ", True, False),
    ("CancelledError: ", True, False),
    ("TimeoutError: ", False, True),
    ("ComputeError: computing 'k' raised asyncio.exceptions.CancelledError: ", False, True),
    ("CoordinatorUnavailable: boom", False, True),
    ("CacheTimeout: the computation of 'k' passed its hard timeout and was abandoned", False, False),
    # a holder's hard timeout reaches its waiters as CacheTimeout, never wrapped
    ("ComputeError: computing 'k' raised mtcache.errors.CacheTimeout: the computation passed its hard timeout "
     "of 0.02s and was abandoned", False, True),
])
def test_exceptions_other_than_the_planned_ones_are_unexpected(outcome: str, cancelled: bool, flagged: bool) -> None:
    op = Op(1, 0, 1, "goc", "k", 0, MS, outcome=outcome, cancelled=cancelled)
    assert kinds(History([op])) == ({"unexpected_exception": 1} if flagged else {})


def test_two_computations_of_one_key_at_once_are_duplicates() -> None:
    a = fill(1, 1, 0, MS, 20 * MS, 21 * MS)
    b = fill(2, 1, 0, 10 * MS, 30 * MS, 31 * MS, host=1)
    after = fill(2, 1, 0, 25 * MS, 30 * MS, 31 * MS, host=1)
    assert kinds(History([a, b])) == {"duplicate_compute": 1}
    assert kinds(History([a, after])) == {}
    assert kinds(History([a, b], faults=[fault("worker_kill", 0, 0)])) == {}  # within dup_slack
    assert kinds(History([a, b], faults=[fault("worker_kill", -5 * S, -5 * S)])) == {"duplicate_compute": 1}
    slow = fill(3, 1, 0, 0, 5 * S, 5 * S, slow=True)
    assert kinds(History([a, b, slow])) == {}
    cancelled = Op(2, 1, 1, "goc", "k", 0, 31 * MS, outcome="TimeoutError: ", fn_start=10 * MS, fn_end=30 * MS,
                   fn_result="cancelled", cancelled=True)
    assert kinds(History([a, cancelled])) == {}


def test_two_computations_while_a_coordinator_worked_without_redis_are_no_duplicates() -> None:
    # its leases then hold for its host only: the other host may compute the same key
    a = fill(1, 1, 0, MS, 20 * MS, 21 * MS)
    b = fill(2, 1, 0, 10 * MS, 30 * MS, 31 * MS, host=1)
    assert kinds(History([a, b], down=[(0, 5 * MS)])) == {}
    assert kinds(History([a, b], down=[(-10 * S, -5 * S)])) == {"duplicate_compute": 1}
    assert kinds(History([a, b], down=[(-10 * S, 2**63)])) == {}  # still down at the end


# -- fail-safe: expired values and stale serves --------------------------------------------------------
#
# A fill whose call ends at 3 ms with a TTL of 1 s and a fail-safe of 3 s: fresh until 1.003 s, kept
# (stale) until 4.003 s. The slack is 0.25 s + tol (0.5 ms here).

SAFE: dict[str, Any] = {"ttl": 1.0, "fail_safe": 3.0, "throttle": 1.0}


def safe_fill(w: int = 1, s: int = 1, *, host: int = 0, **kw: Any) -> Op:
    return fill(w, s, 0, MS, 2 * MS, 3 * MS, host=host, **{**SAFE, **kw})


def served(w: int, s: int, start: int, value: Any, *, stale: bool = True, fn: str | None = "raised",
           host: int = 0, **kw: Any) -> Op:
    """A get_or_compute (fail-safe on) that returned ``value`` without computing it: by default its
    function raised and it served ``value`` as a stale value (counted)."""
    fn_times = {"fn_start": start, "fn_end": start + MS // 2} if fn in ("raised", "cancelled") else \
        {"fn_start": start} if fn else {}
    return Op(w, host, s, "goc", "k", start, start + MS, value=value, fn_result=fn, stale=stale,
              **{**fn_times, **SAFE, **kw})


def activation(w: int, s: int, start: int, *, host: int = 0, **kw: Any) -> Op:
    """A get_or_compute whose function failed and that activated fail-safe (throttle 1 s); what it
    returned does not matter here (None)."""
    return Op(w, host, s, "goc", "k", start, start + MS, fn_start=start, fn_end=start + MS // 2,
              fn_result="raised", outcome="ComputeError: computing 'k' raised InjectedFailure", act=True,
              **{**SAFE, **kw})


def test_a_value_is_read_as_fresh_only_until_its_ttl() -> None:
    w = safe_fill()
    assert kinds(History([w, get(2, 1, 1200 * MS, 1201 * MS, v(1, 1, 1))])) == {}  # within the slack
    assert kinds(History([w, get(2, 1, 1500 * MS, 1501 * MS, v(1, 1, 1))])) == {"expired_value": 1}
    # a get_or_compute that served it without counting a stale serve is held to the fresh bound
    assert kinds(History([w, served(2, 1, 1500 * MS, v(1, 1, 1), stale=False, fn=None)])) == {"expired_value": 1}
    assert kinds(History([w, served(2, 1, 900 * MS, v(1, 1, 1), stale=False, fn=None)])) == {}
    # a value of a history recorded without TTLs never expires
    old = fill(1, 1, 0, MS, 2 * MS, 3 * MS)
    assert kinds(History([old, get(2, 1, 100 * S, 100 * S + MS, v(1, 1, 1))])) == {}


def test_a_stale_value_is_served_only_within_fail_safe() -> None:
    w = safe_fill()
    assert kinds(History([w, served(2, 1, 3900 * MS, v(1, 1, 1))])) == {}
    assert kinds(History([w, served(2, 1, 4500 * MS, v(1, 1, 1))])) == {"expired_value": 1}
    # within the caller's own fail-safe, too
    assert kinds(History([w, served(2, 1, 1900 * MS, v(1, 1, 1), fail_safe=1.0)])) == {}
    assert kinds(History([w, served(2, 1, 2500 * MS, v(1, 1, 1), fail_safe=1.0)])) == {"expired_value": 1}
    # without the coordinator, a near copy stands in for its caller's own fail-safe (its fresh
    # deadline + the caller's fail-safe); with it, what the coordinator keeps (W's) bounds it too
    assert kinds(History([w, served(2, 1, 4500 * MS, v(1, 1, 1), fail_safe=5.0, local=True)])) == {}
    assert kinds(History([w, served(2, 1, 4500 * MS, v(1, 1, 1), fail_safe=5.0)])) == {"expired_value": 1}
    assert kinds(History([w, served(2, 1, 6500 * MS, v(1, 1, 1), fail_safe=5.0, local=True)])) == {
        "expired_value": 1}


def test_an_activation_extends_a_stale_value_by_its_throttle() -> None:
    w = safe_fill()
    act = activation(3, 1, 3500 * MS)  # began while the value was kept: fresh until 4.501 s, kept until 5.003 s
    assert kinds(History([w, act, get(2, 1, 4600 * MS, 4601 * MS, v(1, 1, 1))])) == {}
    assert kinds(History([w, act, get(2, 1, 4900 * MS, 4901 * MS, v(1, 1, 1))])) == {"expired_value": 1}
    assert kinds(History([w, act, served(2, 1, 5200 * MS, v(1, 1, 1))])) == {}
    assert kinds(History([w, act, served(2, 1, 5500 * MS, v(1, 1, 1))])) == {"expired_value": 1}
    # two activations chain: kept until 6.003 s
    again = activation(3, 2, 4800 * MS)
    assert kinds(History([w, act, again, served(2, 1, 6100 * MS, v(1, 1, 1))])) == {}
    # an activation that began once the value was gone everywhere did not find it
    late = activation(3, 1, 4500 * MS)
    assert kinds(History([w, late, served(2, 1, 4600 * MS, v(1, 1, 1))])) == {"expired_value": 1}
    # nor did one that began after the read ended, nor one without the coordinator (a near copy)
    after = activation(3, 2, 4950 * MS)
    assert kinds(History([w, act, after, get(2, 1, 4900 * MS, 4901 * MS, v(1, 1, 1))])) == {"expired_value": 1}
    assert kinds(History([w, act, after, get(2, 1, 5000 * MS, 5001 * MS, v(1, 1, 1))])) == {}
    local = activation(3, 1, 3500 * MS, local=True)
    assert kinds(History([w, local, served(2, 1, 4500 * MS, v(1, 1, 1))])) == {"expired_value": 1}
    # a call with fail-safe that never ended may have activated at any time: from then on the value
    # is not bounded, if the call began while it was kept
    killed = Op(3, 0, 1, "goc", "k", 3500 * MS, None, outcome="killed", fn_result="unknown", **SAFE)
    assert kinds(History([w, killed, served(2, 1, 9 * S, v(1, 1, 1))])) == {}
    assert kinds(History([w, killed, get(2, 1, 3400 * MS, 3401 * MS, v(1, 1, 1))])) == {"expired_value": 1}
    gone = Op(3, 0, 1, "goc", "k", 4500 * MS, None, outcome="killed", fn_result="unknown", **SAFE)
    assert kinds(History([w, gone, served(2, 1, 9 * S, v(1, 1, 1))])) == {"expired_value": 1}
    # so may one whose function failed and that was cancelled before it counted its activation
    cancelled = Op(3, 1, 1, "goc", "k", 3500 * MS, 3510 * MS, outcome="TimeoutError: ", fn_start=3501 * MS,
                   fn_end=3505 * MS, fn_result="raised", cancelled=True, **SAFE)
    assert kinds(History([w, cancelled, get(2, 1, 9 * S, 9 * S + MS, v(1, 1, 1))])) == {}
    failed = Op(3, 1, 1, "goc", "k", 3500 * MS, 3510 * MS, outcome="ComputeError: computing 'k' raised "
                "InjectedFailure", fn_start=3501 * MS, fn_end=3505 * MS, fn_result="raised", **SAFE)
    assert kinds(History([w, failed, get(2, 1, 9 * S, 9 * S + MS, v(1, 1, 1))])) == {"expired_value": 1}


def test_a_degraded_call_lands_when_the_fault_that_held_it_ends() -> None:
    w = safe_fill(degraded=True)  # its fill got no reply: a stopped coordinator may carry it out later
    late = get(2, 1, 3500 * MS, 3501 * MS, v(1, 1, 1))
    assert kinds(History([w, late])) == {}  # no fault explains it: when it landed is not known
    stop = fault("coordinator_stop", 0, 2 * S)
    assert kinds(History([w, get(2, 1, 3100 * MS, 3101 * MS, v(1, 1, 1))], faults=[stop])) == {}
    assert kinds(History([w, late], faults=[stop])) == {"expired_value": 1}


def test_a_background_fill_lands_when_its_completion_ends() -> None:
    old = safe_fill(1, 1)
    bg = Op(2, 0, 1, "goc", "k", 500 * MS, 510 * MS, value=v(1, 1, 1), fn_start=501 * MS, fn_result="bg",
            stale=True, bg_end=2 * S, bg_fn="ok", fn_end=1900 * MS, **SAFE)
    assert kinds(History([old, bg, get(3, 1, 2900 * MS, 2901 * MS, v(2, 1, 1))])) == {}
    assert kinds(History([old, bg, get(3, 1, 3500 * MS, 3501 * MS, v(2, 1, 1))])) == {"expired_value": 1}
    # a completion whose end was never recorded: its value may be read (no unknown_value), any time
    pending = Op(2, 0, 1, "goc", "k", 500 * MS, 510 * MS, value=v(1, 1, 1), fn_start=501 * MS, fn_result="bg",
                 stale=True, **SAFE)
    assert kinds(History([old, pending, get(3, 1, 9 * S, 9 * S + MS, v(2, 1, 1))])) == {}
    # one that failed filled nothing
    failed = Op(2, 0, 1, "goc", "k", 500 * MS, 510 * MS, value=v(1, 1, 1), fn_start=501 * MS, fn_result="bg",
                stale=True, bg_end=2 * S, bg_fn="raised", **SAFE)
    assert kinds(History([old, failed, get(3, 1, 2900 * MS, 2901 * MS, v(2, 1, 1))])) == {"unknown_value": 1}


def test_every_stale_serve_is_counted() -> None:
    w = safe_fill()
    for fn in ("raised", "abandoned", "bg", "cancelled"):
        assert kinds(History([w, served(2, 1, 500 * MS, v(1, 1, 1), fn=fn, stale=False)])) == {"uncounted_stale": 1}
        assert kinds(History([w, served(2, 1, 500 * MS, v(1, 1, 1), fn=fn)])) == {}
    # a value a call computed, or read without computing, is not a stale serve
    assert kinds(History([w, served(2, 1, 500 * MS, v(1, 1, 1), fn=None, stale=False)])) == {}


def test_a_stale_value_is_never_served_after_a_newer_acknowledged_write() -> None:
    w = safe_fill()
    # the same host deleted it (or set another value) before the stale serve began
    for newer in (delete(5, 1, 1500 * MS, 1501 * MS), put(5, 1, 1500 * MS, 1501 * MS)):
        assert kinds(History([w, newer, served(2, 1, 2 * S, v(1, 1, 1))])) == {"stale_read_same_host": 1}
    # another host, past the propagation bound
    other = delete(5, 1, 1500 * MS, 1501 * MS, host=1)
    assert kinds(History([w, other, served(2, 1, 3 * S, v(1, 1, 1))])) == {"stale_read_cross_host": 1}
    assert kinds(History([w, other, served(2, 1, 2 * S, v(1, 1, 1))])) == {}


def test_an_expiring_fill_may_converge_on_a_miss() -> None:
    ops = [safe_fill()]
    expired = (10 * S, 11 * S)
    finals: list[dict[int, dict[str, list[Any]]]] = [{0: {"k": [None, None]}, 1: {"k": [None, None]}},
                                                     {0: {"k": [v(1, 1, 1), None]}, 1: {"k": [None, None]}}]
    for final in finals:
        assert kinds(History(ops, final=final, final_time=expired)) == {}
        assert kinds(History(ops, final=final)) == {}  # final reads of unknown time: may be after it
    # read before it could expire: it must be there
    early = (500 * MS, 600 * MS)
    assert kinds(History(ops, final={0: {"k": [None, None]}, 1: {"k": [None, None]}}, final_time=early)) == {
        "not_converged": 1}
    # two values are never allowed, expiring or not
    two = {0: {"k": [v(1, 1, 1), None]}, 1: {"k": [v(2, 2, 1), None]}}
    other = fill(2, 2, 10 * MS, 11 * MS, 12 * MS, 13 * MS, **SAFE)
    assert kinds(History([*ops, other], final=two, final_time=expired)) == {"not_converged": 1}


# -- a master SIGKILLed on a Redis Cluster: the documented replication loss ----------------------------
#
# The master serving k's record slot is SIGKILLed at K = 10 s (its window: healed 3 s later); a write
# that landed at most replication_window (1 s) before it may be gone from the replica that took over.

K = 10 * S


def master_kill(key: str = "k", *, killed: bool = True, kind: str = "master_kill") -> Fault:
    """A master serving (only) ``key``'s record slot, SIGKILLed at K (``killed``: else the fault
    failed before it killed anything)."""
    slot = record_slot(key, "chaos")
    detail: dict[str, Any] = {"master": 7000, "slots": [[slot - 1, slot]]}
    if killed:
        detail["killed_at"] = K
    return Fault(0, kind, None, K - 10 * MS, K + 3 * S, detail)


def test_a_read_made_stale_only_by_a_write_the_killed_master_may_have_lost_is_the_documented_loss() -> None:
    old, lost = put(1, 1, 0, MS), put(2, 1, K - 500 * MS, K - 499 * MS)  # lost: acked 0.5 s before the kill
    after = get(3, 1, K + 4 * S, K + 4 * S + MS, v(1, 1))  # the replica's value, on the writer's host
    assert kinds(History([old, lost, after], faults=[master_kill()])) == {"replication_loss": 1}
    result = check(History([old, lost, after], faults=[master_kill()]))
    assert result.total == 0 and result.documented == {"replication_loss": 1}
    assert result.examples["replication_loss"][0].ops == [after, old, lost]
    # the same read is a violation when the master served another slot, when the write landed longer
    # ago than replication_window, or when the read was over before the kill
    assert kinds(History([old, lost, after], faults=[master_kill("other")])) == {"stale_read_same_host": 1}
    early = put(2, 1, K - 2 * S, K - 2 * S + MS)
    assert kinds(History([old, early, after], faults=[master_kill()])) == {"stale_read_same_host": 1}
    assert kinds(History([old, early, after], faults=[master_kill()]), replication_window=3.0) == {
        "replication_loss": 1}
    before = get(3, 1, K - 300 * MS, K - 299 * MS, v(1, 1))
    assert kinds(History([old, lost, before], faults=[master_kill()])) == {"stale_read_same_host": 1}
    # nor is a write the master got after it was killed lost, nor one of a fault that kills no master:
    # a CLUSTER FAILOVER loses nothing, and a master_kill that failed before its SIGKILL killed nothing
    later = put(2, 1, K + MS, K + 2 * MS)
    assert kinds(History([old, later, after], faults=[master_kill()])) == {"stale_read_same_host": 1}
    for fault_ in (master_kill(kind="cluster_failover"), master_kill(killed=False)):
        assert kinds(History([old, lost, after], faults=[fault_])) == {"stale_read_same_host": 1}


def test_a_read_also_made_stale_by_a_write_that_was_not_lost_is_a_violation() -> None:
    old, lost = put(1, 1, 0, MS), put(2, 1, K - 500 * MS, K - 499 * MS)
    kept = put(4, 1, 5 * S, 5 * S + MS)  # replicated long before the kill
    newer = put(4, 2, K + 3500 * MS, K + 3501 * MS)  # after the failover
    after = get(3, 1, K + 4 * S, K + 4 * S + MS, v(1, 1))
    for also in (kept, newer):
        assert kinds(History([old, also, lost, after], faults=[master_kill()])) == {"stale_read_same_host": 1}
    # reading the value the loss leaves (the newest write the replica had) is the documented loss
    assert kinds(History([old, kept, lost, get(3, 1, K + 4 * S, K + 4 * S + MS, v(4, 1))],
                         faults=[master_kill()])) == {"replication_loss": 1}


def test_another_hosts_write_in_flight_through_the_kill_may_be_lost_too() -> None:
    # its call began before the kill and ended after the failover window: read long after on host 0
    old, lost = put(1, 1, 0, MS), put(2, 1, K - MS, K + 4 * S, host=1)
    late = get(3, 1, K + 20 * S, K + 20 * S + MS, v(1, 1))
    assert kinds(History([old, lost, late], faults=[master_kill()])) == {"replication_loss": 1}
    assert kinds(History([old, lost, late], faults=[master_kill(killed=False)])) == {"stale_read_cross_host": 1}


def test_final_reads_may_miss_the_writes_the_killed_master_may_have_lost() -> None:
    old, lost = put(1, 1, 0, MS), put(2, 1, K - 500 * MS, K - 499 * MS, host=1)

    def final(h0: Any, h1: Any) -> dict[int, dict[str, list[Any]]]:
        return {0: {"k": [h0, h0]}, 1: {"k": [h1, h1]}}

    faults = [master_kill()]
    assert kinds(History([old, lost], faults=faults, final=final(v(2, 1), v(2, 1)))) == {}
    assert kinds(History([old, lost], faults=faults, final=final(v(1, 1), v(1, 1)))) == {"replication_loss": 1}
    # the writer's host kept its own copy (its reader had not read the lost entry): the hosts disagree
    assert kinds(History([old, lost], faults=faults, final=final(v(1, 1), v(2, 1)))) == {"replication_loss": 1}
    # but no loss makes a miss of a key whose older write was replicated, nor brings back an older write
    assert kinds(History([old, lost], faults=faults, final=final(None, None))) == {"not_converged": 1}
    kept = put(4, 1, 5 * S, 5 * S + MS)
    assert kinds(History([old, kept, lost], faults=faults, final=final(v(1, 1), v(1, 1)))) == {"not_converged": 1}
    assert kinds(History([old, kept, lost], faults=faults, final=final(v(4, 1), v(4, 1)))) == {
        "replication_loss": 1}
    # a key whose every write was lost may be missing
    assert kinds(History([lost], faults=faults, final=final(None, None))) == {"replication_loss": 1}
    # a replica misses a suffix of its master's writes: either of two lost writes may be what is left
    second = put(5, 1, K - 300 * MS, K - 299 * MS)
    for value in (v(2, 1), v(1, 1)):
        assert kinds(History([old, lost, second], faults=faults, final=final(value, value))) == {
            "replication_loss": 1}
    # without a kill, each is a violation
    for no_kill in ([], [master_kill(killed=False)], [master_kill("other")]):
        assert kinds(History([old, lost], faults=no_kill, final=final(v(1, 1), v(1, 1)))) == {"not_converged": 1}


def test_the_documented_loss_is_reported_apart_and_the_run_stays_ok() -> None:
    history = History([put(1, 1, 0, MS), put(2, 1, K - 500 * MS, K - 499 * MS),
                       get(3, 1, K + 4 * S, K + 4 * S + MS, v(1, 1))], faults=[master_kill()])
    result = check(history)
    summary = summarize(history, result, config={"seed": 1}, schedule=[], command="rerun", wall_seconds=1.0,
                        rss=[], history_dir="here")
    assert ok(summary)
    assert summary["documented_loss"] == {"replication_loss": 1} and not any(summary["violations"].values())
    assert "documented loss" in short_text(summary) and "replication_loss" in summary["examples"]
    assert "### replication_loss (documented loss, not a violation)" in markdown(summary)
    # any other violation still fails the run
    broken = History([*history.ops, put(4, 1, 20 * S, 20 * S + MS), get(3, 2, 21 * S, 21 * S + MS, v(1, 1))],
                     faults=history.faults)
    assert not ok(summarize(broken, check(broken), config={}, schedule=[], command="", wall_seconds=0.0, rss=[],
                            history_dir=""))


def test_a_master_kill_is_read_back_from_the_fault_log(tmp_path: Path) -> None:
    detail = {"master": 7000, "replicas": [7003], "slots": [[0, 5460], [10000, 10001]], "killed_at": K,
              "new_master": 7003}
    (tmp_path / "faults.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [
        {"i": 0, "kind": "master_kill", "target": None, "phase": "apply", "t": K - MS, "detail": detail},
        {"i": 0, "kind": "master_kill", "target": None, "phase": "heal", "t": K + 3 * S, "detail": {}},
        {"i": 1, "kind": "cluster_failover", "target": None, "phase": "apply", "t": K + 5 * S,
         "detail": {"master": 7003, "slots": [[0, 5460]]}}]))
    assert replication_losses(load_history(tmp_path)) == [Loss(K, ((0, 5460), (10000, 10001)))]


# -- the history files -------------------------------------------------------------------------------


def test_a_history_directory_round_trips_and_keeps_a_killed_workers_last_write(tmp_path: Path) -> None:
    done = put(1, 1, 0, MS)
    lines = [{"b": 1, "w": 1, "h": 0, "i": 1, "op": "set", "k": "k", "start": 0, "v": v(1, 1)}, done.to_json(),
             {"b": 1, "w": 1, "h": 0, "i": 2, "op": "set", "k": "k", "start": 2 * MS, "v": v(1, 2)}]
    (tmp_path / "ops-1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"cut sho')
    (tmp_path / "ops-2.jsonl").write_text(json.dumps(get(2, 1, S, S + MS, v(1, 2)).to_json()) + "\n")
    (tmp_path / "workers.jsonl").write_text(json.dumps({"event": "killed", "w": 1, "t": 3 * MS}) + "\n")
    (tmp_path / "faults.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [
        {"i": 0, "kind": "worker_kill", "target": [0, 0], "phase": "apply", "t": 3 * MS},
        {"i": 0, "kind": "worker_kill", "target": [0, 0], "phase": "heal", "t": 4 * MS}]))
    history = load_history(tmp_path)
    assert history.ops[0] == done
    pending = history.ops[1]
    assert (pending.end, pending.ack, pending.outcome, pending.value) == (None, "unknown", "killed", v(1, 2))
    assert history.faults == [Fault(0, "worker_kill", [0, 0], 3 * MS, 4 * MS, {})]
    assert kinds(history) == {}  # the killed worker's unfinished set may have written what was read


def test_a_background_completion_joins_its_call_and_a_killed_call_keeps_its_fail_safe(tmp_path: Path) -> None:
    call = {"w": 1, "h": 0, "i": 1, "op": "goc", "k": "k", "ttl": 1.0, "fs": 3.0, "thr": 1.0, "soft": 0.005,
            "start": 0, "end": 10 * MS, "out": "ok", "v": None, "fn_start": MS, "fn": "bg", "stale": True}
    lines = [{"b": 1, **{k: call[k] for k in ("w", "h", "i", "op", "k", "ttl", "fs", "thr", "start")}}, call,
             {"bg": 1, "w": 1, "i": 1, "t": 30 * MS, "fn": "ok", "fn_end": 20 * MS, "act": True},
             {"b": 1, "w": 1, "h": 0, "i": 2, "op": "goc", "k": "k", "ttl": 0.5, "fs": 3.0, "thr": 1.0,
              "start": 40 * MS}]
    (tmp_path / "ops-1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "workers.jsonl").write_text(json.dumps({"event": "killed", "w": 1, "t": 50 * MS}) + "\n")
    (tmp_path / "final-time.json").write_text(json.dumps({"start": S, "end": 2 * S}))
    history = load_history(tmp_path)
    bg, killed = history.ops
    assert (bg.fn_result, bg.bg_end, bg.bg_fn, bg.fn_end, bg.bg_act, bg.stale) == ("bg", 30 * MS, "ok", 20 * MS, True,
                                                                                   True)
    assert (killed.fn_result, killed.ttl, killed.fail_safe, killed.throttle) == ("unknown", 0.5, 3.0, 1.0)
    assert history.final_time == (S, 2 * S)
    assert Op.from_json(bg.to_json()) == bg
