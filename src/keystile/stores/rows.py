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
from typing import Any

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


def record_to_row(record: KeyRecord, codecs: Codecs) -> tuple[Any, ...]:
    """``record`` as a row of :data:`KEY_COLUMNS`."""
    return (
        record.kid,
        record.token_prefix,
        record.last4,
        record.name,
        record.account_id,
        record.owner,
        codecs.json_in(list(record.permissions)),
        record.environment,
        codecs.json_in(list(record.accounts)),
        codecs.time_in(record.created_at),
        codecs.time_in_or_none(record.expires_at),
        codecs.time_in_or_none(record.last_used_at),
        codecs.time_in_or_none(record.revoked_at),
        codecs.flag_in(record.enabled),
        codecs.json_in(dict(record.meta)),
        record.secret_hash,
        record.previous_hash,
        codecs.time_in_or_none(record.previous_expires_at),
        record.version,
        record.page_limit,
    )


def row_to_record(row: Sequence[Any], codecs: Codecs) -> KeyRecord:
    values = dict(zip(KEY_COLUMNS, row))
    return KeyRecord(
        kid=values["kid"],
        token_prefix=values["token_prefix"],
        last4=values["last4"],
        name=values["name"],
        account_id=values["account_id"],
        owner=values["owner"],
        permissions=tuple(codecs.json_out(values["permissions"])),
        environment=values["environment"],
        accounts=tuple(codecs.json_out(values["accounts"])),
        created_at=codecs.time_out(values["created_at"]),
        expires_at=codecs.time_out_or_none(values["expires_at"]),
        last_used_at=codecs.time_out_or_none(values["last_used_at"]),
        revoked_at=codecs.time_out_or_none(values["revoked_at"]),
        enabled=bool(values["enabled"]),
        meta=dict(codecs.json_out(values["meta"])),
        secret_hash=values["secret_hash"],
        previous_hash=values["previous_hash"],
        previous_expires_at=codecs.time_out_or_none(values["previous_expires_at"]),
        version=values["version"],
        page_limit=values["page_limit"],
    )


def session_to_row(session: SessionRecord, codecs: Codecs) -> tuple[Any, ...]:
    """``session`` as a row of :data:`SESSION_COLUMNS`."""
    return (
        session.sid,
        session.kid,
        session.account_id,
        session.secret_digest,
        session.key_hash_fingerprint,
        codecs.time_in(session.created_at),
        codecs.time_in(session.expires_at),
        float(session.idle_timeout),
        codecs.time_in(session.last_seen_at),
        codecs.time_in_or_none(session.ended_at),
    )


def row_to_session(row: Sequence[Any], codecs: Codecs) -> SessionRecord:
    sid, kid, account, digest, key_fingerprint, created, expires, idle, seen, ended = row
    return SessionRecord(
        sid=sid,
        kid=kid,
        account_id=account,
        secret_digest=digest,
        key_hash_fingerprint=key_fingerprint,
        created_at=codecs.time_out(created),
        expires_at=codecs.time_out(expires),
        idle_timeout=idle,
        last_seen_at=codecs.time_out(seen),
        ended_at=codecs.time_out_or_none(ended),
    )


def audit_details(details: Mapping[str, Any]) -> Any:
    """``details`` as plain JSON values: what JSON cannot hold becomes its ``str()``."""
    return json.loads(json.dumps(dict(details), default=str))


def row_to_audit(row: Sequence[Any], codecs: Codecs) -> AuditEntry:
    id_, at, account, actor, action, target, details = row
    return AuditEntry(
        at=codecs.time_out(at),
        account_id=account,
        actor=actor,
        action=action,
        target=target,
        details=codecs.json_out(details),
        id=id_,
    )


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
