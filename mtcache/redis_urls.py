"""Redis clients from mtcache's Redis URLs, for the coordinator and the workers' stream helpers alike.

``redis://``, ``rediss://`` and ``unix://`` go to redis-py's ``from_url``. ``redis+sentinel://`` (see
:func:`parse_sentinel_url`) gives a client of the service's current master, found through the sentinels:
every connection it opens (the pool's, and those the coordinator makes from the pool's
``connection_class`` and ``connection_kwargs``) asks the sentinels where the master is, and one that finds
itself talking to a demoted master (a ``READONLY`` reply) is closed as a connection error, so the next one
goes to the new master.

``redis+cluster://`` and ``rediss+cluster://`` (see :func:`parse_cluster_url`) give a
:class:`redis.asyncio.cluster.RedisCluster` (or :class:`redis.cluster.RedisCluster`): the hosts are seed
nodes, the client learns the slot map from them and follows it through resharding and failovers
(``MOVED``, ``ASK``, a node that went away).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:  # imported where a client is made: a worker reads URLs but never opens one to Redis
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster

__all__ = [
    "ClusterTarget", "SentinelTarget", "async_client", "is_cluster_url", "is_sentinel_url", "parse_cluster_url",
    "parse_sentinel_url", "sentinel_connection_kwargs", "sync_client",
]

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_SCHEMES = (SENTINEL_SCHEME, "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_REDIS_PORT = 6379


class SentinelTarget(NamedTuple):
    """What a ``redis+sentinel://`` URL names: the sentinels, the service (the master's name in their
    configuration), the database, the credentials of the data nodes (not of the sentinels), and for
    ``rediss+sentinel://`` TLS to the sentinels and the data nodes alike, with the URL's ``ssl_*`` options."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: bool
    tls_options: dict[str, str]


class ClusterTarget(NamedTuple):
    """What a ``redis+cluster://`` URL names: seed nodes, the credentials, and whether to use TLS with
    the URL's ``ssl_*`` options (redis-py's names, as on ``rediss://``)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool
    tls_options: dict[str, str]


def is_sentinel_url(url: str) -> bool:
    """True if ``url`` is a ``redis+sentinel://`` or ``rediss+sentinel://`` URL."""
    return url.startswith(tuple(scheme + "://" for scheme in SENTINEL_SCHEMES))


def _tls_query(scheme: str, query: str) -> dict[str, str]:
    """The ``ssl_*`` options of a sentinel or cluster URL's query (any other parameter is refused)."""
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = [name for name in options if not name.startswith("ssl_")]
    if unknown:
        raise ValueError(f"a {scheme}:// URL takes TLS options (ssl_*) only in its query, got {unknown[0]!r}")
    return options


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]`` (a port defaults
    to 26379), or ``rediss+sentinel://`` with redis-py's ``ssl_*`` options in the query (TLS to the
    sentinels and to the data nodes).

    :raises ValueError: the URL is not of that form; the message names the bad part, never the password.
    """
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL (scheme {parts.scheme!r})")
    hosts, username, password = _credentials(parts.netloc)
    if parts.fragment or (parts.query and parts.scheme == SENTINEL_SCHEME):
        raise ValueError(f"a {SENTINEL_SCHEME}:// URL takes no query or fragment (TLS options need rediss+sentinel://)")
    tls_options = _tls_query(parts.scheme, parts.query)
    sentinels = _hosts(hosts, "sentinel", DEFAULT_SENTINEL_PORT)
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise ValueError(f"a {SENTINEL_SCHEME}:// URL needs the service name: {SENTINEL_SCHEME}://host:port/service")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"after the service name a {SENTINEL_SCHEME}:// URL takes a database number only, "
                         f"got {'/'.join(path[1:])!r}")
    db = int(path[1]) if len(path) == 2 else 0
    return SentinelTarget(sentinels, path[0], db, username, password, parts.scheme == "rediss+sentinel", tls_options)


def is_cluster_url(url: str) -> bool:
    """True if ``url`` is a ``redis+cluster://`` or ``rediss+cluster://`` URL."""
    return url.startswith(tuple(scheme + "://" for scheme in CLUSTER_SCHEMES))


def _hosts(hosts: str, what: str, default_port: int) -> tuple[tuple[str, int], ...]:
    out: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise ValueError(f"{what} {item!r} in the URL has no host (expected host:port)")
        if colon and (not port.isdigit() or not 0 < int(port) < 65536):
            raise ValueError(f"{what} {item!r} in the URL has an invalid port {port!r}")
        out.append((host.strip("[]"), int(port) if colon else default_port))
    return tuple(out)


def _credentials(netloc: str) -> tuple[str, str | None, str | None]:
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    return hosts, username, password


def parse_cluster_url(url: str) -> ClusterTarget:
    """Parse ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://`` for TLS, with
    redis-py's ``ssl_*`` options in the query; a port defaults to 6379). A cluster has database 0 only: a
    path other than ``/`` or ``/0`` is refused.

    :raises ValueError: the URL is not of that form; the message names the bad part, never the password.
    """
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a redis+cluster:// URL (scheme {parts.scheme!r})")
    hosts, username, password = _credentials(parts.netloc)
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has database 0 only; the URL's path is {parts.path!r}")
    if parts.fragment:
        raise ValueError("a redis+cluster:// URL takes no fragment")
    query = _tls_query(parts.scheme, parts.query)
    return ClusterTarget(_hosts(hosts, "node", DEFAULT_REDIS_PORT), username, password,
                         parts.scheme == "rediss+cluster", query)


def _cluster_options(target: ClusterTarget, options: dict[str, Any]) -> dict[str, Any]:
    """redis-py's RedisCluster arguments: the URL's credentials and TLS options, then ``options`` but for
    ``db`` (a cluster has database 0 only) and ``retry``: a single connection's retry policy does not fit a
    cluster client, which retries on its own (it follows ``MOVED`` and learns the slot map again), each
    call within its caller's deadline."""
    return {"username": target.username, "password": target.password, **_tls_kwargs(target),
            **{name: value for name, value in options.items() if name not in ("retry", "db")}}


def _tls_kwargs(target: SentinelTarget | ClusterTarget) -> dict[str, Any]:
    """redis-py's TLS arguments from the URL's ``ssl_*`` options (as ``from_url`` reads a ``rediss://`` query);
    none for a URL without TLS."""
    if not target.tls:
        return {}
    out: dict[str, Any] = {"ssl": True}
    for name, value in target.tls_options.items():
        out[name] = value.lower() in ("1", "true", "yes", "on") if name == "ssl_check_hostname" else value
    return out


def sentinel_connection_kwargs(target: SentinelTarget, connect_timeout: float | None) -> dict[str, Any]:
    """redis-py's arguments for a connection to one of ``target``'s sentinels: without the data nodes'
    credentials, over TLS with the URL's options for ``rediss+sentinel://``; no socket timeout (a
    subscription waits for as long as it takes)."""
    return {"socket_connect_timeout": connect_timeout, "socket_keepalive": True, **_tls_kwargs(target)}


def _sentinel_kwargs(target: SentinelTarget, connect_timeout: float | None) -> dict[str, Any]:
    """How the sentinels are asked where the master is (each question bounded by ``connect_timeout``)."""
    return {**sentinel_connection_kwargs(target, connect_timeout), "socket_timeout": connect_timeout}


def _master_kwargs(target: SentinelTarget, options: dict[str, Any]) -> dict[str, Any]:
    return {"db": target.db, "username": target.username, "password": target.password, **_tls_kwargs(target),
            **options}


def async_client(url: str, **options: Any) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
    """A ``redis.asyncio`` client of ``url`` with ``options`` (redis-py's client options): a ``RedisCluster``
    for a cluster URL.

    :raises ValueError: ``url`` is malformed.
    """
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.sentinel

    if is_cluster_url(url):
        cluster = parse_cluster_url(url)
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(host, port) for host, port in cluster.nodes],
            **_cluster_options(cluster, options))
    if not is_sentinel_url(url):
        return redis.asyncio.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    manager = redis.asyncio.sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target, options.get("socket_connect_timeout")))
    return manager.master_for(target.service, redis_class=redis.asyncio.Redis, **_master_kwargs(target, options))


def sync_client(url: str, **options: Any) -> redis.Redis | redis.cluster.RedisCluster:
    """A synchronous client of ``url`` with ``options`` (see :func:`async_client`).

    :raises ValueError: ``url`` is malformed.
    """
    import redis
    import redis.cluster
    import redis.sentinel

    if is_cluster_url(url):
        cluster = parse_cluster_url(url)
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in cluster.nodes],
            **_cluster_options(cluster, options))
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    manager = redis.sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target, options.get("socket_connect_timeout")))
    return manager.master_for(target.service, redis_class=redis.Redis, **_master_kwargs(target, options))
