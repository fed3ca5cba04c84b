"""keystile.wsgi: reading headers from an environ, the middleware's response and settlement
rules, and the monthly-quota behaviour on every WSGI-family adapter (WSGI, Flask, Django
sync and async), mirroring tests/test_quotas_starlette.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from keystile import Keystile, Principal
from keystile._core.errors import INSUFFICIENT_PERMISSIONS, AuthError
from keystile.wsgi import (
    KeystileMiddleware,
    cost,
    environ_headers,
    principal_of,
    request_path,
    requires,
)

from .behaviour.harness import Harness, Result
from .behaviour.harness_sync import QUOTA_HARNESSES, call_wsgi, server_environ
from .conftest import Clock

ACCOUNT = "acct_1"
Make = Callable[..., Keystile]
Environ = dict[str, Any]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------ reading the environ


def test_environ_headers_maps_http_keys_to_lowercase_dashed_names() -> None:
    environ = {
        "HTTP_X_API_KEY": "tok",
        "HTTP_AUTHORIZATION": "Bearer x",
        "HTTP_IDEMPOTENCY_KEY": "order-1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "2",
        "PATH_INFO": "/x",
        "REQUEST_METHOD": "GET",
        "wsgi.input": object(),
        "HTTP_X_NOT_TEXT": b"bytes are not a WSGI header value",
    }
    assert sorted(environ_headers(environ)) == [
        ("authorization", "Bearer x"),
        ("content-length", "2"),
        ("content-type", "application/json"),
        ("idempotency-key", "order-1"),
        ("x-api-key", "tok"),
    ]


def test_a_comma_in_a_credential_header_is_the_header_sent_twice() -> None:
    environ = {
        "HTTP_X_API_KEY": "a,b",
        "HTTP_AUTHORIZATION": "Bearer a, Bearer b",
        "HTTP_X_ACCOUNT_ID": "acct-1,acct-1",
        "HTTP_X_API_SECRET": "s,",
        "HTTP_ACCEPT": "text/html, application/json",  # not a credential: left whole
    }
    headers = environ_headers(environ)
    assert [v for k, v in headers if k == "x-api-key"] == ["a", "b"]
    assert [v for k, v in headers if k == "authorization"] == ["Bearer a", " Bearer b"]
    assert [v for k, v in headers if k == "x-account-id"] == ["acct-1", "acct-1"]
    assert [v for k, v in headers if k == "x-api-secret"] == ["s", ""]
    assert ("accept", "text/html, application/json") in headers


def test_request_path_decodes_the_pep3333_latin1_path() -> None:
    assert request_path({"PATH_INFO": "/caf\xc3\xa9"}) == "/café"
    assert request_path({"PATH_INFO": "/\xff"}) == "/\xff"  # not UTF-8: kept as given
    assert request_path({}) == "/"


def test_the_server_simulation_drops_underscore_names_and_joins_repeats() -> None:
    environ = server_environ(
        "GET", "/p?q=1", [("X-Api-Key", "a"), ("x-api-key", "b"), ("X_Api_Key", "evil")]
    )
    assert environ["HTTP_X_API_KEY"] == "a,b"
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/p", "q=1")


# --------------------------------------------------------------------------------- the app


def make_app(ks: Keystile, seen: list[Environ] | None = None, **routes: Any) -> Any:
    def default(environ: Environ, start_response: Any) -> list[bytes]:
        if seen is not None:
            seen.append(environ)
        start_response("200 OK", [("content-type", "text/plain"), ("x-app", "1")])
        return [b"hello"]

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        route = routes.get(environ["PATH_INFO"].strip("/"), default)
        result: Iterable[bytes] = route(environ, start_response)
        return result

    return KeystileMiddleware(app, keystile=ks)


@pytest.fixture
def ks(make_keystile: Make, clock: Clock) -> Keystile:
    return make_keystile(clock=clock, monthly_page_limit=10, exempt_paths=["/health"])


@pytest.fixture
def token(ks: Keystile) -> str:
    return ks.keys.create(ACCOUNT, "app", permissions=["read"]).token


def used(ks: Keystile) -> int:
    return ks.quotas.usage(ACCOUNT).pages


def get(app: Any, path: str, headers: Any = None) -> Result:
    return call_wsgi(app, server_environ("GET", path, headers))


def test_principal_and_engine_land_in_the_environ(ks: Keystile, token: str) -> None:
    seen: list[Environ] = []
    result = get(make_app(ks, seen), "/", bearer(token))
    assert (result.status, result.text) == (200, "hello")
    principal = seen[0]["keystile.principal"]
    assert principal.account_id == ACCOUNT and principal.auth_method == "bearer"
    assert seen[0]["keystile"] is ks
    assert principal_of(seen[0]) is principal


def test_exempt_paths_pass_untouched(ks: Keystile, token: str) -> None:
    seen: list[Environ] = []
    app = make_app(ks, seen)
    for headers in (None, bearer(token), bearer("garbage")):
        result = get(app, "/health", headers)
        assert result.status == 200
        assert "x-ratelimit-limit" not in result.headers
    assert all("keystile.principal" not in e and "keystile" not in e for e in seen)
    assert used(ks) == 0


def test_refusals_come_from_the_core_table(ks: Keystile) -> None:
    result = get(make_app(ks), "/")
    assert result.status == 401
    assert result.json["error"]["code"] == "AUTH_001"
    assert result.headers["www-authenticate"] == 'Bearer realm="api"'
    assert result.headers["cache-control"] == "no-store"
    assert result.headers["content-length"] == str(len(result.text))


def test_quota_headers_are_added_in_start_response(ks: Keystile, token: str) -> None:
    result = get(make_app(ks), "/", bearer(token))
    assert result.headers["x-app"] == "1"
    assert result.headers["x-ratelimit-limit"] == "10"
    assert result.headers["x-ratelimit-remaining"] == "9"
    assert result.headers["ratelimit-policy"].startswith('"monthly";q=10')


def test_settlement_waits_for_the_server_to_close_the_body(ks: Keystile, token: str) -> None:
    def streamed(environ: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        environ["keystile.principal"].charge(4)
        yield b"b"

    app = make_app(ks, stream=streamed)
    calls: list[Any] = []
    body = app(server_environ("GET", "/stream", bearer(token)), lambda *a: calls.append(a))
    assert b"".join(body) == b"ab"
    assert used(ks) == 1  # the reservation; the real cost is charged at close
    body.close()  # type: ignore[attr-defined]
    assert used(ks) == 4
    body.close()  # type: ignore[attr-defined]  # settled once
    assert used(ks) == 4


def test_an_exception_from_the_app_is_refunded(ks: Keystile, token: str) -> None:
    def broken(environ: Environ, start_response: Any) -> list[bytes]:
        raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError, match="handler bug"):
        get(make_app(ks, boom=broken), "/boom", bearer(token))
    assert used(ks) == 0


def test_an_exception_while_streaming_is_refunded(ks: Keystile, token: str) -> None:
    def broken(environ: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError, match="stream broke"):
        get(make_app(ks, stream=broken), "/stream", bearer(token))
    assert used(ks) == 0


def test_an_auth_error_after_start_response_replaces_the_response(ks: Keystile, token: str) -> None:
    def late(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        raise AuthError(INSUFFICIENT_PERMISSIONS)

    statuses: list[tuple[str, Any]] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append((status, exc_info))
        return lambda data: None

    body = make_app(ks, late=late)(server_environ("GET", "/late", bearer(token)), start_response)
    assert b"AUTH_004" in b"".join(body)
    assert statuses[0][0] == "200 OK"
    assert statuses[1][0] == "403 Forbidden" and statuses[1][1] is not None  # exc_info given
    assert used(ks) == 0


def test_requires_and_cost_wrap_wsgi_apps(ks: Keystile, token: str) -> None:
    def ok(environ: Environ, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    app = make_app(ks, read=requires("read")(ok), admin=requires("admin")(ok), dear=cost(5)(ok))
    assert get(app, "/read", bearer(token)).status == 200
    refused = get(app, "/admin", bearer(token))
    assert (refused.status, refused.json["error"]["code"]) == (403, "AUTH_004")
    assert "x-ratelimit-limit" not in refused.headers  # keystile's refusal, not the app's answer
    assert get(app, "/dear", bearer(token)).status == 200
    assert used(ks) == 1 + 5
    assert get(app, "/dear", bearer(token)).json["error"]["code"] == "BILLING_001"
    assert used(ks) == 6


def test_requires_without_the_middleware_is_a_401() -> None:
    def ok(environ: Environ, start_response: Any) -> list[bytes]:
        return [b"never"]

    with pytest.raises(AuthError) as refused:
        requires("read")(ok)({}, lambda *a: None)
    assert refused.value.code == "AUTH_001"
    with pytest.raises(AuthError) as refused:
        cost(1)(ok)({"keystile.principal": object()}, lambda *a: None)
    assert refused.value.code == "AUTH_001"  # as on every adapter: the principal comes first
    principal = Principal("key_x", "a", "n", None, "live", frozenset(), "bearer")
    with pytest.raises(RuntimeError, match="KeystileMiddleware"):
        cost(1)(ok)({"keystile.principal": principal}, lambda *a: None)


def test_constructor_takes_settings_or_an_engine(ks: Keystile) -> None:
    with pytest.raises(TypeError):
        KeystileMiddleware(lambda e, s: [], settings={}, keystile=ks)
    middleware = KeystileMiddleware(lambda e, s: [], settings={"store": "memory://"})
    assert middleware.keystile.settings.store == "memory://"
    middleware.keystile.close()
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError):
            cost(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------- the underscore ambiguity


def test_wsgi_cannot_tell_an_underscore_header_from_the_real_one(ks: Keystile, token: str) -> None:
    """What the middleware sees is the environ: a server that keeps ``X_Api_Key`` (gunicorn
    with header_map="dangerous", Werkzeug's test client) hands it over as HTTP_X_API_KEY.
    The servers' default (drop such names) is what keeps it out; the harness plays it."""
    dropped = get(make_app(ks), "/", {"X_Api_Key": token})
    assert dropped.json["error"]["code"] == "AUTH_001"
    kept = server_environ("GET", "/")
    kept["HTTP_X_API_KEY"] = token  # exactly what a server that keeps the name builds
    assert call_wsgi(make_app(ks), kept).status == 200


def test_werkzeug_test_client_keeps_underscore_names_and_joins_repeats(
    ks: Keystile, token: str
) -> None:
    werkzeug = pytest.importorskip("werkzeug.test")
    client = werkzeug.Client(make_app(ks))
    # Repeats arrive joined with ", ": still refused as the header sent twice.
    twice = client.get("/", headers=[("x-api-key", token), ("X-API-Key", token)])
    assert (twice.status_code, twice.json["error"]["code"]) == (400, "AUTH_006")
    # An underscore name is indistinguishable here (documented: the server must drop it).
    assert client.get("/", headers={"X_Api_Key": token}).status_code == 200


# ------------------------------------------------- quotas on every WSGI-family adapter


@pytest.fixture(params=sorted(QUOTA_HARNESSES))
def quota_client(
    request: pytest.FixtureRequest, make_keystile: Make, clock: Clock
) -> Iterator[tuple[Harness, Keystile]]:
    if request.param == "flask":
        pytest.importorskip("flask")
    elif request.param.startswith("django"):
        pytest.importorskip("django")
    engine = make_keystile(
        clock=clock, monthly_page_limit=10, exempt_paths=["/health", "/public/*"]
    )
    harness = QUOTA_HARNESSES[request.param](engine)
    yield harness, engine
    harness.close()


def use_up(client: Harness, token: str, n: int) -> None:
    for _ in range(n):
        assert client.request("GET", "/", bearer(token)).status == 200


def quota_token(engine: Keystile) -> str:
    return engine.keys.create(ACCOUNT, "app", permissions=["jobs:read"]).token


def test_quota_headers_and_429(quota_client: tuple[Harness, Keystile]) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    first = client.request("GET", "/", bearer(token))
    assert first.json == {"used": 1, "remaining": 9, "limit": 10}
    assert first.headers["x-ratelimit-remaining"] == "9"
    assert first.headers["ratelimit"].startswith('"monthly";r=9;t=')
    resets = datetime(2026, 10, 1, tzinfo=timezone.utc).timestamp()
    assert first.headers["x-ratelimit-reset"] == str(int(resets))
    use_up(client, token, 9)
    refused = client.request("GET", "/", bearer(token))
    assert (refused.status, refused.json["error"]["code"]) == (429, "BILLING_001")
    assert int(refused.headers["retry-after"]) >= 1
    assert used(engine) == 10


def test_cost_reserves_and_refuses_without_charging(
    quota_client: tuple[Harness, Keystile],
) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    assert client.request("GET", "/expensive", bearer(token)).json == {"reserved": 3, "used": 3}
    use_up(client, token, 5)  # 8 used, the route costs 3
    for _ in range(2):
        refused = client.request("GET", "/expensive", bearer(token))
        assert (refused.status, refused.json["error"]["code"]) == (429, "BILLING_001")
        assert used(engine) == 8
    use_up(client, token, 2)


def test_cost_with_a_reported_real_cost(quota_client: tuple[Harness, Keystile]) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    assert client.request("GET", "/expensive-charged?n=1", bearer(token)).status == 200
    assert used(engine) == 1
    assert client.request("GET", "/expensive-charged?n=6", bearer(token)).status == 200
    assert used(engine) == 7


def test_charge_settles_the_real_cost(quota_client: tuple[Harness, Keystile]) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    assert client.request("GET", "/charged?n=5", bearer(token)).status == 200
    assert client.request("GET", "/charged?n=0", bearer(token)).status == 200
    assert used(engine) == 5
    assert engine.quotas.usage(ACCOUNT).requests == 2


def test_a_streamed_body_is_settled_after_it_is_sent(
    quota_client: tuple[Harness, Keystile],
) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    result = client.request("GET", "/stream?n=6", bearer(token))
    assert (result.status, result.text) == (200, "chunk chunk chunk ")
    assert used(engine) == 6


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_refunded_and_4xx_counted(
    quota_client: tuple[Harness, Keystile], status: int
) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    assert client.request("GET", f"/failing?s={status}", bearer(token)).status == status
    assert used(engine) == 0
    assert client.request("GET", "/failing?s=404", bearer(token)).status == 404
    assert client.request("GET", "/no-such-route", bearer(token)).status == 404
    assert used(engine) == 2


def test_an_unhandled_exception_is_refunded(quota_client: tuple[Harness, Keystile]) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    try:
        result = client.request("GET", "/boom", bearer(token))
    except RuntimeError as exc:  # the test servers that propagate it
        assert "handler bug" in str(exc)
    else:  # the frameworks that answer 500
        assert result.status == 500
    assert used(engine) == 0
    assert client.request("GET", "/", bearer(token)).json["used"] == 1


def test_a_requires_refusal_is_a_refunded_403(quota_client: tuple[Harness, Keystile]) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    refused = client.request("GET", "/needs-admin", bearer(token))
    assert (refused.status, refused.json["error"]["code"]) == (403, "AUTH_004")
    assert refused.headers["content-type"] == "application/json"
    assert used(engine) == 0


def test_refused_credentials_are_never_charged(quota_client: tuple[Harness, Keystile]) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    assert client.request("GET", "/").status == 401
    bad = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert client.request("GET", "/", bearer(bad)).status == 401
    assert used(engine) == 0


def test_idempotency_key(quota_client: tuple[Harness, Keystile]) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    headers = {**bearer(token), "Idempotency-Key": "order-9"}
    assert client.request("GET", "/charged?n=2", headers).status == 200
    assert client.request("GET", "/charged?n=2", headers).status == 200
    assert used(engine) == 2
    failed = {**bearer(token), "Idempotency-Key": "order-10"}
    assert client.request("GET", "/failing?s=500", failed).status == 500
    assert client.request("GET", "/charged?n=1", failed).status == 200  # retried: charged
    assert used(engine) == 3


@pytest.mark.parametrize("path", ["/health", "/public/x"])
def test_exempt_paths_are_not_metered(quota_client: tuple[Harness, Keystile], path: str) -> None:
    client, engine = quota_client
    token = quota_token(engine)
    use_up(client, token, 10)
    for headers in (None, bearer(token)):
        result = client.request("GET", path, headers)
        assert (result.status, result.json) == (200, {"ok": True, "principal": False})
        assert "x-ratelimit-limit" not in result.headers
    assert used(engine) == 10
    assert engine.quotas.usage(ACCOUNT).requests == 10
