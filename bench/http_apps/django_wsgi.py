"""The WSGI application of the Django cases: ``gunicorn bench.http_apps.django_wsgi:application``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.http_apps.django_settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
