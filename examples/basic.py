"""The basics: get, set, delete and get_or_compute.

    python examples/basic.py [--socket PATH]

Prints each call and what it returned, then ``basic: ok`` (exit status 0) if
every result was the one the API promises.
"""

from __future__ import annotations

import argparse
import time

from _support import Target, parser, run

from mtcache import Client

USER = "example:basic:user:42"
REPORT = "example:basic:report"


def show(call: str, result: object) -> object:
    """Print a call and its result; return the result."""
    print(f"{call:<34} -> {result!r}")
    return result


def main(target: Target, args: argparse.Namespace) -> int:
    checks: list[bool] = []
    with Client(target.socket_path, spawn=False) as cache:
        for key in (USER, REPORT):  # a clean start when the coordinator is a shared one
            cache.delete(key)

        missing = show("get(user)", cache.get(USER))
        fallback = show("get(user, 'nobody')", cache.get(USER, "nobody"))
        checks += [missing is None, fallback == "nobody"]

        cache.set(USER, {"name": "Ada", "languages": ["en", "fr"]}, ttl=60)
        stored = show("set(user, ...); get(user)", cache.get(USER))
        checks.append(stored == {"name": "Ada", "languages": ["en", "fr"]})

        removed = show("delete(user)", cache.delete(USER))
        again = show("delete(user) again", cache.delete(USER))
        gone = show("get(user) after delete", cache.get(USER))
        checks += [removed is True, again is False, gone is None]

        calls = 0

        def build_report() -> dict[str, object]:
            """The expensive function the cache saves us from calling twice."""
            nonlocal calls
            calls += 1
            time.sleep(0.1)
            return {"rows": 3, "total": 42.5}

        first = show("get_or_compute(report, fn)", cache.get_or_compute(REPORT, build_report, ttl=60))
        second = show("get_or_compute(report, fn) again", cache.get_or_compute(REPORT, build_report, ttl=60))
        print(f"build_report ran {calls} time(s)")
        checks += [first == second == {"rows": 3, "total": 42.5}, calls == 1]

        health = cache.health()
        print(f"coordinator {health.coordinator}, redis {health.redis}, mode {health.mode}")
        checks.append(health.coordinator == "ok")
        cache.delete(REPORT)

    ok = all(checks)
    print("basic: ok" if ok else "basic: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    run(main, parser(__doc__))
