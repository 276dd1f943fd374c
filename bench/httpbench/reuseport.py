"""uvicorn's workers for ``bench/http.py``, each on a listening socket of its own.

    python -m bench.httpbench.reuseport PORT WORKERS [--http httptools|h11]

``uvicorn --workers N`` gives its workers one shared listening socket. wrk opens its keep-alive
connections at once at the start of a run and keeps them to the end, and which workers accept them is a
race (libuv accepts every pending connection of a wake-up): runs of one app were seen with 1, 2, 3 and
all 4 workers busy, and on 2 cores the server's CPU per request moves with that count more than with
the app (the constant app: 29.6 µs per request on 1 busy worker, 34-38 µs on 4). A ratio to the ceiling
then compares two different servers.

Here each of ``WORKERS`` uvicorn processes (one worker each: the same event loop, HTTP parser and app)
gets a socket of its own bound to ``PORT`` with ``SO_REUSEPORT``, and the kernel spreads the connections
over them by their addresses, the same way for every app. The sockets set ``TCP_NODELAY``, which Linux
passes on to the connections they accept: uvicorn takes a socket given by ``--fd`` for a Unix one and
does not set it, and a response in two writes (headers, body) then waits for the client's delayed
acknowledgement (40 ms).

This process stays as the workers' parent: SIGTERM or SIGINT stops them all, and when one ends on its
own the others are stopped and this exits with its code.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType

#: uvicorn's options for every worker, as ``bench/http.py`` runs it (and ``--http``)
UVICORN_ARGS = ("--factory", "bench.httpbench.apps:asgi_app", "--loop", "uvloop", "--no-access-log",
                "--log-level", "warning")


def listening_socket(port: int) -> socket.socket:
    """A loopback socket listening on ``port`` beside others with ``SO_REUSEPORT``, with ``TCP_NODELAY`` for
    the connections it accepts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    """Run the workers until a signal or the end of one of them; the exit code to leave with."""
    p = argparse.ArgumentParser(description="uvicorn workers with a SO_REUSEPORT socket each")
    p.add_argument("port", type=int)
    p.add_argument("workers", type=int)
    p.add_argument("--http", choices=("httptools", "h11"), default="httptools",
                   help="uvicorn's HTTP parser (default httptools, the bench extra's; h11 comes with uvicorn)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("workers must be at least 1")
    uvicorn = str(Path(sys.executable).parent / "uvicorn")
    sockets = [listening_socket(args.port) for _ in range(args.workers)]
    procs = [subprocess.Popen([uvicorn, *UVICORN_ARGS, "--http", args.http, "--fd", str(sock.fileno())],
                              pass_fds=[sock.fileno()])
             for sock in sockets]
    for sock in sockets:
        sock.close()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        for proc in procs:
            proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pid, raw = os.wait()  # the workers are this process's only children; retried after a signal's handler
    status = os.waitstatus_to_exitcode(raw)
    for proc in procs:
        if proc.pid == pid:
            proc.returncode = status
    stop(signal.SIGTERM, None)
    for proc in procs:
        proc.wait()
    return status


if __name__ == "__main__":
    sys.exit(main())
