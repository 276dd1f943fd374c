"""A cached view's requests per second under gunicorn: mtcache's Django and Flask backends side
by side with django-redis and Flask-Caching's RedisCache.

    .venv/bin/python bench/frameworks.py [--rounds 3] [--duration 10] [--quick] [--out DIR]

Needs the bench extra (django-redis) and ``wrk`` (``apt-get install wrk``). The apps are the
examples (workers/django_app, workers/flask_app.py) under gunicorn with 4 sync workers and
``preload_app``; for mtcache, ``workers/gunicorn.conf.py`` starts the coordinator in the master;
for the Redis peers the same app is started with their cache (bench/frameworks_django_redis_settings.py,
bench/frameworks_flask_redis.py). Every run gets a fresh redis-server (and coordinator).

Measured views, each hot (filled by one request before the load starts): Django's ``cache_page``
(``/cached/ACME``: the whole pickled response from the cache), Django's low-level
``cache.get_or_set`` (``/quote/ACME``), and Flask-Caching's ``@cache.cached`` (``/cached/ACME``).
wrk runs 2 threads and 16 connections for ``--duration`` seconds. The configurations alternate
within each round (their order rotates), and the table quotes the median over the rounds of each.
The machine has 2 cores shared by wrk, the 4 workers, Redis and the coordinator: the figures
compare the backends under one load, they are not the machine's ceiling.

Before the load, each backend's own cost per call (``get``, ``get_or_set``/``get_or_compute``
hits and a ``set``, in one process, no HTTP) is measured too: under gunicorn a request costs
about a millisecond of framework and WSGI work, and that table shows how much of it the cache is.

Writes FRAMEWORKS.md and frameworks.json (into bench/ for a full run; ``--quick``, 1 round of 3 s,
writes to a temporary folder unless ``--out`` is given).
"""

from __future__ import annotations

import sys
from pathlib import Path

# run as a script, this folder comes first on sys.path, where bench/http.py stands in for the standard
# library's http (which urllib.request imports): look in it last
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from _util import coordinator, free_port, machine, redis_server, stop_process, versions

ROOT = Path(__file__).resolve().parent.parent
START_DEADLINE = 30.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Config:
    """One app with one cache backend, and the views measured on it."""

    framework: str
    backend: str
    app: str
    mtcache: bool
    paths: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


CONFIGS = (
    Config("Django", "mtcache", "workers.django_app.wsgi:application", True, ("/cached/ACME", "/quote/ACME")),
    Config("Django", "django-redis", "workers.django_app.wsgi:application", False, ("/cached/ACME", "/quote/ACME"),
           (("DJANGO_SETTINGS_MODULE", "bench.frameworks_django_redis_settings"),)),
    Config("Flask", "mtcache", "workers.flask_app:app", True, ("/cached/ACME",)),
    Config("Flask", "Flask-Caching RedisCache", "bench.frameworks_flask_redis:app", False, ("/cached/ACME",)),
)
VIEWS = {("Django", "/cached/ACME"): "cache_page view", ("Django", "/quote/ACME"): "cache.get_or_set view",
         ("Flask", "/cached/ACME"): "@cache.cached view"}


def _get(url: str) -> int:
    try:
        with _OPENER.open(url, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _serve(config: Config, redis_url: str, folder: Path) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MTCACHE_", "DJANGO_"))}
    env.update(MTCACHE_SOCKET=str(folder / "c.sock"), REDIS_URL=redis_url, PYTHONPATH=str(ROOT), **dict(config.env))
    cmd = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "4", "--no-control-socket",
           "--log-level", "warning"]
    cmd += ["-c", "workers/gunicorn.conf.py"] if config.mtcache else ["--preload"]
    log = open(folder / "gunicorn.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen([*cmd, config.app], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log)
    finally:
        log.close()
    proc.port = port  # type: ignore[attr-defined]
    deadline = time.monotonic() + START_DEADLINE
    while True:
        try:
            if _get(f"http://127.0.0.1:{port}/ready") == 404:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{config.framework} with {config.backend} did not start:\n"
                               + (folder / "gunicorn.log").read_text(errors="replace")[-3000:])
        time.sleep(0.05)  # readiness poll with a deadline


def _wrk(url: str, duration: float) -> tuple[float, float]:
    """Requests per second and the latency p50 (ms) wrk measured."""
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{duration:g}s", "--latency", url], capture_output=True,
                         text=True, timeout=duration + 60, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")
    return rps, latency


def run_one(config: Config, duration: float) -> dict[str, tuple[float, float]]:
    """Start the app on a fresh Redis, fill each view, load it; {path: (rps, p50 ms)}."""
    folder = Path(tempfile.mkdtemp(prefix="mtc-fw-"))
    try:
        with redis_server() as redis_url:
            proc = _serve(config, redis_url, folder)
            try:
                found = {}
                for path in config.paths:
                    url = f"http://127.0.0.1:{proc.port}{path}"  # type: ignore[attr-defined]
                    if _get(url) != 200:
                        raise RuntimeError(f"{url} did not answer 200")
                    found[path] = _wrk(url, duration)
                return found
            finally:
                stop_process(proc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _per_call(fn: Callable[[], object], calls: int) -> float:
    fn()
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1000


def _get_then_set(cache: Any, key: str, fn: Callable[[], object], timeout: int) -> object:
    found = cache.get(key)
    if found is None:
        found = fn()
        cache.set(key, found, timeout)
    return found


def call_costs(repeats: int, calls: int) -> dict[str, float]:
    """Microseconds per backend call in one process, no HTTP (median of ``repeats``): a hit of
    ``get`` and of ``get_or_set``/``get_or_compute`` (``calls`` each), and a ``set`` (a tenth as
    many: a write waits for Redis), of a small dict."""
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    from cachelib import RedisCache as CachelibRedisCache
    from django_redis.cache import RedisCache as DjangoRedisCache

    from mtcache.contrib.cachelib import MtcacheCache as CachelibMtcache
    from mtcache.contrib.django import MtcacheCache as DjangoMtcache

    value = {"symbol": "ACME", "price": 123.45}
    found: dict[str, list[float]] = {}
    with redis_server() as redis_url, coordinator(redis_url) as socket_path:
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        backends = [
            ("Django", "mtcache", DjangoMtcache(socket_path, {"OPTIONS": {"spawn": False}})),
            ("Django", "django-redis", DjangoRedisCache(redis_url, {})),
            ("cachelib", "mtcache", CachelibMtcache(socket_path=socket_path, spawn=False)),
            ("cachelib", "RedisCache", CachelibRedisCache(host="127.0.0.1", port=port)),
        ]
        for _ in range(repeats):
            for framework, name, cache in backends:
                cache.set("hot", value, 600)
                compute = getattr(cache, "get_or_set", None) or getattr(cache, "get_or_compute", None)
                if compute is None:  # cachelib's RedisCache has neither: get, and set on a miss (as Flask-Caching does)
                    compute = partial(_get_then_set, cache)
                for op, fn, n in (("get (hit)", lambda c=cache: c.get("hot"), calls),
                                  ("get_or_set / get_or_compute (hit)",
                                   lambda f=compute: f("hot", lambda: value, 600), calls),
                                  ("set", lambda c=cache: c.set("cold", value, 600), max(1, calls // 10))):
                    found.setdefault(f"{framework} {op} | {name}", []).append(_per_call(fn, n))
    return {label: statistics.median(runs) for label, runs in found.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per view and run")
    p.add_argument("--quick", action="store_true", help="1 round of 3 s, into a temporary folder")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 1
    rounds, duration = (1, 3.0) if args.quick else (args.rounds, args.duration)
    out = args.out or (Path(tempfile.mkdtemp(prefix="mtcache-frameworks-")) if args.quick else ROOT / "bench")
    costs = call_costs(repeats=3 if args.quick else 5, calls=2000 if args.quick else 20000)
    samples: dict[str, list[tuple[float, float]]] = {}
    for r in range(rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]  # alternate: rotate the order
        for config in order:
            for path, result in run_one(config, duration).items():
                label = f"{config.framework} {VIEWS[(config.framework, path)]} | {config.backend}"
                samples.setdefault(label, []).append(result)
                print(f"round {r + 1}: {label}: {result[0]:,.0f} req/s, p50 {result[1]:.2f} ms", flush=True)
    medians = {label: (statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs))
               for label, runs in samples.items()}
    info = {"machine": machine(), "versions": versions(["django", "django-redis", "flask", "flask-caching",
                                                        "cachelib", "gunicorn", "redis"]),
            "rounds": rounds, "duration_s": duration, "samples": samples, "medians": medians,
            "call_costs_us": costs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "frameworks.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = ["# A cached view under gunicorn: mtcache against django-redis and Flask-Caching's RedisCache", "",
             f"`bench/frameworks.py`: gunicorn, 4 sync workers; wrk -t2 -c16, {duration:g} s per run; "
             f"median of {rounds} alternated rounds. {info['machine']}.", "",
             "| view | backend | req/s (median) | p50 ms | runs (req/s) |", "|---|---|---:|---:|---|"]
    for label, (rps, p50) in medians.items():
        view, backend = label.split(" | ")
        runs = ", ".join(f"{s[0]:,.0f}" for s in samples[label])
        lines.append(f"| {view} | {backend} | {rps:,.0f} | {p50:.2f} | {runs} |")
    lines += ["", "One backend call in one process, no HTTP (µs, median of the repeats; a small dict; mtcache's "
              "hits come from the worker's near cache):", "", "| call | backend | µs |", "|---|---|---:|"]
    for label, micros in costs.items():
        call, backend = label.split(" | ")
        lines.append(f"| {call} | {backend} | {micros:.1f} |")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), ""]
    (out / "FRAMEWORKS.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
