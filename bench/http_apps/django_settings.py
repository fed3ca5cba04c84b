"""A minimal Django settings module for the Django cases (gunicorn, one sync worker).

``bare-drf`` and ``drf-api-key`` run no middleware; the keystile cases run only
``keystile.django.KeystileMiddleware``, with ``KEYSTILE`` read from ``KS_BENCH_SETTINGS``.
The database (a SQLite file) is used only by djangorestframework-api-key.
"""

from __future__ import annotations

import importlib.util
import os

from bench.http_apps import DJANGO_DB_ENV, case_settings, variant

_KEYSTILE = variant() == "keystile"

SECRET_KEY = "bench-only-not-a-secret-0123456789"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "bench.http_apps.django_urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"]
if importlib.util.find_spec("rest_framework_api_key") is not None:
    INSTALLED_APPS.append("rest_framework_api_key")
if _KEYSTILE:
    INSTALLED_APPS.append("keystile.django")
MIDDLEWARE = ["keystile.django.KeystileMiddleware"] if _KEYSTILE else []
if _KEYSTILE:
    KEYSTILE = case_settings()
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(DJANGO_DB_ENV, ":memory:"),
    }
}
REST_FRAMEWORK = {"DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]}
LOGGING_CONFIG = None
