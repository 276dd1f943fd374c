"""A fault-injecting TCP proxy for tests: put it between a process and a real redis-server and
cut, delay or reset the link while the test runs.

``127.0.0.1:<free port> -> (target_host, target_port)``, served by an asyncio loop in a daemon
thread of its own. Each direction of each connection is two tasks: a reader that stamps every chunk
with the time it was read and queues it, and a writer that sends the chunks in order once
``stamp + delay`` has passed and the link is not cut. The queue is bounded, so a stalled writer
stops its reader and TCP flow control pushes back on the sender, as on a real link.

The control methods (:meth:`FaultProxy.cut`, :meth:`~FaultProxy.heal`, :meth:`~FaultProxy.delay`,
:meth:`~FaultProxy.reset`) may be called from any thread; each returns once the change is in force
in the proxy's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["FaultProxy"]

#: Bytes read from a socket at a time.
CHUNK = 65536
#: Chunks held per direction before the reader stops reading (backpressure).
QUEUE_CHUNKS = 64
#: Longest wait for the loop thread to carry out a control call.
CONTROL_DEADLINE = 10.0
#: Stamped chunk, or None for the end of the stream.
_Item = tuple[float, bytes] | None


class _Conn:
    """One proxied connection: the accepted client side, the upstream side once connected, and the
    task that serves it."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.aborted = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]


class FaultProxy:
    """TCP proxy 127.0.0.1:<free port> -> (target_host, target_port), served by an asyncio loop in
    its own daemon thread."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Conn] = set()
        self._cut = False
        self._delay = 0.0
        self._changed: asyncio.Event | None = None  # set (and replaced) on every state change
        self._stopped = False

    # -- public API ---------------------------------------------------------------------------

    def url(self, db: int = 0) -> str:
        """The Redis URL of the target as seen through the proxy."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start the loop thread and return once the proxy is listening."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy.start() called twice")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, args=(loop,), name=f"FaultProxy->{self.target_port}",
                                        daemon=True)
        self._thread.start()
        self._call(self._start_server())

    def stop(self) -> None:
        """Close the listener and every connection and join the loop thread. Safe to call twice."""
        if self._stopped or self._loop is None or self._thread is None:
            self._stopped = True
            return
        self._stopped = True
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONTROL_DEADLINE)

    def cut(self) -> None:
        """Partition: no byte moves either way on any connection (nothing is closed; bytes wait in
        the buffers), and new connections are accepted but not forwarded until :meth:`heal`.

        As with TCP retransmission, what a peer sent before giving up and closing its socket is
        still delivered after :meth:`heal` (a timed-out request may reach Redis late)."""
        self._call(self._set(cut=True))

    def heal(self) -> None:
        """Forward again: held bytes flow on, and the added delay goes back to 0."""
        self._call(self._set(cut=False, delay=0.0))

    def delay(self, seconds: float) -> None:
        """Add ``seconds`` of latency to every chunk in each direction (0: none); order is kept."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds!r}")
        self._call(self._set(delay=float(seconds)))

    def reset(self) -> None:
        """Abort every current connection with a RST (SO_LINGER 0) on both sides; connections made
        afterwards work normally. Returns once every aborted connection is closed."""
        self._call(self._reset())

    @property
    def state(self) -> str:
        """``"cut"``, ``"delayed"`` or ``"ok"``."""
        if self._cut:
            return "cut"
        return "delayed" if self._delay > 0 else "ok"

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the loop thread ----------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        """Run ``coro`` in the proxy's loop and wait for its result."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the FaultProxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CONTROL_DEADLINE)

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _start_server(self) -> None:
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._abort_all(rst=False)
        if self._server is not None:
            await self._server.wait_closed()

    async def _set(self, *, cut: bool | None = None, delay: float | None = None) -> None:
        if cut is not None:
            self._cut = cut
        if delay is not None:
            self._delay = delay
        self._notify()

    async def _reset(self) -> None:
        await self._abort_all(rst=True)

    async def _abort_all(self, *, rst: bool) -> None:
        conns = list(self._conns)
        for conn in conns:
            conn.aborted = True
            for writer in conn.writers():
                if rst:
                    sock = writer.get_extra_info("socket")
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            if conn.task is not None and not conn.task.done():
                conn.task.cancel()
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=CONTROL_DEADLINE)

    def _notify(self) -> None:
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float | None = None) -> None:
        assert self._changed is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._wait_change()

    # -- one connection -----------------------------------------------------------------------

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        conn = _Conn(client_writer)
        conn.task = asyncio.current_task()
        self._conns.add(conn)
        try:
            await self._serve(conn, client_reader)
        except (OSError, asyncio.IncompleteReadError):
            pass  # a reset or broken pipe on either side ends the whole connection
        except asyncio.CancelledError:
            # reset() or stop(): this task is the top of the connection and nothing awaits it
            # (asyncio's stream callback would log a cancelled task as an error)
            pass
        finally:
            # nothing awaited here: a second cancel cannot land in the cleanup
            for writer in conn.writers():
                if conn.aborted:
                    writer.transport.abort()
                else:
                    writer.close()
            self._conns.discard(conn)

    async def _serve(self, conn: _Conn, client_reader: asyncio.StreamReader) -> None:
        await self._until(lambda: not self._cut)  # a partition: accepted, but nothing reaches the target
        up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        conn.upstream = up_writer
        if conn.aborted:
            return
        tasks = self._direction(client_reader, up_writer) + self._direction(up_reader, conn.client)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _direction(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> list[asyncio.Task[None]]:
        queue: asyncio.Queue[_Item] = asyncio.Queue(QUEUE_CHUNKS)
        return [asyncio.ensure_future(self._read(src, queue)), asyncio.ensure_future(self._write(queue, dst))]

    async def _read(self, src: asyncio.StreamReader, queue: asyncio.Queue[_Item]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._until(lambda: not self._cut)  # cut: leave the bytes in the socket buffer
            data = await src.read(CHUNK)
            if not data:
                await queue.put(None)
                return
            await queue.put((loop.time(), data))

    async def _write(self, queue: asyncio.Queue[_Item], dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await queue.get()
            if item is None:
                if dst.can_write_eof():
                    dst.write_eof()  # half-close: the other direction may still carry bytes
                return
            stamp, data = item
            # the delay in force now applies (heal sets it to 0: held chunks go at once); FIFO keeps order
            while self._cut or loop.time() < stamp + self._delay:
                await self._wait_change(None if self._cut else stamp + self._delay - loop.time())
            dst.write(data)
            await dst.drain()
