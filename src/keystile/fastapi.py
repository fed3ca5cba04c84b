"""FastAPI dependencies: the principal, permission checks, and the security schemes in OpenAPI.

The middleware (:class:`keystile.starlette.KeystileMiddleware`) authenticates; these only read
its result, so a request costs the same whether or not a route asks for the principal::

    app.add_middleware(KeystileMiddleware, settings={...})

    @app.get("/jobs")
    def jobs(principal: Principal = Depends(require("readJobs"))): ...

    document_key_pair(app)  # optional: also offer x-api-key (key id) + x-api-secret in the docs
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from keystile import Principal
from keystile._core.principal import check_permissions
from keystile._http import guards
from keystile._http.guards import principal_of
from keystile.starlette import KeystileMiddleware

__all__ = [
    "KeystileMiddleware",
    "Principal",
    "PrincipalDependency",
    "cost",
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
# Not a dependency: FastAPI lists each security dependency as an alternative of its own, so
# a third one would tell clients that x-api-secret alone will do. document_key_pair adds it.
API_SECRET_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "x-api-secret",
    "description": "The key's secret, sent with the key id in x-api-key.",
}
_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


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

    return dependency


def document_key_pair(app: FastAPI) -> None:
    """Complete ``app``'s OpenAPI document with the third way in: ``x-api-key`` holding the key
    id *and* ``x-api-secret``, as one requirement next to ``BearerToken`` and ``ApiKey``.

    FastAPI cannot say "these two together" from dependencies, so this wraps ``app.openapi``
    and edits the document once, when FastAPI first builds (and caches) it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        schemes = document.get("components", {}).get("securitySchemes", {})
        if "ApiKey" in schemes and "ApiSecret" not in schemes:
            schemes["ApiSecret"] = dict(API_SECRET_SCHEME)
            for item in document.get("paths", {}).values():
                for method, operation in item.items():
                    security = operation.get("security", []) if method in _HTTP_METHODS else []
                    if {"ApiKey": []} in security:
                        security.append({"ApiKey": [], "ApiSecret": []})
        return document

    app.openapi = openapi  # type: ignore[method-assign]
