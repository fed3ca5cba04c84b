"""keystile.django: one middleware for the sync and async stacks, request.principal and
request.state, the decorators in every view form, AuthError from a view, the lazily built
shared engine, and the system checks. (The behaviour and quota suites run Django too: see
tests/behaviour and tests/test_wsgi.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("django")

from .djangoproj import settings as project

project.configure()

from django.core.management import call_command  # noqa: E402
from django.core.management.base import SystemCheckError  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.test import RequestFactory, override_settings  # noqa: E402

from keystile import Keystile  # noqa: E402
from keystile.django import (  # noqa: E402
    KeystileMiddleware,
    get_engine,
    requires,
    reset_engine,
)
from keystile.django.checks import check_settings  # noqa: E402

from .behaviour.harness import Harness  # noqa: E402
from .behaviour.harness_sync import DjangoAsyncHarness, DjangoSyncHarness  # noqa: E402
from .conftest import FAST_ARGON2, Clock  # noqa: E402

ACCOUNT = "acct_1"
Make = Callable[..., Keystile]


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def ks(make_keystile: Make, clock: Clock) -> Keystile:
    return make_keystile(clock=clock, monthly_page_limit=10, exempt_paths=["/health"])


@pytest.fixture
def keys(ks: Keystile) -> tuple[str, str]:
    reader = ks.keys.create(ACCOUNT, "reader", permissions=["read"]).token
    admin = ks.keys.create(ACCOUNT, "admin", permissions=["*"]).token
    return reader, admin


def used(ks: Keystile) -> int:
    return ks.quotas.usage(ACCOUNT).pages


@pytest.fixture(params=["sync", "async"])
def stack(request: pytest.FixtureRequest, ks: Keystile) -> Iterator[Harness]:
    harness: Harness = DjangoSyncHarness(ks) if request.param == "sync" else DjangoAsyncHarness(ks)
    yield harness
    harness.close()


# ---------------------------------------------------------------------------- middleware


def test_one_class_for_both_stacks() -> None:
    from asgiref.sync import iscoroutinefunction

    assert KeystileMiddleware.sync_capable and KeystileMiddleware.async_capable

    async def async_view(request: Any) -> HttpResponse:
        return HttpResponse()

    assert iscoroutinefunction(KeystileMiddleware(async_view))
    assert not iscoroutinefunction(KeystileMiddleware(lambda request: HttpResponse()))


def _forbid(ks: Keystile, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the wrong (sync/async) engine call for this stack")

    for name in names:
        monkeypatch.setattr(ks, name, forbidden)


def test_the_async_stack_stays_on_the_event_loop(
    ks: Keystile, keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, admin = keys
    _forbid(ks, monkeypatch, "authenticate", "settle", "reserve")
    harness = DjangoAsyncHarness(ks)
    try:
        assert harness.request("GET", "/whoami", bearer(reader)).status == 200
        assert harness.request("GET", "/read", bearer(reader)).status == 200
        assert harness.request("GET", "/needs-admin", bearer(reader)).status == 403
        assert harness.request("GET", "/expensive", bearer(admin)).json["reserved"] == 3
        assert harness.request("GET", "/expensive/class", bearer(admin)).status == 200
        assert harness.request("GET", "/failing?s=500", bearer(admin)).status == 500
        assert harness.request("GET", "/whoami").status == 401
    finally:
        harness.close()
    assert used(ks) == 1 + 1 + 3 + 3


def test_the_sync_stack_blocks(
    ks: Keystile, keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, admin = keys
    _forbid(ks, monkeypatch, "authenticate_async", "settle_async", "reserve_async")
    harness = DjangoSyncHarness(ks)
    assert harness.request("GET", "/whoami", bearer(reader)).status == 200
    assert harness.request("GET", "/needs-admin", bearer(reader)).status == 403
    assert harness.request("GET", "/expensive", bearer(admin)).json["reserved"] == 3
    assert used(ks) == 1 + 3


def test_request_principal_and_state(ks: Keystile, keys: tuple[str, str]) -> None:
    reader, _ = keys
    seen: list[Any] = []

    def view(request: Any) -> HttpResponse:
        seen.append(request)
        return HttpResponse("ok")

    middleware = KeystileMiddleware(view)
    factory = RequestFactory()
    with override_settings(KEYSTILE=ks):
        response = middleware(factory.get("/x", headers={"Authorization": f"Bearer {reader}"}))
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining"] == "9"
        response.close()
        request = seen[-1]
        assert request.principal is request.state.principal
        assert request.principal.account_id == ACCOUNT
        assert request.state.keystile is ks
        middleware(factory.get("/health"))
        assert seen[-1].principal is None and not hasattr(seen[-1].state, "principal")
        refused = middleware(factory.get("/x"))
        assert refused.status_code == 401 and len(seen) == 2
    assert used(ks) == 1


def test_settled_when_the_response_is_closed(ks: Keystile, keys: tuple[str, str]) -> None:
    reader, _ = keys

    def view(request: Any) -> HttpResponse:
        request.principal.charge(5)
        return HttpResponse("ok")

    with override_settings(KEYSTILE=ks):
        response = KeystileMiddleware(view)(
            RequestFactory().get("/x", headers={"Authorization": f"Bearer {reader}"})
        )
    assert used(ks) == 1  # reserved; the server closes the response once it is sent
    response.close()
    assert used(ks) == 5


# ---------------------------------------------------------------------------- decorators


VIEW_FORMS = [
    ("sync", "/needs-admin"),  # a function
    ("sync", "/needs-admin/class"),  # @requires on the class
    ("sync", "/needs-admin/method"),  # @requires on the handler method
    ("async", "/needs-admin"),
    ("async", "/needs-admin/method"),
    ("async", "/needs-admin/dispatch"),  # method_decorator(requires(...), name="dispatch")
]


@pytest.mark.parametrize(("kind", "path"), VIEW_FORMS)
def test_requires_in_every_view_form(
    ks: Keystile, keys: tuple[str, str], kind: str, path: str
) -> None:
    reader, admin = keys
    stack: Harness = DjangoSyncHarness(ks) if kind == "sync" else DjangoAsyncHarness(ks)
    try:
        refused = stack.request("GET", path, bearer(reader))
        assert (refused.status, refused.json["error"]["code"]) == (403, "AUTH_004")
        assert "admin" in refused.json["error"]["message"]
        assert "x-ratelimit-remaining" not in refused.headers
        assert used(ks) == 0  # refunded
        allowed = stack.request("GET", path, bearer(admin))
        assert (allowed.status, allowed.text) == (200, "admin")
        assert used(ks) == 1
    finally:
        stack.close()


def test_cost_on_a_class_based_view(stack: Harness, ks: Keystile, keys: tuple[str, str]) -> None:
    _, admin = keys
    for _ in range(3):
        assert stack.request("GET", "/expensive/class", bearer(admin)).status == 200
    refused = stack.request("GET", "/expensive/class", bearer(admin))
    assert (refused.status, refused.json["error"]["code"]) == (429, "BILLING_001")
    assert used(ks) == 9


def test_an_auth_error_raised_in_a_view_is_rendered(
    stack: Harness, ks: Keystile, keys: tuple[str, str]
) -> None:
    reader, _ = keys
    refused = stack.request("GET", "/raises", bearer(reader))
    assert (refused.status, refused.json["error"]["code"]) == (403, "AUTH_004")
    assert refused.headers["content-type"] == "application/json"
    assert used(ks) == 0


def test_decorators_without_the_middleware_answer_401() -> None:
    @requires("read")
    def view(request: Any) -> HttpResponse:
        return HttpResponse("never")

    @requires("read")
    async def async_view(request: Any) -> HttpResponse:
        return HttpResponse("never")

    request = RequestFactory().get("/x")
    assert view(request).status_code == 401
    assert asyncio.run(async_view(request)).status_code == 401
    with pytest.raises(TypeError, match="receives the request"):
        view("not a request")
    with pytest.raises(TypeError):
        requires("x")(type("NotAView", (), {}))


def test_a_wrapped_request_is_found(ks: Keystile, keys: tuple[str, str]) -> None:
    """Django REST framework's Request wraps the HttpRequest as ``_request``."""
    reader, _ = keys

    class Wrapped:
        def __init__(self, request: Any) -> None:
            self._request = request

    @requires("read")
    def handler(view: Any, request: Wrapped) -> HttpResponse:
        return HttpResponse("ok")

    @requires("admin")
    def admin_handler(view: Any, request: Wrapped) -> HttpResponse:
        return HttpResponse("never")

    seen: list[Any] = []

    def view(request: Any) -> HttpResponse:
        seen.append(request)
        return HttpResponse()

    with override_settings(KEYSTILE=ks):
        KeystileMiddleware(view)(
            RequestFactory().get("/x", headers={"Authorization": f"Bearer {reader}"})
        ).close()
    wrapped = Wrapped(seen[0])
    assert handler(object(), wrapped).content == b"ok"
    assert admin_handler(object(), wrapped).status_code == 403


def test_asgi_reads_the_raw_headers_so_underscore_names_stay_apart(
    ks: Keystile, keys: tuple[str, str]
) -> None:
    """Django's ASGIRequest.META maps X_Api_Key to HTTP_X_API_KEY; the scope does not."""
    from starlette.testclient import TestClient

    reader, _ = keys
    harness = DjangoAsyncHarness(ks)
    try:
        with harness.overrides:
            client: TestClient = harness.client
            response = client.get("/whoami", headers={"X_Api_Key": reader})
            assert response.json()["error"]["code"] == "AUTH_001"
            response = client.get("/whoami", headers={"X-Api-Key": reader})
            assert response.status_code == 200
    finally:
        harness.close()


# ------------------------------------------------------------------------------ engine


def test_the_engine_is_built_lazily_and_shared() -> None:
    settings = {"store": "memory://", "argon2": FAST_ARGON2, "exempt_paths": ["/x"]}
    with override_settings(KEYSTILE=settings):
        first = get_engine()
        assert get_engine() is first
        assert first.settings.exempt_paths == ("/x",)
        with override_settings(KEYSTILE={**settings, "exempt_paths": ["/y"]}):
            second = get_engine()
            assert second is not first and second.settings.exempt_paths == ("/y",)
        assert get_engine() is not second  # rebuilt after the change
    reset_engine()


def test_an_engine_in_settings_is_used_as_is_and_never_closed(ks: Keystile) -> None:
    with override_settings(KEYSTILE=ks):
        assert get_engine() is ks
    assert ks.keys.create(ACCOUNT, "still open").token  # the store was not closed


# ------------------------------------------------------------------------------ checks


def ids(found: list[Any]) -> list[str]:
    return [message.id for message in found]


def test_checks_pass_for_good_settings() -> None:
    assert ids(check_settings()) == ["keystile.I001"]  # admin installed, memory:// store
    with override_settings(KEYSTILE={"store": "django://"}):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("value", "code", "words"),
    [
        ({"stor": "memory://"}, "keystile.E002", "stor"),
        ({"store": "ftp://x"}, "keystile.E002", "store"),
        ({"redis_url": "redis://localhost"}, "keystile.E002", "secret"),
        ({"monthly_page_limit": -1}, "keystile.E002", "monthly_page_limit"),
        (["store", "memory://"], "keystile.E001", "dict"),
        (None, "keystile.W001", "not set"),
    ],
)
def test_checks_report_bad_settings(value: Any, code: str, words: str) -> None:
    with override_settings(KEYSTILE=value):
        found = [m for m in check_settings() if m.id == code]
    assert len(found) == 1 and words in found[0].msg, found


def test_without_keystile_the_checks_judge_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYSTILE_MONTHLY_PAGE_LIMIT", "lots")
    with override_settings(KEYSTILE=None):
        found = [m for m in check_settings() if m.id == "keystile.E002"]
        assert len(found) == 1 and "KEYSTILE_MONTHLY_PAGE_LIMIT" in found[0].msg, found
        monkeypatch.setenv("KEYSTILE_MONTHLY_PAGE_LIMIT", "500")
        assert not {"keystile.E002", "keystile.W001"} & set(ids(check_settings()))


def test_checks_warn_when_the_middleware_is_missing() -> None:
    with override_settings(MIDDLEWARE=[]):
        assert "keystile.W002" in ids(check_settings())


def test_manage_py_check_fails_on_a_bad_setting() -> None:
    with (
        override_settings(KEYSTILE={"monthly_page_limit": "lots"}),
        pytest.raises(SystemCheckError, match=r"keystile\.E002"),
    ):
        call_command("check", verbosity=0)


def test_the_migrations_match_the_models() -> None:
    call_command("makemigrations", "keystile", check=True, dry_run=True, verbosity=0)
