"""Eight spawned worker processes that run jobs one after another.

Starting eight interpreters costs about a second on two cores, so one peer's
W1-W3 share a pool; W4 (memory) gets a fresh one. A job that fails closes the
pool (its barrier may be broken); the next job starts a new one.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import queue
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from .common import N_KEYS, WORKERS, Job
from .worker import Shared, serve

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

__all__ = ["MAX_STAMPEDE_KEYS", "Handler", "Pool", "WorkerFailed"]

MAX_STAMPEDE_KEYS = 256
Handler = Callable[[str, int, Any, Shared], None]
_CTX = multiprocessing.get_context("spawn")


class WorkerFailed(RuntimeError):
    """A worker raised (its traceback is the message) or did not report in time."""


class Pool:
    """``WORKERS`` worker processes (spawn context), started on the first job."""

    def __init__(self) -> None:
        self._procs: list[BaseProcess] = []
        self._inboxes: list[Queue[Job | None]] = []
        self._shared: Shared | None = None
        self._zero: list[Any] = []  # the shared ctypes arrays, zeroed before each job

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> Shared:
        versions = _CTX.Array("q", N_KEYS, lock=False)
        computes = _CTX.Array("i", MAX_STAMPEDE_KEYS)
        self._zero = [versions, computes.get_obj()]
        shared = Shared(
            barrier=_CTX.Barrier(WORKERS),
            results=_CTX.Queue(),
            versions=versions,
            computes=computes,
            go=_CTX.Event(),
            release=_CTX.Event(),
        )
        self._inboxes = [_CTX.Queue() for _ in range(WORKERS)]
        self._procs = [
            _CTX.Process(target=serve, args=(i, inbox, shared), name=f"bench-worker-{i}", daemon=True)
            for i, inbox in enumerate(self._inboxes)
        ]
        for proc in self._procs:
            proc.start()
        self._shared = shared
        return shared

    def run(self, job: Job, timeout: float, on_message: Handler | None = None) -> tuple[list[dict[str, Any]], Shared]:
        """Run ``job`` on every worker; their results in index order, and the
        shared objects (to read the arrays the job filled). ``on_message`` gets the
        workers' other messages (W4's "idle" and "ready").

        :raises WorkerFailed: a worker raised, died, or they did not all report
            within ``timeout`` (the pool is closed then).
        """
        shared = self._shared or self._start()
        for arr in self._zero:
            ctypes.memset(ctypes.addressof(arr), 0, ctypes.sizeof(arr))
        shared.go.clear()
        shared.release.clear()
        for inbox in self._inboxes:
            inbox.put(job)
        try:
            return self._collect(shared, timeout, on_message), shared
        except BaseException:
            self.close()
            raise

    def _collect(self, shared: Shared, timeout: float, on_message: Handler | None) -> list[dict[str, Any]]:
        results: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(results) < WORKERS:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerFailed(f"{len(results)} of {WORKERS} workers reported within {timeout:.0f} s")
            try:
                kind, index, payload = shared.results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p.name for p in self._procs if not p.is_alive()]
                if dead:
                    raise WorkerFailed(f"worker(s) died: {', '.join(dead)}") from None
                continue
            if kind == "result":
                results[index] = payload
            elif kind == "error":
                raise WorkerFailed(f"worker {index} failed:\n{payload}")
            elif on_message is not None:
                on_message(kind, index, payload, shared)
        return [results[i] for i in range(WORKERS)]

    def close(self) -> None:
        """Stop the workers (asking first, then terminating what is left). Safe twice."""
        for inbox in self._inboxes:
            inbox.put(None)
        deadline = time.monotonic() + 10
        for proc in self._procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for q in self._inboxes:
            q.close()
        if self._shared is not None:
            self._shared.results.close()
        self._procs, self._inboxes, self._shared = [], [], None
