"""Key stores: where keys live. :func:`open_store` picks one from the ``store`` setting.

Each URL scheme has a factory; a store driver that lives elsewhere (the ``django://`` store,
in the Django app) adds its own with :func:`register_store`.
"""

from __future__ import annotations

from collections.abc import Callable

from keystile._core.errors import ConfigError
from keystile._core.store import KeyStore, Page

__all__ = ["KeyStore", "Page", "StoreFactory", "open_store", "register_store"]

#: Builds a store from the whole ``store`` URL.
StoreFactory = Callable[[str], KeyStore]

#: What to do for a scheme whose driver registers itself, and has not.
_UNREGISTERED = {
    "django": "setting 'store': 'django://' needs Django, with 'keystile.django' in "
    "INSTALLED_APPS (the app adds the store when Django sets up)",
}


def _memory(url: str) -> KeyStore:
    from keystile.stores.sqlite import SQLiteStore

    return SQLiteStore(":memory:")


def _sqlite(url: str) -> KeyStore:
    from keystile.stores.sqlite import SQLiteStore

    path = url.removeprefix("sqlite://").removeprefix("/")
    if not path:
        raise ConfigError("setting 'store': expected 'sqlite:///path/to/file.db'")
    return SQLiteStore(path)


def _postgres(url: str) -> KeyStore:
    try:
        from keystile.stores.postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            "setting 'store': PostgreSQL needs the extra: pip install 'keystile[postgres]'"
        ) from exc
    store: KeyStore = PostgresStore(url)
    return store


_FACTORIES: dict[str, StoreFactory] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
}


def register_store(scheme: str, factory: StoreFactory) -> None:
    """Make :func:`open_store` answer ``scheme://...`` with ``factory(url)``."""
    _FACTORIES[scheme] = factory


def open_store(url: str) -> KeyStore:
    scheme, separator, _ = url.partition("://")
    factory = _FACTORIES.get(scheme) if separator else None
    if factory is not None:
        return factory(url)
    if separator and scheme in _UNREGISTERED:
        raise ConfigError(_UNREGISTERED[scheme])
    raise ConfigError(f"setting 'store': unsupported URL scheme in {url.split('://')[0]!r}")
