"""The contract every key store keeps. Stores are synchronous; async code calls them in a thread."""

from __future__ import annotations

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

    def close(self) -> None: ...
