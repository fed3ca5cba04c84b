"""No escalation through a sibling key's extra accounts, page limit or expiry.

A key managing its account's keys must not, by rolling, changing, re-enabling or revoking a
sibling, nor by creating one, come to hold (or hand to anyone) more than it holds itself: an
``x-account-id`` account it may not act for, a looser per-key ``page_limit`` (none is the
loosest), or a key outliving it brought back to life. Runs on every framework through the
harnesses of ``test_management_frameworks``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from keystile import CreatedKey, Keystile

from .conftest import Clock
from .test_management_frameworks import FRAMEWORKS, Harness, Reply, assert_error, make_harness

UTC = timezone.utc
ACCT = "acct_a"
OTHER = "acct_b"
WRITER = ["writeApiKeys", "readApiKeys", "readUsage"]
Make = Callable[..., Keystile]


@pytest.fixture
def ks(make_keystile: Make, clock: Clock) -> Keystile:
    return make_keystile(clock=clock)


@pytest.fixture(params=FRAMEWORKS)
def api(request: pytest.FixtureRequest, ks: Keystile) -> Iterator[Harness]:
    harness = make_harness(request.param, ks)
    yield harness
    harness.close()


def headers(key: CreatedKey, **extra: str) -> dict[str, str]:
    return {"x-api-key": key.token, **extra}


def now(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.now, UTC)


def refused(reply: Reply, *secrets: str) -> None:
    """403 AUTH_004, the module's escalation refusal, with no token or secret in it."""
    assert_error(reply, 403, "AUTH_004")
    for secret in secrets:
        assert secret not in reply.text


def still_works(api: Harness, key: CreatedKey) -> None:
    assert api.request("GET", "/v1/usage", headers(key)).status == 200


# -- roll ------------------------------------------------------------------------------------


def test_cannot_roll_a_key_that_acts_for_an_account_the_caller_may_not(
    api: Harness, ks: Keystile
) -> None:
    caller = ks.keys.create(ACCT, "caller", permissions=WRITER)
    sibling = ks.keys.create(ACCT, "sibling", permissions=["readUsage"], accounts=[OTHER])
    reply = api.request("POST", f"/v1/apikeys/{sibling.key_id}/roll", headers(caller), json={})
    refused(reply, sibling.token, sibling.secret)
    assert "token" not in reply.json
    still_works(api, sibling)  # not rolled
    assert [e.action for e in ks.audit.list(ACCT, action="key.roll").items] == []
    # A caller that may act for that account may roll it (and the token acts for it).
    wider = ks.keys.create(ACCT, "wider", permissions=WRITER, accounts=[OTHER])
    rolled = api.request("POST", f"/v1/apikeys/{sibling.key_id}/roll", headers(wider), json={})
    assert rolled.status == 200, rolled
    acting = {"x-api-key": rolled.json["token"], "x-account-id": OTHER}
    assert api.request("GET", "/v1/usage", acting).json["account_id"] == OTHER


def test_acting_for_an_extra_account_may_roll_its_keys_naming_the_callers_own(
    api: Harness, ks: Keystile
) -> None:
    """Allowed accounts are the calling key's own and its extra ones, whichever it acts for;
    one it may not act for is still refused."""
    caller = ks.keys.create(ACCT, "caller", permissions=WRITER, accounts=[OTHER])
    theirs = ks.keys.create(OTHER, "theirs", permissions=["readUsage"], accounts=[ACCT])
    beyond = ks.keys.create(OTHER, "beyond", permissions=["readUsage"], accounts=["acct_c"])
    acting = headers(caller, **{"x-account-id": OTHER})
    ok = api.request("POST", f"/v1/apikeys/{theirs.key_id}/roll", acting, json={})
    assert ok.status == 200, ok
    refused(api.request("POST", f"/v1/apikeys/{beyond.key_id}/roll", acting, json={}), beyond.token)
    still_works(api, beyond)


@pytest.mark.parametrize("sibling_limit", [None, 101])
def test_cannot_roll_a_key_with_a_looser_page_limit(
    api: Harness, ks: Keystile, sibling_limit: int | None
) -> None:
    caller = ks.keys.create(ACCT, "caller", permissions=WRITER, page_limit=100)
    sibling = ks.keys.create(ACCT, "sibling", permissions=["readUsage"], page_limit=sibling_limit)
    url = f"/v1/apikeys/{sibling.key_id}/roll"
    refused(api.request("POST", url, headers(caller), json={}), sibling.token, sibling.secret)
    still_works(api, sibling)
    # As tight as the caller's, or tighter: fine.
    for limit in (100, 0):
        ks.keys.update(sibling.key_id, page_limit=limit)
        assert api.request("POST", url, headers(caller), json={}).status == 200
    # An uncapped caller may roll any of them.
    uncapped = ks.keys.create(ACCT, "uncapped", permissions=WRITER)
    assert api.request("POST", url, headers(uncapped), json={}).status == 200


# -- PATCH and DELETE -----------------------------------------------------------------------


STRONGER: list[dict[str, Any]] = [{"accounts": [OTHER]}, {"page_limit": None}]
CHANGES: list[tuple[str, Any]] = [
    ("PATCH", {"name": "pwned"}),
    ("PATCH", {"enabled": False}),
    ("PATCH", {"meta": {"team": "mine"}}),
    ("DELETE", ...),
]


@pytest.mark.parametrize("stronger", STRONGER, ids=["accounts", "page_limit"])
@pytest.mark.parametrize(("method", "body"), CHANGES, ids=["name", "disable", "meta", "revoke"])
def test_cannot_change_or_revoke_a_stronger_key(
    api: Harness, ks: Keystile, stronger: dict[str, Any], method: str, body: Any
) -> None:
    """Like a key holding more permissions (already refused for every change, revoke
    included), a key with more accounts or a looser page limit is out of reach."""
    caller = ks.keys.create(ACCT, "caller", permissions=WRITER, page_limit=100)
    settings: dict[str, Any] = {"page_limit": 100, **stronger}
    sibling = ks.keys.create(ACCT, "sibling", permissions=["readUsage"], **settings)
    reply = api.request(method, f"/v1/apikeys/{sibling.key_id}", headers(caller), json=body)
    refused(reply, sibling.token, sibling.secret)
    key = ks.keys.get(sibling.key_id)
    assert (key.name, key.enabled, key.revoked_at, dict(key.meta)) == ("sibling", True, None, {})
    still_works(api, sibling)


def test_cannot_re_enable_a_disabled_key_that_outlives_the_caller(
    api: Harness, ks: Keystile, clock: Clock
) -> None:
    own = now(clock) + timedelta(hours=1)
    caller = ks.keys.create(ACCT, "caller", permissions=WRITER, expires_at=own)
    sibling = ks.keys.create(ACCT, "sibling", permissions=["readUsage"])  # never expires
    url = f"/v1/apikeys/{sibling.key_id}"
    assert api.request("PATCH", url, headers(caller), json={"enabled": False}).status == 200
    refused(api.request("PATCH", url, headers(caller), json={"enabled": True}), sibling.token)
    assert ks.keys.get(sibling.key_id).enabled is False
    assert_error(api.request("GET", "/v1/usage", headers(sibling)), 401, "AUTH_003")
    # Re-enabled with an expiry no later than the caller's, in the same request: fine.
    sooner = (own - timedelta(minutes=1)).isoformat()
    back = api.request("PATCH", url, headers(caller), json={"enabled": True, "expires_at": sooner})
    assert back.status == 200, back
    assert back.json["enabled"] is True
    assert datetime.fromisoformat(back.json["expires_at"]) == own - timedelta(minutes=1)
    still_works(api, sibling)


def test_cannot_re_enable_a_disabled_stronger_key(api: Harness, ks: Keystile) -> None:
    caller = ks.keys.create(ACCT, "caller", permissions=WRITER, page_limit=100)
    sibling = ks.keys.create(ACCT, "sibling", permissions=["readUsage"], accounts=[OTHER])
    ks.keys.update(sibling.key_id, enabled=False)
    url = f"/v1/apikeys/{sibling.key_id}"
    refused(api.request("PATCH", url, headers(caller), json={"enabled": True}), sibling.token)
    assert ks.keys.get(sibling.key_id).enabled is False


# -- create -----------------------------------------------------------------------------------


def test_a_capped_key_creates_only_keys_with_its_cap(api: Harness, ks: Keystile) -> None:
    caller = ks.keys.create(ACCT, "caller", permissions=WRITER, page_limit=100)
    made = api.request("POST", "/v1/apikeys", headers(caller), json={"name": "child"})
    assert made.status == 201, made
    assert made.json["key"]["page_limit"] == 100
    assert ks.keys.get(made.json["key_id"]).page_limit == 100
    assert made.json["key"]["accounts"] == []
    # The API takes no page_limit (nor accounts) to loosen it with.
    for field, value in (("page_limit", None), ("accounts", [OTHER])):
        reply = api.request(
            "POST", "/v1/apikeys", headers(caller), json={"name": "n", field: value}
        )
        assert_error(reply, 422, "REQ_001", field)
    # An uncapped key makes uncapped keys (here acting for its extra account: the new key is
    # that account's, and acts for no other).
    uncapped = ks.keys.create(ACCT, "uncapped", permissions=WRITER, accounts=[OTHER])
    acting = headers(uncapped, **{"x-account-id": OTHER})
    free = api.request("POST", "/v1/apikeys", acting, json={"name": "child"})
    assert free.status == 201, free
    assert (free.json["key"]["page_limit"], free.json["key"]["accounts"]) == (None, [])
    assert free.json["key"]["account_id"] == OTHER
