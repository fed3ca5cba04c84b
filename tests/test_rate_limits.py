"""Per-key rate limits (``rate_limit="100/s"``): parsed and normalised, a GCRA with no window
edge, exact across engines on a real Redis in both consistency modes, and never charged.

Engines stand for processes: they share one store and one Redis (and its key prefix). The
Redis side runs on the server's clock, so those tests use limits far slower than the test
(``/h``): every refusal is the limit's, none the clock's.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keystile import AuthError, Keystile
from keystile._core.errors import InvalidInput
from keystile._core.ratelimits import Rate, check_rate_limit, gcra, parse_rate
from keystile.stores import KeyStore

from .conftest import Clock

ACCOUNT = "acct-rate"
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def outcome(ks: Keystile, token: str) -> Any:
    try:
        principal = ks.authenticate(bearer(token))
    except AuthError as error:
        return error
    ks.settle(principal, 200)
    return principal


async def aoutcome(ks: Keystile, token: str) -> str:
    try:
        principal = await ks.authenticate_async(bearer(token))
    except AuthError as error:
        return error.code
    await ks.settle_async(principal, 200)
    return "ok"


# ------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("100/s", "100/s"),
        ("6000/min", "6000/min"),
        ("100000/h", "100000/h"),
        (" 5 / Minute ", "5/min"),
        ("7/sec", "7/s"),
        ("1/hour", "1/h"),
    ],
)
def test_rate_limits_are_normalised(text: str, shown: str) -> None:
    assert check_rate_limit("rate_limit", text) == shown
    assert str(parse_rate(shown)) == shown


@pytest.mark.parametrize("bad", ["0/s", "-1/s", "10", "10/day", "10/ms", "1e3/s", 10, "", "x" * 40])
def test_a_bad_rate_limit_names_its_field(bad: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_rate_limit("rate_limit", bad)
    assert caught.value.field == "rate_limit"
    assert check_rate_limit("rate_limit", None) is None


def test_gcra_admits_the_burst_then_one_per_interval_and_no_window_edge() -> None:
    rate = Rate(10, 1)  # 10 at once, then one every 100 ms
    free, admitted_at = 0.0, []
    for tick in range(0, 3_000_000, 10_000):  # a request every 10 ms for 3 s
        ok, free, _ = gcra(rate, free, float(tick))
        if ok:
            admitted_at.append(tick)
    assert admitted_at[:10] == list(range(0, 100_000, 10_000))  # the burst
    # Steady state: one per interval. Any one-second span holds at most the burst plus what
    # the interval refills in it, never the 2x a fixed window lets through at its edge.
    for start in range(0, 2_000_000, 10_000):
        inside = [t for t in admitted_at if start <= t < start + 1_000_000]
        assert len(inside) <= 20
    late = [t for t in admitted_at if t >= 1_000_000]
    assert all(b - a >= 100_000 for a, b in itertools.pairwise(late))


def test_an_odd_rate_never_admits_more_than_it_says() -> None:
    rate = Rate(7, 1)  # 142857.14 µs: rounded up, never down
    free, admitted = 0.0, 0
    for _ in range(100):
        ok, free, _ = gcra(rate, free, 0.0)
        admitted += ok
    assert admitted == 7


# ---------------------------------------------------------------------- without Redis


def test_without_redis_the_limit_refuses_with_rate_001_and_charges_nothing(
    make_keystile: Callable[..., Keystile], clock: Clock
) -> None:
    ks = make_keystile(clock=clock)
    key = ks.keys.create(ACCOUNT, "k", rate_limit="3/min")
    assert ks.keys.get(key.key_id).rate_limit == "3/min"
    for remaining in (2, 1, 0):
        principal = outcome(ks, key.token)
        assert not isinstance(principal, AuthError), principal
        headers = dict(ks.response_headers(principal))
        assert '"key-rate";q=3;w=60' in headers["ratelimit-policy"]
        assert f'"key-rate";r={remaining};' in headers["ratelimit"]
    refused = outcome(ks, key.token)
    assert isinstance(refused, AuthError) and refused.code == "RATE_001"
    assert refused.policies == ("key-rate",)
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    ks.flush()
    usage = ks.quotas.usage(ACCOUNT)
    assert (usage.pages, usage.requests) == (3, 3)  # the refused request cost nothing
    clock.advance(20)  # one interval: one more request
    assert not isinstance(outcome(ks, key.token), AuthError)
    assert outcome(ks, key.token).code == "RATE_001"
    ks.keys.update(key.key_id, rate_limit=None)  # lifted: at once
    assert not isinstance(outcome(ks, key.token), AuthError)


# ------------------------------------------------------------------------- with Redis


@pytest.fixture
def engines(
    redis_settings: dict[str, Any], shared_store: KeyStore
) -> Iterator[Callable[..., Keystile]]:
    made: list[Keystile] = []

    def make(consistency: str, clock: Clock | None = None, **extra: Any) -> Keystile:
        settings = {**redis_settings, "consistency": consistency, "argon2": FAST_ARGON2}
        ks = Keystile({**settings, "store": "memory://", **extra}, store=shared_store, clock=clock)
        made.append(ks)
        assert ks.ready(10.0)
        return ks

    yield make
    for ks in made:
        ks.close()


@pytest.mark.redis
@pytest.mark.parametrize("consistency", ["strict", "fast"])
def test_exact_across_three_engines_under_a_thousand_concurrent_requests(
    engines: Callable[..., Keystile], consistency: str
) -> None:
    trio = [engines(consistency, monthly_page_limit=10_000) for _ in range(3)]
    key = trio[0].keys.create(ACCOUNT, "k", rate_limit="100/h")

    async def flood() -> list[str]:
        results = await asyncio.gather(*(aoutcome(trio[i % 3], key.token) for i in range(1000)))
        for ks in trio:
            await ks.aclose()
        return list(results)

    results = asyncio.run(flood())
    assert results.count("ok") == 100
    assert results.count("RATE_001") == 900
    for ks in trio:
        ks.flush()
    usage = trio[0].quotas.usage(ACCOUNT)
    assert (usage.pages, usage.requests) == (100, 100)  # the refused 900 were never charged


@pytest.mark.redis
def test_with_redis_the_fields_and_the_refusal_match_the_local_ones(
    engines: Callable[..., Keystile],
) -> None:
    ks = engines("strict", monthly_page_limit=50)
    key = ks.keys.create(ACCOUNT, "k", rate_limit="2/h")
    first = outcome(ks, key.token)
    headers = dict(ks.response_headers(first))
    policies = headers["ratelimit-policy"].split(", ")
    assert policies[0].startswith('"monthly";q=50;w=') and policies[1].startswith(
        '"key-rate";q=2;w=3600;pk=:'
    )
    assert '"key-rate";r=1;t=1800' in headers["ratelimit"]
    assert not isinstance(outcome(ks, key.token), AuthError)
    refused = outcome(ks, key.token)
    assert refused.code == "RATE_001" and 1795 <= int(refused.headers["retry-after"]) <= 1800
    assert '"key-rate";r=0;' in refused.headers["ratelimit"]
    # Another key of the account has its own limit; the account's quota is shared.
    other = ks.keys.create(ACCOUNT, "other", rate_limit="1/h")
    assert not isinstance(outcome(ks, other.token), AuthError)
    assert outcome(ks, other.token).code == "RATE_001"


# ------------------------------------------------------------------ an account's own limit


def test_an_accounts_rate_limit_is_shared_by_its_keys_without_redis(
    make_keystile: Callable[..., Keystile], clock: Clock
) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=100)
    ks.quotas.set_rate_limit(ACCOUNT, "3/min")
    assert ks.quotas.rate_limit(ACCOUNT) == "3/min"
    assert ks.quotas.limit(ACCOUNT) == 100  # the pages stay the default
    first, second = (ks.keys.create(ACCOUNT, name).token for name in ("a", "b"))
    assert_shared_limit(ks, first, second)
    clock.advance(20)
    assert not isinstance(outcome(ks, second), AuthError)


def assert_shared_limit(ks: Keystile, first: str, second: str, window: int = 60) -> None:
    """Three requests of the account's "3/<window>" across two keys, then RATE_001."""
    for token, remaining in ((first, 2), (second, 1), (first, 0)):
        principal = outcome(ks, token)
        assert not isinstance(principal, AuthError), principal
        headers = dict(ks.response_headers(principal))
        assert f'"account-rate";q=3;w={window};pk=:' in headers["ratelimit-policy"]
        assert f'"account-rate";r={remaining};' in headers["ratelimit"]
    refused = outcome(ks, second)
    assert isinstance(refused, AuthError) and refused.code == "RATE_001", refused
    assert refused.policies == ("account-rate",) and "account's" in refused.message


def test_a_page_limit_change_keeps_the_rate_limit_and_clearing_both_leaves_no_row(
    make_keystile: Callable[..., Keystile], clock: Clock
) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=100, plans={"pro": 500})
    ks.quotas.set_rate_limit(ACCOUNT, "10/s")
    ks.quotas.set_limit(ACCOUNT, 50)
    assert (ks.quotas.limit(ACCOUNT), ks.quotas.rate_limit(ACCOUNT)) == (50, "10/s")
    ks.quotas.set_plan(ACCOUNT, "pro")
    assert (ks.quotas.limit(ACCOUNT), ks.quotas.rate_limit(ACCOUNT)) == (500, "10/s")
    ks.quotas.clear_limit(ACCOUNT)
    assert (ks.quotas.limit(ACCOUNT), ks.quotas.rate_limit(ACCOUNT)) == (100, "10/s")
    ks.quotas.set_rate_limit(ACCOUNT, None)
    assert ks.store.get_limit(ACCOUNT) is None
    with pytest.raises(InvalidInput) as caught:
        ks.quotas.set_rate_limit(ACCOUNT, "fast")
    assert caught.value.field == "rate"
    entries = ks.audit.list(ACCOUNT, action="limit.change").items
    assert {"rate": "10/s"}.items() <= entries[-1].details.items()


@pytest.mark.redis
@pytest.mark.parametrize("consistency", ["strict", "fast"])
def test_an_accounts_rate_limit_with_redis(
    engines: Callable[..., Keystile], consistency: str
) -> None:
    pair = [engines(consistency, monthly_page_limit=100) for _ in range(2)]
    first, second = (pair[0].keys.create(ACCOUNT, name).token for name in ("a", "b"))
    # Warm both engines first (fast mode: a lease), then limit the account.
    for ks in pair:
        for token in (first, second):
            assert not isinstance(outcome(ks, token), AuthError)
    pair[0].quotas.set_rate_limit(ACCOUNT, "3/h")
    if consistency == "fast":
        for ks in pair:
            ks.flush()  # a lease taken before the limit is spent down, then given back
    assert_shared_limit(pair[1], first, second, 3600)
    assert outcome(pair[0], first).code == "RATE_001"  # shared across processes


@pytest.mark.redis
@pytest.mark.parametrize("consistency", ["strict", "fast"])
def test_an_accounts_rate_limit_is_exact_across_three_engines(
    engines: Callable[..., Keystile], consistency: str
) -> None:
    trio = [engines(consistency, monthly_page_limit=10_000) for _ in range(3)]
    trio[0].quotas.set_rate_limit(ACCOUNT, "100/h")
    tokens = [trio[0].keys.create(ACCOUNT, f"k{i}").token for i in range(4)]

    async def flood() -> list[str]:
        calls = (aoutcome(trio[i % 3], tokens[i % 4]) for i in range(600))
        results = await asyncio.gather(*calls)
        for ks in trio:
            await ks.aclose()
        return list(results)

    results = asyncio.run(flood())
    assert (results.count("ok"), results.count("RATE_001")) == (100, 500)
