"""FastAPI dependencies: the principal, permission checks, and the security schemes in OpenAPI.

The middleware (:class:`keystile.starlette.KeystileMiddleware`) authenticates; these only read
its result, so a request costs the same whether or not a route asks for the principal::

    app.add_middleware(KeystileMiddleware, settings={...})

    @app.get("/jobs")
    def jobs(principal: Principal = Depends(require("readJobs"))): ...

    document(app)  # optional: 401/403/429, permissions and x-api-key + x-api-secret in the docs
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import fastapi.routing
from fastapi import FastAPI, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.security import APIKeyHeader, HTTPBearer

from keystile import Principal
from keystile._core.principal import check_permissions
from keystile._http import guards, openapidoc
from keystile._http.guards import principal_of
from keystile.starlette import KeystileMiddleware

__all__ = [
    "KeystileMiddleware",
    "Principal",
    "PrincipalDependency",
    "cost",
    "document",
    "document_key_pair",
    "get_principal",
    "require",
]


class _DocumentedApiKey(APIKeyHeader):
    """The scheme for the OpenAPI document only: the middleware has already decided, so
    reading the header again on every request would be wasted work."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


api_key_scheme = _DocumentedApiKey(
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

    It is also the document's BearerToken scheme, and ApiKey is its one sub-dependency: FastAPI
    solves two dependencies per request instead of three, and its document still offers both.
    ``async``: FastAPI runs a plain ``def`` dependency in a worker thread, which costs more than
    everything keystile does for the request."""

    def __init__(self, permissions: tuple[str, ...] = ()) -> None:
        super().__init__(
            scheme_name="BearerToken", description="Authorization: Bearer <token>", auto_error=False
        )
        self.permissions = permissions

    async def __call__(  # type: ignore[override]
        self, request: Request, _api_key: None = Security(api_key_scheme)
    ) -> Principal:
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
    """Complete ``app``'s OpenAPI document with the third way in: ``x-api-key`` holding the key
    id *and* ``x-api-secret``, as one requirement next to ``BearerToken`` and ``ApiKey``
    (FastAPI cannot say "these two together" from dependencies)."""
    _edit_document(app, openapidoc.add_key_pair)


def document(app: FastAPI, key_pair: bool = True) -> None:
    """Complete ``app``'s OpenAPI document with what keystile does on every route that has
    one of its dependencies: the 401, 403 and 429 it may answer (keystile's error body), and
    the permissions the route requires (its security requirements' scopes and description).
    ``key_pair``: :func:`document_key_pair` too. (A dependency cannot add responses.)"""
    if key_pair:
        document_key_pair(app)

    def describe(document: dict[str, Any]) -> None:
        if not openapidoc.described(document):
            schemes = (get_principal, api_key_scheme)
            encoded = {s.scheme_name: jsonable_encoder(s.model, exclude_none=True) for s in schemes}
            # Newer FastAPI keeps an included router's routes in it, where the document reads.
            routes = getattr(fastapi.routing, "iter_route_contexts", list)(app.routes)
            operations = openapidoc.guarded(routes, _keystile_permissions)
            openapidoc.describe(document, operations, encoded)

    _edit_document(app, describe)


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
