"""Records as table rows, for every store on SQL tables (SQLite, PostgreSQL, Django's ORM).

The tables have the same columns everywhere; what differs is how a value is written to and
read from a column, and that is a :class:`Codecs`. The cursors here are the stores' own:
opaque to clients, decoded only by the store that made them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from keystile._core.errors import InvalidInput
from keystile._core.models import KeyRecord
from keystile._core.store import AuditEntry, Page, SessionRecord

#: The columns of a stored key, in the order every SQL store uses.
KEY_COLUMNS: tuple[str, ...] = (
    "kid",
    "token_prefix",
    "last4",
    "name",
    "account_id",
    "owner",
    "permissions",
    "environment",
    "accounts",
    "created_at",
    "expires_at",
    "last_used_at",
    "revoked_at",
    "enabled",
    "meta",
    "secret_hash",
    "previous_hash",
    "previous_expires_at",
    "version",
    "page_limit",
    "allowed_ips",
    "rate_limit",
)
SESSION_COLUMNS: tuple[str, ...] = (
    "sid",
    "kid",
    "account_id",
    "secret_digest",
    "key_hash_fingerprint",
    "created_at",
    "expires_at",
    "idle_timeout",
    "last_seen_at",
    "ended_at",
)
AUDIT_COLUMNS: tuple[str, ...] = ("id", "at", "account_id", "actor", "action", "target", "details")

BAD_CURSOR = "not a cursor returned by a previous page"
#: The largest audit id a BIGINT column holds: a cursor past it starts from the newest entry.
BIGINT_MAX = 2**63 - 1


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Codecs:
    """How a database stores the values SQL has no common type for."""

    time_in: Callable[[datetime], Any]
    time_out: Callable[[Any], datetime]
    json_in: Callable[[Any], Any] = _same
    json_out: Callable[[Any], Any] = _same
    flag_in: Callable[[bool], Any] = bool

    def time_in_or_none(self, value: datetime | None) -> Any:
        return None if value is None else self.time_in(value)

    def time_out_or_none(self, value: Any) -> datetime | None:
        return None if value is None else self.time_out(value)


class _Kind(NamedTuple):
    """How a value of one kind of column is written (given the codecs) and read back."""

    into: Callable[[Codecs, Any], Any]
    out: Callable[[Codecs, Any], Any]


_KINDS: dict[str, _Kind] = {
    "plain": _Kind(lambda c, v: v, lambda c, v: v),
    "time": _Kind(lambda c, v: c.time_in(v), lambda c, v: c.time_out(v)),
    "time?": _Kind(Codecs.time_in_or_none, Codecs.time_out_or_none),
    "list": _Kind(lambda c, v: c.json_in(list(v)), lambda c, v: tuple(c.json_out(v))),
    "dict": _Kind(lambda c, v: c.json_in(dict(v)), lambda c, v: dict(c.json_out(v))),
    "json": _Kind(lambda c, v: c.json_in(v), lambda c, v: c.json_out(v)),
    "flag": _Kind(lambda c, v: c.flag_in(v), lambda c, v: bool(v)),
    "float": _Kind(lambda c, v: float(v), lambda c, v: v),
}


@dataclass(frozen=True, slots=True)
class _Table:
    """A record's columns, named as its fields, and the kind of each that is not "plain"."""

    columns: tuple[str, ...]
    kinds: Mapping[str, str]

    def row(self, item: Any, codecs: Codecs) -> tuple[Any, ...]:
        return tuple(self._kind(name).into(codecs, getattr(item, name)) for name in self.columns)

    def fields(self, row: Sequence[Any], codecs: Codecs) -> dict[str, Any]:
        pairs = zip(self.columns, row, strict=True)
        return {name: self._kind(name).out(codecs, value) for name, value in pairs}

    def _kind(self, column: str) -> _Kind:
        return _KINDS[self.kinds.get(column, "plain")]


_KEYS = _Table(
    KEY_COLUMNS,
    {
        "permissions": "list",
        "accounts": "list",
        "created_at": "time",
        "expires_at": "time?",
        "last_used_at": "time?",
        "revoked_at": "time?",
        "enabled": "flag",
        "meta": "dict",
        "previous_expires_at": "time?",
        "allowed_ips": "list",
    },
)
_SESSIONS = _Table(
    SESSION_COLUMNS,
    {
        "created_at": "time",
        "expires_at": "time",
        "idle_timeout": "float",
        "last_seen_at": "time",
        "ended_at": "time?",
    },
)
_AUDIT = _Table(AUDIT_COLUMNS, {"at": "time", "details": "json"})


def record_to_row(record: KeyRecord, codecs: Codecs) -> tuple[Any, ...]:
    """``record`` as a row of :data:`KEY_COLUMNS`."""
    return _KEYS.row(record, codecs)


def row_to_record(row: Sequence[Any], codecs: Codecs) -> KeyRecord:
    return KeyRecord(**_KEYS.fields(row, codecs))


def session_to_row(session: SessionRecord, codecs: Codecs) -> tuple[Any, ...]:
    """``session`` as a row of :data:`SESSION_COLUMNS`."""
    return _SESSIONS.row(session, codecs)


def row_to_session(row: Sequence[Any], codecs: Codecs) -> SessionRecord:
    return SessionRecord(**_SESSIONS.fields(row, codecs))


def row_to_audit(row: Sequence[Any], codecs: Codecs) -> AuditEntry:
    return AuditEntry(**_AUDIT.fields(row, codecs))


def audit_details(details: Mapping[str, Any]) -> Any:
    """``details`` as plain JSON values: what JSON cannot hold becomes its ``str()``."""
    return json.loads(json.dumps(dict(details), default=str))


def audit_cursor_id(cursor: str) -> int:
    """The id below which the next page of audit entries starts."""
    if not (cursor.isascii() and cursor.isdigit()):
        raise InvalidInput("cursor", BAD_CURSOR)
    return min(int(cursor), BIGINT_MAX) if len(cursor) < 20 else BIGINT_MAX


def audit_page(entries: Sequence[AuditEntry], limit: int) -> tuple[list[AuditEntry], str | None]:
    """The first ``limit`` of ``entries`` (fetched one more than ``limit``) and the cursor
    to the rest."""
    page = list(entries[:limit])
    return page, (str(page[-1].id) if len(entries) > limit and page else None)


def encode_cursor(created_at: datetime, kid: str) -> str:
    """A page's position (newest first: creation time, then key id), opaque to clients."""
    raw = f"{created_at.astimezone(timezone.utc).isoformat()}|{kid}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, kid = raw.split("|", 1)
        at = datetime.fromisoformat(created)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor", BAD_CURSOR) from None
    if at.tzinfo is None or "\x00" in kid:  # no database text holds a NUL
        raise InvalidInput("cursor", BAD_CURSOR)
    return at, kid


def key_page(records: Sequence[KeyRecord], total: int, limit: int) -> Page:
    """The first ``limit`` of ``records`` (fetched one more than ``limit``), newest first."""
    items = list(records[:limit])
    next_cursor = None
    if len(records) > limit:
        last = items[-1]
        next_cursor = encode_cursor(last.created_at, last.kid)
    return Page(items, total, next_cursor)


def like_escape(text: str) -> str:
    """``text`` for a LIKE pattern (with ``ESCAPE '\\'``): ``%`` and ``_`` match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
