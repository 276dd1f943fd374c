"""Shared helpers for the benchmarks: timing, percentiles, throwaway servers."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """A throwaway server process: its address (a Redis URL or a socket path) and pid."""

    address: str
    pid: int


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free port; yields its URL."""
    with redis_server_process() as server:
        yield server.address


@contextlib.contextmanager
def redis_server_process() -> Iterator[Server]:
    """A throwaway redis-server on a free port; yields its URL and pid."""
    port = free_port()
    folder = tempfile.mkdtemp(prefix="mtcache-bench-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(url) as r:
                    r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        yield Server(url, proc.pid)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def redis_server_version() -> str:
    """The version of the ``redis-server`` on PATH, e.g. ``"7.0.15"``."""
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip()


def versions(libraries: Sequence[str]) -> dict[str, str]:
    """The Python version, each installed version of ``libraries`` ("not installed" if missing), and
    redis-server's."""
    out = {"Python": platform.python_version()}
    for name in libraries:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["redis-server"] = redis_server_version()
    return out


@contextlib.contextmanager
def coordinator(redis_url: str | None, **settings: Any) -> Iterator[str]:
    """A coordinator process on a temporary socket; yields the socket path."""
    with coordinator_process(redis_url, **settings) as server:
        yield server.address


@contextlib.contextmanager
def coordinator_process(redis_url: str | None, **settings: Any) -> Iterator[Server]:
    """A coordinator process on a temporary socket, with ``settings`` (``Settings``
    field names: ``l1_capacity=20_000``); yields the socket path and pid."""
    from mtcache import start_coordinator, stop_coordinator

    folder = Path(tempfile.mkdtemp(prefix="mtc-bench-"))
    sock = str(folder / "c.sock")
    try:
        handle = start_coordinator(
            sock, redis_url=redis_url, use_redis=redis_url is not None, log_level="WARNING", new_session=False,
            **settings,
        )
        try:
            yield Server(sock, handle.pid)
        finally:
            stop_coordinator(handle)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure(fn: Callable[[], object], *, n: int, batch: int = 1, warmup: int = 200) -> dict[str, float]:
    """Time ``fn`` ``n`` times (in batches of ``batch`` calls for sub-microsecond
    operations); return p50/p90/p99/max in µs per call and ops/s."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    clock = time.perf_counter_ns
    total_start = clock()
    for _ in range(max(1, n // batch)):
        t0 = clock()
        for _ in range(batch):
            fn()
        samples.append((clock() - t0) / batch / 1000)
    total = (clock() - total_start) / 1e9
    samples.sort()
    return {
        "p50": percentile(samples, 0.50),
        "p90": percentile(samples, 0.90),
        "p99": percentile(samples, 0.99),
        "max": samples[-1],
        "ops": (len(samples) * batch) / total,
    }


def cpu_times(pid: int) -> tuple[float, float]:
    """The user and the system CPU time process ``pid`` has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, in seconds."""
    return sum(cpu_times(pid))


def own_cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far, in seconds."""
    times = os.times()
    return times.user + times.system


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Send ``sig`` to ``proc`` if it still runs and wait up to ``timeout`` seconds for it to exit;
    kill it if it does not."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def table(rows: list[tuple[str, dict[str, float]]], baseline: str | None = None) -> str:
    """A Markdown table of results; a ratio column against ``baseline`` if given."""
    base = dict(rows).get(baseline) if baseline else None
    head = "| what | p50 µs | p90 µs | p99 µs | ops/s |" + (f" p50 vs {baseline} |" if base else "")
    sep = "|---|---:|---:|---:|---:|" + ("---:|" if base else "")
    out = [head, sep]
    for name, r in rows:
        line = f"| {name} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['ops']:,.0f} |"
        if base:
            line += f" {r['p50'] / base['p50']:.2f}x |"
        out.append(line)
    return "\n".join(out)
