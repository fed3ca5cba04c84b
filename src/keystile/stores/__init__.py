"""Key stores: where keys live. :func:`open_store` picks one from the ``store`` setting."""

from __future__ import annotations

from keystile._core.errors import ConfigError
from keystile._core.store import KeyStore, Page

__all__ = ["KeyStore", "Page", "open_store"]


def open_store(url: str) -> KeyStore:
    if url.startswith("memory://"):
        from keystile.stores.sqlite import SQLiteStore

        return SQLiteStore(":memory:")
    if url.startswith("sqlite://"):
        from keystile.stores.sqlite import SQLiteStore

        path = url.removeprefix("sqlite://").removeprefix("/")
        if not path:
            raise ConfigError("setting 'store': expected 'sqlite:///path/to/file.db'")
        return SQLiteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from keystile.stores.postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                "setting 'store': PostgreSQL needs the extra: pip install 'keystile[postgres]'"
            ) from exc
        store: KeyStore = PostgresStore(url)
        return store
    if url.startswith("django://"):
        try:
            from keystile.django.store import DjangoStore  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError("setting 'store': 'django://' needs Django installed") from exc
        django_store: KeyStore = DjangoStore()
        return django_store
    raise ConfigError(f"setting 'store': unsupported URL scheme in {url.split('://')[0]!r}")
