"""What a key's fields may hold: each check names the field it refuses (the CLI and the
management API show that name)."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from keystile._core.errors import InvalidInput

_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_PERMISSION = re.compile(r"[A-Za-z0-9_.:*/-]{1,100}")
MAX_META_BYTES = 4096


def check_account(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _ACCOUNT.fullmatch(value):
        raise InvalidInput(field, "expected 1-128 characters of letters, digits and _.:@-")
    return value


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidInput("name", "expected a non-empty string of at most 200 characters")
    if not value.isprintable():
        raise InvalidInput("name", "must not contain control characters")
    return value.strip()


def check_permissions(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidInput("permissions", "expected a list of permission names")
    items = list(value)
    if len(items) > 200:
        raise InvalidInput("permissions", "at most 200 permissions")
    for item in items:
        if not isinstance(item, str) or not _PERMISSION.fullmatch(item):
            raise InvalidInput("permissions", f"invalid permission {item!r}")
    return tuple(dict.fromkeys(items))


def check_expiry(value: Any, now: datetime, *, future: bool) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput("expires_at", "expected a timezone-aware datetime or None")
    try:
        utc: datetime = value.astimezone(timezone.utc)  # 9999-12-31T23:59-23:59 is not a date
        utc.timestamp()
    except (OverflowError, ValueError):
        raise InvalidInput("expires_at", "out of range") from None
    if future and utc <= now:
        raise InvalidInput("expires_at", "must be in the future")
    return utc


def check_meta(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("meta", "expected a JSON object")
    try:
        encoded = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidInput("meta", "must be JSON-serialisable") from None
    if len(encoded.encode()) > MAX_META_BYTES:
        raise InvalidInput("meta", f"at most {MAX_META_BYTES} bytes of JSON")
    loaded: dict[str, Any] = json.loads(encoded)
    return loaded


def check_page_limit(value: Any, field: str = "page_limit") -> int | None:
    """A number of pages a month, or None for unlimited (a key's or an account's)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(field, "expected a whole number of pages >= 0, or None for unlimited")
    return value


#: At most this many networks per key (a list that long is a sign of a design gone wrong).
MAX_ALLOWED_IPS = 100


def check_networks(field: str, value: Any) -> tuple[str, ...]:
    """CIDRs (or single addresses), IPv4 and IPv6, in their normal form: ``10.1.2.3/8`` is
    ``10.0.0.0/8``, ``2001:DB8::1`` is ``2001:db8::1/128``. Empty: no restriction."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidInput(field, "expected a list of CIDRs such as 203.0.113.0/24")
    items = list(value)
    if len(items) > MAX_ALLOWED_IPS:
        raise InvalidInput(field, f"at most {MAX_ALLOWED_IPS} networks")
    networks = []
    for item in items:
        try:
            if not isinstance(item, str) or len(item) > 64:
                raise ValueError
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            shown = repr(item)[:70]
            raise InvalidInput(field, f"not an IP address or CIDR: {shown}") from None
    return tuple(dict.fromkeys(networks))
