"""A chaos worker process: runs its seeded plans against one host's coordinator and records each
operation as a JSON line (see :mod:`tests.chaos.history`) until a stop file appears or SIGTERM.

    python -m tests.chaos.worker --socket S --host H --id W --mode sync|async --seed N --out DIR ...

The worker is single-threaded (one task for ``--mode async``), so the client's counters read
before and after a call tell what happened in that call: ``skipped_writes`` grew -> the write was
skipped, ``unknown_writes`` grew -> it may or may not have been applied, ``local_computes`` grew ->
the function ran without the coordinator, ``coordinator_errors`` grew (or the client was backing
off) -> the call was degraded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from mtcache import AsyncClient, CacheTimeout, Client
from mtcache.client._core import ClientCore
from tests.chaos.workload import TTL, InjectedFailure, Plan, WorkloadSettings, computed_value, plans, written_value

WRITES = ("set", "delete", "goc")


class Recorder:
    """Appends one JSON line per record with one ``write`` (O_APPEND: whole lines, kept by the
    kernel even if this process is SIGKILLed right after)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record, separators=(",", ":"), default=repr) + "\n").encode())


def _counters(core: ClientCore) -> tuple[int, int, int, int, bool]:
    c = core.counters
    return (c["skipped_writes"], c.get("unknown_writes", 0), c["local_computes"], c["coordinator_errors"],
            not core.backing_off() and not core.stalled())


class Attempt:
    """One operation being carried out: its record, and the compute function of a get_or_compute."""

    def __init__(self, worker: int, host: int, plan: Plan, core: ClientCore, recorder: Recorder) -> None:
        self.plan, self.core, self.worker = plan, core, worker
        self.rec: dict[str, Any] = {"w": worker, "h": host, "i": plan.index, "op": plan.op, "k": plan.key}
        self.written = written_value(worker, plan.index) if plan.op == "set" else None
        self.before = _counters(core)
        self.rec["start"] = time.monotonic_ns()
        if plan.op in WRITES:
            recorder.write({"b": 1, **self.rec, "v": self.written})

    # -- the compute function (runs inside get_or_compute) --------------------------------------

    def _fn_over(self, result: str) -> None:
        self.rec.update(fn_end=time.monotonic_ns(), fn=result)
        if self.plan.slow:
            self.rec["slow"] = True

    def _fn_return(self) -> dict[str, int]:
        if self.plan.fail:
            self._fn_over("raised")
            raise InjectedFailure(f"planned failure of w{self.worker}#{self.plan.index}")
        self._fn_over("ok")
        return computed_value(self.worker, self.plan.index)

    def sync_fn(self) -> dict[str, int]:
        self.rec["fn_start"] = time.monotonic_ns()
        time.sleep(self.plan.fn_seconds)
        return self._fn_return()

    async def async_fn(self) -> dict[str, int]:
        self.rec["fn_start"] = time.monotonic_ns()
        try:
            await asyncio.sleep(self.plan.fn_seconds)
        except asyncio.CancelledError:
            self._fn_over("cancelled")
            raise
        return self._fn_return()

    # -- the record -------------------------------------------------------------------------------

    def _close(self, outcome: str, value: Any) -> dict[str, Any]:
        end = time.monotonic_ns()
        skipped, unknown, local, errors, _ = _counters(self.core)
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
            client.set(plan.key, attempt.written, ttl=TTL)
            value = None
        elif plan.op == "delete":
            client.delete(plan.key)
            value = None
        else:
            value = client.get_or_compute(plan.key, attempt.sync_fn, ttl=TTL)
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
            await client.set(plan.key, attempt.written, ttl=TTL)
            value = None
        elif plan.op == "delete":
            await client.delete(plan.key)
            value = None
        else:
            call: Awaitable[Any] = client.get_or_compute(plan.key, attempt.async_fn, ttl=TTL)
            value = await (asyncio.wait_for(call, plan.cancel_after) if plan.cancel_after else call)
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    settings = WorkloadSettings(args.keys, args.slow_prob, args.fail_prob, args.cancel_prob, args.lease_ttl,
                                args.think_ms, args.idle_prob)
    recorder = Recorder(args.out / f"ops-{args.id}.jsonl")
    stop = Stopper(args.stop_file)
    ready = args.out / f"ready-{args.id}"
    if args.mode == "sync":
        signal.signal(signal.SIGTERM, stop.signal)
        with Client(args.socket, namespace=args.namespace, spawn=False) as client:
            client.health()  # connects now (or starts backing off)
            ready.touch()
            for plan in plans(args.seed, args.id, settings):
                if stop():
                    break
                recorder.write(run_one(client, Attempt(args.id, args.host, plan, client._core, recorder)))
                for chunk in _chunks(plan.think):
                    if stop():
                        break
                    time.sleep(chunk)  # the planned pause, cut short by a stop
        return 0

    async def run() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.signal)
        async with AsyncClient(args.socket, namespace=args.namespace, spawn=False) as client:
            await client.health()
            ready.touch()
            for plan in plans(args.seed, args.id, settings):
                if stop():
                    break
                recorder.write(await run_one_async(client, Attempt(args.id, args.host, plan, client._core, recorder)))
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
