"""ASGI's header pairs, decoded only when something reads them.

A request's credential is read straight from the bytes
(:meth:`~keystile._core.credentialreader.CredentialReader.read_raw`); most requests never
look at another header, and decoding them all costs a known key's request a tenth of its
time. What does read them (a ``page_cost`` callable, ``trusted_proxies``, an
Idempotency-Key) sees ``(lowercase name, value)`` pairs, as from any adapter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

from keystile._core.credentials import asgi_headers


class RawHeaders(Sequence[tuple[str, str]]):
    """ASGI's ``scope["headers"]`` (``raw``), a sequence of ``(str, str)`` when read."""

    __slots__ = ("_decoded", "raw")

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        self._decoded: list[tuple[str, str]] | None = None

    def _pairs(self) -> list[tuple[str, str]]:
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = asgi_headers(self.raw)
        return decoded

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, str]]: ...
    def __getitem__(self, index: Any) -> Any:
        return self._pairs()[index]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs())

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"RawHeaders({len(self.raw)} headers)"  # values may hold credentials
