"""The contract every key store keeps. Stores are synchronous; async code calls them in a thread."""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from keystile._core.models import KeyRecord

if TYPE_CHECKING:
    from typing_extensions import Unpack  # in typing itself from Python 3.11

__all__ = [
    "AccountLimit",
    "AuditEntry",
    "KeyStore",
    "ListQuery",
    "Page",
    "SessionRecord",
    "UsageDelta",
    "UsageRow",
    "fingerprint",
]


def fingerprint(secret_hash: str) -> str:
    """Names a key's current secret without holding its hash: a roll changes it."""
    return hashlib.sha256(secret_hash.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[KeyRecord]
    total: int
    next_cursor: str | None


class ListQuery(TypedDict):
    """Which of an account's keys :meth:`KeyStore.list` pages through, and where it is."""

    search: str | None  # a part of the name, in any case; ``%`` and ``_`` are plain characters
    environment: str | None
    include_revoked: bool
    limit: int
    cursor: str | None  # a ``next_cursor`` this store gave; None (or "") for the first page


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """Pages and requests to add to one key's counters for one period."""

    account_id: str
    period: str
    environment: str
    kid: str
    pages: int
    requests: int


@dataclass(frozen=True, slots=True)
class UsageRow:
    period: str
    environment: str
    kid: str
    pages: int
    requests: int


@dataclass(frozen=True, slots=True)
class AccountLimit:
    """An account's own limits: ``pages`` (None = unlimited) or a ``plan`` name from settings
    (:data:`DEFAULT_PLAN`: the settings' default, a row kept for its rate limit); ``rate``,
    the requests all its keys together may send (``"1000/min"``; None: no such limit)."""

    pages: int | None
    plan: str | None = None
    rate: str | None = None


#: The plan of a row that only holds an account's rate limit: its pages are the default.
DEFAULT_PLAN = ""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One management action: who did what to which key or account, never a secret."""

    at: datetime
    account_id: str
    actor: str
    action: str
    target: str | None
    details: Mapping[str, Any]
    id: int | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A login session. Only a digest of its secret is kept."""

    sid: str
    kid: str
    account_id: str
    secret_digest: str
    key_hash_fingerprint: str  # the key's secret hash at login: a roll ends the session
    created_at: datetime
    expires_at: datetime
    idle_timeout: float
    last_seen_at: datetime
    ended_at: datetime | None = None


class KeyStore(Protocol):
    #: False when calls never touch a disk or network, so async code may call them inline.
    blocking: bool

    def insert(self, record: KeyRecord) -> None: ...

    def get(self, kid: str) -> KeyRecord | None: ...

    def replace(self, record: KeyRecord, expected_version: str) -> bool:
        """Write ``record`` if the stored version is still ``expected_version``."""
        ...

    def set_hash(self, kid: str, old_hash: str, new_hash: str) -> None:
        """Rehash without changing the version: the secret itself did not change, so the
        key's sessions move to the new hash's fingerprint in the same transaction."""
        ...

    def delete(self, kid: str) -> bool: ...

    def all_kids(self) -> builtins.list[str]:
        """Every stored key id (revoked ones too): seeds Redis's set of existing key ids."""
        ...

    def list(self, account_id: str, **query: Unpack[ListQuery]) -> Page:
        """A page of the account's keys, newest first, with the total of all that match."""
        ...

    def touch(self, last_used: Mapping[str, datetime]) -> None:
        """Record last use of several keys in one write (batched by the engine)."""
        ...

    def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        """Add to the durable usage counters (an upsert that sums)."""
        ...

    def usage(self, account_id: str, periods: Sequence[str]) -> builtins.list[UsageRow]: ...

    def get_limit(self, account_id: str) -> AccountLimit | None: ...

    def set_limit(self, account_id: str, limit: AccountLimit | None) -> None:
        """Set the account's own limit; None goes back to the settings' default."""
        ...

    def add_audit(self, entry: AuditEntry) -> None: ...

    def list_audit(
        self, account_id: str, *, action: str | None, limit: int, cursor: str | None
    ) -> tuple[builtins.list[AuditEntry], str | None]:
        """Newest first; the cursor is opaque."""
        ...

    def insert_session(self, session: SessionRecord) -> None: ...

    def get_session(self, sid: str) -> SessionRecord | None: ...

    def end_session(self, sid: str, at: datetime) -> bool: ...

    def touch_sessions(self, last_seen: Mapping[str, datetime]) -> None: ...

    def close(self) -> None: ...
