"""What the ``keystile`` command needs from Django for a ``django://`` store: the project
loaded, and Django's own errors (its store does not wrap them) said as keystile's."""

from __future__ import annotations

import os

import django  # type: ignore[import-untyped,unused-ignore]
from django.apps import apps  # type: ignore[import-untyped,unused-ignore]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped,unused-ignore]
from django.db import Error as DjangoDatabaseError  # type: ignore[import-untyped,unused-ignore]

from keystile._core.errors import BackendError, ConfigError, KeystileError
from keystile._core.settings import redact_url


def setup_django() -> None:
    """Load the Django project ``django://`` needs (``DJANGO_SETTINGS_MODULE``), or say why not.
    Under ``manage.py keystile`` the project is loaded already."""
    if apps.ready:
        _require_the_app()
        return
    module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if not module:
        raise ConfigError(
            "setting 'store': 'django://' works inside a Django project only: set "
            "DJANGO_SETTINGS_MODULE (and put the project on PYTHONPATH)"
        )
    try:
        django.setup()
    except ImportError as exc:
        raise ConfigError(
            f"setting 'store': cannot import DJANGO_SETTINGS_MODULE {module!r} "
            f"({exc}); is the project on PYTHONPATH?"
        ) from None
    except ImproperlyConfigured as exc:
        raise ConfigError(f"setting 'store': the Django project is misconfigured: {exc}") from None
    _require_the_app()


def _require_the_app() -> None:
    if not apps.is_installed("keystile.django"):
        raise ConfigError(
            "setting 'store': 'django://' needs 'keystile.django' in INSTALLED_APPS "
            "(then: python manage.py migrate)"
        )


def keystile_error(exc: Exception) -> KeystileError | None:
    """Django's error as the keystile error it amounts to: a misconfigured project is a
    :class:`ConfigError`, a failed query a :class:`BackendError`; ``None`` for any other."""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, ImproperlyConfigured):
        return ConfigError(f"setting 'store': the Django project is misconfigured: {detail}")
    if isinstance(exc, DjangoDatabaseError):
        hint = " (run python manage.py migrate?)" if "no such table" in detail.lower() else ""
        return BackendError(f"Django store: {type(exc).__name__}: {redact_url(detail)}{hint}")
    return None
