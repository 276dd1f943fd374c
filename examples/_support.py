"""What every example shares: the ``--socket`` option and a coordinator to talk to.

Without ``--socket`` an example starts its own coordinator on a temporary socket
(``python -m mtcache.coordinator``), with Redis from ``REDIS_URL`` (else
``redis://127.0.0.1:6379``) as L2 when it answers and ``--no-redis`` otherwise,
and stops it when the example ends, also on Ctrl-C or an error. With ``--socket``
it uses the coordinator already serving there and starts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import redis

from mtcache import Client, Settings, start_coordinator, stop_coordinator

__all__ = ["Target", "parser", "redis_answers", "run"]


def redis_answers(url: str) -> bool:
    """True if Redis at ``url`` answers PING within half a second."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@dataclass(frozen=True)
class Target:
    """The coordinator an example talks to; ``started`` is True when the example
    started it (and stops it at the end), False when it came from ``--socket``."""

    socket_path: str
    started: bool


@contextlib.contextmanager
def _own_coordinator() -> Iterator[Target]:
    settings = Settings.load()
    use_redis = redis_answers(settings.redis_url)
    if use_redis:
        print(f"Redis at {settings.redacted_redis_url} answers: using it as L2")
    else:
        print(f"Redis at {settings.redacted_redis_url} does not answer: L1 only (--no-redis)")
    folder = Path(tempfile.mkdtemp(prefix="mtcache-example-"))
    socket_path = str(folder / "coordinator.sock")
    try:
        handle = start_coordinator(
            socket_path, redis_url=settings.redis_url, use_redis=use_redis, log_level="WARNING", new_session=False
        )
    except RuntimeError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(str(exc)) from None
    try:
        yield Target(socket_path, started=True)
    finally:
        stop_coordinator(handle)
        shutil.rmtree(folder, ignore_errors=True)


def _terminated(signum: int, frame: object) -> NoReturn:
    # SIGTERM unwinds like Ctrl-C does, so the coordinator started here is stopped too
    raise SystemExit(128 + signum)


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of ``doc``, with ``--socket``;
    an example adds its own options to it."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument(
        "--socket", metavar="PATH",
        help="socket of a running coordinator (default: start one on a temporary socket and stop it at the end)",
    )
    return p


def run(body: Callable[[Target, argparse.Namespace], int], options: argparse.ArgumentParser) -> NoReturn:
    """Parse the command line, provide a coordinator, call ``body`` with it and the
    parsed arguments, and exit with the status ``body`` returns: 1 if no
    coordinator answers on ``--socket``, 130 on Ctrl-C, 143 on SIGTERM (the
    coordinator it started is stopped in every case).
    """
    args = options.parse_args()
    signal.signal(signal.SIGTERM, _terminated)
    if args.socket is not None:
        with Client(args.socket, spawn=False) as client:
            answers = client.health().coordinator == "ok"
        if not answers:
            print(f"no coordinator answers on {args.socket}", file=sys.stderr)
            sys.exit(1)
        sys.exit(body(Target(args.socket, started=False), args))
    try:
        with _own_coordinator() as target:
            status = body(target, args)
    except KeyboardInterrupt:
        print("interrupted: the coordinator was stopped", file=sys.stderr)
        status = 130
    sys.exit(status)
