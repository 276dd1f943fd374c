"""Command-line entry points: ``mtcache-coordinator`` and ``mtcache``.

Thin: parse arguments, resolve settings (arguments → environment → ``.env`` →
defaults), hand over to the coordinator or the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from mtcache.config import Settings

__all__ = ["coordinator_main", "main"]


def _version() -> str:
    from mtcache import __version__

    return f"%(prog)s {__version__}"


def _coordinator_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtcache-coordinator",
        description="Run the mtcache coordinator for this host in the foreground (SIGTERM/SIGINT stop it).",
    )
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--socket", metavar="PATH", help="Unix socket path (env MTCACHE_SOCKET)")
    p.add_argument(
        "--redis-url", metavar="URL",
        help="Redis URL (env REDIS_URL; default redis://127.0.0.1:6379). Every local user sees a command line "
        "(ps): give a URL with a password in REDIS_URL instead",
    )
    p.add_argument("--namespace", metavar="NS", help="cache namespace (env MTCACHE_NAMESPACE; default 'default')")
    p.add_argument("--l1-capacity", type=int, metavar="N", help="L1 entries (default 2000)")
    p.add_argument("--l1-max-bytes", type=int, metavar="N", help="L1 bytes (default 64 MiB)")
    p.add_argument(
        "--l1-shm-bytes", type=int, metavar="N",
        help="most the shared-memory L1 mirror may grow to (default: twice --l1-max-bytes and its buckets; 0: none)",
    )
    p.add_argument("--l1-ttl", type=float, metavar="SECONDS", help="longest L1 lifetime in seconds (default 300)")
    p.add_argument("--lease-ttl", type=float, metavar="SECONDS", help="lease timeout in seconds (default 30)")
    p.add_argument("--no-redis", action="store_true", help="serve L1 only, without Redis")
    p.add_argument(
        "--idle-exit", type=float, default=0.0, metavar="SECONDS",
        help="exit after this long without any client (default 0: never; a coordinator a client starts gets "
        "MTCACHE_IDLE_EXIT, default 600)",
    )
    p.add_argument("--detach", action="store_true", help="fork into the background (own session) and return")
    p.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics on http://ADDR:PORT/metrics (e.g. 127.0.0.1:9464)")
    p.add_argument("--otel", action="store_true",
                   help="export the same metrics through the OpenTelemetry API (pip install 'mtcache[otel]')")
    p.add_argument("--log-level", default="INFO", metavar="LEVEL", help="logging level (default INFO)")
    return p


def coordinator_main(argv: Sequence[str] | None = None) -> int:
    """``mtcache-coordinator``: serve until SIGTERM/SIGINT. Exit status 0 on a clean
    stop, 2 on bad arguments or a socket folder that is not this user's alone
    (see :func:`mtcache.client.trust.check_socket_dir`), 3 if another coordinator
    already serves the socket.

    With ``--detach`` the process that was started returns once the coordinator
    (forked into its own session) serves: status 0, or at once the status the
    coordinator exited with (3: another one holds the lock) if it could not start.
    The Redis URL is best given in ``REDIS_URL``: a ``--redis-url`` with a password
    is visible to every local user in ``ps``."""
    args = _coordinator_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    from mtcache.client.trust import ensure_socket_dir
    from mtcache.coordinator.exports import MetricsUnavailable
    from mtcache.coordinator.prometheus import parse_address
    from mtcache.coordinator.server import AlreadyRunning, Coordinator

    try:
        settings = Settings.load(
            socket_path=args.socket,
            redis_url=args.redis_url,
            namespace=args.namespace,
            l1_capacity=args.l1_capacity,
            l1_max_bytes=args.l1_max_bytes,
            l1_shm_bytes=args.l1_shm_bytes,
            l1_ttl=args.l1_ttl,
            lease_ttl=args.lease_ttl,
        )
        ensure_socket_dir(settings.socket_path)
        metrics_address = parse_address(args.metrics) if args.metrics is not None else None
    except (TypeError, ValueError, OSError) as exc:
        print(f"mtcache-coordinator: {exc}", file=sys.stderr)
        return 2
    try:
        coordinator = Coordinator(settings, use_redis=not args.no_redis, idle_exit=args.idle_exit,
                                  metrics_address=metrics_address, otel=args.otel)
    except ValueError as exc:
        print(f"mtcache-coordinator: {exc}", file=sys.stderr)
        return 2
    serving = _detach() if args.detach else None
    try:
        _run(coordinator.serve(on_serving=serving))
    except AlreadyRunning as exc:
        print(f"mtcache-coordinator: {exc}", file=sys.stderr)
        return 3
    except MetricsUnavailable as exc:
        print(f"mtcache-coordinator: {exc}", file=sys.stderr)
        return 2
    return 0


#: what the detached coordinator writes to its starter once it serves
_SERVING = b"serving"


def _detach() -> Callable[[], None]:
    """Fork into the background; return (in the daemon child only) the function
    to call once the coordinator serves.

    The daemon child leads a new session, so a terminal's signals and the
    starter's exit spare it. The first process waits on a pipe and exits as soon
    as the child reports: status 0 when it serves; else, once the child has
    exited without serving, the child's exit status (1 if it was 0 or a signal).
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # nothing buffered is written twice
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            said = pipe.read()  # until the child reports and closes its end, or exits
        if said == _SERVING:
            os._exit(0)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        os._exit(code if code > 0 else 1)
    os.close(read_fd)
    os.setsid()

    def serving() -> None:
        try:
            os.write(write_fd, _SERVING)
        except OSError:  # the starter gave up waiting (killed): serve all the same
            pass
        finally:
            os.close(write_fd)

    return serving


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency on POSIX; fall back rather than fail
        return asyncio.run(coro)
    return uvloop.run(coro)


def _client(settings: Settings, namespace_given: bool) -> Any:
    """A client of the coordinator on the socket: of the given namespace, or (none
    given) one that inspects whatever namespace that coordinator serves."""
    from mtcache.client.sync import Client

    client = Client(settings.socket_path, namespace=settings.namespace, spawn=False)
    client._core.inspect_only = not namespace_given
    return client


def _stop(settings: Settings, namespace_given: bool) -> int:
    from mtcache.client.spawn import can_connect

    with _client(settings, namespace_given) as client:
        health = client.health()
    if health.coordinator != "ok":
        print(f"mtcache: no coordinator answers on {settings.socket_path}", file=sys.stderr)
        return 1
    os.kill(health.details["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while can_connect(settings.socket_path):
        if time.monotonic() > deadline:
            print(f"mtcache: the coordinator (pid {health.details['pid']}) did not stop in 10 s", file=sys.stderr)
            return 1
        time.sleep(0.02)  # waiting for the socket to go, with a deadline
    print(f"stopped the coordinator (pid {health.details['pid']}) on {settings.socket_path}")
    return 0


def _main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtcache", description="Inspect or stop a running mtcache coordinator.")
    p.add_argument("--version", action="version", version=_version())
    # every subcommand names its coordinator the same way
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--socket", metavar="PATH", help="Unix socket path (env MTCACHE_SOCKET)")
    target.add_argument(
        "--namespace", metavar="NS",
        help="namespace the coordinator must serve (env MTCACHE_NAMESPACE; default: whichever it serves)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stats = sub.add_parser("stats", parents=[target], help="what the cache serves: hit rates, L1 use, computations")
    stats.add_argument("--json", action="store_true", help="every counter, as JSON")
    health = sub.add_parser("health", parents=[target], help="whether the cache is whole, and if not why")
    health.add_argument("--json", action="store_true", help="every detail, as JSON")
    stats.add_argument("--workers", action="store_true", help="also each reporting worker's counters")
    sub.add_parser("stop", parents=[target], help="stop the coordinator (SIGTERM) and wait until its socket is gone")
    top = sub.add_parser("top", parents=[target], help="a live view of the coordinator (Ctrl-C to leave)")
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                     help="seconds between refreshes (default 1)")
    top.add_argument("--iterations", type=int, metavar="N", help="stop after this many refreshes")
    top.add_argument("--once", action="store_true", help="one view (rates over one interval), then exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``mtcache stats|health|stop|top [--socket PATH] [--namespace NS]`` (``--json`` on
    stats and health, ``--workers`` on stats): ask a running coordinator. Exit status 1 if
    none answers."""
    parser = _main_parser()
    args = parser.parse_args(argv)
    settings = Settings.load(socket_path=args.socket, namespace=args.namespace)
    # a namespace named (flag or MTCACHE_NAMESPACE) must match; else whatever the socket serves
    namespace_given = args.namespace is not None or bool(os.environ.get("MTCACHE_NAMESPACE"))
    if args.command == "stop":
        return _stop(settings, namespace_given)
    if args.command == "top":
        from mtcache.top import run_top

        if not args.interval > 0 or (args.iterations is not None and args.iterations < 1):
            parser.error("--interval must be > 0 and --iterations >= 1")
        with _client(settings, namespace_given) as client:
            return run_top(client, interval=args.interval, iterations=1 if args.once else args.iterations)
    from mtcache.summary import render_health, render_stats

    with _client(settings, namespace_given) as client:
        if args.command == "stats":
            data = client.stats(workers=args.workers).as_dict()
            answered = bool(data.get("coordinator"))
        else:
            data = client.health().as_dict()
            answered = data.get("coordinator") == "ok"
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif args.command == "stats":
        print(render_stats(data, title=f"mtcache stats ({settings.socket_path})"))
    else:
        print(render_health(data, title=f"mtcache health ({settings.socket_path})"))
    if not answered:
        print(f"mtcache: no coordinator answers on {settings.socket_path}", file=sys.stderr)
        return 1
    return 0
