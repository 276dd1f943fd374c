"""mtcache for Flask-Caching: ``CACHE_TYPE = "mtcache.contrib.flask.mtcache"``.

.. code-block:: python

    app.config.update(
        CACHE_TYPE="mtcache.contrib.flask.mtcache",
        CACHE_DEFAULT_TIMEOUT=300,          # 0: no expiry
        CACHE_KEY_PREFIX="myapp:",          # Flask-Caching's default: "flask_cache_"
        CACHE_OPTIONS={"socket_path": "/run/app/mtcache.sock", "spawn": False},  # mtcache.Client arguments
    )
    cache = Cache(app)

The cache is a :class:`mtcache.contrib.cachelib.MtcacheCache`.
"""

from __future__ import annotations

from typing import Any

from .cachelib import MtcacheCache

__all__ = ["mtcache"]


def mtcache(app: Any, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]) -> MtcacheCache:
    """Flask-Caching's factory for ``CACHE_TYPE = "mtcache.contrib.flask.mtcache"``: a
    :class:`MtcacheCache` with ``CACHE_DEFAULT_TIMEOUT``, ``CACHE_KEY_PREFIX``,
    ``CACHE_IGNORE_ERRORS`` and the ``CACHE_OPTIONS`` (``mtcache.Client`` arguments).

    :raises TypeError: ``CACHE_ARGS`` is not empty (mtcache takes keyword options only), or an
        option is not a ``Client`` argument.
    """
    if args:
        raise TypeError(f"mtcache takes no CACHE_ARGS (its options go in CACHE_OPTIONS), got {args!r}")
    options = dict(kwargs)
    key_prefix = config.get("CACHE_KEY_PREFIX") or ""
    return MtcacheCache(key_prefix=key_prefix, **options)
