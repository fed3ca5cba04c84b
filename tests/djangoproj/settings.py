"""Django settings for the tests, configured once per process by :func:`configure`.

``django.conf.settings`` can be configured only once in a process, so every Django test
(and the behaviour harnesses) goes through :func:`configure`; per-test differences use
``override_settings``. :func:`setup_database` creates the test database (SQLite in memory,
shared between threads) and runs the migrations, once.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from typing import Any

import django

FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
PACKAGE = __name__.rpartition(".")[0]
_TEMP_DIR = tempfile.mkdtemp(prefix="keystile-django-")
atexit.register(shutil.rmtree, _TEMP_DIR, ignore_errors=True)
CONCURRENT_DB = os.path.join(_TEMP_DIR, "concurrent.db")

SETTINGS: dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": "keystile-tests-not-secret",
    "ALLOWED_HOSTS": ["*"],
    "INSTALLED_APPS": [
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.admin",
        "keystile.django",
    ],
    "MIDDLEWARE": [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "keystile.django.KeystileMiddleware",
    ],
    "ROOT_URLCONF": f"{PACKAGE}.urls",
    "DATABASES": {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        # A file, for tests of concurrent writers: SQLite's shared in-memory database locks
        # whole tables and fails at once where a file waits for its turn.
        "concurrent": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": CONCURRENT_DB,
            "TEST": {"NAME": CONCURRENT_DB},
            "OPTIONS": {
                "timeout": 30,
                **({"transaction_mode": "IMMEDIATE"} if django.VERSION >= (5, 1) else {}),
            },
        },
    },
    "TEMPLATES": [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]
            },
        }
    ],
    "USE_TZ": True,
    "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],
    "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
    "KEYSTILE": {
        "store": "memory://",
        "argon2": FAST_ARGON2,
        "exempt_paths": ["/health", "/public/*", "/admin/*"],
    },
    "LOGGING": {  # no "Unauthorized: /whoami" line per refusal in the test output
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {"django.request": {"level": "ERROR"}},
    },
}

_lock = threading.Lock()
_database_ready = False


def configure() -> None:
    """Configure Django for this process (once) and set it up."""
    from django.conf import settings

    with _lock:
        if not settings.configured:
            settings.configure(**SETTINGS)
            django.setup()
            from django.test.utils import setup_test_environment

            setup_test_environment()


def setup_database() -> None:
    """The test databases, migrated: SQLite in memory (shared by every thread's connection)
    as "default", and a SQLite file as "concurrent"."""
    global _database_ready
    configure()
    with _lock:
        if not _database_ready:
            from django.db import connections

            for alias in ("default", "concurrent"):
                connections[alias].creation.create_test_db(
                    verbosity=0, serialize=False, autoclobber=True
                )
            _database_ready = True
