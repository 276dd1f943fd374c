"""Drop-in backends for frameworks: :mod:`mtcache.contrib.django` (a ``CACHES`` backend),
:mod:`mtcache.contrib.cachelib` (a ``cachelib.BaseCache``) and :mod:`mtcache.contrib.flask`
(Flask-Caching's ``CACHE_TYPE``). Each module imports its framework, which is not a dependency
of mtcache: install the framework you use."""
