"""Settlement, identical on every framework adapter: what a request costs once it is answered.

A served request is charged (a 4xx from the app too); a 5xx, an unhandled exception and
keystile's own refusals (``requires()`` or ``cost()`` failing inside the app) are refunded;
``cost(n)`` reserves n pages and ``charge(n)`` reports the real cost; a streamed body is
settled when the server closes it, so it may report its cost while it streams. Asserted
through ``engine.quotas`` and the quota headers.
"""

from __future__ import annotations

from typing import Any

import pytest

from keystile import Keystile

from .harness import Harness, Result
from .test_behaviour import assert_refused, bearer, new_key

ACCOUNT = "acct-settle"
LIMIT = 10


@pytest.fixture
def token(ks: Keystile) -> str:
    ks.quotas.set_limit(ACCOUNT, LIMIT)
    return new_key(ks, account_id=ACCOUNT).token


def usage(ks: Keystile) -> Any:
    ks.flush()  # fast mode counts against a lease until its use is reported
    return ks.quotas.usage(ACCOUNT)


def used(ks: Keystile) -> int:
    pages: int = usage(ks).pages
    return pages


def get(client: Harness, path: str, token: str) -> Result:
    return client.request("GET", path, bearer(token))


def get_or_raised(client: Harness, path: str, token: str) -> Result | BaseException:
    """The response, or the exception of a test server that passes the app's on."""
    try:
        return get(client, path, token)
    except Exception as exc:
        return exc


def test_a_served_request_is_charged_and_says_what_is_left(
    client: Harness, ks: Keystile, token: str
) -> None:
    first = get(client, "/", token)
    assert first.json == {"used": 1, "remaining": LIMIT - 1, "limit": LIMIT}
    assert first.headers["x-ratelimit-limit"] == str(LIMIT)
    assert first.headers["x-ratelimit-remaining"] == str(LIMIT - 1)
    assert first.headers["ratelimit"].startswith(f'"monthly";r={LIMIT - 1};t=')
    assert get(client, "/", token).json["used"] == 2
    assert used(ks) == 2
    assert usage(ks).requests == 2


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_is_refunded_and_a_4xx_counted(
    client: Harness, ks: Keystile, token: str, status: int
) -> None:
    assert get(client, f"/failing?s={status}", token).status == status
    assert used(ks) == 0
    assert get(client, "/failing?s=404", token).status == 404
    assert get(client, "/failing?s=422", token).status == 422
    assert used(ks) == 2


def test_an_unhandled_exception_is_refunded(client: Harness, ks: Keystile, token: str) -> None:
    outcome = get_or_raised(client, "/boom", token)
    if isinstance(outcome, Result):  # the framework answered it
        assert outcome.status == 500
    else:
        assert "handler bug" in str(outcome)
    assert used(ks) == 0
    assert get(client, "/", token).json["used"] == 1


def test_keystiles_own_refusal_inside_the_app_is_refunded(
    client: Harness, ks: Keystile, token: str
) -> None:
    for _ in range(2):
        assert_refused(get(client, "/needs-admin", token), "AUTH_004")
    assert used(ks) == 0


def test_refused_credentials_are_never_charged(client: Harness, ks: Keystile, token: str) -> None:
    assert_refused(client.request("GET", "/"), "AUTH_001")
    assert_refused(get(client, "/", token[:-1] + ("A" if token[-1] != "A" else "B")), "AUTH_002")
    assert used(ks) == 0


def test_cost_reserves_its_pages_and_refuses_without_charging(
    client: Harness, ks: Keystile, token: str
) -> None:
    assert get(client, "/expensive", token).json == {"reserved": 3, "used": 3}
    assert used(ks) == 3
    for _ in range(5):
        assert get(client, "/", token).status == 200
    for _ in range(2):  # 8 used, the route costs 3
        refused = get(client, "/expensive", token)
        assert_refused(refused, "BILLING_001")
        assert int(refused.headers["retry-after"]) >= 1
        assert used(ks) == 8
    for _ in range(2):
        assert get(client, "/", token).status == 200
    assert_refused(get(client, "/", token), "BILLING_001")
    assert used(ks) == LIMIT


def test_cost_with_a_reported_real_cost(client: Harness, ks: Keystile, token: str) -> None:
    assert get(client, "/expensive-charged?n=1", token).status == 200
    assert used(ks) == 1  # the reservation was only what it might cost
    assert get(client, "/expensive-charged?n=6", token).status == 200
    assert used(ks) == 7


def test_charge_settles_the_real_cost(client: Harness, ks: Keystile, token: str) -> None:
    assert get(client, "/charged?n=5", token).status == 200
    assert get(client, "/charged?n=0", token).status == 200
    assert used(ks) == 5
    assert usage(ks).requests == 2


def test_a_streamed_body_is_settled_once_it_is_sent(
    client: Harness, ks: Keystile, token: str
) -> None:
    result = get(client, "/stream?n=6", token)
    assert (result.status, result.text) == (200, "chunk chunk chunk ")
    assert result.headers["x-ratelimit-remaining"] == str(LIMIT - 1)  # known at the start
    assert used(ks) == 6


def test_a_refusal_after_the_response_started_is_refunded(
    client: Harness, ks: Keystile, token: str
) -> None:
    outcome = get_or_raised(client, "/stream-refused", token)
    if isinstance(outcome, Result):
        assert outcome.status == 200  # too late to answer anything else
    assert used(ks) == 0  # the body failed on the way: nothing is billed
    assert get(client, "/", token).status == 200
