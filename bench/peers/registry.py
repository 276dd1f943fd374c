"""The peers: what each needs, how it is configured, and what it cannot do."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["COORDINATOR_SETTINGS", "PEERS", "Peer", "peer_named"]

#: L1 and its shared-memory mirror sized for the 10,000-key working set (10 KiB values: ~100 MB);
#: the defaults (2,000 entries, 64 MiB, 64 MiB mirror) would not hold it.
COORDINATOR_SETTINGS = {"l1_capacity": 20_000, "l1_max_bytes": 256 * 2**20, "l1_shm_bytes": 256 * 2**20}

_SINGLE_TIER = "0 (no local copy): every read goes to Redis, so a read that starts after `set` returns sees it"


@dataclass(frozen=True)
class Peer:
    """One cache under test."""

    name: str
    is_async: bool
    setup: str
    stampede: str
    redis: bool = True
    coordinator: bool = False
    directory: bool = False
    #: workload -> why it is not run for this peer (shown as "n/a" with the reason)
    skip: dict[str, str] = field(default_factory=dict)
    #: W5 without a measurement: the figure by construction, or why it cannot be done
    crosshost: str | None = None


PEERS: tuple[Peer, ...] = (
    Peer(
        "mtcache", False,
        "`Client(socket, spawn=False)` with its defaults (near cache 128 MiB / 65,536 entries / 30 s, reads the "
        "coordinator's shared-memory L1 mirror before its socket); one coordinator (uvloop) with `--l1-capacity 20000 "
        "--l1-max-bytes 256MiB --l1-shm-bytes 256MiB` so L1 and its mirror hold the working set; Redis as L2; msgpack",
        "`get_or_compute`: one lease per key per host (threads of a process share one request), "
        "Redis `SET NX` lease across hosts; waiters are woken by the coordinator",
        coordinator=True,
    ),
    Peer(
        "mtcache (async)", True,
        "`AsyncClient`, otherwise as `mtcache`; driven from one uvloop loop per worker",
        "`AsyncClient.get_or_compute` with a coroutine function; the same leases",
        coordinator=True,
        skip={"w4": "not run separately: the same near cache and coordinator as `Client`"},
        crosshost="not run separately: the same invalidation path as `Client`",
    ),
    Peer(
        "mtcache (write-behind)", False,
        "as `mtcache`, with `Client(write_mode=\"behind\")`: `set`/`delete` return once this host's L1, mirror and "
        "version table hold the write; Redis and the stream follow within 5 ms",
        "as `mtcache`",
        coordinator=True,
        skip={w: "not run separately: only writes differ from `mtcache`" for w in ("w1", "w3", "w4")},
        crosshost="not run separately: the same invalidation path as `Client`, sent up to 5 ms later",
    ),
    Peer(
        "redis-py", False,
        "`redis.Redis.from_url(url)` (hiredis parser), msgpack values, `SET ... EX 3600`; no local tier",
        "get, compute on a miss, set: no lock (redis-py has no caching helper)",
        crosshost=_SINGLE_TIER,
    ),
    Peer(
        "cachetools+redis", False,
        "per-worker `cachetools.TTLCache(maxsize=65536, ttl=30)` (as many entries, and as old, as mtcache's near "
        "cache) "
        "behind a `threading.Lock`, in front of redis-py as above; a write updates Redis and the writer's own "
        "TTLCache only",
        "get (local, then Redis), compute on a miss, set both: no lock",
        crosshost="up to the local TTL, 30 s, by construction: nothing invalidates other processes' copies "
                  "(not measured; W2 counts the stale reads this causes)",
    ),
    Peer(
        "cashews", True,
        "`Cache().setup(url, client_side=True, protocol=2)`: per-process memory cache (10,000 entries, its "
        "default) invalidated by Redis client tracking (BCAST); pickle values (its default serializer); uvloop. "
        "`protocol=2` because its invalidation listener reads RESP2 pub/sub messages and redis-py 8 defaults to "
        "RESP3 (see the next row)",
        "`@cache(ttl=3600, key=..., lock=True)` (Redis lock around the call; same-key calls in one process "
        "coalesced); waiters poll the lock with `check_interval=0`",
    ),
    Peer(
        "cashews (RESP3)", True,
        "as `cashews` but with redis-py's default protocol (RESP3 in redis-py 8): the invalidations arrive as "
        "RESP3 push messages, which cashews' listener never reads",
        "as `cashews`",
        skip={w: "run in W2 only, to show what the protocol default does to coherence" for w in ("w1", "w3", "w4")},
        crosshost="never while the local copy lives: no invalidation reaches the local cache, and a copy filled "
                  "by a read has no TTL (only LRU eviction removes it)",
    ),
    Peer(
        "aiocache", True,
        "`RedisCache(endpoint, port)` with its default JSON serializer (its `MsgPackSerializer` fails to read "
        "values back: the Redis backend decodes them as UTF-8 first); no local tier; uvloop",
        "`@cached_stampede(lease=2, ttl=3600)`: `RedLock` (SET NX); waiters wait on an in-process event, so "
        "callers in other processes do not wait",
        crosshost=_SINGLE_TIER,
    ),
    Peer(
        "dogpile.cache", False,
        "`make_region().configure('dogpile.cache.redis', arguments={url, distributed_lock: True, "
        "thread_local_lock: False, lock_timeout: 30, redis_expiration_time})`; pickle values; no local tier",
        "`region.get_or_create(key, creator)` under the Redis lock (waiters poll every 0.1 s, redis-py `Lock`)",
        crosshost=_SINGLE_TIER,
    ),
    Peer(
        "diskcache", False,
        "`FanoutCache(directory, shards=8, timeout=0.010)` (its documented defaults), one directory shared by the "
        "8 workers; pickle values",
        "the `memoize` pattern: get, compute on a miss, set; no lock",
        redis=False, directory=True,
        crosshost="n/a: one host only (a local SQLite directory; SQLite advises against network file systems)",
    ),
)


def peer_named(name: str) -> Peer:
    """The peer called ``name``.

    :raises KeyError: no such peer.
    """
    for peer in PEERS:
        if peer.name == name:
            return peer
    raise KeyError(name)
