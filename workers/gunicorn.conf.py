"""gunicorn settings: a fleet of workers sharing one mtcache coordinator.

    MTCACHE_SOCKET=/tmp/app/mtcache.sock REDIS_URL=redis://127.0.0.1:6379 \
        gunicorn -c workers/gunicorn.conf.py workers.wsgi_app:app

Run from the repository root. The master starts the coordinator in
``on_starting``, before it forks any worker, on ``MTCACHE_SOCKET`` (default: the
per-user path every client uses) with Redis from ``REDIS_URL`` (a coordinator
whose Redis does not answer serves L1 alone and reconnects in the background);
it lets go of it in ``on_exit``, after the last worker is gone. A coordinator
that does not start stops gunicorn with its log.

A binary upgrade (``kill -USR2 <master>``) is safe: the new master finds the
coordinator serving and joins it instead of starting another, and the old
master's ``on_exit`` leaves it running for the new one; the coordinator stops
(and removes its socket) when the last master using it exits.

``preload_app = True`` imports the app in the master once, before
``on_starting``: the app's client must not connect at import, and mtcache's does
not (it connects on first use, in the worker). Command-line options
(``-b``, ``-w``) override the settings below.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mtcache import CoordinatorHandle, start_coordinator, stop_coordinator

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter

bind = "127.0.0.1:8000"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
preload_app = True

_coordinator: CoordinatorHandle | None = None


def on_starting(server: Arbiter) -> None:
    """Master, before the workers: start the coordinator (or join the one serving) and
    wait until it answers."""
    global _coordinator
    _coordinator = start_coordinator()  # on the socket the workers' clients resolve (MTCACHE_SOCKET...)
    how = "started" if _coordinator.started else "joined"
    server.log.info("mtcache coordinator (pid %s) %s on %s", _coordinator.pid, how, _coordinator.socket_path)


def on_exit(server: Arbiter) -> None:
    """Master, after the workers: stop the coordinator unless another master (a binary
    upgrade's) still uses it; it removes its socket."""
    if _coordinator is not None:
        if stop_coordinator(_coordinator):
            server.log.info("mtcache coordinator (pid %s) stopped", _coordinator.pid)
        else:
            server.log.info("mtcache coordinator (pid %s) left running for its other users", _coordinator.pid)
