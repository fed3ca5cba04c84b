"""ASGI's header pairs, decoded only when something reads them.

A request's credential is read straight from the bytes
(:meth:`~keystile._core.credentialreader.CredentialReader.read_raw`); most requests never
look at another header, and decoding them all costs a known key's request a tenth of its
time. What does read them (a ``page_cost`` callable, ``trusted_proxies``, an
Idempotency-Key) sees ``(lowercase name, value)`` pairs, as from any adapter.
"""

from __future__ import annotations

from collections.abc import Sequence

from keystile._core.credentials import asgi_headers
from keystile._core.lazyheaders import LazyHeaders


class RawHeaders(LazyHeaders):
    """ASGI's ``scope["headers"]`` (``raw``), a sequence of ``(str, str)`` when read."""

    __slots__ = ("raw",)

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        self._decoded = None

    def _convert(self) -> list[tuple[str, str]]:
        return asgi_headers(self.raw)

    def __len__(self) -> int:
        return len(self.raw)
