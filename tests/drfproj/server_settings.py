"""Django settings for the DRF app under a real server (gunicorn, ``wsgi.py``), read from the
environment: ``KEYSTILE_DRF_STORE`` (the store URL the tests create keys in) and
``KEYSTILE_DRF_MIDDLEWARE`` (``"0"``: without keystile's middleware). CSRF protection is on;
sessions live in signed cookies, so the server needs no database tables."""

from __future__ import annotations

import os

from . import CSRF_MIDDLEWARE, KEYSTILE_MIDDLEWARE, REST_FRAMEWORK

DEBUG = False
SECRET_KEY = "keystile-drf-tests-not-secret"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "rest_framework",
    "keystile.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    CSRF_MIDDLEWARE,
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    *([KEYSTILE_MIDDLEWARE] if os.environ.get("KEYSTILE_DRF_MIDDLEWARE") != "0" else []),
]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
ROOT_URLCONF = "tests.drfproj.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
KEYSTILE = {
    "store": os.environ.get("KEYSTILE_DRF_STORE", "memory://"),
    "argon2": {"time_cost": 1, "memory_cost": 8, "parallelism": 1},
    "exempt_paths": ["/health", "/public/*"],
    "monthly_page_limit": 100,
}
REST_FRAMEWORK = dict(REST_FRAMEWORK)
