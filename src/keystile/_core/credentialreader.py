"""A request's credential and its digest, remembered for the keys this process admits.

Reading a credential (the header checks, the token's shape and checksum) and its keyed
digest cost about 4 µs, a fifth of a known key's whole request without Redis. Both depend on
nothing but the credential headers' values and this engine's settings and secret, so what a
credential that named a cached key gave is remembered, found by a keyed BLAKE2b digest of
those headers (as the in-process cache, it holds no secret: the remembered credential has
none, and a request that must verify it again reads it from its headers). Only credentials
of keys admitted here are remembered (a flood of unknown tokens cannot push them out), at
most as many as the in-process cache holds. No I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from keystile._core.credentials import (
    SCANNED_HEADERS,
    Credentials,
    asgi_headers,
    credentials_from,
    scan_credentials,
)
from keystile._core.environheaders import EnvironHeaders
from keystile._core.rawheaders import RawHeaders
from keystile._core.settings import Settings
from keystile._core.tokens import digester


class CredentialReader:
    """Thread-safe: a lookup and a store are single dictionary operations."""

    __slots__ = ("_digest", "_environments", "_known", "_named", "_prefix", "_size")

    def __init__(self, settings: Settings, key: bytes) -> None:
        """``key``: the engine's digest key (from ``secret``), for both digests."""
        self._prefix = settings.token_prefix
        self._environments = settings.environments
        self._digest = digester(key)
        key = key if len(key) <= 64 else hashlib.sha256(key).digest()
        self._named = hashlib.blake2b(key=key, digest_size=16)
        self._size = settings.local_cache_size
        self._known: dict[bytes, tuple[Credentials, str]] = {}

    def read(self, headers: Iterable[tuple[str, str]]) -> tuple[Credentials, str, bytes | None]:
        """``(credentials, digest, name)``: ``name`` is what :meth:`remember` takes, None
        when they were remembered (then the credentials hold no secret: :meth:`whole` gives
        it). Raises :class:`AuthError` as ``read_credentials`` does."""
        if headers.__class__ is RawHeaders:
            return self.read_raw(headers.raw)
        if headers.__class__ is EnvironHeaders:
            headers = headers.credential_pairs()
        found = scan_credentials(headers)
        named = self._named.copy()  # keyed once: a copy costs less than keying again
        for header, value in found.items():
            named.update(f"{header}:{len(value)}:{value}".encode())  # no two sets read alike
        name = named.digest()
        known = self._known.get(name)
        if known is not None:
            return known[0], known[1], None
        creds = credentials_from(found, self._prefix, self._environments)
        return creds, self._digest(creds.token), name

    def read_raw(self, raw: Sequence[tuple[bytes, bytes]]) -> tuple[Credentials, str, bytes | None]:
        """:meth:`read` from ASGI's byte pairs, decoding nothing for a remembered credential.

        The name digests the headers' bytes as they came (:meth:`read` digests them trimmed),
        in the same form: the same bytes make the same name, and the same name the same
        credential, whichever way it was read."""
        named = self._named.copy()
        for header, value in raw:
            header = header.lower()  # (ASGI servers send them lowercase; not all do)
            if header in _RAW_SCANNED:
                named.update(b"%b:%d:%b" % (header, len(value), value))
        name = named.digest()
        known = self._known.get(name)
        if known is not None:
            return known[0], known[1], None
        creds = credentials_from(
            scan_credentials(asgi_headers(raw)), self._prefix, self._environments
        )
        return creds, self._digest(creds.token), name

    def whole(self, creds: Credentials, headers: Iterable[tuple[str, str]]) -> Credentials:
        """``creds`` with their secret: read again from ``headers`` when remembered (for a
        request that must verify them: its key left the cache, or its stamp was stale)."""
        if creds.token.secret:
            return creds
        return credentials_from(scan_credentials(headers), self._prefix, self._environments)

    def remember(self, name: bytes, creds: Credentials, digest: str) -> None:
        """The credential named a key this process admitted: found by :meth:`read` from now on."""
        known = self._known
        if len(known) >= self._size:
            if not self._size:
                return
            known.clear()  # a bound, like the charge cache's; the busy keys come back at once
        known[name] = (creds._replace(token=creds.token._replace(secret="")), digest)


_RAW_SCANNED = frozenset(name.encode() for name in SCANNED_HEADERS)
