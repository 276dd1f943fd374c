"""The WSGI application of the example Django project (``workers.django_app.wsgi:application``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "workers.django_app.settings")

application = get_wsgi_application()
