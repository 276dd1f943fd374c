"""Running a command with a pseudo-terminal as its terminal, for tests of what it draws."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Mapping

#: ANSI escape sequences (colours, cursor moves): stripped from what a command drew
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_pty(argv: list[str], timeout: float = 60.0, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` (with ``env`` added to the environment) with a 100x60 pseudo-terminal as its
    terminal; its exit status and what it showed, escape sequences removed."""
    master, slave = pty.openpty()
    env = {**os.environ, **(env or {}), "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "60"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, ANSI.sub("", out.decode(errors="replace")).replace("\r", "")
