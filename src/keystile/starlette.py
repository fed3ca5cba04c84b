"""Starlette (and any ASGI app): :class:`KeystileMiddleware` and :func:`requires`.

Pure ASGI. Lifespan and exempt paths pass straight through; HTTP requests and WebSocket
handshakes are authenticated, and the principal lands in ``scope["state"]["principal"]``,
which Starlette shows as ``request.state.principal``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from keystile._core.credentials import asgi_headers
from keystile._core.errors import MISSING_API_KEY, AuthError, render
from keystile._core.metering import IDEMPOTENT_BODY_LIMIT, check_route_cost
from keystile._core.principal import Principal, check_permissions
from keystile._runtime.engine import Keystile, engine_from

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Any])

#: WebSocket close code for a refused handshake (RFC 6455: policy violation).
WS_POLICY_VIOLATION = 1008


def scope_headers(scope: Scope) -> list[tuple[str, str]]:
    return asgi_headers(scope["headers"])


async def send_error(scope: Scope, send: Send, error: AuthError) -> None:
    rendered = render(error)
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in rendered.headers]
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


class KeystileMiddleware:
    """``app.add_middleware(KeystileMiddleware, settings={...})`` or ``keystile=Keystile(...)``."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Mapping[str, Any] | None = None,
        keystile: Keystile | None = None,
    ) -> None:
        self.app = app
        self.keystile = engine_from(settings, keystile)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                send = self._lifespan_send(send)
            await self.app(scope, receive, send)
            return
        engine = self.keystile
        if engine.is_exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = asgi_headers(scope["headers"])
        # Read only if keystile asks (an Idempotency-Key on a verified key).
        body = _BufferedBody(receive) if kind == "http" else None
        try:
            principal = await engine.authenticate_async(
                headers,
                scope.get("method", "GET"),
                scope["path"],
                query=scope.get("query_string", b"").decode("latin-1"),
                body=b"" if body is None else body.read,
            )
        except AuthError as error:
            await send_error(scope, send, error)
            return
        # A fresh state dict: the server's may be shared lifespan state.
        scope["state"] = {**scope.get("state", {}), "principal": principal, "keystile": engine}
        status: int | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = engine.quota_headers(principal)
                if extra:
                    encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra]
                    message = {**message, "headers": [*message.get("headers", []), *encoded]}
            elif message["type"] == "websocket.accept":
                status = 101
            await send(message)

        try:
            await self.app(scope, receive if body is None else body.receive, send_wrapper)
        except AuthError as error:
            # Raised by requires() or a FastAPI dependency: rendered here, from the one table.
            # Refused by keystile itself: nothing was served, nothing is billed.
            await engine.settle_async(principal, None)
            if status is not None:
                raise
            await send_error(scope, send, error)
            return
        except BaseException:
            await engine.settle_async(principal, None)  # unhandled: refunded
            raise
        await engine.settle_async(principal, status)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.keystile.shutdown_async()  # before the server is told it may exit
            await send(message)

        return lifespan_send


class _BufferedBody:
    """The body, read only if keystile asks (an Idempotency-Key on a verified key); the app's
    ``receive`` then replays what was read."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive

    async def read(self) -> bytes | None:
        body, self.receive = await _buffer_body(self.receive)
        return body


async def _buffer_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """Read the body (up to the limit) so an Idempotency-Key can be told from a reuse, and
    return a ``receive`` that hands the app the very same messages, then the live ones."""
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


def principal_of(request: Any) -> Principal:
    """The principal the middleware put on a Starlette request (or raises AUTH_001)."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise AuthError(MISSING_API_KEY)
    return principal


def _find_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from starlette.requests import HTTPConnection

    for value in (*args, *kwargs.values()):
        if isinstance(value, HTTPConnection):
            return value
    raise TypeError("requires() needs an endpoint that receives the request")


def _wrap_endpoint(
    check: Callable[[Any], None], check_async: Callable[[Any], Awaitable[None]]
) -> Callable[[F], F]:
    def decorate(endpoint: F) -> F:
        if inspect.iscoroutinefunction(endpoint):

            @functools.wraps(endpoint)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                await check_async(_find_request(args, kwargs))
                return await endpoint(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(endpoint)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            check(_find_request(args, kwargs))
            return endpoint(*args, **kwargs)

        return sync_wrapper  # type: ignore[return-value]

    return decorate


def requires(*permissions: str) -> Callable[[F], F]:
    """Endpoint decorator: every permission must be granted (``*`` wildcards in grants)."""

    def check(request: Any) -> None:
        check_permissions(principal_of(request), permissions)

    async def check_async(request: Any) -> None:
        check(request)

    return _wrap_endpoint(check, check_async)


def engine_of(request: Any) -> Keystile:
    engine = getattr(request.state, "keystile", None)
    if not isinstance(engine, Keystile):
        raise RuntimeError("cost() needs KeystileMiddleware in front of the endpoint")
    return engine


def cost(pages: int) -> Callable[[F], F]:
    """Endpoint decorator: this route costs ``pages`` (reserved before it runs; 429 if over).

    The handler may still report the real cost with ``request.state.principal.charge(n)``.
    """
    check_route_cost(pages)

    def check(request: Any) -> None:
        principal = principal_of(request)
        engine_of(request).reserve(principal, pages)

    async def check_async(request: Any) -> None:
        principal = principal_of(request)
        await engine_of(request).reserve_async(principal, pages)

    return _wrap_endpoint(check, check_async)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks) if size <= limit else b" " * (limit + 1)


def management_app(keystile: Keystile) -> ASGIApp:
    """The management HTTP API as an ASGI app; prefer :func:`management_mount`."""
    from keystile._http.management import MAX_BODY, ApiRequest, ManagementAPI

    api = ManagementAPI(
        keys=keystile.keys, sessions=keystile.sessions, quotas=keystile.quotas, audit=keystile.audit
    )

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
            body=await _read_body(receive, MAX_BODY),
            principal=scope.get("state", {}).get("principal"),
            client=(scope.get("client") or (None,))[0],
        )
        response = await asyncio.to_thread(api.handle, request)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if not any(name == b"content-length" for name, _ in headers):
            headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    return app


def management_mount(path: str, keystile: Keystile) -> Any:
    """``Mount(path, ...)`` serving the management API: ``routes=[management_mount("/v1", ks)]``.

    Its login and OpenAPI document need no key; its requests cost no pages.
    """
    from starlette.routing import Mount

    from keystile._http.management import PUBLIC_PATHS, ROUTE

    keystile.mount_management(path, public_paths=PUBLIC_PATHS, route=ROUTE)
    mount = Mount(path, app=management_app(keystile))  # type: ignore[arg-type]
    # Starlette's "{path:path}" is ".*" without DOTALL: a %0A in an id would miss the mount
    # and get a text 404 instead of the API's JSON one.
    mount.path_regex = re.compile(mount.path_regex.pattern, re.DOTALL)
    return mount
