"""The process's engine for Django: built from ``settings.KEYSTILE`` on first use, then shared.

``KEYSTILE`` is a settings dict (see :mod:`keystile._core.settings`) or a ready
:class:`keystile.Keystile` (for a custom clock or store). It is read lazily, on the first
request or the first :func:`get_engine` call, so importing keystile never touches settings,
and a change through ``override_settings`` builds a new engine on the next use.
"""

from __future__ import annotations

import threading
from typing import Any

from keystile import Keystile
from keystile._http.mounting import management_mounted, mount_management

#: Where the management urls are included ("/v1"): see :mod:`keystile.django.views`.
PREFIX_SETTING = "KEYSTILE_MANAGEMENT_PREFIX"
_lock = threading.Lock()
_engine: Keystile | None = None
_owned = False


def configured_settings() -> Any:
    from django.conf import settings  # type: ignore[import-untyped,unused-ignore]

    return getattr(settings, "KEYSTILE", None)


def get_engine() -> Keystile:
    """The shared engine (built on the first call)."""
    global _engine, _owned
    engine = _engine
    if engine is not None:
        return engine
    with _lock:
        if _engine is None:
            raw = configured_settings()
            if isinstance(raw, Keystile):
                _engine, _owned = raw, False
            else:
                _engine, _owned = Keystile(raw), True
            from django.conf import settings

            prefix = getattr(settings, PREFIX_SETTING, None)
            if prefix is not None:
                mount(prefix, _engine)  # its login needs no key; its requests cost no pages
        return _engine


def reset_engine() -> None:
    """Forget the engine (closing it if keystile built it); the next use builds a new one."""
    global _engine, _owned
    with _lock:
        engine, owned = _engine, _owned
        _engine, _owned = None, False
    if engine is not None and owned:
        engine.close()


def on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "KEYSTILE":
        reset_engine()


def clean_prefix(prefix: str) -> str:
    prefix = prefix.rstrip("/")
    return prefix if not prefix or prefix.startswith("/") else "/" + prefix


def mounted(prefix: str, engine: Keystile | None = None) -> bool:
    """Whether the engine knows the management API is under ``prefix``."""
    engine = engine if engine is not None else get_engine()
    return management_mounted(engine, clean_prefix(prefix))


def mount(prefix: str | None = None, engine: Keystile | None = None) -> None:
    """Tell the engine (the shared one by default) where the management urls are included:
    ``prefix`` is the path before them ("/v1"), by default ``KEYSTILE_MANAGEMENT_PREFIX``.
    Mounting a prefix twice is harmless."""
    if prefix is None:
        from django.conf import settings  # type: ignore[import-untyped,unused-ignore]

        prefix = getattr(settings, PREFIX_SETTING, None)
        if prefix is None:
            raise ValueError(f"mount(): no prefix given and no {PREFIX_SETTING} setting")
    engine = engine if engine is not None else get_engine()
    if not mounted(prefix, engine):
        mount_management(engine, clean_prefix(prefix))
