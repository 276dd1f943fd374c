"""A small Flask app on Flask-Caching with mtcache's backend, for gunicorn.

    MTCACHE_SOCKET=/tmp/app/mtcache.sock REDIS_URL=redis://127.0.0.1:6379 \\
        gunicorn -c workers/gunicorn.conf.py workers.flask_app:app

``/quote/<symbol>``: a quote from the slow price service, computed once per key across every
worker (``get_or_compute`` of the backend, ``cache.cache``); ``/cached/<symbol>``: the same through
Flask-Caching's ``@cache.cached`` (get, then set: each worker that misses computes). Any other
path answers 404. ``workers/gunicorn.conf.py`` starts the coordinator in the master.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify
from flask_caching import Cache

from workers.quotes import fetch_quote

__all__ = ["MTCACHE_CONFIG", "app", "create_app"]

#: The cache configuration: Flask-Caching on mtcache (the master of gunicorn.conf.py owns the coordinator).
MTCACHE_CONFIG: dict[str, Any] = {
    "CACHE_TYPE": "mtcache.contrib.flask.mtcache",
    "CACHE_DEFAULT_TIMEOUT": 60,
    "CACHE_KEY_PREFIX": "flask:",
    # mtcache.Client arguments: the socket gunicorn.conf.py resolves
    "CACHE_OPTIONS": {"socket_path": os.environ.get("MTCACHE_SOCKET") or None, "spawn": False},
}


def create_app(cache_config: dict[str, Any] | None = None) -> Flask:
    """The app, its cache configured by ``cache_config`` (default :data:`MTCACHE_CONFIG`; the
    benchmark passes Flask-Caching's RedisCache). ``/quote`` needs a backend with ``get_or_compute``."""
    app = Flask(__name__)
    app.config.update(cache_config or MTCACHE_CONFIG)
    cache = Cache(app)

    if hasattr(cache.cache, "get_or_compute"):

        @app.route("/quote/<symbol>")
        def quote(symbol: str) -> Any:
            """The quote of ``symbol``, cached 60 s, computed once per key across workers."""
            symbol = symbol.upper()
            value = cache.cache.get_or_compute(f"quote:{symbol}", lambda: fetch_quote(symbol), 60)
            return jsonify(symbol=symbol, value=value, pid=os.getpid())

    @app.route("/cached/<symbol>")
    @cache.cached(timeout=60)
    def cached(symbol: str) -> Any:
        """The same, the whole response cached by Flask-Caching's decorator."""
        symbol = symbol.upper()
        return jsonify(symbol=symbol, value=fetch_quote(symbol), pid=os.getpid())

    @app.errorhandler(404)
    def not_found(error: Exception) -> Any:
        return jsonify(error=str(error)), 404

    return app


app = create_app()
