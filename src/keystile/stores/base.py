"""The contract every key store keeps. Stores are synchronous; async code calls them in a thread."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..models import KeyRecord


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[KeyRecord]
    total: int
    next_cursor: str | None


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
    """An account's own limit: ``pages`` (None = unlimited) or a ``plan`` name from settings."""

    pages: int | None
    plan: str | None = None


class KeyStore(Protocol):
    #: False when calls never touch a disk or network, so async code may call them inline.
    blocking: bool

    def insert(self, record: KeyRecord) -> None: ...

    def get(self, kid: str) -> KeyRecord | None: ...

    def replace(self, record: KeyRecord, expected_version: str) -> bool:
        """Write ``record`` if the stored version is still ``expected_version``."""
        ...

    def set_hash(self, kid: str, old_hash: str, new_hash: str) -> None:
        """Rehash without changing the version: the secret itself did not change."""
        ...

    def delete(self, kid: str) -> bool: ...

    def list(
        self,
        account_id: str,
        *,
        search: str | None,
        environment: str | None,
        include_revoked: bool,
        limit: int,
        cursor: str | None,
    ) -> Page: ...

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

    def close(self) -> None: ...
