"""The headline figure, measured the Python way: gunicorn and uvicorn serving a JSON
quote endpoint through mtcache, redis-py cache-aside, cashews and no cache, each beside
a constant-response app on the same server (the server's own ceiling), loaded by wrk.

    .venv/bin/python bench/http.py [--seconds 15] [--rounds 2] [--server gunicorn ...]
                                   [--variant mtcache ...] [--out DIR]

Starts its own redis-server, coordinators and servers on free ports and stops them at
the end. A full run (15 s, 2 rounds) writes bench/HTTP.md and bench/http.json; a
shorter one writes to a temporary folder unless ``--out`` is given. Needs ``wrk``
(Debian: ``apt-get install wrk``). The code lives in the ``httpbench`` package next
to this file.
"""

if __name__ == "__main__":
    import sys
    from pathlib import Path

    # this file is named like the standard library's http package: put the repository root, not
    # bench/, on the path, so "http" is the standard library's and the servers import the same names
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from bench.httpbench.run import main

    sys.exit(main())
