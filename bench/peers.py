"""mtcache side by side with the caches a Python team would use instead.

    .venv/bin/python bench/peers.py [--quick] [--out DIR] [--peer NAME ...] [--workload wN ...]

Runs redis-py, cachetools+redis, cashews (client-side), aiocache, dogpile.cache,
diskcache and mtcache on the same five workloads in one run (W1 hot reads, W2
90/9/1 mix with stale-read counting, W3 stampede, W4 memory, W5 cross-host
visibility), starting its own redis-server(s) and coordinator(s), and writes
RESULTS.md, results.json and charts/*.png (into bench/ for a full run; a
``--quick`` smoke run writes to a temporary folder unless ``--out`` is given).
The code lives in the ``peers`` package next to this file.

Worker processes are started with the ``spawn`` context, which imports this
file in each of them as ``__mp_main__``: keep everything below the guard.
"""

if __name__ == "__main__":
    import sys

    from peers.cli import main

    sys.exit(main())
