"""Sessions: ``POST /auth/login`` for a session token, what it may do, when it ends.

Through Starlette (``KeystileMiddleware`` + ``management_mount``), with and without Redis, on
the ``clock`` fixture's time. Cross-process behaviour uses two engines sharing one SQLite file
and one Redis.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from keystile import AuthError, CreatedKey, Keystile
from keystile._core import tokens
from keystile._services.loginlimits import KNOWN_SECRET_TTL
from keystile.starlette import KeystileMiddleware, management_mount, requires

from .conftest import Clock

UTC = timezone.utc
ACCT = "acct_s"
OTHER = "acct_t"
PERMS = ["writeApiKeys", "readApiKeys", "readUsage", "jobs:read"]
TTL, IDLE = 600, 120
Make = Callable[..., Keystile]


async def whoami(request: Request) -> Response:
    principal = request.state.principal
    return JSONResponse(
        {
            "key_id": principal.key_id,
            "account_id": principal.account_id,
            "auth_method": principal.auth_method,
            "permissions": sorted(principal.permissions),
            "session_id": principal.session_id,
            "environment": principal.environment,
        }
    )


@requires("jobs:read")
async def jobs(request: Request) -> Response:
    return JSONResponse({"ok": True})


def build_app(ks: Keystile) -> Starlette:
    app = Starlette(
        routes=[Route("/whoami", whoami), Route("/jobs", jobs), management_mount("/v1", ks)]
    )
    app.add_middleware(KeystileMiddleware, keystile=ks)
    return app


def session_settings(**extra: Any) -> dict[str, Any]:
    return {"session_ttl": TTL, "session_idle_ttl": IDLE, **extra}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def ks(request: pytest.FixtureRequest, make_keystile: Make, clock: Clock) -> Keystile:
    if request.param == "redis":
        redis_settings = request.getfixturevalue("redis_settings")
        return make_keystile(clock=clock, **session_settings(**redis_settings))
    return make_keystile(clock=clock, **session_settings())


@pytest.fixture
def client(ks: Keystile) -> Iterator[TestClient]:
    with TestClient(build_app(ks)) as test_client:
        yield test_client


@pytest.fixture
def key(ks: Keystile) -> CreatedKey:
    return ks.keys.create(ACCT, "owner", permissions=PERMS, accounts=[OTHER])


def login(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    response = client.post("/v1/auth/login", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"authorization": f"Bearer {session['token']}"}


def code_of(response: Any) -> str:
    code: str = response.json()["error"]["code"]
    return code


def wrong_token(key: CreatedKey) -> str:
    """Well formed, right id, checksum right: only argon2 can tell it is wrong."""
    kid = key.key_id.removeprefix("key_")
    return tokens.format_token("sk", "live", kid, tokens.new_secret(kid))


# -- logging in -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["key_and_secret", "token_in_x_api_key", "token_as_bearer"])
def test_login_with_every_credential_form(
    client: TestClient, key: CreatedKey, clock: Clock, form: str
) -> None:
    headers = {
        "key_and_secret": {"x-api-key": key.key_id, "x-api-secret": key.secret},
        "token_in_x_api_key": {"x-api-key": key.token},
        "token_as_bearer": {"authorization": f"Bearer {key.token}"},
    }[form]
    session = login(client, headers)
    assert session["token"].startswith("sk_sess_")
    assert session["token"].split("_")[2] == session["session_id"]
    assert session["key_id"] == key.key_id and session["account_id"] == ACCT
    assert session["idle_timeout"] == IDLE
    started = datetime.fromtimestamp(clock.now, UTC)
    assert datetime.fromisoformat(session["expires_at"]) == started + timedelta(seconds=TTL)
    # The token works in either header.
    for headers in (bearer(session), {"x-api-key": session["token"]}):
        assert client.get("/whoami", headers=headers).json()["auth_method"] == "session"


def test_login_body_may_be_empty_or_an_empty_object(client: TestClient, key: CreatedKey) -> None:
    headers = {"x-api-key": key.token}
    for body in (b"", b"{}", b" {} "):
        assert client.post("/v1/auth/login", headers=headers, content=body).status_code == 200
    refused = client.post("/v1/auth/login", headers=headers, json={"ttl": 5})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "ttl"


def test_a_session_acts_with_its_keys_account_and_permissions(
    client: TestClient, key: CreatedKey
) -> None:
    session = login(client, {"x-api-key": key.token})
    me = client.get("/whoami", headers=bearer(session)).json()
    assert me == {
        "key_id": key.key_id,
        "account_id": ACCT,
        "auth_method": "session",
        "permissions": sorted(PERMS),
        "session_id": session["session_id"],
        "environment": "live",
    }
    assert client.get("/jobs", headers=bearer(session)).status_code == 200
    keys = client.get("/v1/apikeys", headers=bearer(session)).json()
    assert [item["id"] for item in keys["items"]] == [key.key_id]
    # It may act for the key's extra account, like the key.
    acting = client.get("/whoami", headers={**bearer(session), "x-account-id": OTHER}).json()
    assert acting["account_id"] == OTHER
    forbidden = client.get("/whoami", headers={**bearer(session), "x-account-id": "acct_zz"})
    assert forbidden.status_code == 403 and code_of(forbidden) == "AUTH_005"
    # And keys it makes are the key's, never beyond it.
    made = client.post("/v1/apikeys", headers=bearer(session), json={"name": "via-session"})
    assert made.status_code == 201
    beyond = client.post(
        "/v1/apikeys", headers=bearer(session), json={"name": "x", "permissions": ["readAudit"]}
    )
    assert beyond.status_code == 403


def test_a_session_acts_for_the_account_it_logged_in_for(
    client: TestClient, ks: Keystile, key: CreatedKey
) -> None:
    """x-account-id at login picks the session's account: the login response, the session
    record and every request of the session agree on it."""
    session = login(client, {"x-api-key": key.token, "x-account-id": OTHER})
    assert session["account_id"] == OTHER
    record = ks.store.get_session(session["session_id"])
    assert record is not None and record.account_id == OTHER
    assert client.get("/whoami", headers=bearer(session)).json()["account_id"] == OTHER
    theirs = client.get("/v1/apikeys", headers=bearer(session)).json()
    assert theirs["items"] == [] and theirs["total"] == 0  # OTHER has no keys yet
    # The key's own account stays reachable with the header; an unrelated one does not.
    home = client.get("/whoami", headers={**bearer(session), "x-account-id": ACCT})
    assert home.json()["account_id"] == ACCT
    denied = client.get("/whoami", headers={**bearer(session), "x-account-id": "acct_zz"})
    assert denied.status_code == 403 and code_of(denied) == "AUTH_005"


def test_a_session_token_cannot_log_in_again(client: TestClient, key: CreatedKey) -> None:
    session = login(client, {"x-api-key": key.token})
    for headers in (bearer(session), {"x-api-key": session["token"]}):
        response = client.post("/v1/auth/login", headers=headers)
        assert response.status_code == 400 and code_of(response) == "AUTH_006"


def test_the_session_secret_is_stored_hashed(
    client: TestClient, ks: Keystile, key: CreatedKey
) -> None:
    session = login(client, {"x-api-key": key.token})
    _, _, sid, secret = session["token"].split("_")
    record = ks.store.get_session(sid)
    assert record is not None
    assert record.secret_digest != secret and secret not in repr(record)
    assert record.secret_digest == hashlib.sha256(secret.encode()).hexdigest()
    assert record.kid == key.key_id.removeprefix("key_") and record.account_id == ACCT
    assert record.ended_at is None


def test_a_wrong_session_secret_is_refused(client: TestClient, key: CreatedKey) -> None:
    session = login(client, {"x-api-key": key.token})
    sid = session["session_id"]
    forged = tokens.format_token("sk", "sess", sid, tokens.new_secret(sid))
    response = client.get("/whoami", headers={"authorization": f"Bearer {forged}"})
    assert response.status_code == 401 and code_of(response) == "AUTH_002"
    assert client.get("/whoami", headers=bearer(session)).status_code == 200


@pytest.mark.parametrize(
    ("change", "code"),
    [("revoke", "AUTH_003"), ("disable", "AUTH_003"), ("expire", "AUTH_003")],
)
def test_a_key_that_no_longer_works_cannot_log_in(
    client: TestClient, ks: Keystile, key: CreatedKey, clock: Clock, change: str, code: str
) -> None:
    if change == "revoke":
        ks.keys.revoke(key.key_id)
    elif change == "disable":
        ks.keys.update(key.key_id, enabled=False)
    else:
        ks.keys.update(key.key_id, expires_at=datetime.fromtimestamp(clock.now - 1, UTC))
    response = client.post("/v1/auth/login", headers={"x-api-key": key.token})
    assert response.status_code == 401 and code_of(response) == code


# -- lifetimes --------------------------------------------------------------------------------


def test_a_session_ends_session_ttl_after_login_even_when_busy(
    client: TestClient, key: CreatedKey, clock: Clock
) -> None:
    session = login(client, {"x-api-key": key.token})
    for _ in range(5):  # used every 100 s: never idle
        clock.advance(100)
        assert client.get("/whoami", headers=bearer(session)).status_code == 200
    clock.advance(99)  # 599 s after login
    assert client.get("/whoami", headers=bearer(session)).status_code == 200
    clock.advance(1)  # 600 s: over
    response = client.get("/whoami", headers=bearer(session))
    assert response.status_code == 401 and code_of(response) == "AUTH_003"
    assert "expired" in response.json()["error"]["message"]
    # The key itself still works, and can log in afresh.
    assert client.get("/whoami", headers={"x-api-key": key.token}).status_code == 200
    assert (
        client.get("/whoami", headers=bearer(login(client, {"x-api-key": key.token}))).status_code
        == 200
    )


def test_a_session_ends_after_session_idle_ttl_unused(
    client: TestClient, key: CreatedKey, clock: Clock
) -> None:
    session = login(client, {"x-api-key": key.token})
    clock.advance(IDLE)  # exactly the idle timeout: still fine
    assert client.get("/whoami", headers=bearer(session)).status_code == 200
    clock.advance(IDLE)  # the use above restarted the idle clock
    assert client.get("/whoami", headers=bearer(session)).status_code == 200
    clock.advance(IDLE + 1)
    response = client.get("/whoami", headers=bearer(session))
    assert response.status_code == 401 and code_of(response) == "AUTH_003"
    assert "idle" in response.json()["error"]["message"]


def test_a_session_never_outlives_its_key(client: TestClient, ks: Keystile, clock: Clock) -> None:
    key_expiry = datetime.fromtimestamp(clock.now, UTC) + timedelta(seconds=100)
    short = ks.keys.create(ACCT, "short", permissions=PERMS, expires_at=key_expiry)
    session = login(client, {"x-api-key": short.token})
    assert datetime.fromisoformat(session["expires_at"]) == key_expiry  # not login + TTL
    clock.advance(99)
    assert client.get("/whoami", headers=bearer(session)).status_code == 200
    clock.advance(1)
    response = client.get("/whoami", headers=bearer(session))
    assert response.status_code == 401 and code_of(response) == "AUTH_003"


def test_shortening_the_keys_expiry_shortens_its_sessions(
    client: TestClient, ks: Keystile, key: CreatedKey, clock: Clock
) -> None:
    session = login(client, {"x-api-key": key.token})
    assert client.get("/whoami", headers=bearer(session)).status_code == 200
    ks.keys.update(key.key_id, expires_at=datetime.fromtimestamp(clock.now + 10, UTC))
    clock.advance(10)
    assert client.get("/whoami", headers=bearer(session)).status_code == 401


# -- logout, revoke, roll, update -------------------------------------------------------------


def test_logout_ends_the_session_only(client: TestClient, ks: Keystile, key: CreatedKey) -> None:
    first = login(client, {"x-api-key": key.token})
    second = login(client, {"x-api-key": key.token})
    assert client.get("/whoami", headers=bearer(first)).status_code == 200
    response = client.post("/v1/auth/logout", headers=bearer(first))
    assert response.status_code == 204
    refused = client.get("/whoami", headers=bearer(first))
    assert refused.status_code == 401 and code_of(refused) == "AUTH_003"
    # Logging out twice: the token is already refused by the middleware.
    assert client.post("/v1/auth/logout", headers=bearer(first)).status_code == 401
    assert client.get("/whoami", headers=bearer(second)).status_code == 200
    assert client.get("/whoami", headers={"x-api-key": key.token}).status_code == 200
    record = ks.store.get_session(first["session_id"])
    assert record is not None and record.ended_at is not None


@pytest.mark.parametrize("change", ["revoke", "roll", "delete", "disable"])
def test_revoke_roll_delete_or_disable_end_every_session_of_the_key(
    client: TestClient, ks: Keystile, key: CreatedKey, change: str
) -> None:
    other = ks.keys.create(ACCT, "bystander", permissions=["jobs:read"])
    sessions = [login(client, {"x-api-key": key.token}) for _ in range(2)]
    theirs = login(client, {"x-api-key": other.token})
    for session in (*sessions, theirs):
        assert client.get("/whoami", headers=bearer(session)).status_code == 200  # cached
    if change == "revoke":
        ks.keys.revoke(key.key_id)
    elif change == "roll":
        ks.keys.roll(key.key_id, grace_seconds=3600)  # even with a grace for the old secret
    elif change == "delete":
        ks.keys.delete(key.key_id)
    else:
        ks.keys.update(key.key_id, enabled=False)
    for session in sessions:
        response = client.get("/whoami", headers=bearer(session))
        assert response.status_code == 401 and code_of(response) == "AUTH_003", change
    assert client.get("/whoami", headers=bearer(theirs)).status_code == 200


def test_revoking_through_the_api_ends_the_sessions(
    client: TestClient, ks: Keystile, key: CreatedKey
) -> None:
    admin = ks.keys.create(ACCT, "admin", permissions=[*PERMS, "readAudit"], accounts=[OTHER])
    session = login(client, {"x-api-key": key.token})
    assert client.get("/whoami", headers=bearer(session)).status_code == 200
    rolled = client.post(f"/v1/apikeys/{key.key_id}/roll", headers={"x-api-key": admin.token})
    assert rolled.status_code == 200
    assert client.get("/whoami", headers=bearer(session)).status_code == 401
    # A session of the new secret works.
    fresh = login(client, {"x-api-key": rolled.json()["token"]})
    assert client.get("/whoami", headers=bearer(fresh)).status_code == 200


def test_an_update_applies_to_live_sessions(
    client: TestClient, ks: Keystile, key: CreatedKey
) -> None:
    session = login(client, {"x-api-key": key.token})
    assert client.get("/jobs", headers=bearer(session)).status_code == 200
    ks.keys.update(key.key_id, permissions=["readUsage"])
    denied = client.get("/jobs", headers=bearer(session))
    assert denied.status_code == 403 and code_of(denied) == "AUTH_004"
    assert client.get("/whoami", headers=bearer(session)).json()["permissions"] == ["readUsage"]
    ks.keys.update(key.key_id, permissions=PERMS)
    assert client.get("/jobs", headers=bearer(session)).status_code == 200


@pytest.mark.parametrize("change", ["revoke", "roll"])
def test_a_login_racing_a_revoke_or_roll_leaves_no_live_session(
    client: TestClient,
    ks: Keystile,
    key: CreatedKey,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    """The key changes after login verified it but before the session is written: the session
    that comes back must not work."""
    insert = ks.store.insert_session

    def racing_insert(session: Any) -> None:
        if change == "revoke":
            ks.keys.revoke(key.key_id)
        else:
            ks.keys.roll(key.key_id)
        insert(session)

    monkeypatch.setattr(ks.store, "insert_session", racing_insert)
    response = client.post("/v1/auth/login", headers={"x-api-key": key.token})
    monkeypatch.undo()
    # Login had verified the key, so it hands out a token; that token must be refused.
    assert response.status_code == 200, response.text
    used = client.get("/whoami", headers=bearer(response.json()))
    assert used.status_code == 401 and code_of(used) == "AUTH_003"


# -- two engines, one store, one Redis --------------------------------------------------------


@pytest.fixture
def pair(
    make_keystile: Make, clock: Clock, redis_settings: dict[str, Any], tmp_path: Path
) -> Iterator[tuple[TestClient, TestClient, Keystile, Keystile]]:
    """Two processes: their own engines and caches, one SQLite file, one Redis."""
    shared = session_settings(store=f"sqlite:///{tmp_path / 'keys.db'}", **redis_settings)
    a = make_keystile(clock=clock, **shared)
    b = make_keystile(clock=clock, **shared)
    with TestClient(build_app(a)) as client_a, TestClient(build_app(b)) as client_b:
        yield client_a, client_b, a, b


@pytest.mark.redis
def test_logout_in_one_process_ends_the_session_in_every_process(
    pair: tuple[TestClient, TestClient, Keystile, Keystile],
) -> None:
    client_a, client_b, a, _ = pair
    key = a.keys.create(ACCT, "owner", permissions=PERMS)
    session = login(client_a, {"x-api-key": key.token})
    for client in (client_a, client_b):  # both processes cache it
        assert client.get("/whoami", headers=bearer(session)).status_code == 200
    assert client_a.post("/v1/auth/logout", headers=bearer(session)).status_code == 204
    for client in (client_b, client_a):
        response = client.get("/whoami", headers=bearer(session))
        assert response.status_code == 401 and code_of(response) == "AUTH_003"


@pytest.mark.redis
@pytest.mark.parametrize("change", ["revoke", "roll", "update"])
def test_key_changes_in_one_process_reach_sessions_in_every_process(
    pair: tuple[TestClient, TestClient, Keystile, Keystile], change: str
) -> None:
    client_a, client_b, a, _ = pair
    key = a.keys.create(ACCT, "owner", permissions=PERMS)
    session = login(client_b, {"x-api-key": key.token})
    for client in (client_a, client_b):
        assert client.get("/jobs", headers=bearer(session)).status_code == 200
    if change == "revoke":
        a.keys.revoke(key.key_id)
    elif change == "roll":
        a.keys.roll(key.key_id)
    else:
        a.keys.update(key.key_id, permissions=["readUsage"])
    expected = 403 if change == "update" else 401
    for client in (client_b, client_a):
        assert client.get("/jobs", headers=bearer(session)).status_code == expected


@pytest.mark.redis
def test_a_busy_session_is_not_idle_in_another_process(
    pair: tuple[TestClient, TestClient, Keystile, Keystile], clock: Clock
) -> None:
    client_a, client_b, a, _ = pair
    key = a.keys.create(ACCT, "owner", permissions=PERMS)
    session = login(client_a, {"x-api-key": key.token})
    for _ in range(5):  # busy on A every 100 s (idle timeout 120 s)
        clock.advance(100)
        assert client_a.get("/whoami", headers=bearer(session)).status_code == 200
    a.flush()  # what A's flusher does every few seconds: last use goes to the store
    clock.advance(10)
    assert client_b.get("/whoami", headers=bearer(session)).status_code == 200
    # Truly idle now (nobody used it for longer than the timeout): refused in both.
    clock.advance(IDLE + 1)
    for client in (client_b, client_a):
        response = client.get("/whoami", headers=bearer(session))
        assert response.status_code == 401 and code_of(response) == "AUTH_003"


@pytest.mark.redis
def test_failed_logins_are_counted_across_processes(
    make_keystile: Make, clock: Clock, redis_settings: dict[str, Any], tmp_path: Path
) -> None:
    shared = session_settings(
        store=f"sqlite:///{tmp_path / 'keys.db'}", login_max_failures=2, **redis_settings
    )
    a, b = make_keystile(clock=clock, **shared), make_keystile(clock=clock, **shared)
    key = a.keys.create(ACCT, "owner", permissions=PERMS)
    with TestClient(build_app(a)) as client_a, TestClient(build_app(b)) as client_b:
        assert (
            client_a.post("/v1/auth/login", headers={"x-api-key": wrong_token(key)}).status_code
            == 401
        )
        assert (
            client_b.post("/v1/auth/login", headers={"x-api-key": wrong_token(key)}).status_code
            == 401
        )
        for client in (client_a, client_b):
            response = client.post("/v1/auth/login", headers={"x-api-key": wrong_token(key)})
            assert response.status_code == 429 and code_of(response) == "AUTH_007"
        # The key's own credential is known from its creation: its owner is never locked out.
        for client in (client_a, client_b):
            response = client.post("/v1/auth/login", headers={"x-api-key": key.token})
            assert response.status_code == 200


# -- failed-login limits ----------------------------------------------------------------------


@pytest.fixture
def limited(make_keystile: Make, clock: Clock) -> Keystile:
    return make_keystile(
        clock=clock, **session_settings(login_max_failures=3, login_failure_window=60)
    )


def count_argon2(ks: Keystile, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    verify = ks.hasher.verify

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return verify(*args, **kwargs)

    monkeypatch.setattr(ks.hasher, "verify", counting)
    return calls


def test_too_many_failed_logins_lock_the_client_out_without_argon2(
    limited: Keystile, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = limited.keys.create(ACCT, "owner", permissions=PERMS)
    calls = count_argon2(limited, monkeypatch)
    app = build_app(limited)
    with TestClient(app, client=("10.0.0.1", 1000)) as attacker:
        for n in range(3):
            response = attacker.post("/v1/auth/login", headers={"x-api-key": wrong_token(key)})
            assert response.status_code == 401 and code_of(response) == "AUTH_002"
            assert calls[0] == n + 1  # each wrong secret checked once
        for _ in range(2):
            refused = attacker.post("/v1/auth/login", headers={"x-api-key": wrong_token(key)})
            assert refused.status_code == 429 and code_of(refused) == "AUTH_007"
            assert refused.headers["retry-after"] == "60"
            assert calls[0] == 3  # refused before any argon2
        # The limit is on logging in: the key itself still works from there, and its own
        # credential, known since the key was made, still logs in (a shared address: NAT).
        assert attacker.get("/whoami", headers={"x-api-key": key.token}).status_code == 200
        assert login(attacker, {"x-api-key": key.key_id, "x-api-secret": key.secret})
    with TestClient(app, client=("10.0.0.2", 1000)) as owner:
        # Another client is not locked out, and the owner's right secret works.
        session = login(owner, {"x-api-key": key.key_id, "x-api-secret": key.secret})
        assert owner.get("/whoami", headers=bearer(session)).status_code == 200
        # Its own wrong attempts are its own count.
        response = owner.post("/v1/auth/login", headers={"x-api-key": wrong_token(key)})
        assert response.status_code == 401


def test_garbage_credentials_count_as_failures_but_missing_ones_do_not(
    limited: Keystile,
) -> None:
    key = limited.keys.create(ACCT, "owner", permissions=PERMS)
    with TestClient(build_app(limited), client=("10.0.0.3", 1)) as client:
        for _ in range(5):
            assert client.post("/v1/auth/login").status_code == 401  # AUTH_001: not counted
        assert login(client, {"x-api-key": key.token})
        for _ in range(3):
            response = client.post("/v1/auth/login", headers={"x-api-key": "sk_live_garbage"})
            assert response.status_code == 401 and code_of(response) == "AUTH_002"
        other = limited.keys.create(ACCT, "other", permissions=PERMS)
        response = client.post("/v1/auth/login", headers={"x-api-key": wrong_token(other)})
        assert response.status_code == 429 and code_of(response) == "AUTH_007"


def test_a_client_over_its_limit_still_logs_in_with_the_known_secret(
    limited: Keystile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared address (NAT, a proxy without forwarded-for) must not lock the owner out."""
    key = limited.keys.create(ACCT, "owner", permissions=PERMS)
    with TestClient(build_app(limited), client=("10.0.0.5", 1)) as client:
        assert login(client, {"x-api-key": key.token})
        for _ in range(3):
            response = client.post("/v1/auth/login", headers={"x-api-key": "sk_live_junk"})
            assert response.status_code == 401
        calls = count_argon2(limited, monkeypatch)
        for junk in ("sk_live_junk", wrong_token(key)):
            response = client.post("/v1/auth/login", headers={"x-api-key": junk})
            assert response.status_code == 429 and code_of(response) == "AUTH_007"
        assert calls[0] == 0
        assert login(client, {"x-api-key": key.key_id, "x-api-secret": key.secret})


def test_a_session_opened_with_a_rolled_keys_old_secret_ends_with_the_grace(
    ks: Keystile, client: TestClient, key: CreatedKey, clock: Clock
) -> None:
    ks.keys.roll(key.key_id, grace_seconds=60)
    session = login(client, {"x-api-key": key.token})  # the old secret, within its grace
    assert client.get("/whoami", headers=bearer(session)).status_code == 200
    expires = datetime.fromisoformat(session["expires_at"].replace("Z", "+00:00"))
    assert expires <= datetime.fromtimestamp(clock(), timezone.utc) + timedelta(seconds=60)
    clock.advance(61)
    assert client.get("/whoami", headers=bearer(session)).status_code == 401
    assert client.get("/whoami", headers={"x-api-key": key.token}).status_code == 401


def test_a_roll_racing_a_login_leaves_no_session_of_the_old_secret(
    ks: Keystile, client: TestClient, key: CreatedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    verify = ks.verify_with_snapshot
    rolled: list[Any] = []

    def verify_then_roll(creds: Any, origin: Any = None) -> Any:
        verified = verify(creds, origin)
        if not rolled:  # the roll lands between the check of the secret and the session
            rolled.append(ks.keys.roll(key.key_id))
        return verified

    monkeypatch.setattr(ks, "verify_with_snapshot", verify_then_roll)
    response = client.post("/v1/auth/login", headers={"x-api-key": key.token})
    assert response.status_code == 401 and code_of(response) == "AUTH_002"
    assert rolled and login(client, {"x-api-key": rolled[0].token})


def test_the_failure_window_passes(make_keystile: Make, clock: Clock) -> None:
    now = [1000.0]
    limited = make_keystile(
        clock=clock,
        monotonic=lambda: now[0],
        **session_settings(login_max_failures=3, login_failure_window=60),
    )
    key = limited.keys.create(ACCT, "owner", permissions=PERMS)
    with TestClient(build_app(limited), client=("10.0.0.4", 1)) as client:
        for _ in range(3):
            client.post("/v1/auth/login", headers={"x-api-key": wrong_token(key)})
        guess = {"x-api-key": wrong_token(key)}
        assert client.post("/v1/auth/login", headers=guess).status_code == 429
        now[0] += 61
        assert client.post("/v1/auth/login", headers=guess).status_code == 401  # counted anew


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def key_limited(request: pytest.FixtureRequest, make_keystile: Make, clock: Clock) -> Keystile:
    """Per client 3 failures, per key id 5, from anywhere."""
    extra = request.getfixturevalue("redis_settings") if request.param == "redis" else {}
    limits = {"login_max_failures": 3, "login_max_failures_per_key": 5, **extra}
    return make_keystile(clock=clock, **session_settings(**limits))


def attack_from_many_clients(app: Starlette, key: CreatedKey, clients: int) -> None:
    for n in range(clients):
        with TestClient(app, client=(f"10.9.0.{n}", 1)) as attacker:
            response = attacker.post("/v1/auth/login", headers={"x-api-key": wrong_token(key)})
            assert response.status_code == 401 and code_of(response) == "AUTH_002"


def test_failures_spread_over_many_clients_limit_the_key_id(
    key_limited: Keystile, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = key_limited.keys.create(ACCT, "owner", permissions=PERMS)
    other = key_limited.keys.create(ACCT, "other", permissions=PERMS)
    app = build_app(key_limited)
    attack_from_many_clients(app, key, 5)  # no client reaches its own limit of 3
    calls = count_argon2(key_limited, monkeypatch)
    with TestClient(app, client=("10.9.1.1", 1)) as newcomer:
        for _ in range(3):
            refused = newcomer.post("/v1/auth/login", headers={"x-api-key": wrong_token(key)})
            assert refused.status_code == 429 and code_of(refused) == "AUTH_007"
            assert refused.headers["retry-after"] == "900"
        assert calls[0] == 0  # refused before any argon2
        # The owner has never logged in, yet its credential is known since the key was made:
        # its first login goes through, in either form.
        assert login(newcomer, {"x-api-key": key.token})
        assert login(newcomer, {"x-api-key": key.key_id, "x-api-secret": key.secret})
        assert calls[0] <= 2  # the owner's secret, checked at most once per form
        assert newcomer.get("/whoami", headers={"x-api-key": key.token}).status_code == 200
        assert login(newcomer, {"x-api-key": other.token})


def test_the_owners_known_secret_passes_the_key_ids_limit(
    key_limited: Keystile, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = key_limited.keys.create(ACCT, "owner", permissions=PERMS)
    app = build_app(key_limited)
    with TestClient(app, client=("10.8.0.1", 1)) as owner:
        login(owner, {"x-api-key": key.token})  # remembered as this key's known secret
    attack_from_many_clients(app, key, 5)
    calls = count_argon2(key_limited, monkeypatch)
    # From a new address too, and in the other credential form: same key, same digest.
    with TestClient(app, client=("10.8.0.2", 1)) as owner:
        session = login(owner, {"x-api-key": key.key_id, "x-api-secret": key.secret})
        assert owner.get("/whoami", headers=bearer(session)).status_code == 200
        refused = owner.post("/v1/auth/login", headers={"x-api-key": wrong_token(key)})
        assert refused.status_code == 429 and code_of(refused) == "AUTH_007"
    assert calls[0] <= 1  # the owner's login may check its secret once; the guess never


@pytest.mark.redis
def test_the_known_secret_is_a_digest_and_not_the_secret(
    make_keystile: Make, clock: Clock, redis_settings: dict[str, Any], redis_url: str
) -> None:
    ks = make_keystile(clock=clock, **session_settings(**redis_settings))
    key = ks.keys.create(ACCT, "owner", permissions=PERMS)
    with TestClient(build_app(ks)) as client:
        login(client, {"x-api-key": key.token})
    server = redis.Redis.from_url(redis_url)
    prefix = redis_settings["redis_prefix"]
    name = f"{prefix}:login-known:{key.key_id.removeprefix('key_')}"
    stored = server.get(name)
    assert stored is not None and 0 < server.ttl(name) <= KNOWN_SECRET_TTL
    parsed = tokens.parse_token(key.token, "sk", ("live", "test"))
    assert parsed is not None and stored.decode() == ks.digest(parsed)
    assert key.secret.encode() not in stored and key.token.encode() not in stored


def test_a_failed_login_of_an_unknown_key_id_runs_no_argon2(
    limited: Keystile, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_argon2(limited, monkeypatch)
    kid = tokens.new_kid()
    token = tokens.format_token("sk", "live", kid, tokens.new_secret(kid))
    with TestClient(build_app(limited)) as client:
        response = client.post("/v1/auth/login", headers={"x-api-key": token})
    assert response.status_code == 401 and calls[0] == 0


# -- audit of sessions ------------------------------------------------------------------------


def test_login_and_logout_are_audited_without_the_token(
    client: TestClient, ks: Keystile, key: CreatedKey
) -> None:
    session = login(client, {"x-api-key": key.token})
    client.post("/v1/auth/logout", headers=bearer(session))
    entries = ks.audit.list(ACCT).items
    assert [e.action for e in entries[:2]] == ["session.logout", "session.login"]
    for entry in entries[:2]:
        assert entry.actor == key.key_id and entry.target == key.key_id
        assert entry.details["session_id"] == session["session_id"]
        text = repr(entry) + repr(dict(entry.details))
        assert session["token"] not in text and session["token"].split("_")[3] not in text


def test_a_login_after_another_process_changed_the_key_succeeds(
    make_keystile: Make, clock: Clock, tmp_path: Path
) -> None:
    """Without Redis, this process's cached snapshot may be older than the store: a login
    then checks the store instead of refusing a good secret."""
    shared = session_settings(store=f"sqlite:///{tmp_path / 'keys.db'}")
    a, b = make_keystile(clock=clock, **shared), make_keystile(clock=clock, **shared)
    key = a.keys.create(ACCT, "owner", permissions=PERMS)
    with TestClient(build_app(a)) as client_a, TestClient(build_app(b)) as client_b:
        assert client_a.get("/whoami", headers={"x-api-key": key.token}).status_code == 200
        b.keys.update(key.key_id, name="renamed")  # a's cache still holds the old version
        assert login(client_a, {"x-api-key": key.token})
        logout = client_b.post(
            "/v1/auth/logout", headers=bearer(login(client_b, {"x-api-key": key.token}))
        )
        assert logout.status_code in (200, 204)
        assert login(client_a, {"x-api-key": key.token})


def test_a_transparent_rehash_keeps_the_keys_sessions(
    make_keystile: Make, clock: Clock, tmp_path: Path
) -> None:
    """Raising the argon2 cost rehashes a key on its next good check: the secret is the
    same, so its sessions go on (only a roll ends them)."""
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    old = make_keystile(clock=clock, **session_settings(store=store))
    key = old.keys.create(ACCT, "owner", permissions=PERMS)
    with TestClient(build_app(old)) as client:
        session = login(client, {"x-api-key": key.token})
    stronger = {"time_cost": 2, "memory_cost": 16, "parallelism": 1}
    new = make_keystile(clock=clock, **session_settings(store=store, argon2=stronger))
    kid = key.key_id.removeprefix("key_")
    before = new.store.get(kid)
    with TestClient(build_app(new)) as client:
        assert client.get("/whoami", headers={"x-api-key": key.token}).status_code == 200
        after = new.store.get(kid)
        assert before and after and after.secret_hash != before.secret_hash  # rehashed
        assert client.get("/whoami", headers=bearer(session)).status_code == 200
        client.post(f"/v1/apikeys/{key.key_id}/roll", headers={"x-api-key": key.token})
        assert client.get("/whoami", headers=bearer(session)).status_code == 401


def test_a_keys_own_secret_written_as_a_session_token_is_refused_and_harms_nothing(
    ks: Keystile,
) -> None:
    """``sk_sess_<the key's id>_<the key's secret>``: found by the header fuzz suite. It once
    matched the key's cached entry (200, as a "session"), and once refused, was remembered
    under the key's own digest, refusing the real key for ``negative_cache_ttl``."""
    created = ks.keys.create(ACCT, "k")
    real = [("authorization", f"Bearer {created.token}")]
    prefix, _, kid, secret = created.token.split("_")
    forged = [("authorization", f"Bearer {prefix}_{tokens.SESSION_ENVIRONMENT}_{kid}_{secret}")]
    for warm in (True, False):
        if warm:
            assert ks.authenticate(real).auth_method == "bearer"
        with pytest.raises(AuthError) as caught:
            ks.authenticate(forged)
        assert caught.value.code == "AUTH_002"
        assert ks.authenticate(real).key_id == created.key_id
        pair = [("x-api-key", created.key_id), ("x-api-secret", created.secret)]
        assert ks.authenticate(pair).auth_method == "key_secret"
