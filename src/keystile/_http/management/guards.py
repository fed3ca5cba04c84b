"""The management API's guards against privilege escalation.

A caller acts only on its (acting) account's keys, never grants a permission it does not
hold, never touches a key more powerful than itself, never makes a key that outlives its own
expiry, and only in its own environment. Another account's key answers 404, like a key that
does not exist, so ids don't leak.

"More powerful" (:func:`not_stronger`) is any of: another environment, a permission the
caller lacks, an extra account (``x-account-id``) outside the caller key's own account and
extra accounts, a looser per-key ``page_limit`` or ``rate_limit`` (none is the loosest), or
a wider ``allowed_ips`` (none is the widest). It bars PATCH (any field, disabling included), revoke
and roll. Roll, and a PATCH that sets ``enabled: true``, also need the key not to outlive the
caller: the first hands over a token, the second brings a key back to life. A new key gets no
extra accounts and the caller's ``page_limit``, as it gets the caller's expiry; it gets the
caller's ``allowed_ips`` and ``rate_limit`` unless it asks for narrower ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from keystile._core.errors import (
    INSUFFICIENT_PERMISSIONS,
    INVALID_API_KEY,
    MISSING_API_KEY,
    NOT_FOUND,
    AuthError,
    NotFound,
    RequestError,
)
from keystile._core.keyfields import check_networks
from keystile._core.models import ApiKey
from keystile._core.networks import networks_of
from keystile._core.principal import Principal, missing_permissions
from keystile._core.ratelimits import check_rate_limit, parse_rate
from keystile._http.management.messages import ApiRequest
from keystile._services.keys import KeyManager, check_permissions


def caller(request: ApiRequest, *permissions: str) -> Principal:
    """The authenticated principal, holding every one of ``permissions``."""
    principal = request.principal
    if principal is None:
        raise AuthError(MISSING_API_KEY)
    missing = missing_permissions(principal.permissions, permissions)
    if missing:
        raise AuthError(
            INSUFFICIENT_PERMISSIONS,
            f"API key lacks the permission(s): {', '.join(missing)}.",
        )
    return principal


def own_key(keys: KeyManager, caller: Principal, key_id: str) -> ApiKey:
    """The key, if the caller's acting account owns it; 404 otherwise (no id leaks)."""
    try:
        key = keys.get(key_id)
    except NotFound:
        raise RequestError(NOT_FOUND, "No such API key.") from None
    if key.account_id != caller.account_id:
        raise RequestError(NOT_FOUND, "No such API key.")
    return key


def caller_key(keys: KeyManager, caller: Principal) -> ApiKey:
    """The calling key as stored: its extra accounts and page limit are not on the
    principal. Gone since the middleware checked it (deleted just now): 401, as it would
    be on the next request."""
    try:
        return keys.get(caller.key_id)
    except NotFound:
        raise AuthError(INVALID_API_KEY) from None


def no_escalation(
    caller: Principal,
    permissions: Sequence[str] | None,
    expires_at: datetime | None,
    expires_given: bool,
) -> None:
    """Permissions the caller holds, and an expiry no later than its own (when one is set)."""
    if permissions is not None:
        permissions = check_permissions(permissions)  # 422 before any comparison
        beyond = missing_permissions(caller.permissions, permissions)
        if beyond:
            raise AuthError(
                INSUFFICIENT_PERMISSIONS,
                f"Cannot grant permission(s) the calling key lacks: {', '.join(beyond)}.",
            )
    if (
        expires_given
        and caller.expires_at is not None
        and (expires_at is None or expires_at > caller.expires_at)
    ):
        raise AuthError(
            INSUFFICIENT_PERMISSIONS,
            "Cannot set an expiry later than the calling key's own "
            f"({caller.expires_at.isoformat()}).",
        )


def not_stronger(
    keys: KeyManager, caller: Principal, key: ApiKey, *, rolling: bool = False
) -> None:
    """A caller changes only keys no more powerful than itself; a roll hands over the key,
    so it must not outlive the caller either."""
    if key.environment != caller.environment:
        raise AuthError(
            INSUFFICIENT_PERMISSIONS,
            f"A {caller.environment} key cannot change {key.environment} keys.",
        )
    if missing_permissions(caller.permissions, key.permissions):
        raise AuthError(
            INSUFFICIENT_PERMISSIONS, "Cannot change a key that holds permissions you lack."
        )
    own = caller_key(keys, caller)
    if not set(key.accounts) <= {own.account_id, *own.accounts}:
        raise AuthError(
            INSUFFICIENT_PERMISSIONS,
            "Cannot change a key that may act for an account the calling key may not.",
        )
    if own.page_limit is not None and (key.page_limit is None or key.page_limit > own.page_limit):
        raise AuthError(
            INSUFFICIENT_PERMISSIONS,
            "Cannot change a key whose page limit is higher than the calling key's (or unlimited).",
        )
    if not rate_within(key.rate_limit, own.rate_limit):
        raise AuthError(
            INSUFFICIENT_PERMISSIONS,
            "Cannot change a key whose rate limit is higher than the calling key's (or none).",
        )
    if not networks_within(key.allowed_ips, own.allowed_ips):
        raise AuthError(
            INSUFFICIENT_PERMISSIONS,
            "Cannot change a key usable from addresses the calling key is not.",
        )
    if rolling:
        not_outliving(caller, key.expires_at, "Cannot roll a key")


def networks_within(inner: Sequence[str], outer: Sequence[str]) -> bool:
    """Whether every network of ``inner`` lies in one of ``outer`` (none: anywhere)."""
    if not outer:
        return True
    wide = networks_of(outer)
    return bool(inner) and all(
        any(n.version == w.version and n.subnet_of(w) for w in wide)  # type: ignore[arg-type]
        for n in networks_of(inner)
    )


def rate_within(inner: str | None, outer: str | None) -> bool:
    """Whether a rate limit is no looser than another (none: the loosest)."""
    if outer is None:
        return True
    if inner is None:
        return False
    a, b = parse_rate(inner), parse_rate(outer)
    return a.count * b.period <= b.count * a.period


def rate_limit_for(own: ApiKey, asked: object) -> str | None:
    """A key's ``rate_limit`` as asked (422 if malformed), no looser than the caller's."""
    rate = check_rate_limit("rate_limit", asked)
    if not rate_within(rate, own.rate_limit):
        raise AuthError(
            INSUFFICIENT_PERMISSIONS,
            f"Cannot set a rate limit looser than the calling key's ({own.rate_limit}).",
        )
    return rate


def allowed_ips_for(own: ApiKey, asked: object) -> tuple[str, ...]:
    """A key's ``allowed_ips`` as asked (422 for a bad CIDR), inside the caller's own."""
    networks = check_networks("allowed_ips", asked)
    if not networks_within(networks, own.allowed_ips):
        raise AuthError(
            INSUFFICIENT_PERMISSIONS,
            "Cannot allow addresses the calling key may not be used from "
            f"({', '.join(own.allowed_ips)}).",
        )
    return networks


def not_outliving(caller: Principal, expires_at: datetime | None, action: str) -> None:
    if caller.expires_at is not None and (expires_at is None or expires_at > caller.expires_at):
        raise AuthError(INSUFFICIENT_PERMISSIONS, f"{action} that outlives the calling key.")
