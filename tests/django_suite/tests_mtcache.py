"""Django's own cache tests, run against mtcache's backend.

Copied into ``tests/cache/`` of a Django sdist and run as ``runtests.py cache.tests_mtcache
--settings=mtcache_settings``. Nothing here re-implements a Django test: every test is Django's,
from ``cache/tests.py`` of the version under test, on classes whose settings point at mtcache:

- ``MtcacheCacheTests``: ``BaseCacheTests``, the battery every Django backend passes, configured
  as Django configures its own Redis backend (the two culling aliases left out).
- ``MtcacheAsyncApiTests``: the same battery with each call on ``cache`` made through its async
  twin (``get`` through ``aget``, ...), on one event loop, so the async methods pass it too.
- ``Mtcache<Name>``: Django's middleware, ``cache_page``, template-response and key-function
  classes, re-pointed from the locmem backend they name to mtcache.

Tests that cannot apply to this backend are skipped with their reason (``SKIPS`` below; the
README lists them).
"""

import asyncio
import threading
import unittest
from unittest import mock

from cache import tests as django_tests
from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.test import TestCase, override_settings

MTCACHE = settings.MTCACHE_PARAMS
BACKEND = MTCACHE["BACKEND"]

#: Why each skipped Django test cannot apply to mtcache's backend, by class and test name.
SKIPS = {
    "MtcacheAsyncApiTests": {
        name: "checks which method of the real backend object an a*() call dispatches to; the proxy "
              "that routes this class's calls through a*() has none (MtcacheCacheTests runs it)"
        for name in (
            "test_get_many_async_uses_specialized_implementation",
            "test_set_many_async_uses_specialized_implementation",
            "test_delete_many_async_uses_specialized_implementation",
            "test_get_or_set_async_uses_specialized_implementation",
            "test_has_key_async_uses_specialized_implementation",
            "test_incr_async_uses_specialized_implementation",
            "test_incr_version_async_uses_specialized_implementation",
            "test_close_async_uses_specialized_implementation",
        )
    } | {
        name: "pickles an unevaluated QuerySet, which runs a query, and Django refuses queries on an event "
              "loop (SynchronousOnlyOperation): the native aset() pickles on the loop (evaluate a QuerySet "
              "before aset(); Django's default aset() pickles in a thread)"
        for name in ("test_cache_write_for_model_instance_with_deferred",
                     "test_cache_read_for_model_instance_with_deferred")
    },
}


def _skipping(cls: type) -> type:
    """``cls`` with the tests SKIPS names for it replaced by skips carrying their reason (a
    Django version without one of them has nothing to skip)."""
    for name, reason in SKIPS.get(cls.__name__, {}).items():
        if hasattr(cls, name):
            setattr(cls, name, unittest.skip(reason)(getattr(cls, name)))
    return cls


@override_settings(CACHES=django_tests.caches_setting_for_tests(base=MTCACHE, exclude={"cull", "zero_cull"}))
class MtcacheCacheTests(django_tests.BaseCacheTests, TestCase):
    """Django's backend battery; test_cull, test_zero_cull and test_cull_delete_when_store_empty
    skip themselves ("Culling isn't implemented"), as for Django's RedisCache: there is no
    MAX_ENTRIES alias (the coordinator bounds L1 by its own settings)."""

    def test_backend_is_mtcache(self):
        self.assertEqual(type(caches[DEFAULT_CACHE_ALIAS]).__module__ + ".MtcacheCache", BACKEND)


#: The calls the async battery makes through their async twin.
_THROUGH_ASYNC = frozenset((
    "add", "get", "set", "touch", "delete", "get_many", "get_or_set", "has_key", "incr", "decr",
    "set_many", "delete_many", "clear", "incr_version", "decr_version", "close",
))


class _ThroughAsync:
    """Stands for ``django.core.cache.cache`` in Django's test bodies: each call of _THROUGH_ASYNC
    runs its async twin on ``loop`` (a thread of its own) and waits for it; anything else (``key_func``,
    ``make_key``) is the backend's own."""

    def __init__(self, loop):
        object.__setattr__(self, "_loop", loop)

    @staticmethod
    def _backend():
        return caches[DEFAULT_CACHE_ALIAS]

    def __getattr__(self, name):
        backend = self._backend()
        if name not in _THROUGH_ASYNC:
            return getattr(backend, name)
        twin = getattr(backend, "a" + name)

        def call(*args, **kwargs):
            coro = twin(*args, **kwargs)
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

        return call

    def __setattr__(self, name, value):
        setattr(self._backend(), name, value)

    def __contains__(self, key):
        return self.has_key(key)


@override_settings(CACHES=django_tests.caches_setting_for_tests(base=MTCACHE, exclude={"cull", "zero_cull"}))
class MtcacheAsyncApiTests(django_tests.BaseCacheTests, TestCase):
    """Django's backend battery through the async methods (see _ThroughAsync)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._loop = asyncio.new_event_loop()
        cls._thread = threading.Thread(target=cls._loop.run_forever, name="mtcache-async-suite", daemon=True)
        cls._thread.start()

    @classmethod
    def tearDownClass(cls):
        # shutting the loop's async generators down closes the backend's AsyncClient of this loop
        asyncio.run_coroutine_threadsafe(cls._loop.shutdown_asyncgens(), cls._loop).result(timeout=30)
        cls._loop.call_soon_threadsafe(cls._loop.stop)
        cls._thread.join(timeout=30)
        cls._loop.close()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        patcher = mock.patch.object(django_tests, "cache", _ThroughAsync(self._loop))
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_calls_go_through_the_async_twins(self):
        with mock.patch(f"{BACKEND}.get", side_effect=AssertionError("the sync get was called")):
            django_tests.cache.set("through-async", 1)
            self.assertEqual(django_tests.cache.get("through-async"), 1)


_skipping(MtcacheAsyncApiTests)


def _on_mtcache(params):
    """A locmem alias of Django's tests, on mtcache: a locmem LOCATION is a store of its own, so it
    becomes part of the key prefix (aliases on one coordinator share one store)."""
    moved = {k: v for k, v in params.items() if k not in ("BACKEND", "LOCATION")}
    location = params.get("LOCATION")
    if location:
        moved["KEY_PREFIX"] = f"{params.get('KEY_PREFIX', '')}{location}"
    return {**MTCACHE, **moved}


def _retarget(test_class):
    """A subclass of one of Django's test classes with its cache aliases moved to mtcache."""
    overridden = test_class._overridden_settings["CACHES"]
    if any(params["BACKEND"] != "django.core.cache.backends.locmem.LocMemCache" for params in overridden.values()):
        raise AssertionError(f"{test_class.__name__} no longer runs on locmem alone: check what it tests")
    name = f"Mtcache{test_class.__name__}"
    subclass = type(name, (test_class,), {"__module__": __name__, "__qualname__": name})
    return _skipping(override_settings(CACHES={alias: _on_mtcache(p) for alias, p in overridden.items()})(subclass))


#: Django's classes that run the cache middleware, cache_page and template responses on a locmem
#: backend named in their class settings.
RETARGETED = ("CacheUtils", "PrefixedCacheUtils", "CacheHEADTest", "CacheI18nTest", "PrefixedCacheI18nTest",
              "CacheMiddlewareTest", "TestWithTemplateResponse")

for _name in RETARGETED:
    _retargeted = _retarget(getattr(django_tests, _name))
    globals()[_retargeted.__name__] = _retargeted
del _name, _retargeted
