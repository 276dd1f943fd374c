"""Redis clients from mtcache's Redis URLs, for the coordinator and the workers' stream helpers alike.

``redis://``, ``rediss://`` and ``unix://`` go to redis-py's ``from_url``. ``redis+sentinel://`` (see
:func:`parse_sentinel_url`) gives a client of the service's current master, found through the sentinels:
every connection it opens (the pool's, and those the coordinator makes from the pool's
``connection_class`` and ``connection_kwargs``) asks the sentinels where the master is, and one that finds
itself talking to a demoted master (a ``READONLY`` reply) is closed as a connection error, so the next one
goes to the new master.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

__all__ = ["SentinelTarget", "async_client", "is_sentinel_url", "parse_sentinel_url", "sync_client"]

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379


class SentinelTarget(NamedTuple):
    """What a ``redis+sentinel://`` URL names: the sentinels, the service (the master's name in their
    configuration), the database, and the credentials of the data nodes (not of the sentinels)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None


def is_sentinel_url(url: str) -> bool:
    """True if ``url`` is a ``redis+sentinel://`` URL."""
    return url.startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]`` (a port defaults
    to 26379).

    :raises ValueError: the URL is not of that form; the message names the bad part, never the password.
    """
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL (scheme {parts.scheme!r})")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    if parts.query or parts.fragment:
        raise ValueError(f"a {SENTINEL_SCHEME}:// URL takes no query or fragment")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise ValueError(f"sentinel {item!r} in the URL has no host (expected host:port)")
        if colon and (not port.isdigit() or not 0 < int(port) < 65536):
            raise ValueError(f"sentinel {item!r} in the URL has an invalid port {port!r}")
        sentinels.append((host.strip("[]"), int(port) if colon else DEFAULT_SENTINEL_PORT))
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise ValueError(f"a {SENTINEL_SCHEME}:// URL needs the service name: {SENTINEL_SCHEME}://host:port/service")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"after the service name a {SENTINEL_SCHEME}:// URL takes a database number only, "
                         f"got {'/'.join(path[1:])!r}")
    db = int(path[1]) if len(path) == 2 else 0
    return SentinelTarget(tuple(sentinels), path[0], db, username, password)


def _sentinel_kwargs(connect_timeout: float | None) -> dict[str, Any]:
    return {"socket_timeout": connect_timeout, "socket_connect_timeout": connect_timeout}


def async_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """A ``redis.asyncio`` client of ``url`` with ``options`` (redis-py's client options).

    :raises ValueError: ``url`` is malformed.
    """
    if not is_sentinel_url(url):
        return redis.asyncio.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    manager = redis.asyncio.sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(options.get("socket_connect_timeout")))
    return manager.master_for(target.service, redis_class=redis.asyncio.Redis, db=target.db,
                              username=target.username, password=target.password, **options)


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A synchronous client of ``url`` with ``options`` (see :func:`async_client`).

    :raises ValueError: ``url`` is malformed.
    """
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    manager = redis.sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(options.get("socket_connect_timeout")))
    return manager.master_for(target.service, redis_class=redis.Redis, db=target.db,
                              username=target.username, password=target.password, **options)
