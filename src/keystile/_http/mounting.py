"""How an adapter gets its engine and mounts the management API on it.

:func:`mount_management` tells the engine where the API is mounted, so that its public paths
(login, the OpenAPI document) need no key and its routes cost no pages; every adapter calls
it, and :func:`management_api` to build the API on the engine's managers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from keystile import Keystile, Settings
from keystile._http.management import PUBLIC_PATHS, ROUTE, ManagementAPI

__all__ = [
    "WrapsApp",
    "config_settings",
    "engine_from",
    "management_api",
    "management_mounted",
    "mount_management",
]
App = TypeVar("App")
_FIELDS = frozenset(Settings.__dataclass_fields__)


def config_settings(config: Mapping[str, Any]) -> Any:
    """An app's keystile settings from its config (Flask's ``app.config``): ``KEYSTILE`` (a
    dict) when set, the whole of them; else its flat keys (``KEYSTILE_STORE``,
    ``KEYSTILE_REDIS_URL``, one per setting); None for neither (the environment's)."""
    explicit = config.get("KEYSTILE")
    if explicit is not None:
        return explicit
    flat = {
        name[9:].lower(): value
        for name, value in config.items()
        if name.startswith("KEYSTILE_") and name[9:].lower() in _FIELDS
    }
    return flat or None


def engine_from(settings: Mapping[str, Any] | None, keystile: Keystile | None) -> Keystile:
    """What a middleware's ``settings=`` / ``keystile=`` arguments mean."""
    if settings is not None and keystile is not None:
        raise TypeError("pass settings or keystile, not both")
    return keystile if keystile is not None else Keystile(settings)


class WrapsApp(Generic[App]):
    """A middleware around ``app``, on the engine that its ``settings=`` (a dict) or
    ``keystile=`` (a ready engine) give."""

    def __init__(
        self,
        app: App,
        settings: Mapping[str, Any] | None = None,
        keystile: Keystile | None = None,
    ) -> None:
        self.app = app
        self.keystile = engine_from(settings, keystile)


def mount_management(engine: Keystile, prefix: str) -> None:
    """The management API is mounted at ``prefix`` (mounting it twice is harmless)."""
    engine.mount_management(prefix, public_paths=PUBLIC_PATHS, route=ROUTE)


def management_mounted(engine: Keystile, prefix: str) -> bool:
    """Whether the engine knows the management API is mounted at ``prefix``."""
    return engine.management_mounted(prefix)


def management_api(engine: Keystile) -> ManagementAPI:
    """The management API on the engine's managers."""
    return ManagementAPI(
        keys=engine.keys, sessions=engine.sessions, quotas=engine.quotas, audit=engine.audit
    )
