"""A database made by keystile 0.1.0 opens under this version: the columns added since
(``allowed_ips``, ``rate_limit``) are added on first use, and the old keys keep working."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from keystile import Keystile

#: keystile 0.1.0's keys table (stores/sqlite.py and stores/postgres.py at v0.1.0).
KEYS_0_1_0 = """CREATE TABLE keystile_keys (
    kid TEXT PRIMARY KEY, token_prefix TEXT NOT NULL, last4 TEXT NOT NULL, name TEXT NOT NULL,
    account_id TEXT NOT NULL, owner TEXT, permissions {json} NOT NULL,
    environment TEXT NOT NULL, accounts {json} NOT NULL, created_at {time} NOT NULL,
    expires_at {time}, last_used_at {time}, revoked_at {time}, enabled {flag} NOT NULL,
    meta {json} NOT NULL, secret_hash TEXT NOT NULL, previous_hash TEXT,
    previous_expires_at {time}, version TEXT NOT NULL, page_limit BIGINT
)"""
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


def upgraded(store: str, old_key: Any) -> None:
    """A key made before the upgrade verifies, lists and takes the new fields."""
    ks = Keystile({"store": store, "argon2": FAST_ARGON2})
    try:
        principal = ks.authenticate([("authorization", f"Bearer {old_key.token}")])
        assert principal.key_id == old_key.key_id
        shown = ks.keys.get(old_key.key_id)
        assert (shown.allowed_ips, shown.rate_limit) == ((), None)
        ks.keys.update(old_key.key_id, rate_limit="10/s", allowed_ips=["10.0.0.0/8"])
        assert ks.keys.get(old_key.key_id).rate_limit == "10/s"
    finally:
        ks.close()


def test_a_0_1_0_sqlite_database_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    ks = Keystile({"store": url, "argon2": FAST_ARGON2})
    created = ks.keys.create("acct-1", "old")
    ks.close()
    # Make the table look as 0.1.0 left it: without the new columns, the rows kept.
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE keystile_keys RENAME TO newer")
        db.execute(KEYS_0_1_0.format(json="TEXT", time="REAL", flag="INTEGER"))
        old_columns = ", ".join(r[1] for r in db.execute("PRAGMA table_info(keystile_keys)"))
        db.execute(f"INSERT INTO keystile_keys SELECT {old_columns} FROM newer")
        db.execute("DROP TABLE newer")
    upgraded(url, created)


def test_a_0_1_0_postgres_database_is_upgraded(postgres_url: str, postgres_schema: str) -> None:
    import psycopg

    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}options=-csearch_path%3D{postgres_schema}"
    ks = Keystile({"store": url, "argon2": FAST_ARGON2})
    created = ks.keys.create("acct-1", "old")
    ks.close()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("ALTER TABLE keystile_keys DROP COLUMN allowed_ips, DROP COLUMN rate_limit")
    upgraded(url, created)


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
