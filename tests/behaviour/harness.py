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
``GET /public/principal``  exempt, and reads the principal as ``/whoami`` does: none is there,
                   so the stack's way of reading it refuses (401 AUTH_001)
=================  ==========================================================================

and, for the settlement tests (``test_settlement.py``), the quota routes: ``/`` (the
principal's quota), ``/expensive`` (cost 3), ``/expensive-charged?n=`` (cost 4, real cost n),
``/charged?n=``, ``/failing?s=<status>``, ``/boom`` (raises), ``/needs-admin`` (requires
"admin"), ``/stream?n=`` (charges n while streaming) and ``/stream-refused`` (a streamed body
refused by keystile after its first chunk).

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
#: The peer address every harness's server reports (a WSGI REMOTE_ADDR, an ASGI client).
PEER = ("127.0.0.1", 50000)
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
        # A peer address as a server gives it (the default, "testclient", is no address).
        self.client = TestClient(app, raise_server_exceptions=True, client=PEER)
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
        Route("/public/principal", whoami),
        *starlette_quota_routes(),
    ]
    return Starlette(routes=routes, middleware=[Middleware(KeystileMiddleware, keystile=ks)])


def quota_body(principal: Principal) -> dict[str, Any]:
    quota = principal.quota
    return {"used": quota.used, "remaining": quota.remaining, "limit": quota.limit}


def starlette_quota_routes() -> list[Any]:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    from keystile._core.principal import check_permissions
    from keystile.starlette import cost, principal_of, requires

    async def home(request: Request) -> JSONResponse:
        return JSONResponse(quota_body(principal_of(request)))

    @cost(3)
    async def expensive(request: Request) -> JSONResponse:
        principal = principal_of(request)
        assert principal.meter is not None
        return JSONResponse({"reserved": principal.meter.reserved, "used": principal.quota.used})

    @cost(4)
    def expensive_charged(request: Request) -> PlainTextResponse:  # sync: cost() wraps both
        principal_of(request).charge(int(request.query_params["n"]))
        return PlainTextResponse("ok")

    async def charged(request: Request) -> PlainTextResponse:
        principal_of(request).charge(int(request.query_params["n"]))
        return PlainTextResponse("ok")

    async def failing(request: Request) -> PlainTextResponse:
        return PlainTextResponse("upstream broke", status_code=int(request.query_params["s"]))

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("handler bug")

    @requires("admin")
    async def needs_admin(request: Request) -> PlainTextResponse:
        return PlainTextResponse("admin")

    async def stream(request: Request) -> StreamingResponse:
        principal, n = principal_of(request), int(request.query_params["n"])

        async def body() -> Any:
            for _ in range(3):
                yield b"chunk "
            principal.charge(n)

        return StreamingResponse(body(), media_type="text/plain")

    async def stream_refused(request: Request) -> StreamingResponse:
        principal = principal_of(request)

        async def body() -> Any:
            yield b"chunk "
            check_permissions(principal, ("admin",))

        return StreamingResponse(body(), media_type="text/plain")

    return [
        Route("/", home),
        Route("/expensive", expensive),
        Route("/expensive-charged", expensive_charged),
        Route("/charged", charged),
        Route("/failing", failing),
        Route("/boom", boom),
        Route("/needs-admin", needs_admin),
        Route("/stream", stream),
        Route("/stream-refused", stream_refused),
    ]


def make_starlette(ks: Keystile) -> Harness:
    return ASGIHarness("starlette", build_starlette_app(ks), ks)


def build_fastapi_app(ks: Keystile) -> Any:
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import PlainTextResponse, StreamingResponse

    from keystile._core.principal import check_permissions
    from keystile.fastapi import KeystileMiddleware, cost, get_principal, require

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

    @app.get("/public/principal")
    async def public_principal(
        principal: Annotated[Principal, Depends(get_principal)],
    ) -> dict[str, Any]:
        return principal_fields(principal)

    Current = Annotated[Principal, Depends(get_principal)]

    @app.get("/")
    async def home(principal: Current) -> dict[str, Any]:
        return quota_body(principal)

    @app.get("/expensive", dependencies=[Depends(cost(3))])
    async def expensive(principal: Current) -> dict[str, Any]:
        assert principal.meter is not None
        return {"reserved": principal.meter.reserved, "used": principal.quota.used}

    @app.get("/expensive-charged", dependencies=[Depends(cost(4))])
    def expensive_charged(principal: Current, n: int) -> PlainTextResponse:
        principal.charge(n)
        return PlainTextResponse("ok")

    @app.get("/charged")
    async def charged(principal: Current, n: int) -> PlainTextResponse:
        principal.charge(n)
        return PlainTextResponse("ok")

    @app.get("/failing")
    async def failing(s: int) -> PlainTextResponse:
        return PlainTextResponse("upstream broke", status_code=s)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("handler bug")

    @app.get("/needs-admin", dependencies=[Depends(require("admin"))])
    async def needs_admin() -> PlainTextResponse:
        return PlainTextResponse("admin")

    @app.get("/stream")
    async def stream(principal: Current, n: int) -> StreamingResponse:
        async def body() -> Any:
            for _ in range(3):
                yield b"chunk "
            principal.charge(n)

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/stream-refused")
    async def stream_refused(principal: Current) -> StreamingResponse:
        async def body() -> Any:
            yield b"chunk "
            check_permissions(principal, ("admin",))

        return StreamingResponse(body(), media_type="text/plain")

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
