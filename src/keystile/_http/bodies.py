"""Request bodies, read only as far as keystile needs them, once for every adapter.

Two readers: the body of a request with an ``Idempotency-Key`` (compared with the key's first
use, so only a body of known length up to :data:`IDEMPOTENT_BODY_LIMIT`, then handed back to
the app), and the management API's body (at most ``limit`` bytes; more reads as oversized,
which the API answers with a 422, without reading the rest).
"""

from __future__ import annotations

import collections
import io
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from keystile._core.metering import IDEMPOTENT_BODY_LIMIT

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]

__all__ = [
    "IDEMPOTENT_BODY_LIMIT",
    "buffer_body",
    "comparable_length",
    "oversized",
    "read_environ_body",
    "read_limited",
    "read_limited_async",
]


# -- for an Idempotency-Key ------------------------------------------------------------------


def comparable_length(meta: Mapping[str, Any]) -> int | None:
    """The body's declared length when it may be read to compare (a WSGI environ or Django's
    ``request.META``); None when it is chunked, its length is not a count, or too large."""
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    try:
        length = int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length > IDEMPOTENT_BODY_LIMIT or length < 0:
        return None
    return length


def read_environ_body(environ: dict[str, Any]) -> bytes | None:
    """A WSGI request's body, put back in the environ for the app to read; None when it
    cannot be compared (see :func:`comparable_length`)."""
    length = comparable_length(environ)
    if length is None:
        return None
    if length == 0:
        return b""
    body: bytes = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


async def buffer_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """Read the body (up to the limit), and return a ``receive`` that hands the app the very
    same messages, then the live ones."""
    buffered: collections.deque[Message] = collections.deque()
    size = 0
    complete = False
    while size <= IDEMPOTENT_BODY_LIMIT:
        message = await receive()
        buffered.append(message)
        if message["type"] != "http.request":
            break  # a disconnect: the app sees it too
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            complete = size <= IDEMPOTENT_BODY_LIMIT
            break
    body = b"".join(m.get("body", b"") for m in buffered) if complete else None

    async def replay() -> Message:
        return buffered.popleft() if buffered else await receive()

    return body, replay


# -- for the management API ------------------------------------------------------------------


def oversized(limit: int) -> bytes:
    """What the API is handed for a body over ``limit``: it answers 422 ``body``."""
    return b" " * (limit + 1)


class _Bounded:
    __slots__ = ("chunks", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= self.limit:
            self.chunks.append(chunk)

    @property
    def over(self) -> bool:
        return self.size > self.limit

    def value(self) -> bytes:
        return oversized(self.limit) if self.over else b"".join(self.chunks)


def read_limited(read: Callable[[int], bytes], declared: int | None, limit: int) -> bytes:
    """At most ``limit`` bytes from ``read(n)``; a declared length over it is not read."""
    if declared is not None and declared > limit:
        return oversized(limit)
    body = _Bounded(limit)
    while not body.over:
        chunk = read(limit + 1 - body.size)
        if not chunk:
            break
        body.add(chunk)
    return body.value()


async def read_limited_async(receive: Receive, limit: int) -> bytes:
    """The ASGI form: the rest of an oversized body is drained, not kept."""
    body = _Bounded(limit)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body.add(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return body.value()
