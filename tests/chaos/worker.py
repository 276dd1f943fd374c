"""A chaos worker process: runs its seeded plans against one host's coordinator and records each
operation as a JSON line (see :mod:`tests.chaos.history`) until a stop file appears or SIGTERM.

    python -m tests.chaos.worker --socket S --host H --id W --mode sync|async --seed N --out DIR ...

The worker is single-threaded (one task for ``--mode async``), so the client's counters read
before and after a call tell what happened in that call: ``skipped_writes`` grew -> the write was
skipped, ``unknown_writes`` grew -> it may or may not have been applied, ``local_computes`` grew ->
the function ran without the coordinator, ``coordinator_errors`` grew (or the client was backing
off) -> the call was degraded, ``fail_safe_activations`` grew -> the call may have made a stale
value fresh again (``act``).

With fail-safe on (``--fail-safe``), a get_or_compute past its soft timeout hands the caller the
stale value and finishes its computation (and fill) in a background thread or task. Two thin
hooks on the client keep the record exact: the client core's ``deliver`` (where a caller is
handed a stale value) is wrapped to tally each stale serve in the context it happens in (a
:class:`contextvars.ContextVar`), so ``stale`` is set on a call only for its own serves; the
client's ``_finish`` (the background completion) is wrapped per call to
write a ``{"bg": 1, ...}`` line when it ends: when, the function's outcome, its own stale serves,
and (over-approximated, as for a call) activations and coordinator errors meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from mtcache import AsyncClient, CacheTimeout, Client
from mtcache.client._core import ClientCore, Stale
from tests.chaos.workload import InjectedFailure, Plan, WorkloadSettings, computed_value, plans, written_value

WRITES = ("set", "delete", "goc")


class Recorder:
    """Appends one JSON line per record with one ``write`` (O_APPEND: whole lines, kept by the
    kernel even if this process is SIGKILLed right after)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record, separators=(",", ":"), default=repr) + "\n").encode())


def _counters(core: ClientCore) -> tuple[int, int, int, int, bool, int]:
    c = core.counters
    return (c["skipped_writes"], c.get("unknown_writes", 0), c["local_computes"], c["coordinator_errors"],
            not core.backing_off() and not core.stalled(), c.get("fail_safe_activations", 0))


class Tally:
    """Stale values served in one context: a call, or one background completion."""

    def __init__(self) -> None:
        self.stale = 0


#: The tally of the context a stale value is served in (None: not one this worker watches).
TALLY: contextvars.ContextVar[Tally | None] = contextvars.ContextVar("chaos_tally", default=None)


def watch_stale_serves(core: ClientCore) -> None:
    """Wrap ``core.deliver`` (where a caller is handed a stale value, counted once) so that each
    stale serve is tallied in the context it happens in."""
    deliver = core.deliver

    def tallied(result: Any) -> Any:
        tally = TALLY.get()
        if tally is not None and isinstance(result, Stale):
            tally.stale += 1
        return deliver(result)

    core.deliver = tallied  # type: ignore[method-assign]


class Attempt:
    """One operation being carried out: its record, and the compute function of a get_or_compute.

    The function may run in a thread or task of its own (soft and hard timeouts) and end after the
    call returned, so it writes its own state (``fn``, under a lock), which the record copies when
    the call returns and a background completion when it ends."""

    def __init__(self, worker: int, host: int, plan: Plan, core: ClientCore, recorder: Recorder,
                 settings: WorkloadSettings | None = None) -> None:
        self.plan, self.core, self.worker, self.recorder = plan, core, worker, recorder
        self.rec: dict[str, Any] = {"w": worker, "h": host, "i": plan.index, "op": plan.op, "k": plan.key}
        self.written = written_value(worker, plan.index) if plan.op == "set" else None
        self.fn: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.tally = Tally()
        safe = plan.fail_safe if settings is not None and plan.op == "goc" else 0.0
        #: the fail-safe arguments of a get_or_compute (None: not passed)
        self.fail_safe: float | None = None
        self.throttle: float | None = None
        if plan.op in WRITES and plan.op != "delete":
            self.rec["ttl"] = plan.ttl
        if safe and settings is not None:
            self.fail_safe, self.throttle = safe, settings.fail_safe_throttle
            self.rec.update(fs=safe, thr=settings.fail_safe_throttle)
            self.rec.update({k: v for k, v in (("soft", plan.soft), ("hard", plan.hard)) if v is not None})
        self.before = _counters(core)
        self.rec["start"] = time.monotonic_ns()
        if plan.op in WRITES:
            recorder.write({"b": 1, **self.rec, "v": self.written})

    # -- the compute function (runs inside get_or_compute) --------------------------------------

    def _fn_over(self, result: str) -> None:
        with self.lock:
            self.fn.update(fn_end=time.monotonic_ns(), fn=result)

    def _fn_begin(self) -> None:
        with self.lock:
            self.fn["fn_start"] = time.monotonic_ns()
            if self.plan.slow:
                self.fn["slow"] = True

    def _fn_return(self) -> dict[str, int]:
        if self.plan.fail:
            self._fn_over("raised")
            raise InjectedFailure(f"planned failure of w{self.worker}#{self.plan.index}")
        self._fn_over("ok")
        return computed_value(self.worker, self.plan.index)

    def sync_fn(self) -> dict[str, int]:
        self._fn_begin()
        time.sleep(self.plan.fn_seconds)
        return self._fn_return()

    async def async_fn(self) -> dict[str, int]:
        self._fn_begin()
        try:
            await asyncio.sleep(self.plan.fn_seconds)
        except asyncio.CancelledError:
            self._fn_over("cancelled")
            raise
        return self._fn_return()

    # -- background completions (past a soft timeout) ---------------------------------------------

    def sync_finish(self, finish: Callable[..., None]) -> Callable[..., None]:
        """``finish`` (the client's ``_finish``, run in a background thread) recording its end."""
        def run(*args: Any) -> None:
            TALLY.set(tally := Tally())  # this thread's own context
            before = _counters(self.core)
            finish(*args)
            self._finished(tally, before)
        return run

    def async_finish(self, finish: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Any]:
        """``finish`` (the client's ``_finish``, run as a task of its own) recording its end; a
        completion cut short (the worker stopping) records nothing: its fill may or may not land."""
        def start(*args: Any) -> Coroutine[Any, Any, None]:
            coro = finish(*args)

            async def run() -> None:
                TALLY.set(tally := Tally())  # this task's own context
                before = _counters(self.core)
                await coro
                self._finished(tally, before)
            return run()
        return start

    def _finished(self, tally: Tally, before: tuple[int, int, int, int, bool, int]) -> None:
        """Record a background completion: when it was over, the function's outcome (``abandoned``
        if it was still running: the hard timeout passed), its stale serves, and (over-approximated,
        as for a call) whether activations or coordinator errors were counted meanwhile."""
        with self.lock:
            fn = dict(self.fn)
        after = _counters(self.core)
        rec = {"bg": 1, "w": self.worker, "i": self.plan.index, "t": time.monotonic_ns(),
               "fn": fn.get("fn", "abandoned"), "fn_end": fn.get("fn_end")}
        flags = (("stale", tally.stale > 0), ("act", after[5] > before[5]), ("deg", after[3] > before[3]))
        rec.update({name: True for name, on in flags if on})
        self.recorder.write(rec)

    # -- the record -------------------------------------------------------------------------------

    def _fn_fields(self, outcome: str, value: Any) -> dict[str, Any]:
        """The function's part of a get_or_compute's record, as the call returns. ``fn`` is what
        the function did (``ok``, ``raised``, ``cancelled``), or, when the call did not take its
        value: ``bg`` if the call took a stale value at its soft timeout and left the computation
        (and its fill) to the background; ``abandoned`` if the call gave the computation up at its
        hard timeout (here, or without the coordinator). Then its end, if any, is left out."""
        with self.lock:
            fn = dict(self.fn)
        if "fn_start" not in fn:
            return {}
        result = fn.get("fn")  # None: still running
        hard_timeout = self.plan.hard is not None and outcome.startswith("CacheTimeout")
        if result is None or (result == "ok" and (hard_timeout or (
                outcome == "ok" and value != computed_value(self.worker, self.plan.index)))):
            soft = self.plan.soft is not None and outcome == "ok" and not self.rec.get("local")
            fn["fn"] = "bg" if soft and self.tally.stale else "abandoned"
            fn.pop("fn_end", None)
        return fn

    def _close(self, outcome: str, value: Any) -> dict[str, Any]:
        end = time.monotonic_ns()
        skipped, unknown, local, errors, _, activations = _counters(self.core)
        rec = self.rec
        rec.update(end=end, out=outcome, v=value)
        if self.plan.op in ("set", "delete"):
            if outcome != "ok" or unknown > self.before[1]:
                rec["ack"] = "unknown"
            else:
                rec["ack"] = "skipped" if skipped > self.before[0] else "ack"
        if local > self.before[2]:
            rec["local"] = True
        if errors > self.before[3] or not self.before[4]:
            rec["deg"] = True
        if self.plan.op == "goc":
            rec.update(self._fn_fields(outcome, value))
            if self.tally.stale:
                rec["stale"] = True
            if activations > self.before[5]:
                rec["act"] = True
        return rec

    def done(self, value: Any) -> dict[str, Any]:
        return self._close("ok", self.written if self.plan.op == "set" else value)

    def failed(self, exc: BaseException, *, cancelled: bool = False) -> dict[str, Any]:
        if cancelled:
            self.rec["cancel"] = True
        return self._close(f"{type(exc).__qualname__}: {exc}", self.written)


def run_one(client: Client, attempt: Attempt) -> dict[str, Any]:
    """Carry out one plan with the sync client; the record."""
    plan = attempt.plan
    try:
        if plan.op == "get":
            value = client.get(plan.key)
        elif plan.op == "set":
            client.set(plan.key, attempt.written, ttl=plan.ttl)
            value = None
        elif plan.op == "delete":
            client.delete(plan.key)
            value = None
        else:
            # the client's background completion of this call (if any) records its end
            client._finish = attempt.sync_finish(Client._finish.__get__(client))  # type: ignore[method-assign]
            token = TALLY.set(attempt.tally)
            try:
                value = client.get_or_compute(plan.key, attempt.sync_fn, ttl=plan.ttl, fail_safe=attempt.fail_safe,
                                              fail_safe_throttle=attempt.throttle, soft_timeout=plan.soft,
                                              hard_timeout=plan.hard)
            finally:
                TALLY.reset(token)
    except Exception as exc:
        return attempt.failed(exc)
    return attempt.done(value)


async def run_one_async(client: AsyncClient, attempt: Attempt) -> dict[str, Any]:
    """Carry out one plan with the async client; a planned cancellation cancels get_or_compute."""
    plan = attempt.plan
    try:
        if plan.op == "get":
            value = await client.get(plan.key)
        elif plan.op == "set":
            await client.set(plan.key, attempt.written, ttl=plan.ttl)
            value = None
        elif plan.op == "delete":
            await client.delete(plan.key)
            value = None
        else:
            client._finish = attempt.async_finish(AsyncClient._finish.__get__(client))  # type: ignore[method-assign]
            token = TALLY.set(attempt.tally)
            try:
                call: Awaitable[Any] = client.get_or_compute(
                    plan.key, attempt.async_fn, ttl=plan.ttl, fail_safe=attempt.fail_safe,
                    fail_safe_throttle=attempt.throttle, soft_timeout=plan.soft, hard_timeout=plan.hard)
                value = await (asyncio.wait_for(call, plan.cancel_after) if plan.cancel_after else call)
            finally:
                TALLY.reset(token)
    except CacheTimeout as exc:
        return attempt.failed(exc)
    except (TimeoutError, asyncio.CancelledError) as exc:
        return attempt.failed(exc, cancelled=plan.cancel_after is not None)
    except Exception as exc:
        return attempt.failed(exc)
    return attempt.done(value)


class Stopper:
    """True once SIGTERM arrived or the stop file exists."""

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file
        self.signalled = False

    def signal(self, *_: object) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        return self.signalled or self.stop_file.exists()


def _chunks(seconds: float, step: float = 0.1) -> list[float]:
    """A pause cut into steps, so that a long idle pause notices a stop."""
    full, rest = divmod(seconds, step)
    return [step] * int(full) + ([rest] if rest else [])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--namespace", default="chaos")
    p.add_argument("--host", type=int, required=True)
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--mode", choices=("sync", "async"), default="sync")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stop-file", type=Path, required=True)
    p.add_argument("--keys", type=int, default=8)
    p.add_argument("--slow-prob", type=float, default=0.003)
    p.add_argument("--fail-prob", type=float, default=0.05)
    p.add_argument("--cancel-prob", type=float, default=0.1)
    p.add_argument("--lease-ttl", type=float, default=3.0)
    p.add_argument("--think-ms", type=float, default=3.0)
    p.add_argument("--idle-prob", type=float, default=0.0005)
    p.add_argument("--fail-safe", type=float, default=0.0)
    p.add_argument("--fail-safe-min", type=float, default=0.0)
    p.add_argument("--fail-safe-throttle", type=float, default=1.0)
    p.add_argument("--goc-ttl-min", type=float, default=0.3)
    p.add_argument("--goc-ttl-max", type=float, default=2.0)
    p.add_argument("--soft-prob", type=float, default=0.2)
    p.add_argument("--hard-prob", type=float, default=0.2)
    p.add_argument("--write-share", type=float, default=0.01)
    p.add_argument("--cold-keys", type=int, default=2)
    p.add_argument("--cold-share", type=float, default=0.03)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    settings = WorkloadSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(WorkloadSettings)})
    recorder = Recorder(args.out / f"ops-{args.id}.jsonl")
    stop = Stopper(args.stop_file)
    ready = args.out / f"ready-{args.id}"
    if args.mode == "sync":
        signal.signal(signal.SIGTERM, stop.signal)
        with Client(args.socket, namespace=args.namespace, spawn=False) as client:
            client.health()  # connects now (or starts backing off)
            watch_stale_serves(client._core)
            ready.touch()
            for plan in plans(args.seed, args.id, settings):
                if stop():
                    break
                recorder.write(run_one(client, Attempt(args.id, args.host, plan, client._core, recorder, settings)))
                for chunk in _chunks(plan.think):
                    if stop():
                        break
                    time.sleep(chunk)  # the planned pause, cut short by a stop
        return 0

    async def run() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.signal)
        async with AsyncClient(args.socket, namespace=args.namespace, spawn=False) as client:
            await client.health()
            watch_stale_serves(client._core)
            ready.touch()
            for plan in plans(args.seed, args.id, settings):
                if stop():
                    break
                attempt = Attempt(args.id, args.host, plan, client._core, recorder, settings)
                recorder.write(await run_one_async(client, attempt))
                for chunk in _chunks(plan.think):
                    if stop():
                        break
                    await asyncio.sleep(chunk)

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
