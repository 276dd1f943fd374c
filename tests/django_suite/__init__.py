"""Files copied into the tests/ folder of a Django sdist to run Django's own cache tests against
mtcache's backend (tests/test_django_suite.py does it): ``mtcache_settings.py`` (the settings
module) and ``tests_mtcache.py`` (copied to ``tests/cache/``, where it imports Django's tests)."""
