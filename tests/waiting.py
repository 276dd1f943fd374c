"""Deadline-bounded waits on a coordinator's state, shared by the multi-process tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from mtcache import AsyncClient, Client

DEADLINE = 30.0


def wait_for_waiters(socket_path: str, count: int, timeout: float = DEADLINE) -> bool:
    """Poll the coordinator until ``count`` callers wait on leases (True), or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    with Client(socket_path, spawn=False, near_capacity=0) as probe:
        while time.monotonic() < deadline:
            if probe.stats().coalesced >= count:
                return True
            time.sleep(0.01)  # poll interval of a deadline-bounded wait
    return False


async def wait_for_waiters_async(socket_path: str, count: int, timeout: float = DEADLINE) -> bool:
    """:func:`wait_for_waiters` for the event loop."""
    deadline = time.monotonic() + timeout
    async with AsyncClient(socket_path, spawn=False, near_capacity=0) as probe:
        while time.monotonic() < deadline:
            if (await probe.stats()).coalesced >= count:
                return True
            await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait
    return False


def wait_until(condition: Callable[[], object], timeout: float = DEADLINE, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it is true (True), or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)  # poll interval of a deadline-bounded wait
    return True
