"""Settings for Django's test runner (``runtests.py --settings=mtcache_settings``): Django's own
``test_sqlite`` settings, with every cache alias on mtcache's backend. The coordinator's socket
comes from ``MTCACHE_DJANGO_SUITE_SOCKET`` (the harness starts the coordinator)."""

import os

from test_sqlite import *  # noqa: F403 - Django's own test settings, as runtests.py's default

#: One coordinator for every alias: Django's suite needs its aliases to share one store
#: ("prefix", "v2" and "custom_key" read what "default" wrote under their own key rules).
MTCACHE_PARAMS = {
    "BACKEND": "mtcache.contrib.django.MtcacheCache",
    "LOCATION": os.environ["MTCACHE_DJANGO_SUITE_SOCKET"],
    "OPTIONS": {"spawn": False},
}

CACHES = {
    "default": dict(MTCACHE_PARAMS),
    "prefix": {**MTCACHE_PARAMS, "KEY_PREFIX": f"cacheprefix{os.getpid()}"},
    "v2": {**MTCACHE_PARAMS, "VERSION": 2},
    "custom_key": {**MTCACHE_PARAMS, "KEY_FUNCTION": "cache.tests.custom_key_func"},
    "custom_key2": {**MTCACHE_PARAMS, "KEY_FUNCTION": "cache.tests.custom_key_func"},
}
