"""An awaitable that is already done: what a request-path ``*_async`` method returns when it
has nothing to wait for, rather than a coroutine that every request would make and run."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any


class _Done:
    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


DONE = _Done()
