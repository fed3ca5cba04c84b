"""Token format: generation, parsing and the checksum that rejects garbage with no I/O.

A token is ``{prefix}_{environment}_{key id}_{secret}``, e.g.::

    sk_live_4xGq1LmN8pQr2sTu_<43 random base62 chars><6 char base62 CRC32>

* the key id (16 base62 chars, ~95 bits) is public: it finds the key in the store and is what
  ``x-api-key`` carries in the key + secret form (``x-api-key: key_4xGq1LmN8pQr2sTu``);
* the secret is 43 random base62 chars (>= 256 bits) plus a 6 char CRC32 of id and secret, as
  GitHub's tokens do, so a mistyped or random token fails before any lookup. The checksum sits
  inside the secret, so both credential forms carry it.

Secret scanners can match tokens with :data:`TOKEN_PATTERN` (prefix ``sk`` and the default
environments; see :func:`token_regex` for other settings).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Callable
from typing import Final, NamedTuple

ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KID_LENGTH: Final = 16
RANDOM_LENGTH: Final = 43
CHECKSUM_LENGTH: Final = 6
SECRET_LENGTH: Final = RANDOM_LENGTH + CHECKSUM_LENGTH
KEY_ID_PREFIX: Final = "key_"
#: The token "environment" of login sessions: ``sk_sess_<session id>_<secret>``.
SESSION_ENVIRONMENT: Final = "sess"


def token_regex(prefix: str = "sk", environments: tuple[str, ...] = ("live", "test")) -> str:
    envs = "|".join(re.escape(env) for env in environments)
    return (
        rf"\b{re.escape(prefix)}_(?:{envs})_[0-9A-Za-z]{{{KID_LENGTH}}}"
        rf"_[0-9A-Za-z]{{{SECRET_LENGTH}}}\b"
    )


TOKEN_PATTERN: Final = token_regex()


class ParsedToken(NamedTuple):
    """A syntactically valid credential. ``environment`` is None in the key + secret form.

    A named tuple, not a frozen dataclass: every request makes one, at a quarter of the cost.
    """

    kid: str
    secret: str
    environment: str | None

    @property
    def key_id(self) -> str:
        return KEY_ID_PREFIX + self.kid

    def __repr__(self) -> str:
        return f"ParsedToken(key_id={self.key_id!r}, environment={self.environment!r})"


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


# Every base62 digit pair: a checksum is three lookups instead of six divisions.
_PAIRS: Final = tuple(a + b for a in ALPHABET for b in ALPHABET)


def _checksum(kid: str, random_part: str) -> str:
    """Six base62 digits of the CRC32 (which is below 62**6)."""
    high, rest = divmod(zlib.crc32(f"{kid}{random_part}".encode()), 62**4)
    middle, low = divmod(rest, 62**2)
    return _PAIRS[high] + _PAIRS[middle] + _PAIRS[low]


def new_kid() -> str:
    return _random_base62(KID_LENGTH)


def new_secret(kid: str) -> str:
    random_part = _random_base62(RANDOM_LENGTH)
    return random_part + _checksum(kid, random_part)


def format_token(prefix: str, environment: str, kid: str, secret: str) -> str:
    return f"{prefix}_{environment}_{kid}_{secret}"


def _is_base62(text: str) -> bool:
    # ASCII letters and digits are exactly the base62 alphabet; both tests run in C.
    return text.isascii() and text.isalnum()


def check_pair(kid: str, secret: str) -> bool:
    """True when id and secret have the right shape and the checksum matches (no I/O)."""
    if len(kid) != KID_LENGTH or len(secret) != SECRET_LENGTH:
        return False
    if not (_is_base62(kid) and _is_base62(secret)):
        return False
    random_part, checksum = secret[:RANDOM_LENGTH], secret[RANDOM_LENGTH:]
    return hmac.compare_digest(_checksum(kid, random_part), checksum)


def parse_token(token: str, prefix: str, environments: tuple[str, ...]) -> ParsedToken | None:
    """A full token, or None when it is not one of ours (wrong shape, prefix or checksum)."""
    parts = token.split("_")
    if len(parts) != 4:
        return None
    token_prefix, environment, kid, secret = parts
    if token_prefix != prefix or environment not in environments:
        return None
    if not check_pair(kid, secret):
        return None
    return ParsedToken(kid, secret, environment)


def parse_key_id(key_id: str) -> str | None:
    """The kid inside a public key id ``key_<kid>``, or None."""
    if not key_id.startswith(KEY_ID_PREFIX):
        return None
    kid = key_id[len(KEY_ID_PREFIX) :]
    if len(kid) != KID_LENGTH or not _is_base62(kid):
        return None
    return kid


def parse_pair(key_id: str, secret: str) -> ParsedToken | None:
    kid = parse_key_id(key_id)
    if kid is None or not check_pair(kid, secret):
        return None
    return ParsedToken(kid, secret, None)


def digest(server_secret: bytes, credential: ParsedToken) -> str:
    """Keyed digest naming a credential in caches: both forms of one key share it (a token's
    environment is left out, but for a session's)."""
    return digester(server_secret)(credential)


def digester(server_secret: bytes) -> Callable[[ParsedToken], str]:
    """:func:`digest` with its key made once, for the request path."""
    # Keyed BLAKE2b is a MAC by design, and a third of HMAC-SHA256's cost on every request.
    key = server_secret if len(server_secret) <= 64 else hashlib.sha256(server_secret).digest()
    blake2b = hashlib.blake2b

    def digest_of(credential: ParsedToken) -> str:
        message = f"{credential.kid}:{credential.secret}"
        if credential.environment == SESSION_ENVIRONMENT:
            # A key's id and secret written as a session token must not name the key's
            # cache entries (nor have a refusal remembered under them).
            message = f"{SESSION_ENVIRONMENT}:{message}"
        return blake2b(message.encode(), key=key, digest_size=32).hexdigest()

    return digest_of


def mask(prefix: str, environment: str, last4: str) -> str:
    return f"{prefix}_{environment}_…{last4}"
