"""The embedded store: SQLite in a file (default) or in memory (``memory://``).

A failed database call (``database is locked`` past the busy timeout, a file that is not a
database, a full disk) raises :class:`~keystile._core.errors.BackendError`, with the ``sqlite3``
error as its ``__cause__``. A file in a directory that does not exist is a
:class:`~keystile._core.errors.ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from keystile._core.errors import BackendError, ConfigError, InvalidInput
from keystile._core.models import KeyRecord
from keystile._core.store import (
    KEY_COLUMNS,
    AccountLimit,
    AuditEntry,
    Page,
    SessionRecord,
    UsageDelta,
    UsageRow,
    fingerprint,
    like_escape,
)

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
    page_limit INTEGER
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
    plan TEXT
);
"""

_COLUMNS = KEY_COLUMNS


def to_epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def record_to_row(record: KeyRecord) -> tuple[Any, ...]:
    return (
        record.kid,
        record.token_prefix,
        record.last4,
        record.name,
        record.account_id,
        record.owner,
        json.dumps(list(record.permissions)),
        record.environment,
        json.dumps(list(record.accounts)),
        to_epoch(record.created_at),
        to_epoch(record.expires_at),
        to_epoch(record.last_used_at),
        to_epoch(record.revoked_at),
        int(record.enabled),
        json.dumps(dict(record.meta)),
        record.secret_hash,
        record.previous_hash,
        to_epoch(record.previous_expires_at),
        record.version,
        record.page_limit,
    )


def row_to_record(row: tuple[Any, ...]) -> KeyRecord:
    values = dict(zip(_COLUMNS, row))
    created_at = from_epoch(values["created_at"])
    assert created_at is not None
    return KeyRecord(
        kid=values["kid"],
        token_prefix=values["token_prefix"],
        last4=values["last4"],
        name=values["name"],
        account_id=values["account_id"],
        owner=values["owner"],
        permissions=tuple(json.loads(values["permissions"])),
        environment=values["environment"],
        accounts=tuple(json.loads(values["accounts"])),
        created_at=created_at,
        expires_at=from_epoch(values["expires_at"]),
        last_used_at=from_epoch(values["last_used_at"]),
        revoked_at=from_epoch(values["revoked_at"]),
        enabled=bool(values["enabled"]),
        meta=json.loads(values["meta"]),
        secret_hash=values["secret_hash"],
        previous_hash=values["previous_hash"],
        previous_expires_at=from_epoch(values["previous_expires_at"]),
        version=values["version"],
        page_limit=values["page_limit"],
    )


def encode_cursor(created_at: float, kid: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{kid}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, kid = raw.split("|", 1)
        return float(created), kid
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor", "not a cursor returned by a previous page") from None


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


class SQLiteStore:
    """Keys, usage, limits, audit and sessions in one SQLite file (or ``":memory:"``).

    A write waits at most ``timeout`` seconds for another process's lock on the file, then
    fails with :class:`~keystile._core.errors.BackendError` (``database is locked``).
    """

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
            except BaseException:
                self._db.close()
                raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _driver_errors("write failed"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
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

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock, _driver_errors("read failed"):
            return self._db.execute(sql, params).fetchall()

    def insert(self, record: KeyRecord) -> None:
        marks = ",".join("?" * len(_COLUMNS))
        with self._tx() as db:
            db.execute(f"INSERT INTO keystile_keys VALUES ({marks})", record_to_row(record))

    def get(self, kid: str) -> KeyRecord | None:
        rows = self._query(f"SELECT {','.join(_COLUMNS)} FROM keystile_keys WHERE kid=?", (kid,))
        return row_to_record(rows[0]) if rows else None

    def replace(self, record: KeyRecord, expected_version: str) -> bool:
        assignments = ",".join(f"{c}=?" for c in _COLUMNS[1:])
        with self._tx() as db:
            cursor = db.execute(
                f"UPDATE keystile_keys SET {assignments} WHERE kid=? AND version=?",
                (*record_to_row(record)[1:], record.kid, expected_version),
            )
            return cursor.rowcount == 1

    def set_hash(self, kid: str, old_hash: str, new_hash: str) -> None:
        with self._tx() as db:
            changed = db.execute(
                "UPDATE keystile_keys SET secret_hash=? WHERE kid=? AND secret_hash=?",
                (new_hash, kid, old_hash),
            ).rowcount
            if changed:
                db.execute(
                    "UPDATE keystile_sessions SET key_hash_fingerprint=?"
                    " WHERE kid=? AND key_hash_fingerprint=?",
                    (fingerprint(new_hash), kid, fingerprint(old_hash)),
                )

    def all_kids(self) -> builtins.list[str]:
        return [row[0] for row in self._query("SELECT kid FROM keystile_keys")]

    def delete(self, kid: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM keystile_keys WHERE kid=?", (kid,)).rowcount == 1

    def list(
        self,
        account_id: str,
        *,
        search: str | None,
        environment: str | None,
        include_revoked: bool,
        limit: int,
        cursor: str | None,
    ) -> Page:
        if search and "\0" in search:
            return Page([], 0, None)  # LIKE would stop at the NUL; no name holds one
        where: builtins.list[str] = ["account_id=?"]
        params: builtins.list[Any] = [account_id]
        if search:
            where.append("name LIKE ? ESCAPE '\\'")
            params.append(f"%{like_escape(search)}%")
        if environment:
            where.append("environment=?")
            params.append(environment)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        clause = " AND ".join(where)
        page_where, page_params = clause, list(params)
        if cursor:
            created, kid = decode_cursor(cursor)
            page_where += " AND (created_at < ? OR (created_at = ? AND kid < ?))"
            page_params += [created, created, kid]
        with self._lock, _driver_errors("read failed"):
            total = self._db.execute(
                f"SELECT COUNT(*) FROM keystile_keys WHERE {clause}", params
            ).fetchone()[0]
            rows = self._db.execute(
                f"SELECT {','.join(_COLUMNS)} FROM keystile_keys WHERE {page_where} "
                "ORDER BY created_at DESC, kid DESC LIMIT ?",
                (*page_params, limit + 1),
            ).fetchall()
        items = [row_to_record(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last.created_at.timestamp(), last.kid)
        return Page(items, total, next_cursor)

    def touch(self, last_used: Mapping[str, datetime]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE keystile_keys SET last_used_at=? WHERE kid=? "
                "AND (last_used_at IS NULL OR last_used_at < ?)",
                [(at.timestamp(), kid, at.timestamp()) for kid, at in last_used.items()],
            )

    def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO keystile_usage VALUES (?,?,?,?,?,?) "
                "ON CONFLICT (account_id, period, environment, kid) DO UPDATE SET "
                "pages = pages + excluded.pages, requests = requests + excluded.requests",
                [
                    (d.account_id, d.period, d.environment, d.kid, d.pages, d.requests)
                    for d in deltas
                ],
            )

    def usage(self, account_id: str, periods: Sequence[str]) -> builtins.list[UsageRow]:
        marks = ",".join("?" * len(periods))
        rows = self._query(
            "SELECT period, environment, kid, pages, requests FROM keystile_usage "
            f"WHERE account_id=? AND period IN ({marks})",
            (account_id, *periods),
        )
        return [UsageRow(*row) for row in rows]

    def get_limit(self, account_id: str) -> AccountLimit | None:
        rows = self._query(
            "SELECT pages, plan FROM keystile_limits WHERE account_id=?", (account_id,)
        )
        return AccountLimit(*rows[0]) if rows else None

    def set_limit(self, account_id: str, limit: AccountLimit | None) -> None:
        with self._tx() as db:
            if limit is None:
                db.execute("DELETE FROM keystile_limits WHERE account_id=?", (account_id,))
            else:
                db.execute(
                    "INSERT INTO keystile_limits VALUES (?,?,?) ON CONFLICT (account_id) "
                    "DO UPDATE SET pages=excluded.pages, plan=excluded.plan",
                    (account_id, limit.pages, limit.plan),
                )

    def add_audit(self, entry: AuditEntry) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO keystile_audit (at, account_id, actor, action, target, details) "
                "VALUES (?,?,?,?,?,?)",
                (
                    entry.at.timestamp(),
                    entry.account_id,
                    entry.actor,
                    entry.action,
                    entry.target,
                    json.dumps(dict(entry.details), default=str),
                ),
            )

    def list_audit(
        self, account_id: str, *, action: str | None, limit: int, cursor: str | None
    ) -> tuple[builtins.list[AuditEntry], str | None]:
        where, params = "account_id=?", [account_id]
        if action:
            where += " AND action=?"
            params.append(action)
        if cursor:
            if not (cursor.isascii() and cursor.isdigit()):
                raise InvalidInput("cursor", "not a cursor returned by a previous page")
            where += " AND id < ?"
            params.append(cursor)
        rows = self._query(
            "SELECT id, at, account_id, actor, action, target, details FROM keystile_audit "
            f"WHERE {where} ORDER BY id DESC LIMIT ?",
            (*params, limit + 1),
        )
        entries = [
            AuditEntry(
                at=from_epoch(at) or datetime.now(timezone.utc),
                account_id=account,
                actor=actor,
                action=action_,
                target=target,
                details=json.loads(details),
                id=id_,
            )
            for id_, at, account, actor, action_, target, details in rows[:limit]
        ]
        next_cursor = str(entries[-1].id) if len(rows) > limit and entries else None
        return entries, next_cursor

    def insert_session(self, session: SessionRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO keystile_sessions VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    session.sid,
                    session.kid,
                    session.account_id,
                    session.secret_digest,
                    session.key_hash_fingerprint,
                    session.created_at.timestamp(),
                    session.expires_at.timestamp(),
                    session.idle_timeout,
                    session.last_seen_at.timestamp(),
                    to_epoch(session.ended_at),
                ),
            )

    def get_session(self, sid: str) -> SessionRecord | None:
        rows = self._query("SELECT * FROM keystile_sessions WHERE sid=?", (sid,))
        if not rows:
            return None
        sid_, kid, account, digest, fingerprint, created, expires, idle, seen, ended = rows[0]
        return SessionRecord(
            sid=sid_,
            kid=kid,
            account_id=account,
            secret_digest=digest,
            key_hash_fingerprint=fingerprint,
            created_at=from_epoch(created),  # type: ignore[arg-type]
            expires_at=from_epoch(expires),  # type: ignore[arg-type]
            idle_timeout=idle,
            last_seen_at=from_epoch(seen),  # type: ignore[arg-type]
            ended_at=from_epoch(ended),
        )

    def end_session(self, sid: str, at: datetime) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE keystile_sessions SET ended_at=? WHERE sid=? AND ended_at IS NULL",
                (at.timestamp(), sid),
            )
            return cursor.rowcount == 1

    def touch_sessions(self, last_seen: Mapping[str, datetime]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE keystile_sessions SET last_seen_at=? WHERE sid=? AND last_seen_at < ?",
                [(at.timestamp(), sid, at.timestamp()) for sid, at in last_seen.items()],
            )

    def close(self) -> None:
        with self._lock, _driver_errors("close failed"):
            self._db.close()
