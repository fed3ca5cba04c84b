"""Warm tickets: what a remembered credential's requests reuse holds only while nothing it
rests on changed. Each test makes a ticket (a few requests), changes one thing, and checks
that the very next request sees the change. No Redis: the fast-mode cases are in
tests/test_fast_mode.py, which runs through the same path."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from keystile import AuthError, Keystile, Principal

from .conftest import Clock

Make = Callable[..., Keystile]


def call(ks: Keystile, token: str, **headers: str) -> Principal:
    pairs = [("authorization", f"Bearer {token}"), *headers.items()]
    return ks.authenticate(pairs, "GET", "/")


def warmed(ks: Keystile, token: str, **headers: str) -> Principal:
    """Requests until the credential has its ticket (the first is read, the second
    remembered, the third reuses it)."""
    for _ in range(3):
        principal = call(ks, token, **headers)
    assert len(ks.admission.tickets) >= 1
    return principal


def refused(ks: Keystile, token: str, **headers: str) -> str:
    with pytest.raises(AuthError) as info:
        call(ks, token, **headers)
    return info.value.spec.code


def test_a_ticket_is_reused_and_holds_no_secret(make_keystile: Make) -> None:
    ks = make_keystile()
    key = ks.keys.create("acct", "k")
    warmed(ks, key.token)
    (digest,) = ks.admission.tickets._tickets
    ticket = ks.admission.tickets.get(digest)
    assert ticket is not None and ticket.creds.token.secret == ""
    secret = key.token.rsplit("_", 1)[1]
    assert secret not in repr((tuple(ticket.creds), tuple(ticket.creds.token)))
    for _ in range(5):
        call(ks, key.token)
    assert ks.admission.tickets.get(digest) is ticket  # reused, not made again
    assert ks.usage("acct").pages == 8


def test_a_revoked_key_is_refused_on_the_next_request(make_keystile: Make) -> None:
    ks = make_keystile()
    key = ks.keys.create("acct", "k")
    warmed(ks, key.token)
    ks.keys.revoke(key.key_id)
    assert refused(ks, key.token) == "AUTH_003"


def test_an_updated_key_is_seen_on_the_next_request(make_keystile: Make) -> None:
    ks = make_keystile()
    key = ks.keys.create("acct", "k", permissions=["read"])
    assert warmed(ks, key.token).permissions == frozenset({"read"})
    ks.keys.update(key.key_id, permissions=["read", "write"])
    assert call(ks, key.token).permissions == frozenset({"read", "write"})


def test_a_key_expiring_is_refused_from_that_second(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock)
    start = datetime.fromtimestamp(clock.now, timezone.utc)
    key = ks.keys.create("acct", "k", expires_at=start + timedelta(seconds=10))
    warmed(ks, key.token)
    clock.advance(9.5)
    call(ks, key.token)
    clock.advance(0.5)
    assert refused(ks, key.token) == "AUTH_003"


def test_a_new_limit_applies_on_the_next_request(make_keystile: Make) -> None:
    ks = make_keystile(monthly_page_limit=100)
    key = ks.keys.create("acct", "k")
    assert warmed(ks, key.token).quota.limit == 100  # type: ignore[union-attr]
    ks.quotas.set_limit("acct", 4)
    assert call(ks, key.token).quota.limit == 4  # type: ignore[union-attr]
    assert refused(ks, key.token) == "BILLING_001"  # 4 pages used of 4


def test_the_account_header_picks_its_own_account(make_keystile: Make) -> None:
    ks = make_keystile()
    key = ks.keys.create("acct", "k", accounts=["other"])
    assert warmed(ks, key.token).account_id == "acct"
    for _ in range(3):
        assert call(ks, key.token, **{"x-account-id": "other"}).account_id == "other"
        assert call(ks, key.token).account_id == "acct"
    assert refused(ks, key.token, **{"x-account-id": "stranger"}) == "AUTH_005"


def test_a_new_billing_period_gets_its_own_counter(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=100)
    key = ks.keys.create("acct", "k")
    first = warmed(ks, key.token).quota
    assert first is not None
    clock.now = first.resets_at.timestamp()
    after = call(ks, key.token).quota
    assert after is not None and after.period != first.period and after.used == 1


def test_a_key_with_an_allowlist_gets_no_ticket(make_keystile: Make) -> None:
    ks = make_keystile()
    key = ks.keys.create("acct", "k", allowed_ips=["10.0.0.0/8"])
    pairs = [("authorization", f"Bearer {key.token}")]
    for _ in range(4):
        ks.authenticate(pairs, "GET", "/", peer="10.1.2.3")
    assert len(ks.admission.tickets) == 0
    with pytest.raises(AuthError) as info:
        ks.authenticate(pairs, "GET", "/", peer="192.0.2.1")
    assert info.value.spec.code == "AUTH_008"


def test_a_page_cost_callable_is_asked_every_time(make_keystile: Make) -> None:
    costs: list[Any] = []

    def page_cost(request: Any) -> int:
        costs.append(request.path)
        return 2

    ks = make_keystile(page_cost=page_cost)
    key = ks.keys.create("acct", "k")
    for _ in range(4):
        call(ks, key.token)
    assert len(costs) == 4 and len(ks.admission.tickets) == 0
    assert ks.usage("acct").pages == 8


def test_the_management_api_costs_nothing_and_other_routes_keep_their_ticket(
    make_keystile: Make,
) -> None:
    ks = make_keystile(monthly_page_limit=100)
    ks.mount_management("/manage", public_paths=(), route=re.compile(r"/apikeys(/.*)?"))
    key = ks.keys.create("acct", "k")
    warmed(ks, key.token)
    ticket = ks.admission.tickets.get(next(iter(ks.admission.tickets._tickets)))
    pairs = [("authorization", f"Bearer {key.token}")]
    for _ in range(3):
        managed = ks.authenticate(pairs, "GET", "/manage/apikeys")
        assert managed.meter is not None and managed.meter.charge_info.cost == 0
        assert call(ks, key.token).meter.charge_info.cost == 1  # type: ignore[union-attr]
    assert ks.admission.tickets.get(next(iter(ks.admission.tickets._tickets))) is ticket
    report = ks.usage("acct")
    assert (report.pages, report.requests) == (6, 9)
