"""A database made by keystile 0.1.0 opens under this version: its tables are upgraded on first
use (the columns added since: ``allowed_ips``, ``rate_limit``, the account ``rate``), the
schema version is recorded, and the old keys, limits and audit trail keep working.

The builders here make the 0.1.0 databases ``test_schema_versions`` upgrades too.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from keystile import Keystile
from keystile.stores.migrations import SCHEMA_VERSION

#: keystile 0.1.0's keys and limits tables (stores/sqlite.py and stores/postgres.py at
#: v0.1.0); the other three tables have not changed since.
KEYS_0_1_0 = """CREATE TABLE keystile_keys (
    kid TEXT PRIMARY KEY, token_prefix TEXT NOT NULL, last4 TEXT NOT NULL, name TEXT NOT NULL,
    account_id TEXT NOT NULL, owner TEXT, permissions {json} NOT NULL,
    environment TEXT NOT NULL, accounts {json} NOT NULL, created_at {time} NOT NULL,
    expires_at {time}, last_used_at {time}, revoked_at {time}, enabled {flag} NOT NULL,
    meta {json} NOT NULL, secret_hash TEXT NOT NULL, previous_hash TEXT,
    previous_expires_at {time}, version TEXT NOT NULL, page_limit {int}
)"""
LIMITS_0_1_0 = "CREATE TABLE keystile_limits (account_id TEXT PRIMARY KEY, pages {int}, plan TEXT)"
SQLITE_TYPES = {"json": "TEXT", "time": "REAL", "flag": "INTEGER", "int": "INTEGER"}
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
ACCOUNT = "acct-1"
OLD_LIMIT = 500


def search_path_url(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def with_old_data(store: str) -> tuple[Any, int]:
    """A key and an account limit made through ``store``; the key and how many audit entries
    the account has."""
    ks = Keystile({"store": store, "argon2": FAST_ARGON2})
    try:
        created = ks.keys.create(ACCOUNT, "old")
        ks.quotas.set_limit(ACCOUNT, OLD_LIMIT)
        entries, _ = ks.store.list_audit(ACCOUNT, action=None, limit=100, cursor=None)
    finally:
        ks.close()
    return created, len(entries)


def made_by_0_1_0_sqlite(path: Path) -> tuple[Any, int]:
    """A SQLite file as keystile 0.1.0 left it: its tables (without the columns added since
    and without a recorded version), holding a key, an account limit and their audit entries."""
    made = with_old_data(f"sqlite:///{path}")
    with closing(sqlite3.connect(path)) as db, db:
        for table, old in (("keystile_keys", KEYS_0_1_0), ("keystile_limits", LIMITS_0_1_0)):
            db.execute(f"ALTER TABLE {table} RENAME TO newer")
            db.execute(old.format_map(SQLITE_TYPES))
            kept = ", ".join(r[1] for r in db.execute(f"PRAGMA table_info({table})"))
            db.execute(f"INSERT INTO {table} SELECT {kept} FROM newer")
            db.execute("DROP TABLE newer")
        db.execute("DROP TABLE keystile_schema")
    return made


def made_by_0_1_0_postgres(url: str) -> tuple[Any, int]:
    """The PostgreSQL tables (in ``url``'s search_path) as keystile 0.1.0 left them."""
    import psycopg

    made = with_old_data(url)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("ALTER TABLE keystile_keys DROP COLUMN allowed_ips, DROP COLUMN rate_limit")
        db.execute("ALTER TABLE keystile_limits DROP COLUMN rate")
        db.execute("DROP TABLE keystile_schema")
    return made


def upgraded(store: str, made: tuple[Any, int]) -> None:
    """A key made before the upgrade verifies, lists and takes the new fields; the account's
    limit and audit trail are there."""
    old_key, audit_entries = made
    ks = Keystile({"store": store, "argon2": FAST_ARGON2})
    try:
        principal = ks.authenticate([("authorization", f"Bearer {old_key.token}")])
        assert principal.key_id == old_key.key_id
        shown = ks.keys.get(old_key.key_id)
        assert (shown.allowed_ips, shown.rate_limit) == ((), None)
        assert ks.quotas.limit(ACCOUNT) == OLD_LIMIT
        assert ks.quotas.rate_limit(ACCOUNT) is None
        entries, _ = ks.store.list_audit(ACCOUNT, action=None, limit=100, cursor=None)
        assert len(entries) == audit_entries > 0
        ks.keys.update(old_key.key_id, rate_limit="10/s", allowed_ips=["10.0.0.0/8"])
        ks.quotas.set_rate_limit(ACCOUNT, "100/min")
        assert ks.keys.get(old_key.key_id).rate_limit == "10/s"
        assert ks.quotas.rate_limit(ACCOUNT) == "100/min"
        assert ks.quotas.limit(ACCOUNT) == OLD_LIMIT
    finally:
        ks.close()


def test_a_0_1_0_sqlite_database_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    made = made_by_0_1_0_sqlite(path)
    upgraded(f"sqlite:///{path}", made)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT id, version FROM keystile_schema").fetchall() == [
            (1, SCHEMA_VERSION)
        ]


def test_a_0_1_0_postgres_database_is_upgraded(postgres_url: str, postgres_schema: str) -> None:
    import psycopg

    url = search_path_url(postgres_url, postgres_schema)
    made = made_by_0_1_0_postgres(url)
    upgraded(url, made)
    with psycopg.connect(url, autocommit=True) as db:
        assert db.execute("SELECT id, version FROM keystile_schema").fetchall() == [
            (1, SCHEMA_VERSION)
        ]


def test_a_snapshot_without_the_new_fields_keeps_the_0_1_0_shape(tmp_path: Path) -> None:
    """A 0.1.0 process sharing the Redis in a rolling upgrade reads these snapshots."""
    from keystile._core.snapshot import Snapshot

    ks = Keystile({"store": "memory://", "argon2": FAST_ARGON2})
    try:
        plain = ks.keys.create("acct-1", "plain")
        fenced = ks.keys.create("acct-1", "fenced", rate_limit="5/s", allowed_ips=["10.0.0.0/8"])
        for created, new_fields in ((plain, set()), (fenced, {"allowed_ips", "rate_limit"})):
            record = ks.store.get(created.key_id.removeprefix("key_"))
            assert record is not None
            snapshot = Snapshot.of(record, via_previous=False)
            dumped = json.loads(snapshot.dumps())
            assert {"allowed_ips", "rate_limit"} & set(dumped) == new_fields
            assert Snapshot.loads(snapshot.dumps()) == snapshot
    finally:
        ks.close()
