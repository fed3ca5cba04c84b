"""Settings of the example: keystile's three lines are INSTALLED_APPS, MIDDLEWARE, KEYSTILE.

Keys live in ./keystile.db, the embedded store the ``keystile`` CLI uses by default, so a key
made with ``keystile keys create`` in this directory works here. To keep keys in the project's
own database instead (with an admin page for them), set ``"store": "django://"``, configure
``DATABASES``, add ``django.contrib.admin`` (and its dependencies) and run
``python manage.py migrate``.
"""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"  # a real project reads it from the environment
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "keystile.django",  # system checks for KEYSTILE (and the django:// store's models)
]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "keystile.django.KeystileMiddleware",
]

KEYSTILE = {
    "store": "sqlite:///keystile.db",  # the CLI's default store, so its keys work here
    "exempt_paths": ["/health"],
    "monthly_page_limit": 1000,
}

ROOT_URLCONF = "exampleproj.urls"
WSGI_APPLICATION = "exampleproj.wsgi.application"
ASGI_APPLICATION = "exampleproj.asgi.application"

# No database: keys and usage live in keystile's store. With "django://", add one, e.g.
# DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
