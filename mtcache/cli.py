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
from collections.abc import Sequence
from typing import Any

from mtcache.config import Settings

__all__ = ["coordinator_main", "main"]


def _coordinator_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtcache-coordinator",
        description="Run the mtcache coordinator for this host in the foreground (SIGTERM/SIGINT stop it).",
    )
    p.add_argument("--socket", help="Unix socket path (env MTCACHE_SOCKET)")
    p.add_argument("--redis-url", help="Redis URL (env REDIS_URL; default redis://127.0.0.1:6379)")
    p.add_argument("--namespace", help="cache namespace (env MTCACHE_NAMESPACE; default 'default')")
    p.add_argument("--l1-capacity", type=int, help="L1 entries (default 2000)")
    p.add_argument("--l1-max-bytes", type=int, help="L1 bytes (default 64 MiB)")
    p.add_argument("--l1-shm-bytes", type=int, help="size of the shared-memory L1 mirror (default 64 MiB; 0: none)")
    p.add_argument("--l1-ttl", type=float, help="longest L1 lifetime in seconds (default 300)")
    p.add_argument("--lease-ttl", type=float, help="lease timeout in seconds (default 30)")
    p.add_argument("--no-redis", action="store_true", help="serve L1 only, without Redis")
    p.add_argument("--detach", action="store_true", help="fork into the background (own session) and return")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p


def coordinator_main(argv: Sequence[str] | None = None) -> int:
    """``mtcache-coordinator``: serve until SIGTERM/SIGINT. Exit status 0 on a clean
    stop, 2 on bad arguments, 3 if another coordinator already serves the socket."""
    args = _coordinator_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
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
    except (TypeError, ValueError) as exc:
        print(f"mtcache-coordinator: {exc}", file=sys.stderr)
        return 2
    if args.detach:
        _detach()
    coordinator = Coordinator(settings, use_redis=not args.no_redis)
    try:
        _run(coordinator.serve())
    except AlreadyRunning as exc:
        print(f"mtcache-coordinator: {exc}", file=sys.stderr)
        return 3
    return 0


def _detach() -> None:
    # classic daemon fork: the parent returns to whoever started it, the child
    # leads a new session so a terminal's signals and the starter's exit spare it
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency on POSIX; fall back rather than fail
        return asyncio.run(coro)
    return uvloop.run(coro)


def _format(title: str, data: dict[str, Any], indent: str = "") -> list[str]:
    lines = [f"{indent}{title}"] if title else []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.extend(_format(f"{key}:", value, indent + "  "))
        elif isinstance(value, float):
            lines.append(f"{indent}  {key:<22} {value:,.3f}")
        elif isinstance(value, int) and not isinstance(value, bool):
            lines.append(f"{indent}  {key:<22} {value:,}")
        else:
            lines.append(f"{indent}  {key:<22} {value}")
    return lines


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


def main(argv: Sequence[str] | None = None) -> int:
    """``mtcache stats|health|stop [--socket PATH] [--namespace NS] [--json]``: ask a
    running coordinator. Exit status 1 if none answers."""
    p = argparse.ArgumentParser(prog="mtcache", description="Inspect a running mtcache coordinator.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("stats", "print the coordinator's statistics"),
        ("health", "print its health"),
        ("stop", "stop it (SIGTERM) and wait until its socket is gone"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--socket", help="Unix socket path (env MTCACHE_SOCKET)")
        sp.add_argument("--namespace", help="namespace (env MTCACHE_NAMESPACE)")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    settings = Settings.load(socket_path=args.socket, namespace=args.namespace)
    # a namespace named (flag or MTCACHE_NAMESPACE) must match; else whatever the socket serves
    namespace_given = args.namespace is not None or bool(os.environ.get("MTCACHE_NAMESPACE"))
    if args.command == "stop":
        return _stop(settings, namespace_given)
    with _client(settings, namespace_given) as client:
        if args.command == "stats":
            data = client.stats().as_dict()
        else:
            data = client.health().as_dict()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(_format(f"mtcache {args.command} ({settings.socket_path})", data)))
    answered = data.get("coordinator") == "ok" if args.command == "health" else bool(data.get("coordinator"))
    if not answered:
        print(f"mtcache: no coordinator answers on {settings.socket_path}", file=sys.stderr)
        return 1
    return 0
