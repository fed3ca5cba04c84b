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
from keystile.stores.rows import Codecs
from keystile.stores.sql import Dialect, SQLStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keystile_keys (
    kid TEXT PRIMARY KEY,
    token_prefix TEXT NOT NULL,
    last4 TEXT NOT NULL,
    name TEXT NOT NULL,
    account_id TEXT NOT NULL,
    owner TEXT,
    permissions TEXT NOT NULL,
    environment TEXT NOT NULL,
    accounts TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    last_used_at REAL,
    revoked_at REAL,
    enabled INTEGER NOT NULL,
    meta TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    previous_hash TEXT,
    previous_expires_at REAL,
    version TEXT NOT NULL,
    page_limit INTEGER,
    allowed_ips TEXT NOT NULL DEFAULT '[]',
    rate_limit TEXT
);
CREATE INDEX IF NOT EXISTS keystile_keys_account
    ON keystile_keys (account_id, created_at DESC, kid DESC);
CREATE TABLE IF NOT EXISTS keystile_usage (
    account_id TEXT NOT NULL,
    period TEXT NOT NULL,
    environment TEXT NOT NULL,
    kid TEXT NOT NULL,
    pages INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, period, environment, kid)
);
CREATE TABLE IF NOT EXISTS keystile_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    account_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS keystile_audit_account ON keystile_audit (account_id, id DESC);
CREATE TABLE IF NOT EXISTS keystile_sessions (
    sid TEXT PRIMARY KEY,
    kid TEXT NOT NULL,
    account_id TEXT NOT NULL,
    secret_digest TEXT NOT NULL,
    key_hash_fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    idle_timeout REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS keystile_limits (
    account_id TEXT PRIMARY KEY,
    pages INTEGER,
    plan TEXT,
    rate TEXT
);
"""


#: Columns added since 0.1.0, for tables an earlier version created.
_ADDED_COLUMNS = {
    "keystile_keys": {"allowed_ips": "TEXT NOT NULL DEFAULT '[]'", "rate_limit": "TEXT"},
    "keystile_limits": {"rate": "TEXT"},
}


def _add_columns(db: sqlite3.Connection) -> None:
    for table, added in _ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, definition in added.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")


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
                if self.blocking:
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
                _add_columns(self._db)
            except BaseException:
                self._db.close()
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
