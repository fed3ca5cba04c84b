"""Key life: create (token shown once), read, list, update, revoke, delete and roll.

Every change writes the store first and then publishes the key's new state stamp to Redis,
so that every process sharing that Redis refuses the old state on its very next request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keystile._backends.backends import Backends
from keystile._core import tokens
from keystile._core.errors import BackendError, InvalidInput, NotFound
from keystile._core.keyfields import (
    check_account,
    check_expiry,
    check_meta,
    check_name,
    check_networks,
    check_page_limit,
    check_permissions,
)
from keystile._core.models import ApiKey, KeyRecord, ShownOnce, new_version
from keystile._core.ratelimits import check_rate_limit
from keystile._services.audit import AuditLog
from keystile._services.loginlimits import KnownSecrets

__all__ = [
    "CreatedKey",
    "KeyManager",
    "KeyPage",
    "check_account",
    "check_permissions",
]


MAX_LIST_LIMIT = 100
_UNSET: Any = object()
log = logging.getLogger("keystile")


@dataclass(frozen=True, slots=True, repr=False)
class CreatedKey(ShownOnce):
    """The one moment a key's secret exists in clear: show it, then let it go."""

    token: str
    key_id: str
    secret: str
    key: ApiKey


@dataclass(frozen=True, slots=True)
class KeyPage:
    items: Sequence[ApiKey]
    total: int
    next_cursor: str | None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class KeyManager:
    """``ks.keys``: every change is saved in the store, then made known (the key's caches
    here, its version stamp in Redis, in fast mode the invalidation channel), then audited."""

    def __init__(self, backends: Backends, audit: AuditLog, known: KnownSecrets) -> None:
        self._backends = backends
        self._settings = backends.settings
        self._store = backends.store
        self._now = backends.clocks.now
        self._audit_log = audit
        self._known = known

    def _know(self, kid: str, secret: str) -> None:
        """The new credential passes the key's failure budget from its first use: no one who
        only knows the key id can lock its owner out, even before the owner has used it."""
        credential = tokens.ParsedToken(kid, secret, None)
        try:
            self._known.remember(kid, self._backends.digest(credential))
        except BackendError as exc:
            log.warning("keystile: could not record the key's credential (%s)", exc)

    def _kid(self, key_id: Any) -> str:
        kid = tokens.parse_key_id(key_id) if isinstance(key_id, str) else None
        if kid is None:
            raise NotFound(f"no API key {key_id!r}" if isinstance(key_id, str) else "no such key")
        return kid

    def _record(self, key_id: str) -> KeyRecord:
        record: KeyRecord | None = self._store.get(self._kid(key_id))
        if record is None:
            raise NotFound(f"no API key {key_id!r}")
        return record

    def _new_secret(self, kid: str, environment: str) -> tuple[str, str, str]:
        secret = tokens.new_secret(kid)
        token = tokens.format_token(self._settings.token_prefix, environment, kid, secret)
        return token, secret, self._backends.hasher.hash(secret)

    def create(
        self,
        account_id: str,
        name: str,
        permissions: Iterable[str] = (),
        environment: str | None = None,
        expires_at: datetime | None = None,
        owner: str | None = None,
        accounts: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        page_limit: int | None = None,
        allowed_ips: Iterable[str] | None = None,
        rate_limit: str | None = None,
        actor: str | None = None,
    ) -> CreatedKey:
        """A new key; ``environment`` defaults to the first configured one. ``allowed_ips``:
        the networks (CIDRs) it may be used from (empty: anywhere); ``rate_limit``: requests
        per second, minute or hour (``"100/s"``, ``"6000/min"``, ``"100000/h"``)."""
        settings = self._settings
        now = self._now()
        check_account("account_id", account_id)
        if environment is None:
            environment = settings.environments[0]
        if environment not in settings.environments:
            raise InvalidInput("environment", f"expected one of {list(settings.environments)}")
        if owner is not None and (not isinstance(owner, str) or len(owner) > 200):
            raise InvalidInput("owner", "expected a string of at most 200 characters or None")
        if isinstance(accounts, str) or not isinstance(accounts, Iterable):
            raise InvalidInput("accounts", "expected a list of account ids")
        extra = tuple(dict.fromkeys(check_account("accounts", a) for a in accounts))
        kid = tokens.new_kid()
        token, secret, secret_hash = self._new_secret(kid, environment)
        record = KeyRecord(
            kid=kid,
            token_prefix=settings.token_prefix,
            last4=token[-4:],
            name=check_name(name),
            account_id=account_id,
            owner=owner,
            permissions=check_permissions(permissions),
            environment=environment,
            accounts=tuple(a for a in extra if a != account_id),
            created_at=now,
            expires_at=check_expiry(expires_at, now, future=True),
            last_used_at=None,
            revoked_at=None,
            enabled=True,
            meta=check_meta(meta),
            secret_hash=secret_hash,
            previous_hash=None,
            previous_expires_at=None,
            version=new_version(),
            page_limit=check_page_limit(page_limit),
            allowed_ips=check_networks("allowed_ips", allowed_ips),
            rate_limit=check_rate_limit("rate_limit", rate_limit),
        )
        self._store.insert(record)
        self._announce(kid)  # before anyone has the token: no engine refuses it as unknown
        self._know(kid, secret)
        self._audit(
            "key.create",
            record,
            actor,
            {
                "name": record.name,
                "permissions": list(record.permissions),
                "environment": record.environment,
                "expires_at": _iso(record.expires_at),
                **({"allowed_ips": list(record.allowed_ips)} if record.allowed_ips else {}),
                **({"rate_limit": record.rate_limit} if record.rate_limit else {}),
            },
        )
        return CreatedKey(token, record.key_id, secret, record.public())

    def get(self, key_id: str) -> ApiKey:
        return self._record(key_id).public()

    def list(
        self,
        account_id: str,
        search: str | None = None,
        environment: str | None = None,
        include_revoked: bool = False,
        limit: int = 20,
        cursor: str | None = None,
    ) -> KeyPage:
        check_account("account_id", account_id)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_LIST_LIMIT
        ):
            raise InvalidInput("limit", f"expected an integer from 1 to {MAX_LIST_LIMIT}")
        if search is not None and (not isinstance(search, str) or len(search) > 200):
            raise InvalidInput("search", "expected a string of at most 200 characters")
        if environment is not None and environment not in self._settings.environments:
            raise InvalidInput("environment", "unknown environment")
        page = self._store.list(
            account_id,
            search=search or None,
            environment=environment,
            include_revoked=include_revoked,
            limit=limit,
            cursor=cursor or None,
        )
        return KeyPage([r.public() for r in page.items], page.total, page.next_cursor)

    def update(
        self,
        key_id: str,
        *,
        name: str = _UNSET,
        permissions: Iterable[str] = _UNSET,
        expires_at: datetime | None = _UNSET,
        meta: Mapping[str, Any] | None = _UNSET,
        enabled: bool = _UNSET,
        page_limit: int | None = _UNSET,
        allowed_ips: Iterable[str] | None = _UNSET,
        rate_limit: str | None = _UNSET,
        actor: str | None = None,
    ) -> ApiKey:
        changes: dict[str, Any] = {}
        if name is not _UNSET:
            changes["name"] = check_name(name)
        if permissions is not _UNSET:
            changes["permissions"] = check_permissions(permissions)
        if expires_at is not _UNSET:
            changes["expires_at"] = check_expiry(expires_at, self._now(), future=False)
        if meta is not _UNSET:
            changes["meta"] = check_meta(meta)
        if enabled is not _UNSET:
            if not isinstance(enabled, bool):
                raise InvalidInput("enabled", "expected true or false")
            changes["enabled"] = enabled
        if page_limit is not _UNSET:
            changes["page_limit"] = check_page_limit(page_limit)
        if allowed_ips is not _UNSET:
            changes["allowed_ips"] = check_networks("allowed_ips", allowed_ips)
        if rate_limit is not _UNSET:
            changes["rate_limit"] = check_rate_limit("rate_limit", rate_limit)
        record = self._change(key_id, lambda record: changes)
        if changes:
            shown = {k: _iso(v) if isinstance(v, datetime) else v for k, v in changes.items()}
            self._audit("key.update", record, actor, {"changes": _jsonable(shown)})
        return record.public()

    def revoke(self, key_id: str, actor: str | None = None) -> ApiKey:
        """Refused from the next request on, everywhere; kept for audit; cannot be undone."""
        now = self._now()
        revoked_here: list[bool] = []

        def revoke_changes(record: KeyRecord) -> dict[str, Any]:
            revoked_here[:] = [record.revoked_at is None]
            return {"revoked_at": now} if record.revoked_at is None else {}

        record = self._change(key_id, revoke_changes)
        if revoked_here == [True]:  # a second revoke, however close, is not a new action
            self._audit("key.revoke", record, actor, {})
        return record.public()

    def roll(self, key_id: str, grace_seconds: int = 0, actor: str | None = None) -> CreatedKey:
        """A new secret for the same key id; the old one keeps working for ``grace_seconds``."""
        if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, int):
            raise InvalidInput("grace_seconds", "expected a whole number of seconds")
        if not 0 <= grace_seconds <= 30 * 24 * 3600:
            raise InvalidInput("grace_seconds", "expected 0 to 2592000 (30 days)")
        fresh: dict[str, str] = {}

        def roll_changes(record: KeyRecord) -> dict[str, Any]:
            if record.revoked_at is not None:
                raise InvalidInput("key_id", "a revoked key cannot be rolled")
            token, secret, secret_hash = self._new_secret(record.kid, record.environment)
            fresh.update(token=token, secret=secret)
            grace = grace_seconds > 0
            return {
                "secret_hash": secret_hash,
                "last4": token[-4:],
                "previous_hash": record.secret_hash if grace else None,
                "previous_expires_at": (
                    self._now() + timedelta(seconds=grace_seconds) if grace else None
                ),
            }

        try:
            record = self._change(key_id, roll_changes)
        except BackendError as exc:
            if not fresh or exc.record is None:
                raise
            # The store already holds the new secret: losing its token would lock the key out.
            log.warning("keystile: rolled %s, but %s", exc.record.key_id, exc)
            record = exc.record
        self._know(record.kid, fresh["secret"])
        self._audit("key.roll", record, actor, {"grace_seconds": grace_seconds})
        return CreatedKey(fresh["token"], record.key_id, fresh["secret"], record.public())

    def delete(self, key_id: str, actor: str | None = None) -> None:
        """Gone for good (prefer :meth:`revoke`, which keeps the record for audit)."""
        record = self._record(key_id)
        if not self._store.delete(record.kid):
            raise NotFound(f"no API key {key_id!r}")
        self._audit("key.delete", record, actor, {"name": record.name})
        self._forget_kid(record.kid)
        self._publish(record.changed())

    def touch(self, key_id: str) -> None:
        """A new state stamp with no other change: caches of the key (and of its sessions)
        go back to the store on their next use."""
        self._change(key_id, lambda record: {"name": record.name})

    def _audit(
        self, action: str, record: KeyRecord, actor: str | None, details: dict[str, Any]
    ) -> None:
        self._audit_log.record(action, record.account_id, actor, record.key_id, details)

    def _change(self, key_id: str, compute: Any) -> KeyRecord:
        for _ in range(5):
            record = self._record(key_id)
            changes = compute(record)
            if not changes:
                return record
            updated = record.changed(**changes)
            if self._store.replace(updated, expected_version=record.version):
                self._publish(updated)
                return updated
        raise BackendError("the key kept changing concurrently; try again")

    # -- making a change known ---------------------------------------------------------------

    def _announce(self, kid: str) -> None:
        if self._backends.key_ids is not None:
            self._backends.key_ids.announce(kid)

    def _forget_kid(self, kid: str) -> None:
        if self._backends.key_ids is not None:
            self._backends.key_ids.forget(kid)

    def _publish(self, record: KeyRecord) -> None:
        """Make every process see ``record``'s new state on its next request."""
        backends = self._backends
        backends.local.drop_group(record.kid)
        if backends.redis is None:
            return
        try:
            backends.redis.announce_state(
                record.account_id, record.kid, record.version, push=backends.fast
            )
        except BackendError as exc:
            error = BackendError(
                "saved, but Redis could not be told: other processes may use the old state "
                f"for up to cache_ttl={self._settings.cache_ttl}s ({exc})"
            )
            error.record = record
            raise error from exc
