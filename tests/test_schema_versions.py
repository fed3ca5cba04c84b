"""The SQL stores record their schema version and upgrade step by step, in one transaction.

Each case runs on SQLite (a file) and PostgreSQL (a schema of its own): a fresh database
starts at the current version; a 0.1.0 database, or one made by a build before versions
were recorded, is upgraded; a database from a newer keystile is refused and left as it is; a
step that fails leaves the old version and the old data; two PostgreSQL stores starting at
once upgrade once.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from keystile import Keystile
from keystile._core.errors import ConfigError
from keystile.stores import migrations
from keystile.stores.migrations import SCHEMA_VERSION, Catalog

from .polling import eventually
from .test_store_upgrade import (
    FAST_ARGON2,
    made_by_0_1_0_postgres,
    made_by_0_1_0_sqlite,
    search_path_url,
    upgraded,
)

TABLES = {
    "keystile_keys",
    "keystile_usage",
    "keystile_audit",
    "keystile_sessions",
    "keystile_limits",
    "keystile_schema",
}
NEW_COLUMNS = {("keystile_keys", "allowed_ips"), ("keystile_keys", "rate_limit")}


class Database(ABC):
    """One test database, read and changed behind the store's back."""

    url: str

    @abstractmethod
    def open(self) -> Any:
        """A store on the database, past its first use (PostgreSQL upgrades then)."""

    @abstractmethod
    def query(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def execute(self, statement: str) -> None: ...

    @abstractmethod
    def make_0_1_0(self) -> tuple[Any, int]:
        """The database as keystile 0.1.0 left it; its key and audit entry count."""

    @abstractmethod
    def tables(self) -> set[str]:
        """The keystile tables."""

    @abstractmethod
    def columns(self, table: str) -> set[str]: ...

    def version(self) -> int | None:
        if "keystile_schema" not in self.tables():
            return None
        (row,) = self.query("SELECT id, version FROM keystile_schema")  # exactly one row
        return int(row[1])

    def contents(self) -> dict[str, Any]:
        """Every keystile table's columns and rows."""
        return {
            t: (sorted(self.columns(t)), sorted(map(repr, self.query(f"SELECT * FROM {t}"))))
            for t in sorted(self.tables())
        }


class SQLiteDatabase(Database):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    def open(self) -> Any:
        from keystile.stores.sqlite import SQLiteStore

        return SQLiteStore(str(self.path))

    def query(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path)) as db:
            return db.execute(statement, params).fetchall()

    def execute(self, statement: str) -> None:
        with closing(sqlite3.connect(self.path)) as db, db:
            db.execute(statement)

    def make_0_1_0(self) -> tuple[Any, int]:
        return made_by_0_1_0_sqlite(self.path)

    def tables(self) -> set[str]:
        rows = self.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows if name.startswith("keystile_")}

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.query(f"PRAGMA table_info({table})")}


class PostgresDatabase(Database):
    def __init__(self, server_url: str, schema: str) -> None:
        self.server_url, self.schema = server_url, schema
        self.url = search_path_url(server_url, schema)

    def open(self, url: str | None = None) -> Any:
        from keystile.stores.postgres import PostgresStore

        store = PostgresStore(url or self.server_url, schema=self.schema)
        try:
            store.get("nothing")
        except BaseException:
            store.close()
            raise
        return store

    def query(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            return db.execute(statement, params or None).fetchall()

    def execute(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(statement)

    def make_0_1_0(self) -> tuple[Any, int]:
        return made_by_0_1_0_postgres(self.url)

    def tables(self) -> set[str]:
        rows = self.query(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{self.schema}'"
        )
        return {name for (name,) in rows}

    def columns(self, table: str) -> set[str]:
        rows = self.query(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s",
            (self.schema, table),
        )
        return {name for (name,) in rows}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return SQLiteDatabase(tmp_path / "keys.db")
    server: str = request.getfixturevalue("postgres_url")
    return PostgresDatabase(server, request.getfixturevalue("postgres_schema"))


def new_columns(database: Database) -> set[tuple[str, str]]:
    return {(t, c) for t in ("keystile_keys", "keystile_limits") for c in database.columns(t)} & {
        *NEW_COLUMNS,
        ("keystile_limits", "rate"),
    }


def test_a_fresh_database_starts_at_the_current_version(database: Database) -> None:
    assert SCHEMA_VERSION == 2
    database.open().close()
    assert database.tables() == TABLES
    assert database.version() == SCHEMA_VERSION
    assert len(new_columns(database)) == 3
    database.open().close()  # opened again: nothing to do
    assert database.version() == SCHEMA_VERSION


def test_a_0_1_0_database_is_upgraded(database: Database) -> None:
    made = database.make_0_1_0()
    assert database.version() is None and new_columns(database) == set()
    database.open().close()
    assert database.version() == SCHEMA_VERSION
    assert database.tables() == TABLES
    assert len(new_columns(database)) == 3
    upgraded(database.url, made)


def test_a_database_made_before_versions_were_recorded_is_upgraded(database: Database) -> None:
    """A build between 0.1.0 and versioning made today's tables, without the version table:
    the steps find the columns there and record the version."""
    store = database.open()
    store.close()
    database.execute("DROP TABLE keystile_schema")
    before = database.contents()
    database.open().close()
    assert database.version() == SCHEMA_VERSION
    after = database.contents()
    del after["keystile_schema"]
    assert after == before


def test_a_database_of_a_newer_version_is_refused_and_left_as_it_is(database: Database) -> None:
    database.open().close()
    newer = SCHEMA_VERSION + 1
    database.execute(f"UPDATE keystile_schema SET version = {newer}")
    database.execute("ALTER TABLE keystile_keys DROP COLUMN rate_limit")  # what v3 might do
    before = database.contents()
    with pytest.raises(ConfigError) as refused:
        database.open()
    message = str(refused.value)
    assert f"schema version {newer}" in message
    assert f"versions up to {SCHEMA_VERSION}" in message
    assert "Upgrade keystile" in message
    assert database.contents() == before
    assert database.version() == newer
    # Through the settings too: a clear ConfigError, not a failing statement.
    if isinstance(database, SQLiteDatabase):
        with pytest.raises(ConfigError, match="Upgrade keystile"):
            Keystile({"store": database.url, "argon2": FAST_ARGON2})
    assert database.contents() == before


class Injected(Exception):
    pass


class FailingOperation:
    """A step's operation that fails, after the operations before it have run."""

    def run(self, cursor: Any, catalog: Catalog) -> None:
        raise Injected("the step fails here")


def test_a_failed_step_leaves_the_old_version_and_data(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = database.make_0_1_0()
    before = database.contents()
    first, *_ = migrations.STEPS[2]
    monkeypatch.setitem(migrations.STEPS, 2, (first, FailingOperation()))
    with pytest.raises(Injected):
        database.open()
    # The first operation added a column; the rollback took it away again.
    assert database.contents() == before
    assert database.version() is None
    monkeypatch.undo()
    database.open().close()
    assert database.version() == SCHEMA_VERSION
    upgraded(database.url, made)


def test_a_failed_first_step_leaves_no_tables(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(migrations.STEPS, 1, (*migrations.STEPS[1], FailingOperation()))
    with pytest.raises(Injected):
        database.open()
    assert database.tables() == set()


class CountingOperation:
    """Counts the upgrades; while upgrading, waits until the other store waits for the
    advisory lock (it cannot have found the version recorded: that is not committed yet)."""

    def __init__(self, server_url: str, application: str) -> None:
        self.server_url, self.application = server_url, application
        self.runs = 0
        self.saw_a_waiter = False
        self._lock = threading.Lock()

    def run(self, cursor: Any, catalog: Catalog) -> None:
        import psycopg

        with self._lock:
            self.runs += 1
        with psycopg.connect(self.server_url, autocommit=True) as watcher:

            def other_waits() -> bool:
                row = watcher.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND NOT l.granted"
                    " AND a.application_name = %s",
                    (self.application,),
                ).fetchone()
                return row is not None and row[0] > 0

            self.saw_a_waiter = eventually(other_waits, timeout=30.0)


def test_two_postgres_stores_starting_at_once_upgrade_once(
    postgres_url: str, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from psycopg.conninfo import make_conninfo

    database = PostgresDatabase(postgres_url, postgres_schema)
    made = database.make_0_1_0()
    application = f"kst_upgrade_{uuid.uuid4().hex[:8]}"
    counting = CountingOperation(postgres_url, application)
    monkeypatch.setitem(migrations.STEPS, 2, (*migrations.STEPS[2], counting))
    url = make_conninfo(postgres_url, application_name=application)
    start = threading.Barrier(2)
    opened: list[Any] = []
    failures: list[BaseException] = []

    def start_one() -> None:
        start.wait()
        try:
            opened.append(database.open(url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start_one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in opened:
        store.close()
    assert failures == []
    assert len(opened) == 2
    assert counting.runs == 1
    assert counting.saw_a_waiter
    assert database.version() == SCHEMA_VERSION
    monkeypatch.undo()
    upgraded(database.url, made)


def test_memory_store_is_at_the_current_version() -> None:
    from keystile.stores.sqlite import SQLiteStore

    store = SQLiteStore(":memory:")
    try:
        with store._autocommit() as cursor:
            cursor.execute("SELECT version FROM keystile_schema")
            assert cursor.fetchall() == [(SCHEMA_VERSION,)]
    finally:
        store.close()
