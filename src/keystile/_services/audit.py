"""``ks.audit``: every management action, with who did it and what changed (never a secret)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keystile._core.errors import InvalidInput
from keystile._core.keyfields import check_account
from keystile._core.store import AuditEntry, KeyStore

log = logging.getLogger("keystile")

ACTIONS = (
    "key.create",
    "key.update",
    "key.revoke",
    "key.delete",
    "key.roll",
    "session.login",
    "session.logout",
    "limit.change",
)
#: Who acted when the caller does not say: a program using the library directly.
SYSTEM_ACTOR = "system"


@dataclass(frozen=True, slots=True)
class AuditPage:
    items: Sequence[AuditEntry]
    next_cursor: str | None


def entry_to_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "account_id": entry.account_id,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "details": dict(entry.details),
    }


class AuditLog:
    def __init__(self, store: KeyStore, now: Callable[[], datetime]) -> None:
        self._store = store
        self._now = now

    def record(
        self,
        action: str,
        account_id: str,
        actor: str | None,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Write one entry. A failure is logged, not raised: the action itself happened."""
        if action not in ACTIONS:  # a bug in keystile, not bad input
            raise ValueError(f"unknown audit action {action!r}")
        entry = AuditEntry(
            at=self._now(),
            account_id=account_id,
            actor=actor or SYSTEM_ACTOR,
            action=action,
            target=target,
            details=dict(details or {}),
        )
        try:
            self._store.add_audit(entry)
        except Exception as exc:  # the action happened: a lost entry must not undo or fail it
            log.error("keystile: could not write audit entry %s (%s)", action, type(exc).__name__)

    def list(
        self,
        account_id: str,
        action: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> AuditPage:
        check_account("account_id", account_id)
        if action is not None and action not in ACTIONS:
            raise InvalidInput("action", f"expected one of {', '.join(ACTIONS)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
            raise InvalidInput("limit", "expected an integer from 1 to 200")
        items, next_cursor = self._store.list_audit(
            account_id, action=action, limit=limit, cursor=cursor or None
        )
        return AuditPage(items, next_cursor)
