"""Settings and their priority.

Every setting is resolved with one rule, highest first:

1. an explicit argument (``Settings.load(redis_url=...)``, a CLI flag);
2. the process environment (``REDIS_URL``, ``MTCACHE_*``);
3. a ``.env`` file in the working directory (parsed with python-dotenv, never
   exported into ``os.environ``);
4. the defaults below.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from dotenv import dotenv_values

from mtcache.protocol import MAX_FRAME, MAX_VALUE_LIMIT
from mtcache.redis_urls import is_cluster_url, is_sentinel_url, parse_cluster_url, parse_sentinel_url

__all__ = [
    "DEFAULT_REDIS_URL", "MINIMAL_ACL", "TLS_QUERY_OPTIONS", "Settings", "default_socket_path", "redact_url",
    "resolve_redis_url",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_QUERY_PASSWORD = re.compile(r"((?:^|&)(?:ssl_)?password=)[^&]*")
_SCHEMES = ("redis", "rediss", "unix")
#: the TLS options a ``rediss://`` URL may carry in its query, as redis-py names them (and passes them on to
#: every connection it opens: the L2 tier's, the coordinator's own write and stream connections, user streams)
TLS_QUERY_OPTIONS = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_cert_reqs",
                     "ssl_check_hostname", "ssl_min_version", "ssl_ciphers")
#: The ACL rules of a Redis user mtcache runs under (``ACL SETUSER <name> on ><password> <MINIMAL_ACL>``): every
#: command the coordinator and the stream helpers send, on the keys of every namespace. ``+time`` (clock skew)
#: and ``+config|get`` (the eviction policy check) are optional: without them mtcache runs, and says in its log
#: and in ``health()`` what goes unchecked. A URL naming a database other than 0 also needs ``+select``.
MINIMAL_ACL = "+@read +@write +@stream -@dangerous +eval +evalsha +ping +time +config|get ~mtcache:*"
_CERT_REQS = ("none", "optional", "required")
_BOOLEANS = ("0", "1", "true", "false", "yes", "no", "on", "off")


def default_socket_path(namespace: str = "default") -> str:
    """``$XDG_RUNTIME_DIR/mtcache/<namespace>.sock`` when ``XDG_RUNTIME_DIR`` is set
    (to an absolute path, as the XDG spec requires), else
    ``/tmp/mtcache-<uid>/<namespace>.sock``. One namespace, one coordinator: two
    apps of one user with different namespaces each get their own.

    Only computes the path, never touches the disk: a spawning client creates the
    folder (mode 0700) with :func:`mtcache.client.trust.ensure_socket_dir`, and
    every client refuses a folder that is not its user's alone
    (:func:`mtcache.client.trust.check_socket_dir`) before it connects.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = os.path.join(runtime, "mtcache") if os.path.isabs(runtime) else f"/tmp/mtcache-{os.getuid()}"
    return os.path.join(base, f"{namespace}.sock")


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``: the one in the user
    part and a ``password=`` query parameter (which redis-py also reads).

    Use it for every URL that is logged or shown. Never raises.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _validate_url(url: str) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError(f"Redis URL must be a non-empty string, got {url!r}")
    parts = urlsplit(url)
    parse = parse_cluster_url if is_cluster_url(url) else parse_sentinel_url if is_sentinel_url(url) else None
    if parse is not None:  # redis+cluster://, rediss+sentinel:// ...: many hosts, TLS options as on rediss://
        try:
            parse(url)
        except ValueError as exc:
            raise ValueError(f"Redis URL {redact_url(url)!r}: {exc}") from None
        _validate_tls_query(parts.scheme.split("+")[0], parts.query, url)
        return url
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"Redis URL {redact_url(url)!r} has scheme {parts.scheme!r}; expected one of {', '.join(_SCHEMES)}, "
            f"redis+sentinel, rediss+sentinel, redis+cluster, rediss+cluster"
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ValueError(f"Redis URL {redact_url(url)!r} has an invalid port: {exc}") from None
    _validate_tls_query(parts.scheme, parts.query, url)
    return url


def _validate_tls_query(scheme: str, query: str, url: str) -> None:
    """The ``ssl_*`` options of the URL's query: known names, on ``rediss://`` only, with values redis-py
    accepts. Errors name the option and never show ``ssl_password``'s value."""
    options = parse_qs(query, keep_blank_values=True)
    for name, values in options.items():
        if not name.startswith("ssl_"):
            continue
        if name not in TLS_QUERY_OPTIONS:
            raise ValueError(
                f"Redis URL {redact_url(url)!r} has the unknown TLS option {name!r}; "
                f"known: {', '.join(TLS_QUERY_OPTIONS)}"
            )
        if scheme != "rediss":
            raise ValueError(
                f"Redis URL {redact_url(url)!r} has the TLS option {name!r} but scheme {scheme!r}: "
                f"TLS needs rediss://"
            )
        value = values[-1]
        if name != "ssl_password" and not value:
            raise ValueError(f"Redis URL {redact_url(url)!r}: the TLS option {name!r} is empty")
        if name == "ssl_cert_reqs" and value.lower() not in _CERT_REQS:
            raise ValueError(
                f"Redis URL {redact_url(url)!r}: ssl_cert_reqs={value!r}; expected one of {', '.join(_CERT_REQS)}"
            )
        if name == "ssl_check_hostname" and value.lower() not in _BOOLEANS:
            raise ValueError(f"Redis URL {redact_url(url)!r}: ssl_check_hostname={value!r} is not a boolean")
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise ValueError(
            f"Redis URL {redact_url(url)!r} has ssl_keyfile without ssl_certfile: a client certificate needs both"
        )


def _dotenv(cwd: Path | None = None) -> dict[str, str]:
    path = (cwd or Path.cwd()) / ".env"
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def resolve_redis_url(
    explicit: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """The Redis URL: ``explicit`` → ``REDIS_URL`` in the environment → ``REDIS_URL``
    in ``./.env`` → ``redis://127.0.0.1:6379``.

    Accepts ``redis://``, ``rediss://`` and ``unix://`` URLs with user, password
    and database number, Sentinel's
    ``redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]`` (``rediss+sentinel://``
    with TLS), and Redis
    Cluster's ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://``
    with TLS); a
    ``rediss://`` URL may carry redis-py's TLS options in its query
    (:data:`TLS_QUERY_OPTIONS`: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
    ``ssl_cert_reqs`` ...).

    :raises ValueError: the chosen URL has another scheme, is empty, or has a TLS option that is unknown,
        invalid or on a URL that is not ``rediss://``.
    """
    return Settings.load(redis_url=explicit, environ=environ, cwd=cwd).redis_url


@dataclass(frozen=True, slots=True)
class Settings:
    """Every mtcache setting, resolved once (see the module docstring for priority).

    Sizes are in bytes, durations in seconds. A write's TTL (``ttl=`` or a
    strategy, ``FOREVER`` included) holds on every tier; ``l1_ttl`` and ``l2_ttl``
    are how long a write that gives neither lives in L1 (and the near copies) and
    in Redis.

    ``lease_ttl`` is how long a lease outlives a holder that stopped living;
    ``lease_max`` how long a living holder may keep renewing it. ``tombstone_ttl``
    is how long a delete's tombstone stays in Redis (a fill whose lease began
    earlier than that is kept in L1 only); ``backlog_max_bytes`` bounds the writes
    a coordinator keeps while Redis is unreachable.

    ``idle_exit`` is how long a coordinator that a client starts (``spawn=True``)
    goes on without any connection before it exits (0: never). A coordinator
    started with ``mtcache-coordinator`` or :func:`mtcache.start_coordinator` exits
    when idle only if asked (``--idle-exit``, ``idle_exit=``).

    ``l1_shm_bytes`` is the most the shared-memory L1 mirror may grow to (0: no
    mirror; by default twice ``l1_max_bytes`` plus its buckets): its memory is what it
    holds, reserved as it fills, not this size.

    ``near_capacity`` and ``near_max_bytes`` bound each worker's near cache (the
    client's defaults): bytes are the encoded sizes of the values it holds (plus their
    keys), entries the secondary bound. The byte default holds a working set of
    10,000 values of 10 KiB (about 98 MiB encoded).
    """

    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    socket_path: str = ""
    namespace: str = "default"
    l1_capacity: int = 2_000
    l1_max_bytes: int = 64 * 1024 * 1024
    l1_ttl: float = 300.0
    l2_ttl: float = 3600.0
    stream_maxlen: int = 1_000
    max_value_bytes: int = 8 * 1024 * 1024
    redis_timeout: float = 1.0
    lease_ttl: float = 30.0
    inval_maxlen: int = 100_000
    staleness_bound: float = 5.0
    #: -1: sized from the L1's bounds (see __post_init__)
    l1_shm_bytes: int = -1
    lease_max: float = 300.0
    tombstone_ttl: float = 600.0
    backlog_max_bytes: int = 64 * 1024 * 1024
    idle_exit: float = 600.0
    near_capacity: int = 65_536
    near_max_bytes: int = 128 * 1024 * 1024

    # environment variable for each field; REDIS_URL is the common name
    _ENV = {
        "redis_url": "REDIS_URL",
        "socket_path": "MTCACHE_SOCKET",
        "namespace": "MTCACHE_NAMESPACE",
        "l1_capacity": "MTCACHE_L1_CAPACITY",
        "l1_max_bytes": "MTCACHE_L1_MAX_BYTES",
        "l1_ttl": "MTCACHE_L1_TTL",
        "l2_ttl": "MTCACHE_L2_TTL",
        "stream_maxlen": "MTCACHE_STREAM_MAXLEN",
        "max_value_bytes": "MTCACHE_MAX_VALUE_BYTES",
        "redis_timeout": "MTCACHE_REDIS_TIMEOUT",
        "lease_ttl": "MTCACHE_LEASE_TTL",
        "inval_maxlen": "MTCACHE_INVAL_MAXLEN",
        "staleness_bound": "MTCACHE_STALENESS_BOUND",
        "l1_shm_bytes": "MTCACHE_L1_SHM_BYTES",
        "lease_max": "MTCACHE_LEASE_MAX",
        "tombstone_ttl": "MTCACHE_TOMBSTONE_TTL",
        "backlog_max_bytes": "MTCACHE_BACKLOG_MAX_BYTES",
        "idle_exit": "MTCACHE_IDLE_EXIT",
        "near_capacity": "MTCACHE_NEAR_CAPACITY",
        "near_max_bytes": "MTCACHE_NEAR_MAX_BYTES",
    }

    def __post_init__(self) -> None:
        _validate_url(self.redis_url)
        if not isinstance(self.namespace, str) or not _NAMESPACE.fullmatch(self.namespace):
            raise ValueError(
                f"namespace must be 1-64 letters, digits, '_', '-' or '.' (it names Redis keys and files), "
                f"got {self.namespace!r}"
            )
        for name in ("l1_capacity", "l1_max_bytes", "stream_maxlen", "max_value_bytes", "inval_maxlen",
                     "backlog_max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_value_bytes > MAX_VALUE_LIMIT:
            # a larger value cannot travel in one protocol frame: the writes would fail one by one, later
            raise ValueError(
                f"max_value_bytes (MTCACHE_MAX_VALUE_BYTES) is {self.max_value_bytes:,} bytes, more than one "
                f"protocol frame can carry: the frame limit (mtcache.protocol.MAX_FRAME) is {MAX_FRAME:,} bytes, "
                f"so max_value_bytes may be at most {MAX_VALUE_LIMIT:,}"
            )
        for name, zero in (("l1_shm_bytes", "no mirror"), ("near_capacity", "no near cache"),
                           ("near_max_bytes", "no near cache")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < -(name == "l1_shm_bytes"):
                raise ValueError(f"{name} must be a non-negative integer (0: {zero}), got {value!r}")
        if self.l1_shm_bytes == -1:
            # room for L1's bytes twice over (the mirror's ring may hold as many dead bytes as live ones)
            # and its buckets (4 x 64 bytes for each of up to 2 x l1_capacity sets), plus a header page;
            # a cap, not a reservation: the mirror's memory grows with what it holds
            object.__setattr__(self, "l1_shm_bytes", 2 * self.l1_max_bytes + 512 * self.l1_capacity + 65_536)
        for name in ("l1_ttl", "l2_ttl", "redis_timeout", "lease_ttl", "staleness_bound", "lease_max",
                     "tombstone_ttl"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        idle = self.idle_exit
        if not isinstance(idle, (int, float)) or isinstance(idle, bool) or not 0 <= idle < float("inf"):
            raise ValueError(f"idle_exit must be a non-negative number of seconds (0: never), got {idle!r}")
        if self.lease_max < self.lease_ttl:
            raise ValueError(f"lease_max ({self.lease_max:g} s) must be at least lease_ttl ({self.lease_ttl:g} s)")
        if self.tombstone_ttl < self.lease_max + self.staleness_bound:
            # a fill may land up to a lease's longest life (and a staleness bound) after the delete it must
            # not undo
            raise ValueError(
                f"tombstone_ttl ({self.tombstone_ttl:g} s) must be at least lease_max + staleness_bound "
                f"({self.lease_max:g} + {self.staleness_bound:g} s)"
            )

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "redis_url"
        )
        return f"Settings(redis_url={self.redacted_redis_url!r}, {shown})"

    @property
    def redacted_redis_url(self) -> str:
        """The Redis URL with its password shown as ``***``."""
        return redact_url(self.redis_url)

    @classmethod
    def load(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        **explicit: Any,
    ) -> Settings:
        """Resolve every setting: explicit keyword arguments (``None`` means "not
        given") → ``environ`` (default ``os.environ``) → ``.env`` in ``cwd``
        (default the working directory) → defaults.

        :raises TypeError: an unknown setting name was passed.
        :raises ValueError: a value (given or read) is invalid; the message names it.
        """
        names = {f.name: f for f in fields(cls)}
        unknown = set(explicit) - set(names)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        env = os.environ if environ is None else environ
        dotenv = _dotenv(cwd)
        values: dict[str, Any] = {}
        from_env: dict[str, str] = {}
        for name, f in names.items():
            if explicit.get(name) is not None:
                values[name] = explicit[name]
                continue
            var = cls._ENV[name]
            raw = env.get(var) or dotenv.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _convert(name, var, raw, type(f.default))
            from_env[name] = var
        if not values.get("socket_path"):
            namespace = values.get("namespace", "default")
            values["socket_path"] = default_socket_path(namespace if isinstance(namespace, str) else "default")
        try:
            return cls(**values)
        except ValueError as exc:
            named = [var for name, var in from_env.items() if name in str(exc)]
            if named:
                raise ValueError(f"{exc} (from {', '.join(named)})") from None
            raise


def _convert(name: str, var: str, raw: str, kind: type) -> Any:
    if kind is str:
        return raw
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a valid {kind.__name__} for setting {name}") from None
