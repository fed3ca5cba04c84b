"""An Idempotency-Key charges a retry once, and only a retry: the same key on a request with
another body, path, query or environment is a new request and pays. On every adapter, and the
app still reads the whole body after keystile has looked at it."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from keystile import Keystile
from keystile._core import tokens
from keystile._http.bodies import buffer_body
from keystile.starlette import KeystileMiddleware

from .behaviour.harness_sync import call_wsgi, server_environ

Make = Callable[..., Keystile]
ACCT = "acct_1"
FRAMEWORKS = ["starlette", "wsgi", "flask", "django-sync", "django-async"]
Reply = tuple[int, Any]


def echo_of(body: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}


class Poster:
    """``post(path, headers, body) -> (status, json)`` on one framework."""

    def __init__(self, post: Callable[[str, dict[str, str], bytes], Reply], close: Any) -> None:
        self.post = post
        self.close = close


def starlette_poster(ks: Keystile) -> Poster:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(echo_of(await request.body()))

    app = Starlette(
        routes=[Route("/echo", echo, methods=["POST"]), Route("/echo2", echo, methods=["POST"])]
    )
    app.add_middleware(KeystileMiddleware, keystile=ks)
    client = TestClient(app)

    def post(path: str, headers: dict[str, str], body: bytes) -> Reply:
        response = client.post(path, headers=headers, content=body)
        return response.status_code, response.json()

    return Poster(post, lambda: None)


def wsgi_poster(ks: Keystile) -> Poster:
    from keystile.wsgi import KeystileMiddleware as WSGIMiddleware

    def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.dumps(echo_of(environ["wsgi.input"].read(length))).encode()
        start_response("200 OK", [("content-type", "application/json")])
        return [body]

    app = WSGIMiddleware(echo, keystile=ks)

    def post(path: str, headers: dict[str, str], body: bytes) -> Reply:
        environ = server_environ("POST", path, {**headers, "content-length": str(len(body))})
        environ["wsgi.input"] = io.BytesIO(body)
        result = call_wsgi(app, environ)
        return result.status, result.json

    return Poster(post, lambda: None)


def flask_poster(ks: Keystile) -> Poster:
    from flask import Flask, request

    from keystile.flask import Keystile as FlaskKeystile

    app = Flask("idempotency")
    FlaskKeystile(app, keystile=ks)

    @app.post("/echo")
    def echo() -> dict[str, Any]:
        return echo_of(request.get_data())

    @app.post("/echo2")
    def echo_stream() -> dict[str, Any]:  # reads the stream itself, as some views do
        return echo_of(request.stream.read())

    client = app.test_client()

    def post(path: str, headers: dict[str, str], body: bytes) -> Reply:
        response = client.post(path, headers=headers, data=body)
        return response.status_code, response.get_json()

    return Poster(post, lambda: None)


def django_sync_poster(ks: Keystile) -> Poster:
    from django.test import Client

    from .behaviour.harness_sync import django_overrides

    client = Client()

    def post(path: str, headers: dict[str, str], body: bytes) -> Reply:
        with django_overrides(ks, "urls"):
            response = client.generic(
                "POST", path, data=body, content_type="application/octet-stream", headers=headers
            )
        return response.status_code, json.loads(response.content)

    return Poster(post, lambda: None)


def django_async_poster(ks: Keystile) -> Poster:
    from django.core.handlers.asgi import ASGIHandler

    from .behaviour.harness_sync import _with_lifespan, django_overrides
    from .djangoproj import settings as project

    project.configure()
    overrides = django_overrides(ks, "urls_async")
    client = TestClient(_with_lifespan(ASGIHandler()))
    client.__enter__()

    def post(path: str, headers: dict[str, str], body: bytes) -> Reply:
        with overrides:
            response = client.post(path, headers=headers, content=body)
        return response.status_code, response.json()

    return Poster(post, lambda: client.__exit__(None, None, None))


POSTERS = {
    "starlette": starlette_poster,
    "wsgi": wsgi_poster,
    "flask": flask_poster,
    "django-sync": django_sync_poster,
    "django-async": django_async_poster,
}


@pytest.fixture
def ks(make_keystile: Make) -> Keystile:
    return make_keystile(monthly_page_limit=100)


@pytest.fixture(params=FRAMEWORKS)
def poster(request: pytest.FixtureRequest, ks: Keystile) -> Iterator[Poster]:
    if request.param.startswith("django"):
        from .djangoproj import settings as project

        project.configure()
    made = POSTERS[request.param](ks)
    yield made
    made.close()


def pages(ks: Keystile, environment: str | None = None) -> int:
    return ks.usage(ACCT, environment=environment).pages


def send(poster: Poster, token: str, path: str, body: bytes, key: str = "order-1") -> None:
    status, reply = poster.post(path, {"x-api-key": token, "idempotency-key": key}, body)
    assert status == 200, reply
    assert reply == echo_of(body)  # the app read the whole body after keystile did


def test_a_retry_is_charged_once(poster: Poster, ks: Keystile) -> None:
    token = ks.keys.create(ACCT, "k").token
    send(poster, token, "/echo", b'{"doc": 1}')
    send(poster, token, "/echo", b'{"doc": 1}')
    assert pages(ks) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/echo", b'{"doc": 2}'),  # another body
        ("/echo2", b'{"doc": 1}'),  # another route
        ("/echo?page=2", b'{"doc": 1}'),  # another query
        ("/echo", b""),  # no body at all
    ],
)
def test_the_same_key_on_another_request_is_a_new_request(
    poster: Poster, ks: Keystile, path: str, body: bytes
) -> None:
    token = ks.keys.create(ACCT, "k").token
    send(poster, token, "/echo", b'{"doc": 1}')
    send(poster, token, path, body)
    assert pages(ks) == 2


def test_environments_do_not_share_keys(poster: Poster, ks: Keystile) -> None:
    live = ks.keys.create(ACCT, "live").token
    test = ks.keys.create(ACCT, "test", environment="test").token
    send(poster, live, "/echo", b"same")
    send(poster, test, "/echo", b"same")
    assert (pages(ks, "live"), pages(ks, "test")) == (1, 1)


def test_a_body_too_large_to_compare_is_charged_every_time(
    poster: Poster, ks: Keystile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("keystile._http.bodies.IDEMPOTENT_BODY_LIMIT", 16)
    token = ks.keys.create(ACCT, "k").token
    body = b"x" * 100
    send(poster, token, "/echo", body)
    send(poster, token, "/echo", body)
    assert pages(ks) == 2
    small = b"y" * 16
    send(poster, token, "/echo", small, key="order-2")
    send(poster, token, "/echo", small, key="order-2")
    assert pages(ks) == 3


# -- the ASGI buffering itself -------------------------------------------------------------


def receiver(messages: list[dict[str, Any]]) -> Callable[[], Any]:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


async def drain(receive: Callable[[], Any]) -> list[dict[str, Any]]:
    seen = []
    while True:
        message = await receive()
        seen.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return seen


def chunks(*parts: bytes) -> list[dict[str, Any]]:
    return [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]


@pytest.mark.anyio
async def test_buffering_hands_the_app_every_chunk_in_order() -> None:
    messages = chunks(b"ab", b"", b"cd")
    body, replay = await buffer_body(receiver(messages))
    assert body == b"abcd"
    assert await drain(replay) == messages


@pytest.mark.anyio
async def test_buffering_stops_at_the_limit_and_passes_the_rest_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("keystile._http.bodies.IDEMPOTENT_BODY_LIMIT", 3)
    messages = chunks(b"ab", b"cd", b"ef", b"gh")
    body, replay = await buffer_body(receiver(messages))
    assert body is None
    assert await drain(replay) == messages


@pytest.mark.anyio
async def test_a_disconnect_while_buffering_reaches_the_app() -> None:
    messages = [*chunks(b"ab", b"cd")[:1], {"type": "http.disconnect"}]
    body, replay = await buffer_body(receiver(messages))
    assert body is None
    assert await drain(replay) == messages


# -- the body is read only for a verified key ------------------------------------------------


class CountingInput(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


@pytest.mark.parametrize("framework", ["wsgi", "flask", "django-sync"])
def test_a_refused_credential_never_makes_a_wsgi_adapter_read_the_body(
    ks: Keystile, framework: str
) -> None:
    if framework == "wsgi":
        from keystile.wsgi import KeystileMiddleware as WSGIMiddleware

        app: Any = WSGIMiddleware(lambda environ, start: [b""], keystile=ks)
        overrides: Any = None
    elif framework == "flask":
        from flask import Flask

        from keystile.flask import Keystile as FlaskKeystile

        app = Flask("unread")
        FlaskKeystile(app, keystile=ks)
        overrides = None
    else:
        from django.core.handlers.wsgi import WSGIHandler

        from .behaviour.harness_sync import django_overrides
        from .djangoproj import settings as project

        project.configure()
        app, overrides = WSGIHandler(), django_overrides(ks, "urls")
    kid = tokens.new_kid()
    for credential in (
        "sk_live_junk",
        tokens.format_token("sk", "live", kid, tokens.new_secret(kid)),
    ):
        body = CountingInput(b"x" * 1000)
        headers = {"x-api-key": credential, "idempotency-key": "k", "content-length": "1000"}
        environ = server_environ("POST", "/echo", headers)
        environ["wsgi.input"] = body
        if overrides is not None:
            with overrides:
                result = call_wsgi(app, environ)
        else:
            result = call_wsgi(app, environ)
        assert result.status in (400, 401), result
        assert body.reads == 0 and body.tell() == 0


@pytest.mark.anyio
async def test_a_refused_credential_never_makes_the_asgi_adapter_read_the_body(
    ks: Keystile,
) -> None:
    received: list[Any] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not for a refused credential")

    kid = tokens.new_kid()
    token = tokens.format_token("sk", "live", kid, tokens.new_secret(kid))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "query_string": b"",
        "headers": [(b"x-api-key", token.encode()), (b"idempotency-key", b"k")],
    }
    await KeystileMiddleware(app, keystile=ks)(scope, receive, send)
    assert sent[0]["status"] == 401 and received == []


def test_flask_management_gets_its_body_with_an_idempotency_key(ks: Keystile) -> None:
    from flask import Flask

    from keystile.flask import Keystile as FlaskKeystile
    from keystile.flask_management import management_blueprint

    app = Flask("management")
    FlaskKeystile(app, keystile=ks)
    app.register_blueprint(management_blueprint("/v1"))
    admin = ks.keys.create(ACCT, "admin", permissions=["readApiKeys", "writeApiKeys"])
    leaked = ks.keys.create(ACCT, "leaked")
    client = app.test_client()
    response = client.patch(
        f"/v1/apikeys/{leaked.key_id}",
        json={"enabled": False},
        headers={"x-api-key": admin.token, "Idempotency-Key": "disable-1"},
    )
    assert response.status_code == 200 and response.get_json()["enabled"] is False
    assert ks.keys.get(leaked.key_id).enabled is False


# -- which bodies may be compared (WSGI and Django read the same rule) ------------------------


@pytest.mark.parametrize(
    ("meta", "length"),
    [
        ({}, 0),
        ({"CONTENT_LENGTH": ""}, 0),
        ({"CONTENT_LENGTH": "12"}, 12),
        ({"CONTENT_LENGTH": "-1"}, None),
        ({"CONTENT_LENGTH": "twelve"}, None),
        ({"CONTENT_LENGTH": "12", "HTTP_TRANSFER_ENCODING": "Chunked"}, None),
    ],
)
def test_only_a_body_of_known_length_within_the_limit_is_compared(
    meta: dict[str, str], length: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keystile._http.bodies import comparable_length

    assert comparable_length(meta) == length
    monkeypatch.setattr("keystile._http.bodies.IDEMPOTENT_BODY_LIMIT", 11)
    assert comparable_length({"CONTENT_LENGTH": "12"}) is None
