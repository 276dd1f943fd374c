"""Flask-Caching's backend test class (``GenericCacheTests``, test_backend_cache.py) on mtcache,
configured as its Redis test class is: real sleeps (mtcache's clock is Redis', not a fake one)."""

import pytest
from test_backend_cache import GenericCacheTests

from mtcache.contrib.cachelib import MtcacheCache


class TestMtcacheCache(GenericCacheTests):
    _can_use_fast_sleep = False

    @pytest.fixture
    def make_cache(self, mtcache_socket):
        c = MtcacheCache(key_prefix="werkzeug-test-case:", socket_path=mtcache_socket, spawn=False)
        yield lambda: c
        c.clear()
