"""What a lean Python coordinator costs, side by side with mtcache's: how much of a write is CPython's.

    .venv/bin/python bench/lean_hop.py [--n 3000] [--rounds 3] [--json FILE]

Starts its own redis-server, an mtcache coordinator and a *lean* coordinator: an asyncio ``Protocol`` on a
Unix socket (uvloop) that does for a ``set`` only what a write-through hop must do, with this project's
parts where they are the work itself: the frame (``FrameDecoder``, ``encode_frame``), a stamp, the L2 record
(``_pack_record``), the L1 put (a ``LocalTier`` with its version table and shared-memory mirror), the same
conditional write script with its stream entry (``EVALSHA`` on a connection driven by hiredis), and a
stream reader (``XREAD`` with the coordinator's 2 ms pause after its own entries). No checks, no statistics,
no fault handling, no write queue: a floor, not a coordinator.

One blocking client speaks the coordinators' protocol to both (no mtcache client in the way) and makes
``--n`` calls of each kind, alternated over ``--rounds`` rounds: ``PING`` (a round trip that does nothing) and
``set`` of a ~200-byte value. Reports each p50 (medians of the rounds) and each coordinator's CPU per call
(``/proc/<pid>/stat``), with redis-py's pipelined ``SET`` + ``XADD`` (what a write costs Redis, from redis-py)
for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import coordinator_process, cpu_seconds, machine, redis_server_process
from write_path import VALUE, _local_tier

from mtcache.coordinator.l2 import _WRITE_AND_PUBLISH, _pack_record
from mtcache.coordinator.lane import _sha, pack_commands
from mtcache.coordinator.stamps import HybridClock, format_stamp
from mtcache.protocol import PROTOCOL_VERSION, FrameDecoder, Op, encode_frame

NAMESPACE = "lean"


class _Redis(asyncio.Protocol):
    """Replies in order, to callbacks."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[Callable[[Any], None]] = collections.deque()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.waiting.popleft()(reply)

    def call(self, data: bytes, done: Callable[[Any], None]) -> None:
        self.waiting.append(done)
        self.transport.write(data)


async def _serve(sock: str, port: int) -> None:
    """The lean coordinator (see the module docstring), until SIGTERM."""
    loop = asyncio.get_running_loop()
    cleanup = contextlib.ExitStack()
    local = _local_tier(cleanup)
    assert local is not None, "no shared memory here"
    _, writer = await loop.create_connection(_Redis, "127.0.0.1", port)
    _, reader = await loop.create_connection(_Redis, "127.0.0.1", port)
    loaded = loop.create_future()
    writer.call(pack_commands([("SCRIPT", "LOAD", _WRITE_AND_PUBLISH)]), loaded.set_result)
    await loaded
    sha, stream, origin, clock = _sha(_WRITE_AND_PUBLISH), "lean:inval", "lean-origin", HybridClock()
    last = ["$"]

    def read_next() -> None:
        reader.call(pack_commands([("XREAD", "COUNT", 1000, "BLOCK", 1000, "STREAMS", stream, last[0])]), read)

    def read(reply: Any) -> None:
        own = True
        for _stream, entries in reply or ():
            for entry_id, flat in entries:
                last[0] = entry_id
                own = own and dict(zip(flat[::2], flat[1::2], strict=True)).get(b"origin") == origin.encode()
        if reply and own:
            loop.call_later(0.002, read_next)
        else:
            read_next()

    read_next()

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.decoder = FrameDecoder()

        def data_received(self, data: bytes) -> None:
            for msg in self.decoder.feed(data):
                op, rid = msg[0], msg[1]
                if op != Op.SET:  # the hello and PING
                    self.transport.write(encode_frame([rid, 0]))
                    continue
                key, value = msg[2], msg[3]
                stamp = clock.now()
                digits = format_stamp(stamp)
                record = _pack_record(False, digits, time.time_ns() // 1_000_000 + 60_000, value, (), 0)
                writer.call(pack_commands([("EVALSHA", sha, 3, f"lean:k:{key}", "lean:floor", stream, record, 60_000,
                                            digits[:16], digits[16:], "", 1000, origin, "set", key, stamp)]),
                            lambda reply, rid=rid: self.transport.write(encode_frame([rid, 0, reply])))
                local.put(key, value, 60.0, stamp)

    server = await loop.create_unix_server(Conn, sock)
    os.close(os.open(sock + ".ready", os.O_CREAT | os.O_WRONLY, 0o600))  # ready: the driver polls for it
    stop = asyncio.Event()
    loop.add_signal_handler(15, stop.set)
    await stop.wait()
    server.close()
    cleanup.close()


class _Client:
    """A blocking client of either coordinator."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.decoder = FrameDecoder()
        self.rid = 0
        assert self.call(Op.HELLO, PROTOCOL_VERSION, NAMESPACE, os.getpid())[1] == 0

    def call(self, op: int, *args: Any) -> list[Any]:
        self.rid += 1
        self.sock.sendall(encode_frame([op, self.rid, *args]))
        while True:
            replies = self.decoder.feed(self.sock.recv(65536))
            if replies:
                return replies[0]


def _time(fn: Callable[[], object], n: int, pid: int | None) -> tuple[float, float | None]:
    """p50 µs of ``fn`` over ``n`` calls (after 300 unmeasured), and ``pid``'s CPU µs per call."""
    for _ in range(300):
        fn()
    cpu = cpu_seconds(pid) if pid else 0.0
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(samples), (cpu_seconds(pid) - cpu) * 1e6 / n if pid else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=3000, help="calls of each kind per round")
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds (medians are quoted)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--serve", nargs=2, metavar=("SOCKET", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve[0], int(args.serve[1])))
        return
    packed = VALUE
    p50: dict[str, list[float]] = collections.defaultdict(list)
    cpu: dict[str, list[float]] = collections.defaultdict(list)
    with redis_server_process() as server, tempfile.TemporaryDirectory(prefix="mtc-lean-") as folder, \
            coordinator_process(server.address, namespace=NAMESPACE) as co:
        sock = f"{folder}/lean.sock"
        port = int(server.address.rsplit(":", 1)[1].split("/")[0])
        lean = subprocess.Popen([sys.executable, __file__, "--serve", sock, str(port)])
        try:
            deadline = time.monotonic() + 30
            while not Path(sock + ".ready").exists():
                if time.monotonic() > deadline or lean.poll() is not None:
                    raise SystemExit("the lean coordinator did not start")
                time.sleep(0.05)  # poll interval of a deadline-bounded wait
            clients = {"lean": (_Client(sock), lean.pid), "mtcache": (_Client(co.address), co.pid)}
            raw = redis.Redis.from_url(server.address)
            keys = iter(range(10**9))

            def set_and_xadd() -> None:
                pipe = raw.pipeline(transaction=False)
                pipe.set(f"raw:{next(keys) % 1000}", packed)
                pipe.xadd("raw:stream", {"op": "set", "key": "k"}, maxlen=10_000, approximate=True)
                pipe.execute()

            for _ in range(args.rounds):
                for name, (client, pid) in clients.items():
                    for kind, fn in (("PING", lambda c=client: c.call(Op.PING)),
                                     ("set", lambda c=client: c.call(Op.SET, f"k{next(keys) % 1000}", packed, None,
                                                                    []))):
                        median, per_call = _time(fn, args.n, pid)
                        p50[f"{name} {kind}"].append(median)
                        cpu[f"{name} {kind}"].append(per_call or 0.0)
                p50["redis-py pipelined SET+XADD"].append(_time(set_and_xadd, args.n, None)[0])
        finally:
            lean.terminate()
            lean.wait(10)
    out = {"p50_us": {k: statistics.median(v) for k, v in p50.items()},
           "coordinator_cpu_us_per_call": {k: statistics.median(v) for k, v in cpu.items()}}
    print(machine())
    print(f"\np50 µs (median of {args.rounds} rounds of {args.n} calls), and the coordinator's CPU µs per call")
    for name, value in out["p50_us"].items():
        per_call = out["coordinator_cpu_us_per_call"].get(name)
        print(f"  {name:<30} {value:8.1f}" + (f"   CPU {per_call:6.1f}" if per_call is not None else ""))
    lean_set, mt_set = out["p50_us"]["lean set"], out["p50_us"]["mtcache set"]
    print(f"  mtcache set / lean set: {mt_set / lean_set:.2f}x p50, "
          f"{out['coordinator_cpu_us_per_call']['mtcache set'] / out['coordinator_cpu_us_per_call']['lean set']:.2f}x "
          "CPU")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), **out, "args": {"n": args.n, "rounds": args.rounds}},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
