"""What a verified credential proves, as cached here and in Redis: no secret, token or hash."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from keystile._core.models import KeyRecord
from keystile._core.networks import Network, networks_of
from keystile._core.ratelimits import Rate, parse_rate

#: Stored instead of a snapshot when a credential is known to be wrong.
NEGATIVE = "-"


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


#: What a snapshot copies from the key's record as it is.
_COPIED = (
    "kid",
    "account_id",
    "name",
    "owner",
    "environment",
    "permissions",
    "accounts",
    "enabled",
    "version",
    "page_limit",
    "allowed_ips",
    "rate_limit",
)


#: Snapshot fields added after 0.1.0 (see :meth:`Snapshot.dumps`).
_SINCE_0_1_0 = ("allowed_ips", "rate_limit")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a verified credential proves, as cached. No secret, token or hash in it."""

    kid: str
    account_id: str
    name: str
    owner: str | None
    environment: str
    permissions: tuple[str, ...]
    accounts: tuple[str, ...]
    meta: Mapping[str, Any]
    expires_at: float | None
    revoked: bool
    enabled: bool
    #: Set when the credential is a rolled key's previous secret: it works until then.
    valid_until: float | None
    version: str
    page_limit: int | None = None
    allowed_ips: tuple[str, ...] = ()
    rate_limit: str | None = None
    # Set for a login session: which, until when, and how long it may sit unused.
    session_id: str | None = None
    session_expires_at: float | None = None
    idle_timeout: float | None = None
    session_last_seen: float | None = None
    session_account_id: str | None = None  # the account the session acts for
    # Derived once per snapshot rather than on every request that uses it.
    grant_set: frozenset[str] = field(init=False, repr=False, compare=False)
    expires: datetime | None = field(init=False, repr=False, compare=False)
    grace_ends: datetime | None = field(init=False, repr=False, compare=False)
    networks: tuple[Network, ...] = field(init=False, repr=False, compare=False)
    rate: Rate | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grant_set", frozenset(self.permissions))
        object.__setattr__(self, "expires", _utc(self.expires_at))
        object.__setattr__(self, "grace_ends", _utc(self.valid_until))
        object.__setattr__(self, "networks", networks_of(self.allowed_ips))
        rate = None if self.rate_limit is None else parse_rate(self.rate_limit)
        object.__setattr__(self, "rate", rate)

    @classmethod
    def of(cls, record: KeyRecord, via_previous: bool) -> Snapshot:
        def epoch(value: datetime | None) -> float | None:
            return None if value is None else value.timestamp()

        return cls(
            meta=freeze(record.meta),
            expires_at=epoch(record.expires_at),
            revoked=record.revoked_at is not None,
            valid_until=epoch(record.previous_expires_at) if via_previous else None,
            **{name: getattr(record, name) for name in _COPIED},
        )

    def dumps(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        data["meta"] = thaw(self.meta)
        # Fields newer than 0.1.0 only when set: a 0.1.0 process sharing the Redis during a
        # rolling upgrade reads every other key's snapshot as before.
        for name in _SINCE_0_1_0:
            if not data[name]:
                del data[name]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes) -> Snapshot:
        data = json.loads(raw)
        data["permissions"] = tuple(data["permissions"])
        data["accounts"] = tuple(data["accounts"])
        data["allowed_ips"] = tuple(data.get("allowed_ips", ()))
        data["meta"] = freeze(data["meta"])
        return cls(**data)


def freeze(value: Any) -> Any:
    """A deeply read-only copy: cached metadata is shared by every request with the key."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value
