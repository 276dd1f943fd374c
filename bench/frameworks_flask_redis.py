"""bench/frameworks.py: the example Flask app (workers/flask_app.py) on Flask-Caching's RedisCache."""

import os

from workers.flask_app import create_app

app = create_app({
    "CACHE_TYPE": "RedisCache",
    "CACHE_REDIS_URL": os.environ["REDIS_URL"],
    "CACHE_DEFAULT_TIMEOUT": 60,
    "CACHE_KEY_PREFIX": "flask:",
})
