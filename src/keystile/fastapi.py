"""FastAPI dependencies: the principal, permission checks, and the security schemes in OpenAPI.

The middleware (:class:`keystile.starlette.KeystileMiddleware`) authenticates; these only read
its result, so a request costs the same whether or not a route asks for the principal::

    app.add_middleware(KeystileMiddleware, settings={...})

    @app.get("/jobs")
    def jobs(principal: Principal = Depends(require("readJobs"))): ...

    document(app)  # optional: 401/403/429, permissions and x-api-key + x-api-secret in the docs

A route taking ``request: Request`` and calling :func:`principal_of` skips FastAPI's solving.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.security import APIKeyHeader, HTTPBearer

from keystile import Principal
from keystile._core.principal import check_permissions
from keystile._http import guards, openapidoc
from keystile._http.guards import principal_of as principal_of
from keystile.starlette import KeystileMiddleware

__all__ = [
    "KeystileMiddleware",
    "Principal",
    "PrincipalDependency",
    "cost",
    "document",
    "document_key_pair",
    "get_principal",
    "principal_of",
    "require",
]


#: ``x-api-key`` in the OpenAPI document (:func:`document`, :func:`document_key_pair`): not a
#: dependency, which would cost every request another to solve.
api_key_scheme = APIKeyHeader(
    name="x-api-key",
    scheme_name="ApiKey",
    description="The full token, or the key id together with x-api-secret.",
    auto_error=False,
)
API_SECRET_SCHEME = openapidoc.API_SECRET_SCHEME
_COSTS: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()  # what document() looks for


class PrincipalDependency(HTTPBearer):
    """``Depends(get_principal)`` / ``Depends(require(...))``: the principal, once it holds
    every one of ``permissions``.

    It is also the document's BearerToken scheme, and has no sub-dependency: FastAPI would
    solve one on every request, at about half of what the middleware's warm path costs, so
    the ``x-api-key`` ways in are :func:`document`'s to add. ``async``: FastAPI runs a plain
    ``def`` dependency in a worker thread, which costs more than everything keystile does."""

    def __init__(self, permissions: tuple[str, ...] = ()) -> None:
        super().__init__(
            scheme_name="BearerToken", description="Authorization: Bearer <token>", auto_error=False
        )
        self.permissions = permissions

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        principal = principal_of(request)
        if self.permissions:
            check_permissions(principal, self.permissions)
        return principal


#: Dependency returning the authenticated principal.
get_principal = PrincipalDependency()


def require(*permissions: str) -> PrincipalDependency:
    """Dependency returning the principal once it holds every one of ``permissions``."""
    return PrincipalDependency(permissions)


def cost(pages: int) -> Callable[[Request], Awaitable[None]]:
    """Dependency: this route costs ``pages`` (reserved before the handler; 429 if over)."""
    guard = guards.cost_guard(pages)

    async def dependency(request: Request) -> None:
        await guard.check_async(request)

    _COSTS.add(dependency)
    return dependency


def document_key_pair(app: FastAPI) -> None:
    """Complete ``app``'s OpenAPI document with the ``x-api-key`` ways in, next to
    ``BearerToken`` wherever a route offers it: ``ApiKey`` (the full token) and
    ``x-api-key`` holding the key id *and* ``x-api-secret``, as one requirement (FastAPI
    cannot say "these two together" from dependencies)."""
    _edit_document(app, partial(openapidoc.add_api_key, api_key=_API_KEY_MODEL))


def document(app: FastAPI, key_pair: bool = True) -> None:
    """Complete ``app``'s OpenAPI document with what keystile does on every route that has
    one of its dependencies: the 401, 403 and 429 it may answer (keystile's error body), and
    the permissions the route requires (its security requirements' scopes and description),
    and ``ApiKey`` next to ``BearerToken``; ``key_pair``: the key id with ``x-api-secret``
    too, as :func:`document_key_pair` adds. (A dependency cannot add responses.)"""
    _edit_document(app, partial(openapidoc.add_api_key, api_key=_API_KEY_MODEL, pair=key_pair))

    def describe(document: dict[str, Any]) -> None:
        if not openapidoc.described(document):
            encoded = {"BearerToken": _BEARER_MODEL, "ApiKey": _API_KEY_MODEL}
            # Newer FastAPI keeps an included router's routes in it, where the document reads.
            routes = getattr(fastapi.routing, "iter_route_contexts", list)(app.routes)
            operations = openapidoc.guarded(routes, _keystile_permissions)
            openapidoc.describe(document, operations, encoded)

    _edit_document(app, describe)


_BEARER_MODEL = jsonable_encoder(get_principal.model, exclude_none=True)
_API_KEY_MODEL = jsonable_encoder(api_key_scheme.model, exclude_none=True)


def _edit_document(app: FastAPI, edit: Callable[[dict[str, Any]], None]) -> None:
    """``app.openapi``, followed by ``edit``: once, as FastAPI builds the document once and
    keeps it, and every edit leaves an edited document alone."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        edit(document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _keystile_permissions(call: Any) -> tuple[str, ...] | None:
    """What a dependency asks of the key, if it is one of keystile's (``cost()``: nothing)."""
    if isinstance(call, PrincipalDependency):
        return call.permissions
    return () if call in _COSTS else None
