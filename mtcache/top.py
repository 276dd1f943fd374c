"""``mtcache top``: a live view of a running coordinator, refreshed every interval."""

from __future__ import annotations

import time
from typing import Any

from mtcache.dashboard import render_dashboard, take_sample

__all__ = ["run_top", "take_sample"]


def run_top(client: Any, *, interval: float = 1.0, iterations: int | None = None) -> int:
    """Show the live view of ``client``'s coordinator every ``interval`` seconds, rates over
    the last interval, ``iterations`` times (forever by default, until Ctrl-C). On a terminal
    the view is redrawn in place; otherwise each one is printed. Exit status 1 if the
    coordinator did not answer the last look, else 0."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    previous = take_sample(client)
    current = previous
    shown = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else _Printer(
                console) as live:
            while iterations is None or shown < iterations:
                time.sleep(interval)  # the refresh interval
                current = take_sample(client)
                live.update(render_dashboard(current, previous), refresh=True)
                previous = current
                shown += 1
    except KeyboardInterrupt:
        pass
    return 0 if current.stats.get("coordinator") else 1


class _Printer:
    """Live's interface for a console that is not a terminal: each view printed in turn."""

    def __init__(self, console: Any) -> None:
        self._console = console

    def __enter__(self) -> _Printer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, renderable: Any, *, refresh: bool = False) -> None:
        self._console.print(renderable)
