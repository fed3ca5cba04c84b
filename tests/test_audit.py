"""``ks.audit``: every management action recorded with who, which account, what and how; never
a secret; listed newest first with pagination and an action filter."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from keystile import InvalidInput, Keystile
from keystile._services.audit import ACTIONS, SYSTEM_ACTOR, entry_to_dict
from keystile.starlette import KeystileMiddleware, management_mount
from keystile.stores.base import AuditEntry

from .conftest import Clock

UTC = timezone.utc
ACCT = "acct_au"
OTHER = "acct_av"
ALL = ["writeApiKeys", "readApiKeys", "readUsage", "readAudit"]
Make = Callable[..., Keystile]


@pytest.fixture
def ks(make_keystile: Make, clock: Clock) -> Keystile:
    return make_keystile(clock=clock, plans={"pro": 50_000, "free": 100})


@pytest.fixture
def client(ks: Keystile) -> Iterator[TestClient]:
    app = Starlette(routes=[management_mount("/v1", ks)])
    app.add_middleware(KeystileMiddleware, keystile=ks)
    with TestClient(app) as test_client:
        yield test_client


def at(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.now, UTC)


def entries(ks: Keystile, account: str = ACCT, action: str | None = None) -> list[AuditEntry]:
    return list(ks.audit.list(account, action=action, limit=200).items)


def only(ks: Keystile, action: str, account: str = ACCT) -> AuditEntry:
    found = entries(ks, account, action)
    assert len(found) == 1, found
    return found[0]


# -- what each action records (library calls) -------------------------------------------------


def test_create_records_the_key_and_the_actor(ks: Keystile, clock: Clock) -> None:
    expiry = at(clock) + timedelta(days=30)
    created = ks.keys.create(
        ACCT,
        "ci",
        permissions=["jobs:read"],
        environment="test",
        expires_at=expiry,
        actor="cli:alice",
    )
    entry = only(ks, "key.create")
    assert (entry.account_id, entry.actor, entry.target) == (ACCT, "cli:alice", created.key_id)
    assert entry.at == at(clock)
    assert dict(entry.details) == {
        "name": "ci",
        "permissions": ["jobs:read"],
        "environment": "test",
        "expires_at": expiry.isoformat(),
    }
    assert isinstance(entry.id, int)


def test_the_actor_defaults_to_system(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "plain")
    ks.keys.update(created.key_id, name="plain2")
    ks.keys.roll(created.key_id)
    ks.keys.revoke(created.key_id)
    ks.keys.delete(created.key_id)
    ks.quotas.set_limit(ACCT, 10)
    assert SYSTEM_ACTOR == "system"
    assert {e.actor for e in entries(ks)} == {"system"}
    assert len(entries(ks)) == 6


def test_update_records_only_what_changed(ks: Keystile, clock: Clock) -> None:
    key = ks.keys.create(ACCT, "k", permissions=["a"])
    expiry = at(clock) + timedelta(days=1)
    ks.keys.update(
        key.key_id, permissions=["a", "b"], expires_at=expiry, meta={"x": 1}, actor="key_admin"
    )
    entry = only(ks, "key.update")
    assert (entry.actor, entry.target) == ("key_admin", key.key_id)
    assert dict(entry.details) == {
        "changes": {"permissions": ["a", "b"], "expires_at": expiry.isoformat(), "meta": {"x": 1}}
    }
    ks.keys.update(key.key_id, enabled=False, expires_at=None, page_limit=7)
    latest = entries(ks, action="key.update")[0]
    assert dict(latest.details) == {
        "changes": {"enabled": False, "expires_at": None, "page_limit": 7}
    }
    ks.keys.update(key.key_id)  # no change, no entry
    assert len(entries(ks, action="key.update")) == 2


def test_revoke_records_once(ks: Keystile, clock: Clock) -> None:
    key = ks.keys.create(ACCT, "k")
    ks.keys.revoke(key.key_id, actor="ops")
    clock.advance(1)
    ks.keys.revoke(key.key_id, actor="ops")  # already revoked: nothing happened
    entry = only(ks, "key.revoke")
    assert (entry.actor, entry.target, dict(entry.details)) == ("ops", key.key_id, {})


def test_a_second_revoke_in_the_same_instant_records_nothing(ks: Keystile) -> None:
    key = ks.keys.create(ACCT, "k")
    ks.keys.revoke(key.key_id, actor="ops")
    ks.keys.revoke(key.key_id, actor="ops")  # the clock has not moved
    assert len(entries(ks, action="key.revoke")) == 1


def test_delete_records_the_name(ks: Keystile) -> None:
    key = ks.keys.create(ACCT, "doomed")
    ks.keys.delete(key.key_id, actor="ops")
    entry = only(ks, "key.delete")
    assert (entry.actor, entry.target, dict(entry.details)) == (
        "ops",
        key.key_id,
        {"name": "doomed"},
    )


def test_roll_records_the_grace(ks: Keystile) -> None:
    key = ks.keys.create(ACCT, "k")
    ks.keys.roll(key.key_id, grace_seconds=300, actor="ops")
    entry = only(ks, "key.roll")
    assert (entry.actor, entry.target, dict(entry.details)) == (
        "ops",
        key.key_id,
        {"grace_seconds": 300},
    )


def test_login_and_logout_record_the_session(ks: Keystile, clock: Clock) -> None:
    key = ks.keys.create(ACCT, "k")
    session = ks.sessions.login([("x-api-key", key.token)], client="10.0.0.9")
    login = only(ks, "session.login")
    assert (login.actor, login.target) == (key.key_id, key.key_id)
    assert dict(login.details) == {
        "session_id": session.session_id,
        "expires_at": session.expires_at.isoformat(),
    }
    principal = ks.authenticate([("authorization", f"Bearer {session.token}")])
    ks.sessions.logout(principal)
    logout = only(ks, "session.logout")
    assert (logout.actor, logout.target) == (key.key_id, key.key_id)
    assert dict(logout.details) == {"session_id": session.session_id}


@pytest.mark.parametrize(
    ("change", "actor", "details"),
    [
        (
            lambda ks, **kw: ks.quotas.set_limit(ACCT, 500, **kw),
            "billing",
            {"pages": 500, "plan": None, "default": False},
        ),
        (
            lambda ks, **kw: ks.quotas.set_limit(ACCT, None, **kw),
            "billing",
            {"pages": None, "plan": None, "default": False},
        ),
        (
            lambda ks, **kw: ks.quotas.set_plan(ACCT, "pro", **kw),
            "billing",
            {"pages": None, "plan": "pro", "default": False},
        ),
        (
            lambda ks, **kw: ks.quotas.clear_limit(ACCT, **kw),
            "billing",
            {"pages": None, "plan": None, "default": True},
        ),
        (
            lambda ks, **kw: ks.quotas.set_limit(ACCT, 0),
            SYSTEM_ACTOR,
            {"pages": 0, "plan": None, "default": False},
        ),
    ],
)
def test_limit_changes_are_recorded(
    ks: Keystile, change: Callable[..., None], actor: str, details: dict[str, Any]
) -> None:
    change(ks, actor="billing")
    entry = only(ks, "limit.change")
    assert (entry.account_id, entry.actor, entry.target) == (ACCT, actor, None)
    assert dict(entry.details) == details


def test_refused_changes_record_nothing(ks: Keystile) -> None:
    key = ks.keys.create(ACCT, "k")
    before = len(entries(ks))
    with pytest.raises(InvalidInput):
        ks.keys.update(key.key_id, name="")
    with pytest.raises(InvalidInput):
        ks.quotas.set_plan(ACCT, "platinum")
    with pytest.raises(InvalidInput):
        ks.quotas.set_limit(ACCT, -1)
    with pytest.raises(InvalidInput):
        ks.keys.create(ACCT, "k", environment="prod")
    assert len(entries(ks)) == before


def test_a_failed_audit_write_is_logged_not_raised(
    ks: Keystile, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(entry: AuditEntry) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ks.store, "add_audit", broken)
    with caplog.at_level(logging.ERROR, logger="keystile"):
        created = ks.keys.create(ACCT, "k")
    assert ks.keys.get(created.key_id).name == "k"  # the action itself happened
    assert "could not write audit entry key.create" in caplog.text
    assert created.secret not in caplog.text


# -- through the HTTP API: the calling key is the actor -----------------------------------------


def test_api_actions_are_recorded_with_the_calling_key(
    ks: Keystile, client: TestClient, clock: Clock
) -> None:
    admin = ks.keys.create(ACCT, "admin", permissions=ALL, accounts=[OTHER])
    auth = {"x-api-key": admin.token}
    made = client.post("/v1/apikeys", headers=auth, json={"name": "n"}).json()
    kid = made["key_id"]
    client.patch(f"/v1/apikeys/{kid}", headers=auth, json={"name": "n2"})
    client.post(f"/v1/apikeys/{kid}/roll", headers=auth, json={"grace_seconds": 5})
    client.delete(f"/v1/apikeys/{kid}", headers=auth)
    session = client.post("/v1/auth/login", headers=auth).json()
    client.post("/v1/auth/logout", headers={"authorization": f"Bearer {session['token']}"})
    listed = client.get("/v1/audit", headers=auth).json()["items"]
    assert [e["action"] for e in listed] == [
        "session.logout",
        "session.login",
        "key.revoke",
        "key.roll",
        "key.update",
        "key.create",
        "key.create",
    ]
    for entry in listed[:-1]:  # the last one is the admin key's own creation, by the program
        assert entry["actor"] == admin.key_id, entry
        assert entry["account_id"] == ACCT
    assert listed[-1]["actor"] == SYSTEM_ACTOR
    assert [e["target"] for e in listed[2:6]] == [kid] * 4
    # Acting for another account: the entry lands in that account's log.
    theirs = client.post(
        "/v1/apikeys", headers={**auth, "x-account-id": OTHER}, json={"name": "for-b"}
    ).json()
    entry = only(ks, "key.create", account=OTHER)
    assert (entry.actor, entry.target) == (admin.key_id, theirs["key_id"])
    assert theirs["key_id"] not in json.dumps(
        client.get("/v1/audit", headers=auth).json()
    )  # not in the caller's own account's log


def test_failed_api_changes_record_nothing(ks: Keystile, client: TestClient) -> None:
    weak = ks.keys.create(ACCT, "weak", permissions=["writeApiKeys"])
    strong = ks.keys.create(ACCT, "strong", permissions=ALL)
    before = len(entries(ks))
    auth = {"x-api-key": weak.token}
    assert (
        client.post(
            "/v1/apikeys", headers=auth, json={"name": "n", "permissions": ["readAudit"]}
        ).status_code
        == 403
    )
    assert client.delete(f"/v1/apikeys/{strong.key_id}", headers=auth).status_code == 403
    assert client.post("/v1/apikeys", headers=auth, json={"nom": "n"}).status_code == 422
    assert (
        client.post(
            "/v1/auth/login", headers={"x-api-key": weak.key_id, "x-api-secret": strong.secret}
        ).status_code
        == 401
    )
    assert len(entries(ks)) == before


# -- never a secret -----------------------------------------------------------------------------


def test_no_entry_holds_a_token_secret_or_hash(ks: Keystile, client: TestClient) -> None:
    admin = ks.keys.create(ACCT, "admin", permissions=ALL)
    auth = {"x-api-key": admin.token}
    secrets: list[str] = [admin.token, admin.secret]
    made = client.post("/v1/apikeys", headers=auth, json={"name": "n", "meta": {"k": "v"}}).json()
    secrets += [made["token"], made["secret"]]
    kid = made["key_id"]
    rolled = client.post(f"/v1/apikeys/{kid}/roll", headers=auth, json={"grace_seconds": 60}).json()
    secrets += [rolled["token"], rolled["secret"]]
    library_roll = ks.keys.roll(admin.key_id, grace_seconds=60)
    secrets += [library_roll.token, library_roll.secret]
    client.patch(f"/v1/apikeys/{kid}", headers=auth, json={"permissions": ["readUsage"]})
    session = ks.sessions.login([("x-api-key", library_roll.token)])
    secrets += [session.token, session.token.split("_")[3]]
    ks.sessions.logout(ks.authenticate([("x-api-key", session.token)]))
    ks.quotas.set_plan(ACCT, "free")
    client.delete(f"/v1/apikeys/{kid}", headers={"x-api-key": library_roll.token})
    ks.keys.delete(kid)
    for key_id in (admin.key_id, kid):
        record = ks.store.get(key_id.removeprefix("key_"))
        if record is not None:
            secrets += [record.secret_hash, *(h for h in [record.previous_hash] if h)]
    stored_session = ks.store.get_session(session.session_id)
    assert stored_session is not None
    secrets.append(stored_session.secret_digest)

    logged = entries(ks)
    assert {e.action for e in logged} == set(ACTIONS)  # every kind of action happened
    dump = json.dumps([entry_to_dict(e) for e in logged])
    served = client.get("/v1/audit?limit=200", headers={"x-api-key": library_roll.token}).text
    for text in (dump, served):
        for secret in secrets:
            assert secret not in text
        assert "argon2" not in text and "$" not in text


# -- listing --------------------------------------------------------------------------------


def test_newest_first_with_pagination(ks: Keystile, clock: Clock) -> None:
    for n in range(7):
        clock.advance(1)
        ks.keys.create(ACCT, f"k{n}")
    ks.keys.create(OTHER, "elsewhere")
    seen: list[AuditEntry] = []
    cursor = None
    pages = 0
    while True:
        page = ks.audit.list(ACCT, limit=3, cursor=cursor)
        assert len(page.items) <= 3
        seen += page.items
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert [e.details["name"] for e in seen] == [f"k{n}" for n in reversed(range(7))]
    assert [e.at for e in seen] == sorted((e.at for e in seen), reverse=True)
    assert len({e.id for e in seen}) == 7
    assert all(e.account_id == ACCT for e in seen)
    exact = ks.audit.list(ACCT, limit=7)
    assert len(exact.items) == 7 and exact.next_cursor is None


def test_action_filter(ks: Keystile) -> None:
    key = ks.keys.create(ACCT, "k")
    ks.keys.update(key.key_id, name="k2")
    ks.keys.update(key.key_id, name="k3")
    ks.keys.revoke(key.key_id)
    updates = ks.audit.list(ACCT, action="key.update")
    assert [e.details["changes"]["name"] for e in updates.items] == ["k3", "k2"]
    first = ks.audit.list(ACCT, action="key.update", limit=1)
    assert len(first.items) == 1 and first.next_cursor is not None
    rest = ks.audit.list(ACCT, action="key.update", limit=1, cursor=first.next_cursor)
    assert rest.items[0].details["changes"]["name"] == "k2"
    assert ks.audit.list(ACCT, action="session.login").items == []
    assert [e.action for e in ks.audit.list(ACCT).items] == [
        "key.revoke",
        "key.update",
        "key.update",
        "key.create",
    ]
    assert ks.audit.list(ACCT, cursor="").items == ks.audit.list(ACCT).items  # empty: first page


def test_entry_to_dict(ks: Keystile, clock: Clock) -> None:
    key = ks.keys.create(ACCT, "k", actor="me")
    data = entry_to_dict(only(ks, "key.create"))
    assert set(data) == {"id", "at", "account_id", "actor", "action", "target", "details"}
    assert data["at"] == at(clock).isoformat()
    assert (data["actor"], data["target"], data["account_id"]) == ("me", key.key_id, ACCT)
    json.dumps(data)  # plain JSON


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": -5}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": 2.0}, "limit"),
        ({"action": "key.explode"}, "action"),
        ({"action": "KEY.CREATE"}, "action"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "-1"}, "cursor"),
        ({"cursor": "1.5"}, "cursor"),
    ],
)
def test_bad_list_arguments_are_invalid_input(
    ks: Keystile, kwargs: dict[str, Any], field: str
) -> None:
    ks.keys.create(ACCT, "k")
    with pytest.raises(InvalidInput) as caught:
        ks.audit.list(ACCT, **kwargs)
    assert caught.value.field == field


@pytest.mark.parametrize("account", ["", "has space", "x" * 129, None, 5])
def test_a_bad_account_is_invalid_input(ks: Keystile, account: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        ks.audit.list(account)
    assert caught.value.field == "account_id"


def test_the_bounds_are_accepted(ks: Keystile) -> None:
    ks.keys.create(ACCT, "k")
    assert len(ks.audit.list(ACCT, limit=1).items) == 1
    assert len(ks.audit.list(ACCT, limit=200).items) == 1
    for action in ACTIONS:
        ks.audit.list(ACCT, action=action)


def test_a_non_ascii_digit_cursor_is_invalid_input(ks: Keystile) -> None:
    ks.keys.create(ACCT, "k")
    for cursor in ("\u0663", "\u00b2", "\uff11"):
        with pytest.raises(InvalidInput) as caught:
            ks.audit.list(ACCT, cursor=cursor)
        assert caught.value.field == "cursor"
