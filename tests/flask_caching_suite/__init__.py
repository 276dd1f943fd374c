"""Files laid beside Flask-Caching's own tests (from its sdist) to run them against mtcache's
cachelib backend (tests/test_flask_caching_suite.py does it): ``mtcache_plugin.py`` (the fixtures
their conftest.py gives, which needs pytest-xprocess, with the app's cache on mtcache) and
``test_mtcache_backend.py`` (their backend test class on mtcache)."""
