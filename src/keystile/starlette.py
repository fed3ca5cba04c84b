"""Starlette (and any ASGI app): :class:`KeystileMiddleware` and :func:`requires`.

Pure ASGI. Lifespan and exempt paths pass straight through; HTTP requests and WebSocket
handshakes are authenticated, and the principal lands in ``scope["state"]["principal"]``,
which Starlette shows as ``request.state.principal``. What happens to the request (its
settlement, a refusal raised inside the app) is :mod:`keystile._http.exchange`'s.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from keystile import AuthError, Keystile
from keystile._core.credentials import asgi_headers
from keystile._core.principal import check_permissions as check_permissions
from keystile._http import guards
from keystile._http.asgi import WS_POLICY_VIOLATION as WS_POLICY_VIOLATION
from keystile._http.asgi import ASGIApp, ASGIExchange, Message, Receive, Scope, Send
from keystile._http.asgi import management_app as management_app
from keystile._http.asgi import send_error as send_error
from keystile._http.guards import engine_of as engine_of
from keystile._http.guards import principal_of as principal_of
from keystile._http.headers import scope_headers as scope_headers
from keystile._http.mounting import WrapsApp, mount_management


class KeystileMiddleware(WrapsApp[ASGIApp]):
    """``app.add_middleware(KeystileMiddleware, settings={...})`` or ``keystile=Keystile(...)``."""

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
        exchange = ASGIExchange(engine, send, receive)
        try:
            principal = exchange.principal = await engine.authenticate_async(
                asgi_headers(scope["headers"]),
                scope.get("method", "GET"),
                scope["path"],
                query=scope.get("query_string", b"").decode("latin-1"),
                body=exchange.read_body if kind == "http" else b"",
                peer=client[0] if (client := scope.get("client")) else None,
            )
        except AuthError as error:
            await send_error(scope, send, error)
            return
        # A fresh state dict: the server's may be shared lifespan state.
        scope["state"] = {**scope.get("state", {}), "principal": principal, "keystile": engine}
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BaseException as exc:
            refusal = await exchange.fail_async(exc)  # raised by requires() or a dependency
            if refusal is None:
                raise
            await send_error(scope, send, refusal)
            return
        await exchange.settle_async()

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.keystile.shutdown_async()  # before the server is told it may exit
            await send(message)

        return lifespan_send


def _find_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from starlette.requests import HTTPConnection

    for value in (*args, *kwargs.values()):
        if isinstance(value, HTTPConnection):
            return value
    raise TypeError("requires() needs an endpoint that receives the request")


requires, cost = guards.decorators(functools.partial(guards.guarded, find_request=_find_request))


def management_mount(path: str, keystile: Keystile) -> Any:
    """``Mount(path, ...)`` serving the management API: ``routes=[management_mount("/v1", ks)]``.

    Its login and OpenAPI document need no key; its requests cost no pages."""
    from starlette.routing import Mount

    mount_management(keystile, path)
    mount = Mount(path, app=management_app(keystile))  # type: ignore[arg-type]
    # Starlette's "{path:path}" is ".*" without DOTALL: a %0A in an id would miss the mount
    # and get a text 404 instead of the API's JSON one.
    mount.path_regex = re.compile(mount.path_regex.pattern, re.DOTALL)
    return mount
