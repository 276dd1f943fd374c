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
from pathlib import Path
from typing import Any, cast

from mtcache.config import Settings
from mtcache.coordinator.cache import CacheEngine
from mtcache.coordinator.l2 import L2Tier
from mtcache.errors import ProtocolError
from mtcache.mirror import MirrorWriter
from mtcache.protocol import INSPECT, PROTOCOL_VERSION, FrameDecoder, Op, Status, encode_frame, validate_request
from mtcache.shm import VersionTable, remove_orphans, retire_segment

__all__ = ["AlreadyRunning", "Coordinator"]

log = logging.getLogger("mtcache.coordinator")

_PEERCRED = struct.Struct("3i")
SWEEP_INTERVAL = 0.25
_TSO_MACHINES = ("x86_64", "amd64", "i386", "i686")
_INSPECT_OPS = (Op.STATS, Op.HEALTH, Op.PING)


class AlreadyRunning(RuntimeError):
    """Another coordinator holds this socket's lock."""


class _Connection(asyncio.Protocol):
    def __init__(self, server: Coordinator) -> None:
        self.server = server
        self.engine = server.engine
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.ready = False
        self.inspect_only = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.peer_pid = 0

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
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for task in self.tasks:
            task.cancel()
        self.engine.drop_connection(self)

    def data_received(self, data: bytes) -> None:
        try:
            for msg in self.decoder.feed(data):
                self._handle(msg)
        except ProtocolError as exc:
            self._reject(exc)

    def eof_received(self) -> bool | None:
        if self.decoder.pending:
            self.server.counters["protocol_errors"] += 1
            log.info("connection from pid %d closed mid-frame", self.peer_pid)
        return None

    def _reject(self, exc: ProtocolError) -> None:
        self.server.counters["protocol_errors"] += 1
        log.info("closing connection from pid %d: %s", self.peer_pid, exc)
        if self.transport is not None:
            self.transport.abort()

    def _send(self, rid: int, payload: list[Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame([rid, *payload]))

    def _handle(self, msg: list[Any]) -> None:
        op, rid, args = validate_request(msg)
        if not self.ready:
            self._hello(op, rid, args)
            return
        if self.inspect_only and op not in _INSPECT_OPS:
            raise ProtocolError(f"op {op} is not allowed on an inspecting connection")
        engine = self.engine
        if op == Op.GET:
            reply = engine.get_l1(args[0])
            if reply is not None:
                self._send(rid, reply)
            else:
                self._spawn(rid, engine.get_miss(args[0]))
        elif op == Op.LEASE:
            reply = engine.get_l1(args[0])
            if reply is not None:
                self._send(rid, reply)
            else:
                self._spawn(rid, engine.lease_miss(self, args[0], args[1]))
        elif op == Op.SET:
            self._spawn(rid, engine.set(*args), write=True)
        elif op == Op.FILL:
            self._spawn(rid, engine.fill(*args), write=True)
        elif op == Op.FAIL:
            self._send(rid, engine.fail(*args))
        elif op == Op.RELEASE:
            self._send(rid, engine.release(*args))
        elif op == Op.DELETE:
            self._spawn(rid, engine.delete(args[0]), write=True)
        elif op == Op.CLEAR:
            self._spawn(rid, engine.clear(), write=True)
        elif op == Op.STATS:
            self._send(rid, [Status.OK, self.server.stats()])
        elif op == Op.HEALTH:
            self._send(rid, [Status.OK, engine.health()])
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
        self._send(rid, [Status.OK, self.server.hello_info()])

    def _spawn(self, rid: int, coro: Any, *, write: bool = False) -> None:
        # a write that reached the coordinator completes (or reaches the backlog) whatever
        # happens to its connection: it is held by the server, not cancelled with the
        # connection's reads and lease waits
        tasks = self.server.writes if write else self.tasks
        task = asyncio.get_running_loop().create_task(self._run(rid, coro))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run(self, rid: int, coro: Any) -> None:
        try:
            reply = await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one request, never the coordinator
            log.exception("request %d failed", rid)
            reply = [Status.ERROR, "internal", f"{type(exc).__name__}: {exc}"]
        self._send(rid, reply)


class Coordinator:
    """The daemon: socket, shared memory, engine. Use :meth:`serve` (blocks until
    :meth:`stop`), or :meth:`start` / :meth:`stop` from an event loop."""

    def __init__(self, settings: Settings, *, use_redis: bool = True) -> None:
        self.settings = settings
        self.use_redis = use_redis
        self.socket_path = Path(settings.socket_path)
        self.connections: set[_Connection] = set()
        #: writes in flight (see _Connection._spawn)
        self.writes: set[asyncio.Task[None]] = set()
        self.counters = {"refused": 0, "protocol_errors": 0}
        self.table: VersionTable | None = None
        self.mirror: MirrorWriter | None = None
        self.engine: CacheEngine
        self._server: asyncio.base_events.Server | None = None
        self._lock_fd: int | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._shutdown = asyncio.Event()
        self._closed = False

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
        }

    def stats(self) -> dict[str, Any]:
        """Engine counters plus connection counters."""
        return {**self.engine.stats(), **self.counters, "connections": len(self.connections)}

    def _take_lock(self) -> None:
        folder = self.socket_path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = str(self.socket_path) + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another coordinator is serving {self.socket_path}") from None
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
        await self.engine.start()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        loop = asyncio.get_running_loop()
        old_umask = os.umask(0o177)
        try:
            self._server = await loop.create_unix_server(lambda: _Connection(self), str(self.socket_path))
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        self._sweeper = loop.create_task(self._sweep())
        log.info(
            "mtcache coordinator pid %d serving %s (namespace %r, redis %s)",
            os.getpid(), self.socket_path, self.settings.namespace,
            self.settings.redacted_redis_url if self.use_redis else "disabled",
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

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)  # periodic expiry sweep, not synchronisation
            self.engine.sweep()

    async def stop(self) -> None:
        """Stop serving, close every connection, remove the socket and the shared
        memory, close Redis. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
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
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None

    async def serve(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._shutdown.set)
        try:
            await self.start()
            await self._shutdown.wait()
        finally:
            await self.stop()

    def request_shutdown(self) -> None:
        """Make :meth:`serve` return (from the loop's thread)."""
        self._shutdown.set()
