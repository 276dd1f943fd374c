"""bench/frameworks.py: the example Django project (workers/django_app) with django-redis as its cache."""

import os

from workers.django_app.settings import *  # noqa: F403 - the same project, another cache

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ["REDIS_URL"],
        "TIMEOUT": 60,
    },
}
