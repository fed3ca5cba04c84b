"""keystile.drf: Django REST framework views (APIView and ViewSet, tests/drfproj) with and
without keystile's Django middleware, in-process (DRF's APIClient and APIRequestFactory, and
the behaviour harness) and under gunicorn; the Django middleware's CSRF rule.

The behaviour suite runs the DRF app behind the middleware as one of its stacks
(tests/behaviour); here its settlement suite runs once more on DRF without the middleware,
where keystile.drf admits and settles the requests itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rest_framework")

from .djangoproj import settings as project

project.configure()

import httpx  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from rest_framework.test import APIClient, APIRequestFactory  # noqa: E402

from keystile import Keystile, Principal  # noqa: E402
from keystile.drf import KeystileAuthentication, KeyUser, Refused  # noqa: E402

from . import drfproj  # noqa: E402
from .behaviour import test_settlement as settlement  # noqa: E402
from .behaviour.harness import EXEMPT_PATHS, Harness, Result  # noqa: E402
from .behaviour.harness_sync import DjangoAsyncHarness, DRFHarness  # noqa: E402
from .behaviour.test_behaviour import assert_refused, bearer, other_secret  # noqa: E402
from .conftest import Clock  # noqa: E402
from .drfproj import views  # noqa: E402
from .services import _spawn, _stop, free_port  # noqa: E402

ACCOUNT = "acct-drf"
ROOT = Path(__file__).resolve().parent.parent
MODES = ["middleware", "alone"]


@pytest.fixture
def ks(make_keystile: Callable[..., Keystile], clock: Clock) -> Keystile:
    return make_keystile(clock=clock, exempt_paths=EXEMPT_PATHS)


def new_token(ks: Keystile, *permissions: str, account: str = ACCOUNT) -> str:
    return ks.keys.create(account, "drf key", permissions=list(permissions)).token


def used(ks: Keystile, account: str = ACCOUNT) -> int:
    ks.flush()
    pages: int = ks.quotas.usage(account).pages
    return pages


@pytest.fixture(params=MODES)
def stack(request: pytest.FixtureRequest, ks: Keystile) -> Iterator[DRFHarness]:
    harness = DRFHarness(ks, middleware=request.param == "middleware")
    yield harness
    harness.close()


@pytest.fixture
def api(ks: Keystile, stack: DRFHarness) -> Iterator[APIClient]:
    """DRF's APIClient on the same settings as ``stack``."""
    with stack.overrides():
        yield APIClient()


# ------------------------------------------ the settlement suite, without the middleware


@pytest.fixture
def client(ks: Keystile) -> Iterator[Harness]:
    harness = DRFHarness(ks, middleware=False)
    yield harness
    harness.close()


token = settlement.token
test_alone_a_served_request_is_charged = settlement.test_a_served_request_is_charged_and_says_what_is_left  # fmt: skip
test_alone_a_5xx_is_refunded = settlement.test_a_5xx_is_refunded_and_a_4xx_counted
test_alone_an_exception_is_refunded = settlement.test_an_unhandled_exception_is_refunded
test_alone_keystiles_refusal_is_refunded = settlement.test_keystiles_own_refusal_inside_the_app_is_refunded  # fmt: skip
test_alone_refused_credentials_cost_nothing = settlement.test_refused_credentials_are_never_charged
test_alone_cost_reserves = settlement.test_cost_reserves_its_pages_and_refuses_without_charging
test_alone_cost_and_real_cost = settlement.test_cost_with_a_reported_real_cost
test_alone_charge = settlement.test_charge_settles_the_real_cost
test_alone_a_stream_is_settled_when_sent = (
    settlement.test_a_streamed_body_is_settled_once_it_is_sent
)
test_alone_a_late_refusal_is_refunded = settlement.test_a_refusal_after_the_response_started_is_refunded  # fmt: skip


# -------------------------------------------------------------------- authentication


def test_401_and_403_carry_keystiles_codes_bodies_and_challenges(
    stack: DRFHarness, ks: Keystile
) -> None:
    reader = new_token(ks, "read")
    assert_refused(stack.request("GET", "/whoami"), "AUTH_001")
    assert_refused(stack.request("GET", "/whoami", bearer(other_secret(reader))), "AUTH_002")
    refused = stack.request("GET", "/write", bearer(reader))
    error = assert_refused(refused, "AUTH_004")
    assert "write" in error["message"]
    assert refused.headers["www-authenticate"].endswith(', scope="write"')
    assert "x-ratelimit-remaining" not in refused.headers  # refunded: it has no quota to show
    assert stack.request("GET", "/whoami", bearer(reader)).status == 200
    assert used(ks) == 1


def test_request_auth_is_the_principal_and_request_user_the_key(ks: Keystile) -> None:
    created = ks.keys.create(ACCOUNT, "billing robot", permissions=["read"])
    seen: list[Any] = []

    class Probe(views.KeyView):
        def get(self, request: Any) -> Any:
            seen.append(request)
            return views.Response({})

    factory = APIRequestFactory()
    with override_settings(KEYSTILE=ks):
        response = Probe.as_view()(factory.get("/x", HTTP_AUTHORIZATION=f"Bearer {created.token}"))
        response.render()
        response.close()
    assert response.status_code == 200
    request = seen[0]
    assert isinstance(request.auth, Principal) and request.auth.key_id == created.key_id
    user = request.user
    assert isinstance(user, KeyUser) and user.is_authenticated and not user.is_anonymous
    assert (user.pk, user.id, user.username) == (created.key_id, created.key_id, "billing robot")
    assert user.account_id == ACCOUNT and user.get_username() == "billing robot"
    assert not user.has_perm("auth.delete_user") and not user.is_staff
    for text in (str(user), repr(user), str(request.auth)):
        assert created.secret not in text and created.token not in text
    assert str(user) == f"billing robot ({created.key_id})"
    assert used(ks) == 1  # settled once the response was closed


def test_without_a_keystile_credential_the_next_authenticator_decides(ks: Keystile) -> None:
    """Without the middleware, Basic (or another scheme's Bearer token) is not keystile's."""
    factory = APIRequestFactory()
    authentication = KeystileAuthentication()
    with override_settings(KEYSTILE=ks):
        for headers in ({}, {"HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz"},
                        {"HTTP_AUTHORIZATION": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"},
                        {"HTTP_X_ACCOUNT_ID": "acct-2"}):  # fmt: skip
            request = views.Request(factory.get("/x", **headers))
            request.parser_context["view"] = views.WhoAmI()
            assert authentication.authenticate(request) is None, headers
        assert authentication.authenticate_header(request) == 'Bearer realm="api"'
        # DRF answers 401 with that challenge when no authenticator took the request.
        response = views.Notes.as_view()(factory.post("/notes", HTTP_AUTHORIZATION="Basic eA=="))
        response.render()
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert used(ks) == 0


def test_a_malformed_keystile_credential_is_refused_not_passed_on(ks: Keystile) -> None:
    with override_settings(KEYSTILE=ks):
        harness = DRFHarness(ks, middleware=False)
        for headers, code in [
            ({"x-api-key": "not-a-token"}, "AUTH_002"),
            ({"x-api-secret": "orphan"}, "AUTH_006"),
            ({"authorization": "Bearer sk_live_broken"}, "AUTH_002"),
        ]:
            assert_refused(harness.request("GET", "/whoami", headers), code)


def test_apiclient_with_credentials(api: APIClient, ks: Keystile) -> None:
    api.credentials(HTTP_X_API_KEY=new_token(ks, "read"))
    response = api.get("/read")
    assert response.status_code == 200 and response.json()["auth_method"] == "api_key"
    api.credentials()
    refused = api.get("/read")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "AUTH_001"


# ------------------------------------------------------------------------- permissions


def test_required_permissions_per_method(stack: DRFHarness, ks: Keystile) -> None:
    reader = bearer(new_token(ks, "reports", "reports:read"))
    assert stack.request("GET", "/reports", reader).status == 200
    assert stack.request("HEAD", "/reports", reader).status == 200  # GET's permissions
    refused = stack.request("POST", "/reports", reader)
    assert_refused(refused, "AUTH_004")
    assert refused.headers["www-authenticate"].endswith(', scope="reports reports:write"')
    # required_permissions holds for every method, on top of the method's own.
    assert_refused(stack.request("GET", "/reports", bearer(new_token(ks, "reports:*"))), "AUTH_004")
    # A method the view does not list is closed, whatever the key holds.
    everything = bearer(new_token(ks, "*"))
    assert stack.request("POST", "/reports", everything).status == 201
    assert_refused(stack.request("PUT", "/reports", everything), "AUTH_004")


def test_drf_asking_about_another_method_is_no_refusal(stack: DRFHarness, ks: Keystile) -> None:
    """OPTIONS on a generic view checks POST's permissions on the side: this request is
    served (and charged), without keystile's refusal headers."""
    reader, writer = bearer(new_token(ks, "read")), bearer(new_token(ks, "read", "write"))
    options = stack.request("OPTIONS", "/documents", reader)
    assert options.status == 200 and "actions" not in options.json
    assert "www-authenticate" not in options.headers
    assert "no-store" not in options.headers.get("cache-control", "")
    assert used(ks) == 1
    assert "POST" in stack.request("OPTIONS", "/documents", writer).json["actions"]
    assert_refused(stack.request("POST", "/documents", reader), "AUTH_004")
    assert used(ks) == 2


def test_get_required_permissions_and_the_requires_decorator(
    stack: DRFHarness, ks: Keystile
) -> None:
    reader, admin = bearer(new_token(ks, "read")), bearer(new_token(ks, "admin"))
    for path in ("/needs-admin", "/needs-admin/decorated"):
        error = assert_refused(stack.request("GET", path, reader), "AUTH_004")
        assert "admin" in error["message"]
        assert stack.request("GET", path, admin).text == "admin"
    assert used(ks) == 2  # the refusals were refunded


def test_a_viewset_by_action(api: APIClient, ks: Keystile) -> None:
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {new_token(ks, 'jobs:read')}")
    assert api.get("/jobs").json() == {"jobs": [], "account": ACCOUNT}
    refused = api.post("/jobs", {"name": "x"}, format="json")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "AUTH_004")
    assert used(ks) == 1
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {new_token(ks, 'jobs:*')}")
    created = api.post("/jobs", {"name": "nightly"}, format="json")
    assert (created.status_code, created.json()) == (201, {"name": "nightly", "reserved": 2})
    assert used(ks) == 1 + 2  # keystile_cost = {"create": 2}
    bulk = api.post("/jobs/bulk", {}, format="json")
    assert (bulk.status_code, bulk.json()) == (201, {"reserved": 7})  # @cost(7) on the action
    assert used(ks) == 1 + 2 + 7


def test_costs_per_method_and_quota_refusals(stack: DRFHarness, ks: Keystile) -> None:
    ks.quotas.set_limit(ACCOUNT, 8)
    writer = bearer(new_token(ks, "reports", "reports:*"))
    created = stack.request("POST", "/reports", writer)
    assert (created.status, created.json["reserved"]) == (201, 5)  # keystile_cost = {"POST": 5}
    assert stack.request("GET", "/reports", writer).json["used"] == 6  # GET costs the default
    refused = stack.request("POST", "/reports", writer)
    assert_refused(refused, "BILLING_001")
    assert int(refused.headers["retry-after"]) >= 1
    for _ in range(2):
        assert stack.request("GET", "/reports", writer).status == 200
    over = stack.request("GET", "/reports", writer)  # refused when it is admitted
    assert_refused(over, "BILLING_001")
    assert int(over.headers["retry-after"]) >= 1
    assert over.headers["ratelimit"].startswith('"monthly";r=0;')
    assert used(ks) == 8


def test_drf_behind_the_async_middleware(ks: Keystile) -> None:
    """Under Django's ASGI handler the middleware is async and DRF's views run in a thread."""
    harness = DjangoAsyncHarness(ks)
    harness.overrides = override_settings(KEYSTILE=ks, **drfproj.settings_for())
    try:
        reader = bearer(new_token(ks, "read"))
        assert harness.request("GET", "/read", reader).json["auth_method"] == "bearer"
        assert_refused(harness.request("GET", "/write", reader), "AUTH_004")
        assert harness.request("GET", "/expensive", reader).json["reserved"] == 3
        assert harness.request("GET", "/failing?s=502", reader).status == 502
        assert_refused(harness.request("GET", "/whoami"), "AUTH_001")
    finally:
        harness.close()
    assert used(ks) == 1 + 3


# ------------------------------------------------ DRF's own exception handler, untouched


@pytest.mark.parametrize("mode", MODES)
def test_refusals_through_drfs_default_exception_handler(ks: Keystile, mode: str) -> None:
    """Without keystile.drf.exception_handler: keystile's status, JSON body and headers."""
    harness = DRFHarness(ks, middleware=mode == "middleware", REST_FRAMEWORK={})
    ks.quotas.set_limit(ACCOUNT, 3)
    token = new_token(ks, "read")
    reader = bearer(token)
    refused = harness.request("GET", "/write", reader)
    error = assert_refused(refused, "AUTH_004")
    assert "accept" in refused.headers["vary"].lower()
    assert "x-ratelimit-remaining" not in refused.headers
    assert harness.request("GET", "/expensive", reader).status == 200
    over = harness.request("GET", "/expensive", reader)
    assert_refused(over, "BILLING_001")
    assert int(over.headers["retry-after"]) >= 1 and over.headers["ratelimit"]
    if mode == "alone":  # the credential itself is refused inside DRF too
        wrong = bearer(other_secret(token))
        assert_refused(harness.request("GET", "/whoami", wrong), "AUTH_002")
    assert error["message"] == "API key lacks the permission(s): write."
    assert used(ks) == 3


def test_refused_renders_keystiles_body_for_drfs_response() -> None:
    from keystile import AuthError
    from keystile._core.errors import INSUFFICIENT_PERMISSIONS, render

    error = AuthError(INSUFFICIENT_PERMISSIONS, "API key lacks the permission(s): x.", scope=["x"])
    exc = Refused(error)
    rendered = render(error)
    assert exc.status_code == 403 and exc.error is error
    assert json.dumps(exc.detail, separators=(",", ":")).encode() == rendered.body
    assert exc.auth_header == dict(rendered.headers)["www-authenticate"]


# -------------------------------------------------------------------- drf-spectacular


def test_drf_spectacular_shows_the_security_schemes(ks: Keystile) -> None:
    pytest.importorskip("drf_spectacular")
    from drf_spectacular.generators import SchemaGenerator

    with override_settings(KEYSTILE=ks, **drfproj.settings_for()):
        schema = SchemaGenerator(urlconf=f"{drfproj.PACKAGE}.urls").get_schema(public=True)
    schemes = schema["components"]["securitySchemes"]
    assert schemes["BearerToken"] == {
        "type": "http", "scheme": "bearer", "description": "Authorization: Bearer <token>",
    }  # fmt: skip
    assert (schemes["ApiKey"]["in"], schemes["ApiKey"]["name"]) == ("header", "x-api-key")
    assert (schemes["ApiSecret"]["in"], schemes["ApiSecret"]["name"]) == ("header", "x-api-secret")
    security = schema["paths"]["/jobs"]["get"]["security"]
    assert security == [{"BearerToken": []}, {"ApiKey": []}, {"ApiKey": [], "ApiSecret": []}]
    assert "/reports" in schema["paths"] and "post" in schema["paths"]["/reports"]


# ------------------------------------------------------------------------------ CSRF

CSRF_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "keystile.django.KeystileMiddleware",
]


@pytest.fixture
def browser(ks: Keystile) -> Iterator[Client]:
    """A Django test client that enforces CSRF (by default it skips the check), logged in."""
    project.setup_database()
    user, _ = User.objects.get_or_create(username="alice")
    with override_settings(KEYSTILE=ks, **drfproj.settings_for(MIDDLEWARE=CSRF_MIDDLEWARE)):
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        yield client


def csrf_token(client: Client) -> str:
    from django.middleware.csrf import _get_new_csrf_string

    token = _get_new_csrf_string()
    client.cookies["csrftoken"] = token
    return token


def test_a_key_authenticated_post_needs_no_csrf_token(ks: Keystile) -> None:
    created = ks.keys.create(ACCOUNT, "csrf", permissions=[])
    token = created.token
    with override_settings(KEYSTILE=ks, **drfproj.settings_for(MIDDLEWARE=CSRF_MIDDLEWARE)):
        client = Client(enforce_csrf_checks=True)
        response = client.post("/submit", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.content
        assert response.json() == {"key": created.key_id, "user": None}
        assert client.post("/submit").status_code == 401  # keystile answers first
        wrong = client.post("/submit", headers={"authorization": f"Bearer {other_secret(token)}"})
        assert wrong.status_code == 401
        assert client.post("/public/submit").status_code == 403  # not keystile's: CSRF holds


def test_a_cookie_session_post_keeps_csrf(browser: Client, ks: Keystile) -> None:
    assert browser.post("/public/submit").status_code == 403
    token = csrf_token(browser)
    allowed = browser.post("/public/submit", headers={"x-csrftoken": token})
    assert (allowed.status_code, allowed.json()) == (200, {"key": None, "user": "alice"})
    # A key as well as the session cookie: request.user is the cookie's, so CSRF holds.
    key = {"authorization": f"Bearer {new_token(ks)}"}
    browser.cookies.pop("csrftoken")
    assert browser.post("/submit", headers=key).status_code == 403
    token = csrf_token(browser)
    both = browser.post("/submit", headers={**key, "x-csrftoken": token})
    assert both.status_code == 200 and both.json()["user"] == "alice"  # Django's own user


def test_drf_session_authentication_keeps_csrf_next_to_keys(browser: Client, ks: Keystile) -> None:
    refused = browser.post("/public/notes")  # exempt from keystile: the session counts
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    token = csrf_token(browser)
    assert browser.post("/public/notes", headers={"x-csrftoken": token}).json() == {
        "user": "alice", "by_key": False,
    }  # fmt: skip
    fresh = Client(enforce_csrf_checks=True)
    by_key = fresh.post("/notes", headers={"authorization": f"Bearer {new_token(ks)}"})
    assert by_key.status_code == 200 and by_key.json()["by_key"] is True


# ------------------------------------------------------------------------------ gunicorn


class Server:
    def __init__(self, base: str, engine: Keystile, mode: str) -> None:
        self.base = base
        self.engine = engine
        self.mode = mode
        self.http = httpx.Client(base_url=base, timeout=30)

    def token(self, *permissions: str, account: str) -> str:
        return new_token(self.engine, *permissions, account=account)


@pytest.fixture(scope="module", params=MODES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # fmt: skip
    workdir = tmp_path_factory.mktemp(f"drf-{request.param}")
    store = f"sqlite:///{workdir}/keys.db"
    engine = Keystile({"store": store, "argon2": project.FAST_ARGON2})
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": f"{drfproj.PACKAGE}.server_settings",
        "KEYSTILE_DRF_STORE": store,
        "KEYSTILE_DRF_MIDDLEWARE": "1" if request.param == "middleware" else "0",
    }
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    cmd = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}",
           f"{drfproj.PACKAGE}.wsgi:application"]  # fmt: skip
    proc = _spawn(cmd, workdir / "gunicorn.log", ready, 60.0, signal.SIGTERM, cwd=ROOT, env=env)
    assert not isinstance(proc, str), proc
    running = Server(base, engine, request.param)
    try:
        yield running
    finally:
        running.http.close()
        _stop(proc, signal.SIGTERM)
        engine.close()


def served(response: httpx.Response) -> Result:
    try:
        body = response.json()
    except ValueError:
        body = None
    return Result(response.status_code, dict(response.headers), body, response.text)


def test_under_gunicorn_refusals_and_permissions(server: Server) -> None:
    reader = server.token("read", account="acct-g1")
    http = server.http
    assert http.get("/whoami", headers=bearer(reader)).json()["account_id"] == "acct-g1"
    assert_refused(served(http.get("/whoami")), "AUTH_001")
    assert_refused(served(http.get("/whoami", headers=bearer(other_secret(reader)))), "AUTH_002")
    refused = served(http.get("/write", headers=bearer(reader)))
    assert_refused(refused, "AUTH_004")
    problem = http.get("/write", headers={**bearer(reader), "accept": "application/problem+json"})
    assert problem.headers["content-type"] == "application/problem+json"
    assert problem.json()["code"] == "AUTH_004"


def test_under_gunicorn_costs_are_charged_and_refunded(server: Server) -> None:
    writer = bearer(server.token("jobs:*", account="acct-g2"))
    http = server.http

    def remaining() -> int:
        return int(http.get("/jobs", headers=writer).headers["x-ratelimit-remaining"])

    assert remaining() == 99
    created = http.post("/jobs", json={"name": "n"}, headers=writer)
    assert (created.status_code, created.json()) == (201, {"name": "n", "reserved": 2})
    assert created.headers["x-ratelimit-remaining"] == "97"
    assert http.get("/failing?s=503", headers=writer).status_code == 503
    assert http.get("/boom", headers=writer).status_code == 500
    assert http.get("/needs-admin", headers=writer).status_code == 403
    assert remaining() == 96  # the 5xx, the exception and the refusal were refunded


def test_under_gunicorn_csrf_keeps_to_cookies(server: Server) -> None:
    key = bearer(server.token(account="acct-g3"))
    http = server.http
    response = http.post("/submit", headers=key, content=b"x=1")
    if server.mode == "alone":  # nothing verified the key of a plain Django view: CSRF holds
        assert response.status_code == 403
    else:
        assert response.status_code == 200 and response.json()["key"].startswith("key_")
    http.cookies.clear()
    assert http.post("/public/submit", headers={"cookie": "sessionid=x"}).status_code == 403
    assert http.post("/submit", headers={**key, "cookie": "sessionid=x"}).status_code == 403
    by_key = http.post("/notes", headers=key)  # a DRF view: DRF's own CSRF rule, key first
    assert by_key.status_code == 200 and by_key.json()["by_key"] is True


DEFAULTS_SETTINGS = """\
SECRET_KEY = "x"
ROOT_URLCONF = "drf_defaults_urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "rest_framework",
                  "keystile.django"]
MIDDLEWARE = ["keystile.django.KeystileMiddleware"]
KEYSTILE = {"store": "memory://"}
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["keystile.drf.KeystileAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["keystile.drf.HasRequiredPermissions"],
    "EXCEPTION_HANDLER": "keystile.drf.exception_handler",
}
"""


def test_the_classes_load_as_drf_defaults_before_anything_imports_them(tmp_path: Path) -> None:
    # DRF imports the default classes while rest_framework.views is itself being imported:
    # keystile.drf must not need that module at its own import.
    (tmp_path / "drf_defaults_settings.py").write_text(DEFAULTS_SETTINGS)
    urls = "from rest_framework.views import APIView  # noqa: F401\nurlpatterns = []\n"
    (tmp_path / "drf_defaults_urls.py").write_text(urls)  # the check imports the URLconf
    code = (
        "import django; django.setup()\n"
        "from django.core.management import call_command; call_command('check')\n"
        "from rest_framework.views import APIView\n"
        "print([c.__name__ for c in APIView.authentication_classes])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(tmp_path)]),
            "DJANGO_SETTINGS_MODULE": "drf_defaults_settings",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("['KeystileAuthentication']")
