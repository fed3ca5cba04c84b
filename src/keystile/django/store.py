"""``store: "django://"``: keys, usage and limits in the project's own database, via the ORM.

The same contract and semantics as the embedded SQLite store (:mod:`keystile.stores.sqlite`):
versioned ``replace``, cursor pagination newest first with a total, a name search in which
``%`` and ``_`` are plain characters, and usage writes that add up. Needs ``"keystile.django"``
in ``INSTALLED_APPS`` (importing the app adds the ``django://`` scheme to
:func:`keystile.stores.open_store`) and its migrations applied (``python manage.py migrate``).

A database error (a lost connection, missing tables) raises
:class:`~keystile._core.errors.BackendError`, as the other stores do, so the management API
answers 503 and the CLI one line.

Django connections belong to threads: every call uses the calling thread's connection, which
is what Django expects of request threads and of the worker threads the async engine uses.
"""

from __future__ import annotations

import builtins
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from keystile._core.errors import BackendError
from keystile._core.models import KeyRecord
from keystile._core.store import (
    AccountLimit,
    AuditEntry,
    KeyStore,
    Page,
    SessionRecord,
    UsageDelta,
    UsageRow,
    fingerprint,
)
from keystile.stores import register_store, rows

if TYPE_CHECKING:  # what ``list(account_id, **query: Unpack[ListQuery])`` is typed with
    from typing_extensions import Unpack  # in typing itself from Python 3.11

    from keystile._core.store import ListQuery

UTC = timezone.utc


def _models() -> Any:
    from keystile.django import models  # the app registry must be ready: imported on first use

    return models


def _use_tz() -> bool:
    from django.conf import settings  # type: ignore[import-untyped,unused-ignore]

    return bool(settings.USE_TZ)


def _to_db(value: datetime) -> datetime:
    """An aware datetime as the ORM wants it: aware with USE_TZ, naive UTC without."""
    value = value.astimezone(UTC)
    return value if _use_tz() else value.replace(tzinfo=None)


def _from_db(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: The ORM takes and gives Python values; only datetimes differ (naive UTC without USE_TZ).
CODECS = rows.Codecs(time_in=_to_db, time_out=_from_db)


def from_db(value: datetime | None) -> datetime | None:
    return CODECS.time_out_or_none(value)


def _fields(record: KeyRecord) -> dict[str, Any]:
    return dict(zip(rows.KEY_COLUMNS, rows.record_to_row(record, CODECS)))


class DjangoStore:
    """The :class:`~keystile._core.store.KeyStore` protocol on Django models."""

    blocking = True

    def __init__(self, using: str | None = None) -> None:
        #: The database alias (None: the router's choice, normally "default").
        self.using = using

    def _objects(self, model: str) -> Any:
        manager = getattr(_models(), model).objects
        return manager.using(self.using) if self.using else manager

    def _atomic(self) -> Any:
        from django.db import transaction  # type: ignore[import-untyped,unused-ignore]

        return transaction.atomic(using=self.using)

    def insert(self, record: KeyRecord) -> None:
        self._objects("Key").create(**_fields(record))

    def get(self, kid: str) -> KeyRecord | None:
        row = self._objects("Key").filter(kid=kid).values_list(*rows.KEY_COLUMNS).first()
        return None if row is None else rows.row_to_record(row, CODECS)

    def replace(self, record: KeyRecord, expected_version: str) -> bool:
        fields = _fields(record)
        del fields["kid"]
        updated = self._objects("Key").filter(kid=record.kid, version=expected_version)
        return bool(updated.update(**fields) == 1)

    def set_hash(self, kid: str, old_hash: str, new_hash: str) -> None:
        with self._atomic():
            keys = self._objects("Key").filter(kid=kid, secret_hash=old_hash)
            if keys.update(secret_hash=new_hash):
                sessions = self._objects("Session").filter(
                    kid=kid, key_hash_fingerprint=fingerprint(old_hash)
                )
                sessions.update(key_hash_fingerprint=fingerprint(new_hash))

    def all_kids(self) -> builtins.list[str]:
        return list(self._objects("Key").values_list("kid", flat=True))

    def delete(self, kid: str) -> bool:
        deleted, _ = self._objects("Key").filter(kid=kid).delete()
        return bool(deleted == 1)

    def list(self, account_id: str, **query: Unpack[ListQuery]) -> Page:
        from django.db.models import Q  # type: ignore[import-untyped,unused-ignore]

        keys = self._objects("Key").filter(account_id=account_id)
        if query["search"]:
            # icontains escapes % and _ itself; case-insensitive like SQLite's LIKE.
            keys = keys.filter(name__icontains=query["search"])
        if query["environment"]:
            keys = keys.filter(environment=query["environment"])
        if not query["include_revoked"]:
            keys = keys.filter(revoked_at__isnull=True)
        total = keys.count()
        if query["cursor"]:
            created, kid = rows.decode_cursor(query["cursor"])
            at = _to_db(created)
            keys = keys.filter(Q(created_at__lt=at) | Q(created_at=at, kid__lt=kid))
        limit = query["limit"]
        found = keys.order_by("-created_at", "-kid").values_list(*rows.KEY_COLUMNS)[: limit + 1]
        return rows.key_page([rows.row_to_record(row, CODECS) for row in found], total, limit)

    def touch(self, last_used: Mapping[str, datetime]) -> None:
        from django.db.models import Q

        with self._atomic():
            for kid, at in sorted(last_used.items()):  # one lock order: no deadlocks
                when = _to_db(at)
                self._objects("Key").filter(kid=kid).filter(
                    Q(last_used_at__isnull=True) | Q(last_used_at__lt=when)
                ).update(last_used_at=when)

    def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        from django.db import IntegrityError, transaction
        from django.db.models import F

        ordered = sorted(deltas, key=lambda d: (d.account_id, d.period, d.environment, d.kid))
        usage = self._objects("Usage")
        with self._atomic():
            for d in ordered:  # one lock order for every writer: no deadlocks
                key = {
                    "account_id": d.account_id,
                    "period": d.period,
                    "environment": d.environment,
                    "kid": d.kid,
                }
                add = {"pages": F("pages") + d.pages, "requests": F("requests") + d.requests}
                if usage.filter(**key).update(**add):
                    continue
                try:
                    with transaction.atomic(using=self.using):  # a savepoint
                        usage.create(**key, pages=d.pages, requests=d.requests)
                except IntegrityError:  # another process inserted it meanwhile: add to it
                    usage.filter(**key).update(**add)

    def usage(self, account_id: str, periods: Sequence[str]) -> builtins.list[UsageRow]:
        usage = self._objects("Usage").filter(account_id=account_id, period__in=list(periods))
        columns = ("period", "environment", "kid", "pages", "requests")
        return [UsageRow(*row) for row in usage.values_list(*columns)]

    def get_limit(self, account_id: str) -> AccountLimit | None:
        limits = self._objects("Limit").filter(account_id=account_id)
        row = limits.values_list("pages", "plan", "rate").first()
        return None if row is None else AccountLimit(*row)

    def set_limit(self, account_id: str, limit: AccountLimit | None) -> None:
        if limit is None:
            self._objects("Limit").filter(account_id=account_id).delete()
        else:
            self._objects("Limit").update_or_create(
                account_id=account_id,
                defaults={"pages": limit.pages, "plan": limit.plan, "rate": limit.rate},
            )

    # -- audit log ------------------------------------------------------------------------

    def add_audit(self, entry: AuditEntry) -> None:
        self._objects("AuditEntry").create(
            at=_to_db(entry.at),
            account_id=entry.account_id,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            details=rows.audit_details(entry.details),
        )

    def list_audit(
        self, account_id: str, *, action: str | None, limit: int, cursor: str | None
    ) -> tuple[builtins.list[AuditEntry], str | None]:
        entries = self._objects("AuditEntry").filter(account_id=account_id)
        if action:
            entries = entries.filter(action=action)
        if cursor:
            entries = entries.filter(id__lt=rows.audit_cursor_id(cursor))
        found = entries.order_by("-id").values_list(*rows.AUDIT_COLUMNS)[: limit + 1]
        return rows.audit_page([rows.row_to_audit(row, CODECS) for row in found], limit)

    # -- sessions ---------------------------------------------------------------------------

    def insert_session(self, session: SessionRecord) -> None:
        row = rows.session_to_row(session, CODECS)
        self._objects("Session").create(**dict(zip(rows.SESSION_COLUMNS, row)))

    def get_session(self, sid: str) -> SessionRecord | None:
        sessions = self._objects("Session").filter(sid=sid)
        row = sessions.values_list(*rows.SESSION_COLUMNS).first()
        return None if row is None else rows.row_to_session(row, CODECS)

    def end_session(self, sid: str, at: datetime) -> bool:
        sessions = self._objects("Session").filter(sid=sid, ended_at__isnull=True)
        return bool(sessions.update(ended_at=_to_db(at)) == 1)

    def touch_sessions(self, last_seen: Mapping[str, datetime]) -> None:
        with self._atomic():
            for sid, at in sorted(last_seen.items()):
                when = _to_db(at)
                sessions = self._objects("Session").filter(sid=sid, last_seen_at__lt=when)
                sessions.update(last_seen_at=when)

    def close(self) -> None:
        """Nothing to close: Django owns its connections."""


def _open(url: str) -> KeyStore:
    return DjangoStore()


def register_scheme() -> None:
    """Make ``open_store("django://")`` answer with this store (importing the app does)."""
    register_store("django", _open)


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
