"""Writes that did not reach Redis, replayed when it answers again.

While Redis is unreachable, a ``set``, ``delete`` or ``clear`` still updates L1
and is acknowledged, but its L2 write and its stream entry are skipped. Without
a record of them, the value Redis still holds would come back: read on an L1
miss and promoted once Redis answers, or served to other hosts that never heard
of the write. The backlog remembers those keys (or that a clear was missed);
until they are replayed, reads do not take them from L2; on reconnect each key
is written with what L1 holds now (or deleted), with its stream entry, before
the coordinator uses Redis again. Past :data:`LIMIT` keys it remembers "all of
them" and replays a clear of the namespace instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mtcache.coordinator.l2 import L2Tier
from mtcache.coordinator.writes import WriteQueue

__all__ = ["LIMIT", "WriteBacklog"]

#: Keys remembered one by one; beyond this, the namespace is cleared on replay.
LIMIT = 100_000
_BATCH = 500

Publish = Callable[[Any, str, str], None]


class WriteBacklog:
    """Keys whose L2 write was skipped or failed (see the module docstring)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.everything = False

    def add(self, key: str) -> None:
        """``key``'s write did not reach Redis."""
        if not self.everything:
            self.keys.add(key)
            if len(self.keys) > LIMIT:
                self.add_all()

    def add_all(self) -> None:
        """A clear (or too many writes to remember) did not reach Redis."""
        self.everything = True
        self.keys.clear()

    def covers(self, key: str) -> bool:
        """True if what Redis holds for ``key`` may be older than L1's truth."""
        return self.everything or key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    async def replay(
        self,
        writes: WriteQueue,
        l2: L2Tier,
        publish: Publish,
        current: Callable[[str], tuple[bytes, float] | None],
    ) -> int:
        """Bring Redis and the other hosts up to date; return how many keys were
        replayed. ``current(key)`` is L1's value and remaining TTL, or None.

        :raises L2Error: Redis failed again; what is not replayed stays remembered.
        """
        replayed = 0
        while self.everything or self.keys:
            if self.everything:
                self.everything = False
                try:
                    await writes.clear(lambda pipe: publish(pipe, "clear", ""))
                except BaseException:
                    self.everything = True
                    raise
                continue
            batch = list(self.keys)[:_BATCH]

            def build(pipe: Any, batch: list[str] = batch) -> None:
                for key in batch:
                    found = current(key)
                    if found is None:
                        l2.queue_delete(pipe, key)
                        publish(pipe, "del", key)
                    else:
                        l2.queue_set(pipe, key, found[0], found[1])
                        publish(pipe, "set", key)

            await writes.write(None, build)
            self.keys.difference_update(batch)
            replayed += len(batch)
        return replayed
