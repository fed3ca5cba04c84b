"""The DRF app as a WSGI application for gunicorn (settings: ``server_settings.py``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.drfproj.server_settings")
application = get_wsgi_application()
