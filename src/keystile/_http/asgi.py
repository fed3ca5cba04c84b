"""ASGI, without a framework: a refusal as messages, an :class:`Exchange` that sees the
response start, and the management API as an ASGI app. Used by the Starlette middleware (and
so FastAPI's)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from keystile import AuthError, Keystile
from keystile._core.errors import render
from keystile._http.bodies import buffer_body, read_limited_async
from keystile._http.exchange import Exchange
from keystile._http.headers import encode_headers, scope_headers
from keystile._http.management import MAX_BODY, ApiRequest
from keystile._http.mounting import management_api

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: WebSocket close code for a refused handshake (RFC 6455: policy violation).
WS_POLICY_VIOLATION = 1008


def accept_of(scope: Scope) -> str | None:
    """The request's ``Accept`` (the first, as a server would read a repeat)."""
    for name, value in scope["headers"]:
        if name.lower() == b"accept":
            return str(value.decode("latin-1"))
    return None


def peer_of(scope: Scope) -> str | None:
    """The server's peer address (ASGI ``client``: host and port, or None)."""
    client = scope.get("client")
    return str(client[0]) if client else None


@functools.lru_cache(maxsize=256)
def _encoded(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(encode_headers(headers))  # a refusal's, rendered once: see render()


async def send_error(scope: Scope, send: Send, error: AuthError) -> None:
    rendered = render(error, accept_of(scope))
    headers = list(_encoded(rendered.headers))  # a fresh list: a middleware may add to it
    if scope["type"] == "websocket":
        if "websocket.http.response" in scope.get("extensions", {}):
            start = {"type": "websocket.http.response.start", "status": rendered.status}
            await send({**start, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": rendered.body})
        else:
            reason = f"{error.spec.code} {error.spec.type}"
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": reason})
        return
    await send({"type": "http.response.start", "status": rendered.status, "headers": headers})
    await send({"type": "http.response.body", "body": rendered.body})


class ASGIExchange(Exchange):
    """The exchange of an ASGI request: ``send`` is the app's, and adds the quota headers;
    ``receive`` is the app's too, and replays the body if keystile read it (:meth:`read_body`,
    for an ``Idempotency-Key``)."""

    __slots__ = ("receive", "server_send")

    def __init__(self, engine: Keystile, server_send: Send, receive: Receive) -> None:
        # Every request makes one: the fields set here rather than through super().__init__.
        self.engine = engine
        self.principal = None
        self.status = None
        self.failed = self.settled = False
        self.server_send = server_send
        self.receive = receive

    async def read_body(self) -> bytes | None:
        body, self.receive = await buffer_body(self.receive)
        return body

    def send(self, message: Message) -> Awaitable[None]:
        # The server's send itself, not a coroutine awaiting it: every response sends twice.
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]  # start(), inline: once per response
            extra = self.engine.response_headers(self.principal)
            if extra:
                message = {
                    **message,
                    "headers": [*message.get("headers", []), *encode_headers(extra)],
                }
        elif kind == "websocket.accept":
            self.status = 101
        return self.server_send(message)


def management_app(keystile: Keystile) -> ASGIApp:
    """The management HTTP API as an ASGI app (below its mount: ``root_path`` is cut off)."""
    api = management_api(keystile)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        root, path = scope.get("root_path", ""), scope["path"]
        if root and path.startswith(root):
            path = path[len(root) :]
        request = ApiRequest(
            method=scope["method"],
            path=path or "/",
            query_string=scope.get("query_string", b"").decode("latin-1"),
            headers=scope_headers(scope),
            body=await read_limited_async(receive, MAX_BODY),
            principal=scope.get("state", {}).get("principal"),
            client=peer_of(scope),
        )
        response = await asyncio.to_thread(api.handle, request)
        headers = encode_headers(response.headers)
        if not any(name == b"content-length" for name, _ in headers):
            headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    return app
