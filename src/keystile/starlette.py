"""Starlette (and any ASGI app): :class:`KeystileMiddleware` and :func:`requires`.

Pure ASGI. Lifespan and exempt paths pass through; HTTP requests and WebSocket handshakes
are authenticated, the principal in ``scope["state"]["principal"]`` (``request.state``). The
request's settlement and refusals raised in the app are :mod:`keystile._http.exchange`'s.
``request.user`` is a :class:`KeyUser`, ``request.auth`` the key's permissions (for
``starlette.authentication.requires``), unless a middleware in front authenticated a user.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser
from starlette.requests import HTTPConnection

from keystile import AuthError, Keystile, Principal
from keystile._core.principal import check_permissions as check_permissions
from keystile._core.rawheaders import RawHeaders
from keystile._http import guards
from keystile._http.asgi import WS_POLICY_VIOLATION as WS_POLICY_VIOLATION
from keystile._http.asgi import ASGIApp, ASGIExchange, Message, Receive, Scope, Send
from keystile._http.asgi import management_app as management_app
from keystile._http.asgi import send_error as send_error
from keystile._http.asgiauth import ByPermissions, Scopes
from keystile._http.guards import engine_of as engine_of
from keystile._http.guards import principal_of as principal_of
from keystile._http.headers import scope_headers as scope_headers
from keystile._http.mounting import WrapsApp, mount_management


class KeyUser(BaseUser):
    """``request.user`` for a key (or a session): ``identity`` is the key id, ``display_name``
    the key's name (its id when unnamed), ``principal`` the request's."""

    __slots__ = ("principal",)
    is_authenticated = True

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    def __repr__(self) -> str:
        return f"KeyUser({self.principal.key_id!r})"

    @property
    def display_name(self) -> str:
        return self.principal.name or self.principal.key_id

    @property
    def identity(self) -> str:
        return self.principal.key_id


class KeyCredentials(AuthCredentials):
    """``request.auth``: the key's permissions; read-only, one serves many requests."""

    def __init__(self, permissions: Iterable[str] = ()) -> None:
        object.__setattr__(self, "scopes", Scopes(sorted(permissions)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("request.auth is shared between requests: read-only")


_CREDENTIALS = ByPermissions(KeyCredentials)
_NOBODY = (UnauthenticatedUser(), KeyCredentials())


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
            if "user" not in scope:
                scope["user"], scope["auth"] = _NOBODY
            try:
                await self.app(scope, receive, send)
            except AuthError as error:  # the app asked for a principal where no key is checked
                await send_error(scope, send, error)
            return
        exchange = ASGIExchange(engine, send, receive)
        try:
            principal = exchange.principal = await engine.authenticate_async(
                RawHeaders(scope["headers"]),
                scope.get("method", "GET"),
                scope["path"],
                query=query.decode("latin-1") if (query := scope.get("query_string")) else "",
                body=exchange.read_body if kind == "http" else b"",
                peer=client[0] if (client := scope.get("client")) else None,
            )
        except AuthError as error:
            await send_error(scope, send, error)
            return
        # A fresh state dict: the server's may be shared lifespan state.
        scope["state"] = {**scope.get("state", {}), "principal": principal, "keystile": engine}
        # A user that a middleware in front authenticated stays; "nobody" gives way.
        if "user" not in scope or not getattr(scope["user"], "is_authenticated", True):
            scope["user"] = KeyUser(principal)
            scope["auth"] = _CREDENTIALS[principal.permissions]
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
