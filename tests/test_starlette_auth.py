"""Starlette's authentication conventions under KeystileMiddleware: ``request.user`` and
``request.auth`` for a key, ``starlette.authentication.requires`` on them (over real HTTP too),
exempt paths, and both orders next to Starlette's own AuthenticationMiddleware."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
    requires,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from keystile import Keystile, Principal
from keystile.starlette import KeyCredentials, KeystileMiddleware, KeyUser

Make = Callable[..., Keystile]


async def whoami(request: Request) -> Response:
    user = request.user
    return JSONResponse(
        {
            "class": type(user).__name__,
            "is_base_user": isinstance(user, BaseUser),
            "authenticated": user.is_authenticated,
            "display_name": user.display_name,
            "identity": user.identity,
            "scopes": list(request.auth.scopes),
            "same_principal": getattr(user, "principal", None) is request.state.principal
            if "principal" in request.state._state
            else None,
        }
    )


@requires("jobs:read")
async def jobs(request: Request) -> Response:
    return JSONResponse({"key_id": request.user.identity})


@requires(["jobs:read", "jobs:write"])
def write_jobs(request: Request) -> Response:  # a sync endpoint: Starlette's other wrapper
    return PlainTextResponse("written")


@requires("jobs:read", redirect="login")
async def jobs_or_login(request: Request) -> Response:
    return PlainTextResponse("jobs")


async def login(request: Request) -> Response:
    return PlainTextResponse("log in first")


@requires("jobs:read")
async def jobs_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"identity": websocket.user.identity})
    await websocket.close()


ROUTES = [
    Route("/whoami", whoami),
    Route("/public/whoami", whoami),
    Route("/jobs", jobs),
    Route("/jobs", write_jobs, methods=["POST"]),
    Route("/public/jobs", jobs_or_login),
    Route("/public/login", login, name="login"),
    WebSocketRoute("/ws", jobs_socket),
]


class SessionBackend(AuthenticationBackend):
    """A stand-in for an app's own login: ``x-session: alice`` is alice, with scope admin."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        name = conn.headers.get("x-session")
        return None if name is None else (AuthCredentials(["admin"]), SimpleUser(name))


def build_app(ks: Keystile, session: str | None = None) -> Starlette:
    """``session``: where Starlette's AuthenticationMiddleware goes, "outside" keystile (it
    runs first) or "inside"; None: not at all."""
    keystile = Middleware(KeystileMiddleware, keystile=ks)
    backend = Middleware(AuthenticationMiddleware, backend=SessionBackend())
    stack = {None: [keystile], "outside": [backend, keystile], "inside": [keystile, backend]}
    return Starlette(routes=ROUTES, middleware=stack[session])


@pytest.fixture
def ks(make_keystile: Make) -> Keystile:
    return make_keystile(exempt_paths=["/public/*"])


@pytest.fixture
def client(ks: Keystile) -> Iterator[TestClient]:
    with TestClient(build_app(ks)) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_request_user_and_auth_are_the_keys(ks: Keystile, client: TestClient) -> None:
    key = ks.keys.create("acct_1", "ci runner", permissions=["jobs:read", "billing:*"])
    body = client.get("/whoami", headers=bearer(key.token)).json()
    assert body == {
        "class": "KeyUser",
        "is_base_user": True,
        "authenticated": True,
        "display_name": "ci runner",
        "identity": key.key_id,
        "scopes": ["billing:*", "jobs:read"],  # the literal permissions, sorted
        "same_principal": True,
    }
    # The same key over the other header, again: the same answer.
    assert client.get("/whoami", headers={"x-api-key": key.token}).json() == body


def test_an_unnamed_principal_shows_its_key_id() -> None:
    principal = Principal("key_abc", "acct_1", "", None, "live", frozenset(), "bearer")
    user = KeyUser(principal)
    assert (user.display_name, user.identity, user.principal) == ("key_abc", "key_abc", principal)
    assert repr(user) == "KeyUser('key_abc')"


def test_starlette_requires_admits_and_refuses(ks: Keystile, client: TestClient) -> None:
    reader = ks.keys.create("acct_1", "reader", permissions=["jobs:read"])
    writer = ks.keys.create("acct_1", "writer", permissions=["jobs:read", "jobs:write"])
    nobody = ks.keys.create("acct_1", "nothing")
    assert client.get("/jobs", headers=bearer(reader.token)).json() == {"key_id": reader.key_id}
    assert client.get("/jobs", headers=bearer(nobody.token)).status_code == 403
    assert client.post("/jobs", headers=bearer(reader.token)).status_code == 403
    assert client.post("/jobs", headers=bearer(writer.token)).text == "written"
    # No key at all: keystile answers before Starlette's requires is reached.
    refused = client.get("/jobs")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "AUTH_001"


def test_wildcard_permissions_satisfy_starlette_requires(ks: Keystile, client: TestClient) -> None:
    jobs_any = ks.keys.create("acct_1", "jobs", permissions=["jobs:*"])
    root = ks.keys.create("acct_1", "root", permissions=["*"])
    other = ks.keys.create("acct_1", "other", permissions=["jobsx:*", "billing:read"])
    for key in (jobs_any, root):
        assert client.get("/jobs", headers=bearer(key.token)).status_code == 200
        assert client.post("/jobs", headers=bearer(key.token)).text == "written"
    assert client.get("/jobs", headers=bearer(other.token)).status_code == 403
    # Listed, the scopes are still the key's own permissions, wildcards as they are.
    scopes = client.get("/whoami", headers=bearer(jobs_any.token)).json()["scopes"]
    assert scopes == ["jobs:*"]


def test_credentials_are_shared_and_read_only(ks: Keystile) -> None:
    seen: list[Any] = []

    async def grab(request: Request) -> Response:
        seen.append(request.auth)
        with pytest.raises(AttributeError):
            request.auth.scopes = ["admin"]
        with pytest.raises(AttributeError):
            request.auth.scopes.append("admin")  # type: ignore[attr-defined]
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", grab)], middleware=[Middleware(KeystileMiddleware, keystile=ks)]
    )
    first = ks.keys.create("acct_1", "a", permissions=["jobs:read"])
    second = ks.keys.create("acct_1", "b", permissions=["jobs:read"])
    third = ks.keys.create("acct_1", "c", permissions=["jobs:write"])
    with TestClient(app) as client:
        for key in (first, first, second, third):
            assert client.get("/", headers=bearer(key.token)).text == "ok"
    assert seen[0] is seen[1] is seen[2]  # one per permission set
    assert seen[3] is not seen[0] and list(seen[3].scopes) == ["jobs:write"]
    assert all(isinstance(auth, AuthCredentials) for auth in seen)


def test_exempt_paths_have_an_unauthenticated_user(ks: Keystile, client: TestClient) -> None:
    body = client.get("/public/whoami").json()
    assert body["class"] == "UnauthenticatedUser"
    assert body["authenticated"] is False and body["scopes"] == []
    # Even with a key: an exempt path is not authenticated.
    key = ks.keys.create("acct_1", "k", permissions=["jobs:read"])
    assert client.get("/public/whoami", headers=bearer(key.token)).json() == body
    # So Starlette's requires redirects (or refuses) as it would without keystile.
    redirected = client.get("/public/jobs", follow_redirects=False)
    assert redirected.status_code == 303
    assert redirected.headers["location"].startswith("http://testserver/public/login?next=")


def test_an_authenticated_user_in_front_is_left_alone(ks: Keystile) -> None:
    key = ks.keys.create("acct_1", "k", permissions=["jobs:read"])
    with TestClient(build_app(ks, session="outside")) as client:
        # The app's own login found nobody: the key's user takes the place of "nobody".
        body = client.get("/whoami", headers=bearer(key.token)).json()
        assert body["class"] == "KeyUser" and body["identity"] == key.key_id
        assert client.get("/jobs", headers=bearer(key.token)).status_code == 200
        # It found alice: she stays, with her scopes; the key still had to be valid.
        headers = {**bearer(key.token), "x-session": "alice"}
        body = client.get("/whoami", headers=headers).json()
        assert (body["class"], body["identity"], body["scopes"]) == (
            "SimpleUser",
            "alice",
            ["admin"],
        )
        assert body["same_principal"] is False  # request.state.principal is still the key's
        assert client.get("/jobs", headers=headers).status_code == 403  # alice lacks jobs:read
        assert client.get("/whoami", headers={"x-session": "alice"}).status_code == 401
        # An exempt path keeps what the middleware in front decided.
        public = client.get("/public/whoami", headers={"x-session": "alice"}).json()
        assert (public["class"], public["identity"]) == ("SimpleUser", "alice")
        assert client.get("/public/whoami").json()["class"] == "UnauthenticatedUser"


def test_an_authentication_middleware_inside_keystile_decides(ks: Keystile) -> None:
    key = ks.keys.create("acct_1", "k", permissions=["jobs:read"])
    with TestClient(build_app(ks, session="inside")) as client:
        # Starlette's middleware always sets the user: its backend found nobody.
        body = client.get("/whoami", headers=bearer(key.token)).json()
        assert (body["class"], body["authenticated"]) == ("UnauthenticatedUser", False)
        assert client.get("/jobs", headers=bearer(key.token)).status_code == 403
        body = client.get("/whoami", headers={**bearer(key.token), "x-session": "bob"}).json()
        assert (body["class"], body["identity"]) == ("SimpleUser", "bob")


def test_websocket_handshakes_carry_the_user(ks: Keystile, client: TestClient) -> None:
    reader = ks.keys.create("acct_1", "reader", permissions=["jobs:*"])
    with client.websocket_connect("/ws", headers=bearer(reader.token)) as ws:
        assert ws.receive_json() == {"identity": reader.key_id}
    nobody = ks.keys.create("acct_1", "nothing")
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/ws", headers=bearer(nobody.token)) as ws,
    ):
        ws.receive_json()  # Starlette's requires closes a socket that lacks the scope


def test_the_user_and_credentials_are_starlettes_kinds() -> None:
    assert issubclass(KeyUser, BaseUser) and issubclass(KeyCredentials, AuthCredentials)


# -- over real HTTP ------------------------------------------------------------------------


@pytest.fixture
def served(ks: Keystile) -> Iterator[str]:
    """``build_app(ks)`` served by uvicorn in a thread, on a socket bound here (no race for
    the port); its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(build_app(ks), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            thread.join(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_requires_over_real_http(ks: Keystile, served: str) -> None:
    reader = ks.keys.create("acct_1", "reader", permissions=["jobs:read"])
    wildcard = ks.keys.create("acct_1", "wildcard", permissions=["jobs:*"])
    nobody = ks.keys.create("acct_1", "nothing")
    with httpx.Client(base_url=served) as http:
        assert http.get("/jobs", headers=bearer(reader.token)).json() == {"key_id": reader.key_id}
        assert http.post("/jobs", headers=bearer(wildcard.token)).text == "written"
        assert http.get("/jobs", headers=bearer(nobody.token)).status_code == 403
        assert http.post("/jobs", headers={"x-api-key": reader.token}).status_code == 403
        missing = http.get("/jobs")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "AUTH_001"
        body = http.get(
            "/whoami", headers={"x-api-key": wildcard.key_id, "x-api-secret": wildcard.secret}
        ).json()
        assert (body["display_name"], body["identity"]) == ("wildcard", wildcard.key_id)
        assert http.get("/public/whoami").json()["class"] == "UnauthenticatedUser"


def test_a_middleware_in_front_adds_to_each_refusal_once(ks: Keystile) -> None:
    """Refusals share one rendering; each response still gets its own header list, so a
    middleware in front that appends to it (a request id here) does so once per response."""

    class RequestIds:
        def __init__(self, app: Any) -> None:
            self.app, self.count = app, 0

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            self.count += scope["type"] == "http"
            number = str(self.count)

            async def numbered(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message["headers"].append((b"x-request-id", number.encode()))
                await send(message)

            await self.app(scope, receive, numbered)

    keystile = Middleware(KeystileMiddleware, keystile=ks)
    app = Starlette(routes=ROUTES, middleware=[Middleware(RequestIds), keystile])
    with TestClient(app) as test_client:
        for n in range(1, 4):
            response = test_client.get("/whoami", headers={"x-api-key": "sk_live_nope"})
            assert response.status_code == 401
            assert response.headers.get_list("x-request-id") == [str(n)]
