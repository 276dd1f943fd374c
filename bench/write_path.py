"""What the coordinator's Python spends on one write, without the workers' processes around it.

    .venv/bin/python bench/write_path.py [--n 8000] [--rounds 5] [--workers 1,8] [--json FILE]

Two views, for comparing two versions of the coordinator (run it with ``PYTHONPATH`` set to each
checkout, as ``bench/micro.py --near-only``):

* **In process**: a coordinator on a throwaway redis-server, driven in its own event loop by fake
  workers (connections whose transport is a callback) that each send their next ``set`` as soon as
  the reply to the previous one is written: the coordinator's CPU time (user + system) per ``set``,
  with 1 worker (every write a batch of its own) and with 8 (writes batched), medians of ``--rounds``
  alternated runs. No worker process competes for the CPU, so this moves with the coordinator's own
  code, where ``bench/paths.py`` on a 2-core machine moves with everything.
* **Calls**: the Python function calls (builtins included) the coordinator makes per ``set`` in each
  row, counted by cProfile: the one figure here that does not move with the machine's noise.
* **Hot steps**: each step of a ``set`` timed alone in a loop (its code and data in the CPU's
  caches): decoding and checking the request, the L1 put (store, mirror, version table), the L2
  record, the script call queued, and the Redis protocol bytes of the call. A step's share of a real
  write is larger (a write's code runs cold after each wake-up) but the ranking holds.

Uses the coordinator's internals on purpose: it measures them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import msgpack
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine, own_cpu_seconds, redis_server

from mtcache.config import Settings
from mtcache.coordinator.l2 import L2Tier
from mtcache.coordinator.lane import Batch, _sha, pack_commands
from mtcache.coordinator.local import LocalTier
from mtcache.coordinator.server import Coordinator, _Connection
from mtcache.mirror import MirrorWriter
from mtcache.protocol import PROTOCOL_VERSION, FrameDecoder, Op, encode_frame, validate_request
from mtcache.shm import VersionTable

VALUE = msgpack.packb({"symbol": "ACME", "price": 123.45, "bid": 123.40, "ask": 123.50, "volume": 1_234_567,
                       "exchange": "XNYS", "currency": "USD", "history": [120.1, 121.3, 122.8, 123.0, 123.45],
                       "updated": "2026-11-27T10:00:00Z", "note": "x" * 40})


class _FakeWorker:
    """A worker connection whose transport is this object: each reply written makes it send its next
    request, on the next step of the loop (as a worker's next frame would arrive later)."""

    def __init__(self, coordinator: Coordinator, frames: list[bytes], done: Callable[[], None]) -> None:
        self.frames = frames
        self.sent = 0
        self.done = done
        self.loop = asyncio.get_running_loop()
        self.conn = _Connection(coordinator)
        self.conn.transport = self  # type: ignore[assignment]
        self.conn.peer_pid = os.getpid()
        coordinator.connections.add(self.conn)
        self.conn.data_received(encode_frame([Op.HELLO, 1, PROTOCOL_VERSION, coordinator.settings.namespace,
                                              os.getpid()]))

    def write(self, _data: bytes) -> None:
        if self.sent < len(self.frames):
            self.loop.call_soon(self.conn.data_received, self.frames[self.sent])
            self.sent += 1
        else:
            self.done()

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _frames(workers: int, per_worker: int, tag: int) -> list[list[bytes]]:
    """Each fake worker's requests: ``per_worker`` sets of its own keys (1,000 of them, in turn)."""
    return [[encode_frame([Op.SET, 2 + i, f"w{tag}:{w}:{i % 1000}", VALUE, None, []]) for i in range(per_worker)]
            for w in range(workers)]


async def _drive(coordinator: Coordinator, frames: list[list[bytes]]) -> None:
    finished = asyncio.Event()
    left = len(frames)

    def done() -> None:
        nonlocal left
        left -= 1
        if not left:
            finished.set()

    for own in frames:  # the reply to its hello sends each one's first request
        _FakeWorker(coordinator, own, done)
    await finished.wait()


async def _in_process(url: str, workers: int, n: int, *, count_calls: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mtcache-write-path-") as folder:
        settings = Settings.load(redis_url=url, socket_path=f"{folder}/c.sock", namespace="writepath")
        coordinator = Coordinator(settings)
        await coordinator.start()
        try:
            await _drive(coordinator, _frames(workers, 200, 0))  # warm-up
            frames = _frames(workers, n // workers, 1)  # made before the clock starts
            before_stats = coordinator.engine.stats()
            profile = cProfile.Profile() if count_calls else None
            cpu, wall = own_cpu_seconds(), time.perf_counter()
            if profile is not None:
                profile.enable()
            await _drive(coordinator, frames)
            if profile is not None:
                profile.disable()
            cpu, wall = own_cpu_seconds() - cpu, time.perf_counter() - wall
            stats = coordinator.engine.stats()
            batches = stats["l2_write_batches"] - before_stats["l2_write_batches"]
            writes = stats["l2_writes"] - before_stats["l2_writes"]
        finally:
            await coordinator.stop()
    done = n // workers * workers
    if profile is not None:
        calls = sum(stat[1] for stat in pstats.Stats(profile).stats.values())  # type: ignore[attr-defined]
        return {"calls_per_set": calls / done}
    return {"cpu_us_per_set": cpu * 1e6 / done, "sets_per_s": done / wall, "writes_per_batch": writes / max(1, batches)}


def hot_steps(n: int) -> dict[str, float]:
    """µs per call of each step of a ``set``, timed alone."""
    frame = encode_frame([Op.SET, 7, "quote:ACME", VALUE, None, []])
    decoder = FrameDecoder()

    def decode_and_check() -> None:
        decoder.push(frame)
        validate_request(decoder.next_message())

    tier = L2Tier("redis://127.0.0.1:1/0", "writepath", timeout=1.0)
    stamp = time.time_ns() << 16
    entry = ("mtcache:writepath:inval", [1000, "origin", "set", "quote:ACME", stamp])

    def queue_write() -> None:
        tier.queue_write(Batch(), "quote:ACME", VALUE, 60.0, stamp, entry=entry)

    batch = Batch()
    tier.queue_write(batch, "quote:ACME", VALUE, 60.0, stamp, entry=entry)
    commands = [("EVALSHA", _sha(script), numkeys, *args) for script, numkeys, args in batch.commands]
    out: dict[str, float] = {}
    steps: dict[str, Callable[[], object]] = {
        "request: decode and check": decode_and_check,
        "L2 record": lambda: tier.record(VALUE, 60.0, stamp),
        "L2 write queued (record included)": queue_write,
        "Redis protocol bytes of the call": lambda: pack_commands(commands),
    }
    with contextlib.ExitStack() as cleanup:
        local = _local_tier(cleanup)
        if local is not None:
            steps["L1 put (store, mirror, version table)"] = lambda: local.put("quote:ACME", VALUE, 60.0, stamp)
        for name, step in steps.items():
            step()
            out[name] = min(timeit.repeat(step, number=n, repeat=5)) / n * 1e6
    return out


def _local_tier(cleanup: contextlib.ExitStack) -> LocalTier | None:
    """A LocalTier with its own version table and mirror, as a coordinator makes them, both closed and removed
    by ``cleanup`` (None where the mirror cannot be made)."""
    try:
        table = VersionTable.create(prefix="mtcache-writepath")
        cleanup.callback(table.close)
        mirror = MirrorWriter.create(16 * 1024 * 1024, sets=1024, prefix="mtcache-writepath")
        cleanup.callback(mirror.close)
    except (OSError, ValueError):
        return None
    return LocalTier(table, mirror, capacity=10_000, max_bytes=64 * 1024 * 1024, default_ttl=60.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8000, help="sets per in-process run")
    p.add_argument("--rounds", type=int, default=5, help="alternated in-process runs (medians are quoted)")
    p.add_argument("--workers", default="1,8", help="fake workers of each in-process row, comma-separated")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    runs: dict[int, list[dict[str, float]]] = {w: [] for w in counts}
    with redis_server() as url:
        for _ in range(args.rounds):
            for workers in counts:
                runs[workers].append(uvloop.run(_in_process(url, workers, args.n)))
        calls = {w: uvloop.run(_in_process(url, w, args.n, count_calls=True))["calls_per_set"] for w in counts}
    in_process = {f"{w} worker{'s' if w > 1 else ''}": {**{k: statistics.median(r[k] for r in rs) for k in rs[0]},
                                                         "calls_per_set": calls[w]}
                  for w, rs in runs.items()}
    steps = hot_steps(20_000)
    print(machine())
    print(f"\nin process, coordinator CPU per set (median of {args.rounds} runs of {args.n} sets)")
    for name, row in in_process.items():
        print(f"  {name:<12} {row['cpu_us_per_set']:>7.1f} µs CPU per set, {row['sets_per_s']:>7.0f} sets/s, "
              f"{row['writes_per_batch']:.1f} writes per Redis batch, {row['calls_per_set']:.1f} function calls "
              "per set (cProfile)")
    print("\nhot steps of a set, µs per call")
    for name, value in steps.items():
        print(f"  {name:<40} {value:>7.2f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "in_process": in_process, "hot_steps_us": steps,
                                         "args": vars(args) | {"json": str(args.json)}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
