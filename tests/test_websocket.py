"""KeystileMiddleware beyond plain HTTP: WebSocket handshakes, lifespan, and raw ASGI scopes.

Starlette's TestClient advertises the ``websocket.http.response`` extension, so a refused
handshake reaches it as a denial response (``WebSocketDenialResponse``: an HTTP status,
headers and keystile's JSON body). A server without that extension gets a close frame with
code 1008 instead; that path is driven with a raw ASGI scope.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from keystile import Keystile
from keystile.starlette import WS_POLICY_VIOLATION, KeystileMiddleware, requires

EXEMPT = ["/ws/public", "/health"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "redis"])
def ks(request: pytest.FixtureRequest, make_keystile: Callable[..., Keystile]) -> Keystile:
    extra: dict[str, Any] = {}
    if request.param == "redis":
        extra = request.getfixturevalue("redis_settings")
    return make_keystile(exempt_paths=EXEMPT, **extra)


def build_app(ks: Keystile, events: list[str] | None = None) -> Starlette:
    events = events if events is not None else []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"db": "connected"}
        events.append("shutdown")

    async def whoami(websocket: WebSocket) -> None:
        await websocket.accept()
        principal = websocket.state.principal
        await websocket.send_json(
            {
                "key_id": principal.key_id,
                "account_id": principal.account_id,
                "auth_method": principal.auth_method,
                "db": websocket.state.db,  # lifespan state survives the middleware's copy
            }
        )
        message = await websocket.receive_text()
        await websocket.send_text(f"echo {message}")
        await websocket.close()

    @requires("stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("streaming")
        await websocket.close()

    async def public(websocket: WebSocket) -> None:
        await websocket.accept()
        has = getattr(websocket.state, "principal", None) is not None
        await websocket.send_json({"principal": has})
        await websocket.close()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"db": request.state.db})

    async def http_whoami(request: Request) -> JSONResponse:
        return JSONResponse({"key_id": request.state.principal.key_id, "db": request.state.db})

    return Starlette(
        routes=[
            WebSocketRoute("/ws", whoami),
            WebSocketRoute("/ws/stream", stream),
            WebSocketRoute("/ws/public", public),
            Route("/health", health),
            Route("/whoami", http_whoami),
        ],
        middleware=[Middleware(KeystileMiddleware, keystile=ks)],
        lifespan=lifespan,
    )


@contextlib.contextmanager
def running(ks: Keystile, events: list[str] | None = None) -> Any:
    with TestClient(build_app(ks, events)) as client:
        try:
            yield client
        finally:
            client.portal.call(ks.aclose)  # the async Redis client of the client's loop


def denial(client: TestClient, path: str, headers: dict[str, str] | None = None) -> Any:
    with (
        pytest.raises(WebSocketDenialResponse) as refused,
        client.websocket_connect(path, headers=dict(headers or {})),
    ):
        pass  # pragma: no cover - the handshake must not succeed
    return refused.value


# ----------------------------------------------------------------------- WebSocket


def test_handshake_with_a_valid_key_is_accepted_and_sees_the_principal(ks: Keystile) -> None:
    key = ks.keys.create("acct-1", "ws")
    forms = {
        "bearer": {"authorization": f"Bearer {key.token}"},
        "api_key": {"x-api-key": key.token},
        "key_secret": {"x-api-key": key.key_id, "x-api-secret": key.secret},
    }
    with running(ks) as client:
        for method, headers in forms.items():
            with client.websocket_connect("/ws", headers=headers) as ws:
                assert ws.receive_json() == {
                    "key_id": key.key_id,
                    "account_id": "acct-1",
                    "auth_method": method,
                    "db": "connected",
                }
                ws.send_text("hi")
                assert ws.receive_text() == "echo hi"


@pytest.mark.parametrize(
    ("make_headers", "status", "code"),
    [
        (lambda key: None, 401, "AUTH_001"),
        (lambda key: {"authorization": "Bearer nope"}, 401, "AUTH_002"),
        (lambda key: {"authorization": "Basic abc"}, 400, "AUTH_006"),
        (lambda key: {"x-api-key": key.token, "x-account-id": "acct-other"}, 403, "AUTH_005"),
    ],
    ids=["missing", "invalid", "malformed", "account"],
)
def test_refused_handshake_gets_keystiles_denial_response(
    ks: Keystile, make_headers: Callable[[Any], Any], status: int, code: str
) -> None:
    key = ks.keys.create("acct-1", "ws")
    with running(ks) as client:
        refused = denial(client, "/ws", make_headers(key))
    assert isinstance(refused, WebSocketDisconnect)
    assert refused.status_code == status
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]["code"] == code
    if status == 401:
        assert refused.headers["www-authenticate"].startswith('Bearer realm="api"')


def test_revoked_key_is_refused_at_the_next_handshake(ks: Keystile) -> None:
    key = ks.keys.create("acct-1", "ws")
    headers = {"x-api-key": key.token}
    with running(ks) as client:
        with client.websocket_connect("/ws", headers=headers) as ws:
            assert ws.receive_json()["key_id"] == key.key_id
            ws.send_text("x")
            ws.receive_text()
        ks.keys.revoke(key.key_id)
        refused = denial(client, "/ws", headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "AUTH_003")


def test_requires_on_a_websocket_endpoint(ks: Keystile) -> None:
    allowed = ks.keys.create("acct-1", "ws", permissions=["stream"])
    other = ks.keys.create("acct-1", "ws", permissions=["read"])
    with running(ks) as client:
        with client.websocket_connect("/ws/stream", headers={"x-api-key": allowed.token}) as ws:
            assert ws.receive_text() == "streaming"
        refused = denial(client, "/ws/stream", {"x-api-key": other.token})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "AUTH_004")


def test_exempt_websocket_path_needs_no_key_and_gets_no_principal(ks: Keystile) -> None:
    with running(ks) as client, client.websocket_connect("/ws/public") as ws:
        assert ws.receive_json() == {"principal": False}


# ------------------------------------------------------------------------- lifespan


def test_lifespan_runs_through_the_middleware(ks: Keystile) -> None:
    events: list[str] = []
    key = ks.keys.create("acct-1", "k")
    with running(ks, events) as client:
        assert events == ["startup"]
        assert client.get("/health").json() == {"db": "connected"}  # exempt: no key
        whoami = client.get("/whoami", headers={"x-api-key": key.token})
        assert whoami.json() == {"key_id": key.key_id, "db": "connected"}
        assert client.get("/whoami").status_code == 401
    assert events == ["startup", "shutdown"]


# ------------------------------------------------------------------------ raw ASGI


class Recorder:
    """An inner ASGI app that records what reaches it."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
        else:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})


async def call(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[Any]:
    sent: list[dict[str, Any]] = []
    queue = list(incoming)

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def ws_scope(headers: list[tuple[bytes, bytes]], **extra: Any) -> dict[str, Any]:
    return {"type": "websocket", "path": "/ws", "headers": headers, "subprotocols": [], **extra}


@pytest.mark.anyio
@pytest.mark.parametrize("extensions", [None, {}, {"http.response.trailers": {}}])
async def test_without_the_denial_extension_the_handshake_is_closed_with_1008(
    make_keystile: Callable[..., Keystile], extensions: dict[str, Any] | None
) -> None:
    ks = make_keystile()
    inner = Recorder()
    app = KeystileMiddleware(inner, keystile=ks)
    extra = {} if extensions is None else {"extensions": extensions}
    sent = await call(app, ws_scope([], **extra), [{"type": "websocket.connect"}])
    assert sent == [
        {
            "type": "websocket.close",
            "code": WS_POLICY_VIOLATION,
            "reason": "AUTH_001 missing_api_key",
        }
    ]
    assert WS_POLICY_VIOLATION == 1008
    assert inner.scopes == []  # the app never saw the refused handshake


@pytest.mark.anyio
async def test_raw_websocket_with_a_key_reaches_the_app(
    make_keystile: Callable[..., Keystile],
) -> None:
    ks = make_keystile()
    key = ks.keys.create("acct-1", "k")
    inner = Recorder()
    app = KeystileMiddleware(inner, keystile=ks)
    sent = await call(
        app, ws_scope([(b"x-api-key", key.token.encode())]), [{"type": "websocket.connect"}]
    )
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert inner.scopes[0]["state"]["principal"].key_id == key.key_id


@pytest.mark.anyio
async def test_raw_lifespan_scope_is_passed_through_untouched(
    make_keystile: Callable[..., Keystile],
) -> None:
    inner = Recorder()
    app = KeystileMiddleware(inner, keystile=make_keystile())
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    sent = await call(app, scope, [{"type": "lifespan.startup"}])
    assert sent == [{"type": "lifespan.startup.complete"}]
    assert inner.scopes == [scope]
    assert inner.scopes[0] is scope


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        [(b"X-API-KEY", "{token}")],
        [(b"Authorization", "bEaReR {token}")],
        [(b"AUTHORIZATION", "Bearer {token}"), (b"X-Account-Id", "acct-1")],
    ],
    ids=["upper-x-api-key", "mixed-bearer", "upper-authorization"],
)
async def test_raw_header_names_in_any_case(
    make_keystile: Callable[..., Keystile], headers: list[tuple[bytes, str]]
) -> None:
    """Servers should lowercase header names; the middleware does not rely on it."""
    ks = make_keystile()
    key = ks.keys.create("acct-1", "k")
    inner = Recorder()
    app = KeystileMiddleware(inner, keystile=ks)
    raw = [(name, value.format(token=key.token).encode()) for name, value in headers]
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": raw}
    sent = await call(app, scope, [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 204
    assert inner.scopes[0]["state"]["principal"].key_id == key.key_id


@pytest.mark.anyio
async def test_raw_latin1_header_bytes_get_a_401_not_a_crash(
    make_keystile: Callable[..., Keystile],
) -> None:
    app = KeystileMiddleware(Recorder(), keystile=make_keystile())
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": [(b"x-api-key", b"\xff\x00")],
    }
    sent = await call(app, scope, [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["error"]["code"] == "AUTH_002"
