"""Files laid beside Flask-Caching's own tests (from its sdist) to run them against mtcache's
cachelib backend (tests/test_flask_caching_suite.py does it): ``mtcache_plugin.py`` (the fixtures
their conftest.py gives, which needs pytest-xprocess, with the app's cache on mtcache) and
``backend_on_mtcache.py`` (their backend test class on mtcache, laid there as
``test_mtcache_backend.py``; named otherwise here so that our own pytest run does not collect it)."""
