"""FastAPI dependencies: the principal, permission checks, and the security schemes in OpenAPI.

The middleware (:class:`keystile.starlette.KeystileMiddleware`) authenticates; these only read
its result, so a request costs the same whether or not a route asks for the principal::

    app.add_middleware(KeystileMiddleware, settings={...})

    @app.get("/jobs")
    def jobs(principal: Principal = Depends(require("readJobs"))): ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .metering import check_route_cost
from .principal import Principal, check_permissions
from .starlette import KeystileMiddleware, engine_of, principal_of

__all__ = ["KeystileMiddleware", "Principal", "cost", "get_principal", "require"]

# auto_error=False: they exist for the OpenAPI document; the middleware has already decided.
bearer_scheme = HTTPBearer(
    scheme_name="BearerToken", description="Authorization: Bearer <token>", auto_error=False
)
api_key_scheme = APIKeyHeader(
    name="x-api-key",
    scheme_name="ApiKey",
    description="The full token, or the key id together with x-api-secret.",
    auto_error=False,
)
api_secret_scheme = APIKeyHeader(
    name="x-api-secret",
    scheme_name="ApiSecret",
    description="The key's secret, when x-api-key holds the key id.",
    auto_error=False,
)


def get_principal(
    request: Request,
    _bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
    _api_key: str | None = Security(api_key_scheme),
    _api_secret: str | None = Security(api_secret_scheme),
) -> Principal:
    """Dependency returning the authenticated principal."""
    return principal_of(request)


def require(*permissions: str) -> Callable[..., Principal]:
    """Dependency returning the principal once it holds every one of ``permissions``."""

    def dependency(
        request: Request,
        _bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
        _api_key: str | None = Security(api_key_scheme),
        _api_secret: str | None = Security(api_secret_scheme),
    ) -> Principal:
        principal = principal_of(request)
        check_permissions(principal, permissions)
        return principal

    return dependency


def cost(pages: int) -> Callable[[Request], Awaitable[None]]:
    """Dependency: this route costs ``pages`` (reserved before the handler; 429 if over)."""
    check_route_cost(pages)

    async def dependency(request: Request) -> None:
        await engine_of(request).reserve_async(principal_of(request), pages)

    return dependency
