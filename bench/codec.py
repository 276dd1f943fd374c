"""What the MsgpackCodec conveniences cost: exact containers, registered dataclasses, zstd.

    .venv/bin/python bench/codec.py [--repeats 7] [--seconds 0.2]

For each value, the time in ns per call of encode, decode and encode+decode in a
row (each the median of ``--repeats`` timed runs of about ``--seconds`` each,
after one discarded warm-up run) and the stored size in bytes:

* a ~200-byte dict, with lists (default codec) and with tuples (``exact_containers``);
* a list of 100 three-item tuples (``exact_containers``) against the same as lists;
* the ~200-byte dict as a registered dataclass against the plain dict;
* a ~10 KiB list of dicts plain and with ``compress_above=1024`` (needs ``mtcache[zstd]``).

Prints a Markdown table. Times with ``time.perf_counter_ns``; single process.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtcache import MsgpackCodec

SMALL: dict[str, Any] = {
    "symbol": "ACME", "price": 123.45, "bid": 123.40, "ask": 123.50, "volume": 1_234_567, "exchange": "XNYS",
    "currency": "USD", "history": [120.1, 121.3, 122.8, 123.0, 123.45], "updated": "2026-11-27T10:00:00Z",
    "note": "x" * 40,
}
SMALL_TUPLES = dict(SMALL, history=tuple(SMALL["history"]), spread=(123.40, 123.50))
ROWS_AS_TUPLES = [(i, f"sym{i}", i * 1.5) for i in range(100)]
ROWS_AS_LISTS = [list(row) for row in ROWS_AS_TUPLES]
LARGE = [dict(SMALL, seq=i) for i in range(44)]


@dataclass
class Quote:
    symbol: str
    price: float
    bid: float
    ask: float
    volume: int
    exchange: str
    currency: str
    history: list[float]
    updated: str
    note: str


def time_ns_per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n


def median_ns(fn: Callable[[], object], repeats: int, seconds: float) -> float:
    """The median over ``repeats`` runs of ns per call, each run about ``seconds`` long."""
    n = 1
    while time_ns_per_call(fn, n) * n < seconds * 1e9 / 10:  # size the runs on a tenth of one
        n *= 2
    n *= 10
    time_ns_per_call(fn, n)  # warm-up, discarded
    return statistics.median(time_ns_per_call(fn, n) for _ in range(repeats))


def row(codec: MsgpackCodec, value: Any, repeats: int, seconds: float) -> tuple[float, float, float, int]:
    """Median ns of encode, decode and the two in a row, and the stored size."""
    data = codec.encode(value)
    encode = median_ns(lambda: codec.encode(value), repeats, seconds)
    decode = median_ns(lambda: codec.decode(data), repeats, seconds)
    both = median_ns(lambda: codec.decode(codec.encode(value)), repeats, seconds)
    return encode, decode, both, len(data)


def cases() -> list[tuple[str, MsgpackCodec, Any]]:
    plain = MsgpackCodec()
    exact = MsgpackCodec(exact_containers=True)
    registered = MsgpackCodec(types=[Quote])
    found = [
        ("200 B dict, lists (default codec)", plain, SMALL),
        ("200 B dict, tuples (default codec: back as lists)", plain, SMALL_TUPLES),
        ("200 B dict, tuples (exact_containers)", exact, SMALL_TUPLES),
        ("100 rows as lists (default codec)", plain, ROWS_AS_LISTS),
        ("100 rows as lists (exact_containers)", exact, ROWS_AS_LISTS),
        ("100 rows as tuples (exact_containers)", exact, ROWS_AS_TUPLES),
        ("200 B as a dict (types=[Quote] codec)", registered, SMALL),
        ("200 B as a registered dataclass", registered, Quote(**SMALL)),
        ("10 KiB list of dicts, plain", plain, LARGE),
    ]
    try:
        compressing = MsgpackCodec(compress_above=1024)
    except ImportError as exc:
        print(f"(no compression row: {exc})\n")
    else:
        found.append(("10 KiB list of dicts, compress_above=1024", compressing, LARGE))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure; the median is shown")
    parser.add_argument("--seconds", type=float, default=0.2, help="length of one timed run")
    args = parser.parse_args()
    print(f"{platform.machine()}, Python {platform.python_version()}, median of {args.repeats} runs\n")
    print("| value | encode ns | decode ns | encode+decode ns | stored bytes |")
    print("|---|---:|---:|---:|---:|")
    for label, codec, value in cases():
        encode, decode, both, size = row(codec, value, args.repeats, args.seconds)
        print(f"| {label} | {encode:,.0f} | {decode:,.0f} | {both:,.0f} | {size:,} |")


if __name__ == "__main__":
    main()
