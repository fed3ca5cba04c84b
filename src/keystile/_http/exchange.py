"""One request through keystile, whatever the framework: admitted, answered, settled.

An adapter makes an :class:`Exchange` for every request that is not exempt and drives it:
:attr:`~Exchange.principal` holds what the engine's ``authenticate`` (or
``authenticate_async``) returned for it; :meth:`~Exchange.start` records the status once
the app starts its response and returns the quota headers to add to it; :meth:`~Exchange.fail`
takes what the app raised; :meth:`~Exchange.settle` charges the request when it is over (a
streamed body: when the server closes it, so the body may still report its real cost).

The rules, once for every adapter:

* the response's status settles the request (the core decides which statuses count: a 5xx
  is refunded);
* anything the app raises is refunded, keystile's own refusals included (an AuthError from
  ``requires()`` or ``cost()``: nothing was served, nothing is billed), and such a refusal is
  rendered while the response can still be replaced; after it started it is raised on;
* a body that fails while it is sent is refunded;
* a request is settled once, however many of its hooks run.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Iterable,
    Iterator,
)
from typing import TypeVar

from keystile import AuthError, Keystile, Principal
from keystile._runtime.awaitables import DONE

QuotaHeaders = list[tuple[str, str]]
#: A piece of a response body, as the framework streams it (bytes; str for Flask).
Chunk = TypeVar("Chunk")


class Exchange:
    """One admitted request, from its admission to its settlement."""

    __slots__ = ("engine", "failed", "principal", "settled", "status")

    def __init__(self, engine: Keystile) -> None:
        self.engine = engine
        self.principal: Principal | None = None
        self.status: int | None = None
        self.failed = False
        self.settled = False

    def start(self, status: int | None) -> QuotaHeaders:
        """The response starts with ``status``: the quota headers it carries."""
        self.status = status
        return self.engine.response_headers(self.principal)

    @property
    def started(self) -> bool:
        return self.status is not None

    def fail(self, exc: BaseException) -> AuthError | None:
        """The app raised ``exc``: refunded. The refusal to render when it is keystile's own
        and the response can still be replaced; None when ``exc`` is to be raised on."""
        self.refund()
        return self._refusal(exc)

    async def fail_async(self, exc: BaseException) -> AuthError | None:
        await self.refund_async()
        return self._refusal(exc)

    def _refusal(self, exc: BaseException) -> AuthError | None:
        return exc if isinstance(exc, AuthError) and self.status is None else None

    def refund(self) -> None:
        """Nothing is billed (an exception, or keystile refused the request itself)."""
        self.failed = True
        self.settle()

    def refund_async(self) -> Awaitable[None]:
        self.failed = True
        return self.settle_async()

    def watch(self, body: Iterable[Chunk]) -> Iterator[Chunk]:
        """``body`` as it is sent: should it fail on the way, the request is refunded then
        and there (a server may never close a body that failed: Django's ASGI handler)."""
        try:
            yield from body
        except BaseException:
            self.refund()
            raise

    async def watch_async(self, body: AsyncIterable[Chunk]) -> AsyncIterator[Chunk]:
        try:
            async for chunk in body:
                yield chunk
        except BaseException:
            await self.refund_async()
            raise

    def settle(self) -> None:
        """Blocking: charge the request at its status (refunded if it failed), once."""
        if not self.settled:
            self.settled = True
            self.engine.settle(self.principal, None if self.failed else self.status)

    def settle_async(self) -> Awaitable[None]:
        # The engine's awaitable itself, not a coroutine awaiting it: every request runs this.
        if self.settled:
            return DONE
        self.settled = True
        return self.engine.settle_async(self.principal, None if self.failed else self.status)


class SettledOnClose:
    """A response body (an iterable of bytes) whose request is settled when the server
    closes it: refunded if the body failed while it was sent."""

    __slots__ = ("_body", "_exchange")

    def __init__(self, body: Iterable[bytes], exchange: Exchange) -> None:
        self._body = body
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        return self._exchange.watch(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        except BaseException:
            self._exchange.refund()
            raise
        self._exchange.settle()
