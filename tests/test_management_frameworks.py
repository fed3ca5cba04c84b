"""The one management API on every framework: Starlette (``management_mount``), Flask
(``management_blueprint``), Django on its sync (WSGI) and async (ASGI) stacks
(``include("keystile.django.urls")``).

The same cases run against each through one harness interface; then one test sends a list of
requests to all of them and compares the answers byte for byte, since a difference between
frameworks is a bug. The rest are the adapters' own concerns: where they learn the prefix,
body limits, CSRF.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

pytest.importorskip("flask")
pytest.importorskip("django")

from .djangoproj import settings as project

project.configure()

from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.test import Client, RequestFactory, override_settings  # noqa: E402
from django.urls import include, path  # noqa: E402
from flask import Blueprint, Flask  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from keystile import CreatedKey, Keystile  # noqa: E402
from keystile._http.management import MAX_BODY  # noqa: E402
from keystile.django import views as django_views  # noqa: E402
from keystile.flask import Keystile as FlaskKeystile  # noqa: E402
from keystile.flask_management import management_blueprint  # noqa: E402
from keystile.starlette import KeystileMiddleware, management_mount  # noqa: E402

from .behaviour.harness_sync import _with_lifespan, server_environ  # noqa: E402
from .conftest import Clock  # noqa: E402

ACCT = "acct_a"
OTHER = "acct_b"
ALL = ["writeApiKeys", "readApiKeys", "readUsage", "readAudit"]
MASKED_FIELDS = {
    "id",
    "preview",
    "name",
    "account_id",
    "owner",
    "permissions",
    "environment",
    "accounts",
    "created_at",
    "expires_at",
    "last_used_at",
    "revoked_at",
    "enabled",
    "meta",
    "page_limit",
    "allowed_ips",
    "rate_limit",
}
FRAMEWORKS = ["starlette", "flask", "django-sync", "django-async"]
Make = Callable[..., Keystile]


# -- the Django project's URLconf: this module (ROOT_URLCONF=__name__) ------------------------


def django_jobs(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("jobs", django_jobs),
    path("v1/jobs", django_jobs),  # the app's own route under the management prefix
    path("v1/", include("keystile.django.urls")),
    path("api/v2/", include("keystile.django.urls")),
]


# -- harnesses --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes = field(repr=False)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


Headers = Mapping[str, str] | None


class Harness(Protocol):
    name: str

    def request(
        self, method: str, path: str, headers: Headers = None, *, json: Any = ..., body: bytes = b""
    ) -> Reply: ...

    def close(self) -> None: ...


def encode(json_body: Any, body: bytes) -> bytes:
    return body if json_body is ... else json.dumps(json_body).encode()


def lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


class ASGIApi:
    """An ASGI app behind Starlette's TestClient (one event loop for its life)."""

    def __init__(self, name: str, app: Any, around: Any = None) -> None:
        self.name = name
        self.around = around
        self.client = TestClient(app, follow_redirects=False)
        self.client.__enter__()

    def request(
        self, method: str, path: str, headers: Headers = None, *, json: Any = ..., body: bytes = b""
    ) -> Reply:
        content = encode(json, body)
        sent = dict(headers or {})
        if content:
            sent.setdefault("content-type", "application/json")
        if self.around is not None:
            with self.around:
                response = self.client.request(method, path, headers=sent, content=content)
        else:
            response = self.client.request(method, path, headers=sent, content=content)
        return Reply(response.status_code, lower(response.headers.items()), response.content)

    def close(self) -> None:
        self.client.__exit__(None, None, None)


def starlette_app(ks: Keystile) -> Starlette:
    async def jobs(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/jobs", jobs), Route("/v1/jobs", jobs), management_mount("/v1", ks)]
    )
    app.add_middleware(KeystileMiddleware, keystile=ks)
    return app


def call_wsgi(app: Any, environ: dict[str, Any]) -> Reply:
    """One request through a WSGI app as a server runs it: iterate the body, then close."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None

    result = app(environ, start_response)
    try:
        content = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    return Reply(int(status.split()[0]), lower(headers), content)


def wsgi_environ(method: str, path: str, headers: Headers, content: bytes) -> dict[str, Any]:
    environ = server_environ(method, path, dict(headers or {}))
    environ["wsgi.input"] = io.BytesIO(content)
    if content:
        environ["CONTENT_LENGTH"] = str(len(content))
        environ.setdefault("CONTENT_TYPE", "application/json")
    return environ


class FlaskApi:
    name = "flask"

    def __init__(self, app: Flask) -> None:
        self.app = app

    def request(
        self, method: str, path: str, headers: Headers = None, *, json: Any = ..., body: bytes = b""
    ) -> Reply:
        return call_wsgi(self.app, wsgi_environ(method, path, headers, encode(json, body)))

    def close(self) -> None:
        pass


def flask_app(ks: Keystile) -> Flask:
    app = Flask("keystile_management_test")
    FlaskKeystile(app, keystile=ks)
    app.register_blueprint(management_blueprint("/v1"))  # the app's engine, found at register

    @app.get("/jobs")
    @app.get("/v1/jobs")
    def jobs() -> dict[str, Any]:
        return {"ok": True}

    return app


def django_settings(ks: Keystile, **more: Any) -> Any:
    return override_settings(KEYSTILE=ks, ROOT_URLCONF=__name__, **more)


class DjangoSyncApi:
    """Django's test client on the sync stack (WSGIRequest, sync middleware)."""

    name = "django-sync"

    def __init__(self, ks: Keystile, client: Client | None = None, **more: Any) -> None:
        self.overrides = django_settings(ks, **more)
        self.client = client or Client()

    def request(
        self, method: str, path: str, headers: Headers = None, *, json: Any = ..., body: bytes = b""
    ) -> Reply:
        content = encode(json, body)
        with self.overrides:
            response = self.client.generic(
                method,
                path,
                data=content,
                content_type="application/json" if content else "",
                headers=dict(headers or {}),
            )
        return Reply(response.status_code, lower(response.headers.items()), response.content)

    def close(self) -> None:
        pass


def django_async_api(ks: Keystile) -> ASGIApi:
    from django.core.handlers.asgi import ASGIHandler

    return ASGIApi("django-async", _with_lifespan(ASGIHandler()), django_settings(ks))


def make_harness(name: str, ks: Keystile) -> Harness:
    if name == "starlette":
        return ASGIApi("starlette", starlette_app(ks))
    if name == "flask":
        return FlaskApi(flask_app(ks))
    # Django reads the prefix from the URLconf only after the middleware has run: the
    # project tells the engine (KEYSTILE_MANAGEMENT_PREFIX; here KEYSTILE is a ready engine).
    django_views.mount("/v1/", ks)
    if name == "django-sync":
        return DjangoSyncApi(ks)
    return django_async_api(ks)


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def ks(make_keystile: Make, clock: Clock) -> Keystile:
    return make_keystile(clock=clock)


@pytest.fixture(params=FRAMEWORKS)
def api(request: pytest.FixtureRequest, ks: Keystile) -> Iterator[Harness]:
    harness = make_harness(request.param, ks)
    yield harness
    harness.close()


@pytest.fixture
def admin(ks: Keystile) -> CreatedKey:
    return ks.keys.create(ACCT, "admin", permissions=ALL)


@pytest.fixture
def auth(admin: CreatedKey) -> dict[str, str]:
    return {"x-api-key": admin.token}


@pytest.fixture
def victim(ks: Keystile, admin: CreatedKey, clock: Clock) -> CreatedKey:
    clock.advance(1)
    return ks.keys.create(ACCT, "victim", permissions=["readUsage"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_error(reply: Reply, status: int, code: str, field: str | None = None) -> None:
    assert reply.status == status, reply
    body = reply.json
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["content-type"] == "application/json"
    if field is not None:
        assert body["error"]["field"] == field, body
        assert body["error"]["message"].startswith(f"{field}: "), body


def assert_masked(key: dict[str, Any]) -> None:
    assert set(key) == MASKED_FIELDS
    assert key["id"].startswith("key_") and "…" in key["preview"]


def counted(ks: Keystile) -> tuple[int, int]:
    report = ks.quotas.usage(ACCT)
    return report.pages, report.requests


# -- the same cases on every framework --------------------------------------------------------


def test_create_shows_the_token_once(api: Harness, ks: Keystile, auth: dict[str, str]) -> None:
    reply = api.request(
        "POST", "/v1/apikeys", auth, json={"name": "ci", "permissions": ["readUsage"]}
    )
    assert reply.status == 201, reply.text
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["content-type"] == "application/json"
    assert int(reply.headers["content-length"]) == len(reply.body)
    created = reply.json
    assert set(created) == {"token", "key_id", "secret", "key"}
    assert_masked(created["key"])
    assert created["key"]["name"] == "ci" and created["key"]["permissions"] == ["readUsage"]
    assert created["token"].endswith(created["secret"])
    # The new key works, and its secret is never shown again.
    assert api.request("GET", "/v1/usage", {"x-api-key": created["token"]}).status == 200
    shown = api.request("GET", f"/v1/apikeys/{created['key_id']}", auth)
    listed = api.request("GET", "/v1/apikeys", auth)
    for later in (shown, listed):
        assert later.status == 200
        assert created["secret"] not in later.text and "token" not in later.json
    assert ks.keys.get(created["key_id"]).name == "ci"


def test_list_is_masked_counted_and_paginated(
    api: Harness, ks: Keystile, admin: CreatedKey, auth: dict[str, str], clock: Clock
) -> None:
    made = [admin.key_id]
    for i in range(4):
        clock.advance(1)
        made.append(ks.keys.create(ACCT, f"key {i}", permissions=["readUsage"]).key_id)
    ks.keys.create(OTHER, "not ours")
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        reply = api.request("GET", f"/v1/apikeys?{query}", auth)
        assert reply.status == 200, reply.text
        page = reply.json
        assert set(page) == {"items", "total", "next_cursor"} and page["total"] == 5
        assert len(page["items"]) <= 2
        for item in page["items"]:
            assert_masked(item)
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]  # newest first, each once
    found = api.request("GET", "/v1/apikeys?search=KEY%202", auth).json
    assert [item["name"] for item in found["items"]] == ["key 2"] and found["total"] == 1


def test_get_patch_revoke_and_roll(
    api: Harness, ks: Keystile, victim: CreatedKey, auth: dict[str, str]
) -> None:
    url = f"/v1/apikeys/{victim.key_id}"
    got = api.request("GET", url, auth)
    assert got.status == 200 and got.json["name"] == "victim"
    assert_masked(got.json)

    patched = api.request("PATCH", url, auth, json={"name": "renamed", "meta": {"team": "b"}})
    assert patched.status == 200, patched.text
    assert (patched.json["name"], patched.json["meta"]) == ("renamed", {"team": "b"})
    assert ks.keys.get(victim.key_id).name == "renamed"

    rolled = api.request("POST", f"{url}/roll", auth, json={})
    assert rolled.status == 200, rolled.text
    assert set(rolled.json) == {"token", "key_id", "secret", "key"}
    assert rolled.json["key_id"] == victim.key_id and rolled.json["token"] != victim.token
    assert_error(api.request("GET", "/v1/usage", {"x-api-key": victim.token}), 401, "AUTH_002")
    new_token = {"x-api-key": rolled.json["token"]}
    assert api.request("GET", "/v1/usage", new_token).status == 200

    revoked = api.request("DELETE", url, auth)
    assert revoked.status == 200 and revoked.json["revoked_at"] is not None
    assert_error(api.request("GET", "/v1/usage", new_token), 401, "AUTH_003")
    listed = api.request("GET", "/v1/apikeys", auth).json
    assert victim.key_id not in [item["id"] for item in listed["items"]]


def test_usage_and_audit(
    api: Harness, admin: CreatedKey, victim: CreatedKey, auth: dict[str, str]
) -> None:
    api.request("GET", "/jobs", auth)
    usage = api.request("GET", "/v1/usage", auth)
    assert usage.status == 200, usage.text
    report = usage.json
    assert report["account_id"] == ACCT and report["month"] == "2026-09"
    assert (report["pages"], report["requests"]) == (1, 2)  # /jobs, and this request
    assert len(report["history"]) == 12
    earlier = api.request("GET", "/v1/usage?month=2026-01&environment=test", auth).json
    assert (earlier["month"], earlier["environment"], earlier["pages"]) == ("2026-01", "test", 0)

    api.request("PATCH", f"/v1/apikeys/{victim.key_id}", auth, json={"name": "v2"})
    audit = api.request("GET", "/v1/audit", auth)
    assert audit.status == 200, audit.text
    actions = [item["action"] for item in audit.json["items"]]
    assert actions == ["key.update", "key.create", "key.create"]
    assert audit.json["items"][0]["actor"] == admin.key_id
    page = api.request("GET", "/v1/audit?limit=1&action=key.create", auth).json
    assert [item["target"] for item in page["items"]] == [victim.key_id]
    rest = api.request(
        "GET", f"/v1/audit?limit=1&action=key.create&cursor={page['next_cursor']}", auth
    ).json
    assert [item["target"] for item in rest["items"]] == [admin.key_id]


def test_login_with_key_id_and_secret_then_logout(
    api: Harness, ks: Keystile, admin: CreatedKey
) -> None:
    before = counted(ks)
    login = api.request(
        "POST", "/v1/auth/login", {"x-api-key": admin.key_id, "x-api-secret": admin.secret}
    )
    assert login.status == 200, login.text
    session = login.json
    assert set(session) == {
        "token",
        "session_id",
        "key_id",
        "account_id",
        "expires_at",
        "idle_timeout",
    }
    assert session["token"].startswith("sk_sess_") and session["key_id"] == admin.key_id
    assert login.headers["cache-control"] == "no-store"
    assert counted(ks) == before  # public: never went through the middleware's admission
    listed = api.request("GET", "/v1/apikeys", bearer(session["token"]))
    assert listed.status == 200 and listed.json["total"] == 1
    out = api.request("POST", "/v1/auth/logout", bearer(session["token"]))
    assert out.status == 204 and out.body == b""
    assert "content-type" not in out.headers
    assert_error(api.request("GET", "/v1/apikeys", bearer(session["token"])), 401, "AUTH_003")
    assert_error(
        api.request("POST", "/v1/auth/logout", {"x-api-key": admin.token}), 400, "AUTH_006"
    )


def test_a_wrong_secret_does_not_log_in(api: Harness, admin: CreatedKey) -> None:
    wrong = {"x-api-key": admin.key_id, "x-api-secret": "x" * len(admin.secret)}
    assert_error(api.request("POST", "/v1/auth/login", wrong), 401, "AUTH_002")
    assert_error(api.request("POST", "/v1/auth/login"), 401, "AUTH_001")


def test_no_escalation(api: Harness, ks: Keystile, clock: Clock) -> None:
    writer = ks.keys.create(ACCT, "writer", permissions=["writeApiKeys", "readApiKeys"])
    auth = {"x-api-key": writer.token}
    beyond = api.request("POST", "/v1/apikeys", auth, json={"name": "x", "permissions": ["admin"]})
    assert_error(beyond, 403, "AUTH_004")
    assert "admin" in beyond.json["error"]["message"]
    assert ks.keys.list(ACCT).total == 1  # nothing was made

    clock.advance(1)
    theirs = ks.keys.create(OTHER, "theirs", permissions=["readUsage"])
    url = f"/v1/apikeys/{theirs.key_id}"
    for method, target, body in [
        ("GET", url, ...),
        ("PATCH", url, {"name": "mine now"}),
        ("DELETE", url, ...),
        ("POST", f"{url}/roll", {}),
    ]:
        assert_error(api.request(method, target, auth, json=body), 404, "REQ_002")
    unknown = api.request("GET", "/v1/apikeys/key_AAAAAAAAAAAAAAAA", auth)
    assert unknown.json == api.request("GET", url, auth).json  # the same 404: no id leaks
    kept = ks.keys.get(theirs.key_id)
    assert kept.name == "theirs" and kept.revoked_at is None


def test_unknown_body_fields_are_422_naming_the_field(
    api: Harness, victim: CreatedKey, auth: dict[str, str]
) -> None:
    create = api.request("POST", "/v1/apikeys", auth, json={"name": "x", "colour": "red"})
    assert_error(create, 422, "REQ_001", "colour")
    patch = api.request("PATCH", f"/v1/apikeys/{victim.key_id}", auth, json={"nmae": "typo"})
    assert_error(patch, 422, "REQ_001", "nmae")
    assert_error(api.request("GET", "/v1/apikeys?colour=red", auth), 422, "REQ_001", "colour")
    assert_error(api.request("POST", "/v1/apikeys", auth, json={}), 422, "REQ_001", "name")
    not_json = api.request("POST", "/v1/apikeys", auth, body=b"{nope")
    assert_error(not_json, 422, "REQ_001", "body")


def test_a_body_over_the_limit_is_422(api: Harness, auth: dict[str, str]) -> None:
    big = b" " * MAX_BODY + b"{}"
    assert_error(api.request("POST", "/v1/apikeys", auth, body=big), 422, "REQ_001", "body")
    assert_error(api.request("POST", "/v1/auth/login", body=big), 422, "REQ_001", "body")
    fits = b" " * (MAX_BODY - 20) + b'{"name": "padded"}'
    assert api.request("POST", "/v1/apikeys", auth, body=fits).status == 201


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("PUT", "/v1/apikeys", "GET, POST"),
        ("DELETE", "/v1/apikeys", "GET, POST"),
        ("OPTIONS", "/v1/apikeys", "GET, POST"),
        ("POST", "/v1/apikeys/{victim}", "GET, PATCH, DELETE"),
        ("GET", "/v1/apikeys/{victim}/roll", "POST"),
        ("GET", "/v1/auth/logout", "POST"),
        ("DELETE", "/v1/audit", "GET"),
        ("HEAD", "/v1/usage", "GET"),
    ],
)
def test_wrong_methods_are_405_with_allow(
    api: Harness,
    victim: CreatedKey,
    auth: dict[str, str],
    method: str,
    target: str,
    allow: str,
) -> None:
    reply = api.request(method, target.replace("{victim}", victim.key_id), auth)
    assert reply.status == 405 and reply.headers["allow"] == allow
    if method == "HEAD":
        assert reply.body == b""
    else:
        assert_error(reply, 405, "REQ_003")


@pytest.mark.parametrize(
    ("method", "target"), [("GET", "/v1/auth/login"), ("PUT", "/v1/openapi.json")]
)
def test_public_paths_answer_405_without_a_key(api: Harness, method: str, target: str) -> None:
    assert_error(api.request(method, target), 405, "REQ_003")


@pytest.mark.parametrize(
    "target",
    ["/v1/", "/v1/nope", "/v1/apikeys/a/b", "/v1/apikeys/x/roll/again", "/v1/auth", "/v1/APIKEYS"],
)
def test_unknown_paths_are_404(api: Harness, auth: dict[str, str], target: str) -> None:
    assert_error(api.request("GET", target, auth), 404, "REQ_002")


def test_unknown_paths_and_private_routes_need_a_key(api: Harness, victim: CreatedKey) -> None:
    assert_error(api.request("GET", "/v1/nope"), 401, "AUTH_001")
    assert_error(api.request("GET", "/v1/apikeys"), 401, "AUTH_001")
    assert_error(api.request("DELETE", f"/v1/apikeys/{victim.key_id}"), 401, "AUTH_001")


def test_login_and_the_document_need_no_key(api: Harness, ks: Keystile) -> None:
    document = api.request("GET", "/v1/openapi.json")
    assert document.status == 200 and document.json["openapi"].startswith("3.1")
    assert document.headers["content-type"] == "application/json"
    assert "/apikeys" in document.json["paths"]
    assert_error(api.request("POST", "/v1/auth/login"), 401, "AUTH_001")  # login checks itself
    assert counted(ks) == (0, 0)


def test_management_requests_cost_no_pages_but_are_counted(
    api: Harness, ks: Keystile, victim: CreatedKey, auth: dict[str, str]
) -> None:
    api.request("GET", "/v1/apikeys", auth)
    api.request("POST", "/v1/apikeys", auth, json={"name": "n"})
    api.request("PATCH", f"/v1/apikeys/{victim.key_id}", auth, json={"name": "v"})
    api.request("GET", "/v1/audit", auth)
    api.request("GET", "/v1/apikeys/key_AAAAAAAAAAAAAAAA", auth)  # a 404 is still a request
    assert counted(ks) == (0, 5)
    assert api.request("GET", "/jobs", auth).status == 200
    assert counted(ks) == (1, 6)
    # The app's own routes under the same prefix are not management routes: they pay.
    assert api.request("GET", "/v1/jobs", auth).status == 200
    assert api.request("GET", "/v1/jobs/", auth).status in (200, 301, 307, 308, 404)
    assert counted(ks)[0] == 3


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_management_api_works_when_the_quota_is_spent(
    make_keystile: Make, clock: Clock, framework: str
) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=1)
    admin = ks.keys.create(ACCT, "admin", permissions=ALL)
    harness = make_harness(framework, ks)
    try:
        auth = {"x-api-key": admin.token}
        assert harness.request("GET", "/jobs", auth).status == 200
        assert_error(harness.request("GET", "/jobs", auth), 429, "BILLING_001")
        assert harness.request("GET", "/v1/apikeys", auth).status == 200
        assert harness.request("GET", "/v1/usage", auth).json["remaining"] == 0
    finally:
        harness.close()


# -- every framework answers alike ------------------------------------------------------------

#: Requests whose answers do not depend on generated ids: compared across frameworks.
SAME: list[tuple[str, str, bool, bytes]] = [
    ("GET", "/v1/openapi.json", False, b""),
    ("POST", "/v1/auth/login", False, b""),
    ("POST", "/v1/auth/login", False, b'{"remember": true}'),
    ("GET", "/v1/auth/login", False, b""),
    ("POST", "/v1/auth/logout", True, b""),
    ("GET", "/v1/nope", False, b""),
    ("GET", "/v1/nope", True, b""),
    ("GET", "/v1/", True, b""),
    ("GET", "/v1//apikeys", True, b""),
    ("GET", "/v1/apikeys/?search=zzz", True, b""),
    ("GET", "/v1/apikeys/key_AAAAAAAAAAAAAAAA", True, b""),
    ("PUT", "/v1/apikeys", True, b""),
    ("OPTIONS", "/v1/apikeys", True, b""),
    ("HEAD", "/v1/usage", True, b""),
    ("HEAD", "/v1/openapi.json", False, b""),
    ("GET", "/v1/apikeys?limit=x", True, b""),
    ("GET", "/v1/apikeys?limit=1&limit=2", True, b""),
    ("GET", "/v1/apikeys?search=%E2%9C%93", True, b""),
    ("GET", "/v1/usage?month=2026-13", True, b""),
    ("GET", "/v1/audit?cursor=abc", True, b""),
    ("POST", "/v1/apikeys", True, b"[]"),
    ("POST", "/v1/apikeys", True, b"\xff\xfe"),
    ("POST", "/v1/apikeys", True, b'{"name": 5}'),
    ("POST", "/v1/apikeys", True, b'{"name": "x", "permissions": ["nope"]}'),
    ("POST", "/v1/apikeys", True, b" " * (MAX_BODY + 1)),
    ("PATCH", "/v1/apikeys/key_AAAAAAAAAAAAAAAA", True, b'{"name": "x"}'),
]
#: Headers a server or framework adds on its own; content-length has its own test below.
TRANSPORT = {"date", "server", "connection", "transfer-encoding", "content-length"}


def answers(name: str, make_keystile: Make, clock: Clock) -> list[tuple[Any, ...]]:
    ks = make_keystile(clock=clock)
    admin = ks.keys.create(ACCT, "admin", permissions=ALL)
    harness = make_harness(name, ks)
    try:
        out = []
        for method, target, keyed, body in SAME:
            reply = harness.request(
                method, target, {"x-api-key": admin.token} if keyed else None, body=body
            )
            headers = {k: v for k, v in reply.headers.items() if k not in TRANSPORT}
            out.append((method, target, reply.status, headers, reply.body))
        return out
    finally:
        harness.close()


def test_every_framework_answers_alike(make_keystile: Make, clock: Clock) -> None:
    reference = answers("starlette", make_keystile, clock)
    for name in FRAMEWORKS[1:]:
        for expected, got in zip(reference, answers(name, make_keystile, clock), strict=True):
            assert got == expected, f"{name} differs from starlette on {expected[:2]}"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_one_content_length(make_keystile: Make, framework: str) -> None:
    harness = make_harness(framework, make_keystile())
    try:
        for target in ("/v1/openapi.json", "/v1/nope", "/v1/auth/login"):
            reply = harness.request("GET", target)
            assert reply.headers["content-length"] == str(len(reply.body)), (target, reply)
    finally:
        harness.close()


# -- Flask: where the blueprint learns its engine and prefix ----------------------------------


@pytest.mark.parametrize("given", ["extension", "engine", "none"])
def test_flask_blueprint_finds_its_engine(ks: Keystile, admin: CreatedKey, given: str) -> None:
    app = Flask("given")
    extension = FlaskKeystile(app, keystile=ks)
    keystile: Any = {"extension": extension, "engine": ks, "none": None}[given]
    app.register_blueprint(management_blueprint("/v1", keystile))
    harness = FlaskApi(app)
    assert harness.request("GET", "/v1/openapi.json").status == 200
    assert harness.request("GET", "/v1/apikeys", {"x-api-key": admin.token}).json["total"] == 1


def test_flask_extension_with_settings_dict() -> None:
    app = Flask("from_settings")
    extension = FlaskKeystile(app, {"store": "memory://"})
    app.register_blueprint(management_blueprint("/keys", extension))
    try:
        harness = FlaskApi(app)
        assert harness.request("GET", "/keys/openapi.json").status == 200
        assert_error(harness.request("GET", "/keys/apikeys"), 401, "AUTH_001")
    finally:
        extension.engine.close()


def test_flask_prefix_given_at_registration_and_nested(ks: Keystile, admin: CreatedKey) -> None:
    app = Flask("prefixes")
    FlaskKeystile(app, keystile=ks)
    app.register_blueprint(management_blueprint("/v1"), url_prefix="/admin/keys")
    parent = Blueprint("parent", __name__, url_prefix="/api")
    parent.register_blueprint(management_blueprint("/v2", name="nested"))
    app.register_blueprint(parent)
    harness = FlaskApi(app)
    auth = {"x-api-key": admin.token}
    for prefix in ("/admin/keys", "/api/v2"):
        assert harness.request("GET", f"{prefix}/openapi.json").status == 200
        assert harness.request("GET", f"{prefix}/apikeys", auth).json["total"] == 1
        assert_error(harness.request("GET", f"{prefix}/nope", auth), 404, "REQ_002")
    assert harness.request("GET", "/v1/openapi.json").status == 401  # not mounted there
    assert counted(ks) == (2, 4)  # only the API's own routes are free; "/nope" is not one


def test_flask_blueprint_at_the_root(ks: Keystile, admin: CreatedKey) -> None:
    app = Flask("root")
    FlaskKeystile(app, keystile=ks)
    app.register_blueprint(management_blueprint(""))
    harness = FlaskApi(app)
    assert harness.request("GET", "/openapi.json").status == 200
    assert harness.request("GET", "/apikeys", {"x-api-key": admin.token}).status == 200


def test_flask_blueprint_needs_the_extension_or_an_engine(ks: Keystile) -> None:
    app = Flask("no_extension")
    with pytest.raises(RuntimeError, match="Keystile"):
        app.register_blueprint(management_blueprint())


def test_flask_blueprint_refuses_an_engine_the_app_does_not_use(make_keystile: Make) -> None:
    app = Flask("two_engines")
    FlaskKeystile(app, keystile=make_keystile())
    with pytest.raises(ValueError, match="engine"):
        app.register_blueprint(management_blueprint("/v1", make_keystile()))


def test_flask_one_blueprint_on_two_apps(make_keystile: Make) -> None:
    blueprint = management_blueprint("/v1")
    engines = [make_keystile(), make_keystile()]
    apps = []
    for i, engine in enumerate(engines):
        app = Flask(f"app{i}")
        FlaskKeystile(app, keystile=engine)
        app.register_blueprint(blueprint)
        apps.append(app)
    for i, app in enumerate(apps):
        mine = engines[i].keys.create(ACCT, f"key {i}", permissions=ALL)
        listed = FlaskApi(app).request("GET", "/v1/apikeys", {"x-api-key": mine.token}).json
        assert [item["name"] for item in listed["items"]] == [f"key {i}"]


class Exploding(io.RawIOBase):
    """A request body nobody may read."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise AssertionError("the body was read")


class Counting(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.taken = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.taken += len(chunk)
        return chunk


def test_flask_a_declared_length_over_the_limit_is_not_read(
    ks: Keystile, auth: dict[str, str]
) -> None:
    environ = wsgi_environ("POST", "/v1/apikeys", auth, b"")
    environ.update({"CONTENT_LENGTH": str(10 * MAX_BODY), "wsgi.input": Exploding()})
    assert_error(call_wsgi(flask_app(ks), environ), 422, "REQ_001", "body")


@pytest.mark.parametrize("size", [100, MAX_BODY, 10 * MAX_BODY])
def test_flask_a_chunked_body_is_read_up_to_the_limit(
    ks: Keystile, auth: dict[str, str], size: int
) -> None:
    body = b'{"name": "chunked"}'.ljust(size)
    stream = Counting(body)
    environ = wsgi_environ("POST", "/v1/apikeys", auth, b"")
    environ.update({"wsgi.input": stream, "wsgi.input_terminated": True})
    environ["CONTENT_TYPE"] = "application/json"
    reply = call_wsgi(flask_app(ks), environ)
    if size <= MAX_BODY:
        assert reply.status == 201, reply.text
    else:
        assert_error(reply, 422, "REQ_001", "body")
        assert stream.taken <= MAX_BODY + 1


# -- Django: the prefix, CSRF, the body -------------------------------------------------------


def test_django_under_any_include_prefix(ks: Keystile, admin: CreatedKey) -> None:
    django_views.mount("/api/v2", ks)
    harness = DjangoSyncApi(ks)
    auth = {"x-api-key": admin.token}
    assert harness.request("GET", "/api/v2/openapi.json").status == 200
    assert harness.request("GET", "/api/v2/apikeys", auth).json["total"] == 1
    assert_error(harness.request("GET", "/api/v2/nope", auth), 404, "REQ_002")
    assert counted(ks) == (1, 2)  # only the API's own routes are free; "/nope" is not one
    assert harness.request("GET", "/v1/openapi.json").status == 401  # that one is not mounted


def test_django_mount_reads_the_setting_and_is_idempotent(ks: Keystile) -> None:
    with django_settings(ks, KEYSTILE_MANAGEMENT_PREFIX="/v1"):
        assert django_views.mounted("/v1")  # building the engine mounted it from the setting
        django_views.mount()
        assert django_views.mounted("/v1/") and django_views.mounted("v1")
        before = ks.admission.management_mounts
        django_views.mount()
        django_views.mount("/v1/", ks)
        assert ks.admission.management_mounts == before
        assert ks.is_exempt("/v1/auth/login") and ks.is_exempt("/v1/openapi.json")
    with django_settings(ks), pytest.raises(ValueError, match="KEYSTILE_MANAGEMENT_PREFIX"):
        django_views.mount()


def test_django_an_unmounted_prefix_is_mounted_on_first_use_with_a_warning(
    ks: Keystile,
    admin: CreatedKey,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A logging dictConfig elsewhere in the run (lint_imports in tests/test_layout.py) disables
    # the loggers that exist by then, this one among them.
    monkeypatch.setattr(logging.getLogger("keystile"), "disabled", False)
    harness = DjangoSyncApi(ks)
    assert harness.request("GET", "/v1/openapi.json").status == 401  # the engine doesn't know
    with caplog.at_level(logging.WARNING, logger="keystile"):
        listed = harness.request("GET", "/v1/apikeys", {"x-api-key": admin.token})
    assert listed.status == 200
    assert "KEYSTILE_MANAGEMENT_PREFIX = '/v1'" in caplog.text
    assert counted(ks) == (1, 1)  # that first request was billed: hence the warning
    assert harness.request("GET", "/v1/openapi.json").status == 200
    harness.request("GET", "/v1/apikeys", {"x-api-key": admin.token})
    assert counted(ks) == (1, 2)


def test_django_view_is_csrf_exempt(ks: Keystile, auth: dict[str, str]) -> None:
    django_views.mount("/v1", ks)
    middleware = [*project.SETTINGS["MIDDLEWARE"]]
    middleware.insert(1, "django.middleware.csrf.CsrfViewMiddleware")
    harness = DjangoSyncApi(ks, Client(enforce_csrf_checks=True), MIDDLEWARE=middleware)
    assert harness.request("POST", "/v1/apikeys", auth, json={"name": "no csrf"}).status == 201


def test_django_a_declared_length_over_the_limit_is_not_read(ks: Keystile) -> None:
    django_views.mount("/v1", ks)
    request = RequestFactory().post("/v1/auth/login", data=b"", content_type="application/json")
    request.META.update({"CONTENT_LENGTH": str(10 * MAX_BODY), "wsgi.input": Exploding()})
    request._stream = Exploding()
    request.principal = None
    with django_settings(ks):
        response = django_views.api(request, rest="auth/login")
    reply = Reply(response.status_code, lower(response.headers.items()), response.content)
    assert_error(reply, 422, "REQ_001", "body")
