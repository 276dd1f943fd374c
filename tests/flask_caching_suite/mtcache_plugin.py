"""Fixtures for Flask-Caching's own tests, loaded instead of their conftest.py (``-p mtcache_plugin
--noconftest``): the same fixtures, with every app's cache on mtcache (``CACHE_TYPE =
"mtcache.contrib.flask.mtcache"``) on the coordinator at ``MTCACHE_FLASK_SUITE_SOCKET``."""

import os
import time

import flask
import flask_caching as fsc
import pytest

from mtcache import Client

SOCKET = os.environ["MTCACHE_FLASK_SUITE_SOCKET"]
CONFIG = {
    "CACHE_TYPE": "mtcache.contrib.flask.mtcache",
    "CACHE_OPTIONS": {"socket_path": SOCKET, "spawn": False},
}


@pytest.fixture
def mtcache_socket():
    return SOCKET


@pytest.fixture(autouse=True)
def _empty_store():
    """Each test starts on an empty cache, as it does on their in-process SimpleCache: here every
    app shares one coordinator."""
    with Client(SOCKET, spawn=False) as client:
        client.clear()


@pytest.fixture
def app(request):
    app = flask.Flask(request.module.__name__, template_folder=os.path.dirname(request.module.__file__))
    app.testing = True
    app.config.update(CONFIG)
    return app


@pytest.fixture
def cache(app):
    cache = fsc.Cache(app)
    yield cache
    with app.app_context():
        cache.clear()


#: The longest wait a test may ask for (see _Clock).
LONGEST_WAIT = 3.0


class _Clock:
    """Their conftest's clock, which moves SimpleCache's time: mtcache's expiry runs on the real
    clock (Redis' and the coordinator's), so here moving time on is waiting, as Flask-Caching's own
    Redis tests wait; a test that moves it further than LONGEST_WAIT is skipped, saying so."""

    def advance(self, seconds):
        if seconds > LONGEST_WAIT:
            pytest.skip(f"moves the clock {seconds:g} s: only a fake clock (SimpleCache's) moves that fast; "
                        "mtcache's expiry runs on real time")
        time.sleep(seconds)


@pytest.fixture
def clock():
    return _Clock()


@pytest.fixture(params=list(fsc.SUPPORTED_HASH_FUNCTIONS), ids=[m.__name__ for m in fsc.SUPPORTED_HASH_FUNCTIONS])
def hash_method(request):
    return request.param
