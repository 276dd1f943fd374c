"""The cross-host invalidation stream.

Every ``set``, ``delete`` and ``clear`` a coordinator serves is appended to the
Redis stream ``<prefix>inval`` (``XADD ... MAXLEN ~ N``) as ``{seq, origin, op,
key}``, in the same pipelined round trip as the L2 write. ``seq`` comes from
``INCR <prefix>inval:seq`` in the same Lua script as the ``XADD``, so entries
carry consecutive numbers across all hosts. Fill notices (``op = "fill"``: a
computed value just reached L2) travel the same way but invalidate nothing;
they wake other hosts waiting for that key's distributed lease.

Each coordinator runs one reader task on its own connection (blocking
``XREAD``): it skips its own entries and, for the others', drops the key from
L1 and bumps its version counter, so near copies die too.

Gaps: the reader remembers the id and ``seq`` of the last entry it applied and
resumes after that id when the connection comes back. A ``seq`` that does not
follow the last one means entries were trimmed away before we read them (a
paused host, a tiny MAXLEN). A changed ``<prefix>inval:epoch`` (a random token
that the first reader sets with ``SET NX``) after a reconnect means Redis lost
its data (restarted empty): entries may have come and gone unseen. Either way we
cannot know which keys changed, so the whole L1 is dropped and every counter
bumped (``invalidation_gaps``). Pub/sub would lose messages silently on a disconnect;
a stream does not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["InvalidationStream", "new_origin"]

log = logging.getLogger("mtcache.coordinator")

# KEYS: stream, seq counter; ARGV: maxlen, origin, op, key
_PUBLISH = """
local seq = redis.call('INCR', KEYS[2])
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                  'seq', seq, 'origin', ARGV[2], 'op', ARGV[3], 'key', ARGV[4])
"""

BLOCK_MS = 1000
BATCH = 1000


def new_origin() -> str:
    """A unique id for this coordinator process."""
    return f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"


class InvalidationStream:
    """Publishes this host's writes and applies the other hosts'.

    :param writer: the L2 client (publishes go into its pipelines).
    :param reader_url: the Redis URL for the reader's own connection.
    :param on_invalidate: ``(key)`` another host changed ``key``.
    :param on_clear: ``(is_gap)`` drop the whole L1 (another host's clear, or a gap).
    :param on_fill: ``(key)`` another host filled ``key`` (its value is in L2 now).
    """

    def __init__(
        self,
        writer: Redis,
        prefix: str,
        *,
        reader_url: str,
        maxlen: int,
        timeout: float,
        origin: str,
        on_invalidate: Callable[[str], None],
        on_clear: Callable[[bool], None],
        on_fill: Callable[[str], None],
    ) -> None:
        self.stream = prefix + "inval"
        self.seq_key = prefix + "inval:seq"
        self.epoch_key = prefix + "inval:epoch"
        self.epoch: bytes | None = None
        self.ever_connected = False
        self.maxlen = maxlen
        self.origin = origin
        self._reader = Redis.from_url(
            reader_url, socket_timeout=BLOCK_MS / 1000 + timeout + 1, socket_connect_timeout=timeout
        )
        self._on_invalidate = on_invalidate
        self._on_clear = on_clear
        self._on_fill = on_fill
        self.last_id: str | None = None
        self.last_seq = 0
        self.connected = False
        self.disconnected_since: float | None = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: when the reader last heard from Redis (a blocking read returns at least
        #: every BLOCK_MS): the staleness bound counts from here, so a Redis that
        #: hangs counts as gone before the socket timeout says so
        self.last_ok = time.monotonic()
        #: set once the reader has connected and found where to read from
        self.synced = asyncio.Event()
        self.counters = dict.fromkeys(
            ("invalidations_sent", "invalidations_received", "invalidations_applied", "invalidation_gaps",
             "fill_notices_received"),
            0,
        )
        self.lag_ms = 0.0

    # -- publishing -----------------------------------------------------------

    def publish(self, pipe: Any, op: str, key: str = "") -> None:
        """Queue the publication of ``op`` on ``key`` into ``pipe`` (a pipeline of the
        writer), so it travels with the L2 write it describes."""
        # EVAL, not EVALSHA: redis-py pipelines check every registered script with an
        # extra SCRIPT EXISTS round trip; the script text is small and Redis caches it
        pipe.eval(_PUBLISH, 2, self.stream, self.seq_key, self.maxlen, self.origin, op, key)
        if op != "fill":
            self.counters["invalidations_sent"] += 1

    # -- reading --------------------------------------------------------------

    def start(self) -> None:
        """Start the reader task."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop the reader and close its connection (within about one block time)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            # a cancel that lands together with redis-py's own read timeout can be
            # swallowed (the task goes back to XREAD); the flag ends the loop then,
            # at the latest when that block returns
            await asyncio.wait({self._task}, timeout=BLOCK_MS / 1000 * 2 + 1)
        await self._reader.aclose()

    async def _run(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                if not self.connected:
                    await self._resync()
                    self.connected = self.ever_connected = True
                    self.last_ok = time.monotonic()
                    self.synced.set()
                    self.disconnected_since = None
                    delay = 0.05
                # redis-py's stubs type these replies loosely: they are the raw RESP shapes
                reply: Any = await self._reader.xread({self.stream: self.last_id or "0-0"}, count=BATCH, block=BLOCK_MS)
                self.last_ok = time.monotonic()
                for _stream, entries in reply or ():
                    for entry_id, fields in entries:
                        self._apply(entry_id.decode(), fields)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                if self.connected:
                    log.warning("invalidation stream reader lost Redis (%s); will resume after %s", exc, self.last_id)
                    self.connected = False
                    self.disconnected_since = time.monotonic()
                await asyncio.sleep(delay)  # reconnect back-off
                delay = min(delay * 2, 1.0)

    async def _resync(self) -> None:
        """On (re)connect: find where to read from, and whether Redis lost entries."""
        r = self._reader
        epoch: Any = await r.set(self.epoch_key, secrets.token_hex(8), nx=True, get=True)
        if epoch is None:  # we just created it: Redis had no epoch
            epoch = await r.get(self.epoch_key)
        restarted = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        if self.last_id is not None and not restarted:
            return  # resume after the last entry applied; seq numbers reveal any trim
        if restarted:
            log.warning("Redis lost the invalidation stream (restarted empty?): dropping L1")
            self._gap()
        else:
            # the first connection: whatever L1 took in before it (a coordinator that
            # started while the reader could not connect) saw no invalidations
            self._on_clear(False)
        newest: Any = await r.xrevrange(self.stream, count=1)
        if newest:
            entry_id, fields = newest[0]
            self.last_id = entry_id.decode()
            self.last_seq = int(fields[b"seq"])
        else:
            raw_seq = await r.get(self.seq_key)
            self.last_id, self.last_seq = "0-0", int(raw_seq) if raw_seq is not None else 0

    def _gap(self) -> None:
        self.counters["invalidation_gaps"] += 1
        self._on_clear(True)

    def _apply(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            seq = int(fields[b"seq"])
            origin, op, key = (fields[name].decode() for name in (b"origin", b"op", b"key"))
        except (KeyError, ValueError, UnicodeDecodeError):
            # not written by mtcache: skip it (our entries' seq numbers still reveal gaps)
            log.warning("invalidation stream entry %s is malformed; skipped", entry_id)
            self.last_id = entry_id
            return
        if seq != self.last_seq + 1:
            log.warning("invalidation stream gap (seq %d after %d): dropping L1", seq, self.last_seq)
            self._gap()
        self.last_seq = seq
        self.last_id = entry_id
        self.lag_ms = max(0.0, time.time() * 1000 - int(entry_id.split("-", 1)[0]))
        if origin == self.origin:
            return
        if op == "fill":
            self.counters["fill_notices_received"] += 1
            self._on_fill(key)
            return
        self.counters["invalidations_received"] += 1
        if op == "clear":
            self._on_clear(False)
        else:
            self._on_invalidate(key)
        self.counters["invalidations_applied"] += 1

    def stats(self) -> dict[str, Any]:
        """Counters, the reader's state and its lag (ms from an entry's creation to
        its application, for the last entry read)."""
        return {
            **self.counters,
            "stream_reader": "connected" if self.connected else "disconnected",
            "stream_reader_lag_ms": round(self.lag_ms, 3),
            "stream_last_id": self.last_id,
        }
