"""System checks: a bad ``KEYSTILE`` setting is reported by ``manage.py check`` (and at every
start of runserver/migrate), not by the first request."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from keystile import Keystile, environment_settings
from keystile._core.errors import ConfigError
from keystile._core.settings import load_settings

MIDDLEWARE_PATHS = (
    "keystile.django.KeystileMiddleware",
    "keystile.django.middleware.KeystileMiddleware",
)
DOCS_HINT = 'KEYSTILE = {"store": "django://", "exempt_paths": ["/health", "/admin/*"]}'


def _environment_checks(checks: Any) -> list[Any]:
    """No ``KEYSTILE`` setting: the engine runs on ``KEYSTILE_*`` and ``KEYSTILE_CONFIG``."""
    try:
        environment_settings()
    except ConfigError as exc:
        return [
            checks.Error(
                f"KEYSTILE is not set, and the environment's keystile settings are invalid: {exc}",
                hint=f"Fix the variable, or set KEYSTILE in settings, e.g. {DOCS_HINT}",
                id="keystile.E002",
            )
        ]
    if any(name.startswith("KEYSTILE_") for name in os.environ):
        return []
    return [
        checks.Warning(
            "KEYSTILE is not set: keystile reads KEYSTILE_* variables and KEYSTILE_CONFIG "
            "(none set: its defaults, keys in ./keystile.db).",
            hint=f"Set it in settings, e.g. {DOCS_HINT}",
            id="keystile.W001",
        )
    ]


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from django.conf import settings  # type: ignore[import-untyped,unused-ignore]
    from django.core import checks  # type: ignore[import-untyped,unused-ignore]

    found: list[Any] = []
    raw = getattr(settings, "KEYSTILE", None)
    if raw is None:
        found += _environment_checks(checks)
    elif not isinstance(raw, (Mapping, Keystile)):
        found.append(
            checks.Error(
                f"KEYSTILE must be a dict of keystile settings, not {type(raw).__name__}.",
                hint=f"e.g. {DOCS_HINT}",
                id="keystile.E001",
            )
        )
    elif isinstance(raw, Mapping):
        try:
            parsed = load_settings(raw)
        except ConfigError as exc:
            found.append(
                checks.Error(
                    f"KEYSTILE is invalid: {exc}",
                    hint="See keystile's settings reference for allowed keys and values.",
                    id="keystile.E002",
                )
            )
        else:
            if (
                not parsed.store.startswith("django://")
                and "django.contrib.admin" in settings.INSTALLED_APPS
            ):
                found.append(
                    checks.Info(
                        "KEYSTILE['store'] is not 'django://': the admin's API keys page shows "
                        "the project database, where this store keeps no keys.",
                        id="keystile.I001",
                    )
                )
    middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    if not any(path in middleware for path in MIDDLEWARE_PATHS):
        found.append(
            checks.Warning(
                "keystile.django is installed but its middleware is not in MIDDLEWARE: "
                "no request is authenticated.",
                hint='MIDDLEWARE += ["keystile.django.KeystileMiddleware"]',
                id="keystile.W002",
            )
        )
    return found
