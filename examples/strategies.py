"""How long values live: every CacheStrategy preset, custom TTLs, and expiry.

    python examples/strategies.py [--socket PATH]

Stores one value with each preset (REALTIME 10 s, SHORT_TERM 5 min, MEDIUM_TERM
1 h, LONG_TERM 3 h, DEFAULT 5 min), then with custom lifetimes given as seconds,
as a ``timedelta`` and as ``CacheStrategy.custom``; watches a 300 ms value
expire; and shows the errors a bad TTL raises. Exit status 0 if everything
behaved as documented.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import Any

from _support import Target, parser, run

from mtcache import CacheStrategy, Client

PREFIX = "example:strategies:"
EXPIRY_DEADLINE = 10.0  # seconds to wait for a 300 ms value to disappear


def lifetime(seconds: float) -> str:
    """``10 s``, ``5 min``, ``1 h 30 min``: a TTL for people."""
    if seconds < 60:
        return f"{seconds:g} s"
    hours, rest = divmod(round(seconds), 3600)
    minutes = rest // 60
    return " ".join(part for part in (f"{hours} h" if hours else "", f"{minutes} min" if minutes else "") if part)


def main(target: Target, args: argparse.Namespace) -> int:
    checks: list[bool] = []
    with Client(target.socket_path, spawn=False) as cache:
        print("presets:")
        presets = [CacheStrategy.REALTIME, CacheStrategy.SHORT_TERM, CacheStrategy.MEDIUM_TERM,
                   CacheStrategy.LONG_TERM, CacheStrategy.DEFAULT]
        for strategy in presets:
            key = PREFIX + strategy.name
            cache.set(key, {"strategy": strategy.name}, strategy=strategy)
            value = cache.get(key)
            print(f"  CacheStrategy.{strategy.name.upper():<12} {lifetime(strategy.ttl):>7}   get -> {value!r}")
            checks.append(value == {"strategy": strategy.name})

        print("custom lifetimes:")
        custom: list[tuple[str, dict[str, Any]]] = [
            ("ttl=90", {"ttl": 90}),
            ("ttl=2.5", {"ttl": 2.5}),
            ("ttl=timedelta(hours=1, minutes=30)", {"ttl": timedelta(hours=1, minutes=30)}),
            ("strategy=CacheStrategy.custom(45)", {"strategy": CacheStrategy.custom(45)}),
            ("strategy=CacheStrategy.custom(timedelta(days=1))", {"strategy": CacheStrategy.custom(timedelta(days=1))}),
        ]
        for n, (label, lifetime_args) in enumerate(custom):
            key = f"{PREFIX}custom:{n}"
            cache.set(key, n, **lifetime_args)
            value = cache.get(key)
            print(f"  {f'set(key, {n}, {label})':<62} get -> {value!r}")
            checks.append(value == n)
        print(f"  CacheStrategy.custom(timedelta(days=1)) is {CacheStrategy.custom(timedelta(days=1))!r}")

        calls = 0

        def quote() -> float:
            nonlocal calls
            calls += 1
            return 101.25

        for _ in range(3):
            cache.get_or_compute(PREFIX + "quote", quote, strategy=CacheStrategy.REALTIME)
        print(f"get_or_compute 3 times with REALTIME: the function ran {calls} time(s)")
        checks.append(calls == 1)

        print("expiry:")
        key = PREFIX + "short-lived"
        cache.set(key, "soon gone", ttl=timedelta(milliseconds=300))
        print(f"  set(key, 'soon gone', ttl=timedelta(milliseconds=300)); get -> {cache.get(key)!r}")
        start = time.monotonic()
        while cache.get(key) is not None and time.monotonic() - start < EXPIRY_DEADLINE:
            time.sleep(0.02)  # watching the clock: poll until the value is gone, with a deadline
        gone = cache.get(key) is None
        print(f"  gone after {time.monotonic() - start:.2f} s: get -> {cache.get(key)!r}")
        checks.append(gone)

        print("bad lifetimes raise at the call, nothing is stored:")
        bad: list[tuple[str, dict[str, Any]]] = [
            ("ttl=0", {"ttl": 0}),
            ("ttl=-5", {"ttl": -5}),
            ("ttl='60'", {"ttl": "60"}),
            ("ttl=timedelta(0)", {"ttl": timedelta(0)}),
            ("strategy=CacheStrategy.REALTIME, ttl=5", {"strategy": CacheStrategy.REALTIME, "ttl": 5}),
            ("strategy='realtime'", {"strategy": "realtime"}),
        ]
        for label, lifetime_args in bad:
            try:
                cache.set(PREFIX + "bad", 1, **lifetime_args)
            except (TypeError, ValueError) as exc:
                print(f"  {f'set(key, 1, {label})':<52} -> {type(exc).__name__}: {exc}")
                checks.append(True)
            else:
                print(f"  {f'set(key, 1, {label})':<52} -> accepted (unexpected)")
                checks.append(False)
        checks.append(cache.get(PREFIX + "bad") is None)

        for key in [PREFIX + s.name for s in presets] + [f"{PREFIX}custom:{n}" for n in range(len(custom))]:
            cache.delete(key)
        cache.delete(PREFIX + "quote")

    ok = all(checks)
    print("strategies: ok" if ok else "strategies: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    run(main, parser(__doc__))
