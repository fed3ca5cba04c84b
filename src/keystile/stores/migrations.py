"""The SQL stores' tables, version by version, and the upgrade from any earlier version.

A database records its version in ``keystile_schema`` (one row). A store opening a database
at an earlier version runs the steps from there to :data:`SCHEMA_VERSION` in one transaction,
so a failed upgrade leaves the database as it was. A database at a later version (a newer
keystile wrote it) is refused with a :class:`~keystile._core.errors.ConfigError`, and left as
it is.

The statements are written once, with the column types of each database filled in from its
:class:`Catalog`. Version 1 is keystile 0.1.0's tables; 0.1.0 did not record it. A database
without the version table (empty, made by 0.1.0, or by a build made between 0.1.0 and
versioning) is upgraded from nothing: steps 1 and 2 add only what is missing, so they may be
replayed on any of these. Later steps run on a recorded version, and need not be.

The Django store has Django migrations instead (``keystile/django/migrations``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from keystile._core.errors import ConfigError
from keystile.stores.sql import Cursor


@dataclass(frozen=True, slots=True)
class Catalog:
    """What the upgrade asks of one database: its column types and two catalog queries."""

    #: Column types by kind: ``kid``, ``json``, ``time``, ``flag``, ``int``, ``real``,
    #: ``serial`` (the audit log's numbering primary key).
    types: Mapping[str, str]
    #: A row if the table named by the one parameter exists where the store's statements
    #: find it.
    has_table: str
    #: The column names of the table named by the one parameter.
    columns: str


class Operation(Protocol):
    """One change a step makes."""

    def run(self, cursor: Cursor, catalog: Catalog) -> None: ...


@dataclass(frozen=True, slots=True)
class Create:
    """A ``CREATE ... IF NOT EXISTS`` statement, with ``{kind}`` for each column type."""

    statement: str

    def run(self, cursor: Cursor, catalog: Catalog) -> None:
        cursor.execute(self.statement.format_map(catalog.types))


@dataclass(frozen=True, slots=True)
class AddColumn:
    """A column added to a table, unless it is there (SQLite has no ``ADD COLUMN IF NOT
    EXISTS``)."""

    table: str
    column: str
    definition: str

    def run(self, cursor: Cursor, catalog: Catalog) -> None:
        cursor.execute(catalog.columns, (self.table,))
        if self.column not in {row[0] for row in cursor.fetchall()}:
            definition = self.definition.format_map(catalog.types)
            cursor.execute(f"ALTER TABLE {self.table} ADD COLUMN {self.column} {definition}")


#: ``STEPS[n]`` brings a database from version ``n - 1`` to version ``n``.
STEPS: dict[int, tuple[Operation, ...]] = {
    # keystile 0.1.0's tables.
    1: (
        Create(
            """CREATE TABLE IF NOT EXISTS keystile_keys (
            kid {kid} PRIMARY KEY,
            token_prefix TEXT NOT NULL,
            last4 TEXT NOT NULL,
            name TEXT NOT NULL,
            account_id TEXT NOT NULL,
            owner TEXT,
            permissions {json} NOT NULL,
            environment TEXT NOT NULL,
            accounts {json} NOT NULL,
            created_at {time} NOT NULL,
            expires_at {time},
            last_used_at {time},
            revoked_at {time},
            enabled {flag} NOT NULL,
            meta {json} NOT NULL,
            secret_hash TEXT NOT NULL,
            previous_hash TEXT,
            previous_expires_at {time},
            version TEXT NOT NULL,
            page_limit {int}
        )"""
        ),
        Create(
            """CREATE INDEX IF NOT EXISTS keystile_keys_account
            ON keystile_keys (account_id, created_at DESC, kid DESC)"""
        ),
        Create(
            """CREATE TABLE IF NOT EXISTS keystile_usage (
            account_id TEXT NOT NULL,
            period TEXT NOT NULL,
            environment TEXT NOT NULL,
            kid TEXT NOT NULL,
            pages {int} NOT NULL DEFAULT 0,
            requests {int} NOT NULL DEFAULT 0,
            PRIMARY KEY (account_id, period, environment, kid)
        )"""
        ),
        Create(
            """CREATE TABLE IF NOT EXISTS keystile_audit (
            id {serial},
            at {time} NOT NULL,
            account_id TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            details {json} NOT NULL
        )"""
        ),
        Create(
            """CREATE INDEX IF NOT EXISTS keystile_audit_account
            ON keystile_audit (account_id, id DESC)"""
        ),
        Create(
            """CREATE TABLE IF NOT EXISTS keystile_sessions (
            sid TEXT PRIMARY KEY,
            kid TEXT NOT NULL,
            account_id TEXT NOT NULL,
            secret_digest TEXT NOT NULL,
            key_hash_fingerprint TEXT NOT NULL,
            created_at {time} NOT NULL,
            expires_at {time} NOT NULL,
            idle_timeout {real} NOT NULL,
            last_seen_at {time} NOT NULL,
            ended_at {time}
        )"""
        ),
        Create(
            """CREATE TABLE IF NOT EXISTS keystile_limits (
            account_id TEXT PRIMARY KEY,
            pages {int},
            plan TEXT
        )"""
        ),
    ),
    # IP allowlists and rate limits per key, rate limits per account.
    2: (
        AddColumn("keystile_keys", "allowed_ips", "{json} NOT NULL DEFAULT '[]'"),
        AddColumn("keystile_keys", "rate_limit", "TEXT"),
        AddColumn("keystile_limits", "rate", "TEXT"),
    ),
}

#: The version this keystile reads and writes.
SCHEMA_VERSION = max(STEPS)

VERSION_TABLE = "keystile_schema"
_CREATE_VERSION_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
    "(id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
)


def stored_version(cursor: Cursor, catalog: Catalog) -> int:
    """The version the database records; 0 where it records none."""
    cursor.execute(catalog.has_table, (VERSION_TABLE,))
    if not cursor.fetchall():
        return 0
    cursor.execute(f"SELECT version FROM {VERSION_TABLE} WHERE id = 1")
    rows = cursor.fetchall()
    return int(rows[0][0]) if rows else 0


def needs_upgrade(version: int) -> bool:
    """Whether a database at ``version`` is to be upgraded; a :class:`ConfigError` for a
    version this keystile does not know."""
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"setting 'store': the database's keystile tables are at schema version {version},"
            f" and this keystile knows versions up to {SCHEMA_VERSION}: a newer keystile has"
            " upgraded them. Upgrade keystile to use this database (it was left as it is)"
        )
    return version < SCHEMA_VERSION


def upgrade(cursor: Cursor, catalog: Catalog, version: int) -> bool:
    """Bring the tables from ``version`` to :data:`SCHEMA_VERSION` and record it; whether
    there was anything to do. The caller holds the transaction, and with it the lock that
    keeps other processes from upgrading at the same time."""
    if not needs_upgrade(version):
        return False
    for target in range(version + 1, SCHEMA_VERSION + 1):
        for operation in STEPS[target]:
            operation.run(cursor, catalog)
    cursor.execute(_CREATE_VERSION_TABLE)
    cursor.execute(
        f"INSERT INTO {VERSION_TABLE} (id, version) VALUES (1, {int(SCHEMA_VERSION)})"
        " ON CONFLICT (id) DO UPDATE SET version = excluded.version"
    )
    return True
