"""Monthly page quotas without Redis: the in-process meter, limits, settlement, periods, reports.

Time is the ``clock`` fixture (2026-09-21T13:33:20Z at the start), never the wall clock.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from keystile import AuthError, InvalidInput, Keystile, Principal
from keystile._core.errors import QUOTA_EXCEEDED
from keystile._core.metering import ThresholdEvent
from keystile._core.tokens import KEY_ID_PREFIX
from keystile._core.warmpath import RequestInfo

from .conftest import Clock

UTC = timezone.utc
SEPT_END = datetime(2026, 10, 1, tzinfo=UTC)
ACCOUNT = "acct_1"
#: The monthly policy's partition key: the account, as a structured-field byte sequence.
PK = f":{base64.b64encode(ACCOUNT.encode()).decode()}:"

Make = Callable[..., Keystile]


def at(*args: int) -> float:
    """Epoch seconds of a UTC wall time."""
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def bearer(token: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}"), *extra]


def hit(
    ks: Keystile,
    token: str,
    status: int | None = 200,
    *,
    path: str = "/",
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    charge: int | None = None,
) -> Principal:
    """One request: authenticate, optionally report the real cost, settle with ``status``."""
    principal = ks.authenticate(bearer(token, *headers), method, path)
    if charge is not None:
        principal.charge(charge)
    ks.settle(principal, status)
    return principal


def refused(ks: Keystile, token: str, **kwargs: Any) -> AuthError:
    with pytest.raises(AuthError) as info:
        hit(ks, token, **kwargs)
    assert info.value.spec is QUOTA_EXCEEDED
    return info.value


def pages(ks: Keystile, account: str = ACCOUNT, environment: str | None = None) -> int:
    return ks.quotas.usage(account, environment=environment).pages


def new_key(ks: Keystile, account: str = ACCOUNT, environment: str = "live", **kwargs: Any) -> str:
    return ks.keys.create(account, "key", environment=environment, **kwargs).token


def set_key_limit(ks: Keystile, token: str, page_limit: int | None) -> None:
    """No KeyManager argument for it yet: write the record through the store."""
    kid = token.split("_")[2]
    record = ks.store.get(kid)
    assert record is not None
    assert ks.store.replace(
        dataclasses.replace(record, page_limit=page_limit, version=record.version + "x"),
        record.version,
    )
    ks.local.drop_group(kid)  # as KeyManager._publish would


@pytest.fixture
def ks(make_keystile: Make, clock: Clock) -> Keystile:
    return make_keystile(clock=clock, monthly_page_limit=10)


@pytest.fixture
def token(ks: Keystile) -> str:
    return new_key(ks)


# -- enforcement ------------------------------------------------------------------------------


def test_limit_is_enforced_exactly(ks: Keystile, token: str) -> None:
    for n in range(1, 11):
        principal = hit(ks, token)
        assert principal.quota is not None
        assert (principal.quota.used, principal.quota.remaining, principal.quota.limit) == (
            n,
            10 - n,
            10,
        )
    error = refused(ks, token)
    assert error.status == 429 and error.code == "BILLING_001"
    assert "10 pages" in error.message and "2026-10-01T00:00:00Z" in error.message
    assert pages(ks) == 10  # the refused request charged nothing
    assert ks.quotas.usage(ACCOUNT).requests == 10
    refused(ks, token)  # and stays refused
    assert pages(ks) == 10


def test_quota_status_on_the_principal(ks: Keystile, token: str) -> None:
    principal = hit(ks, token)
    assert principal.quota is not None
    assert principal.quota.resets_at == SEPT_END
    assert principal.quota.period == "2026-09"
    assert principal.meter is not None and principal.meter.reserved == 1


def test_429_carries_retry_after_and_ratelimit_headers(
    ks: Keystile, token: str, clock: Clock
) -> None:
    for _ in range(10):
        hit(ks, token)
    error = refused(ks, token)
    left = int(SEPT_END.timestamp() - clock.now)
    assert error.headers["retry-after"] == str(left)
    assert error.headers["ratelimit"] == f'"monthly";r=0;t={left};pk={PK}'
    assert error.headers["ratelimit-policy"] == f'"monthly";q=10;w={30 * 86400};pk={PK}'
    assert error.headers["x-ratelimit-limit"] == "10"
    assert error.headers["x-ratelimit-remaining"] == "0"
    assert error.headers["x-ratelimit-reset"] == str(int(SEPT_END.timestamp()))


def test_retry_after_never_wakes_inside_the_period(ks: Keystile, token: str, clock: Clock) -> None:
    """Regression: the seconds to the reset were floored, waking clients up to 1 s early."""
    clock.advance(0.5)  # a wall clock is rarely on a whole second
    for _ in range(10):
        hit(ks, token)
    error = refused(ks, token)
    wait = int(error.headers["retry-after"])
    assert clock.now + wait >= SEPT_END.timestamp()
    assert wait == math.ceil(SEPT_END.timestamp() - clock.now)


def test_threads_racing_admit_exactly_what_is_left(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=100)
    token = new_key(ks)
    hit(ks, token, status=500)  # warm the key; refunded, so 100 pages are left
    assert pages(ks) == 0
    barrier = threading.Barrier(200)

    def one(_: int) -> Principal | None:
        barrier.wait()
        try:
            principal = ks.authenticate(bearer(token))
        except AuthError as error:
            assert error.spec is QUOTA_EXCEEDED
            return None
        ks.settle(principal, 200)
        return principal

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(one, range(200)))
    admitted = [p for p in results if p is not None]
    assert len(admitted) == 100
    assert sorted(p.quota.used for p in admitted if p.quota) == list(range(1, 101))
    assert pages(ks) == 100
    refused(ks, token)


def test_async_tasks_racing_admit_exactly_what_is_left(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=100)
    token = new_key(ks)
    hit(ks, token, status=500)

    async def one() -> bool:
        try:
            principal = await ks.authenticate_async(bearer(token))
        except AuthError as error:
            assert error.spec is QUOTA_EXCEEDED
            return False
        await ks.settle_async(principal, 200)
        return True

    async def main() -> list[bool]:
        return await asyncio.gather(*(one() for _ in range(200)))

    assert sum(asyncio.run(main())) == 100
    assert pages(ks) == 100


def test_cold_key_racing_threads_admit_exactly_what_is_left(
    make_keystile: Make, clock: Clock
) -> None:
    """No warm-up: the store read that seeds the counter races too."""
    ks = make_keystile(clock=clock, monthly_page_limit=30)
    token = new_key(ks)
    with ThreadPoolExecutor(max_workers=60) as pool:
        outcomes = list(pool.map(lambda _: _try(ks, token), range(60)))
    assert outcomes.count(True) == 30
    assert pages(ks) == 30


def _try(ks: Keystile, token: str) -> bool:
    try:
        hit(ks, token)
    except AuthError as error:
        assert error.spec is QUOTA_EXCEEDED
        return False
    return True


def test_unlimited_is_still_metered(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock)  # monthly_page_limit=None
    token = new_key(ks)
    for n in range(1, 6):
        principal = hit(ks, token)
        assert principal.quota is not None
        assert (principal.quota.limit, principal.quota.remaining) == (None, None)
        assert principal.quota.used == n
    report = ks.quotas.usage(ACCOUNT)
    assert (report.pages, report.requests, report.limit, report.remaining) == (5, 5, None, None)
    assert ks.response_headers(principal) == []  # no RateLimit headers without a limit


def test_limit_zero_refuses_everything(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=0)
    token = new_key(ks)
    refused(ks, token)
    assert pages(ks) == 0


# -- limits: set_limit, plans, clear_limit ----------------------------------------------------


def test_set_limit_takes_effect_on_the_next_request(ks: Keystile, token: str) -> None:
    for _ in range(3):
        hit(ks, token)
    ks.quotas.set_limit(ACCOUNT, 3)
    assert ks.quotas.limit(ACCOUNT) == 3
    refused(ks, token)
    ks.quotas.set_limit(ACCOUNT, 5)
    assert hit(ks, token).quota.limit == 5  # type: ignore[union-attr]
    ks.quotas.set_limit(ACCOUNT, None)  # unlimited, still metered
    principal = hit(ks, token)
    assert principal.quota is not None
    assert (principal.quota.limit, principal.quota.used) == (None, 5)
    ks.quotas.clear_limit(ACCOUNT)  # back to monthly_page_limit=10
    principal = hit(ks, token)
    assert principal.quota is not None and principal.quota.limit == 10
    assert ks.quotas.limit(ACCOUNT) == 10


def test_set_limit_applies_to_its_account_only(ks: Keystile, token: str) -> None:
    other = new_key(ks, "acct_2")
    ks.quotas.set_limit(ACCOUNT, 1)
    hit(ks, token)
    refused(ks, token)
    for _ in range(5):
        hit(ks, other)
    assert (pages(ks), pages(ks, "acct_2")) == (1, 5)


def test_plans(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=10, plans={"free": 2, "pro": 4, "ent": None})
    token = new_key(ks)
    ks.quotas.set_plan(ACCOUNT, "free")
    hit(ks, token)
    hit(ks, token)
    refused(ks, token)
    ks.quotas.set_plan(ACCOUNT, "pro")
    assert hit(ks, token).quota.limit == 4  # type: ignore[union-attr]
    hit(ks, token)
    refused(ks, token)
    ks.quotas.set_plan(ACCOUNT, "ent")  # a plan without a limit
    principal = hit(ks, token)
    assert principal.quota is not None and principal.quota.limit is None
    ks.quotas.set_limit(ACCOUNT, 5)  # an explicit limit replaces the plan
    refused(ks, token)
    ks.quotas.clear_limit(ACCOUNT)
    assert hit(ks, token).quota.limit == 10  # type: ignore[union-attr]


def test_unknown_plan_is_invalid_input(make_keystile: Make) -> None:
    ks = make_keystile(plans={"pro": 10})
    with pytest.raises(InvalidInput) as info:
        ks.quotas.set_plan(ACCOUNT, "gold")
    assert info.value.field == "plan"
    assert ks.store.get_limit(ACCOUNT) is None  # nothing written
    bare = make_keystile()
    with pytest.raises(InvalidInput) as info:
        bare.quotas.set_plan(ACCOUNT, "pro")
    assert info.value.field == "plan"


@pytest.mark.parametrize("value", [-1, True, 1.5, "10"])
def test_set_limit_rejects_bad_pages(ks: Keystile, value: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        ks.quotas.set_limit(ACCOUNT, value)
    assert info.value.field == "pages"


@pytest.mark.parametrize("call", ["set_limit", "set_plan", "clear_limit", "usage"])
def test_bad_account_id_is_invalid_input(make_keystile: Make, call: str) -> None:
    ks = make_keystile(plans={"pro": 1})
    args: dict[str, tuple[Any, ...]] = {
        "set_limit": (5,),
        "set_plan": ("pro",),
        "clear_limit": (),
        "usage": (),
    }
    with pytest.raises(InvalidInput) as info:
        getattr(ks.quotas, call)("bad account!", *args[call])
    assert info.value.field == "account_id"


# -- per-key limits ---------------------------------------------------------------------------


def test_per_key_limit(ks: Keystile, token: str) -> None:
    other = new_key(ks)
    set_key_limit(ks, token, 3)
    for _ in range(3):
        hit(ks, token)
    error = refused(ks, token)
    assert "This key's page limit of 3 pages" in error.message
    for _ in range(5):  # the account's other key still has the account's allowance
        hit(ks, other)
    assert pages(ks) == 8
    hit(ks, other)
    hit(ks, other)
    refused(ks, other)  # the account limit still binds every key
    by_key = {k.key_id: k.pages for k in ks.quotas.usage(ACCOUNT).keys}
    assert by_key == {"key_" + token.split("_")[2]: 3, "key_" + other.split("_")[2]: 7}


def test_per_key_limit_above_account_limit_is_capped_by_the_account(
    ks: Keystile, token: str
) -> None:
    set_key_limit(ks, token, 50)
    for _ in range(10):
        hit(ks, token)
    error = refused(ks, token)
    assert "Monthly page limit of 10 pages" in error.message


# -- test keys --------------------------------------------------------------------------------


def test_test_keys_have_their_own_counter_and_limit(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=5, test_page_limit=3)
    live, test = new_key(ks), new_key(ks, environment="test")
    for _ in range(3):
        principal = hit(ks, test)
        assert principal.environment == "test"
    error = refused(ks, test)
    assert "3 pages" in error.message
    assert pages(ks) == 0  # never touched the live allowance
    assert pages(ks, environment="test") == 3
    for _ in range(5):
        hit(ks, live)
    refused(ks, live)
    assert (pages(ks), pages(ks, environment="test")) == (5, 3)
    report = ks.quotas.usage(ACCOUNT, environment="test")
    assert (report.environment, report.limit, report.remaining) == ("test", 3, 0)


def test_account_limit_does_not_apply_to_test_keys(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=5)  # test_page_limit: default 1000
    test = new_key(ks, environment="test")
    ks.quotas.set_limit(ACCOUNT, 0)
    principal = hit(ks, test)
    assert principal.quota is not None and principal.quota.limit == 1000
    assert ks.quotas.limit(ACCOUNT, "test") == 1000


def test_unlimited_test_keys(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=1, test_page_limit=None)
    test = new_key(ks, environment="test")
    for _ in range(5):
        hit(ks, test)
    assert pages(ks, environment="test") == 5
    assert ks.quotas.usage(ACCOUNT, environment="test").limit is None


def test_usage_rejects_unknown_environment(ks: Keystile) -> None:
    with pytest.raises(InvalidInput) as info:
        ks.quotas.usage(ACCOUNT, environment="staging")
    assert info.value.field == "environment"


# -- page_cost --------------------------------------------------------------------------------


def test_page_cost_int(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=10, page_cost=3)
    token = new_key(ks)
    for n in range(1, 4):
        principal = hit(ks, token)
        assert principal.meter is not None and principal.meter.reserved == 3
        assert principal.quota is not None and principal.quota.used == 3 * n
    error = refused(ks, token)  # 9 + 3 > 10, though one page is left
    assert "10 pages" in error.message
    assert pages(ks) == 9
    assert ks.quotas.usage(ACCOUNT).requests == 3


def test_page_cost_zero_is_free_but_counted(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=1, page_cost=0)
    token = new_key(ks)
    for _ in range(3):
        hit(ks, token)
    report = ks.quotas.usage(ACCOUNT)
    assert (report.pages, report.requests) == (0, 3)


def test_page_cost_callable(make_keystile: Make, clock: Clock) -> None:
    seen: list[RequestInfo] = []

    def cost(request: RequestInfo) -> int:
        seen.append(request)
        if request.path.startswith("/export"):
            return int(request.header("x-pages") or 5)
        return 1

    ks = make_keystile(clock=clock, monthly_page_limit=10, page_cost=cost)
    token = new_key(ks)
    hit(ks, token, path="/jobs")
    hit(ks, token, path="/export", method="POST", headers=[("x-pages", "4")])
    assert pages(ks) == 5
    assert (seen[1].method, seen[1].path, seen[1].header("x-pages")) == ("POST", "/export", "4")
    hit(ks, token, path="/export")  # 5 more: exactly the limit
    error = refused(ks, token, path="/jobs")
    assert error.spec is QUOTA_EXCEEDED
    assert pages(ks) == 10


@pytest.mark.parametrize("bad", [-1, True, 1.5, None, "2"])
def test_page_cost_callable_returning_a_bad_value(
    make_keystile: Make, clock: Clock, bad: Any
) -> None:
    def cost(request: RequestInfo) -> Any:
        return bad if request.path == "/bad" else 1

    ks = make_keystile(clock=clock, monthly_page_limit=10, page_cost=cost)
    token = new_key(ks)
    with pytest.raises(InvalidInput) as info:
        ks.authenticate(bearer(token), "GET", "/bad")
    assert info.value.field == "page_cost"
    assert pages(ks) == 0  # nothing charged, nothing half done
    assert ks.quotas.usage(ACCOUNT).requests == 0
    hit(ks, token, path="/good")
    assert pages(ks) == 1


# -- settlement: charge(), refunds, counted_statuses ------------------------------------------


def test_charge_more_than_reserved(ks: Keystile, token: str) -> None:
    hit(ks, token, charge=4)
    assert pages(ks) == 4
    principal = hit(ks, token)
    assert principal.quota is not None and principal.quota.used == 5


def test_charge_less_than_reserved(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=10, page_cost=5)
    token = new_key(ks)
    hit(ks, token, charge=2)
    hit(ks, token, charge=0)
    assert pages(ks) == 2
    # the unused reservations (3 and 5) were given back: one more 5-page request fits
    hit(ks, token)
    assert pages(ks) == 7
    refused(ks, token)


def test_charge_can_go_past_the_limit_after_the_work(ks: Keystile, token: str) -> None:
    """The real cost is known only after the work: it is recorded, then further requests
    are refused."""
    hit(ks, token, charge=15)
    assert pages(ks) == 15
    assert ks.quotas.usage(ACCOUNT).remaining == 0
    refused(ks, token)


@pytest.mark.parametrize("bad", [-1, True, 2.5, "3", None])
def test_charge_rejects_bad_values(ks: Keystile, token: str, bad: Any) -> None:
    principal = ks.authenticate(bearer(token))
    with pytest.raises(InvalidInput) as info:
        principal.charge(bad)
    assert info.value.field == "pages"
    ks.settle(principal, 200)
    assert pages(ks) == 1  # the reservation stands


def test_charge_on_an_unmetered_principal_is_an_error() -> None:
    principal = Principal("key_x", "a", "n", None, "live", frozenset(), "bearer")
    with pytest.raises(RuntimeError):
        principal.charge(1)


@pytest.mark.parametrize("status", [500, 502, 503, 599, None])
def test_5xx_and_unhandled_exceptions_are_refunded(
    make_keystile: Make, clock: Clock, status: int | None
) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=10, page_cost=3)
    token = new_key(ks)
    hit(ks, token, status=status)
    hit(ks, token, status=status, charge=7)  # a refund ignores the reported cost too
    assert pages(ks) == 0
    for _ in range(3):  # the whole allowance is still there
        hit(ks, token)
    assert pages(ks) == 9


@pytest.mark.parametrize("status", [100, 200, 201, 204, 301, 400, 404, 429, 499])
def test_default_counted_statuses(ks: Keystile, token: str, status: int) -> None:
    hit(ks, token, status=status)
    assert pages(ks) == 1


def test_counted_statuses_setting(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=10, counted_statuses=range(200, 300))
    token = new_key(ks)
    hit(ks, token, status=404)
    hit(ks, token, status=302)
    assert pages(ks) == 0
    hit(ks, token, status=201)
    assert pages(ks) == 1
    everything = make_keystile(clock=clock, monthly_page_limit=10, counted_statuses=[200, 500])
    other = new_key(everything)
    hit(everything, other, status=500)
    hit(everything, other, status=None)  # an exception is never billed
    assert pages(everything) == 1


def test_settle_twice_is_a_no_op(ks: Keystile, token: str) -> None:
    principal = ks.authenticate(bearer(token))
    ks.settle(principal, 500)
    ks.settle(principal, 500)
    ks.settle(principal, 200)
    assert pages(ks) == 0
    principal = ks.authenticate(bearer(token))
    principal.charge(3)
    ks.settle(principal, 200)
    ks.settle(principal, 200)
    assert pages(ks) == 3


def test_settle_without_a_principal_is_a_no_op(ks: Keystile) -> None:
    ks.settle(None, 200)


def test_reserve_raises_the_reservation(ks: Keystile, token: str) -> None:
    principal = ks.authenticate(bearer(token))
    ks.reserve(principal, 4)
    assert principal.meter is not None and principal.meter.reserved == 4
    assert principal.quota is not None
    assert (principal.quota.used, principal.quota.remaining) == (4, 6)
    ks.reserve(principal, 2)  # lower than reserved: nothing to do
    assert principal.meter.reserved == 4
    ks.settle(principal, 200)
    assert pages(ks) == 4
    principal = ks.authenticate(bearer(token))
    ks.reserve(principal, 3)
    ks.settle(principal, 500)  # a refund gives back the whole reservation
    assert pages(ks) == 4


def test_reserve_over_the_limit_is_quota_exceeded(ks: Keystile, token: str) -> None:
    for _ in range(8):
        hit(ks, token)
    principal = ks.authenticate(bearer(token))  # 9 used
    with pytest.raises(AuthError) as info:
        ks.reserve(principal, 3)  # 2 more would make 11
    assert info.value.spec is QUOTA_EXCEEDED
    assert "retry-after" in info.value.headers
    assert principal.meter is not None and principal.meter.reserved == 1
    ks.settle(principal, None)
    assert pages(ks) == 8


# -- idempotency ------------------------------------------------------------------------------


def idem(value: str) -> tuple[str, str]:
    return ("idempotency-key", value)


def test_idempotency_key_is_charged_once(ks: Keystile, token: str) -> None:
    first = hit(ks, token, headers=[idem("order-1")], charge=3)
    again = hit(ks, token, headers=[idem("order-1")], charge=3)
    assert first.meter is not None and not first.meter.replay
    assert again.meter is not None and again.meter.replay and again.meter.reserved == 0
    report = ks.quotas.usage(ACCOUNT)
    assert (report.pages, report.requests) == (3, 1)
    hit(ks, token, headers=[idem("order-2")])  # another key is another request
    assert pages(ks) == 4


def test_idempotent_retry_is_admitted_at_the_limit(ks: Keystile, token: str) -> None:
    for _ in range(9):
        hit(ks, token)
    hit(ks, token, headers=[idem("last")])
    refused(ks, token)
    hit(ks, token, headers=[idem("last")])  # a retry of a charged request is not refused
    assert pages(ks) == 10


def test_idempotency_keys_are_per_account(ks: Keystile, token: str) -> None:
    other = new_key(ks, "acct_2")
    hit(ks, token, headers=[idem("same")])
    principal = hit(ks, other, headers=[idem("same")])
    assert principal.meter is not None and not principal.meter.replay
    assert (pages(ks), pages(ks, "acct_2")) == (1, 1)


def test_idempotency_key_shared_by_keys_of_one_account(ks: Keystile, token: str) -> None:
    sibling = new_key(ks)
    hit(ks, token, headers=[idem("same")])
    principal = hit(ks, sibling, headers=[idem("same")])
    assert principal.meter is not None and principal.meter.replay
    assert pages(ks) == 1


@pytest.mark.parametrize("status", [500, None])
def test_refunded_request_is_forgotten_so_its_retry_is_charged(
    ks: Keystile, token: str, status: int | None
) -> None:
    hit(ks, token, status=status, headers=[idem("flaky")])
    assert pages(ks) == 0
    retry = hit(ks, token, headers=[idem("flaky")])
    assert retry.meter is not None and not retry.meter.replay
    assert pages(ks) == 1
    replay = hit(ks, token, headers=[idem("flaky")])  # now it is remembered
    assert replay.meter is not None and replay.meter.replay
    assert pages(ks) == 1


def test_a_failing_replay_does_not_forget_the_charged_original(ks: Keystile, token: str) -> None:
    hit(ks, token, headers=[idem("k")])
    hit(ks, token, status=500, headers=[idem("k")])  # the replay fails
    replay = hit(ks, token, headers=[idem("k")])
    assert replay.meter is not None and replay.meter.replay
    assert pages(ks) == 1


def test_idempotency_expires_after_its_ttl(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=10, idempotency_ttl=60)
    token = new_key(ks)
    hit(ks, token, headers=[idem("k")])
    clock.advance(59)
    hit(ks, token, headers=[idem("k")])
    assert pages(ks) == 1
    clock.advance(2)
    principal = hit(ks, token, headers=[idem("k")])
    assert principal.meter is not None and not principal.meter.replay
    assert pages(ks) == 2


def test_idempotency_under_concurrency_charges_once(ks: Keystile, token: str) -> None:
    hit(ks, token, status=500)  # warm
    with ThreadPoolExecutor(max_workers=50) as pool:
        list(pool.map(lambda _: hit(ks, token, headers=[idem("burst")]), range(50)))
    report = ks.quotas.usage(ACCOUNT)
    assert report.pages == 1


# -- thresholds -------------------------------------------------------------------------------


def recorder() -> tuple[list[ThresholdEvent], Callable[[ThresholdEvent], None]]:
    events: list[ThresholdEvent] = []
    return events, events.append


def test_thresholds_fire_once_per_period(make_keystile: Make, clock: Clock) -> None:
    events, hook = recorder()
    ks = make_keystile(clock=clock, monthly_page_limit=10, on_quota_threshold=hook)
    token = new_key(ks)
    for _ in range(7):
        hit(ks, token)
    assert events == []
    hit(ks, token)
    assert events == [ThresholdEvent(ACCOUNT, "live", "2026-09", 0.8, 10, 8)]
    hit(ks, token, status=500)  # 9 reserved, then refunded to 8
    hit(ks, token)  # 9: the 0.8 mark is not crossed a second time
    hit(ks, token)  # 10
    assert [e.threshold for e in events] == [0.8, 1.0]
    assert events[1] == ThresholdEvent(ACCOUNT, "live", "2026-09", 1.0, 10, 10)
    refused(ks, token)
    assert len(events) == 2
    clock.now = at(2026, 10, 1)  # a new period: the marks start over
    for _ in range(8):
        hit(ks, token)
    assert events[2] == ThresholdEvent(ACCOUNT, "live", "2026-10", 0.8, 10, 8)
    assert len(events) == 3


def test_one_request_crossing_several_thresholds(make_keystile: Make, clock: Clock) -> None:
    events, hook = recorder()
    ks = make_keystile(
        clock=clock,
        monthly_page_limit=10,
        quota_thresholds=[0.5, 0.8, 1.0],
        on_quota_threshold=hook,
    )
    token = new_key(ks)
    principal = ks.authenticate(bearer(token))
    ks.reserve(principal, 10)
    assert [e.threshold for e in events] == [0.5, 0.8, 1.0]
    assert all(e.used == 10 for e in events)


def test_thresholds_are_per_environment(make_keystile: Make, clock: Clock) -> None:
    events, hook = recorder()
    ks = make_keystile(
        clock=clock, monthly_page_limit=2, test_page_limit=2, on_quota_threshold=hook
    )
    live, test = new_key(ks), new_key(ks, environment="test")
    hit(ks, live)
    hit(ks, live)
    hit(ks, test)
    hit(ks, test)
    assert sorted((e.environment, e.threshold) for e in events) == [
        ("live", 0.8),
        ("live", 1.0),
        ("test", 0.8),
        ("test", 1.0),
    ]


def test_no_thresholds_when_unlimited(make_keystile: Make, clock: Clock) -> None:
    events, hook = recorder()
    ks = make_keystile(clock=clock, on_quota_threshold=hook)
    token = new_key(ks)
    for _ in range(20):
        hit(ks, token)
    assert events == []


def test_a_failing_threshold_hook_never_fails_the_request(
    make_keystile: Make, clock: Clock
) -> None:
    def hook(event: ThresholdEvent) -> None:
        raise RuntimeError("the app's bug")

    ks = make_keystile(clock=clock, monthly_page_limit=1, on_quota_threshold=hook)
    token = new_key(ks)
    hit(ks, token)
    assert pages(ks) == 1


def test_threshold_fires_exactly_at_its_fraction(make_keystile: Make, clock: Clock) -> None:
    """Regression: 0.55 * 100 == 55.00000000000001 in floating point, so it fired at 56."""
    events, hook = recorder()
    ks = make_keystile(
        clock=clock, monthly_page_limit=100, quota_thresholds=[0.55], on_quota_threshold=hook
    )
    token = new_key(ks)
    principal = ks.authenticate(bearer(token))
    ks.reserve(principal, 55)  # 55 of 100 pages is exactly 55%
    assert [e.threshold for e in events] == [0.55]


# -- periods ----------------------------------------------------------------------------------


def test_month_boundary_resets_the_allowance(make_keystile: Make, clock: Clock) -> None:
    clock.now = at(2026, 9, 30, 23, 59, 58)
    ks = make_keystile(clock=clock, monthly_page_limit=2)
    token = new_key(ks)
    hit(ks, token)
    hit(ks, token)
    error = refused(ks, token)
    assert error.headers["retry-after"] == "2"
    clock.advance(1)
    error = refused(ks, token)
    assert error.headers["retry-after"] == "1"
    assert "2026-10-01T00:00:00Z" in error.message
    clock.advance(1)  # 2026-10-01T00:00:00Z exactly: the new period
    principal = hit(ks, token)
    assert principal.quota is not None
    assert (principal.quota.period, principal.quota.used, principal.quota.remaining) == (
        "2026-10",
        1,
        1,
    )
    assert principal.quota.resets_at == datetime(2026, 11, 1, tzinfo=UTC)
    assert pages(ks) == 1
    assert ks.quotas.usage(ACCOUNT, month="2026-09").pages == 2


def test_retry_after_equals_the_seconds_to_the_reset(
    ks: Keystile, token: str, clock: Clock
) -> None:
    for _ in range(10):
        hit(ks, token)
    error = refused(ks, token)
    assert int(error.headers["retry-after"]) == SEPT_END.timestamp() - clock.now == 812800
    clock.advance(812799)
    assert refused(ks, token).headers["retry-after"] == "1"
    clock.advance(1)
    hit(ks, token)


def test_anchor_day_and_time_zone(make_keystile: Make, clock: Clock) -> None:
    """Periods start on the 15th at local midnight in New York: 04:00Z in EDT, 05:00Z in EST."""
    clock.now = at(2026, 10, 15, 3, 59, 59)  # 2026-10-14 23:59:59 EDT
    ks = make_keystile(
        clock=clock,
        monthly_page_limit=1,
        billing_anchor_day=15,
        billing_timezone="America/New_York",
    )
    token = new_key(ks)
    principal = hit(ks, token)
    assert principal.quota is not None
    assert principal.quota.period == "2026-09"
    assert principal.quota.resets_at == datetime(2026, 10, 15, 4, tzinfo=UTC)
    error = refused(ks, token)
    assert error.headers["retry-after"] == "1"
    assert "2026-10-15T04:00:00Z" in error.message
    clock.advance(1)
    principal = hit(ks, token)
    assert principal.quota is not None
    assert principal.quota.period == "2026-10"
    assert principal.quota.resets_at == datetime(2026, 11, 15, 5, tzinfo=UTC)  # EST by then
    refused(ks, token)
    clock.now = at(2026, 11, 15, 4, 59, 59)
    refused(ks, token)
    clock.now = at(2026, 11, 15, 5)
    assert hit(ks, token).quota.period == "2026-11"  # type: ignore[union-attr]
    report = ks.quotas.usage(ACCOUNT, month="2026-10")
    assert report.starts_at == datetime(2026, 10, 15, 4, tzinfo=UTC)
    assert report.resets_at == datetime(2026, 11, 15, 5, tzinfo=UTC)
    assert [m.pages for m in ks.quotas.usage(ACCOUNT).history[:3]] == [1, 1, 1]


def test_leap_day(make_keystile: Make, clock: Clock) -> None:
    clock.now = at(2028, 2, 29, 12)
    ks = make_keystile(clock=clock, monthly_page_limit=1)
    token = new_key(ks)
    principal = hit(ks, token)
    assert principal.quota is not None
    assert principal.quota.period == "2028-02"
    assert principal.quota.resets_at == datetime(2028, 3, 1, tzinfo=UTC)
    refused(ks, token)
    clock.now = at(2028, 3, 1)
    assert hit(ks, token).quota.period == "2028-03"  # type: ignore[union-attr]


def test_anchor_day_clamped_to_the_leap_day(make_keystile: Make, clock: Clock) -> None:
    clock.now = at(2028, 2, 28, 23, 59, 59)
    ks = make_keystile(clock=clock, monthly_page_limit=1, billing_anchor_day=31)
    token = new_key(ks)
    principal = hit(ks, token)
    assert principal.quota is not None
    assert principal.quota.period == "2028-01"  # Jan 31 .. Feb 29
    assert principal.quota.resets_at == datetime(2028, 2, 29, tzinfo=UTC)
    refused(ks, token)
    clock.advance(1)  # Feb 29: the anchor day 31, clamped
    principal = hit(ks, token)
    assert principal.quota is not None
    assert principal.quota.period == "2028-02"
    assert principal.quota.resets_at == datetime(2028, 3, 31, tzinfo=UTC)
    report = ks.quotas.usage(ACCOUNT)
    assert report.starts_at == datetime(2028, 2, 29, tzinfo=UTC)


def test_anchor_day_29_in_a_common_year(make_keystile: Make, clock: Clock) -> None:
    clock.now = at(2027, 2, 28)
    ks = make_keystile(clock=clock, monthly_page_limit=1, billing_anchor_day=29)
    token = new_key(ks)
    principal = hit(ks, token)
    assert principal.quota is not None
    assert principal.quota.period == "2027-02"  # Feb 28 stands in for the 29th
    assert principal.quota.resets_at == datetime(2027, 3, 29, tzinfo=UTC)


# -- usage reports ----------------------------------------------------------------------------


def test_usage_report_per_key(ks: Keystile, token: str) -> None:
    other = new_key(ks)
    hit(ks, token)
    hit(ks, token, charge=2)
    hit(ks, other, charge=5)
    hit(ks, other, status=500)  # refunded: no pages
    report = ks.quotas.usage(ACCOUNT)
    kid, other_kid = "key_" + token.split("_")[2], "key_" + other.split("_")[2]
    assert [(k.key_id, k.pages) for k in report.keys] == [(other_kid, 5), (kid, 3)]
    assert {k.key_id: k.requests for k in report.keys}[kid] == 2
    assert (report.pages, report.limit, report.remaining) == (8, 10, 2)
    assert (report.account_id, report.environment, report.month) == (ACCOUNT, "live", "2026-09")
    assert report.starts_at == datetime(2026, 9, 1, tzinfo=UTC)
    assert report.resets_at == SEPT_END
    as_dict = report.to_dict()
    assert as_dict["pages"] == 8 and as_dict["keys"][0] == {
        "key_id": other_kid,
        "pages": 5,
        "requests": 2,
    }
    assert len(as_dict["history"]) == 12


def test_usage_report_is_the_same_before_and_after_a_flush(ks: Keystile, token: str) -> None:
    for _ in range(3):
        hit(ks, token)
    hit(ks, token, charge=4)
    before = ks.quotas.usage(ACCOUNT)
    ks.flush()
    after = ks.quotas.usage(ACCOUNT)
    assert before == after
    assert after.pages == 7
    hit(ks, token)  # buffered on top of the stored rows
    assert ks.quotas.usage(ACCOUNT).pages == 8


def test_usage_history_covers_12_months(make_keystile: Make, clock: Clock) -> None:
    clock.now = at(2025, 9, 15)
    ks = make_keystile(clock=clock)
    token = new_key(ks)
    hit(ks, token, charge=100)  # 2025-09: 13 months back, outside the report
    clock.now = at(2025, 10, 3)
    hit(ks, token, charge=7)
    clock.now = at(2026, 3, 31, 23)
    hit(ks, token, charge=4)
    ks.flush()
    clock.now = at(2026, 9, 21)
    hit(ks, token, charge=2)
    hit(ks, token, charge=1)
    report = ks.quotas.usage(ACCOUNT)
    assert [m.month for m in report.history] == [
        "2026-09",
        "2026-08",
        "2026-07",
        "2026-06",
        "2026-05",
        "2026-04",
        "2026-03",
        "2026-02",
        "2026-01",
        "2025-12",
        "2025-11",
        "2025-10",
    ]
    assert [m.pages for m in report.history] == [3, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 7]
    assert [m.requests for m in report.history] == [2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    march = ks.quotas.usage(ACCOUNT, month="2026-03")
    assert (march.month, march.pages, march.requests) == ("2026-03", 4, 1)
    assert march.history[0].month == "2026-03" and march.history[-1].month == "2025-04"
    assert [m.pages for m in march.history if m.pages] == [4, 7, 100]  # 2025-09 is in range
    assert len(march.keys) == 1 and march.keys[0].pages == 4
    assert ks.quotas.usage(ACCOUNT, month="2025-09").pages == 100


@pytest.mark.parametrize("month", ["2026-13", "2026-00", "26-09", "2026/09", "september", ""])
def test_usage_rejects_bad_months(ks: Keystile, month: str) -> None:
    with pytest.raises(InvalidInput) as info:
        ks.quotas.usage(ACCOUNT, month=month)
    assert info.value.field == "month"


def test_usage_of_an_account_without_usage(ks: Keystile) -> None:
    report = ks.quotas.usage("nobody")
    assert (report.pages, report.requests, report.limit, report.remaining) == (0, 0, 10, 10)
    assert report.keys == []
    assert [m.pages for m in report.history] == [0] * 12


# -- durability -------------------------------------------------------------------------------


def sqlite_engine(make_keystile: Make, clock: Clock, path: Path, **settings: Any) -> Keystile:
    return make_keystile(clock=clock, store=f"sqlite:///{path}", **settings)


def test_a_new_engine_continues_from_the_stored_usage(
    make_keystile: Make, clock: Clock, tmp_path: Path
) -> None:
    db = tmp_path / "keys.db"
    first = sqlite_engine(make_keystile, clock, db, monthly_page_limit=10)
    token = new_key(first)
    for _ in range(3):
        hit(first, token)
    hit(first, token, charge=3)
    first.flush()
    second = sqlite_engine(make_keystile, clock, db, monthly_page_limit=10)  # a restart
    assert pages(second) == 6
    principal = hit(second, token)
    assert principal.quota is not None and principal.quota.used == 7  # not 1
    for _ in range(3):
        hit(second, token)
    refused(second, token)
    second.flush()
    assert pages(second) == 10
    assert ks_usage_rows(second) == 10


def ks_usage_rows(ks: Keystile) -> int:
    return sum(r.pages for r in ks.store.usage(ACCOUNT, ["2026-09"]))


def test_unflushed_usage_is_not_in_the_store(ks: Keystile, token: str) -> None:
    hit(ks, token)
    assert ks_usage_rows(ks) == 0  # buffered
    ks.flush()
    assert ks_usage_rows(ks) == 1
    ks.flush()  # nothing left to write: no double count
    assert ks_usage_rows(ks) == 1


def test_close_writes_the_buffered_usage(make_keystile: Make, clock: Clock, tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    first = Keystile(
        {"store": f"sqlite:///{db}", "argon2": {"time_cost": 1, "memory_cost": 8}},
        clock=clock,
    )
    token = new_key(first)
    hit(first, token, charge=4)
    hit(first, token, status=500)
    first.close()
    second = sqlite_engine(make_keystile, clock, db, monthly_page_limit=5)
    assert pages(second) == 4
    hit(second, token)
    refused(second, token)


def test_background_flush_writes_usage(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, usage_flush_interval=0.05)
    token = new_key(ks)
    hit(ks, token, charge=2)
    deadline = threading.Event()
    for _ in range(100):
        if ks_usage_rows(ks) == 2:
            break
        deadline.wait(0.05)
    assert ks_usage_rows(ks) == 2


def test_a_failed_store_write_is_kept_for_the_next_flush(ks: Keystile, token: str) -> None:
    hit(ks, token, charge=3)
    real = ks.store.add_usage
    ks.store.add_usage = _raise  # type: ignore[method-assign]
    ks.flush()
    ks.store.add_usage = real  # type: ignore[method-assign]
    assert ks_usage_rows(ks) == 0
    assert pages(ks) == 3  # still counted, from the buffer
    ks.flush()
    assert ks_usage_rows(ks) == 3
    assert pages(ks) == 3


def _raise(deltas: Sequence[Any]) -> None:
    raise OSError("disk full")


def test_a_restart_does_not_fire_thresholds_again(
    make_keystile: Make, clock: Clock, tmp_path: Path
) -> None:
    """Regression: a counter seeded from the store had no threshold marks."""
    db = tmp_path / "keys.db"
    events, hook = recorder()
    first = sqlite_engine(make_keystile, clock, db, monthly_page_limit=10, on_quota_threshold=hook)
    token = new_key(first)
    for _ in range(8):
        hit(first, token)
    assert [e.threshold for e in events] == [0.8]
    first.flush()
    second = sqlite_engine(make_keystile, clock, db, monthly_page_limit=10, on_quota_threshold=hook)
    hit(second, token)  # 9
    assert [e.threshold for e in events] == [0.8]
    hit(second, token)  # 10
    assert [e.threshold for e in events] == [0.8, 1.0]


@pytest.mark.parametrize("limit", [None, 100])
def test_a_warm_request_reads_each_clock_once(make_keystile: Make, limit: int | None) -> None:
    reads = {"wall": 0, "monotonic": 0}
    wall_now, mono_now = at(2026, 9, 21, 13, 33, 20), 1000.0

    def wall() -> float:
        reads["wall"] += 1
        return wall_now

    def monotonic() -> float:
        reads["monotonic"] += 1
        return mono_now

    ks = make_keystile(clock=wall, monotonic=monotonic, monthly_page_limit=limit)
    token = ks.keys.create(ACCOUNT, "clocks").token
    for _ in range(3):  # cold, then warm: the credential and the charge remembered
        hit(ks, token)
    reads.update(wall=0, monotonic=0)
    principal = ks.authenticate(bearer(token))
    assert reads == {"wall": 1, "monotonic": 1}  # expiry, period and last use; both caches
    ks.settle(principal, 200)
    assert reads == {"wall": 1, "monotonic": 1}
    wall_now += 7
    hit(ks, token)
    assert ks.batches._last_used[principal.key_id.removeprefix(KEY_ID_PREFIX)] == wall_now
