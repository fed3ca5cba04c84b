"""Which credential a request carries, read from its headers with no I/O.

Adapters pass ``(lowercase name, value)`` pairs. Three forms are accepted:

* ``Authorization: Bearer <token>``                      -> auth_method ``bearer``
* ``x-api-key: <token>``                                 -> auth_method ``api_key``
* ``x-api-key: <key id>`` + ``x-api-secret: <secret>``   -> auth_method ``key_secret``
* a session token (``sk_sess_…``) from ``POST /auth/login``  -> auth_method ``session``

Anything ambiguous (a header twice, two different credentials, a secret without an id) is a
400, never a guess; garbage is a 401; nothing here can raise anything but :class:`AuthError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from keystile._core.errors import INVALID_API_KEY, MALFORMED_CREDENTIALS, MISSING_API_KEY, AuthError
from keystile._core.tokens import (
    KEY_ID_PREFIX,
    SESSION_ENVIRONMENT,
    ParsedToken,
    parse_pair,
    parse_token,
)

#: Longer values are refused before any parsing; real tokens are under 100 characters.
MAX_VALUE_LENGTH = 512
MAX_ACCOUNT_LENGTH = 128
#: The headers a credential is read from (adapters may need to treat them specially).
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "x-api-secret", "x-account-id"})
#: Not a credential, but noted on the same pass over the headers (it decides the request's path).
IDEMPOTENCY_HEADER = "idempotency-key"
#: What :func:`scan_credentials` looks at.
SCANNED_HEADERS = CREDENTIAL_HEADERS | {IDEMPOTENCY_HEADER}


class Credentials(NamedTuple):
    """What a request's headers claim (a named tuple: one per request, cheap to make)."""

    token: ParsedToken
    auth_method: str
    account_id: str | None
    #: Whether the request carries an Idempotency-Key header.
    idempotent: bool = False

    def __repr__(self) -> str:
        return f"Credentials({self.token!r}, {self.auth_method!r}, {self.account_id!r})"


def scan_credentials(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The credential headers (and Idempotency-Key's presence), each once, values trimmed;
    the empty ones left out."""
    found: dict[str, str] = {}
    blank = False
    for name, value in headers:
        if name not in SCANNED_HEADERS:
            continue
        if name == IDEMPOTENCY_HEADER:
            found[name] = "1"  # repeats are fine: the first one names the request
            continue
        # No token, key id, secret or account id holds a ",": a WSGI server joins a header
        # sent twice with one, so it means a repeat there, and the same on every adapter.
        if name in found or "," in value:
            raise AuthError(MALFORMED_CREDENTIALS, f"The {name} header was sent more than once.")
        value = found[name] = value.strip(" \t")
        blank = blank or not value
    # (Filtering a dict costs a tenth of a known key's request: only when there is a blank.)
    return {name: value for name, value in found.items() if value} if blank else found


def _clean(name: str, value: str) -> str:
    if len(value) > MAX_VALUE_LENGTH or not value.isascii() or not value.isprintable():
        raise AuthError(INVALID_API_KEY, f"The {name} header does not hold a valid credential.")
    return value


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(
            MALFORMED_CREDENTIALS, "The Authorization header must use the Bearer scheme."
        )
    token = token.strip(" ")
    if not token:
        raise AuthError(MALFORMED_CREDENTIALS, "The Bearer token is empty.")
    return token


def _account(headers: dict[str, str]) -> str | None:
    account = headers.get("x-account-id")
    if account is None:
        return None
    if len(account) > MAX_ACCOUNT_LENGTH or not account.isascii() or not account.isprintable():
        raise AuthError(MALFORMED_CREDENTIALS, "The x-account-id header is malformed.")
    return account


def read_credentials(
    headers: Iterable[tuple[str, str]],
    prefix: str,
    environments: tuple[str, ...],
) -> Credentials:
    return credentials_from(scan_credentials(headers), prefix, environments)


def credentials_from(
    found: dict[str, str], prefix: str, environments: tuple[str, ...]
) -> Credentials:
    """The credential the headers :func:`scan_credentials` found carry."""
    authorization = found.get("authorization")
    api_key = found.get("x-api-key")
    secret = found.get("x-api-secret")
    account = _account(found)

    if secret is not None:
        if api_key is None:
            raise AuthError(MALFORMED_CREDENTIALS, "x-api-secret needs x-api-key with the key id.")
        if authorization is not None:
            raise AuthError(MALFORMED_CREDENTIALS, "Send either a Bearer token or x-api-key.")
        if not api_key.startswith(KEY_ID_PREFIX):
            raise AuthError(
                MALFORMED_CREDENTIALS, "With x-api-secret, x-api-key must hold the key id (key_…)."
            )
        pair = parse_pair(_clean("x-api-key", api_key), _clean("x-api-secret", secret))
        if pair is None:
            raise AuthError(INVALID_API_KEY)
        return Credentials(pair, "key_secret", account, IDEMPOTENCY_HEADER in found)

    if authorization is not None:
        token = _bearer(_clean("authorization", authorization))
        if api_key is not None and api_key != token:
            raise AuthError(MALFORMED_CREDENTIALS, "Send either a Bearer token or x-api-key.")
        method = "bearer"
    elif api_key is not None:
        token = _clean("x-api-key", api_key)
        if token.startswith(KEY_ID_PREFIX):
            raise AuthError(MALFORMED_CREDENTIALS, "A key id in x-api-key needs x-api-secret.")
        method = "api_key"
    else:
        raise AuthError(MISSING_API_KEY)

    parsed = parse_token(token, prefix, (*environments, SESSION_ENVIRONMENT))
    if parsed is None:
        raise AuthError(INVALID_API_KEY)
    if parsed.environment == SESSION_ENVIRONMENT:
        method = "session"
    return Credentials(parsed, method, account, IDEMPOTENCY_HEADER in found)


def asgi_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """ASGI's byte pairs as (lowercase name, value); latin-1 decodes every byte, so no header
    value can fail here."""
    return [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]
