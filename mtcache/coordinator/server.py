"""The coordinator daemon: accepts workers on a Unix socket and serves them.

One asyncio event loop (uvloop when available). Each connection is an
``asyncio.Protocol``: frames are decoded as bytes arrive; requests that L1 can
answer are answered inline, the rest run as tasks so one slow request (a Redis
read, a lease wait) never holds up the others on the same connection. Replies
carry the request id, so they may come back out of order.

A connection that sends garbage, a truncated or oversized frame, an unknown op,
or anything before a matching hello is closed; the coordinator and every other
connection go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import platform
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from mtcache.config import Settings
from mtcache.coordinator import ops
from mtcache.coordinator.cache import CacheEngine
from mtcache.coordinator.exports import MetricsExports
from mtcache.coordinator.l2 import L2Tier
from mtcache.coordinator.metrics import CoordinatorMetrics
from mtcache.errors import ProtocolError
from mtcache.histogram import LatencyHistogram
from mtcache.mirror import MirrorWriter
from mtcache.protocol import (
    INSPECT,
    MAX_FRAME,
    PROTOCOL_VERSION,
    FrameDecoder,
    Op,
    Status,
    encode_frame,
    validate_request,
)
from mtcache.shm import VersionTable, remove_orphans, retire_segment

__all__ = ["AlreadyRunning", "Coordinator"]

log = logging.getLogger("mtcache.coordinator")

_PEERCRED = struct.Struct("3i")
SWEEP_INTERVAL = 0.25
_TSO_MACHINES = ("x86_64", "amd64", "i386", "i686")
_INSPECT_OPS = (Op.STATS, Op.HEALTH, Op.PING, Op.REPORT)


def _process_running(pid: int) -> bool:
    """False once process ``pid`` is gone, a zombie, or stopped (SIGSTOP, a debugger): it cannot
    compute. True where /proc cannot tell."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True
    return state not in ("T", "t", "Z", "X")


def _holder_alive(holder: object) -> bool:
    """A lease holder lives while its connection is open and its process runs."""
    if not isinstance(holder, _Connection):
        return True
    transport = holder.transport
    return transport is not None and not transport.is_closing() and _process_running(holder.peer_pid)


class AlreadyRunning(RuntimeError):
    """Another coordinator holds this socket's lock."""


def log_destination() -> str:
    """Where this process's log (standard error) goes: the file's path, or what the
    descriptor is (a terminal, a pipe, a socket such as the journal's)."""
    try:
        target = os.readlink(f"/proc/self/fd/{sys.stderr.fileno()}")
    except (OSError, ValueError, AttributeError):
        return "standard error"
    return target if target.startswith("/") and not target.startswith("/dev/") else f"standard error ({target})"


def lock_file(path: str) -> int | None:
    """Open (creating it, mode 0600) and lock ``path`` exclusively without waiting: the
    open file descriptor, or None if another process holds the lock.

    The holder removes the file when it is done (:meth:`Coordinator.stop`), so a lock
    taken on a file that was removed (or replaced) meanwhile is let go and taken again
    on the file now at ``path``: two processes can never each hold "the" lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # removed by the holder that just finished: lock the file there now


#: Largest frame a peer may send before its hello is accepted (a hello is tiny): a longer
#: length prefix is a protocol error, and the connection is closed at once.
PRE_HELLO_MAX_FRAME = 64 * 1024
#: Replies queued for one peer (its transport's write buffer) above which that peer is no
#: longer read and no more of its requests are handled, until the buffer drains to a
#: quarter of this.
WRITE_BUFFER_HIGH = 1024 * 1024
#: Requests of one connection running as tasks at once (L2 reads, lease waits, writes);
#: past this its further requests wait, unread, until one of them finishes.
MAX_TASKS_PER_CONNECTION = 1024
#: How long a peer may stay over the write bound (not reading its replies), or leave a
#: frame larger than PRE_HELLO_MAX_FRAME unfinished, before it is closed.
STALL_LIMIT = 10.0


class _Connection(asyncio.Protocol):
    """One peer. Bytes received go to the frame decoder; requests are taken from it one
    at a time (decoded as they are taken) and answered inline or by a task.

    Bounds, so that a peer cannot grow the coordinator's memory: a frame may be at most
    PRE_HELLO_MAX_FRAME long until the hello is accepted, MAX_FRAME after it; a peer
    whose replies pile up unread (over WRITE_BUFFER_HIGH) or that has
    MAX_TASKS_PER_CONNECTION requests running is not read, and its requests already
    received wait in the decoder's buffer, until the replies drain or a task finishes.
    Replies of tasks finishing meanwhile (a filled lease answers all its waiters at
    once) are kept unencoded, their values shared, and sent once the buffer drains. A
    peer that stays over the write bound, or leaves a frame larger than
    PRE_HELLO_MAX_FRAME unfinished, for STALL_LIMIT seconds is closed and counted
    (``slow_consumers_closed``, ``stalled_frames_closed``; ``write_pauses`` counts the
    times a peer went over the write bound)."""

    def __init__(self, server: Coordinator) -> None:
        self.server = server
        self.engine = server.engine
        self.decoder = decoder = FrameDecoder()
        decoder.max_frame = PRE_HELLO_MAX_FRAME  # MAX_FRAME from the hello on
        self.transport: asyncio.Transport | None = None
        self.ready = False
        self.inspect_only = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.peer_pid = 0
        #: requests of this connection running as tasks, writes included
        self.inflight = 0
        #: the transport's write buffer is over its high-water mark
        self.write_paused = False
        #: write_paused, or MAX_TASKS_PER_CONNECTION requests running: take no more requests
        self.held = False
        #: this peer is not being read (see the class docstring)
        self.read_paused = False
        #: replies of tasks that finished while write_paused, sent once the buffer drains
        self.deferred: list[tuple[int, list[Any]]] = []
        self._slow: asyncio.TimerHandle | None = None  # closes a peer that stays over the write bound
        self._stall: asyncio.TimerHandle | None = None  # closes a peer that leaves a large frame unfinished
        self._waking = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but have its methods
        self.transport = tr = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if uid != os.getuid():
            log.warning("refused a connection from uid %d (pid %d): only uid %d may connect", uid, pid, os.getuid())
            self.server.counters["refused"] += 1
            tr.abort()
            return
        self.peer_pid = pid
        tr.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for task in self.tasks:
            task.cancel()
        self.engine.drop_connection(self)
        self.deferred.clear()
        for timer in (self._slow, self._stall):
            if timer is not None:
                timer.cancel()
        self._slow = self._stall = None

    def eof_received(self) -> bool | None:
        if self.decoder.pending:
            self.server.counters["protocol_errors"] += 1
            log.info("connection from pid %d closed mid-frame", self.peer_pid)
        return None

    # -- back-pressure --------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Add ``data`` to the requests received, and handle them in order until none
        is whole (then read on) or this connection is over a bound (then stop reading
        it). Also called with no data, once a bound is no longer reached."""
        decoder = self.decoder
        decoder.push(data)
        took = False
        rest = 0
        try:
            while not self.held:
                msg = decoder.next_message()
                if msg is None:
                    rest = decoder.pending
                    break
                took = True
                self._handle(msg)
                rest = decoder.pending
                if not rest:  # the usual case: nothing left, no need to look again
                    break
            else:
                self._stop_reading()
                return
        except ProtocolError as exc:
            self._reject(exc)
            return
        if self.read_paused:
            self.read_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        if rest > PRE_HELLO_MAX_FRAME:
            # part of a large frame: it must make progress (a frame completes) within the limit
            if self._stall is None or took:
                if self._stall is not None:
                    self._stall.cancel()
                self._stall = asyncio.get_running_loop().call_later(STALL_LIMIT, self._stalled)
        elif self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stop_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        if self._stall is not None:  # a frame unfinished because we stopped reading is not the peer's doing
            self._stall.cancel()
            self._stall = None

    def pause_writing(self) -> None:
        # the transport's write buffer went over WRITE_BUFFER_HIGH: the peer does not
        # read its replies as fast as it asks for them
        self.write_paused = self.held = True
        self.server.counters["write_pauses"] += 1
        self._stop_reading()
        if self._slow is None:
            self._slow = asyncio.get_running_loop().call_later(STALL_LIMIT, self._too_slow)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.held = self.inflight >= MAX_TASKS_PER_CONNECTION
        if self._slow is not None:
            self._slow.cancel()
            self._slow = None
        if not self._waking:  # not from inside the transport's write path: on the next loop step
            self._waking = True
            asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._waking = False
        tr = self.transport
        if tr is None or tr.is_closing() or self.write_paused:
            return
        deferred = self.deferred
        sent = 0
        while sent < len(deferred) and not self.write_paused:
            rid, payload = deferred[sent]
            sent += 1
            tr.write(encode_frame([rid, *payload]))  # may pause writing again
        del deferred[:sent]
        if self.read_paused:
            self.data_received(b"")

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.server.unstarted.discard(task)  # cancelled before its first step
        self._request_done()

    def _request_started(self) -> None:
        """A request runs on past its own call (a task, or a callback that answers it): it counts against
        MAX_TASKS_PER_CONNECTION until :meth:`_request_done`."""
        self.inflight += 1
        if self.inflight >= MAX_TASKS_PER_CONNECTION:
            self.held = True

    def _request_done(self) -> None:
        self.inflight -= 1
        if self.held and not self.write_paused:
            self.held = False
            tr = self.transport
            if tr is not None and not tr.is_closing():
                self.data_received(b"")

    def _too_slow(self) -> None:
        self._slow = None
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        self.server.counters["slow_consumers_closed"] += 1
        log.warning("closing the connection from pid %d: it left %d bytes of replies unread for %gs",
                    self.peer_pid, tr.get_write_buffer_size(), STALL_LIMIT)
        tr.abort()

    def _stalled(self) -> None:
        self._stall = None
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        self.server.counters["stalled_frames_closed"] += 1
        log.warning("closing the connection from pid %d: it left a frame unfinished (%d bytes of it) for %gs",
                    self.peer_pid, self.decoder.pending, STALL_LIMIT)
        tr.abort()

    # -- requests -------------------------------------------------------------

    def _reject(self, exc: ProtocolError) -> None:
        self.server.counters["protocol_errors"] += 1
        log.info("closing connection from pid %d: %s", self.peer_pid, exc)
        if self.transport is not None:
            self.transport.abort()

    def _send(self, rid: int, payload: list[Any]) -> None:
        tr = self.transport
        if tr is not None and not tr.is_closing():
            if self.write_paused:
                self.deferred.append((rid, payload))
            else:
                tr.write(encode_frame([rid, *payload]))

    def _handle(self, msg: list[Any]) -> None:
        op, rid, args = validate_request(msg)
        if not self.ready:
            self._hello(op, rid, args)
            return
        if self.inspect_only and op not in _INSPECT_OPS:
            raise ProtocolError(f"op {op} is not allowed on an inspecting connection")
        engine = self.engine
        metrics = self.server.metrics
        if op == Op.GET:
            started = time.perf_counter_ns()
            metrics.hot.add(args[0])
            reply = engine.get_l1(args[0])
            if reply is not None:
                self._send(rid, reply)
                metrics.latency["l1"].record_ns(time.perf_counter_ns() - started)
            elif engine.reads_now():
                engine.get_miss_now(args[0], reply=self._answer_later(rid, metrics.latency["l2"], started))
            else:
                self._spawn(rid, engine.get_miss(args[0]), timed=(metrics.latency["l2"], started))
        elif op == Op.LEASE:
            started = time.perf_counter_ns()
            metrics.hot.add(args[0])
            reply = engine.get_l1(args[0])
            if reply is not None:
                self._send(rid, reply)
                metrics.latency["l1"].record_ns(time.perf_counter_ns() - started)
            else:
                self._spawn(rid, engine.lease_miss(self, *args), timed=(metrics.latency["lease"], started))
        elif op == Op.SET:
            if engine.writes_now():
                engine.set_now(*args, reply=self._answer_later(rid, metrics.latency["write"], write=True))
            else:
                self._spawn(rid, engine.set(*args), write=True)
        elif op == Op.SET_BEHIND:
            self._send(rid, engine.set_behind(*args))
        elif op == Op.DELETE_BEHIND:
            self._send(rid, engine.delete_behind(*args))
        elif op == Op.FILL:
            self._spawn(rid, engine.fill(*args), write=True)
        elif op == Op.FAIL:
            self._spawn(rid, engine.fail(*args), write=True)
        elif op == Op.REFRESH:
            self._spawn(rid, engine.refresh(self, *args))
        elif op == Op.RELEASE:
            self._send(rid, engine.release(*args))
        elif op == Op.DELETE:
            if engine.writes_now():
                engine.delete_now(args[0], reply=self._answer_later(rid, metrics.latency["write"], write=True))
            else:
                self._spawn(rid, engine.delete(args[0]), write=True)
        elif op == Op.CLEAR:
            self._spawn(rid, engine.clear(), write=True)
        elif op == Op.GET_MANY:
            self._spawn(rid, ops.get_many(engine, args[0]))
        elif op == Op.SET_MANY:
            self._spawn(rid, ops.set_many(engine, args[0]), write=True)
        elif op == Op.DELETE_MANY:
            self._spawn(rid, ops.delete_many(engine, args[0]), write=True)
        elif op == Op.ADD:
            self._spawn(rid, ops.add(engine, *args), write=True)
        elif op == Op.INCR:
            self._spawn(rid, ops.incr(engine, *args), write=True)
        elif op == Op.TOUCH:
            self._spawn(rid, ops.touch(engine, *args), write=True)
        elif op == Op.INVALIDATE_TAGS:
            self._spawn(rid, engine.invalidate_tags(args[0]), write=True)
        elif op == Op.STATS:
            options = args[0] if args else {}
            self._send(rid, [Status.OK, self.server.stats(workers=options.get("workers") is True)])
        elif op == Op.REPORT:
            if not self.inspect_only:  # the command-line tools are not workers
                metrics.report(self.peer_pid, args)
        elif op == Op.HEALTH:
            self._send(rid, [Status.OK, {**engine.health(), "log": self.server.log}])
        elif op == Op.PING:
            self._send(rid, [Status.OK])
        else:
            raise ProtocolError(f"op {op} is not allowed after the hello")

    def _hello(self, op: int, rid: int, args: list[Any]) -> None:
        if op != Op.HELLO:
            raise ProtocolError(f"the first request must be a hello, got op {op}")
        version, namespace, _pid = args
        if version != PROTOCOL_VERSION:
            self._send(rid, [Status.ERROR, "protocol", f"coordinator speaks protocol {PROTOCOL_VERSION}, "
                                                       f"client speaks {version}"])
            raise ProtocolError(f"client protocol {version} != {PROTOCOL_VERSION}")
        self.inspect_only = namespace == INSPECT
        if namespace != self.server.settings.namespace and not self.inspect_only:
            self._send(rid, [Status.ERROR, "namespace", f"this coordinator serves namespace "
                                                        f"{self.server.settings.namespace!r}, not {namespace!r}"])
            raise ProtocolError(f"client namespace {namespace!r} does not match")
        self.ready = True
        self.decoder.max_frame = MAX_FRAME
        self._send(rid, [Status.OK, self.server.hello_info()])

    def _spawn(self, rid: int, coro: Any, *, write: bool = False,
               timed: tuple[LatencyHistogram, int] | None = None) -> None:
        # a write that reached the coordinator completes (or reaches the backlog) whatever
        # happens to its connection: it is held by the server, not cancelled with the
        # connection's reads and lease waits. Either counts against this connection's
        # MAX_TASKS_PER_CONNECTION until it finishes. ``timed``: the histogram that times
        # the request (a write: "write"), and when it began (perf_counter_ns).
        tasks = self.server.writes if write else self.tasks
        if write and timed is None:
            timed = (self.server.metrics.latency["write"], time.perf_counter_ns())
        task = asyncio.get_running_loop().create_task(self._run(rid, coro, timed))
        self.server.unstarted.add(task)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        self._request_started()
        task.add_done_callback(self._task_done)

    def _answer_later(self, rid: int, histogram: LatencyHistogram, started: int | None = None, *,
                      write: bool = False) -> Callable[[list[Any]], None]:
        """What answers a request that is not a task (``CacheEngine.set_now``, ``get_miss_now``...): it counts
        against this connection's MAX_TASKS_PER_CONNECTION (a ``write``, also as a write in flight) until it is
        answered, and ``histogram`` times it from ``started`` (perf_counter_ns; default: now)."""
        server = self.server
        if started is None:
            started = time.perf_counter_ns()
        if write:
            server.writes_now += 1
        self._request_started()

        def answer(reply: list[Any]) -> None:
            if write:
                server.writes_now -= 1
            self._send(rid, reply)
            histogram.record_ns(time.perf_counter_ns() - started)
            self._request_done()

        return answer

    async def _run(self, rid: int, coro: Any, timed: tuple[LatencyHistogram, int] | None) -> None:
        self.server.unstarted.discard(asyncio.current_task())  # type: ignore[arg-type]
        try:
            reply = await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one request, never the coordinator
            log.exception("request %d failed", rid)
            reply = [Status.ERROR, "internal", f"{type(exc).__name__}: {exc}"]
        self._send(rid, reply)
        if timed is not None:
            timed[0].record_ns(time.perf_counter_ns() - timed[1])


class Coordinator:
    """The daemon: socket, shared memory, engine. Use :meth:`serve` (blocks until
    :meth:`stop`), or :meth:`start` / :meth:`stop` from an event loop.

    With ``idle_exit`` > 0 it stops by itself (as on SIGTERM) once it has had no
    connection, no write in flight and no write waiting for Redis for that many
    seconds: what a coordinator that a client started does, so that it does not
    outlive the script that needed it. ``metrics_address`` (host, port): serve
    ``/metrics`` for Prometheus there; ``otel``: register the same metrics as
    OpenTelemetry instruments on the global meter provider.
    """

    def __init__(self, settings: Settings, *, use_redis: bool = True, idle_exit: float = 0.0,
                 metrics_address: tuple[str, int] | None = None, otel: bool = False) -> None:
        if not isinstance(idle_exit, (int, float)) or isinstance(idle_exit, bool) or not 0 <= idle_exit < float("inf"):
            raise ValueError(f"idle_exit must be a non-negative number of seconds (0: never), got {idle_exit!r}")
        self.settings = settings
        self.use_redis = use_redis
        self.idle_exit = float(idle_exit)
        #: since when (CLOCK_MONOTONIC) nothing kept this coordinator busy (see idle_exit)
        self._idle_since = 0.0
        self.exports = MetricsExports(metrics_address, otel)
        self.socket_path = Path(settings.socket_path)
        self.connections: set[_Connection] = set()
        #: writes in flight (see _Connection._spawn)
        self.writes: set[asyncio.Task[None]] = set()
        #: writes in flight that are not tasks (see ``_Connection._answer_later``)
        self.writes_now = 0
        #: requests' tasks created and not yet started: requests that came in the same loop turn, which a
        #: round trip to Redis started now would leave out (see CacheEngine.share_round_trips_while)
        self.unstarted: set[asyncio.Task[None]] = set()
        self.counters = dict.fromkeys(("refused", "protocol_errors", "socket_recreated", "write_pauses",
                                       "slow_consumers_closed", "stalled_frames_closed"), 0)
        #: latency histograms, hot keys, the workers' reports (see metrics.py)
        self.metrics = CoordinatorMetrics()
        self._socket_id: tuple[int, int] = (0, 0)
        self.table: VersionTable | None = None
        self.mirror: MirrorWriter | None = None
        self.engine: CacheEngine
        self._server: asyncio.base_events.Server | None = None
        self._lock_fd: int | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._shutdown = asyncio.Event()
        self._closed = False
        #: where this coordinator logs (see log_destination)
        self.log = log_destination()
        self._started = time.monotonic()

    def hello_info(self) -> dict[str, Any]:
        """What a worker learns in the hello."""
        assert self.table is not None
        return {
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "namespace": self.settings.namespace,
            "versions": self.table.path,
            "generation": self.table.generation,
            "mirror": self.mirror.path if self.mirror is not None else None,
            "mirror_generation": self.mirror.generation if self.mirror is not None else 0,
            "reports": True,
        }

    def stats(self, *, workers: bool = False) -> dict[str, Any]:
        """Engine counters plus connection counters, the state of Redis, the writes in flight
        and the lease waiters, and the metrics collector's snapshot (with each reporting
        worker's counters if ``workers``)."""
        engine = self.engine
        return {
            **engine.stats(), **self.counters, "connections": len(self.connections),
            "redis": engine.redis_state, "writes_in_flight": len(self.writes) + self.writes_now,
            "lease_waiters": engine.leases.waiting(), "uptime": time.monotonic() - self._started,
            **self.metrics.snapshot(workers=workers),
        }

    def _take_lock(self) -> None:
        folder = self.socket_path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = lock_file(str(self.socket_path) + ".lock")
        if fd is None:
            raise AlreadyRunning(f"another coordinator is serving {self.socket_path}")
        # a coordinator killed with SIGKILL left its segments behind (their paths are
        # in the lock file), and so may others whose process is gone: retire them
        # before serving (its workers stop trusting their near copies and reconnect
        # here), then remove them
        for previous in os.pread(fd, 4096, 0).decode(errors="replace").split():
            if Path(previous).name.startswith("mtcache-") and previous.endswith((".ver", ".mirror")):
                retire_segment(previous)
        remove_orphans()
        self._lock_fd = fd

    async def start(self) -> None:
        """Take the socket's lock, create the shared memory, bind the socket
        (mode 0600 in a 0700 folder) and start serving.

        :raises AlreadyRunning: another coordinator serves this socket.
        :raises mtcache.coordinator.exports.MetricsUnavailable: a metrics export cannot start.
        """
        self._take_lock()
        assert self._lock_fd is not None
        prefix = f"mtcache-{self.settings.namespace}"
        self.table = VersionTable.create(prefix=prefix)
        self.mirror = self._create_mirror(prefix)
        paths = [self.table.path] + ([self.mirror.path] if self.mirror is not None else [])
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, "\n".join(paths).encode(), 0)
        l2 = None
        if self.use_redis:
            l2 = L2Tier(self.settings.redis_url, self.settings.namespace, timeout=self.settings.redis_timeout)
        self.engine = CacheEngine(self.settings, self.table, l2, self.mirror)
        self.engine.holder_alive = _holder_alive
        self.engine.share_round_trips_while(lambda: bool(self.unstarted))
        await self.engine.start()
        self.exports.start(self.stats, self.settings.namespace)  # before serving: it may refuse to start
        self._server = await self._listen()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self._idle_since = time.monotonic()
        log.info(
            "mtcache coordinator pid %d serving %s (namespace %r, redis %s); its log: %s; %s",
            os.getpid(), self.socket_path, self.settings.namespace,
            self.settings.redacted_redis_url if self.use_redis else "disabled", self.log,
            f"exits after {self.idle_exit:g} s without a client" if self.idle_exit else "runs until stopped",
        )

    def _create_mirror(self, prefix: str) -> MirrorWriter | None:
        size = self.settings.l1_shm_bytes
        if not size:
            return None
        if platform.machine().lower() not in _TSO_MACHINES:
            # the mirror's seqlock relies on x86's store order (see mirror.py)
            log.info("no shared-memory L1 mirror on %s: workers read L1 through the socket", platform.machine())
            return None
        # 4 ways per set; a power of two at least the L1 capacity keeps collisions rare
        sets = 1 << max(6, (self.settings.l1_capacity - 1).bit_length())
        try:
            return MirrorWriter.create(size, sets=sets, prefix=prefix)
        except (OSError, ValueError) as exc:
            log.warning("no shared-memory L1 mirror (%s): workers read L1 through the socket", exc)
            return None

    async def _listen(self) -> asyncio.base_events.Server:
        """Bind the socket (mode 0600, its folder 0700), replacing whatever file is at its path."""
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.get_running_loop().create_unix_server(lambda: _Connection(self),
                                                                         str(self.socket_path))
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        info = os.lstat(self.socket_path)
        self._socket_id = (info.st_dev, info.st_ino)
        return server

    async def _keep_socket(self) -> None:
        """A socket file deleted (a /tmp cleaner) or replaced while this coordinator runs is made
        again, so new workers find it instead of starting coordinators that cannot take the lock."""
        try:
            info = os.lstat(self.socket_path)
            if (info.st_dev, info.st_ino) == self._socket_id:
                return
        except FileNotFoundError:
            pass
        log.warning("the socket %s was removed or replaced: making it again", self.socket_path)
        self.counters["socket_recreated"] += 1
        old = self._server
        self._server = await self._listen()
        if old is not None:
            old.close()  # nobody can reach it any more; its connections stay open

    def idle_for(self, now: float) -> float:
        """Seconds (at CLOCK_MONOTONIC ``now``) since this coordinator last had a
        connection, a write in flight or a write waiting for Redis (0 while it has one):
        a write it acknowledged is never dropped by an idle exit."""
        engine = self.engine
        if self.connections or self.writes or self.writes_now or engine.backlog or engine.pending_tags:
            self._idle_since = now
        return now - self._idle_since

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)  # periodic expiry sweep, not synchronisation
            self.engine.sweep()
            self.metrics.tick()
            if self.idle_exit and self.idle_for(time.monotonic()) >= self.idle_exit:
                log.info("no client for %g s: exiting (idle exit; MTCACHE_IDLE_EXIT or --idle-exit, 0: never)",
                         self.idle_exit)
                self._shutdown.set()
                return
            try:
                await self._keep_socket()
            except OSError as exc:  # the folder became unusable: keep serving who is connected
                log.warning("cannot make the socket %s again: %s", self.socket_path, exc)

    async def stop(self) -> None:
        """Stop serving, close every connection, remove the socket and the shared
        memory, close Redis. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self.exports.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:  # only the instance that bound the socket removes it
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if hasattr(self, "engine"):
            await self.engine.close()
        if self.mirror is not None:
            self.mirror.close()
        if self.table is not None:
            self.table.retire()  # workers stop trusting their near copies at once
            self.table.close()
        if self._lock_fd is not None:
            # removed while still locked: a coordinator starting now locks the file made after it
            # (see lock_file), never this one
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self.socket_path) + ".lock")
            os.close(self._lock_fd)
            self._lock_fd = None

    async def serve(self, on_serving: Callable[[], None] | None = None) -> None:
        """Start, call ``on_serving`` (a readiness report), serve until SIGTERM or SIGINT,
        then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._shutdown.set)
        try:
            await self.start()
            if on_serving is not None:
                on_serving()
            await self._shutdown.wait()
        finally:
            await self.stop()

    def request_shutdown(self) -> None:
        """Make :meth:`serve` return (from the loop's thread)."""
        self._shutdown.set()
