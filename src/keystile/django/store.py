"""``store: "django://"``: keys, usage and limits in the project's own database, via the ORM.

The same contract and semantics as the embedded SQLite store (:mod:`keystile.stores.sqlite`):
versioned ``replace``, cursor pagination newest first with a total, a name search in which
``%`` and ``_`` are plain characters, and usage writes that add up. Needs ``"keystile.django"``
in ``INSTALLED_APPS`` and its migrations applied (``python manage.py migrate``).

A database error (a lost connection, missing tables) raises
:class:`~keystile._core.errors.BackendError`, as the other stores do, so the management API
answers 503 and the CLI one line.

Django connections belong to threads: every call uses the calling thread's connection, which
is what Django expects of request threads and of the worker threads the async engine uses.
"""

from __future__ import annotations

import builtins
import functools
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from keystile._core.errors import BackendError, InvalidInput
from keystile._core.models import KeyRecord
from keystile._core.store import (
    AccountLimit,
    AuditEntry,
    Page,
    SessionRecord,
    UsageDelta,
    UsageRow,
    decode_cursor,
    encode_cursor,
    fingerprint,
)

UTC = timezone.utc


def _models() -> Any:
    from keystile.django import models  # the app registry must be ready: imported on first use

    return models


def _use_tz() -> bool:
    from django.conf import settings  # type: ignore[import-untyped,unused-ignore]

    return bool(settings.USE_TZ)


def to_db(value: datetime | None) -> datetime | None:
    """An aware datetime as the ORM wants it: aware with USE_TZ, naive UTC without."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value if _use_tz() else value.replace(tzinfo=None)


def from_db(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fields(record: KeyRecord) -> dict[str, Any]:
    return {
        "token_prefix": record.token_prefix,
        "last4": record.last4,
        "name": record.name,
        "account_id": record.account_id,
        "owner": record.owner,
        "permissions": list(record.permissions),
        "environment": record.environment,
        "accounts": list(record.accounts),
        "created_at": to_db(record.created_at),
        "expires_at": to_db(record.expires_at),
        "last_used_at": to_db(record.last_used_at),
        "revoked_at": to_db(record.revoked_at),
        "enabled": record.enabled,
        "meta": dict(record.meta),
        "secret_hash": record.secret_hash,
        "previous_hash": record.previous_hash,
        "previous_expires_at": to_db(record.previous_expires_at),
        "version": record.version,
        "page_limit": record.page_limit,
    }


def to_record(row: Any) -> KeyRecord:
    created_at = from_db(row.created_at)
    assert created_at is not None
    return KeyRecord(
        kid=row.kid,
        token_prefix=row.token_prefix,
        last4=row.last4,
        name=row.name,
        account_id=row.account_id,
        owner=row.owner,
        permissions=tuple(row.permissions),
        environment=row.environment,
        accounts=tuple(row.accounts),
        created_at=created_at,
        expires_at=from_db(row.expires_at),
        last_used_at=from_db(row.last_used_at),
        revoked_at=from_db(row.revoked_at),
        enabled=bool(row.enabled),
        meta=dict(row.meta),
        secret_hash=row.secret_hash,
        previous_hash=row.previous_hash,
        previous_expires_at=from_db(row.previous_expires_at),
        version=row.version,
        page_limit=row.page_limit,
    )


class DjangoStore:
    """The :class:`~keystile._core.store.KeyStore` protocol on Django models."""

    blocking = True

    def __init__(self, using: str | None = None) -> None:
        #: The database alias (None: the router's choice, normally "default").
        self.using = using

    def _keys(self) -> Any:
        manager = _models().Key.objects
        return manager.using(self.using) if self.using else manager

    def _usage(self) -> Any:
        manager = _models().Usage.objects
        return manager.using(self.using) if self.using else manager

    def _limits(self) -> Any:
        manager = _models().Limit.objects
        return manager.using(self.using) if self.using else manager

    def _audit(self) -> Any:
        manager = _models().AuditEntry.objects
        return manager.using(self.using) if self.using else manager

    def _sessions(self) -> Any:
        manager = _models().Session.objects
        return manager.using(self.using) if self.using else manager

    def _atomic(self) -> Any:
        from django.db import transaction  # type: ignore[import-untyped,unused-ignore]

        return transaction.atomic(using=self.using)

    def insert(self, record: KeyRecord) -> None:
        self._keys().create(kid=record.kid, **_fields(record))

    def get(self, kid: str) -> KeyRecord | None:
        row = self._keys().filter(kid=kid).first()
        return None if row is None else to_record(row)

    def replace(self, record: KeyRecord, expected_version: str) -> bool:
        updated = (
            self._keys().filter(kid=record.kid, version=expected_version).update(**_fields(record))
        )
        return bool(updated == 1)

    def set_hash(self, kid: str, old_hash: str, new_hash: str) -> None:
        with self._atomic():
            if self._keys().filter(kid=kid, secret_hash=old_hash).update(secret_hash=new_hash):
                self._sessions().filter(kid=kid, key_hash_fingerprint=fingerprint(old_hash)).update(
                    key_hash_fingerprint=fingerprint(new_hash)
                )

    def all_kids(self) -> builtins.list[str]:
        return list(self._keys().values_list("kid", flat=True))

    def delete(self, kid: str) -> bool:
        deleted, _ = self._keys().filter(kid=kid).delete()
        return bool(deleted == 1)

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
        from django.db.models import Q  # type: ignore[import-untyped,unused-ignore]

        rows = self._keys().filter(account_id=account_id)
        if search:
            # icontains escapes % and _ itself; case-insensitive like SQLite's LIKE.
            rows = rows.filter(name__icontains=search)
        if environment:
            rows = rows.filter(environment=environment)
        if not include_revoked:
            rows = rows.filter(revoked_at__isnull=True)
        total = rows.count()
        if cursor:
            created, kid = decode_cursor(cursor)
            at = to_db(created)
            rows = rows.filter(Q(created_at__lt=at) | Q(created_at=at, kid__lt=kid))
        page = [to_record(row) for row in rows.order_by("-created_at", "-kid")[: limit + 1]]
        items = page[:limit]
        next_cursor = None
        if len(page) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last.created_at, last.kid)
        return Page(items, total, next_cursor)

    def touch(self, last_used: Mapping[str, datetime]) -> None:
        from django.db.models import Q

        with self._atomic():
            for kid, at in sorted(last_used.items()):  # one lock order: no deadlocks
                when = to_db(at)
                self._keys().filter(kid=kid).filter(
                    Q(last_used_at__isnull=True) | Q(last_used_at__lt=when)
                ).update(last_used_at=when)

    def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        from django.db import IntegrityError, transaction
        from django.db.models import F

        ordered = sorted(deltas, key=lambda d: (d.account_id, d.period, d.environment, d.kid))
        with self._atomic():
            for d in ordered:  # one lock order for every writer: no deadlocks
                key = {
                    "account_id": d.account_id,
                    "period": d.period,
                    "environment": d.environment,
                    "kid": d.kid,
                }
                add = {"pages": F("pages") + d.pages, "requests": F("requests") + d.requests}
                if self._usage().filter(**key).update(**add):
                    continue
                try:
                    with transaction.atomic(using=self.using):  # a savepoint
                        self._usage().create(**key, pages=d.pages, requests=d.requests)
                except IntegrityError:  # another process inserted it meanwhile: add to it
                    self._usage().filter(**key).update(**add)

    def usage(self, account_id: str, periods: Sequence[str]) -> builtins.list[UsageRow]:
        rows = self._usage().filter(account_id=account_id, period__in=list(periods))
        return [
            UsageRow(row.period, row.environment, row.kid, row.pages, row.requests) for row in rows
        ]

    def get_limit(self, account_id: str) -> AccountLimit | None:
        row = self._limits().filter(account_id=account_id).first()
        return None if row is None else AccountLimit(row.pages, row.plan)

    def set_limit(self, account_id: str, limit: AccountLimit | None) -> None:
        if limit is None:
            self._limits().filter(account_id=account_id).delete()
        else:
            self._limits().update_or_create(
                account_id=account_id, defaults={"pages": limit.pages, "plan": limit.plan}
            )

    # -- audit log ------------------------------------------------------------------------

    def add_audit(self, entry: AuditEntry) -> None:
        details = json.loads(json.dumps(dict(entry.details), default=str))
        self._audit().create(
            at=to_db(entry.at),
            account_id=entry.account_id,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            details=details,
        )

    def list_audit(
        self, account_id: str, *, action: str | None, limit: int, cursor: str | None
    ) -> tuple[builtins.list[AuditEntry], str | None]:
        rows = self._audit().filter(account_id=account_id)
        if action:
            rows = rows.filter(action=action)
        if cursor:
            if not (cursor.isascii() and cursor.isdigit()):
                raise InvalidInput("cursor", "not a cursor returned by a previous page")
            if len(cursor) <= 18:  # anything longer is past every id: start from the newest
                rows = rows.filter(id__lt=int(cursor))
        found = list(rows.order_by("-id")[: limit + 1])
        entries = [
            AuditEntry(
                at=from_db(row.at) or datetime.now(UTC),
                account_id=row.account_id,
                actor=row.actor,
                action=row.action,
                target=row.target,
                details=row.details,
                id=row.id,
            )
            for row in found[:limit]
        ]
        next_cursor = str(entries[-1].id) if len(found) > limit and entries else None
        return entries, next_cursor

    # -- sessions ---------------------------------------------------------------------------

    def insert_session(self, session: SessionRecord) -> None:
        self._sessions().create(
            sid=session.sid,
            kid=session.kid,
            account_id=session.account_id,
            secret_digest=session.secret_digest,
            key_hash_fingerprint=session.key_hash_fingerprint,
            created_at=to_db(session.created_at),
            expires_at=to_db(session.expires_at),
            idle_timeout=session.idle_timeout,
            last_seen_at=to_db(session.last_seen_at),
            ended_at=to_db(session.ended_at),
        )

    def get_session(self, sid: str) -> SessionRecord | None:
        row = self._sessions().filter(sid=sid).first()
        if row is None:
            return None
        return SessionRecord(
            sid=row.sid,
            kid=row.kid,
            account_id=row.account_id,
            secret_digest=row.secret_digest,
            key_hash_fingerprint=row.key_hash_fingerprint,
            created_at=from_db(row.created_at),  # type: ignore[arg-type]
            expires_at=from_db(row.expires_at),  # type: ignore[arg-type]
            idle_timeout=row.idle_timeout,
            last_seen_at=from_db(row.last_seen_at),  # type: ignore[arg-type]
            ended_at=from_db(row.ended_at),
        )

    def end_session(self, sid: str, at: datetime) -> bool:
        ended = self._sessions().filter(sid=sid, ended_at__isnull=True).update(ended_at=to_db(at))
        return bool(ended == 1)

    def touch_sessions(self, last_seen: Mapping[str, datetime]) -> None:
        with self._atomic():
            for sid, at in sorted(last_seen.items()):
                when = to_db(at)
                self._sessions().filter(sid=sid, last_seen_at__lt=when).update(last_seen_at=when)

    def close(self) -> None:
        """Nothing to close: Django owns its connections."""


F = TypeVar("F", bound=Callable[..., Any])
_LOCKED_RETRIES, _LOCKED_PAUSE = 50, 0.01  # half a second of a locked table at most


def _database_errors(method: F) -> F:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from django.db import Error as DatabaseError  # type: ignore[import-untyped,unused-ignore]
        from django.db import OperationalError  # type: ignore[import-untyped,unused-ignore]

        try:
            for _ in range(_LOCKED_RETRIES):
                try:
                    return method(*args, **kwargs)
                except OperationalError as exc:
                    # SQLite's shared in-memory database fails at once on a table another
                    # thread reads (the flusher, the key-id seeding); a file database waits
                    # for its turn. The failed statement changed nothing: try again.
                    if "locked" not in str(exc).lower():
                        raise
                    threading.Event().wait(_LOCKED_PAUSE)
            return method(*args, **kwargs)
        except DatabaseError as exc:
            # The type, not the text: a driver's message may quote the values it was sent.
            text = str(exc).lower()
            missing = "no such table" in text or "does not exist" in text
            hint = " (are keystile's migrations applied? python manage.py migrate)"
            message = f"Django store: {type(exc).__name__}{hint if missing else ''}"
            raise BackendError(message) from exc

    return wrapper  # type: ignore[return-value]


for _name, _method in list(vars(DjangoStore).items()):
    if not _name.startswith("_") and callable(_method):
        setattr(DjangoStore, _name, _database_errors(_method))
