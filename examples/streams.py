"""Redis Streams through the cache client: publish with trimming, read the latest,
a blocking read, a consumer group with acks, and taking over a dead consumer's
entries.

    python examples/streams.py [--socket PATH]

Needs Redis (``REDIS_URL``, else ``redis://127.0.0.1:6379``): streams live there,
not in the coordinator. Prints each step, then ``streams: ok`` (exit status 0) if
every result was the one the API promises; exits 2 when Redis does not answer.
``examples/price_ticks.py`` runs the same helpers across processes.
"""

from __future__ import annotations

import argparse
import threading
import uuid

import redis
from _support import Target, parser, redis_answers, run

from mtcache import Client, Settings

STREAM = f"example:ticks:{uuid.uuid4().hex[:8]}"  # a stream of this run's own


def main(target: Target, args: argparse.Namespace) -> int:
    settings = Settings.load()
    if not redis_answers(settings.redis_url):
        print(f"Redis at {settings.redacted_redis_url} does not answer: streams need it")
        return 2
    checks: list[bool] = []
    with Client(target.socket_path, spawn=False) as cache:
        ids = [cache.publish_to_stream(STREAM, {"sym": "ACME", "px": 100 + i}, maxlen=50) for i in range(200)]
        latest = cache.read_stream_latest(STREAM, count=3)
        print(f"published {len(ids)} ticks with maxlen=50 (approximate); newest 3: {[e[1]['px'] for e in latest]}")
        checks.append([e[1]["px"] for e in latest] == ["299", "298", "297"])

        after = cache.read_stream(STREAM, last_id=ids[-3], count=10)
        print(f"read_stream after the third newest id: {[e[1]['px'] for e in after]} (oldest first)")
        checks.append([e[1]["px"] for e in after] == ["298", "299"])

        woken: list[list[tuple[str, dict[str, str]]]] = []
        blocked = threading.Thread(target=lambda: woken.append(cache.read_stream(STREAM, block_ms=5000)))
        blocked.start()
        while not woken and blocked.is_alive():  # publish until the blocked reader has taken one
            cache.publish_to_stream(STREAM, {"sym": "ACME", "px": 300}, maxlen=50)
            blocked.join(timeout=0.05)
        print(f"a blocking read (block_ms=5000) woken by a publish: {woken[0][0][1] if woken and woken[0] else None}")
        checks.append(bool(woken and woken[0]))

        created = cache.create_consumer_group(STREAM, "pricing", start_id="0")
        again = cache.create_consumer_group(STREAM, "pricing", start_id="0")
        print(f"create_consumer_group: {created}, again: {again} (idempotent)")
        checks += [created is True, again is False]

        mine = cache.read_group(STREAM, "pricing", "worker-1", count=5)
        acked = cache.ack(STREAM, "pricing", *(entry_id for entry_id, _ in mine))
        print(f"worker-1 read {len(mine)} entries and acked {acked}")
        checks.append(acked == len(mine) == 5)

        lost = cache.read_group(STREAM, "pricing", "worker-dead", count=5)  # read, never acked
        taken = cache.claim_stale(STREAM, "pricing", "worker-2", min_idle_ms=0, count=10)
        print(f"worker-2 claimed {len(taken)} entries a dead consumer never acked")
        checks.append(sorted(e[0] for e in taken) == sorted(e[0] for e in lost))
        cache.ack(STREAM, "pricing", *(entry_id for entry_id, _ in taken))

        with redis.Redis.from_url(settings.redis_url) as raw:  # leave nothing behind
            raw.delete(f"mtcache:{settings.namespace}:stream:{STREAM}")

    ok = all(checks)
    print("streams: ok" if ok else "streams: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    run(main, parser(__doc__))
