"""The driver of ``bench/http.py``: servers, wrk, counting, the report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import redis
import uvloop

from bench._util import (
    Server,
    coordinator_process,
    cpu_times,
    free_port,
    machine,
    redis_server_process,
    versions,
)
from bench.httpbench.apps import ASYNC_ONLY, EAGER_REFRESH, SERVICE_SECONDS, TTL, VARIANTS, make_asgi, make_wsgi

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SERVERS = ("gunicorn", "uvicorn")
WORKERS = 4
LABELS = {
    "constant": "constant quote (the server's ceiling)",
    "mtcache": "mtcache `get_or_compute`",
    "mtcache_eager": f"mtcache, `eager_refresh={EAGER_REFRESH}`",
    "redis_py": "redis-py cache-aside",
    "cashews": "cashews (`client_side`, `lock=True`)",
    "nocache": "no cache",
}
LIBRARIES = ("mtcache", "gunicorn", "uvicorn", "httptools", "uvloop", "redis", "hiredis", "cashews")
#: what the issue asks of mtcache (ratio name, bound, "min" or "max", variants it applies to)
TARGETS = (
    ("rps_vs_ceiling", 0.9, "min", ("mtcache", "mtcache_eager")),
    ("rps_vs_redis_py", 1.5, "min", ("mtcache", "mtcache_eager")),
    ("p50_vs_ceiling", 1.15, "max", ("mtcache", "mtcache_eager")),
    ("p99_vs_ceiling", 2.0, "max", ("mtcache_eager",)),
)


def ensure_wrk() -> str:
    """wrk's path; installs the Debian package when running as root with apt-get, else exits
    naming the command."""
    found = shutil.which("wrk")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False)
        found = shutil.which("wrk")
    if found is None:
        raise SystemExit("bench/http.py needs wrk: install it with `sudo apt-get install wrk` (Debian/Ubuntu)")
    return found


def server_command(server: str, port: int) -> list[str]:
    """The command line of ``server`` with :data:`WORKERS` workers on ``port`` (run from the
    repository root, which both servers put on ``sys.path``)."""
    bin_dir = Path(sys.executable).parent
    if server == "gunicorn":
        return [str(bin_dir / "gunicorn"), "-w", str(WORKERS), "-k", "sync", "-b", f"127.0.0.1:{port}",
                "--no-control-socket", "--log-level", "warning", "bench.httpbench.apps:wsgi_app()"]
    if server == "uvicorn":  # a socket per worker: see bench/httpbench/reuseport.py
        return [sys.executable, "-m", "bench.httpbench.reuseport", str(port), str(WORKERS)]
    raise ValueError(f"unknown server {server!r}; one of {', '.join(SERVERS)}")


def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class RunningServer(NamedTuple):
    """A server :func:`running_server` started: the port it answers on, and its master's pid, which
    is also the process group (and session) of every process of the server."""

    port: int
    pid: int


@contextlib.contextmanager
def running_server(server: str, variant: str, env: dict[str, str], log_path: Path) -> Iterator[RunningServer]:
    """``server`` serving ``variant`` in a session of its own; yields its port and master's pid once
    it answers, stops it (and every worker) at the end."""
    port = free_port()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(server_command(server, port), cwd=ROOT, env={**os.environ, **env},
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{server} ({variant}) exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                status, _ = _get(port, "/quote/SYM000")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server} ({variant}) did not answer in 90 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield RunningServer(port, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # a worker its master left behind: same session, ours
            os.killpg(proc.pid, signal.SIGKILL)


def warm_up(port: int, symbols: int) -> None:
    """Fetch every symbol once (8 at a time), checking each answer.

    :raises RuntimeError: a symbol did not answer 200 with a JSON quote under its name.
    """
    def one(i: int) -> None:
        symbol = f"SYM{i:03d}"
        status, body = _get(port, f"/quote/{symbol}")
        data = json.loads(body) if status == 200 else {}
        if data.get("symbol") != symbol or "price" not in data.get("quote", {}):
            raise RuntimeError(f"warm-up of {symbol}: {status} {body[:200]!r}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(symbols)))


def run_wrk(wrk: str, port: int, *, seconds: float, threads: int, connections: int, symbols: int,
            zipf: float) -> dict[str, Any]:
    """One wrk run with the Zipf script; wrk's counts and latency percentiles (from its
    ``--latency`` distribution) and its text output."""
    cmd = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency", "--timeout", "10s",
           "-s", str(HERE / "zipf.lua"), f"http://127.0.0.1:{port}", "--", str(symbols), f"{zipf:g}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("HTTPBENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    result: dict[str, Any] = json.loads(line.removeprefix("HTTPBENCH "))
    result["text"] = out.replace(line + "\n", "")
    return result


def source_calls(call_log: Path, start: float, end: float) -> list[tuple[str, float]]:
    """The price service's calls that started between ``start`` and ``end`` (Unix time)."""
    if not call_log.exists():
        return []
    calls = []
    for line in call_log.read_text().splitlines():
        symbol, at = line.split()
        if start <= float(at) <= end:
            calls.append((symbol, float(at)))
    return calls


def calls_per_key_per_period(calls: list[tuple[str, float]], ttl: float) -> float | None:
    """Source calls per key per TTL period: each key's calls grouped into periods (a period
    opens at a call not inside an open one and lasts ``ttl``), calls over periods. 1.00: every
    expiry cost one call; more: callers computed the same key at once."""
    by_key: dict[str, list[float]] = defaultdict(list)
    for symbol, at in calls:
        by_key[symbol].append(at)
    periods = 0
    for times in by_key.values():
        opened = None
        for at in sorted(times):
            if opened is None or at >= opened + ttl:
                opened, periods = at, periods + 1
    return len(calls) / periods if periods else None


def group_pids(pgid: int) -> list[int]:
    """The pids of the processes in process group ``pgid`` (read from /proc/<pid>/stat), sorted;
    a process that exits while they are read is left out."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            pids.append(int(entry.name))
    return sorted(pids)


def cpu_totals(times: dict[int, tuple[float, float]]) -> dict[int, float]:
    """The CPU seconds (user + system) of each process of a :func:`user_system_by_pid` snapshot."""
    return {pid: user + system for pid, (user, system) in times.items()}


def worker_shares(master: int, pids: Iterable[int], before: dict[int, float], after: dict[int, float]) -> list[float]:
    """Each worker's share of the CPU all the server's workers used between two :func:`cpu_totals`
    snapshots, largest first (the workers: the processes of the server other than ``master``): how evenly
    the load reached them."""
    used = {pid: after[pid] - before[pid] for pid in pids if pid != master and pid in before and pid in after}
    total = sum(used.values())
    return sorted((round(v / total, 3) for v in used.values()), reverse=True) if total > 0 else []


def user_system_by_pid(pids: Iterable[int]) -> dict[int, tuple[float, float]]:
    """The user and the system CPU seconds each of ``pids`` has used so far; a process that no longer exists
    is left out."""
    out = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            out[pid] = cpu_times(pid)
    return out


def user_system_used(pids: Iterable[int], before: dict[int, tuple[float, float]],
                     after: dict[int, tuple[float, float]]) -> tuple[float, float]:
    """The user and the system CPU seconds ``pids`` used together between two :func:`user_system_by_pid`
    snapshots, counting only the processes present in both."""
    both = [pid for pid in pids if pid in before and pid in after]
    return (sum(after[pid][0] - before[pid][0] for pid in both),
            sum(after[pid][1] - before[pid][1] for pid in both))


def cpu_used(parts: dict[str, list[int]], before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds each part (name: its pids) used between two :func:`cpu_totals` snapshots, counting
    only the processes present in both."""
    return {name: sum(after[pid] - before[pid] for pid in pids if pid in before and pid in after)
            for name, pids in parts.items()}


def children_cpu_seconds() -> float:
    """CPU time (user + system) of this process's reaped children so far, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_one(wrk: str, server: str, variant: str, redis_srv: Server, folder: Path, args: argparse.Namespace,
                round_no: int) -> dict[str, Any]:
    """One variant on one server: fresh caches, warm-up, wrk, counting, and the CPU each process
    (the server's, the coordinator, redis-server, wrk) used during wrk's run."""
    redis_url = redis_srv.address
    with redis.Redis.from_url(redis_url) as r:
        r.flushall()
    call_log = folder / f"calls-{server}-{variant}-{round_no}.log"
    with contextlib.ExitStack() as stack:
        env = {"HTTPBENCH_VARIANT": variant, "HTTPBENCH_REDIS_URL": redis_url, "HTTPBENCH_CALL_LOG": str(call_log)}
        coordinator = stack.enter_context(coordinator_process(redis_url)) if variant.startswith("mtcache") else None
        if coordinator is not None:
            env["HTTPBENCH_SOCKET"] = coordinator.address
        served = stack.enter_context(running_server(server, variant, env, folder / f"{server}.log"))
        warm_up(served.port, args.symbols)
        parts = {"server": group_pids(served.pid)}
        if coordinator is not None:
            parts["coordinator"] = [coordinator.pid]
        parts["redis-server"] = [redis_srv.pid]
        pids = [pid for part in parts.values() for pid in part]
        load_before = os.getloadavg()[0]
        start = time.time()
        times_before, wrk_before = user_system_by_pid(pids), children_cpu_seconds()
        result = run_wrk(wrk, served.port, seconds=args.seconds, threads=args.threads,
                         connections=args.connections, symbols=args.symbols, zipf=args.zipf)
        wrk_cpu, times_after = children_cpu_seconds() - wrk_before, user_system_by_pid(pids)
        end = time.time()
    calls = source_calls(call_log, start, end)
    requests = result["requests"]
    rps = requests / (result["duration_us"] / 1e6)
    cpu_before, cpu_after = cpu_totals(times_before), cpu_totals(times_after)
    used = {**cpu_used(parts, cpu_before, cpu_after), "wrk": wrk_cpu}
    cpu = {name: seconds * 1e6 / requests for name, seconds in used.items()} if requests else None
    user, system = user_system_used(parts["server"], times_before, times_after)
    row = {
        "round": round_no, "server": server, "variant": variant, "rps": rps, "requests": requests,
        "p50_ms": result["p50_us"] / 1000, "p75_ms": result["p75_us"] / 1000, "p90_ms": result["p90_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000, "max_ms": result["max_us"] / 1000, "errors": result["errors"],
        "source_calls": len(calls), "keys_computed": len({s for s, _ in calls}),
        "hit_rate": None if variant == "constant" else max(0.0, 1 - len(calls) / requests) if requests else None,
        "calls_per_key_per_ttl": calls_per_key_per_period(calls, TTL),
        "cpu_us_per_request": cpu,
        "server_user_system_us": {"user": user * 1e6 / requests, "system": system * 1e6 / requests}
        if requests else None,
        "worker_cpu_shares": worker_shares(served.pid, parts["server"], cpu_before, cpu_after),
        "cpu_us_per_request_total": None if cpu is None else sum(v for k, v in cpu.items() if k != "wrk"),
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "wrk_output": result["text"],
    }
    print(f"  round {round_no} {server:8} {variant:13} {rps:9,.0f} RPS  p50 {row['p50_ms']:6.2f} ms  "
          f"p99 {row['p99_ms']:7.2f} ms  calls {len(calls):6}  errors {sum(result['errors'].values())}  "
          f"CPU {_us(row['cpu_us_per_request_total'])} µs/request  workers {row['worker_cpu_shares']}  "
          f"load {row['load_1min']}", flush=True)
    return row


#: requests per in-process pass: variants that go to Redis on every request get fewer
APP_REQUESTS = {"redis_py": 5_000, "cashews": 1_000}
APP_REQUESTS_DEFAULT = 20_000
#: in-process passes per variant (the median is kept)
APP_PASSES = 3
#: requests of the cold pass (each after the CPU's caches were flushed: see :class:`CacheEvictor`)
COLD_REQUESTS = {"redis_py": 500, "cashews": 200}
COLD_REQUESTS_DEFAULT = 2_000


class CacheEvictor:
    """Pushes what a request left in the CPU's data and unified caches out of them: one write to every
    64-byte line of a buffer of :attr:`size` bytes (twice the largest last-level cache seen on these
    machines), the values alternating so that each write changes the line. What a worker's code and data
    face under load, when four processes and the load generator share two cores between its requests."""

    size = 16 * 1024 * 1024

    def __init__(self) -> None:
        self._buffer = bytearray(self.size)
        self._values = [bytes(self.size // 64), b"\x01" * (self.size // 64)]
        self._turn = 0

    def __call__(self) -> None:
        self._turn ^= 1
        self._buffer[::64] = self._values[self._turn]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def app_cpu_per_request(server: str, variant: str, redis_url: str, socket_path: str | None, symbols: int,
                        call_log: Path, requests: int | None = None) -> dict[str, float]:
    """The CPU (user + system, this process's) that ``variant``'s app spends per request when called in
    process, without a server or a load generator: every symbol fetched once, then the symbols in turn;
    ``{"cpu_us": µs per request, the median of APP_PASSES passes, "cold_us": the median time of one request
    of a pass whose requests each follow a flush of the CPU's caches (:class:`CacheEvictor`; wall time of
    the request alone, on this one thread), "source_calls": the price service's calls during the passes}``
    (0 unless a quote expired while they ran: they measure hits). What the cache costs a worker per
    request, apart from how the server's event loop or threads batch requests under load. ``requests``:
    per pass (default :data:`APP_REQUESTS`)."""
    count = requests or APP_REQUESTS.get(variant, APP_REQUESTS_DEFAULT)
    cold_count = requests or COLD_REQUESTS.get(variant, COLD_REQUESTS_DEFAULT)
    paths = [f"/quote/SYM{i:03d}" for i in range(symbols)]
    passes: list[float] = []
    cold: list[int] = []
    evict = CacheEvictor()
    warm: list[int] = []
    if server == "gunicorn":
        wsgi = make_wsgi(variant, socket_path=socket_path, redis_url=redis_url, call_log=str(call_log))
        environ: dict[str, Any] = {"REQUEST_METHOD": "GET"}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            if status != "200 OK":
                raise RuntimeError(f"{variant}: {status}")

        def request(path: str) -> None:
            environ["PATH_INFO"] = path
            b"".join(wsgi(environ, start_response))

        try:
            for path in paths:
                request(path)
            warm.append(_lines(call_log))
            for _ in range(APP_PASSES):
                start = time.process_time()
                for i in range(count):
                    request(paths[i % symbols])
                passes.append((time.process_time() - start) * 1e6 / count)
            for i in range(cold_count):
                evict()
                start_ns = time.perf_counter_ns()
                request(paths[i % symbols])
                cold.append(time.perf_counter_ns() - start_ns)
        finally:
            wsgi.close()
    else:
        app = make_asgi(variant, socket_path=socket_path, redis_url=redis_url, call_log=str(call_log))
        uvloop.run(_asgi_passes(app, paths, (count, cold_count), (passes, cold), evict,
                                lambda: warm.append(_lines(call_log))))
    return {"cpu_us": statistics.median(passes), "cold_us": statistics.median(cold) / 1000,
            "source_calls": _lines(call_log) - warm[0]}


async def _asgi_passes(app: Any, paths: list[str], counts: tuple[int, int], out: tuple[list[float], list[int]],
                       evict: Callable[[], None], warmed: Callable[[], None]) -> None:
    """:func:`app_cpu_per_request`'s passes over an ASGI app, inside its lifespan (which closes its cache):
    ``counts[0]`` requests a pass, their CPU µs per request appended to ``out[0]``, then ``counts[1]`` cold
    requests (each after ``evict()``), the ns of each appended to ``out[1]``; ``warmed`` is called between
    the warm-up and the passes."""
    (count, cold_count), (passes, cold) = counts, out
    scope: dict[str, Any] = {"type": "http", "method": "GET"}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"status {message['status']}")

    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started: asyncio.Queue[str] = asyncio.Queue()

    async def send_lifespan(message: dict[str, Any]) -> None:
        await started.put(message["type"])

    life = asyncio.get_running_loop().create_task(app({"type": "lifespan"}, lifespan.get, send_lifespan))
    await lifespan.put({"type": "lifespan.startup"})
    try:
        if (answer := await asyncio.wait_for(started.get(), 30)) != "lifespan.startup.complete":
            raise RuntimeError(f"the app's lifespan answered {answer}")
        for path in paths:
            scope["path"] = path
            await app(scope, receive, send)
        warmed()
        for _ in range(APP_PASSES):
            start = time.process_time()
            for i in range(count):
                scope["path"] = paths[i % len(paths)]
                await app(scope, receive, send)
            passes.append((time.process_time() - start) * 1e6 / count)
        for i in range(cold_count):
            evict()
            scope["path"] = paths[i % len(paths)]
            start_ns = time.perf_counter_ns()
            await app(scope, receive, send)
            cold.append(time.perf_counter_ns() - start_ns)
    finally:
        await lifespan.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(life, 30)


def measure_apps(servers: list[str], variants: list[str], redis_srv: Server, symbols: int,
                 folder: Path) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`app_cpu_per_request` of every variant on every server (gunicorn: its WSGI app, uvicorn: its
    ASGI app), each against a flushed Redis (and a coordinator of its own for mtcache)."""
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for server in servers:
        for variant in variants:
            if variant == "nocache" or (server == "gunicorn" and variant in ASYNC_ONLY):
                continue
            with redis.Redis.from_url(redis_srv.address) as r:
                r.flushall()
            with contextlib.ExitStack() as stack:
                socket_path = (stack.enter_context(coordinator_process(redis_srv.address)).address
                               if variant.startswith("mtcache") else None)
                row = out[server][variant] = app_cpu_per_request(
                    server, variant, redis_srv.address, socket_path, symbols,
                    folder / f"in-process-{server}-{variant}.log")
            print(f"  in process {server:8} {variant:13} {row['cpu_us']:7.2f} µs of CPU per request, "
                  f"{row['source_calls']:.0f} source calls during the passes", flush=True)
    return dict(out)


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per server and variant: the means over rounds (the CPU per request of each part and in
    total, when the rows have it), and the ratios (the issue's targets' and CPU vs ceiling), each
    taken within a round (against that round's ceiling and redis-py on the same server)."""
    by = {(r["round"], r["server"], r["variant"]): r for r in runs}
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for server in dict.fromkeys(r["server"] for r in runs):
        for variant in dict.fromkeys(r["variant"] for r in runs if r["server"] == server):
            rows = [r for r in runs if r["server"] == server and r["variant"] == variant]
            summary: dict[str, Any] = {"rounds": len(rows)}
            for field in ("rps", "p50_ms", "p99_ms", "hit_rate", "calls_per_key_per_ttl"):
                values = [r[field] for r in rows if r[field] is not None]
                summary[field] = statistics.fmean(values) if values else None
            summary["errors"] = sum(sum(r["errors"].values()) for r in rows)
            cpu_rows = [r for r in rows if r.get("cpu_us_per_request")]
            if cpu_rows:
                parts = dict.fromkeys(part for r in cpu_rows for part in r["cpu_us_per_request"])
                summary["cpu_us_per_request"] = {
                    part: statistics.fmean(r["cpu_us_per_request"][part] for r in cpu_rows
                                           if part in r["cpu_us_per_request"]) for part in parts}
                summary["cpu_us_per_request_total"] = statistics.fmean(r["cpu_us_per_request_total"]
                                                                       for r in cpu_rows)
            splits = [r["server_user_system_us"] for r in rows if r.get("server_user_system_us")]
            if splits:
                summary["server_user_system_us"] = {kind: statistics.fmean(split[kind] for split in splits)
                                                    for kind in ("user", "system")}
            ratios: dict[str, list[float]] = defaultdict(list)
            for r in rows:
                ceiling = by.get((r["round"], server, "constant"))
                peer = by.get((r["round"], server, "redis_py"))
                if ceiling:
                    ratios["rps_vs_ceiling"].append(r["rps"] / ceiling["rps"])
                    ratios["p50_vs_ceiling"].append(r["p50_ms"] / ceiling["p50_ms"])
                    ratios["p99_vs_ceiling"].append(r["p99_ms"] / ceiling["p99_ms"])
                    cpu, ceiling_cpu = r.get("cpu_us_per_request_total"), ceiling.get("cpu_us_per_request_total")
                    if cpu is not None and ceiling_cpu:
                        ratios["cpu_vs_ceiling"].append(cpu / ceiling_cpu)
                if peer:
                    ratios["rps_vs_redis_py"].append(r["rps"] / peer["rps"])
            summary["ratios"] = {k: {"mean": statistics.fmean(v), "min": min(v), "max": max(v)}
                                 for k, v in ratios.items()}
            out[server][variant] = summary
    return dict(out)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _ratio(summary: dict[str, Any], name: str) -> str:
    r = summary["ratios"].get(name)
    if r is None:
        return "-"
    return f"{r['mean']:.2f}x" if len(set((round(r["min"], 2), round(r["max"], 2)))) == 1 \
        else f"{r['mean']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def _cpu_table(variants: dict[str, dict[str, Any]]) -> list[str]:
    """The Markdown lines of one server's "CPU per request" section (a blank line last), or none
    when its summaries have no CPU figures (an http.json from before they were measured)."""
    if not any("cpu_us_per_request" in s for s in variants.values()):
        return []
    lines = [
        "### CPU per request",
        "",
        "| variant | server workers µs | of which user | of which system | coordinator µs | redis-server µs | "
        "total µs (without wrk) | vs ceiling | wrk µs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        s = variants.get(variant)
        if s is None or "cpu_us_per_request" not in s:
            continue
        cpu, split = s["cpu_us_per_request"], s.get("server_user_system_us", {})
        lines.append(f"| {LABELS[variant]} | {_us(cpu.get('server'))} | {_us(split.get('user'))} | "
                     f"{_us(split.get('system'))} | {_us(cpu.get('coordinator'))} | "
                     f"{_us(cpu.get('redis-server'))} | {_us(s['cpu_us_per_request_total'])} | "
                     f"{_ratio(s, 'cpu_vs_ceiling')} | {_us(cpu.get('wrk'))} |")
    return [*lines, ""]


def _in_process_table(in_process: dict[str, dict[str, dict[str, float]]] | None) -> list[str]:
    """The Markdown lines of the in-process section (a blank line last), or none for an http.json from
    before it was measured."""
    if not in_process:
        return []
    servers = list(in_process)
    lines = [
        "## The app's own CPU per request, in process",
        "",
        "Each app called directly in one process, without a server or wrk, against a flushed Redis (and a "
        "coordinator of its own): every symbol fetched once, then the symbols in turn; the median of 3 passes. "
        "What a request costs the worker's own code, apart from how the server batches requests under load. "
        "**cold**: the median time of one request of a further pass whose requests each follow a flush of "
        "the CPU's caches (a write to every 64-byte line of 16 MiB), as a worker's code and data are flushed "
        "by the other processes sharing its cores under load. \"added\" is the difference to the constant "
        "app's.",
        "",
        "| variant | " + " | ".join(f"{server} µs | added µs | cold µs | added cold µs" for server in servers)
        + " |",
        "|---|" + "---:|---:|---:|---:|" * len(servers),
    ]
    for variant in VARIANTS:
        if not any(variant in in_process[server] for server in servers):
            continue
        cells = []
        for server in servers:
            row, base = in_process[server].get(variant), in_process[server].get("constant")
            for field in ("cpu_us", "cold_us"):
                us = None if row is None else row.get(field)
                base_us = None if base is None or variant == "constant" else base.get(field)
                cells.append(f"{_us2(us)} | {_us2(None if us is None or base_us is None else us - base_us)}")
        lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) + " |")
    misses = [f"{server} {variant}: {row['source_calls']:.0f}" for server, rows in in_process.items()
              for variant, row in rows.items() if row["source_calls"]]
    lines += ["", "Source calls during the passes (a quote that expired while they ran; the figures measure hits): "
              + ("; ".join(misses) if misses else "none") + ".", ""]
    return lines


def _us2(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def report(results: dict[str, Any]) -> str:
    """The Markdown report (bench/HTTP.md)."""
    cfg, summary = results["config"], results["summary"]
    lines = [
        "# The end-to-end HTTP benchmark (`bench/http.py`)",
        "",
        f"Run {results['date']} on {results['machine']}: `{results['command']}`. Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        f"A JSON quote endpoint (`GET /quote/<symbol>`) over a price service that takes "
        f"{cfg['service_ms']:g} ms per call, {cfg['symbols']} symbols requested with Zipf({cfg['zipf']:g}) "
        f"popularity, quotes cached for mtcache's REALTIME TTL ({cfg['ttl']:g} s), every symbol fetched once "
        f"before measuring. gunicorn runs {WORKERS} sync workers, uvicorn {WORKERS} workers (uvloop, httptools), "
        "each on a listening socket of its own (`SO_REUSEPORT`: the kernel spreads wrk's connections over "
        "them the same way for every app; with `--workers` they share one socket, and which of them accept "
        "wrk's keep-alive connections is a race at the start of a run that left 1 to 4 of them busy, moving "
        "the server's CPU per request more than the app does: `bench/httpbench/reuseport.py`). "
        f"Each variant gets a fresh server (and coordinator; Redis is flushed), then wrk "
        f"(`-t{cfg['threads']} -c{cfg['connections']} -d{cfg['seconds']:g}s --latency`, a Lua script picking "
        f"symbols by Zipf) for {cfg['seconds']:g} s; the whole set runs {cfg['rounds']} times, in alternating "
        "order, and each ratio is taken within a round against the same round's constant app on the same "
        "server (the server's own ceiling: the same endpoint and JSON encoding, a constant quote instead of "
        "the lookup) or redis-py. Figures are means over the rounds; a range "
        "follows a ratio when the rounds differ.",
        "",
        f"Machine load (1-minute load average, {results['cpus']} CPUs) while measuring: "
        f"{results['load']['min']:.1f} to {results['load']['max']:.1f}"
        + (" — a shared, loaded machine: treat absolute figures as indicative and rerun on a quiet one."
           if results["load"]["max"] > results["cpus"] else "."),
        "",
    ]
    for server, variants in summary.items():
        lines += [
            f"## {server}",
            "",
            "| variant | RPS | p50 ms | p99 ms | hits | source calls per key per TTL | RPS vs ceiling | "
            "RPS vs redis-py | p50 vs ceiling | p99 vs ceiling | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for variant in VARIANTS:
            s = variants.get(variant)
            if s is None:
                if variant in ASYNC_ONLY and server == "gunicorn":
                    lines.append(f"| {LABELS[variant]} | does not apply: no synchronous API for a sync worker "
                                 "| | | | | | | | | |")
                continue
            hits = "-" if s["hit_rate"] is None else f"{s['hit_rate'] * 100:.1f} %"
            cpk = "-" if s["calls_per_key_per_ttl"] is None else f"{s['calls_per_key_per_ttl']:.2f}"
            lines.append(
                f"| {LABELS[variant]} | {s['rps']:,.0f} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | {hits} | {cpk} | "
                f"{_ratio(s, 'rps_vs_ceiling')} | {_ratio(s, 'rps_vs_redis_py')} | {_ratio(s, 'p50_vs_ceiling')} | "
                f"{_ratio(s, 'p99_vs_ceiling')} | {s['errors']} |")
        headline = [f"{server} + {LABELS[v]}: {variants[v]['rps']:,.0f} RPS, p50 {_ms(variants[v]['p50_ms'])} ms, "
                    f"{variants[v]['hit_rate'] * 100:.0f} % hits"
                    for v in ("mtcache", "mtcache_eager") if v in variants and variants[v]["hit_rate"] is not None]
        if headline:
            lines += ["", "In multi-tier-cache's form (16,829 RPS, p50 5.2 ms, 95 % hits): " + "; ".join(headline)
                      + "."]
        lines.append("")
        lines += _cpu_table(variants)
    lines += _in_process_table(results.get("in_process"))
    lines += ["## The issue's targets", "", "| server | variant | target | measured | met |", "|---|---|---|---:|---|"]
    for server, variants in summary.items():
        for name, bound, kind, applies in TARGETS:
            for variant in applies:
                r = variants.get(variant, {}).get("ratios", {}).get(name)
                if r is None:
                    continue
                met = r["mean"] >= bound if kind == "min" else r["mean"] <= bound
                what = name.replace("_vs_", " vs ").replace("rps", "RPS").replace("redis_py", "redis-py")
                lines.append(f"| {server} | {LABELS[variant]} | {what} {'≥' if kind == 'min' else '≤'} {bound:g}x | "
                             f"{_ratio(variants[variant], name)} | {'yes' if met else '**no**'} |")
    lines += [
        "",
        "## Definitions",
        "",
        "- **RPS**: requests wrk completed over its run time. **p50 / p99**: from wrk's latency distribution "
        "(`--latency`; read in the script's `done` hook).",
        "- **hits**: the share of requests that did not cost a call of the price service "
        "(1 - calls / requests); a caller that waited for another worker's computation counts as a hit, a "
        "background refresh (eager refresh) counts as a call.",
        f"- **source calls per key per TTL**: the service's calls during the measured time, per key and TTL "
        f"period: each key's calls are grouped into periods (one opens at a call outside an open one and lasts "
        f"{cfg['ttl']:g} s), and the calls are divided by the periods. 1.00: every expiry of a key cost one call; "
        "more: callers computed the same key at once (no cache: one call per request). \"-\": no call in "
        "the measured time (a run shorter than the TTL).",
        "- **errors**: wrk's connect/read/write/timeout errors and non-2xx answers, over all rounds.",
        "- **CPU per request**: the CPU time (user + system, from `/proc/<pid>/stat`) each process spent "
        "during wrk's run, divided by the requests wrk completed: the server's master and workers (its "
        "process group), the coordinator (mtcache only), redis-server, and wrk (from `getrusage`). **total** "
        "leaves out wrk, the load generator; **vs ceiling** is the total over the same round's constant app's; "
        "**of which user / system**: the server's part split into the time its processes ran their own code "
        "(the interpreter, the app, the cache's client) and the time the kernel ran for them (sockets, "
        "scheduling). "
        "On a machine whose cores are all busy, RPS is bounded by the CPU all the processes need per request, "
        "so the CPU ratio is the steadier measure of what a cache costs the server.",
        "- cashews has no synchronous API; on gunicorn's sync workers it would need an event loop per "
        "worker thread and is not something a sync app would use, so it runs on uvicorn only. It runs as "
        "`bench/peers.py` runs it: `client_side=True` (a per-process memory tier kept coherent by Redis "
        "tracking) and `@cache(ttl=10, lock=True)`, its stampede protection. With `lock=True` cashews takes "
        "its Redis lock on every call, hits included (`SET cashews:lock:... NX PX` and an `EVALSHA` to release "
        "it, seen with `redis-cli monitor`): two Redis round trips per request.",
        "",
        "## Every run",
        "",
        "| round | server | variant | RPS | p50 ms | p99 ms | max ms | source calls | CPU µs per request | "
        "1-min load |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["runs"]:
        lines.append(f"| {r['round']} | {r['server']} | {r['variant']} | {r['rps']:,.0f} | {_ms(r['p50_ms'])} | "
                     f"{_ms(r['p99_ms'])} | {_ms(r['max_ms'])} | {r['source_calls']:,} | "
                     f"{_us(r.get('cpu_us_per_request_total'))} | {r['load_1min'][0]:.1f} → {r['load_1min'][1]:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="gunicorn and uvicorn serving a quote endpoint through mtcache, "
                                "redis-py, cashews and no cache, beside a constant app, loaded by wrk")
    p.add_argument("--seconds", type=float, default=15.0, help="wrk's run per variant (default 15)")
    p.add_argument("--rounds", type=int, default=2, help="times the whole set runs, order alternating (default 2)")
    p.add_argument("--server", action="append", choices=SERVERS, help="only this server (repeatable)")
    p.add_argument("--variant", action="append", choices=VARIANTS,
                   help="only this variant (repeatable; the constant app and redis-py are added for the ratios)")
    p.add_argument("--connections", type=int, default=32, help="wrk's open connections (default 32)")
    p.add_argument("--threads", type=int, default=2, help="wrk's threads (default 2)")
    p.add_argument("--symbols", type=int, default=200, help="symbols requested (default 200)")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the symbols' popularity (default 1.0)")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only write HTTP.md again from an http.json (next to it, or into --out)")
    p.add_argument("--out", type=Path, help="folder for HTTP.md and http.json (default: bench/ for a full run, "
                   "else a temporary folder)")
    args = p.parse_args(argv)
    if (args.seconds <= 0 or args.rounds < 1 or args.connections < 1 or args.threads < 1
            or not 1 <= args.symbols <= 1000):
        p.error("--seconds must be > 0, --rounds, --connections and --threads ≥ 1, --symbols 1 to 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        target = (args.out or args.render.parent) / "HTTP.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(report(json.loads(args.render.read_text())))
        print(f"wrote {target}")
        return 0
    wrk = ensure_wrk()
    servers = args.server or list(SERVERS)
    variants = [v for v in VARIANTS if args.variant is None or v in args.variant or v in ("constant", "redis_py")]
    full = args.seconds >= 15 and args.rounds >= 2 and args.server is None and args.variant is None
    out = args.out or (ROOT / "bench" if full else Path(tempfile.mkdtemp(prefix="mtcache-http-")))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mtc-http-") as tmp, redis_server_process() as redis_srv:
        folder = Path(tmp)
        in_process = measure_apps(servers, variants, redis_srv, args.symbols, folder)
        for round_no in range(1, args.rounds + 1):
            order = variants if round_no % 2 else variants[::-1]
            for server in servers:
                for variant in order:
                    if server == "gunicorn" and variant in ASYNC_ONLY:
                        continue
                    runs.append(measure_one(wrk, server, variant, redis_srv, folder, args, round_no))
    loads = [x for r in runs for x in r["load_1min"]]
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(), "cpus": os.cpu_count(),
        "command": " ".join(["python bench/http.py", *(sys.argv[1:] if argv is None else argv)]),
        "versions": versions(LIBRARIES),
        "config": {"seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
                   "threads": args.threads, "symbols": args.symbols, "zipf": args.zipf, "ttl": TTL,
                   "service_ms": SERVICE_SECONDS * 1000, "workers": WORKERS, "eager_refresh": EAGER_REFRESH},
        "load": {"min": min(loads), "max": max(loads)},
        "runs": runs, "summary": summarize(runs), "in_process": in_process,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "http.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "HTTP.md").write_text(report(results))
    print(f"wrote {out / 'HTTP.md'} and {out / 'http.json'}")
    return 0
