"""Framework harnesses: the same small app on every adapter, driven through one interface.

Each factory in :data:`HARNESSES` takes a :class:`~keystile.Keystile` engine (whose settings
carry ``exempt_paths=EXEMPT_PATHS``) and returns a :class:`Harness` serving:

=================  ==========================================================================
``GET /whoami``    200 ``{"key_id", "account_id", "environment", "auth_method",
                   "permissions" (sorted)}`` of the principal
``GET /read``      the same, once the key holds permission ``read`` (else 403 AUTH_004)
``GET /write``     the same, once the key holds permission ``write``
``GET /health``    exempt: 200 ``{"ok": true, "principal": <bool: did the route get one>}``
``GET /public/x``  exempt (by the ``/public/*`` prefix): same body as /health
=================  ==========================================================================

To add a framework (Flask, WSGI, Django...): write a ``make_<name>(ks) -> Harness`` that
builds that app with keystile's adapter for it, and add it to :data:`HARNESSES`; every test
in ``test_behaviour.py`` then runs against it. ``request`` must pass header names and values
through as given (a list of pairs may repeat a name; a ``bytes`` value is sent as raw bytes)
and must not raise for a refused request: it returns the response.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures below at
# runtime, and their names (Depends, require, Request) are local to build_fastapi_app.
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from keystile import Keystile, Principal

EXEMPT_PATHS = ["/health", "/public/*"]
#: Header values may be bytes, for values that are not text.
HeaderValue = str | bytes
Headers = Mapping[str, HeaderValue] | Sequence[tuple[str, HeaderValue]] | None


@dataclass(frozen=True)
class Result:
    status: int
    headers: dict[str, str]  # names lowercased
    json: Any  # the parsed body, or None when it is not JSON
    text: str = field(default="", repr=False)


class Harness(Protocol):
    name: str

    def request(self, method: str, path: str, headers: Headers = None) -> Result: ...

    def close(self) -> None: ...


def principal_fields(principal: Principal) -> dict[str, Any]:
    return {
        "key_id": principal.key_id,
        "account_id": principal.account_id,
        "environment": principal.environment,
        "auth_method": principal.auth_method,
        "permissions": sorted(principal.permissions),
    }


def _exempt_body(state: Any) -> dict[str, Any]:
    return {"ok": True, "principal": getattr(state, "principal", None) is not None}


# ----------------------------------------------------------------------------- ASGI


class ASGIHarness:
    """An ASGI app behind ``starlette.testclient.TestClient`` (one event loop for its life)."""

    def __init__(self, name: str, app: Any, ks: Keystile) -> None:
        from starlette.testclient import TestClient

        self.name = name
        self.ks = ks
        self.client = TestClient(app, raise_server_exceptions=True)
        self.client.__enter__()  # one portal, so the engine's async Redis client is reused

    def request(self, method: str, path: str, headers: Headers = None) -> Result:
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        response = self.client.request(method, path, headers=pairs)
        try:
            body = response.json()
        except ValueError:
            body = None
        return Result(
            response.status_code,
            {k.lower(): v for k, v in response.headers.items()},
            body,
            response.text,
        )

    def close(self) -> None:
        try:
            # Its async Redis client belongs to the client's event loop: close it there.
            self.client.portal.call(self.ks.aclose)
        finally:
            self.client.__exit__(None, None, None)


def build_starlette_app(ks: Keystile) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from keystile.starlette import KeystileMiddleware, principal_of, requires

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(principal_fields(principal_of(request)))

    @requires("read")
    async def read(request: Request) -> JSONResponse:
        return JSONResponse(principal_fields(principal_of(request)))

    @requires("write")
    def write(request: Request) -> JSONResponse:  # a sync endpoint: requires() wraps both
        return JSONResponse(principal_fields(principal_of(request)))

    async def exempt(request: Request) -> JSONResponse:
        return JSONResponse(_exempt_body(request.state))

    routes = [
        Route("/whoami", whoami),
        Route("/read", read),
        Route("/write", write),
        Route("/health", exempt),
        Route("/public/x", exempt),
    ]
    return Starlette(routes=routes, middleware=[Middleware(KeystileMiddleware, keystile=ks)])


def make_starlette(ks: Keystile) -> Harness:
    return ASGIHarness("starlette", build_starlette_app(ks), ks)


def build_fastapi_app(ks: Keystile) -> Any:
    from fastapi import Depends, FastAPI, Request

    from keystile.fastapi import KeystileMiddleware, get_principal, require

    app = FastAPI()
    app.add_middleware(KeystileMiddleware, keystile=ks)

    @app.get("/whoami")
    def whoami(principal: Annotated[Principal, Depends(get_principal)]) -> dict[str, Any]:
        return principal_fields(principal)

    @app.get("/read")
    async def read(principal: Annotated[Principal, Depends(require("read"))]) -> dict[str, Any]:
        return principal_fields(principal)

    @app.get("/write")
    def write(principal: Annotated[Principal, Depends(require("write"))]) -> dict[str, Any]:
        return principal_fields(principal)

    @app.get("/health")
    def health(request: Request) -> dict[str, Any]:
        return _exempt_body(request.state)

    @app.get("/public/x")
    async def public(request: Request) -> dict[str, Any]:
        return _exempt_body(request.state)

    return app


def make_fastapi(ks: Keystile) -> Harness:
    return ASGIHarness("fastapi", build_fastapi_app(ks), ks)


#: name -> factory(engine) -> Harness. The behaviour tests run once per entry.
HARNESSES: dict[str, Callable[[Keystile], Harness]] = {
    "starlette": make_starlette,
    "fastapi": make_fastapi,
}


def error_of(result: Result) -> dict[str, Any]:
    """The ``error`` object of a refusal, checking the body's shape on the way."""
    assert isinstance(result.json, dict), f"not a JSON object: {result.text[:200]!r}"
    assert set(result.json) == {"error"}, result.json
    error = result.json["error"]
    assert isinstance(error, dict) and set(error) == {"code", "type", "message"}, error
    assert all(isinstance(error[k], str) and error[k] for k in error), error
    return error
