"""The management HTTP API through Starlette: ``KeystileMiddleware`` + ``management_mount``.

Every route's happy path and shapes, masking, pagination and filters, the no-escalation rules,
input validation (422 naming the field), routing (404/405), billing (management requests cost
no pages) and authentication. No Redis; time is the ``clock`` fixture's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from keystile import CreatedKey, Keystile
from keystile._http.management import MAX_BODY, ApiRequest, ManagementAPI, openapi_document
from keystile.starlette import KeystileMiddleware, management_mount

from .conftest import TOPOLOGIES, Clock, topology_settings

UTC = timezone.utc
ACCT = "acct_a"
OTHER = "acct_b"
ALL = ["writeApiKeys", "readApiKeys", "readUsage", "readAudit"]
API_KEY_FIELDS = {
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
Make = Callable[..., Keystile]


async def jobs(request: Request) -> Response:
    return JSONResponse({"ok": True})


def build_app(ks: Keystile) -> Starlette:
    app = Starlette(routes=[Route("/jobs", jobs), management_mount("/v1", ks)])
    app.add_middleware(KeystileMiddleware, keystile=ks)
    return app


def key_headers(token: str, **extra: str) -> dict[str, str]:
    return {"x-api-key": token, **extra}


#: Tests whose answers involve Redis (revocation, rolls, sessions, usage) run on every
#: topology; the rest, the API's own parsing and rules, without Redis and on one server.
EVERY_TOPOLOGY = frozenset({
    "test_create_returns_the_token_once_with_the_key",
    "test_update_changes_only_given_fields",
    "test_revoke_refuses_the_key_and_hides_it_from_lists",
    "test_roll_gives_a_new_token_and_ends_the_old_one",
    "test_roll_with_grace_keeps_the_old_secret_for_a_while",
    "test_usage_report",
    "test_login_and_logout",
    "test_rate_limits_are_set_shown_and_no_looser_than_the_callers",
})  # fmt: skip


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ks" in metafunc.fixturenames:
        every = metafunc.function.__name__ in EVERY_TOPOLOGY
        metafunc.parametrize("backend", ["memory", *(TOPOLOGIES if every else ["single"])])


@pytest.fixture
def ks(make_keystile: Make, clock: Clock, request: pytest.FixtureRequest, backend: str) -> Keystile:
    """The API on an engine without Redis, and on a Redis topology."""
    if backend == "memory":
        return make_keystile(clock=clock)
    return make_keystile(clock=clock, **topology_settings(request, backend))


@pytest.fixture
def client(ks: Keystile) -> Iterator[TestClient]:
    with TestClient(build_app(ks)) as test_client:
        yield test_client


@pytest.fixture
def raw_client(ks: Keystile) -> Iterator[TestClient]:
    """Shows a 500 as a 500 instead of raising the server's exception."""
    with TestClient(build_app(ks), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def admin(ks: Keystile) -> CreatedKey:
    return ks.keys.create(ACCT, "admin", permissions=ALL, accounts=[OTHER])


@pytest.fixture
def auth(admin: CreatedKey) -> dict[str, str]:
    return key_headers(admin.token)


@pytest.fixture
def victim(ks: Keystile, admin: CreatedKey, clock: Clock) -> CreatedKey:
    """A key of the admin's account holding less than the admin, made a second after it."""
    clock.advance(1)
    return ks.keys.create(ACCT, "victim", permissions=["readUsage"], meta={"team": "a"})


def now(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.now, UTC)


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    detail: dict[str, Any] = body["error"]
    return detail


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    detail = error_of(response)
    assert detail["code"] == code, detail
    assert response.headers["cache-control"] == "no-store"
    if field is not None:
        assert detail["field"] == field, detail
        assert detail["message"].startswith(f"{field}: ")


def assert_masked_key(data: dict[str, Any]) -> None:
    assert set(data) == API_KEY_FIELDS
    assert data["id"].startswith("key_")
    assert "…" in data["preview"]
    assert len(data["preview"].split("…")[1]) == 4


# -- happy paths and shapes -------------------------------------------------------------------


def test_create_returns_the_token_once_with_the_key(
    client: TestClient, ks: Keystile, admin: CreatedKey, auth: dict[str, str], clock: Clock
) -> None:
    response = client.post(
        "/v1/apikeys",
        headers=auth,
        json={"name": " ci ", "permissions": ["readUsage", "readUsage"], "meta": {"team": "x"}},
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"token", "key_id", "secret", "key"}
    token, key = body["token"], body["key"]
    assert token == f"sk_live_{body['key_id'].removeprefix('key_')}_{body['secret']}"
    assert_masked_key(key)
    assert key["id"] == body["key_id"]
    assert key["preview"] == f"sk_live_…{token[-4:]}"
    assert key["name"] == "ci"  # stripped
    assert key["permissions"] == ["readUsage"]  # duplicates dropped
    assert key["account_id"] == ACCT
    assert key["environment"] == "live"
    assert key["meta"] == {"team": "x"}
    assert key["enabled"] is True
    assert key["expires_at"] is None and key["revoked_at"] is None
    assert datetime.fromisoformat(key["created_at"]) == now(clock)
    # The token works, both forms.
    assert client.get("/v1/usage", headers=key_headers(token)).status_code == 200
    pair = {"x-api-key": body["key_id"], "x-api-secret": body["secret"]}
    assert client.get("/v1/usage", headers=pair).status_code == 200
    # Recorded as made by the calling key.
    entry = ks.audit.list(ACCT, action="key.create").items[0]
    assert entry.actor == admin.key_id and entry.target == body["key_id"]


def test_list_shows_masked_keys(
    client: TestClient, admin: CreatedKey, victim: CreatedKey, auth: dict[str, str]
) -> None:
    response = client.get("/v1/apikeys", headers=auth)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"items", "total", "next_cursor"}
    assert body["total"] == 2 and body["next_cursor"] is None
    assert [item["id"] for item in body["items"]] == [victim.key_id, admin.key_id]  # newest first
    for item in body["items"]:
        assert_masked_key(item)
    for secret in (admin.token, admin.secret, victim.token, victim.secret):
        assert secret not in response.text


def test_get_shows_a_masked_key(
    client: TestClient, victim: CreatedKey, auth: dict[str, str]
) -> None:
    response = client.get(f"/v1/apikeys/{victim.key_id}", headers=auth)
    assert response.status_code == 200
    data = response.json()
    assert_masked_key(data)
    assert data == victim.key.to_dict() | {"last_used_at": data["last_used_at"]}
    assert victim.secret not in response.text and victim.token not in response.text
    # A trailing slash is the same resource.
    assert client.get(f"/v1/apikeys/{victim.key_id}/", headers=auth).json() == data


def test_update_changes_only_given_fields(
    client: TestClient, ks: Keystile, victim: CreatedKey, auth: dict[str, str], clock: Clock
) -> None:
    later = (now(clock) + timedelta(days=3)).isoformat()
    response = client.patch(
        f"/v1/apikeys/{victim.key_id}",
        headers=auth,
        json={"name": "renamed", "permissions": ["readAudit"], "expires_at": later},
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert_masked_key(data)
    assert data["name"] == "renamed"
    assert data["permissions"] == ["readAudit"]
    assert datetime.fromisoformat(data["expires_at"]) == datetime.fromisoformat(later)
    assert data["meta"] == {"team": "a"} and data["enabled"] is True  # untouched
    assert ks.keys.get(victim.key_id).name == "renamed"

    response = client.patch(
        f"/v1/apikeys/{victim.key_id}",
        headers=auth,
        json={"meta": None, "enabled": False, "expires_at": None},
    )
    data = response.json()
    assert (data["meta"], data["enabled"], data["expires_at"]) == ({}, False, None)
    # Disabled: its token is refused from the next request on.
    refused = client.get("/v1/usage", headers=key_headers(victim.token))
    assert_error(refused, 401, "AUTH_003")


def test_update_with_an_empty_body_changes_nothing(
    client: TestClient, victim: CreatedKey, auth: dict[str, str]
) -> None:
    before = client.get(f"/v1/apikeys/{victim.key_id}", headers=auth).json()
    for body in (b"", b"{}", b"  \n"):
        response = client.patch(f"/v1/apikeys/{victim.key_id}", headers=auth, content=body)
        assert response.status_code == 200
        assert response.json() == before


def test_revoke_refuses_the_key_and_hides_it_from_lists(
    client: TestClient, victim: CreatedKey, auth: dict[str, str], clock: Clock
) -> None:
    assert client.get("/v1/usage", headers=key_headers(victim.token)).status_code == 200
    response = client.delete(f"/v1/apikeys/{victim.key_id}", headers=auth)
    assert response.status_code == 200
    data = response.json()
    assert_masked_key(data)
    assert datetime.fromisoformat(data["revoked_at"]) == now(clock)
    assert_error(client.get("/v1/usage", headers=key_headers(victim.token)), 401, "AUTH_003")
    listed = client.get("/v1/apikeys", headers=auth).json()
    assert victim.key_id not in [item["id"] for item in listed["items"]]
    # Still readable by id, and revoking again changes nothing.
    assert client.get(f"/v1/apikeys/{victim.key_id}", headers=auth).json()["revoked_at"]
    again = client.delete(f"/v1/apikeys/{victim.key_id}", headers=auth)
    assert again.status_code == 200 and again.json() == data


def test_roll_gives_a_new_token_and_ends_the_old_one(
    client: TestClient, victim: CreatedKey, auth: dict[str, str]
) -> None:
    response = client.post(f"/v1/apikeys/{victim.key_id}/roll", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "key_id", "secret", "key"}
    assert body["key_id"] == victim.key_id and body["token"] != victim.token
    assert_masked_key(body["key"])
    assert body["key"]["preview"].endswith(body["token"][-4:])
    assert_error(client.get("/v1/usage", headers=key_headers(victim.token)), 401, "AUTH_002")
    assert client.get("/v1/usage", headers=key_headers(body["token"])).status_code == 200


def test_roll_with_grace_keeps_the_old_secret_for_a_while(
    client: TestClient, victim: CreatedKey, auth: dict[str, str], clock: Clock
) -> None:
    response = client.post(
        f"/v1/apikeys/{victim.key_id}/roll", headers=auth, json={"grace_seconds": 60}
    )
    assert response.status_code == 200
    new = response.json()["token"]
    clock.advance(59)
    assert client.get("/v1/usage", headers=key_headers(victim.token)).status_code == 200
    clock.advance(2)
    assert_error(client.get("/v1/usage", headers=key_headers(victim.token)), 401, "AUTH_002")
    assert client.get("/v1/usage", headers=key_headers(new)).status_code == 200


def test_a_revoked_key_cannot_be_rolled(
    client: TestClient, victim: CreatedKey, auth: dict[str, str]
) -> None:
    client.delete(f"/v1/apikeys/{victim.key_id}", headers=auth)
    response = client.post(f"/v1/apikeys/{victim.key_id}/roll", headers=auth)
    assert_error(response, 422, "REQ_001", field="key_id")


def test_usage_report(client: TestClient, admin: CreatedKey, auth: dict[str, str]) -> None:
    client.get("/jobs", headers=auth)
    response = client.get("/v1/usage", headers=auth)
    assert response.status_code == 200
    report = response.json()
    assert set(report) == {
        "account_id",
        "environment",
        "month",
        "starts_at",
        "resets_at",
        "limit",
        "pages",
        "requests",
        "remaining",
        "keys",
        "history",
    }
    assert report["account_id"] == ACCT and report["environment"] == "live"
    assert report["month"] == "2026-09"
    assert report["limit"] is None and report["remaining"] is None
    assert report["pages"] == 1 and report["requests"] == 2  # /jobs, and this request
    assert report["keys"] == [{"key_id": admin.key_id, "pages": 1, "requests": 2}]
    assert len(report["history"]) == 12
    assert report["history"][0] == {"month": "2026-09", "pages": 1, "requests": 2}
    assert report["history"][1]["month"] == "2026-08"
    earlier = client.get("/v1/usage?month=2026-01&environment=test", headers=auth).json()
    assert (earlier["month"], earlier["environment"], earlier["pages"]) == ("2026-01", "test", 0)
    assert earlier["limit"] == 1000  # test_page_limit


def test_audit_lists_newest_first(
    client: TestClient, admin: CreatedKey, victim: CreatedKey, auth: dict[str, str]
) -> None:
    client.patch(f"/v1/apikeys/{victim.key_id}", headers=auth, json={"name": "v2"})
    response = client.get("/v1/audit", headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"items", "next_cursor"} and body["next_cursor"] is None
    actions = [item["action"] for item in body["items"]]
    assert actions == ["key.update", "key.create", "key.create"]
    first = body["items"][0]
    assert set(first) == {"id", "at", "account_id", "actor", "action", "target", "details"}
    assert first["actor"] == admin.key_id and first["target"] == victim.key_id
    assert first["details"] == {"changes": {"name": "v2"}}
    page = client.get("/v1/audit?limit=1&action=key.create", headers=auth).json()
    assert [item["target"] for item in page["items"]] == [victim.key_id]
    rest = client.get(
        f"/v1/audit?limit=1&action=key.create&cursor={page['next_cursor']}", headers=auth
    ).json()
    assert [item["target"] for item in rest["items"]] == [admin.key_id]


def test_openapi_document_needs_no_key(client: TestClient) -> None:
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.1")


def test_login_and_logout(client: TestClient, admin: CreatedKey) -> None:
    response = client.post("/v1/auth/login", headers=key_headers(admin.token))
    assert response.status_code == 200
    session = response.json()
    assert set(session) == {
        "token",
        "session_id",
        "key_id",
        "account_id",
        "expires_at",
        "idle_timeout",
    }
    assert session["token"].startswith("sk_sess_") and session["key_id"] == admin.key_id
    bearer = {"authorization": f"Bearer {session['token']}"}
    assert client.get("/v1/apikeys", headers=bearer).status_code == 200
    out = client.post("/v1/auth/logout", headers=bearer)
    assert out.status_code == 204 and out.content == b""
    assert_error(client.get("/v1/apikeys", headers=bearer), 401, "AUTH_003")


def test_logout_with_a_key_is_400(client: TestClient, auth: dict[str, str]) -> None:
    assert_error(client.post("/v1/auth/logout", headers=auth), 400, "AUTH_006")


def test_token_and_secret_only_in_create_and_roll_responses(
    client: TestClient, ks: Keystile, auth: dict[str, str]
) -> None:
    created = client.post("/v1/apikeys", headers=auth, json={"name": "scan"}).json()
    rolled = client.post(f"/v1/apikeys/{created['key_id']}/roll", headers=auth).json()
    secrets = [created["token"], created["secret"], rolled["token"], rolled["secret"]]
    record = ks.store.get(created["key_id"].removeprefix("key_"))
    assert record is not None
    secrets.append(record.secret_hash)
    kid = created["key_id"]
    texts = [
        client.get("/v1/apikeys", headers=auth).text,
        client.get("/v1/apikeys?include_revoked=true", headers=auth).text,
        client.get(f"/v1/apikeys/{kid}", headers=auth).text,
        client.patch(f"/v1/apikeys/{kid}", headers=auth, json={"name": "scan2"}).text,
        client.get("/v1/usage", headers=auth).text,
        client.get("/v1/audit", headers=auth).text,
        client.delete(f"/v1/apikeys/{kid}", headers=auth).text,
    ]
    for text in texts:
        for secret in secrets:
            assert secret not in text


# -- pagination, search, filters --------------------------------------------------------------


def test_pagination_walks_every_key_once(
    client: TestClient, ks: Keystile, admin: CreatedKey, auth: dict[str, str], clock: Clock
) -> None:
    ids = [admin.key_id]
    for n in range(6):
        clock.advance(1)
        ids.append(ks.keys.create(ACCT, f"k{n}").key_id)
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        response = client.get(f"/v1/apikeys?limit=3&cursor={cursor}", headers=auth)
        assert response.status_code == 200
        body = response.json()
        assert body["total"] == 7
        assert len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
        pages += 1
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
    assert pages == 3
    assert seen == list(reversed(ids))  # newest first, each once


def test_search_matches_names_case_insensitively_and_literally(
    client: TestClient, ks: Keystile, auth: dict[str, str]
) -> None:
    for name in ("Alpha one", "alpha two", "beta", "100% sure", "a_b", "axb"):
        ks.keys.create(ACCT, name)

    def names(query: str) -> tuple[set[str], int]:
        body = client.get(f"/v1/apikeys?{query}", headers=auth).json()
        return {item["name"] for item in body["items"]}, body["total"]

    assert names("search=alpha") == ({"Alpha one", "alpha two"}, 2)
    assert names("search=%25") == ({"100% sure"}, 1)  # '%' is literal, not a wildcard
    assert names("search=_") == ({"a_b"}, 1)  # so is '_'
    assert names("search=") == (names("")[0], 7)  # empty: all
    assert names("search=nothing") == (set(), 0)


def test_environment_filter(
    client: TestClient, ks: Keystile, admin: CreatedKey, auth: dict[str, str]
) -> None:
    test_key = ks.keys.create(ACCT, "sandbox", environment="test")
    live = client.get("/v1/apikeys?environment=live", headers=auth).json()
    assert [item["id"] for item in live["items"]] == [admin.key_id] and live["total"] == 1
    test = client.get("/v1/apikeys?environment=test", headers=auth).json()
    assert [item["id"] for item in test["items"]] == [test_key.key_id]
    assert test["items"][0]["preview"].startswith("sk_test_…")
    both = client.get("/v1/apikeys", headers=auth).json()
    assert both["total"] == 2
    assert_error(
        client.get("/v1/apikeys?environment=prod", headers=auth), 422, "REQ_001", "environment"
    )


def test_include_revoked(
    client: TestClient, ks: Keystile, victim: CreatedKey, auth: dict[str, str]
) -> None:
    ks.keys.revoke(victim.key_id)
    plain = client.get("/v1/apikeys", headers=auth).json()
    assert victim.key_id not in [item["id"] for item in plain["items"]] and plain["total"] == 1
    assert client.get("/v1/apikeys?include_revoked=false", headers=auth).json() == plain
    full = client.get("/v1/apikeys?include_revoked=true", headers=auth).json()
    assert victim.key_id in [item["id"] for item in full["items"]] and full["total"] == 2


# -- no escalation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "asked", "allowed"),
    [
        (["jobs:read"], ["jobs:read"], True),
        (["jobs:read"], ["jobs:write"], False),
        (["jobs:read"], ["jobs:*"], False),  # a wildcard is more than the one it covers
        (["jobs:read"], ["*"], False),
        (["jobs:*"], ["jobs:read", "jobs:write", "jobs:*"], True),
        (["jobs:*"], ["jobsx"], False),
        (["jobs:*"], ["*"], False),
        (["read*"], ["readApiKeys", "readX"], True),
        (["*"], ["anything:at/all", "*"], True),
    ],
)
def test_cannot_grant_a_permission_the_caller_lacks(
    client: TestClient, ks: Keystile, held: list[str], asked: list[str], allowed: bool
) -> None:
    caller = ks.keys.create(ACCT, "caller", permissions=["writeApiKeys", *held])
    response = client.post(
        "/v1/apikeys",
        headers=key_headers(caller.token),
        json={"name": "new", "permissions": asked},
    )
    if allowed:
        assert response.status_code == 201, response.text
        assert response.json()["key"]["permissions"] == asked
    else:
        assert_error(response, 403, "AUTH_004")
        assert "Cannot grant" in error_of(response)["message"]


def test_cannot_update_permissions_beyond_own(
    client: TestClient, ks: Keystile, victim: CreatedKey
) -> None:
    caller = ks.keys.create(ACCT, "caller", permissions=["writeApiKeys", "readUsage", "jobs:read"])
    headers = key_headers(caller.token)
    url = f"/v1/apikeys/{victim.key_id}"
    assert_error(
        client.patch(url, headers=headers, json={"permissions": ["jobs:*"]}), 403, "AUTH_004"
    )
    assert_error(
        client.patch(url, headers=headers, json={"permissions": ["readAudit"]}), 403, "AUTH_004"
    )
    assert ks.keys.get(victim.key_id).permissions == ("readUsage",)
    ok = client.patch(url, headers=headers, json={"permissions": ["jobs:read", "readUsage"]})
    assert ok.status_code == 200 and ok.json()["permissions"] == ["jobs:read", "readUsage"]


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PATCH", "", {"name": "mine"}),
        ("DELETE", "", None),
        ("POST", "/roll", None),
    ],
)
def test_another_accounts_key_is_a_404_like_no_key(
    client: TestClient,
    ks: Keystile,
    auth: dict[str, str],
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    theirs = ks.keys.create("acct_z", "theirs", permissions=["readUsage"])
    response = client.request(
        method, f"/v1/apikeys/{theirs.key_id}{suffix}", headers=auth, json=body
    )
    assert_error(response, 404, "REQ_002")
    missing = client.request(
        method, f"/v1/apikeys/key_AAAAAAAAAAAAAAAA{suffix}", headers=auth, json=body
    )
    assert response.json() == missing.json()  # nothing tells the two apart
    # Untouched.
    assert ks.keys.get(theirs.key_id).name == "theirs"
    assert ks.keys.get(theirs.key_id).revoked_at is None
    assert client.get("/v1/usage", headers=key_headers(theirs.token)).status_code == 200


def test_an_acting_account_sees_and_changes_only_its_keys(
    client: TestClient, ks: Keystile, admin: CreatedKey, auth: dict[str, str]
) -> None:
    theirs = ks.keys.create(OTHER, "b-key", permissions=["readUsage"])
    acting = {**auth, "x-account-id": OTHER}
    listed = client.get("/v1/apikeys", headers=acting).json()
    assert [item["id"] for item in listed["items"]] == [theirs.key_id] and listed["total"] == 1
    assert client.get(f"/v1/apikeys/{theirs.key_id}", headers=acting).status_code == 200
    assert_error(client.get(f"/v1/apikeys/{admin.key_id}", headers=acting), 404, "REQ_002")
    # Without the header the caller is back in its own account.
    assert_error(client.get(f"/v1/apikeys/{theirs.key_id}", headers=auth), 404, "REQ_002")
    created = client.post("/v1/apikeys", headers=acting, json={"name": "made-for-b"}).json()
    assert created["key"]["account_id"] == OTHER
    assert ks.keys.get(created["key_id"]).account_id == OTHER
    assert client.get("/v1/usage", headers=acting).json()["account_id"] == OTHER


def test_acting_for_an_account_the_key_may_not_is_403(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = client.get("/v1/apikeys", headers={**auth, "x-account-id": "acct_z"})
    assert_error(response, 403, "AUTH_005")
    malformed = client.get("/v1/apikeys", headers={**auth, "x-account-id": "x" * 129})
    assert_error(malformed, 400, "AUTH_006")


def test_new_keys_never_outlive_the_caller(client: TestClient, ks: Keystile, clock: Clock) -> None:
    own = now(clock) + timedelta(hours=1)
    caller = ks.keys.create(ACCT, "temp", permissions=["writeApiKeys"], expires_at=own)
    headers = key_headers(caller.token)
    later = (own + timedelta(hours=1)).isoformat()
    assert_error(
        client.post("/v1/apikeys", headers=headers, json={"name": "n", "expires_at": later}),
        403,
        "AUTH_004",
    )
    assert_error(
        client.post("/v1/apikeys", headers=headers, json={"name": "n", "expires_at": None}),
        403,
        "AUTH_004",
    )
    inherited = client.post("/v1/apikeys", headers=headers, json={"name": "n"}).json()
    assert datetime.fromisoformat(inherited["key"]["expires_at"]) == own
    sooner = (own - timedelta(minutes=30)).isoformat()
    made = client.post("/v1/apikeys", headers=headers, json={"name": "n", "expires_at": sooner})
    assert made.status_code == 201
    same = client.post(
        "/v1/apikeys", headers=headers, json={"name": "n", "expires_at": own.isoformat()}
    )
    assert same.status_code == 201


def test_updates_never_extend_expiry_beyond_the_caller(
    client: TestClient, ks: Keystile, victim: CreatedKey, clock: Clock
) -> None:
    own = now(clock) + timedelta(hours=1)
    caller = ks.keys.create(ACCT, "temp", permissions=["writeApiKeys", "readUsage"], expires_at=own)
    headers = key_headers(caller.token)
    url = f"/v1/apikeys/{victim.key_id}"
    later = (own + timedelta(seconds=1)).isoformat()
    assert_error(client.patch(url, headers=headers, json={"expires_at": later}), 403, "AUTH_004")
    assert_error(client.patch(url, headers=headers, json={"expires_at": None}), 403, "AUTH_004")
    assert ks.keys.get(victim.key_id).expires_at is None
    sooner = (own - timedelta(minutes=1)).isoformat()
    assert client.patch(url, headers=headers, json={"expires_at": sooner}).status_code == 200
    # Other changes of a key leave its expiry alone, and are allowed.
    assert client.patch(url, headers=headers, json={"name": "x"}).status_code == 200


def test_a_test_key_cannot_create_a_live_key(client: TestClient, ks: Keystile) -> None:
    sandbox = ks.keys.create(ACCT, "sandbox", permissions=["writeApiKeys"], environment="test")
    headers = key_headers(sandbox.token)
    response = client.post(
        "/v1/apikeys", headers=headers, json={"name": "n", "environment": "live"}
    )
    assert_error(response, 403, "AUTH_004")
    assert "test" in error_of(response)["message"]
    made = client.post("/v1/apikeys", headers=headers, json={"name": "n"}).json()
    assert made["key"]["environment"] == "test" and made["token"].startswith("sk_test_")
    live = ks.keys.create(ACCT, "live-writer", permissions=["writeApiKeys"])
    response = client.post(
        "/v1/apikeys", headers=key_headers(live.token), json={"name": "n", "environment": "test"}
    )
    assert_error(response, 403, "AUTH_004")


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PATCH", "", {"name": "pwned"}),
        ("PATCH", "", {"enabled": False}),
        ("DELETE", "", None),
        ("POST", "/roll", None),
    ],
)
def test_cannot_touch_a_key_holding_more_than_the_caller(
    client: TestClient, ks: Keystile, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    caller = ks.keys.create(ACCT, "caller", permissions=["writeApiKeys", "readApiKeys"])
    stronger = ks.keys.create(
        ACCT, "stronger", permissions=["writeApiKeys", "readApiKeys", "readAudit"]
    )
    response = client.request(
        method,
        f"/v1/apikeys/{stronger.key_id}{suffix}",
        headers=key_headers(caller.token),
        json=body,
    )
    assert_error(response, 403, "AUTH_004")
    key = ks.keys.get(stronger.key_id)
    assert (key.name, key.enabled, key.revoked_at) == ("stronger", True, None)
    assert client.get("/v1/audit", headers=key_headers(stronger.token)).status_code == 200


@pytest.mark.parametrize(
    ("permission", "method", "path"),
    [
        ("writeApiKeys", "POST", "/v1/apikeys"),
        ("readApiKeys", "GET", "/v1/apikeys"),
        ("readApiKeys", "GET", "/v1/apikeys/{victim}"),
        ("writeApiKeys", "PATCH", "/v1/apikeys/{victim}"),
        ("writeApiKeys", "DELETE", "/v1/apikeys/{victim}"),
        ("writeApiKeys", "POST", "/v1/apikeys/{victim}/roll"),
        ("readUsage", "GET", "/v1/usage"),
        ("readAudit", "GET", "/v1/audit"),
    ],
)
def test_each_route_needs_its_permission(
    client: TestClient, ks: Keystile, victim: CreatedKey, permission: str, method: str, path: str
) -> None:
    others = [p for p in ALL if p != permission]
    caller = ks.keys.create(ACCT, "almost", permissions=others)
    url = path.replace("{victim}", victim.key_id)
    response = client.request(
        method,
        url,
        headers=key_headers(caller.token),
        json={"name": "n"} if method == "POST" and "roll" not in url else None,
    )
    assert_error(response, 403, "AUTH_004")
    assert permission in error_of(response)["message"]
    assert ks.keys.get(victim.key_id).revoked_at is None


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("POST", "/roll", None), ("PATCH", "", {"name": "mine"}), ("DELETE", "", None)],
)
def test_a_test_key_cannot_change_a_live_key(
    client: TestClient, ks: Keystile, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    """A roll would hand a live token to a test key's holder; no change crosses environments."""
    sandbox = ks.keys.create(
        ACCT, "sandbox", permissions=["writeApiKeys", "readUsage"], environment="test"
    )
    live = ks.keys.create(ACCT, "live", permissions=["readUsage"])
    response = client.request(
        method, f"/v1/apikeys/{live.key_id}{suffix}", headers=key_headers(sandbox.token), json=body
    )
    assert_error(response, 403, "AUTH_004")
    assert "sk_live_" not in response.text
    key = ks.keys.get(live.key_id)
    assert (key.name, key.revoked_at) == ("live", None)
    assert client.get("/v1/usage", headers=key_headers(live.token)).status_code == 200


def test_an_expiring_key_cannot_roll_a_longer_lived_key(
    client: TestClient, ks: Keystile, victim: CreatedKey, clock: Clock
) -> None:
    temp = ks.keys.create(
        ACCT,
        "temp",
        permissions=["writeApiKeys", "readUsage"],
        expires_at=now(clock) + timedelta(hours=1),
    )
    response = client.post(f"/v1/apikeys/{victim.key_id}/roll", headers=key_headers(temp.token))
    assert_error(response, 403, "AUTH_004")
    assert client.get("/v1/usage", headers=key_headers(victim.token)).status_code == 200
    # A key that expires no later than the caller may be rolled.
    ks.keys.update(victim.key_id, expires_at=now(clock) + timedelta(minutes=30))
    rolled = client.post(f"/v1/apikeys/{victim.key_id}/roll", headers=key_headers(temp.token))
    assert rolled.status_code == 200, rolled.text


# -- bad input: 422 naming the field ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/apikeys", {"name": "n", "admin": True}, "admin"),
        ("POST", "/v1/apikeys", {"name": "n", "accounts": ["x"]}, "accounts"),
        ("POST", "/v1/apikeys", {"name": "n", "page_limit": 5}, "page_limit"),
        ("POST", "/v1/apikeys", {}, "name"),
        ("POST", "/v1/apikeys", {"name": 5}, "name"),
        ("POST", "/v1/apikeys", {"name": None}, "name"),
        ("POST", "/v1/apikeys", {"name": "   "}, "name"),
        ("POST", "/v1/apikeys", {"name": "x" * 201}, "name"),
        ("POST", "/v1/apikeys", {"name": "bell\u0007"}, "name"),
        ("POST", "/v1/apikeys", {"name": "n", "permissions": "readUsage"}, "permissions"),
        ("POST", "/v1/apikeys", {"name": "n", "permissions": {"a": 1}}, "permissions"),
        ("POST", "/v1/apikeys", {"name": "n", "environment": 1}, "environment"),
        ("POST", "/v1/apikeys", {"name": "n", "meta": []}, "meta"),
        ("POST", "/v1/apikeys", {"name": "n", "meta": "x"}, "meta"),
        ("POST", "/v1/apikeys", {"name": "n", "meta": {"big": "x" * 5000}}, "meta"),
        ("POST", "/v1/apikeys", {"name": "n", "expires_at": 1893456000}, "expires_at"),
        ("POST", "/v1/apikeys", {"name": "n", "expires_at": True}, "expires_at"),
        ("PATCH", "/v1/apikeys/{victim}", {"enabled": "yes"}, "enabled"),
        ("PATCH", "/v1/apikeys/{victim}", {"enabled": 1}, "enabled"),
        ("PATCH", "/v1/apikeys/{victim}", {"environment": "test"}, "environment"),
        ("PATCH", "/v1/apikeys/{victim}", {"name": ["x"]}, "name"),
        ("PATCH", "/v1/apikeys/{victim}", {"id": "key_AAAAAAAAAAAAAAAA"}, "id"),
        ("POST", "/v1/apikeys/{victim}/roll", {"grace_seconds": True}, "grace_seconds"),
        ("POST", "/v1/apikeys/{victim}/roll", {"grace_seconds": 1.5}, "grace_seconds"),
        ("POST", "/v1/apikeys/{victim}/roll", {"grace_seconds": "60"}, "grace_seconds"),
        ("POST", "/v1/apikeys/{victim}/roll", {"grace_seconds": -1}, "grace_seconds"),
        ("POST", "/v1/apikeys/{victim}/roll", {"grace_seconds": 2592001}, "grace_seconds"),
        ("POST", "/v1/apikeys/{victim}/roll", {"grace": 5}, "grace"),
        ("POST", "/v1/auth/login", {"remember": True}, "remember"),
    ],
)
def test_bad_body_fields_are_422_naming_the_field(
    client: TestClient,
    ks: Keystile,
    victim: CreatedKey,
    auth: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    url = path.replace("{victim}", victim.key_id)
    response = client.request(method, url, headers=auth, content=json.dumps(body).encode())
    assert_error(response, 422, "REQ_001", field)
    assert ks.keys.get(victim.key_id).name == "victim"
    assert ks.keys.get(victim.key_id).revoked_at is None


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"{'name': 'n'}",
        b"nul",
        b"\xff\xfe",
        b"[]",
        b'"name"',
        b"5",
        b"null",
        b"true",
        b'[{"name": "n"}]',
    ],
)
@pytest.mark.parametrize(
    "path", ["/v1/apikeys", "/v1/apikeys/{victim}", "/v1/apikeys/{victim}/roll", "/v1/auth/login"]
)
def test_a_body_that_is_not_a_json_object_is_422(
    client: TestClient, victim: CreatedKey, auth: dict[str, str], raw: bytes, path: str
) -> None:
    url = path.replace("{victim}", victim.key_id)
    method = "PATCH" if url.endswith(victim.key_id) else "POST"
    assert_error(client.request(method, url, headers=auth, content=raw), 422, "REQ_001", "body")


def test_a_body_over_64_kib_is_422(client: TestClient, auth: dict[str, str]) -> None:
    padding = "x" * MAX_BODY
    big = json.dumps({"name": "n", "meta": {"p": padding}}).encode()
    assert len(big) > MAX_BODY
    assert_error(client.post("/v1/apikeys", headers=auth, content=big), 422, "REQ_001", "body")
    assert_error(
        client.post("/v1/auth/login", content=b" " * (MAX_BODY + 1)), 422, "REQ_001", "body"
    )


@pytest.mark.parametrize(
    "value",
    [
        "tomorrow",
        "2030-01-01T00:00:00",
        "2030-01-01",
        "2030-13-01T00:00:00Z",
        "",
        "2001-01-01T00:00:00Z",
    ],
)
def test_bad_expires_at_is_422(client: TestClient, auth: dict[str, str], value: str) -> None:
    response = client.post("/v1/apikeys", headers=auth, json={"name": "n", "expires_at": value})
    assert_error(response, 422, "REQ_001", "expires_at")


def test_invalid_permission_names_are_422(client: TestClient, ks: Keystile) -> None:
    root = ks.keys.create(ACCT, "root", permissions=["*"])
    for bad in ("has space", "", "x" * 101, "é"):
        response = client.post(
            "/v1/apikeys", headers=key_headers(root.token), json={"name": "n", "permissions": [bad]}
        )
        assert_error(response, 422, "REQ_001", "permissions")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/v1/apikeys?limit=0", "limit"),
        ("/v1/apikeys?limit=101", "limit"),
        ("/v1/apikeys?limit=-1", "limit"),
        ("/v1/apikeys?limit=ten", "limit"),
        ("/v1/apikeys?limit=", "limit"),
        ("/v1/apikeys?limit=1.5", "limit"),
        ("/v1/apikeys?limit=1&limit=2", "limit"),
        ("/v1/apikeys?include_revoked=yes", "include_revoked"),
        ("/v1/apikeys?include_revoked=True", "include_revoked"),
        ("/v1/apikeys?include_revoked=1", "include_revoked"),
        ("/v1/apikeys?cursor=not-a-cursor", "cursor"),
        ("/v1/apikeys?search=" + "s" * 201, "search"),
        ("/v1/apikeys?environment=prod", "environment"),
        ("/v1/apikeys?page=2", "page"),
        ("/v1/usage?month=2026-13", "month"),
        ("/v1/usage?month=2026-1", "month"),
        ("/v1/usage?month=0000-01", "month"),
        ("/v1/usage?month=26-01", "month"),
        ("/v1/usage?environment=prod", "environment"),
        ("/v1/usage?account_id=acct_b", "account_id"),
        ("/v1/audit?limit=0", "limit"),
        ("/v1/audit?limit=201", "limit"),
        ("/v1/audit?limit=x", "limit"),
        ("/v1/audit?action=key.explode", "action"),
        ("/v1/audit?cursor=abc", "cursor"),
        ("/v1/audit?actor=me", "actor"),
    ],
)
def test_bad_query_parameters_are_422(
    client: TestClient, auth: dict[str, str], query: str, field: str
) -> None:
    assert_error(client.get(query, headers=auth), 422, "REQ_001", field)


def test_limits_at_their_bounds_are_fine(client: TestClient, auth: dict[str, str]) -> None:
    for url in (
        "/v1/apikeys?limit=1",
        "/v1/apikeys?limit=100",
        "/v1/audit?limit=1",
        "/v1/audit?limit=200",
        "/v1/apikeys?cursor=",
        "/v1/audit?cursor=",
    ):
        assert client.get(url, headers=auth).status_code == 200, url


# -- input that once answered 500 -------------------------------------------------------------


@pytest.mark.parametrize("item", [1, None, {}, ["x"]])
@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("caller_permissions", [ALL, ["*"]])
def test_non_string_permission_is_422(
    raw_client: TestClient,
    ks: Keystile,
    victim: CreatedKey,
    item: Any,
    method: str,
    caller_permissions: list[str],
) -> None:
    caller = ks.keys.create(ACCT, "caller", permissions=caller_permissions)
    url = "/v1/apikeys" if method == "POST" else f"/v1/apikeys/{victim.key_id}"
    response = raw_client.request(
        method, url, headers=key_headers(caller.token), json={"name": "n", "permissions": [item]}
    )
    assert_error(response, 422, "REQ_001", "permissions")


@pytest.mark.parametrize(
    "raw", [b"[" * 60_000, b'{"name":"n","meta":' + b'{"a":' * 5000 + b"1" + b"}" * 5001]
)
def test_deeply_nested_json_is_422(
    raw_client: TestClient, auth: dict[str, str], raw: bytes
) -> None:
    assert len(raw) < MAX_BODY
    assert_error(raw_client.post("/v1/apikeys", headers=auth, content=raw), 422, "REQ_001")


@pytest.mark.parametrize("value", ["%C2%B2", "9" * 5000])
@pytest.mark.parametrize("path", ["/v1/apikeys", "/v1/audit"])
def test_limit_with_unicode_digits_is_422(
    raw_client: TestClient, auth: dict[str, str], value: str, path: str
) -> None:
    assert_error(raw_client.get(f"{path}?limit={value}", headers=auth), 422, "REQ_001", "limit")


def test_usage_month_in_year_one_is_422(raw_client: TestClient, auth: dict[str, str]) -> None:
    """Its 12 months of history would start before year 1."""
    response = raw_client.get("/v1/usage?month=0001-05", headers=auth)
    assert_error(response, 422, "REQ_001", "month")
    assert raw_client.get("/v1/usage?month=0002-01", headers=auth).status_code == 200


def test_expiry_beyond_year_9999_is_422(raw_client: TestClient, auth: dict[str, str]) -> None:
    response = raw_client.post(
        "/v1/apikeys", headers=auth, json={"name": "n", "expires_at": "9999-12-31T23:59:59-23:59"}
    )
    assert_error(response, 422, "REQ_001", "expires_at")
    assert raw_client.get("/v1/apikeys", headers=auth).status_code == 200


def test_a_backend_failure_is_a_503_not_a_500(make_keystile: Make) -> None:
    ks = make_keystile(redis_url="redis://127.0.0.1:1/0", secret="s" * 32, redis_timeout=0.05)
    admin = ks.keys.create(ACCT, "admin", permissions=ALL)
    with TestClient(build_app(ks), raise_server_exceptions=False) as client:
        response = client.post("/v1/auth/login", headers=key_headers(admin.token))
    assert_error(response, 503, "SVC_001")


# -- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1",
        "/v1/",
        "/v1/nope",
        "/v1/apikeys/a/b",
        "/v1/apikeys/x/roll/again",
        "/v1/auth",
        "/v1/usage/2026-09",
        "/v1/APIKEYS",
    ],
)
def test_unknown_paths_are_404(client: TestClient, auth: dict[str, str], path: str) -> None:
    assert_error(client.get(path, headers=auth), 404, "REQ_002")


def test_a_path_with_a_newline_is_still_a_json_404(
    client: TestClient, auth: dict[str, str]
) -> None:
    for path in ("/v1/apikeys/a%0Ab", "/v1/x%0Ay"):
        assert_error(client.get(path, headers=auth), 404, "REQ_002")
    assert_error(client.post("/v1/apikeys/a%0Ab/roll", headers=auth), 404, "REQ_002")


def test_unknown_paths_still_need_a_key(client: TestClient) -> None:
    assert_error(client.get("/v1/nope"), 401, "AUTH_001")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/apikeys", "GET, POST"),
        ("DELETE", "/v1/apikeys", "GET, POST"),
        ("POST", "/v1/apikeys/{victim}", "GET, PATCH, DELETE"),
        ("PUT", "/v1/apikeys/{victim}", "GET, PATCH, DELETE"),
        ("GET", "/v1/apikeys/{victim}/roll", "POST"),
        ("GET", "/v1/auth/logout", "POST"),
        ("POST", "/v1/usage", "GET"),
        ("DELETE", "/v1/audit", "GET"),
        ("HEAD", "/v1/usage", "GET"),
    ],
)
def test_wrong_methods_are_405_with_allow(
    client: TestClient,
    victim: CreatedKey,
    auth: dict[str, str],
    method: str,
    path: str,
    allow: str,
) -> None:
    response = client.request(method, path.replace("{victim}", victim.key_id), headers=auth)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    if method != "HEAD":
        assert_error(response, 405, "REQ_003")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/v1/auth/login", "POST"), ("POST", "/v1/openapi.json", "GET")],
)
def test_public_paths_answer_405_without_a_key(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert_error(response, 405, "REQ_003")
    assert response.headers["allow"] == allow


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/auth/logout"),
        ("POST", "/v1/apikeys"),
        ("GET", "/v1/apikeys"),
        ("GET", "/v1/apikeys/{victim}"),
        ("PATCH", "/v1/apikeys/{victim}"),
        ("DELETE", "/v1/apikeys/{victim}"),
        ("POST", "/v1/apikeys/{victim}/roll"),
        ("GET", "/v1/usage"),
        ("GET", "/v1/audit"),
    ],
)
def test_without_a_key_everything_but_login_and_the_document_is_401(
    client: TestClient, ks: Keystile, victim: CreatedKey, method: str, path: str
) -> None:
    response = client.request(method, path.replace("{victim}", victim.key_id))
    assert_error(response, 401, "AUTH_001")
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert ks.keys.get(victim.key_id).revoked_at is None


def test_login_and_the_document_need_no_key(client: TestClient) -> None:
    assert client.get("/v1/openapi.json").status_code == 200
    assert_error(client.post("/v1/auth/login"), 401, "AUTH_001")  # login checks it itself


def test_the_api_is_built_from_the_managers_alone(ks: Keystile) -> None:
    """No engine and no adapter: the four managers, and requests handed to ``handle``."""
    with pytest.raises(TypeError):
        ManagementAPI(ks)  # type: ignore[arg-type, call-arg]
    api = ManagementAPI(keys=ks.keys, sessions=ks.sessions, quotas=ks.quotas, audit=ks.audit)
    created = ks.keys.create(ACCT, "reader", permissions=["readApiKeys"])
    reader = ks.authenticate([("x-api-key", created.token)])

    def answer(method: str, path: str, principal: Any = reader) -> tuple[int, Any]:
        response = api.handle(ApiRequest(method, path, "", [], b"", principal))
        return response.status, response.body

    status, body = answer("GET", "/apikeys/")
    assert status == 200
    assert [key["id"] for key in json.loads(body)["items"]] == [created.key_id]
    assert answer("GET", "/openapi.json", None) == (200, openapi_document().encode())
    status, body = answer("GET", "/apikeys", None)
    assert (status, json.loads(body)["error"]["code"]) == (401, "AUTH_001")
    status, body = answer("DELETE", "/usage")
    assert (status, json.loads(body)["error"]["code"]) == (405, "REQ_003")
    status, body = answer("GET", "/openapi-json")
    assert (status, json.loads(body)["error"]["code"]) == (404, "REQ_002")


# -- billing ----------------------------------------------------------------------------------


def test_management_requests_cost_no_pages_but_are_counted(
    client: TestClient,
    ks: Keystile,
    admin: CreatedKey,
    victim: CreatedKey,
    auth: dict[str, str],
) -> None:
    client.get("/v1/apikeys", headers=auth)
    client.post("/v1/apikeys", headers=auth, json={"name": "n"})
    client.patch(f"/v1/apikeys/{victim.key_id}", headers=auth, json={"name": "v"})
    client.get("/v1/audit", headers=auth)
    client.get("/v1/apikeys/key_AAAAAAAAAAAAAAAA", headers=auth)  # a 404 is still a request
    report = ks.quotas.usage(ACCT)
    assert (report.pages, report.requests) == (0, 5)
    client.get("/jobs", headers=auth)
    report = ks.quotas.usage(ACCT)
    assert (report.pages, report.requests) == (1, 6)


def test_the_management_api_works_when_the_quota_is_spent(
    make_keystile: Make, clock: Clock
) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=1)
    admin = ks.keys.create(ACCT, "admin", permissions=ALL)
    with TestClient(build_app(ks)) as client:
        auth = key_headers(admin.token)
        assert client.get("/jobs", headers=auth).status_code == 200
        assert_error(client.get("/jobs", headers=auth), 429, "BILLING_001")
        assert client.get("/v1/apikeys", headers=auth).status_code == 200
        assert client.get("/v1/usage", headers=auth).json()["remaining"] == 0


def test_problem_json_on_request(client: TestClient, auth: dict[str, str]) -> None:
    """RFC 9457 for a client that asks: a 422 names its field, a 404 and a 405 their status."""
    problem = {"accept": "application/problem+json"}
    bad = client.post("/v1/apikeys", headers={**auth, **problem}, json={"name": ""})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    body = bad.json()
    assert (body["type"], body["status"], body["code"]) == ("about:blank", 422, "REQ_001")
    assert body["field"] == "name" and body["title"] == HTTPStatus(422).phrase
    missing = client.get("/v1/apikeys/key_nosuchkey", headers={**auth, **problem})
    assert (missing.status_code, missing.json()["code"]) == (404, "REQ_002")
    wrong = client.put("/v1/apikeys", headers={**auth, **problem})
    assert (wrong.status_code, wrong.json()["code"]) == (405, "REQ_003")
    assert wrong.headers["allow"]
    # The same failure without asking keeps the seeds' body.
    assert_error(
        client.post("/v1/apikeys", headers=auth, json={"name": ""}), 422, "REQ_001", "name"
    )


@pytest.fixture
def from_office(ks: Keystile) -> Iterator[TestClient]:
    """A client whose address is 198.51.100.20 (inside the restricted caller's network)."""
    with TestClient(build_app(ks), client=("198.51.100.20", 40000)) as test_client:
        yield test_client


def test_allowed_ips_are_set_shown_and_checked(client: TestClient, auth: dict[str, str]) -> None:
    made = client.post(
        "/v1/apikeys", headers=auth, json={"name": "n", "allowed_ips": ["10.1.2.3/8", "::1"]}
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert key["allowed_ips"] == ["10.0.0.0/8", "::1/128"]
    url = f"/v1/apikeys/{key['id']}"
    bad = client.patch(url, headers=auth, json={"allowed_ips": ["10.0.0.0/33"]})
    assert_error(bad, 422, "REQ_001", "allowed_ips")
    assert_error(client.patch(url, headers=auth, json={"allowed_ips": "10.0.0.0/8"}), 422,
                 "REQ_001", "allowed_ips")  # fmt: skip
    lifted = client.patch(url, headers=auth, json={"allowed_ips": None})
    assert lifted.status_code == 200 and lifted.json()["allowed_ips"] == []


def test_a_restricted_caller_makes_and_changes_only_keys_as_restricted(
    ks: Keystile, from_office: TestClient
) -> None:
    office = ["198.51.100.0/24"]
    caller = ks.keys.create(ACCT, "office", permissions=ALL, allowed_ips=office)
    headers = key_headers(caller.token)
    inherited = from_office.post("/v1/apikeys", headers=headers, json={"name": "a"})
    assert inherited.status_code == 201 and inherited.json()["key"]["allowed_ips"] == office
    narrower = {"name": "b", "allowed_ips": ["198.51.100.20"]}
    made = from_office.post("/v1/apikeys", headers=headers, json=narrower)
    assert made.json()["key"]["allowed_ips"] == ["198.51.100.20/32"]
    for wider in (None, [], ["198.51.0.0/16"], ["2001:db8::/32"]):
        asked = {"name": "c", "allowed_ips": wider}
        assert_error(from_office.post("/v1/apikeys", headers=headers, json=asked), 403, "AUTH_004")
    anywhere = ks.keys.create(ACCT, "anywhere", permissions=["readUsage"])
    url = f"/v1/apikeys/{anywhere.key_id}"
    assert_error(from_office.patch(url, headers=headers, json={"name": "x"}), 403, "AUTH_004")
    assert_error(from_office.delete(url, headers=headers), 403, "AUTH_004")
    mine = f"/v1/apikeys/{made.json()['key']['id']}"
    widened = from_office.patch(mine, headers=headers, json={"allowed_ips": ["0.0.0.0/0"]})
    assert_error(widened, 403, "AUTH_004")
    assert from_office.patch(mine, headers=headers, json={"name": "d"}).status_code == 200


def test_login_from_outside_a_keys_networks_is_refused(
    ks: Keystile, from_office: TestClient
) -> None:
    elsewhere = ks.keys.create(ACCT, "lab", allowed_ips=["203.0.113.0/24"])
    pair = {"x-api-key": elsewhere.key_id, "x-api-secret": elsewhere.secret}
    assert_error(from_office.post("/v1/auth/login", headers=pair), 403, "AUTH_008")
    office = ks.keys.create(ACCT, "office", allowed_ips=["198.51.100.0/24"])
    pair = {"x-api-key": office.key_id, "x-api-secret": office.secret}
    login = from_office.post("/v1/auth/login", headers=pair)
    assert login.status_code == 200, login.text
    session = {"authorization": f"Bearer {login.json()['token']}"}
    assert from_office.get("/jobs", headers=session).status_code == 200


def test_rate_limits_are_set_shown_and_no_looser_than_the_callers(
    client: TestClient, ks: Keystile, auth: dict[str, str]
) -> None:
    made = client.post("/v1/apikeys", headers=auth, json={"name": "n", "rate_limit": "5 / Minute"})
    assert made.status_code == 201 and made.json()["key"]["rate_limit"] == "5/min"
    url = f"/v1/apikeys/{made.json()['key']['id']}"
    assert_error(client.patch(url, headers=auth, json={"rate_limit": "5/day"}), 422, "REQ_001",
                 "rate_limit")  # fmt: skip
    assert client.patch(url, headers=auth, json={"rate_limit": None}).json()["rate_limit"] is None
    caller = ks.keys.create(ACCT, "slow", permissions=ALL, rate_limit="600/min")
    headers = key_headers(caller.token)
    inherited = client.post("/v1/apikeys", headers=headers, json={"name": "a"})
    assert inherited.json()["key"]["rate_limit"] == "600/min"
    slower = client.post("/v1/apikeys", headers=headers, json={"name": "b", "rate_limit": "10/s"})
    assert slower.json()["key"]["rate_limit"] == "10/s"  # the same rate, said per second
    for looser in (None, "11/s", "601/min"):
        asked = {"name": "c", "rate_limit": looser}
        assert_error(client.post("/v1/apikeys", headers=headers, json=asked), 403, "AUTH_004")
    unlimited = ks.keys.create(ACCT, "fast", permissions=["readUsage"])
    target = f"/v1/apikeys/{unlimited.key_id}"
    assert_error(client.patch(target, headers=headers, json={"name": "x"}), 403, "AUTH_004")
