"""gunicorn settings: a fleet of workers sharing one mtcache coordinator.

    MTCACHE_SOCKET=/tmp/app/mtcache.sock REDIS_URL=redis://127.0.0.1:6379 \
        gunicorn -c workers/gunicorn.conf.py workers.wsgi_app:app

Run from the repository root. The master starts the coordinator in
``on_starting``, before it forks any worker, on ``MTCACHE_SOCKET`` (default: the
per-user path every client uses) with Redis from ``REDIS_URL`` (a coordinator
whose Redis does not answer serves L1 alone and reconnects in the background);
it stops it in ``on_exit``, after the last worker is gone, which removes the
socket. A coordinator that does not start stops gunicorn with its log.

``preload_app = True`` imports the app in the master once, before
``on_starting``: the app's client must not connect at import, and mtcache's does
not (it connects on first use, in the worker). Command-line options
(``-b``, ``-w``) override the settings below.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mtcache.client.spawn import start_coordinator, stop_coordinator
from mtcache.config import Settings

if TYPE_CHECKING:
    import subprocess

    from gunicorn.arbiter import Arbiter

bind = "127.0.0.1:8000"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
preload_app = True

#: The coordinator's socket, resolved as the workers' clients resolve it.
MTCACHE_SOCKET_PATH = Settings.load().socket_path

_coordinator: subprocess.Popen[bytes] | None = None


def on_starting(server: Arbiter) -> None:
    """Master, before the workers: start the coordinator and wait until it answers."""
    global _coordinator
    _coordinator = start_coordinator(MTCACHE_SOCKET_PATH, extra=("--log-level", "WARNING"), new_session=True)
    server.log.info("mtcache coordinator (pid %s) serving %s", _coordinator.pid, MTCACHE_SOCKET_PATH)


def on_exit(server: Arbiter) -> None:
    """Master, after the workers: stop the coordinator (it removes its socket)."""
    if _coordinator is not None:
        status = stop_coordinator(_coordinator)
        server.log.info("mtcache coordinator stopped (exit status %s)", status)
