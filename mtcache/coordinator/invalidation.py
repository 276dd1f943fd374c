"""The cross-host invalidation stream.

Every ``set``, ``delete`` and ``clear`` a coordinator serves is appended to the
Redis stream ``<prefix>inval`` (``XADD ... MAXLEN ~ N``) as ``{seq, origin, op,
key, stamp}``, in the same pipelined round trip as the L2 write. On a Redis
Cluster each group of keys (see :class:`~mtcache.coordinator.l2.Layout`) has a
stream of its own, in its slot, with its own reader, sequence numbers and gap
detection (:class:`ShardedInvalidation`): a gap in one drops L1 as any gap does. Fill notices
(``op = "fill"``: a computed value just reached L2) travel the same way: they
wake other hosts waiting for that key's distributed lease, and drop what is older
than the fill from their L1 like any write (a fill stamped after a concurrent set
of another host wins over it in Redis, and that host must not keep its set).

Each coordinator runs one reader task on its own connection (blocking
``XREAD``): it skips its own entries and, for the others', drops the key from
L1 unless L1 holds a newer write (by stamp), so near copies die too.

Sequence numbers and gaps. ``seq`` is computed by the publishing script from
the stream itself (the newest entry's ``seq``, plus one for every entry after
it, foreign ones included), so every entry of the stream, whoever wrote it,
takes the next number and there is no side key for ``maxmemory`` to evict. The
reader remembers the id and ``seq`` of the last entry it read and resumes after
that id. An entry whose ``seq`` does not follow, or a stream that, on resuming,
no longer continues from the last entry read (trimmed while the reader was
away, or gone with a Redis that restarted empty), is a *gap*: entries came and
went unseen, the coordinator cannot know which keys changed, and L1 is dropped
(except this host's own writes still waiting to be replayed). Pub/sub would
lose messages silently on a disconnect; a stream does not.

A read that brings only this host's own entries (its own writes woke the reader)
is followed by a pause of ``own_pause`` (2 ms) before the next read: a host that
writes back to back then pays one reader wake-up (a read and a new ``XREAD``,
about a third of a write's CPU in the coordinator) per pause rather than per
write. Other hosts' entries wait at most that much longer, and only while this
host writes; a read that brings any of them is followed at once by the next.

A failover may lose entries, with their writes, that the old master acknowledged and had not yet
passed to its replica. A reader that had read such an entry sees the stream go back (a gap). For this
host's own writes whose entries it had not read yet, the reader keeps their stamps: when it resumes
after losing Redis, it reads on to the newest entry the stream had at that moment, and any of them
it did not meet on the way was lost (or never sent) and is dropped from L1 unless it waits in the
backlog to be replayed (``on_lost``); what Redis holds is then read again.

The reader is supervised: a Redis failure is a disconnect (resume later); any
other exception is logged, counted, and treated as a gap; a malformed entry
(not written by mtcache) is skipped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ClusterDownError, RedisError

from mtcache.coordinator.l2 import PUBLISH_LUA, AnyRedis, Layout, _deadline
from mtcache.coordinator.lane import ensure_connected, pack_commands
from mtcache.redis_urls import async_client

__all__ = ["InvalidationStream", "ShardedInvalidation", "new_origin"]

log = logging.getLogger("mtcache.coordinator")

# KEYS: stream; ARGV: maxlen, origin, op, key, stamp. The new entry's seq follows the newest entry that
# carries one, counting every entry after it (entries written by others than mtcache take a number too).
_PUBLISH = PUBLISH_LUA + """
return publish(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""

BLOCK_MS = 1000
BATCH = 1000
#: seconds the reader waits after a read that brought only this host's own entries
OWN_PAUSE = 0.002
#: How many entries the publishing script and the resume check look through for one with a ``seq``.
_LOOKBACK = 16
#: The most of this host's own writes, published and not read back yet, whose stamps the reader keeps.
_UNSEEN_MAX = 65_536
#: The operations whose entries the reader watches for after a reconnect (see the module docstring).
_WATCHED = ("set", "del", "fill")
_OPS = ("set", "del", "clear", "fill", "tag")

Entry = tuple[bytes, dict[bytes, bytes]]


def new_origin() -> str:
    """A unique id for this coordinator process."""
    return f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"


def _seq(fields: dict[bytes, bytes]) -> int | None:
    raw = fields.get(b"seq")
    if raw is None or not raw.isdigit():
        return None
    return int(raw)


def _entry_key(entry_id: str | None) -> tuple[int, int]:
    """A stream entry id as a pair that sorts as Redis orders ids (``(0, 0)`` for none or a malformed one)."""
    head, _, tail = (entry_id or "").partition("-")
    return (int(head), int(tail or 0)) if head.isdigit() and (not tail or tail.isdigit()) else (0, 0)


def _entry_ms(entry_id: str) -> int:
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


class InvalidationStream:
    """Publishes this host's writes and applies the other hosts'.

    :param writer: the L2 client (publishes go into its pipelines).
    :param stream: the stream's key.
    :param reader_url: the Redis URL for the reader's own connection.
    :param on_invalidate: ``(key, stamp)`` another host wrote ``key``; True if that applied (L1 held nothing newer).
    :param on_clear: ``(stamp)`` another host cleared the namespace.
    :param on_gap: ``(reason)`` entries were lost: L1 cannot be vouched for.
    :param on_fill: ``(key)`` another host filled ``key`` (its value is in L2 now).
    :param on_stamp: ``(stamp, entry_ms)`` a stamp and a Redis time read from the stream (for the clock).
    :param on_tag: ``(tag, stamp)`` a host invalidated ``tag`` (see :mod:`mtcache.coordinator.tags`).
    :param on_lost: ``(key, stamp)`` this host's write of ``key`` at ``stamp`` is not in the stream after a
        reconnect: lost with a failover, or never sent (see the module docstring).
    :param block_ms: the longest blocking read (keep it well under the staleness bound).
    :param own_pause: seconds to wait after a read that brought only this host's own entries (0: none).
    """

    def __init__(
        self,
        writer: AnyRedis,
        stream: str,
        *,
        reader_url: str,
        maxlen: int,
        timeout: float,
        origin: str,
        on_invalidate: Callable[[str, int], bool],
        on_clear: Callable[[int], None],
        on_gap: Callable[[str], None],
        on_fill: Callable[[str], None],
        on_stamp: Callable[[int, int], None],
        on_tag: Callable[[str, int], None] | None = None,
        on_lost: Callable[[str, int], None] | None = None,
        block_ms: int = BLOCK_MS,
        own_pause: float = OWN_PAUSE,
    ) -> None:
        self.stream = stream
        #: how long one blocking read waits: the reader hears from Redis at least this often
        self.block_ms = block_ms
        self.own_pause = own_pause
        self.maxlen = maxlen
        self.origin = origin
        #: the longest a blocking read may take before Redis counts as gone
        self._read_bound = block_ms / 1000 + timeout + 1
        self._reader = async_client(reader_url, socket_timeout=self._read_bound, socket_connect_timeout=timeout)
        #: the blocking reads' own connection (see _xread)
        self._conn: AbstractConnection | None = None
        #: on a cluster: learn the slot map again before the next connection (a read failed since the last)
        self._relearn = False
        self._on_invalidate = on_invalidate
        self._on_clear = on_clear
        self._on_gap = on_gap
        self._on_fill = on_fill
        self._on_stamp = on_stamp
        self._on_tag = on_tag
        self._on_lost = on_lost
        #: this host's writes published and not read back yet: stamp -> key
        self._unseen: OrderedDict[int, str] = OrderedDict()
        #: after a reconnect: those of them to meet before the stream's newest entry at that moment
        self._suspects: dict[int, str] = {}
        self._suspect_until: tuple[int, int] = (0, 0)
        self.last_id: str | None = None
        self.last_seq = 0
        self.connected = False
        self.ever_connected = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: when the reader last heard from Redis (a blocking read returns at least
        #: every block_ms): the staleness bound counts from here, so a Redis that
        #: hangs counts as gone before the socket timeout says so
        self.last_ok = time.monotonic()
        #: set once the reader has connected and found where to read from
        self.synced = asyncio.Event()
        self.counters = dict.fromkeys(
            ("invalidations_sent", "invalidations_received", "invalidations_applied", "invalidations_ignored",
             "invalidation_gaps", "fill_notices_received", "stream_malformed", "stream_reader_errors",
             "own_entries_lost"),
            0,
        )
        self.lag_ms = 0.0

    # -- publishing -----------------------------------------------------------

    def entry(self, op: str, key: str, stamp: int) -> tuple[str, list[Any]]:
        """The stream and the arguments of the entry telling of ``op`` on ``key`` (for a script that
        writes and publishes in one call, see :meth:`mtcache.coordinator.l2.L2Tier.queue_write`)."""
        self._sent(op, key, stamp)
        return self.stream, [self.maxlen, self.origin, op, key, stamp]

    def publish(self, pipe: Any, op: str, key: str, stamp: int) -> None:
        """Queue the publication of ``op`` on ``key`` with the write's ``stamp`` into
        ``pipe`` (a pipeline of the writer), so it travels with the L2 write it describes."""
        pipe.eval(_PUBLISH, 1, self.stream, self.maxlen, self.origin, op, key, stamp)
        self._sent(op, key, stamp)

    def _sent(self, op: str, key: str, stamp: int) -> None:
        if op != "fill":
            self.counters["invalidations_sent"] += 1
        if op in _WATCHED and self._on_lost is not None:
            unseen = self._unseen
            unseen[stamp] = key
            if len(unseen) > _UNSEEN_MAX:
                unseen.popitem(last=False)

    # -- reading --------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"connected"`` (reading), ``"connecting"`` (not connected yet) or ``"disconnected"``."""
        if self.connected:
            return "connected"
        return "disconnected" if self.ever_connected else "connecting"

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
            await asyncio.wait({self._task}, timeout=self.block_ms / 1000 * 2 + 1)
        await self._drop_conn()
        await self._reader.aclose()

    async def _run(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                if not self.connected:
                    await self._resume()
                    self.connected = self.ever_connected = True
                    self.last_ok = time.monotonic()
                    self.synced.set()
                    delay = 0.05
                reply = await self._xread()
                self.last_ok = time.monotonic()
                # RESP3 answers a map of streams, RESP2 a list of [stream, entries] pairs
                read = others = 0
                for _stream, entries in (reply.items() if isinstance(reply, dict) else reply or ()):
                    for entry_id, flat in entries:
                        read += 1
                        # a raw reply's fields are a flat list; redis-py's (on a cluster) a dict
                        fields = flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))
                        others += self._apply(entry_id.decode(), fields)
                if self._suspects and _entry_key(self.last_id) >= self._suspect_until:
                    self._lost()
                if read and not others:
                    await self._after_own()
            # RuntimeError: uvloop's 'unable to perform operation on <TCPTransport closed=True>', what redis-py
            # raises writing to a connection a reset closed (a lost link, not a bug: resume, do not drop L1)
            except (RedisError, OSError, asyncio.TimeoutError, RuntimeError) as exc:
                if self.connected:
                    log.warning("invalidation stream reader lost Redis (%s); will resume after %s", exc, self.last_id)
                    self.connected = False
                await asyncio.sleep(delay)  # reconnect back-off
                delay = min(delay * 2, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the reader: start again from a clean slate
                self.counters["stream_reader_errors"] += 1
                log.exception("invalidation stream reader failed; dropping L1 and reading on from the newest entry")
                self.connected = False
                self.last_id = None
                self._gap("the reader failed")
                await asyncio.sleep(delay)  # back-off before trying again
                delay = min(delay * 2, 1.0)

    async def _xread(self) -> Any:
        """One blocking ``XREAD`` after the last entry read: its raw reply (None: nothing came within the block
        time). Every entry of this host's own writes wakes the reader, so this is on the path of every write:
        it goes straight to a connection of its own, without redis-py's per-command machinery (which cost
        several times the round trip's own CPU). A reply that does not come within the block time plus the
        Redis timeout raises TimeoutError and closes the connection (a reply read later would be out of step).
        On a cluster the connection goes to the node that serves the stream's slot (redis-py's cluster client
        would find the keys of each XREAD with a ``COMMAND GETKEYS`` round trip of its own); after any failure
        (a node gone, a ``MOVED`` after a failover) the slot map is learnt again before the next connection.
        """
        conn = self._conn
        try:
            async with _deadline(self._read_bound):
                if conn is None:
                    conn = self._conn = await self._new_conn()
                await ensure_connected(conn)
                await conn.send_packed_command(pack_commands(
                    [("XREAD", "COUNT", BATCH, "BLOCK", self.block_ms, "STREAMS", self.stream,
                      self.last_id or "0-0")]), check_health=False)
                # no per-read timeout: redis-py answers None for one, as Redis does for an empty block
                reply = await conn.read_response(timeout=math.inf)
            self._relearn = False
            return reply
        except BaseException:
            await self._drop_conn()
            raise

    async def drop_connections(self) -> None:
        """Close the reader's connections now (the master moved): the blocking read in flight fails, and the
        reader resumes on new ones."""
        await self._drop_conn()
        if not isinstance(self._reader, RedisCluster):
            await self._reader.connection_pool.disconnect()

    async def _new_conn(self) -> AbstractConnection:
        """A connection of its own for the blocking reads, without a socket timeout (the deadline bounds each
        read): one of the pool's kind, or on a cluster one to the node that serves the stream now."""
        reader = self._reader
        if not isinstance(reader, RedisCluster):
            pool = reader.connection_pool
            return pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        if self._relearn:
            await reader.nodes_manager.initialize()
        else:
            await reader.initialize()
        self._relearn = True  # until a read succeeds: the next connection learns the slot map again
        node = reader.get_node_from_key(self.stream)
        if node is None:
            raise ClusterDownError(f"no node of the cluster serves the slot of {self.stream}")
        return node.connection_class(**{**node.connection_kwargs, "socket_timeout": None})

    async def _drop_conn(self) -> None:
        """Close the blocking reads' connection (its next use opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def _resume(self) -> None:
        """Resync (below); after a reconnect, note which of this host's own writes must be met before the
        stream's newest entry, and if it is already there, report those that were not."""
        suspects = dict(self._unseen) if self.ever_connected and self._on_lost is not None else {}
        gaps = self.counters["invalidation_gaps"]
        newest = await self._resync()
        if self.counters["invalidation_gaps"] != gaps:
            suspects = {}  # L1 was dropped (but for the backlog): nothing of it to vouch for
        self._suspects, self._suspect_until = suspects, _entry_key(newest)
        if suspects and _entry_key(self.last_id) >= self._suspect_until:
            self._lost()

    def _lost(self) -> None:
        """Every suspect not met on the way to the stream's newest entry at the reconnect was lost."""
        lost, self._suspects = self._suspects, {}
        assert self._on_lost is not None
        for stamp, key in lost.items():
            self._unseen.pop(stamp, None)
            self.counters["own_entries_lost"] += 1
            self._on_lost(key, stamp)
        if lost:
            log.warning("%d of this host's writes are not in the invalidation stream after the reconnect (lost "
                        "with a failover, or never sent): dropped from L1 unless waiting for their replay", len(lost))

    async def _resync(self) -> str | None:
        """On (re)connect: find where to read from, and whether entries were lost meanwhile; the id of the
        stream's newest entry (None: the stream is empty)."""
        r = self._reader
        newest: Any = await r.xrevrange(self.stream, count=_LOOKBACK)
        newest_id, newest_seq = self._newest(newest)
        if self.last_id is None:
            # the first connection: whatever L1 took in before it (a coordinator that started while the reader
            # could not connect) saw no invalidations
            self._gap("the reader connects for the first time", count=False)
        elif newest_id is None:
            if self.last_seq > 0:
                self._gap("the invalidation stream is gone (Redis restarted empty?)")
        elif newest_seq != self.last_seq or newest_id != self.last_id:
            after: Any = await r.xrange(self.stream, min=f"({self.last_id}", count=_LOOKBACK)
            if newest_seq < self.last_seq or not self._continues(after):
                self._gap("entries were trimmed from the invalidation stream while the reader was away")
            else:
                return newest_id  # continuous: resume after the last entry read
        else:
            return newest_id  # nothing new
        self.last_id = newest_id or "0-0"
        self.last_seq = newest_seq
        return newest_id

    @staticmethod
    def _newest(entries: list[Entry]) -> tuple[str | None, int]:
        """The id of the newest entry and its seq (0 for an empty stream)."""
        if not entries:
            return None, 0
        for i, (_, fields) in enumerate(entries):
            seq = _seq(fields)
            if seq is not None:
                return entries[0][0].decode(), seq + i
        return entries[0][0].decode(), 0

    def _continues(self, after: list[Entry]) -> bool:
        """True if the entries after the last one read carry the next numbers."""
        for i, (_, fields) in enumerate(after):
            seq = _seq(fields)
            if seq is not None:
                return seq == self.last_seq + 1 + i
        return False

    def _gap(self, reason: str, *, count: bool = True) -> None:
        if count:
            self.counters["invalidation_gaps"] += 1
            log.warning("%s: dropping L1", reason)
        self._on_gap(reason)

    async def _after_own(self) -> None:
        """The pause after a read of only this host's own entries (see the module docstring)."""
        if self.own_pause > 0:
            await asyncio.sleep(self.own_pause)

    def _apply(self, entry_id: str, fields: dict[bytes, bytes]) -> bool:
        """Apply one entry; False if it is one of this host's own (nothing to do but keep count)."""
        seq = _seq(fields)
        self.last_id = entry_id
        if seq is None:
            # not written by mtcache: skipped, but it took a number (see _PUBLISH)
            self.counters["stream_malformed"] += 1
            log.warning("invalidation stream entry %s was not written by mtcache; skipped", entry_id)
            self.last_seq += 1
            return True
        if seq != self.last_seq + 1:
            self._gap(f"invalidation stream gap (seq {seq} after {self.last_seq})")
        self.last_seq = seq
        try:
            origin, op, key = (fields[name].decode() for name in (b"origin", b"op", b"key"))
            stamp = int(fields[b"stamp"])
            if op not in _OPS or stamp < 0:
                raise ValueError(op)
        except (KeyError, ValueError, UnicodeDecodeError):
            self.counters["stream_malformed"] += 1
            log.warning("invalidation stream entry %s is malformed; skipped", entry_id)
            return True
        entry_ms = _entry_ms(entry_id)
        self.lag_ms = max(0.0, time.time() * 1000 - entry_ms)
        self._on_stamp(stamp, entry_ms)
        if origin == self.origin:
            self._unseen.pop(stamp, None)
            self._suspects.pop(stamp, None)
            return False
        if op == "fill":
            self.counters["fill_notices_received"] += 1
            self._on_invalidate(key, stamp)
            self._on_fill(key)
            return True
        self.counters["invalidations_received"] += 1
        if op == "clear":
            self._on_clear(stamp)
        elif op == "tag":
            if self._on_tag is not None:
                self._on_tag(key, stamp)
        elif not self._on_invalidate(key, stamp):
            self.counters["invalidations_ignored"] += 1
            return True
        self.counters["invalidations_applied"] += 1
        return True

    def stats(self) -> dict[str, Any]:
        """Counters, the reader's state and its lag (ms from an entry's creation to
        its application, for the last entry read)."""
        return {
            **self.counters,
            "stream_reader": self.state,
            "stream_reader_lag_ms": round(self.lag_ms, 3),
            "stream_last_id": self.last_id,
        }


class ShardedInvalidation:
    """The invalidation streams of a Redis Cluster: one :class:`InvalidationStream` per group of ``layout``
    (each reads its group's stream on a connection of its own, with its own sequence numbers and gap
    detection), seen by the coordinator as one. A write's entry goes to its key's group's stream, in the
    same script as the write (one slot).

    :param options: what :class:`InvalidationStream` takes besides the writer and the stream.
    """

    def __init__(self, writer: AnyRedis, layout: Layout, **options: Any) -> None:
        self._layout = layout
        self.shards = [InvalidationStream(writer, stream, **options) for stream in layout.streams()]
        #: set once every shard's reader has connected and found where to read from
        self.synced = asyncio.Event()
        self._synced_task: asyncio.Task[None] | None = None

    def _shard(self, key: str) -> InvalidationStream:
        return self.shards[self._layout.group(key)]

    def entry(self, op: str, key: str, stamp: int) -> tuple[str, list[Any]]:
        """The stream of ``key``'s group and the entry's arguments (see :meth:`InvalidationStream.entry`)."""
        return self._shard(key).entry(op, key, stamp)

    def publish(self, pipe: Any, op: str, key: str, stamp: int) -> None:
        """Queue the publication of ``op`` on ``key`` on its group's stream (see
        :meth:`InvalidationStream.publish`)."""
        self._shard(key).publish(pipe, op, key, stamp)

    @property
    def connected(self) -> bool:
        """True while every shard's reader reads."""
        return all(shard.connected for shard in self.shards)

    @property
    def ever_connected(self) -> bool:
        """True once any shard's reader connected."""
        return any(shard.ever_connected for shard in self.shards)

    @property
    def last_ok(self) -> float:
        """When the shard heard from least recently last heard from Redis (see
        :attr:`InvalidationStream.last_ok`)."""
        return min(shard.last_ok for shard in self.shards)

    @property
    def state(self) -> str:
        """``"connected"`` (every shard reads), ``"connecting"`` (none connected yet) or ``"disconnected"``."""
        if self.connected:
            return "connected"
        return "disconnected" if self.ever_connected else "connecting"

    @property
    def lag_ms(self) -> float:
        """The largest lag of the shards (see :meth:`InvalidationStream.stats`)."""
        return max(shard.lag_ms for shard in self.shards)

    @property
    def counters(self) -> dict[str, int]:
        """The shards' counters, summed."""
        total: dict[str, int] = {}
        for shard in self.shards:
            for name, value in shard.counters.items():
                total[name] = total.get(name, 0) + value
        return total

    def start(self) -> None:
        """Start every shard's reader."""
        for shard in self.shards:
            shard.start()
        self._synced_task = asyncio.get_running_loop().create_task(self._all_synced())

    async def _all_synced(self) -> None:
        await asyncio.gather(*(shard.synced.wait() for shard in self.shards))
        self.synced.set()

    async def close(self) -> None:
        """Stop every reader and close their connections."""
        if self._synced_task is not None:
            self._synced_task.cancel()
        await asyncio.gather(*(shard.close() for shard in self.shards))

    def stats(self) -> dict[str, Any]:
        """Counters summed over the shards, the readers' state, the largest lag, the last entry read of each
        stream, and how many shards."""
        return {
            **self.counters,
            "stream_reader": self.state,
            "stream_reader_lag_ms": round(self.lag_ms, 3),
            "stream_last_id": None,
            "stream_last_ids": {shard.stream: shard.last_id for shard in self.shards},
            "stream_shards": len(self.shards),
        }
