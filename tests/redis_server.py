"""A real ``redis-server`` process for tests: free loopback port, readiness by
PING with a deadline, kill and restart on the same port for fault tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import redis

START_DEADLINE = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str | None:
    """The ``redis-server`` on PATH, or None."""
    return shutil.which("redis-server")


class RedisServer:
    """One redis-server process owned by a test (or another server speaking its protocol and taking its
    options, such as ``valkey-server``, given as ``binary``).

    ``appendonly=True`` keeps data across :meth:`restart` (AOF in ``workdir``);
    otherwise a restart comes back empty, like a real restart without persistence.
    """

    def __init__(
        self, workdir: Path, *, appendonly: bool = False, port: int | None = None, password: str | None = None,
        tls: Mapping[str, str] | None = None, acl_user: tuple[str, str, str] | None = None,
        binary: str | None = None, extra_args: tuple[str, ...] = (),
    ) -> None:
        binary = binary or redis_binary()
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = port or free_port()
        #: ``requirepass``: clients must authenticate with it
        self.password = password
        #: TLS only (no plain port): the files ``cert``, ``key`` and ``ca`` (PEM) of the server
        self.tls = dict(tls) if tls else None
        #: an ACL user ``(name, password, rules)`` the application connects as (:attr:`url`); the tests'
        #: own :meth:`client` stays the default user, with ``password`` when given
        self.acl_user = acl_user
        #: more redis-server options, e.g. ``("--replicaof", "127.0.0.1", "6390")``
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL the application uses: the ACL user's when there is one, and with TLS the CA
        and the client certificate in the query, as redis-py names them."""
        scheme = "rediss" if self.tls else "redis"
        if self.acl_user:
            auth = f"{quote(self.acl_user[0], safe='')}:{quote(self.acl_user[1], safe='')}@"
        else:
            auth = f":{self.password}@" if self.password else ""
        query = ""
        if self.tls:
            query = "?" + urlencode({"ssl_ca_certs": self.tls["ca"], "ssl_certfile": self.tls["cert"],
                                     "ssl_keyfile": self.tls["key"], "ssl_cert_reqs": "required"})
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0{query}"

    def client(self) -> redis.Redis:
        """A fresh synchronous client (caller closes it), with the password and the
        TLS client certificate the server asks for."""
        tls: dict[str, Any] = {}
        if self.tls:
            tls = {"ssl": True, "ssl_ca_certs": self.tls["ca"], "ssl_certfile": self.tls["cert"],
                   "ssl_keyfile": self.tls["key"]}
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0, password=self.password, **tls)

    def start(self) -> None:
        """Start the server and return once it answers PING (deadline, no sleep loop
        without a bound)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.workdir / "redis.log"),
            *self.extra_args,
        ]
        lines = []
        if self.password:
            lines.append(f"requirepass {self.password}")
        if self.acl_user:
            name, password, rules = self.acl_user
            lines.append(f"user {name} on >{password} resetkeys resetchannels {rules}")
        if lines:
            # in a config file (0600), not on the command line, where any local user would see it
            conf = self.workdir / "redis.conf"
            conf.touch(mode=0o600)
            conf.write_text("\n".join(lines) + "\n")
            args.insert(1, str(conf))
        if self.tls:
            at = args.index("--port")
            args[at:at + 2] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", self.tls["cert"], "--tls-key-file", self.tls["key"],
                     "--tls-ca-cert-file", self.tls["ca"]]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self.proc.poll() is not None:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            try:
                with self.client() as c:
                    if c.ping():
                        return
            except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {START_DEADLINE}s")
            time.sleep(0.01)  # polling interval of a deadline-bounded readiness check

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the server and reap it (SIGKILL after 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Kill and start again on the same port."""
        self.kill()
        self.start()


class SentinelGroup:
    """A master, one replica of it and three sentinels (quorum 2) watching them as ``service``, all on free
    loopback ports under ``workdir``: what a ``redis+sentinel://`` URL (:attr:`url`) points at. The
    sentinels declare a master down after ``down_after_ms`` without an answer."""

    def __init__(self, workdir: Path, *, service: str = "mtc", down_after_ms: int = 1000) -> None:
        self.workdir = Path(workdir)
        self.service = service
        self.down_after_ms = down_after_ms
        # no delay before the replica's first full sync (the default waits 5 s for more replicas)
        self.master = RedisServer(self.workdir / "master", extra_args=("--repl-diskless-sync-delay", "0"))
        self.replica = RedisServer(self.workdir / "replica",
                                   extra_args=("--replicaof", "127.0.0.1", str(self.master.port)))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def sentinel(self, index: int = 0) -> redis.Redis:
        """A client of sentinel ``index`` (caller closes it)."""
        return redis.Redis(host="127.0.0.1", port=self.sentinel_ports[index], socket_timeout=2.0,
                           decode_responses=True)

    def master_port(self) -> int | None:
        """The port of the master sentinel 0 names now (None if it does not answer)."""
        try:
            with self.sentinel() as s:
                addr = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        except redis.RedisError:
            return None
        return int(addr[1]) if addr else None

    def server_on(self, port: int) -> RedisServer:
        """The server (master or replica) listening on ``port``."""
        return self.master if port == self.master.port else self.replica

    def start(self) -> None:
        """Start them all; return once every sentinel knows the master, the replica and the two other
        sentinels (deadline)."""
        self.master.start()
        self.replica.start()
        binary = self.master.binary
        for i, port in enumerate(self.sentinel_ports):
            folder = self.workdir / f"sentinel{i}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", "protected-mode no", f"dir {folder}",
                f"logfile {folder / 'sentinel.log'}",
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2",
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
                f"sentinel failover-timeout {self.service} 10000",
                f"sentinel parallel-syncs {self.service} 1", "",
            ]))
            self.sentinels.append(subprocess.Popen([binary, str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + START_DEADLINE * 3
        while not self._ready():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sentinels did not find the master, its replica and each other in time")
            time.sleep(0.05)  # polling interval of a deadline-bounded readiness check

    def _ready(self) -> bool:
        try:
            with self.replica.client() as replica:
                if replica.info("replication").get("master_link_status") != "up":
                    return False  # its first full sync is not done: promoting it would lose everything
        except redis.RedisError:
            return False
        for i in range(len(self.sentinel_ports)):
            try:
                with self.sentinel(i) as s:
                    master = s.execute_command("SENTINEL", "MASTER", self.service)
                    info = dict(zip(master[::2], master[1::2], strict=True)) if isinstance(master, list) else master
                    if int(info["num-slaves"]) < 1 or int(info["num-other-sentinels"]) < 2:
                        return False
            except (redis.RedisError, KeyError):
                return False
        return True

    def failover(self) -> int:
        """``SENTINEL FAILOVER`` and wait until the sentinels name the other server master; its port."""
        old = self.master_port()
        with self.sentinel() as s:
            s.execute_command("SENTINEL", "FAILOVER", self.service)
        return self.wait_new_master(old)

    def wait_new_master(self, old: int | None) -> int:
        """Wait (deadline) until sentinel 0 names a master other than ``old``, which answers as one, and
        ``old``, if it still runs, has been turned into its replica (until then it takes writes, which
        it drops when it does)."""
        deadline = time.monotonic() + 60
        while True:
            port = self.master_port()
            if port is not None and port != old:
                try:
                    with self.server_on(port).client() as c:
                        promoted = c.info("replication")["role"] == "master"
                    if promoted and (old is None or self._demoted(self.server_on(old))):
                        return port
                except redis.RedisError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("no new master within 60 s")
            time.sleep(0.05)  # polling interval of a deadline-bounded wait

    @staticmethod
    def _demoted(server: RedisServer) -> bool:
        if server.proc is None or server.proc.poll() is not None:
            return True
        with server.client() as c:
            return c.info("replication")["role"] == "slave"

    def stop(self) -> None:
        """Stop the sentinels and both servers."""
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.replica.stop()
        self.master.stop()
