"""Price ticks over a Redis stream: one publisher, a consumer group of two, a reader.

    python examples/price_ticks.py [--redis-url URL] [--ticks N]

A publisher process appends price ticks for a few symbols to a stream trimmed to
about MAXLEN entries. Two consumer processes in one consumer group share the ticks,
each acking what it handled. The main process shows the latest ticks, checks that
every tick was consumed exactly once, prints a summary and deletes its stream.

The publisher never runs more than MAXLEN // 2 ticks ahead of the consumers: trimming
drops the oldest entries whether a group has read them or not, so without this
back-pressure a slow consumer would lose ticks.

Exit status: 0 every tick consumed exactly once; 1 not, or the run took too long;
2 Redis does not answer.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import random
import sys
import time
import uuid
from collections import Counter
from typing import Any

import multiprocess
import redis

from mtcache import Client, L2Error, Settings

#: the streams live under mtcache:<namespace>:stream:<name>; no coordinator is needed for them
NAMESPACE = "example"
GROUP = "pricers"
CONSUMERS = ("consumer-1", "consumer-2")
SYMBOLS = ("AAPL", "MSFT", "GOOG")
MAXLEN = 200
RUN_DEADLINE = 60.0  # seconds; the example ends by itself even if a process hangs


def _streams(url: str) -> Client:
    """A client used for its Redis Streams helpers only (they talk to Redis directly)."""
    return Client(redis_url=url, namespace=NAMESPACE, spawn=False)


def publish(url: str, stream: str, ticks: int, consumed: Any, results: Any) -> None:
    """Publisher process: ``ticks`` ticks round-robin over SYMBOLS, a random walk each."""
    rnd = random.Random(7)
    prices = dict.fromkeys(SYMBOLS, 100.0)
    with _streams(url) as streams:
        for seq in range(ticks):
            while seq - consumed.value >= MAXLEN // 2:
                time.sleep(0.001)  # back-pressure: let the consumers catch up before trimming could bite
            symbol = SYMBOLS[seq % len(SYMBOLS)]
            prices[symbol] = round(prices[symbol] * (1 + rnd.gauss(0, 0.002)), 2)
            streams.publish_to_stream(stream, {"seq": seq, "symbol": symbol, "price": prices[symbol]}, maxlen=MAXLEN)
    results.put(("published", ticks))


def consume(url: str, stream: str, name: str, consumed: Any, stop: Any, results: Any) -> None:
    """Consumer process: read new ticks as ``name`` in GROUP, ack them, until stopped and idle."""
    seqs: list[int] = []
    with _streams(url) as streams:
        while True:
            entries = streams.read_group(stream, GROUP, name, count=50, block_ms=100)
            if not entries:
                if stop.is_set():
                    break
                continue
            seqs += (int(fields["seq"]) for _, fields in entries)
            streams.ack(stream, GROUP, *(entry_id for entry_id, _ in entries))
            with consumed.get_lock():
                consumed.value += len(entries)
    results.put(("consumed", name, seqs))


def _failed(procs: list[Any]) -> bool:
    return any(proc.exitcode not in (None, 0) for proc in procs)


def _wait_for(condition: Any, deadline: float) -> bool:
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def run(url: str, ticks: int) -> int:
    stream = f"price_ticks:{uuid.uuid4().hex[:8]}"
    with _streams(url) as streams:
        try:
            streams.create_consumer_group(stream, GROUP, start_id="0")
        except L2Error as exc:
            shown = Settings.load(redis_url=url).redacted_redis_url
            print(f"Redis at {shown} does not answer: {exc.__cause__}", file=sys.stderr)
            return 2
        try:
            return _run(url, streams, stream, ticks)
        finally:  # the stream was only for this run
            with redis.Redis.from_url(url) as plain, contextlib.suppress(redis.RedisError):
                plain.delete(f"mtcache:{NAMESPACE}:stream:{stream}")


def _run(url: str, streams: Client, stream: str, ticks: int) -> int:
    ctx = multiprocess.get_context("spawn")
    consumed, stop, results = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=consume, args=(url, stream, name, consumed, stop, results)) for name in CONSUMERS]
    procs.append(ctx.Process(target=publish, args=(url, stream, ticks, consumed, results)))
    deadline = time.monotonic() + RUN_DEADLINE
    for proc in procs:
        proc.start()
    reports: list[Any] = []
    try:
        finished = _wait_for(lambda: consumed.value >= ticks or _failed(procs), deadline)
        stop.set()
        if finished and not _failed(procs):
            reports = [results.get(timeout=max(0.1, deadline - time.monotonic())) for _ in procs]
    except queue.Empty:
        pass
    finally:
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
    if len(reports) != len(procs):
        codes = ", ".join(f"{proc.name} {proc.exitcode}" for proc in procs)
        print(f"the run failed or did not finish within {RUN_DEADLINE:.0f} s (exit codes: {codes})", file=sys.stderr)
        return 1
    return _summary(streams, stream, ticks, reports)


def _summary(streams: Client, stream: str, ticks: int, reports: list[Any]) -> int:
    per_consumer = {report[1]: report[2] for report in reports if report[0] == "consumed"}
    counts = Counter(seq for seqs in per_consumer.values() for seq in seqs)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    missing = ticks - len(set(counts) & set(range(ticks)))
    length = len(streams.read_stream_latest(stream, count=10 * MAXLEN))

    print(f"published {ticks} ticks for {', '.join(SYMBOLS)}; stream trimmed to ~{MAXLEN}, now {length} entries")
    print(", ".join(f"{name} consumed {len(seqs)}" for name, seqs in sorted(per_consumer.items())))
    print("latest ticks:")
    for entry_id, fields in streams.read_stream_latest(stream, count=5):
        print(f"  {entry_id:>20}  #{fields['seq']:>6}  {fields['symbol']:<5} {fields['price']:>9}")
    if duplicates or missing:
        print(f"NOT every tick consumed exactly once: {len(counts)} of {ticks}", end=" ")
        print(f"(duplicates {duplicates}, missing {missing})")
        return 1
    print(f"every tick consumed exactly once: {len(counts)} of {ticks} (duplicates 0, missing 0)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL, ./.env, redis://127.0.0.1:6379)")
    parser.add_argument("--ticks", type=int, default=1000, help="how many ticks to publish (default 1000)")
    args = parser.parse_args(argv)
    if args.ticks <= 0:
        parser.error("--ticks must be positive")
    return run(Settings.load(redis_url=args.redis_url).redis_url, args.ticks)


if __name__ == "__main__":
    sys.exit(main())
