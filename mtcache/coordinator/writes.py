"""Ordered, batched L2 writes.

Every write the coordinator sends to Redis (a set with its stream entry, a
delete, a fill, a clear) goes through one :class:`WriteQueue`, which sends
everything queued so far in a single pipelined round trip, in queue order:
two writes of one key reach Redis in the order they reached L1 (a connection
pool would reorder them), and a burst of writes costs one round trip, not one
each (a lock around each write made them queue behind one another).

A write-behind (its caller already has its answer) may wait up to its own
delay for others to share its round trip; any other write, or a full batch,
sends everything queued at once.

Batches are sent from loop callbacks, not tasks: a write queued in a loop
turn is sent at the end of that turn (a ``call_soon``), with every other write
that came in it, and each batch's replies, handed over by the lane as they are
read, settle its writes and send what queued meanwhile. A ``set`` or
``delete`` from a worker is queued by its request's own call and answered by
a callback (:meth:`WriteQueue.write_soon`): no task, no coroutine and no
future on its path. A batch waits a turn more while ``others_waiting()`` says
that requests which came in the same loop turn have yet to start (their tasks'
writes go with it: with 8 busy workers, sending without them cut the writes
per round trip from 8 to 3.3 and added a quarter to the CPU per write). What
must wait goes from a task: writes-behind held for their delay, a clear (its
purge takes round trips of its own), and a batch that finds the lane busy
with a round trip of another caller.

The queue also knows which keys have a write in flight: until Redis has done
it, an L1 miss must not read the key from L2 and promote what it finds there,
which may be the value a delete or clear is about to remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtcache.coordinator.l2 import L2Tier, nobody_waiting
from mtcache.coordinator.lane import settles
from mtcache.errors import L2Error

__all__ = ["WriteQueue"]

log = logging.getLogger("mtcache.coordinator")

Build = Callable[[Any], None]
#: What a write is answered with: its replies, or the L2Error of the round trip that carried it.
Done = Callable[[list[Any] | L2Error], None]

#: writes-behind held for a shared round trip go at once when this many are queued
HOLD_MAX = 256


@dataclass(eq=False)
class _Item:
    build: Build
    key: str | None
    clear: int | None  # the stamp of a clear
    due: float | None = None  # a write-behind: the loop time by which it must be sent
    failed: Callable[[L2Error], None] | None = None  # told of a failure before the key is released
    #: what answers the write: its replies, or the L2Error of its round trip (for write() and clear(), what
    #: settles the future their caller awaits)
    done: Done | None = None


def _l2_error(exc: Exception) -> L2Error:
    """``exc`` as the L2Error its writers expect; anything else is a bug, logged, and still
    never leaves a write unsettled (its caller would wait, and its key stay busy, for good)."""
    if isinstance(exc, L2Error):
        return exc
    log.error("an L2 write batch failed unexpectedly", exc_info=exc)
    error = L2Error(f"L2 write failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class WriteQueue:
    """Writes to ``l2`` in order, batched; see the module docstring."""

    def __init__(self, l2: L2Tier) -> None:
        self.l2 = l2
        self._queue: deque[_Item] = deque()
        #: the task sending what must wait (see the module docstring), one step at a time
        self._task: asyncio.Task[None] | None = None
        #: a batch sent from a callback is in flight
        self._in_flight = False
        #: a callback is due at the end of this loop turn to send what is queued
        self._scheduled = False
        #: whether requests that came in this loop turn have yet to start (see the module docstring)
        self.others_waiting: Callable[[], bool] = nobody_waiting
        self._pending: Counter[str] = Counter()
        self._clearing = 0
        #: set when the queue must be sent at once (a write that is not behind, a full batch)
        self._now = asyncio.Event()
        self.batches = 0
        self.writes = 0

    def busy(self, key: str, *, besides: int = 0) -> bool:
        """True while a clear, or more than ``besides`` writes of ``key``, are queued or in flight."""
        return self._clearing > 0 or self._pending.get(key, 0) > besides

    async def write(
        self, key: str | None, build: Build, *, delay: float = 0.0, failed: Callable[[L2Error], None] | None = None
    ) -> list[Any]:
        """Queue the commands ``build(pipe)`` adds; return their replies once Redis
        has run them. With a ``delay`` (seconds; a write-behind) they may wait that long
        for other writes to share the round trip. ``failed`` is called with the error of a
        round trip that failed while ``key`` still counts as busy: what it records (the
        backlog) holds before any read may take the key from L2 again, which the caller,
        resuming a loop turn later, could not promise. A caller cancelled meanwhile does not
        take its write back: it goes, and its key is busy until it has.

        :raises L2Error: the round trip that carried them failed.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self.write_soon(key, build, failed=failed, done=settles(fut), due=loop.time() + delay if delay > 0 else None)
        return await fut

    def write_soon(
        self, key: str | None, build: Build, *, failed: Callable[[L2Error], None] | None, done: Done,
        due: float | None = None,
    ) -> None:
        """Queue the commands ``build(pipe)`` adds, as :meth:`write` does, for a caller that does not wait:
        ``done`` gets their replies once Redis has run them, or the error of a round trip that failed (after
        ``failed``); once, and never from this call. ``due``: a write-behind's loop time to be sent by."""
        if key is not None:
            self._pending[key] += 1
        self._append(_Item(build, key, clear=None, due=due, failed=failed, done=done))

    def send_now(self) -> None:
        """Stop holding writes-behind: send what is queued at once."""
        self._now.set()

    async def clear(self, stamp: int, build: Build) -> int:
        """After every write queued before: run ``build(pipe)`` (the new namespace
        floor ``stamp`` and its stream entry), then remove the records older than
        the floor; the number of values removed.

        :raises L2Error: Redis failed.
        """
        self._clearing += 1
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._append(_Item(build, None, clear=stamp, done=settles(fut)))
        return (await fut)[0]

    def _append(self, item: _Item) -> None:
        queue = self._queue
        queue.append(item)
        if item.due is None or len(queue) >= HOLD_MAX:
            self._now.set()
        self._wake()

    def _wake(self) -> None:
        """Have what is queued sent at the end of this loop turn, unless a batch is in flight or the task runs
        (each sends the next when it is over)."""
        if self._scheduled or self._in_flight or (self._task is not None and not self._task.done()):
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Send what is queued: from this callback if it may go now, else from the task."""
        self._scheduled = False
        queue = self._queue
        if not queue or self._in_flight or (self._task is not None and not self._task.done()):
            return
        if self.others_waiting():  # requests of this turn yet to start: a turn more, for their writes
            self._wake()
            return
        if queue[0].clear is None and self._due() and self.l2.can_send_now():
            self._send_now()
            return
        self._task = task = asyncio.get_running_loop().create_task(self._step())
        task.add_done_callback(lambda _: self._wake())

    def _due(self) -> bool:
        """Whether what is queued must go now (not only writes-behind within their delay)."""
        return len(self._queue) >= HOLD_MAX or any(item.due is None for item in self._queue)

    async def close(self) -> None:
        """Stop sending; queued writes fail with L2Error (a batch in flight ends as the lane lets it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        error = L2Error("the coordinator is stopping")
        while self._queue:
            self._settle([self._queue.popleft()], error=error)

    async def _hold(self) -> None:
        """While only writes-behind are queued: wait until the first is due, or until something must go."""
        queue = self._queue
        if self._due():
            return
        self._now.clear()
        loop = asyncio.get_running_loop()
        timer = loop.call_at(min(item.due for item in queue if item.due is not None), self._now.set)
        try:
            await self._now.wait()
        finally:
            timer.cancel()

    async def _step(self) -> None:
        """The task's part: once the writes-behind are due (or something must go), the clear at the head of
        the queue, or one batch (waiting for the lane's turn)."""
        queue = self._queue
        await self._hold()
        if not queue:
            return
        if queue[0].clear is not None:
            item = queue.popleft()
            assert item.clear is not None
            try:
                await self.l2.pipeline("clear", item.build)
                removed = await self.l2.purge(item.clear)
            except Exception as exc:  # every queued write is settled, whatever failed
                self._settle([item], error=_l2_error(exc))
            else:
                self._settle([item], replies=[removed])
            return
        batch, counts, build_all = self._take()
        try:
            replies = await self.l2.pipeline("write", build_all)
        except Exception as exc:  # every queued write is settled, whatever failed
            self._settle(batch, error=_l2_error(exc))
        except BaseException:
            self._settle(batch, error=L2Error("the write was cancelled: the coordinator is stopping"))
            raise
        else:
            self._answer(batch, counts, replies)

    def _send_now(self) -> None:
        """Send the writes at the head of the queue, up to the first clear, in one round trip from this call;
        the lane's callback settles them and has the next batch sent."""
        batch, counts, build_all = self._take()
        self._in_flight = True

        def answered(outcome: list[Any] | L2Error) -> None:
            self._in_flight = False
            if isinstance(outcome, L2Error):
                self._settle(batch, error=outcome)
            else:
                self._answer(batch, counts, outcome)
            self._wake()

        try:
            self.l2.send_now("write", build_all, answered)
        except Exception as exc:  # the build failed: nothing was sent
            answered(_l2_error(exc))

    def _take(self) -> tuple[list[_Item], list[int], Build]:
        """The writes at the head of the queue, up to the first clear (taken off it), the number of commands
        each adds, and what adds them all to a batch."""
        queue = self._queue
        batch: list[_Item] = []
        while queue and queue[0].clear is None:
            batch.append(queue.popleft())
        counts: list[int] = []

        def build_all(pipe: Any) -> None:
            for item in batch:
                before = len(pipe)
                item.build(pipe)
                counts.append(len(pipe) - before)

        self.batches += 1
        self.writes += len(batch)
        return batch, counts, build_all

    def _answer(self, batch: list[_Item], counts: list[int], replies: list[Any]) -> None:
        start = 0
        for item, count in zip(batch, counts, strict=True):
            self._settle([item], replies=replies[start : start + count])
            start += count

    def _settle(self, items: list[_Item], *, replies: list[Any] | None = None, error: L2Error | None = None) -> None:
        for item in items:
            if error is not None and item.failed is not None:
                try:
                    item.failed(error)
                except Exception:  # a bug there must not leave this write, or the rest, unsettled
                    log.exception("recording an L2 write that failed failed")
            if item.key is not None:
                self._pending[item.key] -= 1
                if self._pending[item.key] <= 0:
                    del self._pending[item.key]
            if item.clear is not None:
                self._clearing -= 1
            if item.done is not None:
                try:
                    item.done(error if error is not None else replies or [])
                except Exception:  # a bug there must not leave the rest unsettled
                    log.exception("answering an L2 write failed")
