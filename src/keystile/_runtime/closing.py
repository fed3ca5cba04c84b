"""``with`` and ``async with`` blocks around an engine: it is closed on leaving the block."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TypeVar

Closed = TypeVar("Closed", bound="Closing")


class Closing:
    """``with Keystile() as ks:`` closes ``ks`` at the end of the block, even one left by an
    exception (which goes on up); ``async with`` does it without blocking the event loop."""

    #: Set by :meth:`close`: closing again, or ``aclose()`` after it, does nothing.
    _closed = False

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    def __enter__(self: Closed) -> Closed:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: Closed) -> Closed:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()  # this event loop's connections, which only it can close
        await asyncio.to_thread(self.close)  # then the store and the rest
