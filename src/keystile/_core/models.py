"""What a key is: the public :class:`ApiKey` and the store's :class:`KeyRecord` behind it."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from keystile._core.tokens import KEY_ID_PREFIX, mask

EMPTY_META: Mapping[str, Any] = MappingProxyType({})


def new_version() -> str:
    """A fresh state stamp: caches keyed on the old one stop matching."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What a key is, whether it is shown (:class:`ApiKey`) or stored (:class:`KeyRecord`)."""

    name: str
    account_id: str
    owner: str | None
    permissions: tuple[str, ...]
    environment: str
    accounts: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    enabled: bool


class ShownOnce:
    """Base of a result holding a secret in clear, to be shown once: its repr (set
    ``repr=False`` on the dataclass) leaves ``token`` and ``secret`` out, so logging the
    result never logs them."""

    __slots__ = ()

    def __repr__(self) -> str:
        names = (f.name for f in fields(self) if f.name not in _IN_CLEAR)  # type: ignore[arg-type]
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({shown})"


_IN_CLEAR = frozenset({"token", "secret"})

#: The facts an :class:`ApiKey` copies from its record as they are (``meta`` is frozen).
_SHOWN = (*(f.name for f in fields(KeyFacts)), "page_limit", "allowed_ips", "rate_limit")


@dataclass(frozen=True, slots=True)
class ApiKey(KeyFacts):
    """A key as shown to people and programs: never its secret nor its hash."""

    id: str
    preview: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    page_limit: int | None = None
    allowed_ips: tuple[str, ...] = ()
    rate_limit: str | None = None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active" if self.enabled else "disabled"

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "preview": self.preview,
            "name": self.name,
            "account_id": self.account_id,
            "owner": self.owner,
            "permissions": list(self.permissions),
            "environment": self.environment,
            "accounts": list(self.accounts),
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
            "enabled": self.enabled,
            "meta": dict(self.meta),
            "page_limit": self.page_limit,
            "allowed_ips": list(self.allowed_ips),
            "rate_limit": self.rate_limit,
        }


@dataclass(frozen=True, slots=True)
class KeyRecord(KeyFacts):
    """A stored key. ``version`` changes on every change of state, so caches can tell."""

    kid: str
    token_prefix: str
    last4: str
    meta: Mapping[str, Any]
    secret_hash: str
    previous_hash: str | None
    previous_expires_at: datetime | None
    version: str
    #: Optional monthly page cap for this key alone, inside its account's limit.
    page_limit: int | None = None
    #: The networks (CIDRs) it may be used from; empty: anywhere.
    allowed_ips: tuple[str, ...] = ()
    #: Requests it may send per second, minute or hour (``"100/s"``); None: no rate limit.
    rate_limit: str | None = None

    @property
    def key_id(self) -> str:
        return KEY_ID_PREFIX + self.kid

    def public(self) -> ApiKey:
        return ApiKey(
            id=self.key_id,
            preview=mask(self.token_prefix, self.environment, self.last4),
            meta=MappingProxyType(dict(self.meta)),
            **{name: getattr(self, name) for name in _SHOWN},
        )

    def changed(self, **changes: Any) -> KeyRecord:
        return replace(self, version=new_version(), **changes)

    def __repr__(self) -> str:
        return f"KeyRecord(key_id={self.key_id!r}, account_id={self.account_id!r})"
