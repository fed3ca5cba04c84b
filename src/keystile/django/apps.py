"""``INSTALLED_APPS += ["keystile.django"]``: system checks, the ``django://`` store's models
and migrations, and the admin for keys."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped,unused-ignore]


class KeystileConfig(AppConfig):  # type: ignore[misc,unused-ignore]
    name = "keystile.django"
    label = "keystile"
    verbose_name = "API keys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks  # type: ignore[import-untyped,unused-ignore]
        from django.core.signals import setting_changed  # type: ignore[import-untyped,unused-ignore]

        from keystile.django.checks import check_settings
        from keystile.django.conf import on_setting_changed

        checks.register(check_settings, "keystile")
        setting_changed.connect(on_setting_changed, dispatch_uid="keystile.django.settings")
