"""Rate limits in the "fast" mode: requests reserved in Redis (``rate_lease.lua``) and admitted
locally, so a rate-limited key costs a round trip now and then, not one per request.

The book's rules are checked without I/O; the rest on a real Redis, by counting commands and
requests, never by timing. The Redis side runs on the server's clock, so the limits are far
slower than the tests (``/h``): every refusal is the limit's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from keystile import AuthError, Keystile
from keystile._core.rateleases import Limit, RateBook, lapse_after
from keystile._core.ratelimits import ACCOUNT_RATE_POLICY, KEY_RATE_POLICY, Rate, RateState

from . import test_rate_limits
from .conftest import TOPOLOGIES, Clock, topology_settings
from .test_fast_mode import Commands
from .test_rate_limits import bearer, outcome

#: test_rate_limits' fixture: ``engines("fast", clock=..., **settings)``, engines on one store.
engines = test_rate_limits.engines
ACCOUNT = "acct-rate-lease"
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
HOURLY = Rate(10, 3600)
WAVES = 20  # one request each 360 s
KEY: Limit = (("r:key", 10, 3600), HOURLY, KEY_RATE_POLICY)
ACCOUNT_LIMIT: Limit = (("r:@live", 10, 3600), HOURLY, ACCOUNT_RATE_POLICY)


def ok(taken: int, room: int, full_in_s: float) -> list[Any]:
    return ["ok", taken, room, int(full_in_s * 1e6)]


# ------------------------------------------------------------------------- the book alone


def test_nothing_is_admitted_before_a_reservation_and_each_reservation_once() -> None:
    book = RateBook()
    assert book.take([KEY], 100.0) is None
    assert book.call_args([KEY], 100.0) == [book.spread, 10, 3600, 1, 0]
    book.reserved([KEY], ok(2, 8, 720), 100.0)
    first = book.take([KEY], 100.5)
    assert isinstance(first, tuple) and first[0].remaining == 9  # one left here, 8 in Redis
    assert isinstance(book.take([KEY], 101.0), tuple)
    assert book.take([KEY], 101.5) is None  # both spent: reserve again
    assert book.call_args([KEY], 101.5)[3] == 2  # the block doubled with the grant


def test_a_reservation_lapses_one_interval_after_it_was_made_and_goes_back() -> None:
    book = RateBook()
    book.call_args([KEY], 100.0)
    book.reserved([KEY], ok(4, 6, 1440), 100.0)
    assert isinstance(book.take([KEY], 459.0), tuple)  # within 360 s of the call
    assert book.take([KEY], 460.0) is None  # past it: never admitted here
    args = book.call_args([KEY], 460.0)
    assert args[4] == 3  # the three unspent go back with the next reservation
    assert args[3] == 1  # and the next block is halved (from 2)
    book.reserved([KEY], ok(1, 8, 360), 460.0)
    assert isinstance(book.take([KEY], 461.0), tuple)
    assert book.take([KEY], 461.0) is None  # the lapsed three are gone here


def test_a_fast_limits_reservation_lapses_after_a_hundredth_of_its_period() -> None:
    fast = Rate(1000, 1)  # an interval of 1 ms: reservations would lapse between requests
    assert lapse_after(fast) == pytest.approx(0.01) and lapse_after(HOURLY) == 360.0
    limit: Limit = (("r:fast", 1000, 1), fast, KEY_RATE_POLICY)
    book = RateBook()
    book.call_args([limit], 100.0)
    book.reserved([limit], ok(3, 900, 1.0), 100.0)
    assert isinstance(book.take([limit], 100.009), tuple)
    assert book.take([limit], 100.011) is None  # at most 10 ms worth (1% of the limit) late


def test_a_refusal_is_remembered_until_the_moment_redis_named() -> None:
    book = RateBook()
    book.call_args([KEY], 100.0)
    refused = book.refused([KEY], ["rate", 30_000_000, 1], 100.0)
    assert refused == RateState(KEY_RATE_POLICY, HOURLY, 0, 30.0)
    again = book.take([KEY], 120.0)
    assert isinstance(again, RateState) and again.full_in == pytest.approx(10.0)
    assert book.take([KEY], 130.0) is None  # then Redis decides again


def test_a_request_takes_from_every_limit_or_from_none() -> None:
    book = RateBook()
    book.call_args([KEY, ACCOUNT_LIMIT], 100.0)
    book.reserved([KEY, ACCOUNT_LIMIT], ["ok", 1, 9, 360_000_000, 2, 8, 720_000_000], 100.0)
    states = book.take([KEY, ACCOUNT_LIMIT], 101.0)
    assert isinstance(states, tuple)
    assert [s.policy for s in states] == [KEY_RATE_POLICY, ACCOUNT_RATE_POLICY]
    # The key's is spent; the account's one left stays whole for another key of the account.
    assert book.take([KEY, ACCOUNT_LIMIT], 101.0) is None
    assert isinstance(book.take([ACCOUNT_LIMIT], 101.0), tuple)
    book.untake([ACCOUNT_LIMIT])  # refused after all (its quota): unspent again
    assert isinstance(book.take([ACCOUNT_LIMIT], 101.0), tuple)


# ------------------------------------------------------------------------- on a real Redis


def scripts(commands: Commands) -> int:
    return sum(name in ("EVALSHA", "EVAL") for name in commands.names)


@pytest.mark.redis
def test_a_rate_limited_key_costs_a_round_trip_now_and_then_not_per_request(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines("fast", monthly_page_limit=10_000)
    key = ks.keys.create(ACCOUNT, "k", rate_limit="1000/h")
    assert not isinstance(outcome(ks, key.token), AuthError)  # warm: the snapshot, a lease
    commands = Commands(monkeypatch, ks)
    for _ in range(200):
        principal = outcome(ks, key.token)
        assert not isinstance(principal, AuthError), principal
    # Pages and requests are both leased in blocks that double (1, 2, 4, ...): a few trips.
    assert 1 <= scripts(commands) <= 20, commands.names
    assert "GET" not in commands.names  # never the per-request meter
    headers = dict(ks.response_headers(principal))
    assert '"key-rate";q=1000;w=3600;pk=:' in headers["ratelimit-policy"]
    remaining = int(headers["ratelimit"].split('"key-rate";r=')[1].split(";")[0])
    assert 1000 - 201 - 256 <= remaining <= 1000 - 201  # minus what this process holds


@pytest.mark.redis
def test_a_flood_past_the_limit_is_refused_locally(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines("fast", monthly_page_limit=10_000)
    key = ks.keys.create(ACCOUNT, "k", rate_limit="5/h")
    results = [outcome(ks, key.token) for _ in range(5)]
    assert not any(isinstance(r, AuthError) for r in results)
    commands = Commands(monkeypatch, ks)
    refused = [outcome(ks, key.token) for _ in range(100)]
    assert {r.code for r in refused} == {"RATE_001"}
    assert scripts(commands) == 1  # one refusal from Redis, remembered for 720 s
    assert all(700 <= int(r.headers["retry-after"]) <= 720 for r in refused)
    ks.flush()
    usage = ks.quotas.usage(ACCOUNT)
    assert (usage.pages, usage.requests) == (5, 5)  # the refused 100 were never charged


@pytest.mark.redis
def test_a_refusal_yields_to_a_siblings_reservation_even_when_the_pages_ran_out(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis refuses a request because a sibling's reservation, answered after it, took the
    last room; meanwhile siblings spent the leased pages. The request is admitted from the
    sibling's reservation (with new pages): refused, it would leave that reservation unspent
    at the end of a burst, and fewer requests admitted than the limit."""
    ks = engines("fast", monthly_page_limit=10_000)
    key = ks.keys.create(ACCOUNT, "k", rate_limit="2/h")
    assert not any(isinstance(outcome(ks, key.token), AuthError) for _ in range(2))
    leases, book = ks.admission.leases, ks.admission.rate_book
    assert leases is not None
    real = ks.redis.rate_lease

    def refused_while_a_sibling_reserved(keys: list[str], args: list[Any]) -> list[Any]:
        reply = real(keys, args)
        assert reply[0] == "rate"
        limit: Limit = ((keys[0], 2, 3600), Rate(2, 3600), KEY_RATE_POLICY)
        book.reserved([limit], ok(1, 0, 3600), ks.clock())
        for counter in list(leases._leases):
            while leases.spend(counter, "sibling", 1, False, ks.clock()) is not None:
                pass
        return reply

    monkeypatch.setattr(ks.redis, "rate_lease", refused_while_a_sibling_reserved)
    assert not isinstance(outcome(ks, key.token), AuthError)
    monkeypatch.setattr(ks.redis, "rate_lease", real)
    assert outcome(ks, key.token).code == "RATE_001"  # and that was the last one


@pytest.mark.redis
def test_reservations_that_lapse_unspent_go_back_to_the_limit(
    engines: Callable[..., Keystile],
) -> None:
    clock = Clock()
    ks = engines("fast", clock=clock, monthly_page_limit=10_000)
    key = ks.keys.create(ACCOUNT, "k", rate_limit="10/h")
    admitted = 0
    for _ in range(4):  # reservations of 1, 2, ...: some lapse here while this process idles
        admitted += not isinstance(outcome(ks, key.token), AuthError)
        clock.advance(400)  # past the interval (360 s) here; Redis' own clock barely moves
    while not isinstance(outcome(ks, key.token), AuthError):
        admitted += 1
    # Without the give-back the lapsed ones would be lost for the hour: fewer than 10.
    assert admitted == 10


@pytest.mark.redis
def test_exact_across_three_engines_with_threads(engines: Callable[..., Keystile]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    trio = [engines("fast", monthly_page_limit=10_000) for _ in range(3)]
    key = trio[0].keys.create(ACCOUNT, "k", rate_limit="60/h")
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: outcome(trio[i % 3], key.token), range(300)))
    admitted = [r for r in results if not isinstance(r, AuthError)]
    assert len(admitted) <= 60  # never past the limit; what is reserved and lapses is lost
    assert len(admitted) >= 50
    assert {r.code for r in results if isinstance(r, AuthError)} == {"RATE_001"}


@pytest.mark.redis
def test_an_accounts_rate_limit_is_leased_like_a_keys(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines("fast", monthly_page_limit=10_000)
    ks.quotas.set_rate_limit(ACCOUNT, "1000/h")
    tokens = [ks.keys.create(ACCOUNT, f"k{i}").token for i in range(2)]
    for token in tokens:
        assert not isinstance(outcome(ks, token), AuthError)
    commands = Commands(monkeypatch, ks)

    async def burst() -> tuple[list[Any], list[int]]:
        async def one(token: str) -> Any:
            principal = await ks.authenticate_async(bearer(token))
            await ks.settle_async(principal, 200)
            return principal

        commands.watch_async(monkeypatch, ks)
        results: list[Any] = []
        trips: list[int] = []
        for _ in range(WAVES):  # of 20 concurrent requests
            before = scripts(commands)
            results += await asyncio.gather(*(one(tokens[i % 2]) for i in range(20)))
            trips.append(scripts(commands) - before)
        return results, trips

    results, trips = asyncio.run(burst())
    assert len(results) == 20 * WAVES
    # A wave that finds nothing reserved asks for each of its requests (pages and requests);
    # each such wave doubles the blocks, so those waves soon stop: 3 of 20 here.
    assert trips[0] <= 2 * 20 and sum(trips[1:]) <= 3 * 2 * 20, trips
    assert trips[WAVES // 2 :] == [0] * (WAVES - WAVES // 2), trips
    headers = dict(ks.response_headers(results[-1]))
    assert '"account-rate";q=1000;w=3600' in headers["ratelimit-policy"]


@pytest.mark.redis
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_the_key_and_the_account_limits_reserve_in_one_slot_on_every_topology(
    request: pytest.FixtureRequest, topology: str
) -> None:
    settings = {**topology_settings(request, topology), "consistency": "fast"}
    ks = Keystile({**settings, "argon2": FAST_ARGON2, "monthly_page_limit": 10_000})
    try:
        assert ks.ready(10.0)
        ks.quotas.set_rate_limit(ACCOUNT, "4/h")
        key = ks.keys.create(ACCOUNT, "k", rate_limit="3/h")
        other = ks.keys.create(ACCOUNT, "other")
        assert [isinstance(outcome(ks, key.token), AuthError) for _ in range(4)] == [
            False, False, False, True
        ]  # fmt: skip
        assert not isinstance(outcome(ks, other.token), AuthError)  # the account's fourth
        refused = outcome(ks, other.token)
        assert refused.code == "RATE_001" and refused.policies == ("account-rate",)
    finally:
        ks.close()
