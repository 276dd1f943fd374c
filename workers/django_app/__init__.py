"""A small Django project on mtcache's cache backend, for gunicorn (see settings.py)."""
