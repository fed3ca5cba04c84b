"""The key store on SQL tables, written once for every database driver.

A driver subclasses :class:`SQLStore`: it owns the connection (and so transactions and the
mapping of driver errors to :class:`~keystile._core.errors.BackendError`), creates the tables,
and describes its database in a :class:`Dialect`. The statements here are written with ``?``
placeholders and in the SQL that SQLite and PostgreSQL share.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from keystile._core.errors import InvalidInput
from keystile._core.models import KeyRecord
from keystile._core.store import (
    AccountLimit,
    AuditEntry,
    Page,
    SessionRecord,
    UsageDelta,
    UsageRow,
    fingerprint,
)
from keystile.stores.rows import (
    AUDIT_COLUMNS,
    KEY_COLUMNS,
    SESSION_COLUMNS,
    Codecs,
    audit_cursor_id,
    audit_details,
    audit_page,
    decode_cursor,
    key_page,
    like_escape,
    record_to_row,
    row_to_audit,
    row_to_record,
    row_to_session,
    session_to_row,
)

if TYPE_CHECKING:  # what ``list(account_id, **query: Unpack[ListQuery])`` is typed with
    from typing_extensions import Unpack  # in typing itself from Python 3.11

    from keystile._core.store import ListQuery


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses (sqlite3's and psycopg's both fit)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, query: Any, params_seq: Any, /) -> Any: ...

    def fetchall(self) -> builtins.list[Any]: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """What one database does its own way."""

    codecs: Codecs
    #: The driver's placeholder, written ``?`` in the statements here.
    placeholder: str = "?"
    #: The case-insensitive LIKE (SQLite's LIKE already ignores the case of ASCII letters).
    ilike: str = "LIKE"
    #: False where text columns cannot hold NUL: a key holding one is refused, an audit
    #: entry is kept with the NULs replaced.
    text_holds_nul: bool = True


def has_nul(value: Any) -> bool:
    """Whether a JSON-like value holds a NUL character."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, (builtins.list, tuple)):
        return any(has_nul(v) for v in value)
    return False


def strip_nul(value: Any) -> Any:
    """``value`` with NUL characters replaced."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, Mapping):
        return {strip_nul(k): strip_nul(v) for k, v in value.items()}
    if isinstance(value, (builtins.list, tuple)):
        return [strip_nul(v) for v in value]
    return value


def _columns(names: Sequence[str], prefix: str = "") -> str:
    return ",".join(f"{prefix}{name}" for name in names)


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({_columns(columns)}) VALUES ({_marks(len(columns))})"


_SELECT_KEYS = f"SELECT {_columns(KEY_COLUMNS)} FROM keystile_keys"
_INSERT_KEY = _insert("keystile_keys", KEY_COLUMNS)
_REPLACE_KEY = (
    f"UPDATE keystile_keys SET {','.join(f'{c}=?' for c in KEY_COLUMNS[1:])} "
    "WHERE kid=? AND version=?"
)
_TEXT_FIELDS = ("kid", "token_prefix", "last4", "name", "account_id", "owner", "environment")
_INSERT_SESSION = _insert("keystile_sessions", SESSION_COLUMNS)
_INSERT_AUDIT = _insert("keystile_audit", AUDIT_COLUMNS[1:])  # the database numbers entries


class SQLStore(ABC):
    """Keys, usage, limits, audit and sessions in five SQL tables.

    A subclass sets :attr:`dialect` and gives :meth:`_autocommit` and :meth:`_transaction`;
    both raise :class:`~keystile._core.errors.BackendError` for a failed driver call,
    in the caller's statements too.
    """

    dialect: Dialect
    blocking: bool

    @abstractmethod
    def _autocommit(self) -> AbstractContextManager[Cursor]:
        """A cursor outside a transaction: each statement stands alone (reads see what is
        committed when they run)."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Cursor]:
        """A cursor in a transaction that commits when the block ends, or rolls back."""

    @abstractmethod
    def close(self) -> None: ...

    # -- running statements -----------------------------------------------------------------

    @property
    def _codecs(self) -> Codecs:
        return self.dialect.codecs

    def _sql(self, query: str) -> str:
        placeholder = self.dialect.placeholder
        return query if placeholder == "?" else query.replace("?", placeholder)

    def _query(self, query: str, params: Sequence[Any] = ()) -> builtins.list[Any]:
        with self._autocommit() as cursor:
            cursor.execute(self._sql(query), tuple(params))
            return cursor.fetchall()

    def _execute(self, query: str, params: Sequence[Any] = ()) -> int:
        """Run one write; return how many rows it changed."""
        with self._transaction() as cursor:
            cursor.execute(self._sql(query), tuple(params))
            return cursor.rowcount

    def _execute_many(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run ``query`` for each of ``rows`` in one transaction."""
        if not rows:
            return
        with self._transaction() as cursor:
            cursor.executemany(self._sql(query), rows)

    # -- keys -------------------------------------------------------------------------------

    def _key_row(self, record: KeyRecord) -> tuple[Any, ...]:
        if not self.dialect.text_holds_nul:
            for field in _TEXT_FIELDS:
                if has_nul(getattr(record, field)):
                    raise InvalidInput(field, "must not contain NUL characters")
            for field in ("permissions", "accounts", "meta"):
                if has_nul(getattr(record, field)):
                    raise InvalidInput(field, "must not contain NUL characters (\\u0000)")
        return record_to_row(record, self._codecs)

    def insert(self, record: KeyRecord) -> None:
        self._execute(_INSERT_KEY, self._key_row(record))

    def get(self, kid: str) -> KeyRecord | None:
        rows = self._query(f"{_SELECT_KEYS} WHERE kid=?", (kid,))
        return row_to_record(rows[0], self._codecs) if rows else None

    def replace(self, record: KeyRecord, expected_version: str) -> bool:
        # A concurrent writer waits for the row, then re-checks the version against the
        # committed row: of two writers expecting one version, one wins.
        row = self._key_row(record)
        return self._execute(_REPLACE_KEY, (*row[1:], record.kid, expected_version)) == 1

    def set_hash(self, kid: str, old_hash: str, new_hash: str) -> None:
        with self._transaction() as cursor:
            cursor.execute(
                self._sql("UPDATE keystile_keys SET secret_hash=? WHERE kid=? AND secret_hash=?"),
                (new_hash, kid, old_hash),
            )
            if cursor.rowcount:
                cursor.execute(
                    self._sql(
                        "UPDATE keystile_sessions SET key_hash_fingerprint=?"
                        " WHERE kid=? AND key_hash_fingerprint=?"
                    ),
                    (fingerprint(new_hash), kid, fingerprint(old_hash)),
                )

    def all_kids(self) -> builtins.list[str]:
        return [row[0] for row in self._query("SELECT kid FROM keystile_keys")]

    def delete(self, kid: str) -> bool:
        return self._execute("DELETE FROM keystile_keys WHERE kid=?", (kid,)) == 1

    def list(self, account_id: str, **query: Unpack[ListQuery]) -> Page:
        search, environment, limit = query["search"], query["environment"], query["limit"]
        if search and "\x00" in search:
            return Page([], 0, None)  # LIKE would stop at the NUL; no name holds one
        where: builtins.list[str] = ["account_id=?"]
        params: builtins.list[Any] = [account_id]
        if search:
            where.append(f"name {self.dialect.ilike} ? ESCAPE '\\'")
            params.append(f"%{like_escape(search)}%")
        if environment:
            where.append("environment=?")
            params.append(environment)
        if not query["include_revoked"]:
            where.append("revoked_at IS NULL")
        clause = " AND ".join(where)
        page_where, page_params = clause, builtins.list(params)
        if query["cursor"]:
            created, kid = decode_cursor(query["cursor"])
            page_where += " AND (created_at, kid) < (?, ?)"
            page_params += [self._codecs.time_in(created), kid]
        # One statement, so the total and the page come from the same snapshot.
        rows = self._query(
            f"SELECT t.total, {_columns(KEY_COLUMNS, 'k.')} "
            f"FROM (SELECT count(*) AS total FROM keystile_keys WHERE {clause}) AS t "
            f"LEFT JOIN ({_SELECT_KEYS} WHERE {page_where} "
            "ORDER BY created_at DESC, kid DESC LIMIT ?) AS k ON true "
            "ORDER BY k.created_at DESC, k.kid DESC",
            (*params, *page_params, limit + 1),
        )
        found = [row_to_record(row[1:], self._codecs) for row in rows if row[1] is not None]
        return key_page(found, int(rows[0][0]), limit)

    def touch(self, last_used: Mapping[str, datetime]) -> None:
        # Rows are always locked in kid order, so concurrent batches cannot deadlock.
        time_in = self._codecs.time_in
        self._execute_many(
            "UPDATE keystile_keys SET last_used_at=? WHERE kid=? "
            "AND (last_used_at IS NULL OR last_used_at < ?)",
            [(time_in(at), kid, time_in(at)) for kid, at in sorted(last_used.items())],
        )

    # -- usage and limits -------------------------------------------------------------------

    def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        ordered = sorted(deltas, key=lambda d: (d.account_id, d.period, d.environment, d.kid))
        self._execute_many(
            "INSERT INTO keystile_usage (account_id, period, environment, kid, pages, requests)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT (account_id, period, environment, kid) DO UPDATE"
            " SET pages = keystile_usage.pages + excluded.pages,"
            " requests = keystile_usage.requests + excluded.requests",
            [(d.account_id, d.period, d.environment, d.kid, d.pages, d.requests) for d in ordered],
        )

    def usage(self, account_id: str, periods: Sequence[str]) -> builtins.list[UsageRow]:
        if not periods:
            return []
        rows = self._query(
            "SELECT period, environment, kid, pages, requests FROM keystile_usage "
            f"WHERE account_id=? AND period IN ({_marks(len(periods))}) "
            "ORDER BY period, environment, kid",
            (account_id, *periods),
        )
        return [UsageRow(*row) for row in rows]

    def get_limit(self, account_id: str) -> AccountLimit | None:
        rows = self._query(
            "SELECT pages, plan, rate FROM keystile_limits WHERE account_id=?", (account_id,)
        )
        return AccountLimit(*rows[0]) if rows else None

    def set_limit(self, account_id: str, limit: AccountLimit | None) -> None:
        if limit is None:
            self._execute("DELETE FROM keystile_limits WHERE account_id=?", (account_id,))
        else:
            self._execute(
                "INSERT INTO keystile_limits (account_id, pages, plan, rate) VALUES (?,?,?,?) "
                "ON CONFLICT (account_id) DO UPDATE SET pages=excluded.pages, plan=excluded.plan,"
                " rate=excluded.rate",
                (account_id, limit.pages, limit.plan, limit.rate),
            )

    # -- audit ------------------------------------------------------------------------------

    def add_audit(self, entry: AuditEntry) -> None:
        values = (entry.account_id, entry.actor, entry.action, entry.target)
        details = audit_details(entry.details)  # default=str may itself produce NULs
        if not self.dialect.text_holds_nul:
            values, details = strip_nul(values), strip_nul(details)
        at = self._codecs.time_in(entry.at)
        self._execute(_INSERT_AUDIT, (at, *values, self._codecs.json_in(details)))

    def list_audit(
        self, account_id: str, *, action: str | None, limit: int, cursor: str | None
    ) -> tuple[builtins.list[AuditEntry], str | None]:
        where = "account_id=?"
        params: builtins.list[Any] = [account_id]
        if action:
            where += " AND action=?"
            params.append(action)
        if cursor:
            where += " AND id < ?"
            params.append(audit_cursor_id(cursor))
        rows = self._query(
            f"SELECT {_columns(AUDIT_COLUMNS)} FROM keystile_audit "
            f"WHERE {where} ORDER BY id DESC LIMIT ?",
            (*params, limit + 1),
        )
        return audit_page([row_to_audit(row, self._codecs) for row in rows], limit)

    # -- sessions ---------------------------------------------------------------------------

    def insert_session(self, session: SessionRecord) -> None:
        self._execute(_INSERT_SESSION, session_to_row(session, self._codecs))

    def get_session(self, sid: str) -> SessionRecord | None:
        rows = self._query(
            f"SELECT {_columns(SESSION_COLUMNS)} FROM keystile_sessions WHERE sid=?", (sid,)
        )
        return row_to_session(rows[0], self._codecs) if rows else None

    def end_session(self, sid: str, at: datetime) -> bool:
        changed = self._execute(
            "UPDATE keystile_sessions SET ended_at=? WHERE sid=? AND ended_at IS NULL",
            (self._codecs.time_in(at), sid),
        )
        return changed == 1

    def touch_sessions(self, last_seen: Mapping[str, datetime]) -> None:
        time_in = self._codecs.time_in
        self._execute_many(
            "UPDATE keystile_sessions SET last_seen_at=? WHERE sid=? AND last_seen_at < ?",
            [(time_in(at), sid, time_in(at)) for sid, at in sorted(last_seen.items())],
        )
