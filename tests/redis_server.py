"""A real ``redis-server`` process for tests: free loopback port, readiness by
PING with a deadline, kill and restart on the same port for fault tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
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


def tls_client_kwargs(tls: Mapping[str, str] | None) -> dict[str, Any]:
    """redis-py's arguments for a client of a TLS-only server made with the files ``tls`` names (``cert``,
    ``key`` and ``ca``, as :class:`RedisServer` takes them; the certificate is the client's too): ``{}``
    without TLS."""
    if not tls:
        return {}
    return {"ssl": True, "ssl_ca_certs": tls["ca"], "ssl_certfile": tls["cert"], "ssl_keyfile": tls["key"]}


def tls_url_query(tls: Mapping[str, str] | None) -> str:
    """The query of an application URL for those files, as redis-py names the options (``?ssl_ca_certs=...``):
    ``""`` without TLS."""
    if not tls:
        return ""
    return "?" + urlencode({"ssl_ca_certs": tls["ca"], "ssl_certfile": tls["cert"], "ssl_keyfile": tls["key"],
                            "ssl_cert_reqs": "required"})


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
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0{tls_url_query(self.tls)}"

    def client(self) -> redis.Redis:
        """A fresh synchronous client (caller closes it), with the password and the
        TLS client certificate the server asks for."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0, password=self.password,
                           **tls_client_kwargs(self.tls))

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
    sentinels declare a master down after ``down_after_ms`` without an answer.

    With ``tls`` (the files ``cert``, ``key`` and ``ca``, as :class:`RedisServer` takes them) every node and
    every sentinel is TLS-only, client certificates required; replication and the sentinels' own connections
    go over TLS too, and :attr:`url` is a ``rediss+sentinel://`` URL."""

    def __init__(self, workdir: Path, *, service: str = "mtc", down_after_ms: int = 1000,
                 tls: Mapping[str, str] | None = None, min_replicas_to_write: int = 0) -> None:
        """``min_replicas_to_write``: the data nodes' ``min-replicas-to-write`` (a master without that many
        replicas refuses writes: after a manual failover, the old master refuses instead of taking writes its
        demotion discards)."""
        self.workdir = Path(workdir)
        self.service = service
        self.down_after_ms = down_after_ms
        #: TLS only (no plain port) on the data nodes and the sentinels: the files ``cert``, ``key`` and ``ca``
        self.tls = dict(tls) if tls else None
        # either data node may be the replica (after a failover): both replicate over TLS
        tls_args = ("--tls-replication", "yes") if self.tls else ()
        if min_replicas_to_write:
            tls_args = (*tls_args, "--min-replicas-to-write", str(min_replicas_to_write))
        # no delay before the replica's first full sync (the default waits 5 s for more replicas); on either
        # node, which may be the master after a failover
        self.master = RedisServer(self.workdir / "master", tls=self.tls,
                                  extra_args=("--repl-diskless-sync-delay", "0", *tls_args))
        self.replica = RedisServer(self.workdir / "replica", tls=self.tls,
                                   extra_args=("--replicaof", "127.0.0.1", str(self.master.port),
                                               "--repl-diskless-sync-delay", "0", *tls_args))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{hosts}/{self.service}/0{tls_url_query(self.tls)}"

    def sentinel(self, index: int = 0) -> redis.Redis:
        """A client of sentinel ``index`` (caller closes it)."""
        return redis.Redis(host="127.0.0.1", port=self.sentinel_ports[index], socket_timeout=2.0,
                           decode_responses=True, **tls_client_kwargs(self.tls))

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

    def other(self, port: int) -> RedisServer:
        """The data node not listening on ``port``."""
        return self.replica if port == self.master.port else self.master

    def client(self) -> redis.Redis:
        """A fresh client (caller closes it) of the master sentinel 0 names now.

        :raises redis.ConnectionError: sentinel 0 does not answer."""
        port = self.master_port()
        if port is None:
            raise redis.ConnectionError("sentinel 0 does not answer: no master to connect to")
        return self.server_on(port).client()

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
            listen = [f"port {port}"]
            if self.tls:
                # TLS-only; tls-replication: TLS to the data nodes and the other sentinels, which it announces
                # with its tls-port
                listen = ["port 0", f"tls-port {port}", f"tls-cert-file {self.tls['cert']}",
                          f"tls-key-file {self.tls['key']}", f"tls-ca-cert-file {self.tls['ca']}",
                          "tls-replication yes"]
            conf.write_text("\n".join([
                *listen, "bind 127.0.0.1", "protected-mode no", f"dir {folder}",
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

    def settled(self) -> tuple[int | None, str]:
        """The master's port once the group has settled (else None), and what is not settled yet: every
        sentinel names the same master, neither suspects it down nor is failing it over, and it answers as
        a master; the other node runs as its replica with its
        link up (synced), and every sentinel lists it among that master's replicas, neither down nor
        disconnected: the sentinels could promote it. (What a sentinel says of a replica's role and link
        is as of its last INFO to it, up to 10 s old: the node's own INFO is what is checked.)"""
        masters: set[int] = set()
        standing: list[dict[str, str]] = []
        try:
            for i in range(len(self.sentinel_ports)):
                with self.sentinel(i) as s:
                    addr = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                    if not addr:
                        return None, f"sentinel {i} names no master"
                    masters.add(int(addr[1]))
                    flags = _pairs(s.execute_command("SENTINEL", "MASTER", self.service)).get("flags", "")
                    if flags != "master":
                        return None, f"sentinel {i}: master {addr[1]} flagged {flags}"
                    standing += [_pairs(r) for r in s.execute_command("SENTINEL", "REPLICAS", self.service)]
        except (redis.RedisError, ValueError) as exc:
            return None, f"a sentinel does not answer: {exc}"
        if len(masters) != 1:
            return None, f"the sentinels name different masters: {sorted(masters)}"
        port = masters.pop()
        replica = self.other(port)
        try:
            with self.server_on(port).client() as c:
                if c.info("replication")["role"] != "master":
                    return None, f"{port}, which the sentinels name, is not a master yet"
            with replica.client() as c:
                info = c.info("replication")
        except redis.RedisError as exc:
            return None, f"a data node does not answer: {exc}"
        if info["role"] != "slave" or int(info.get("master_port", 0)) != port \
                or info.get("master_link_status") != "up":
            return None, f"{replica.port}: {info['role']} of {info.get('master_port')}, link " \
                         f"{info.get('master_link_status')}"
        mine = [r for r in standing if int(r.get("port", 0)) == replica.port]
        good = [r for r in mine if not set(r.get("flags", "").split(",")) & {"s_down", "o_down", "disconnected"}]
        if len(good) != len(self.sentinel_ports):
            return None, f"not every sentinel lists {replica.port} as a live replica of {port}: {mine}"
        return port, ""

    def wait_settled(self, what: str = "the group to settle", deadline: float = 60.0) -> int:
        """Wait (``deadline``) until :meth:`settled`; the master's port."""
        end = time.monotonic() + deadline
        while True:
            port, why = self.settled()
            if port is not None:
                return port
            if time.monotonic() > end:
                raise RuntimeError(f"timed out after {deadline:g} s waiting for {what}: {why}")
            time.sleep(0.05)  # polling interval of a deadline-bounded wait

    def restart(self, port: int, *, as_replica: bool = True, deadline: float = 60.0) -> int:
        """Start the data node on ``port`` again (killing it first if it runs; no persistence, but it loads what
        its last full sync as a replica left on disk) and wait (``deadline``) until the group has settled with
        it as the master's replica, fully synced; the master's port.

        ``as_replica``: it starts as a replica of the master the sentinels name, as an orchestrator that
        asks them brings a node back. Otherwise it starts as its command line has it (the first master as
        a master): a master with old data or none until the sentinels turn it into a replica, which they
        do only once it has been back 8 s (four of their hello periods) and they have read its role again
        (every 10 s): ~10 s on loopback, against ~0.1-1 s as a replica."""
        server = self.server_on(port)
        server.kill()
        if as_replica:
            master = self.master_port()
            if master is None or master == port:
                raise RuntimeError(f"the sentinels name no master other than {port}: {master}")
            base = server.extra_args
            at = base.index("--replicaof") if "--replicaof" in base else len(base)
            server.extra_args = (*base[:at], *base[at + 3:], "--replicaof", "127.0.0.1", str(master))
            try:
                server.start()
            finally:
                server.extra_args = base
        else:
            server.start()
        return self.wait_settled(f"{port} to come back as a replica", deadline)

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

    def __enter__(self) -> SentinelGroup:
        """Start the group (stopped again if it does not come up); ``with`` stops it at the end."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pairs(reply: object) -> dict[str, str]:
    """A sentinel's description of an instance (a flat list of names and values, or a dict) as a dict."""
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    if isinstance(reply, list):
        return {_text(k): _text(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}
    raise ValueError(f"not an instance description: {reply!r}")


#: a cluster node's bus listens on its client port plus this (redis-server's default ``cluster-port``)
CLUSTER_BUS_OFFSET = 10000
CLUSTER_SLOTS = 16384
#: how long a cluster may take to form, fail over or take a restarted node back
CLUSTER_DEADLINE = 30.0


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A free loopback port for a cluster node whose bus port (``port + 10000``, below 65535) is free too,
    neither of them in ``taken`` (the ports and bus ports of the other nodes, which do not listen yet)."""
    for _ in range(1000):
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if bus < 65535 and not {port, bus} & taken and _port_is_free(bus):
            return port
    raise RuntimeError("no free port whose cluster bus port (+10000) is free too")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _NodeView:
    """What one node's ``CLUSTER NODES`` says of every node it knows."""

    def __init__(self, raw: object) -> None:
        #: per node: port, node id, flags, its master's node id (``-`` for a master), first slot it serves (or None)
        self.nodes: list[tuple[int, str, set[str], str, int | None]] = []
        for line in _text(raw).splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            slots = [int(s.split("-")[0]) for s in fields[8:] if not s.startswith("[")]
            self.nodes.append((port, fields[0], set(fields[2].split(",")), fields[3], min(slots, default=None)))

    def masters(self) -> list[int]:
        """The ports of the masters serving slots and not suspected of failing, in the order of their slots."""
        serving = [(first, port) for port, _, flags, _, first in self.nodes
                   if "master" in flags and first is not None and not flags & {"fail", "fail?"}]
        return [port for _, port in sorted(serving)]

    def replicas_of(self, master_port: int) -> list[int]:
        """The ports of the replicas of the master on ``master_port`` not suspected of failing."""
        ids = [node_id for port, node_id, _, _, _ in self.nodes if port == master_port]
        return [port for port, _, flags, master, _ in self.nodes
                if ids and master == ids[0] and "slave" in flags and not flags & {"fail", "fail?"}]

    def failing(self) -> set[int]:
        """The ports of the nodes flagged failing (``fail``) or suspected of it (``fail?``)."""
        return {port for port, _, flags, _, _ in self.nodes if flags & {"fail", "fail?"}}


class RedisClusterGroup:
    """A Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each, all on free loopback ports
    under ``workdir`` (each node with its ``nodes.conf`` in a folder of its own, no persistence of data): what a
    ``redis+cluster://`` URL (:attr:`url`) points at. A node that does not answer for 1 s
    (``cluster-node-timeout``) is failing, and a replica of a failing master takes its place.

    Every wait here ends on a settled cluster: each live node says ``cluster_state:ok`` with all 16384 slots
    served, they all name the same masters, each node's own role is the one the others see (every live node
    that is not one of those masters is, in each node's view, a replica of one of them: gossip can lag behind
    a replica's own ``INFO``), and each replica's link to its master is up. Also a context manager: ``with``
    starts it and stops it.

    With ``tls`` (the files ``cert``, ``key`` and ``ca``, as :class:`RedisServer` takes them) every node is
    TLS-only, client certificates required, with the cluster bus and replication over TLS too; :attr:`url`
    is then a ``rediss+cluster://`` URL."""

    def __init__(self, workdir: Path, *, masters: int = 3, replicas_per_master: int = 1,
                 tls: Mapping[str, str] | None = None) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.workdir = Path(workdir)
        #: TLS only (no plain port), bus and replication included: the files ``cert``, ``key`` and ``ca``
        self.tls = dict(tls) if tls else None
        tls_args = ("--tls-cluster", "yes", "--tls-replication", "yes") if self.tls else ()
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        taken: set[int] = set()
        #: every node, in the order given to ``redis-cli --cluster create``
        self.servers: list[RedisServer] = []
        for i in range(masters * (1 + replicas_per_master)):
            port = free_cluster_port(taken)
            taken |= {port, port + CLUSTER_BUS_OFFSET}
            folder = self.workdir / f"node{i}"
            self.servers.append(RedisServer(folder, port=port, tls=self.tls, extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-node-timeout", "1000",
                # a replica may take over however long it was cut off from its master
                "--cluster-replica-validity-factor", "0",
                # the replicas stay where the tests put them, even beside a master left without one
                "--cluster-allow-replica-migration", "no",
                # no delay before a replica's first full sync (the default waits 5 s for more replicas)
                "--repl-diskless-sync-delay", "0",
                *tls_args,
            )))
        self._initial_masters: list[int] = []

    @property
    def url(self) -> str:
        """``redis+cluster://`` with the masters' ports when the cluster was made (``rediss+cluster://`` with the
        TLS options in the query, with ``tls``)."""
        assert self._initial_masters, "not started"
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        hosts = ",".join(f"127.0.0.1:{port}" for port in self._initial_masters)
        return f"{scheme}://{hosts}{tls_url_query(self.tls)}"

    def server_on(self, port: int) -> RedisServer:
        """The node listening on ``port``."""
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(f"no node of this cluster on port {port}")

    def live(self) -> list[RedisServer]:
        """The nodes whose process runs."""
        return [s for s in self.servers if s.proc is not None and s.proc.poll() is None]

    def client(self) -> redis.RedisCluster:
        """A fresh cluster client (caller closes it), bootstrapped from a live node."""
        live = self.live()
        if not live:
            raise RuntimeError("no node of the cluster runs")
        return redis.RedisCluster(host="127.0.0.1", port=live[0].port, socket_timeout=2.0,
                                  **tls_client_kwargs(self.tls))

    def _view(self, server: RedisServer) -> _NodeView:
        with server.client() as c:
            return _NodeView(c.execute_command("CLUSTER", "NODES"))

    def master_ports(self) -> list[int]:
        """The masters serving slots now, in the order of their slots, as the first live node that answers
        ``CLUSTER NODES`` sees them."""
        for server in self.live():
            try:
                return self._view(server).masters()
            except redis.RedisError:
                continue
        raise RuntimeError("no node of the cluster answers CLUSTER NODES")

    def replicas_of(self, master_port: int) -> list[int]:
        """The live replicas of the master on ``master_port``, as the first live node that answers sees them."""
        live = {s.port for s in self.live()}
        for server in self.live():
            try:
                return [port for port in self._view(server).replicas_of(master_port) if port in live]
            except redis.RedisError:
                continue
        raise RuntimeError("no node of the cluster answers CLUSTER NODES")

    def start(self) -> None:
        """Start every node, make the cluster of them with ``redis-cli --cluster create`` and return once it
        has settled (deadline)."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not on PATH")
        try:
            for server in self.servers:
                server.start()
            args = [cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers),
                    "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
            if self.tls:
                args += ["--tls", "--cacert", self.tls["ca"], "--cert", self.tls["cert"], "--key", self.tls["key"]]
            done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=CLUSTER_DEADLINE * 2)
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create exited with {done.returncode}: "
                                   f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
            self._initial_masters = self._wait_settled("the cluster to form", lambda masters: True)
        except BaseException:
            self.stop()
            raise

    def _settled(self) -> tuple[list[int] | None, str]:
        """The masters every live node agrees on, once the cluster has settled (else None), and what is not
        settled yet."""
        live = self.live()
        live_ports = {s.port for s in live}
        agreed: list[int] | None = None
        for server in live:
            try:
                with server.client() as c:
                    info = dict(line.split(":", 1) for line in _text(c.execute_command("CLUSTER", "INFO")).split()
                                if ":" in line)
                    view = _NodeView(c.execute_command("CLUSTER", "NODES"))
                    replication = c.info("replication")
            except redis.RedisError as exc:
                return None, f"node {server.port} does not answer: {exc}"
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
                return None, f"node {server.port}: cluster_state {info.get('cluster_state')}, " \
                             f"{info.get('cluster_slots_ok')} slots ok"
            if int(info.get("cluster_known_nodes", 0)) != len(self.servers):
                return None, f"node {server.port} knows {info.get('cluster_known_nodes')} nodes"
            if view.failing() & live_ports:
                return None, f"node {server.port} sees live nodes failing: {sorted(view.failing() & live_ports)}"
            masters = view.masters()
            unplaced = sorted(port for port in live_ports - set(masters)
                              if not any(port in view.replicas_of(master) for master in masters))
            if unplaced:
                return None, f"node {server.port} does not see {unplaced} as replicas of the masters {masters}"
            if agreed is None:
                agreed = masters
            elif masters != agreed:
                return None, f"the nodes disagree on the masters: {agreed} and {masters} (node {server.port})"
            role = replication.get("role")
            if role != ("master" if server.port in masters else "slave"):
                return None, f"node {server.port} is a {role}, and the masters are {masters}"
            if role == "slave" and replication.get("master_link_status") != "up":
                return None, f"replica {server.port}: link to its master {replication.get('master_link_status')}"
        if agreed is None or len(agreed) != self.masters:
            return None, f"masters {agreed}, expected {self.masters} of them"
        return agreed, ""

    def _wait_settled(self, what: str, done: Callable[[list[int]], bool]) -> list[int]:
        """Wait (deadline) until the cluster has settled with masters ``done`` accepts; those masters."""
        deadline = time.monotonic() + CLUSTER_DEADLINE
        while True:
            masters, why = self._settled()
            if masters is not None:
                if done(masters):
                    return masters
                why = f"masters {masters}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {CLUSTER_DEADLINE} s waiting for {what}: {why}")
            time.sleep(0.05)  # polling interval of a deadline-bounded wait

    def failover(self, port_of_master: int | None = None) -> tuple[int, int]:
        """``CLUSTER FAILOVER`` on a replica of the master on ``port_of_master`` (by default the first master),
        and wait until that replica is master and the cluster has settled (the old master its replica);
        ``(old_master_port, new_master_port)``."""
        masters = self.master_ports()
        old = masters[0] if port_of_master is None else port_of_master
        if old not in masters:
            raise ValueError(f"{old} is not a master: the masters are {masters}")
        replicas = self.replicas_of(old)
        if not replicas:
            raise RuntimeError(f"the master on {old} has no live replica to fail over to")
        new = replicas[0]
        with self.server_on(new).client() as c:
            c.execute_command("CLUSTER", "FAILOVER")
        self._wait_settled(f"replica {new} to take over from {old}", lambda m: new in m and old not in m)
        return old, new

    def kill_master(self, port: int) -> int:
        """SIGKILL the master on ``port`` and wait until a replica of it has taken its place and the other nodes
        have settled; the new master's port."""
        before = self.master_ports()
        if port not in before:
            raise ValueError(f"{port} is not a master: the masters are {before}")
        replicas = self.replicas_of(port)
        if not replicas:
            raise RuntimeError(f"the master on {port} has no live replica to take its place")
        self.server_on(port).kill()
        return self.wait_replaced(port, replicas)

    def wait_replaced(self, port: int, replicas: list[int]) -> int:
        """Wait until one of ``replicas`` has taken the place of the master on ``port`` (which a test stopped
        or killed) and the cluster has settled; that replica's port."""
        masters = self._wait_settled(f"a replica of {port} to take its place",
                                     lambda m: port not in m and bool(set(m) & set(replicas)))
        return next(p for p in masters if p in replicas)

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again (killing it first if it runs) and wait until it has rejoined and the
        cluster has settled: a killed master comes back as a replica of the one that took its place, by its
        ``nodes.conf``, with no data (no persistence) until its full sync."""
        self.server_on(port).restart()
        self._wait_settled(f"node {port} to rejoin", lambda masters: True)

    def kill(self) -> None:
        """SIGKILL every node: the whole cluster is gone at once (as :meth:`RedisServer.kill` for one server)."""
        for server in self.live():
            server.kill()

    def stop(self) -> None:
        """Stop every node (SIGTERM to all of them first, then reap each)."""
        for server in self.live():
            assert server.proc is not None
            server.proc.terminate()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> RedisClusterGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
