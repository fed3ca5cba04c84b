"""The embedded store: SQLite in a file (default) or in memory (``memory://``).

A failed database call (``database is locked`` past the busy timeout, a file that is not a
database, a full disk) raises :class:`~keystile._core.errors.BackendError`, with the ``sqlite3``
error as its ``__cause__``. A file in a directory that does not exist is a
:class:`~keystile._core.errors.ConfigError`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from keystile._core.errors import BackendError, ConfigError
from keystile.stores.migrations import (
    Catalog,
    needs_upgrade,
    stored_version,
    upgrade,
)
from keystile.stores.rows import Codecs
from keystile.stores.sql import Dialect, SQLStore

#: SQLite's column types; its catalog lists tables in ``sqlite_master``.
CATALOG = Catalog(
    types={
        "kid": "TEXT",
        "json": "TEXT",
        "time": "REAL",
        "flag": "INTEGER",
        "int": "INTEGER",
        "real": "REAL",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
    },
    has_table="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    columns="SELECT name FROM pragma_table_info(?)",
)


def _from_epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, timezone.utc)


#: Times are seconds since the epoch (REAL), JSON is text, booleans are 0 or 1.
SQLITE = Dialect(
    Codecs(
        time_in=datetime.timestamp,
        time_out=_from_epoch,
        json_in=json.dumps,
        json_out=json.loads,
        flag_in=int,
    )
)


def _backend_error(exc: sqlite3.Error, what: str) -> BackendError:
    """``exc`` as a BackendError; the message is SQLite's own (no SQL values, no secrets)."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return BackendError(f"SQLite store: {what} ({reason})")


@contextmanager
def _driver_errors(what: str) -> Iterator[None]:
    try:
        yield
    except BackendError:
        raise
    except sqlite3.Error as exc:
        raise _backend_error(exc, what) from exc


class SQLiteStore(SQLStore):
    """Keys, usage, limits, audit and sessions in one SQLite file (or ``":memory:"``).

    A write waits at most ``timeout`` seconds for another process's lock on the file, then
    fails with :class:`~keystile._core.errors.BackendError` (``database is locked``).
    """

    dialect = SQLITE

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self.path = path
        self.blocking = path != ":memory:"
        self._lock = threading.Lock()
        if self.blocking:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise ConfigError(
                    f"setting 'store': no directory {folder!r} for the SQLite file {path!r}"
                )
        with _driver_errors(f"cannot open {path}"):
            # ``timeout`` is SQLite's busy timeout, set before anything (switching to WAL
            # itself may wait for a lock).
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=timeout
            )
            try:
                self._upgrade_tables()
            except BaseException:
                self._db.close()
                raise

    def _upgrade_tables(self) -> None:
        """Bring the tables to this keystile's schema version (see
        :mod:`keystile.stores.migrations`), in one transaction."""
        cursor = self._db.cursor()
        # Read before anything is written, WAL mode included: a newer database is left as is.
        outdated = needs_upgrade(stored_version(cursor, CATALOG))
        if self.blocking:
            self._db.execute("PRAGMA journal_mode=WAL")
        if not outdated:
            return
        # BEGIN IMMEDIATE takes the file's write lock: another process opening it now waits
        # (up to the busy timeout), then finds the tables upgraded.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            upgrade(cursor, CATALOG, stored_version(cursor, CATALOG))
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    @contextmanager
    def _autocommit(self) -> Iterator[sqlite3.Cursor]:
        with self._lock, _driver_errors("read failed"):
            yield self._db.cursor()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock, _driver_errors("write failed"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db.cursor()
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        """Undo the open transaction, if any (a failed COMMIT may leave one open)."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the original error is the one to report

    def close(self) -> None:
        with self._lock, _driver_errors("close failed"):
            self._db.close()
