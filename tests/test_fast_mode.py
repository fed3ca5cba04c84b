"""The "fast" consistency mode on a real Redis: its promises, proved by counting, not timing.

- A warm key costs no Redis command at all (cache trusted, pages spent from a lease).
- A revoke reaches another engine's cache through the invalidation channel.
- With the channel down, an engine checks every request with Redis, as strict mode does; a
  change it missed meanwhile is covered by the resync when the channel comes back.
- Leases never overshoot: 1,000 concurrent requests across 3 engines against a limit of 300
  admit exactly 300; unused lease pages go back at shutdown; a crashed engine loses at most
  its lease, and never against the customer.

Engines stand for processes: they share one store and one Redis (and its key prefix), nothing
else. Waits are bounded and wait for a state, never for a duration.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from keystile import AuthError, Keystile
from keystile._runtime import engine
from keystile.stores import KeyStore

from . import polling
from .faults import Proxy

pytestmark = pytest.mark.redis

FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
ACCOUNT = "acct-fast"
WAIT = 10.0


def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    return polling.eventually(condition, timeout)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def auth(ks: Keystile, token: str, status: int = 200) -> Any:
    """What a request gets: the principal (settled with ``status``) or the refusal's code."""
    try:
        principal = ks.authenticate(bearer(token))
    except AuthError as error:
        return error.code
    ks.settle(principal, status)
    return principal


async def aauth(ks: Keystile, token: str) -> Any:
    try:
        principal = await ks.authenticate_async(bearer(token))
    except AuthError as error:
        return error.code
    await ks.settle_async(principal, 200)
    return principal


class Commands:
    """Every Redis command an engine sends from now on, sync and async clients alike."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, ks: Keystile) -> None:
        self.names: list[str] = []
        # redis-py's client, and keystile's own blocking client that the request path uses.
        for sync in {id(c): c for c in (ks.redis.client, ks.redis.sync.commands)}.values():
            original = sync.execute_command

            def execute_command(*args: Any, _original: Any = original, **options: Any) -> Any:
                self.names.append(str(args[0]).upper())
                return _original(*args, **options)

            monkeypatch.setattr(sync, "execute_command", execute_command)

    def watch_async(self, monkeypatch: pytest.MonkeyPatch, ks: Keystile) -> None:
        """Inside the running loop: its pipelined client belongs to the loop."""
        client = ks.redis.aio.client
        original = client.execute_command

        async def execute_command(*args: Any) -> Any:
            self.names.append(str(args[0]).upper())
            return await original(*args)

        monkeypatch.setattr(client, "execute_command", execute_command)


@pytest.fixture
def engines(
    redis_settings: dict[str, Any], shared_store: KeyStore
) -> Iterator[Callable[..., Keystile]]:
    """``engines(**settings)``: a fast-mode engine ("process"), its channel healthy."""
    made: list[Keystile] = []

    def make(**extra: Any) -> Keystile:
        settings = {
            **redis_settings,
            "consistency": "fast",
            "store": "memory://",
            "argon2": FAST_ARGON2,
            **extra,
        }
        ks = Keystile(settings, store=shared_store)
        made.append(ks)
        assert ks.ready(WAIT), "the invalidation channel never became healthy"
        return ks

    yield make
    for ks in made:
        ks.close()


def pages_in_redis(client: redis.Redis, ks: Keystile, period: str) -> int:
    return int(client.hget(ks.redis_keys.usage(ACCOUNT, period, "live"), "pages") or 0)


def stored_pages(ks: Keystile, period: str) -> int:
    return sum(r.pages for r in ks.store.usage(ACCOUNT, [period]) if r.environment == "live")


def period_of(ks: Keystile) -> str:
    return ks.admission.period_at(ks.clock()).label


# ------------------------------------------------------------------------ zero round trips


def test_a_warm_key_costs_no_redis_command(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines(monthly_page_limit=10_000)
    token = ks.keys.create(ACCOUNT, "k").token
    for _ in range(20):  # verifies once, then takes leases until the block covers the rest
        assert auth(ks, token) != "BILLING_001"
    commands = Commands(monkeypatch, ks)
    for _ in range(10):
        assert auth(ks, token).account_id == ACCOUNT
    assert commands.names == []


@pytest.mark.anyio
async def test_a_warm_key_costs_no_redis_command_async(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines()
    token = ks.keys.create(ACCOUNT, "k").token
    for _ in range(20):
        await aauth(ks, token)
    commands = Commands(monkeypatch, ks)
    commands.watch_async(monkeypatch, ks)
    results = await asyncio.gather(*(aauth(ks, token) for _ in range(10)))
    assert {r.account_id for r in results} == {ACCOUNT}
    assert commands.names == []
    await ks.aclose()


def test_an_idempotency_key_still_goes_to_redis(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines()
    token = ks.keys.create(ACCOUNT, "k").token
    auth(ks, token)
    ks.settle(ks.authenticate([*bearer(token), ("idempotency-key", "order-0")]), 200)
    commands = Commands(monkeypatch, ks)  # the meter script is loaded by now
    headers = [*bearer(token), ("idempotency-key", "order-1")]
    for _ in range(2):
        ks.settle(ks.authenticate(headers, "POST", "/orders"), 200)
    assert commands.names == ["EVALSHA", "EVALSHA"]
    ks.flush()
    assert ks.quotas.usage(ACCOUNT).pages == 3  # one plain request, two idempotent ones


# ------------------------------------------------------------------------ invalidation


def test_a_revoke_reaches_another_engines_cache_through_the_channel(
    engines: Callable[..., Keystile],
) -> None:
    a, b = engines(), engines()
    key = a.keys.create(ACCOUNT, "k")
    warm_ticket(b, key.token)
    digest = b.digest(_parsed(key.token))
    assert b.local.get(digest) is not None  # warm in b
    a.keys.revoke(key.key_id)
    # The message drops b's entry; b never compared a stamp with Redis.
    assert eventually(lambda: b.local.get(digest) is None)
    assert auth(b, key.token) == "AUTH_003"


def warm_ticket(engine: Keystile, token: str) -> None:
    """Requests until the key's warm requests reuse a ticket (tests/test_warm_tickets.py):
    what follows checks that a change reaches that too."""
    for _ in range(10):  # (the first few take leases; the credential is remembered after)
        assert auth(engine, token).account_id == ACCOUNT
        if len(engine.admission.tickets):
            break
    assert len(engine.admission.tickets) == 1


def _parsed(token: str) -> Any:
    from keystile._core.credentials import read_credentials

    return read_credentials(bearer(token), "sk", ("live", "test")).token


def test_with_the_channel_down_every_request_is_checked_as_in_strict_mode(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = engines(), engines()
    key = a.keys.create(ACCOUNT, "k")
    warm_ticket(b, key.token)
    assert b.listener is not None
    b.listener.stop()  # the channel is gone: b can no longer trust its cache
    assert not b.verifier.trusts_local()
    commands = Commands(monkeypatch, b)
    assert auth(b, key.token).account_id == ACCOUNT
    assert commands.names == ["EVALSHA"]  # the meter script, with the state stamp compared
    # A change b cannot hear is still refused on b's very next request.
    a.keys.update(key.key_id, permissions=["other"])
    a.keys.revoke(key.key_id)
    assert auth(b, key.token) == "AUTH_003"


def test_a_change_missed_while_the_channel_was_cut_is_covered_by_the_resync(
    redis_settings: dict[str, Any], shared_store: KeyStore, engines: Callable[..., Keystile]
) -> None:
    proxy = Proxy(redis_settings["redis_url"])
    try:
        a = engines()
        b = engines(redis_url=proxy.url)
        key = a.keys.create(ACCOUNT, "k")
        warm_ticket(b, key.token)
        assert b.listener is not None
        proxy.mode = "refuse"
        proxy.cut()
        assert eventually(lambda: not b.listener.healthy)  # type: ignore[union-attr]
        a.keys.revoke(key.key_id)  # published while b cannot hear it
        proxy.mode = "pass"
        assert b.ready(WAIT)  # resubscribed, and resynced before trusting its cache again
        assert auth(b, key.token) == "AUTH_003"
    finally:
        proxy.close()


# ------------------------------------------------------------------------ leases


def test_leases_never_overshoot_across_three_engines(
    engines: Callable[..., Keystile], redis_client: redis.Redis
) -> None:
    trio = [engines(monthly_page_limit=300) for _ in range(3)]
    token = trio[0].keys.create(ACCOUNT, "k").token
    period = period_of(trio[0])

    async def flood() -> list[Any]:
        calls = [aauth(trio[i % 3], token) for i in range(1000)]
        results = await asyncio.gather(*calls)
        for ks in trio:
            await ks.aclose()
        return results

    results = asyncio.run(flood())
    admitted = [r for r in results if not isinstance(r, str)]
    refused = [r for r in results if isinstance(r, str)]
    assert len(admitted) == 300
    assert set(refused) == {"BILLING_001"} and len(refused) == 700
    for ks in trio:
        ks.flush()  # spent pages reported, unused ones given back
    assert pages_in_redis(redis_client, trio[0], period) == 300
    assert stored_pages(trio[0], period) == 300
    leases = trio[0].redis_keys.leases(ACCOUNT, period, "live")
    assert not redis_client.exists(leases)


@pytest.mark.parametrize("account_rate", [None, "1000/h"])
def test_a_burst_of_first_requests_far_under_the_limits_is_admitted_whole(
    engines: Callable[..., Keystile], account_rate: str | None
) -> None:
    """600 requests at once, 4 new keys, 3 engines, limits of 10,000 pages and 1,000 an hour:
    all admitted. (Each grant once doubled the next block: an engine that took 150 small
    grants then leased all 10,000 pages, and the others refused with BILLING_001.)"""
    trio = [engines(monthly_page_limit=10_000) for _ in range(3)]
    for attempt in range(4):  # the race does not always come out the same way
        account = f"{ACCOUNT}-{attempt}"
        if account_rate is not None:
            trio[0].quotas.set_rate_limit(account, account_rate)
        tokens = [trio[0].keys.create(account, f"k{i}").token for i in range(4)]

        async def burst(tokens: list[str] = tokens) -> list[Any]:
            calls = [aauth(trio[i % 3], tokens[i % 4]) for i in range(600)]
            return await asyncio.gather(*calls)

        refused = [r for r in asyncio.run(burst()) if isinstance(r, str)]
        assert refused == [], (attempt, sorted(set(refused)), len(refused))


def test_unused_lease_pages_go_back_at_shutdown(
    engines: Callable[..., Keystile], redis_client: redis.Redis
) -> None:
    ks = engines(monthly_page_limit=10_000)
    token = ks.keys.create(ACCOUNT, "k").token
    for _ in range(40):
        auth(ks, token)
    period = period_of(ks)
    leased = pages_in_redis(redis_client, ks, period)
    assert leased > 40  # blocks grow ahead of the spending
    asyncio.run(ks.aclose())  # as at an ASGI app's shutdown
    assert pages_in_redis(redis_client, ks, period) == 40
    assert stored_pages(ks, period) == 40


def test_a_refund_goes_back_into_the_lease(
    engines: Callable[..., Keystile], redis_client: redis.Redis
) -> None:
    ks = engines(monthly_page_limit=10_000)
    token = ks.keys.create(ACCOUNT, "k").token
    for _ in range(10):
        auth(ks, token)
    auth(ks, token, status=500)  # refunded
    asyncio.run(ks.aclose())
    period = period_of(ks)
    assert pages_in_redis(redis_client, ks, period) == 10
    assert stored_pages(ks, period) == 10


def test_a_crashed_engine_loses_at_most_its_lease_and_never_against_the_customer(
    engines: Callable[..., Keystile], redis_client: redis.Redis
) -> None:
    limit = 100
    crashed = engines(monthly_page_limit=limit, usage_flush_interval=0.2)
    crashed.batches.stop()  # the crash: from here on, no flush and no lease report, ever
    crashed.flush = lambda: None  # type: ignore[method-assign]
    engine._UNCLOSED.discard(crashed)
    token = crashed.keys.create(ACCOUNT, "k").token
    served_by_crashed = sum(not isinstance(auth(crashed, token), str) for _ in range(30))
    assert served_by_crashed == 30
    period = period_of(crashed)
    held = pages_in_redis(redis_client, crashed, period)  # what its lease took: spent or not
    assert held > served_by_crashed
    if crashed.listener is not None:
        crashed.listener.stop()

    survivor = engines(monthly_page_limit=limit, usage_flush_interval=0.2)
    served_by_survivor = 0
    holder = crashed.admission.leases.holder  # type: ignore[union-attr]
    leases = survivor.redis_keys.leases(ACCOUNT, period, "live")
    while not isinstance(auth(survivor, token), str):  # the crashed lease's pages stay reserved
        served_by_survivor += 1
    assert served_by_survivor < limit - served_by_crashed
    # Time passes (rewritten, not waited for: a lease outlives its holder by 30 s at least).
    field = redis_client.hget(leases, holder)
    assert field is not None
    out, _, born = (field.decode() if isinstance(field, bytes) else str(field)).split(":")
    redis_client.hset(leases, holder, f"{out}:0:{born}")

    def drain() -> bool:
        nonlocal served_by_survivor
        while not isinstance(auth(survivor, token), str):
            served_by_survivor += 1
        return not redis_client.hexists(leases, holder)

    # Once the crashed lease has expired, an acquisition sweeps it.
    assert eventually(drain)
    drain()
    survivor.flush()
    charged = pages_in_redis(redis_client, survivor, period)
    # Never charged for pages nobody served, nor past the limit.
    assert charged == served_by_survivor == limit
    # What the crash lost went to the customer: served beyond the limit, by at most the lease.
    total = served_by_crashed + served_by_survivor
    assert limit < total <= limit + held


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_on_a_cluster_the_channel_is_sharded_and_a_revoke_arrives(
    redis_cluster: Any, shared_store: KeyStore, kind: str
) -> None:
    settings = {
        "redis_url": redis_cluster.url,
        "secret": "test-server-secret-0123456789",
        "redis_prefix": f"fast-{uuid.uuid4().hex[:8]}",
        "consistency": "fast",
        "store": "memory://",
        "argon2": FAST_ARGON2,
    }
    a, b = Keystile(settings, store=shared_store), Keystile(settings, store=shared_store)
    try:
        assert a.ready(WAIT) and b.ready(WAIT)
        assert a.redis.sharded  # Redis 7: SPUBLISH to the primary owning the channel
        owner = redis_cluster.node_client(redis_cluster.master_of(a.redis.channel)[1])
        subscribed = owner.execute_command("PUBSUB", "SHARDNUMSUB", a.redis.channel)
        owner.close()
        assert subscribed[1] == 2  # both listeners, on the channel's own primary
        key = a.keys.create(ACCOUNT, "k")
        if kind == "sync":
            assert auth(b, key.token).account_id == ACCOUNT
        else:
            assert asyncio.run(aauth(b, key.token)).account_id == ACCOUNT
        digest = b.digest(_parsed(key.token))
        assert b.local.get(digest) is not None
        a.keys.revoke(key.key_id)
        assert eventually(lambda: b.local.get(digest) is None)  # the message, not a check
        assert auth(b, key.token) == "AUTH_003"
    finally:
        a.close()
        b.close()
