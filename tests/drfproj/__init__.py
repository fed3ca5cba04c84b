"""A Django REST framework app for the tests: the behaviour harness's routes as DRF views and
a viewset (``views.py``), with or without keystile's middleware (:func:`overrides`), and the
settings a real server (gunicorn) runs it with (``server_settings.py``)."""

from __future__ import annotations

from typing import Any

PACKAGE = __name__
#: What every DRF view here answers refusals with (keystile's own, byte for byte).
REST_FRAMEWORK = {
    "EXCEPTION_HANDLER": "keystile.drf.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
KEYSTILE_MIDDLEWARE = "keystile.django.KeystileMiddleware"
CSRF_MIDDLEWARE = "django.middleware.csrf.CsrfViewMiddleware"


def settings_for(middleware: bool = True, **extra: Any) -> dict[str, Any]:
    """Settings to override the test project's with (``override_settings(**...)``): this
    app's urls and DRF settings, with keystile's middleware or without it."""
    from django.conf import settings

    stack = [name for name in settings.MIDDLEWARE if name != KEYSTILE_MIDDLEWARE]
    if middleware:
        stack.append(KEYSTILE_MIDDLEWARE)
    return {
        "ROOT_URLCONF": f"{PACKAGE}.urls",
        "REST_FRAMEWORK": REST_FRAMEWORK,
        "MIDDLEWARE": stack,
        **extra,
    }
