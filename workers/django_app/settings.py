"""Django settings: one view, cached through ``mtcache.contrib.django.MtcacheCache``.

    MTCACHE_SOCKET=/tmp/app/mtcache.sock REDIS_URL=redis://127.0.0.1:6379 \\
        gunicorn -c workers/gunicorn.conf.py workers.django_app.wsgi:application

Run from the repository root. ``workers/gunicorn.conf.py`` starts the coordinator in the master
on ``MTCACHE_SOCKET`` (or the per-user default), which ``LOCATION`` names too; the backend does
not start one (``spawn: False``).
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "mtcache-example-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "workers.django_app.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

CACHES = {
    "default": {
        "BACKEND": "mtcache.contrib.django.MtcacheCache",
        "LOCATION": os.environ.get("MTCACHE_SOCKET", ""),  # empty: the per-user default every client uses
        "OPTIONS": {"spawn": False},
        "TIMEOUT": 60,
    },
}
