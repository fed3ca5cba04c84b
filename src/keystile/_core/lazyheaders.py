"""Request headers that an adapter hands over unconverted: ``(lowercase name, value)`` pairs
made on first read. A known key's request reads only its credential's headers; converting
them all is left to what reads them (a ``page_cost`` callable, ``trusted_proxies``, an
Idempotency-Key)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload


class LazyHeaders(Sequence[tuple[str, str]]):
    """A sequence of ``(str, str)``, converted by :meth:`_convert` when first read."""

    __slots__ = ("_decoded",)

    def __init__(self) -> None:
        self._decoded: list[tuple[str, str]] | None = None

    def _convert(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def _pairs(self) -> list[tuple[str, str]]:
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = self._convert()
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
        return len(self._pairs())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} headers)"  # values may hold credentials
