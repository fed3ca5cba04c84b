"""The authenticated caller: an immutable :class:`Principal` and its permission checks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keystile._core.metering import Meter, QuotaStatus


@lru_cache(maxsize=1024)
def _pattern(granted: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in granted.split("*")))


def grants(granted: str, wanted: str) -> bool:
    """``granted`` may use ``*`` as a wildcard: ``*``, ``read*``, ``apikeys:*``."""
    if "*" not in granted:
        return granted == wanted
    return _pattern(granted).fullmatch(wanted) is not None


def missing_permissions(held: Iterable[str], wanted: Iterable[str]) -> list[str]:
    held = tuple(held)
    return [w for w in wanted if not any(grants(h, w) for h in held)]


def check_permissions(principal: Principal, permissions: Iterable[str]) -> None:
    """Raise AUTH_004 naming what is missing; every adapter's ``requires`` calls this."""
    from keystile._core.errors import INSUFFICIENT_PERMISSIONS, AuthError

    needed = tuple(permissions)
    missing = missing_permissions(principal.permissions, needed)
    if missing:
        raise AuthError(
            INSUFFICIENT_PERMISSIONS,
            f"API key lacks the permission(s): {', '.join(missing)}.",
            scope=needed,
        )


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    account_id: str
    name: str
    owner: str | None
    environment: str
    permissions: frozenset[str]
    auth_method: str
    expires_at: datetime | None = None
    key_account_id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    meter: Meter | None = field(default=None, compare=False)
    #: Set when the request came with a session token (``auth_method == "session"``).
    session_id: str | None = None
    #: Set when the request came with a rolled key's previous secret: when it stops working.
    previous_secret_expires_at: datetime | None = None

    @property
    def used_previous_secret(self) -> bool:
        """The credential was a rolled key's old secret, still in its grace period: the
        caller should switch to the new one (the response says so too: ``Deprecation``)."""
        return self.previous_secret_expires_at is not None

    def has_permission(self, permission: str) -> bool:
        return any(grants(held, permission) for held in self.permissions)

    def has_permissions(self, *permissions: str) -> bool:
        return not missing_permissions(self.permissions, permissions)

    @property
    def quota(self) -> QuotaStatus | None:
        return self.meter.status if self.meter else None

    def charge(self, pages: int) -> None:
        """Report the real cost of this request; keystile settles it after the response."""
        if self.meter is None:
            raise RuntimeError("this principal is not metered")
        self.meter.charge(pages)

    def __repr__(self) -> str:
        return (
            f"Principal(key_id={self.key_id!r}, account_id={self.account_id!r}, "
            f"environment={self.environment!r}, auth_method={self.auth_method!r})"
        )


class Unfrozen:
    """A :class:`Principal` while the request path builds it: the same slots, set by plain
    assignment (a frozen dataclass sets each through ``object.__setattr__``, three times
    slower), then given its class, ``p.__class__ = Principal``, which the same layout allows."""

    __slots__ = Principal.__slots__
