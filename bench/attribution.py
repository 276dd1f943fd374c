"""Where a lone call's time goes in the coordinator, by the kernel's and the interpreter's own counts.

    .venv/bin/python bench/attribution.py [--n 5000] [--json bench/attribution.json]

Starts its own redis-server and a coordinator process; one client (near cache off) makes ``--n`` calls
of each kind one after another, the way bench/paths.py's single-process rows do: ``PING`` (a round trip
that does no work, the floor of every call), ``set`` and ``delete`` of a ~200-byte value (each answered
once Redis holds the write). For each kind, three passes over the same calls:

1. untraced: the coordinator's CPU time (user + system, ``/proc/<pid>/stat``) and its context switches
   (``/proc/<pid>/task/*/status``) per call;
2. under ``strace -c -f``: the system calls the coordinator makes per call, by name (a count, not a
   time: strace slows every call down, but not what the coordinator asks of the kernel);
3. under ``perf record -e cpu-clock``: the share of the coordinator's CPU samples in each binary
   (``perf report --sort dso``): the kernel, the CPython interpreter (``libpython``, which runs every
   line of Python: this project's, redis-py's and asyncio's), uvloop, libc, and the C extensions.

strace (Debian ``strace``) and perf (Debian ``linux-perf``) are optional: a pass whose tool is missing,
or not permitted (``kernel.perf_event_paranoid``), is reported as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import coordinator_process, machine, redis_server_process, stop_process, versions
from paths import VALUE

from mtcache import Client
from mtcache.protocol import Op

#: the parts of :func:`group`, in the order the report lists them
PARTS = ("kernel", "CPython interpreter", "uvloop", "libc", "other C extensions")
WARMUP = 300  # calls of each kind before any pass
ATTACH_SECONDS = 30.0  # longest wait for a tracer to attach


def cpu_ns(pid: int) -> int:
    """Nanoseconds every thread of process ``pid`` has run on a CPU so far (``/proc/<pid>/task/*/schedstat``:
    finer than ``/proc/<pid>/stat``'s 10 ms ticks, which are 2 µs per call over 5,000 calls)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(FileNotFoundError):
            total += int(stat.read_text().split()[0])
    return total


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of process ``pid`` so far."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(FileNotFoundError):
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def _wait_for(ready: Callable[[], bool], what: str, proc: subprocess.Popen[Any]) -> None:
    """Poll ``ready`` until it holds. :raises RuntimeError: ``proc`` exited first, or the deadline passed."""
    deadline = time.monotonic() + ATTACH_SECONDS
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit status {proc.poll()})")
        time.sleep(0.05)


@contextlib.contextmanager
def traced(cmd: list[str], ready: Callable[[], bool], what: str, errors: Path) -> Iterator[None]:
    """Run the tracer ``cmd`` around the block: started, ``ready`` awaited, stopped with SIGINT (which makes
    strace and perf write their results) when the block ends. Its stderr goes to ``errors``.

    :raises RuntimeError: it did not start; the message ends with what it printed.
    """
    with open(errors, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        try:
            _wait_for(ready, what, proc)
        except RuntimeError as exc:
            stop_process(proc, signal.SIGINT, timeout=60)
            raise RuntimeError(f"{exc}: {errors.read_text(errors='replace').strip()[-300:]}") from None
        yield
    finally:
        stop_process(proc, signal.SIGINT, timeout=60)


def parse_strace(text: str) -> dict[str, int]:
    """The calls per system call of an ``strace -c`` summary."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return counts


def parse_perf_dso(text: str) -> dict[str, float]:
    """The share (percent) of samples in each binary, from ``perf report --sort dso --stdio``."""
    shares: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
        if match:
            shares[match.group(2)] = float(match.group(1))
    return shares


def group(shares: dict[str, float]) -> dict[str, float]:
    """``shares`` by part: the kernel, the CPython interpreter, uvloop, libc, and the other C extensions
    (msgpack, hiredis, _asyncio, ...) together."""
    out = dict.fromkeys(PARTS, 0.0)
    for dso, share in shares.items():
        if dso.startswith("[kernel"):
            name = "kernel"
        elif dso.startswith(("libpython", "python")):
            name = "CPython interpreter"
        elif dso.startswith("loop.cpython"):
            name = "uvloop"
        elif dso.startswith("libc.so") or dso == "[vdso]":
            name = "libc"
        else:
            name = "other C extensions"
        out[name] += share
    return out


def measure_kind(call: Callable[[], object], pid: int, n: int, folder: Path) -> dict[str, Any]:
    """The three passes for one kind of call against coordinator ``pid``."""
    out: dict[str, Any] = {}
    for _ in range(WARMUP):
        call()
    cpu, switches, wall = cpu_ns(pid), context_switches(pid), time.perf_counter()
    for _ in range(n):
        call()
    out["wall_us_per_call"] = (time.perf_counter() - wall) * 1e6 / n
    out["cpu_us_per_call"] = (cpu_ns(pid) - cpu) / 1e3 / n
    out["context_switches_per_call"] = (context_switches(pid) - switches) / n

    strace_out, perf_out = folder / "strace.txt", folder / "perf.data"
    out["syscalls_per_call"] = _traced_pass(
        "strace", lambda tool: [tool, "-c", "-f", "-p", str(pid), "-o", str(strace_out)],
        lambda: _strace_attached(pid), call, n, lambda tool: _syscalls(strace_out, n), folder)
    out["cpu_share_by_binary"] = _traced_pass(
        "perf",
        lambda tool: [tool, "record", "-q", "-e", "cpu-clock", "-F", "4000", "-p", str(pid), "-o", str(perf_out)],
        lambda: perf_out.exists() and perf_out.stat().st_size > 0, call, n, lambda tool: _shares(tool, perf_out),
        folder)
    return out


def _traced_pass(tool: str, command: Callable[[str], list[str]], ready: Callable[[], bool],
                 call: Callable[[], object], n: int, result: Callable[[str], Any], folder: Path) -> Any:
    """``n`` calls under the tracer ``tool`` (its command line: ``command(path of tool)``); what
    ``result(path of tool)`` reads from its output, or a sentence saying why the pass was skipped."""
    path = shutil.which(tool)
    if path is None:
        return f"skipped: {tool} is not installed"
    try:
        with traced(command(path), ready, tool, folder / f"{tool}.err"):
            for _ in range(n):
                call()
        return result(path)
    except RuntimeError as exc:
        return f"skipped: {exc}"


def _syscalls(output: Path, n: int) -> dict[str, float]:
    """System calls per call from strace's summary in ``output``.

    :raises RuntimeError: strace wrote no summary.
    """
    counts = parse_strace(output.read_text()) if output.exists() else {}
    if not counts:
        raise RuntimeError("strace wrote no summary")
    return {name: count / n for name, count in sorted(counts.items(), key=lambda kv: -kv[1]) if count / n >= 0.01}


def _shares(perf: str, data: Path) -> dict[str, float]:
    """The share of the CPU samples in :data:`PARTS`, from ``perf report`` on ``data``.

    :raises RuntimeError: perf report failed, found no samples, or perf sampled user space only (not
        allowed to sample the kernel: ``kernel.perf_event_paranoid``), which would make the kernel's
        share look like 0.
    """
    done = subprocess.run([perf, "report", "-i", str(data), "--sort", "dso", "--stdio", "-g", "none"],
                          capture_output=True, text=True, check=False)
    event = re.search(r"of event '([^']+)'", done.stdout)
    if done.returncode or event is None:
        raise RuntimeError(f"perf report failed: {done.stderr.strip()[-300:]}")
    if event.group(1).endswith(":u"):
        raise RuntimeError(f"perf could sample user space only ({event.group(1)}), not the kernel")
    shares = parse_perf_dso(done.stdout)
    if not shares:
        raise RuntimeError("perf recorded no samples")
    return group(shares)


def _strace_attached(pid: int) -> bool:
    """True once a tracer is attached to every thread of ``pid`` (TracerPid in their status)."""
    statuses = list(Path(f"/proc/{pid}/task").glob("*/status"))
    for status in statuses:
        with contextlib.suppress(FileNotFoundError):
            for line in status.read_text().splitlines():
                if line.startswith("TracerPid:") and line.split()[1] == "0":
                    return False
    return bool(statuses)


def run(n: int) -> dict[str, Any]:
    """Every kind of call, measured; see the module docstring."""
    results: dict[str, Any] = {}
    with redis_server_process() as server, coordinator_process(server.address) as co, \
            Client(co.address, spawn=False, near_capacity=0) as client, \
            tempfile.TemporaryDirectory(prefix="mtcache-attribution-") as tmp:
        keys = itertools.cycle([f"k{i}" for i in range(1000)])
        kinds: dict[str, Callable[[], object]] = {
            "coordinator round trip (PING)": lambda: client._request(Op.PING),
            "set": lambda: client.set(next(keys), VALUE),
            "delete": lambda: client.delete(next(keys)),
        }
        for name, call in kinds.items():
            results[name] = measure_kind(call, co.pid, n, Path(tmp))
            print(f"{name}: {results[name]['cpu_us_per_call']:.1f} µs of coordinator CPU per call", flush=True)
    return results


def _fmt(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def report(results: dict[str, Any]) -> str:
    """The Markdown tables of :func:`run`'s results."""
    kinds = list(results)
    lines = ["| per call | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for field, label in (("wall_us_per_call", "wall µs (untraced)"), ("cpu_us_per_call", "coordinator CPU µs"),
                         ("context_switches_per_call", "coordinator context switches")):
        lines.append(f"| {label} | " + " | ".join(_fmt(results[k][field]) for k in kinds) + " |")
    syscalls = {k: results[k]["syscalls_per_call"] for k in kinds}
    for name in dict.fromkeys(name for v in syscalls.values() if isinstance(v, dict) for name in v):
        lines.append(f"| system call `{name}` | " + " | ".join(
            _fmt(v.get(name, 0.0)) if isinstance(v, dict) else "-" for v in syscalls.values()) + " |")
    shares = {k: results[k]["cpu_share_by_binary"] for k in kinds}
    if any(isinstance(v, dict) for v in shares.values()):
        for name in PARTS:
            lines.append(f"| CPU in {name}: µs (share of samples) | " + " | ".join(
                f"{_fmt(v[name] / 100 * results[k]['cpu_us_per_call'])} ({v[name]:.1f} %)" if isinstance(v, dict)
                else "-" for k, v in shares.items()) + " |")
    skipped = [f"{k}, {what}: {v[len('skipped: '):]}" for what, passes in (("system calls", syscalls),
                                                                            ("CPU by binary", shares))
               for k, v in passes.items() if isinstance(v, str)]
    if skipped:
        lines += ["", "Skipped:", *(f"- {' '.join(reason.split())}" for reason in skipped)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000, help="calls of each kind in each pass (default 5000)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.n < 100:
        p.error("--n must be at least 100")
    results = run(args.n)
    print(f"\n# where a lone call's time goes in the coordinator\n\nmachine: {machine()}; n = {args.n:,} per pass\n")
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "versions": versions(["mtcache", "redis", "uvloop"]),
                                         "n": args.n, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
