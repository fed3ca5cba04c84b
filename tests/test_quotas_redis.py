"""Monthly page quotas on a real Redis: atomic across engines, one call per warm request,
counters rebuilt from the store, and the backend-error policies.

Several engines sharing one store object and one Redis stand for several processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pytest
import redis

from keystile import AuthError, Keystile, Principal
from keystile._core.errors import BACKEND_UNAVAILABLE, EXPIRED_API_KEY, QUOTA_EXCEEDED, render
from keystile._core.metering import ThresholdEvent
from keystile.stores.base import KeyStore
from keystile.stores.sqlite import SQLiteStore

from .conftest import FAST_ARGON2, TOPOLOGIES, Clock, topology_settings
from .services import free_port

pytestmark = pytest.mark.redis

UTC = timezone.utc
ACCOUNT = "acct_1"
PERIOD = "2026-09"  # the clock fixture starts on 2026-09-21

Engines = Callable[..., list[Keystile]]


class SharedStore:
    """One store object for several engines; the fixture closes it once, at the end."""

    def __init__(self, inner: KeyStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def close(self) -> None:
        pass


@pytest.fixture
def store() -> Iterator[SQLiteStore]:
    inner = SQLiteStore(":memory:")
    yield inner
    inner.close()


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> str:
    """The suite runs on one server, a Redis Cluster and a Sentinel-watched primary."""
    name: str = request.param
    return name


@pytest.fixture
def redis_settings(request: pytest.FixtureRequest, topology: str) -> dict[str, Any]:
    return topology_settings(request, topology)


@pytest.fixture
def redis_client(request: pytest.FixtureRequest, topology: str) -> Iterator[Any]:
    """A client (bytes replies) of the topology's Redis, for looking at counters."""
    if topology == "single":
        client: Any = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    else:
        client = request.getfixturevalue(f"redis_{topology}").client(decode_responses=False)
    yield client
    client.close()


@pytest.fixture
def redis_flush(request: pytest.FixtureRequest, topology: str) -> Callable[[], None]:
    """Redis loses its data (on a Cluster or Sentinel, private: FLUSHALL)."""
    if topology == "single":
        flush: Callable[[], None] = request.getfixturevalue("redis_flush")
        return flush
    return request.getfixturevalue(f"redis_{topology}").flushall  # type: ignore[no-any-return]


@pytest.fixture
def engines(redis_settings: dict[str, Any], clock: Clock, store: SQLiteStore) -> Iterator[Engines]:
    """``engines(n, **settings)``: n engines on this test's Redis prefix and one shared store."""
    made: list[Keystile] = []

    def make(n: int = 1, **settings: Any) -> list[Keystile]:
        config = {"store": "memory://", "argon2": FAST_ARGON2, **redis_settings, **settings}
        out = [Keystile(config, clock=clock, store=SharedStore(store)) for _ in range(n)]  # type: ignore[arg-type]
        made.extend(out)
        return out

    yield make
    for engine in made:
        engine.close()


def bearer(token: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}"), *extra]


def hit(
    ks: Keystile,
    token: str,
    status: int | None = 200,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    charge: int | None = None,
) -> Principal:
    principal = ks.authenticate(bearer(token, *headers))
    if charge is not None:
        principal.charge(charge)
    ks.settle(principal, status)
    return principal


def refused(ks: Keystile, token: str, spec: Any = QUOTA_EXCEEDED) -> AuthError:
    with pytest.raises(AuthError) as info:
        hit(ks, token)
    assert info.value.spec is spec
    return info.value


def new_key(ks: Keystile, account: str = ACCOUNT, **kwargs: Any) -> str:
    return ks.keys.create(account, "key", **kwargs).token


def counter(
    client: redis.Redis, ks: Keystile, env: str = "live", period: str = PERIOD
) -> dict[str, int]:
    raw = client.hgetall(ks.redis_keys.usage(ACCOUNT, period, env))
    return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]


def stored_pages(ks: Keystile, period: str = PERIOD, env: str = "live") -> int:
    return sum(r.pages for r in ks.store.usage(ACCOUNT, [period]) if r.environment == env)


def stored_requests(ks: Keystile, period: str = PERIOD) -> int:
    return sum(r.requests for r in ks.store.usage(ACCOUNT, [period]) if r.environment == "live")


def sync_clients(ks: Keystile) -> list[Any]:
    """The engine's blocking clients: redis-py's, and on one server keystile's own, which the
    request path uses."""
    return list({id(c): c for c in (ks.redis.client, ks.redis.sync.commands)}.values())


def count_calls(ks: Keystile) -> list[str]:
    """Record the command name of every blocking round trip the engine makes from now on."""
    calls: list[str] = []
    for client in sync_clients(ks):
        original = client.execute_command

        def counting(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(str(args[0]))
            return _original(*args, **kwargs)

        client.execute_command = counting
    return calls


def count_async_calls(client: Any) -> list[str]:
    calls: list[str] = []
    original = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return await original(*args, **kwargs)

    client.execute_command = counting
    return calls


class Outage:
    """Make one engine's (sync) Redis client fail as if the server were unreachable."""

    def __init__(self, ks: Keystile) -> None:
        self.clients = sync_clients(ks)

    def __enter__(self) -> Outage:
        def down(*args: Any, **kwargs: Any) -> Any:
            raise redis.ConnectionError("Redis is down (simulated)")

        for client in self.clients:
            client.execute_command = down
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self.clients:
            del client.execute_command


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


# -- atomicity across engines -----------------------------------------------------------------


def test_threads_on_four_engines_admit_exactly_what_is_left(
    engines: Engines, redis_client: redis.Redis
) -> None:
    events: list[ThresholdEvent] = []
    fleet = engines(4, monthly_page_limit=150, redis_timeout=5, on_quota_threshold=events.append)
    token = new_key(fleet[0])
    for ks in fleet:  # every engine warm
        hit(ks, token)
    for _ in range(46):
        hit(fleet[0], token)
    assert counter(redis_client, fleet[0])["pages"] == 50  # 100 pages left
    assert [e.threshold for e in events] == []
    barrier = threading.Barrier(200)

    def one(i: int) -> bool:
        ks = fleet[i % 4]
        barrier.wait()
        try:
            principal = ks.authenticate(bearer(token))
        except AuthError as error:
            assert error.spec is QUOTA_EXCEEDED
            return False
        ks.settle(principal, 200)
        return True

    with ThreadPoolExecutor(max_workers=200) as pool:
        admitted = sum(pool.map(one, range(200)))
    assert admitted == 100
    usage = counter(redis_client, fleet[0])
    assert usage["pages"] == 150 and usage["requests"] == 150
    assert sorted(e.threshold for e in events) == [0.8, 1.0]  # once, across all engines
    for ks in fleet:
        refused(ks, token)
        ks.flush()
    assert stored_pages(fleet[0]) == 150
    assert fleet[3].quotas.usage(ACCOUNT).pages == 150


def test_cold_threads_on_four_engines_admit_exactly_the_limit(
    engines: Engines, redis_client: redis.Redis
) -> None:
    """No engine has seen the key, the limit or the counter: seeding races too."""
    fleet = engines(4, monthly_page_limit=100, redis_timeout=5)
    token = new_key(fleet[0])
    barrier = threading.Barrier(200)

    def one(i: int) -> bool:
        barrier.wait()
        try:
            hit(fleet[i % 4], token)
        except AuthError as error:
            assert error.spec is QUOTA_EXCEEDED
            return False
        return True

    with ThreadPoolExecutor(max_workers=200) as pool:
        assert sum(pool.map(one, range(200))) == 100
    assert counter(redis_client, fleet[0])["pages"] == 100


def test_async_tasks_on_four_engines_admit_exactly_what_is_left(
    engines: Engines, redis_client: redis.Redis
) -> None:
    fleet = engines(4, monthly_page_limit=100, redis_timeout=5)
    token = new_key(fleet[0])

    async def one(ks: Keystile) -> bool:
        try:
            principal = await ks.authenticate_async(bearer(token))
        except AuthError as error:
            assert error.spec is QUOTA_EXCEEDED
            return False
        await ks.settle_async(principal, 200)
        return True

    async def main() -> list[bool]:
        try:
            for ks in fleet:  # warm, then refunded: 100 pages left
                principal = await ks.authenticate_async(bearer(token))
                await ks.settle_async(principal, 500)
            return await asyncio.gather(*(one(fleet[i % 4]) for i in range(200)))
        finally:
            for ks in fleet:
                await ks.aclose()

    assert sum(asyncio.run(main())) == 100
    usage = counter(redis_client, fleet[0])
    assert usage["pages"] == 100
    assert usage["requests"] == 104  # the refunded warm-ups were requests too


def test_cold_async_tasks_on_four_engines_admit_exactly_the_limit(
    engines: Engines, redis_client: redis.Redis
) -> None:
    fleet = engines(4, monthly_page_limit=100, redis_timeout=5)
    token = new_key(fleet[0])

    async def one(ks: Keystile) -> bool:
        try:
            principal = await ks.authenticate_async(bearer(token))
        except AuthError as error:
            assert error.spec is QUOTA_EXCEEDED
            return False
        await ks.settle_async(principal, 200)
        return True

    async def main() -> list[bool]:
        try:
            return await asyncio.gather(*(one(fleet[i % 4]) for i in range(200)))
        finally:
            for ks in fleet:
                await ks.aclose()

    assert sum(asyncio.run(main())) == 100
    assert counter(redis_client, fleet[0])["pages"] == 100


def test_idempotency_across_engines(engines: Engines, redis_client: redis.Redis) -> None:
    a, b = engines(2, monthly_page_limit=10)
    token = new_key(a)
    hit(a, token, headers=(("idempotency-key", "order-1"),))
    replay = hit(b, token, headers=(("idempotency-key", "order-1"),))
    assert replay.meter is not None and replay.meter.replay
    assert counter(redis_client, a)["pages"] == 1
    hit(a, token, status=503, headers=(("idempotency-key", "order-2"),))  # refunded, forgotten
    retry = hit(b, token, headers=(("idempotency-key", "order-2"),))
    assert retry.meter is not None and not retry.meter.replay
    assert counter(redis_client, a)["pages"] == 2


def test_idempotency_keys_are_per_account(engines: Engines) -> None:
    (ks,) = engines(1, monthly_page_limit=10)
    mine, theirs = new_key(ks), new_key(ks, "acct_2")
    hit(ks, mine, headers=(("idempotency-key", "same"),))
    other = hit(ks, theirs, headers=(("idempotency-key", "same"),))
    assert other.meter is not None and not other.meter.replay


# -- limits across engines --------------------------------------------------------------------


def test_limit_change_reaches_an_engine_that_has_not_read_the_limit(
    engines: Engines, redis_client: redis.Redis
) -> None:
    a, b = engines(2, monthly_page_limit=100)
    token = new_key(a)
    hit(a, token)
    hit(a, token)
    a.quotas.set_limit(ACCOUNT, 2)  # deletes the limit Redis holds
    refused(b, token)
    refused(a, token)
    b.quotas.set_limit(ACCOUNT, 3)
    hit(a, token)
    refused(a, token)


def test_limit_change_reaches_every_engine_without_a_local_limit_cache(
    engines: Engines,
) -> None:
    a, b = engines(2, monthly_page_limit=100, local_cache_ttl=0)
    token = new_key(a)
    hit(b, token)  # b reads the limit from the store and seeds Redis with it
    hit(a, token)
    a.quotas.set_limit(ACCOUNT, 2)
    refused(b, token)
    refused(a, token)


def test_limit_change_is_immediate_across_engines(engines: Engines) -> None:
    a, b = engines(2, monthly_page_limit=100)
    token = new_key(a)
    hit(b, token)  # b seeds Redis with the limit it read from the store (no row: 100)
    hit(a, token)
    a.quotas.set_limit(ACCOUNT, 2)  # deletes the limit key; the next request re-seeds it
    with pytest.raises(AuthError) as info:
        hit(b, token)  # 2 used, limit 2
    assert info.value.spec is QUOTA_EXCEEDED
    refused(a, token)


def test_plan_change_across_engines(engines: Engines) -> None:
    a, b = engines(2, monthly_page_limit=100, plans={"tiny": 1}, local_cache_ttl=0)
    token = new_key(a)
    hit(b, token)
    a.quotas.set_plan(ACCOUNT, "tiny")
    refused(b, token)
    a.quotas.clear_limit(ACCOUNT)
    hit(b, token)


def test_per_key_limit(engines: Engines, redis_client: redis.Redis) -> None:
    a, b = engines(2, monthly_page_limit=100)
    token, other = new_key(a), new_key(a)
    kid = token.split("_")[2]
    record = a.store.get(kid)
    assert record is not None
    a.store.replace(dataclasses.replace(record, page_limit=2, version="v2"), record.version)
    hit(a, token)
    hit(b, token)
    error = refused(a, token)
    assert "This key's page limit of 2 pages" in error.message
    refused(b, token)
    hit(b, other)
    assert counter(redis_client, a)[f"k:{kid}:pages"] == 2
    assert counter(redis_client, a)["pages"] == 3


def test_test_keys_use_their_own_counter(engines: Engines, redis_client: redis.Redis) -> None:
    (ks,) = engines(1, monthly_page_limit=1, test_page_limit=2)
    live, test = new_key(ks), new_key(ks, environment="test")
    hit(ks, test)
    hit(ks, test)
    refused(ks, test)
    assert counter(redis_client, ks, "test")["pages"] == 2
    assert counter(redis_client, ks, "live") == {}
    hit(ks, live)
    refused(ks, live)
    assert ks.quotas.usage(ACCOUNT, environment="test").pages == 2
    assert ks.quotas.usage(ACCOUNT).pages == 1


def test_period_rollover_starts_a_new_counter(
    engines: Engines, clock: Clock, redis_client: redis.Redis
) -> None:
    clock.now = datetime(2026, 9, 30, 23, 59, 59, tzinfo=UTC).timestamp()
    (ks,) = engines(1, monthly_page_limit=1)
    token = new_key(ks)
    hit(ks, token)
    error = refused(ks, token)
    assert error.headers["retry-after"] == "1"
    clock.advance(1)
    principal = hit(ks, token)
    assert principal.quota is not None
    assert (principal.quota.period, principal.quota.used) == ("2026-10", 1)
    assert counter(redis_client, ks, period="2026-10")["pages"] == 1
    assert counter(redis_client, ks, period="2026-09")["pages"] == 1
    # kept for reports until 35 days after the period ends
    ttl = redis_client.ttl(ks.redis_keys.usage(ACCOUNT, "2026-10", "live"))
    expected = (datetime(2026, 11, 1, tzinfo=UTC).timestamp() - clock.now) + 35 * 86400
    assert abs(int(ttl) - expected) < 60  # type: ignore[arg-type]


def test_a_stale_snapshot_is_never_charged(engines: Engines, redis_client: redis.Redis) -> None:
    a, b = engines(2, monthly_page_limit=10)
    token = new_key(a)
    hit(a, token)
    b.keys.revoke("key_" + token.split("_")[2])
    refused(a, token, EXPIRED_API_KEY)
    assert counter(redis_client, a)["pages"] == 1


def test_usage_report_reads_the_live_counter(engines: Engines) -> None:
    a, b = engines(2, monthly_page_limit=10)
    token = new_key(a)
    hit(a, token, charge=3)
    hit(a, token)
    report = b.quotas.usage(ACCOUNT)  # b has nothing buffered, the store nothing yet
    assert (report.pages, report.requests, report.remaining) == (4, 2, 6)
    assert [(k.key_id, k.pages, k.requests) for k in report.keys] == [
        ("key_" + token.split("_")[2], 4, 2)
    ]
    a.flush()
    assert b.quotas.usage(ACCOUNT) == report  # no double count once it is stored


def test_each_counter_of_a_charge_moves_on_its_own(
    engines: Engines, redis_client: redis.Redis
) -> None:
    """One write sets every field a charge moves: each must go up by its own amount."""
    a, b = engines(2, monthly_page_limit=100)
    first, second = new_key(a), new_key(a)
    kid1, kid2 = first.split("_")[2], second.split("_")[2]
    hit(a, first, charge=5)
    hit(b, first)
    for _ in range(3):
        hit(b, second, charge=2)
    live = counter(redis_client, a)
    assert (live["pages"], live["requests"]) == (12, 5)
    assert (live[f"k:{kid1}:pages"], live[f"k:{kid1}:requests"]) == (6, 2)
    assert (live[f"k:{kid2}:pages"], live[f"k:{kid2}:requests"]) == (6, 3)
    assert sum(v for k, v in live.items() if k.startswith("p:")) == 12  # not yet in the store
    report = a.quotas.usage(ACCOUNT)
    assert (report.pages, report.requests, report.remaining) == (12, 5, 88)
    assert sorted((k.key_id, k.pages, k.requests) for k in report.keys) == sorted(
        [("key_" + kid1, 6, 2), ("key_" + kid2, 6, 3)]
    )


def test_threshold_fires_exactly_at_its_fraction(engines: Engines) -> None:
    """The Lua meter compares in integers too: 55 of 100 pages is exactly 55%."""
    events: list[ThresholdEvent] = []
    (ks,) = engines(
        1, monthly_page_limit=100, quota_thresholds=[0.55, 0.8], on_quota_threshold=events.append
    )
    token = new_key(ks)
    principal = ks.authenticate(bearer(token))
    ks.reserve(principal, 55)
    assert [(e.threshold, e.used) for e in events] == [(0.55, 55)]
    ks.settle(principal, 200)
    principal = ks.authenticate(bearer(token))
    ks.reserve(principal, 25)  # 80
    assert [e.threshold for e in events] == [0.55, 0.8]


# -- Redis round trips ------------------------------------------------------------------------


def test_a_warm_request_costs_one_redis_call(engines: Engines) -> None:
    (ks,) = engines(1, monthly_page_limit=100)
    token = new_key(ks)
    hit(ks, token)  # cold: store, argon2, adopt, seed the limit and the counter
    hit(ks, token, status=500)  # warm the settle script too (Redis may not have loaded it)
    calls = count_calls(ks)

    principal = ks.authenticate(bearer(token))
    assert calls == ["EVALSHA"]
    ks.settle(principal, 200)  # the reservation was right: no call
    assert calls == ["EVALSHA"]

    calls.clear()
    principal = ks.authenticate(bearer(token))
    ks.settle(principal, 500)  # a refund: one call
    assert calls == ["EVALSHA", "EVALSHA"]

    calls.clear()
    principal = ks.authenticate(bearer(token))
    principal.charge(5)  # a different real cost: one call
    ks.settle(principal, 200)
    assert calls == ["EVALSHA", "EVALSHA"]

    calls.clear()
    principal = ks.authenticate(bearer(token, ("idempotency-key", "k1")))
    ks.settle(principal, 201)
    assert calls == ["EVALSHA"]

    calls.clear()
    principal = ks.authenticate(bearer(token, ("idempotency-key", "k2")))
    ks.settle(principal, 500)  # refund and forget the key: still one call
    assert calls == ["EVALSHA", "EVALSHA"]


def test_a_refused_warm_request_costs_one_redis_call(engines: Engines) -> None:
    (ks,) = engines(1, monthly_page_limit=1)
    token = new_key(ks)
    hit(ks, token)
    calls = count_calls(ks)
    refused(ks, token)
    assert calls == ["EVALSHA"]


def test_crossing_a_threshold_costs_no_extra_call(engines: Engines) -> None:
    events: list[ThresholdEvent] = []
    (ks,) = engines(1, monthly_page_limit=5, on_quota_threshold=events.append)
    token = new_key(ks)
    for _ in range(3):
        hit(ks, token)
    calls = count_calls(ks)
    hit(ks, token)  # 4 of 5: the 80% mark
    assert calls == ["EVALSHA"]
    assert [e.threshold for e in events] == [0.8]


def test_a_second_engine_spends_one_more_call_on_a_known_key(
    engines: Engines, topology: str
) -> None:
    a, b = engines(2, monthly_page_limit=100)
    token = new_key(a)
    hit(a, token)
    calls = count_calls(b)
    hit(b, token)  # the snapshot a cached in Redis (fetch_known script), then the meter
    # On a Cluster the key-id set and the snapshot live in different slots: two commands.
    known = ["SMISMEMBER", "GET"] if topology == "cluster" else ["EVALSHA"]
    assert calls == [*known, "EVALSHA"]
    calls.clear()
    hit(b, token)
    assert calls == ["EVALSHA"]


def test_a_warm_async_request_costs_one_redis_call(engines: Engines) -> None:
    (ks,) = engines(1, monthly_page_limit=100)
    token = new_key(ks)

    async def main() -> None:
        try:
            principal = await ks.authenticate_async(bearer(token))  # cold
            await ks.settle_async(principal, 200)
            principal = await ks.authenticate_async(bearer(token))
            await ks.settle_async(principal, 500)  # the settle script loaded too
            calls = count_async_calls(ks.redis.aio.client)

            principal = await ks.authenticate_async(bearer(token))
            assert calls == ["EVALSHA"]
            await ks.settle_async(principal, 200)
            assert calls == ["EVALSHA"]

            calls.clear()
            principal = await ks.authenticate_async(bearer(token))
            await ks.settle_async(principal, 500)
            assert calls == ["EVALSHA", "EVALSHA"]

            calls.clear()
            principal = await ks.authenticate_async(bearer(token))
            principal.charge(0)
            await ks.settle_async(principal, 200)
            assert calls == ["EVALSHA", "EVALSHA"]
        finally:
            await ks.aclose()

    asyncio.run(main())
    assert ks.quotas.usage(ACCOUNT).pages == 2  # cold 1 + warm 1; refunded; charged 0


# -- lost counters: rebuilt from the store ----------------------------------------------------


def test_a_lost_counter_is_rebuilt_from_the_store_and_the_buffer(
    engines: Engines, redis_client: redis.Redis, redis_flush: Callable[[], None]
) -> None:
    """One process: nothing is lost. The store has what was flushed, and the rebuild adds
    this process's unflushed charges (here 2 pages charged after the flush)."""
    (ks,) = engines(1, monthly_page_limit=10)
    token = new_key(ks)
    for _ in range(3):
        hit(ks, token)
    hit(ks, token, charge=1)
    ks.flush()
    assert stored_pages(ks) == 4
    hit(ks, token)
    hit(ks, token)  # 6 used, 2 of them not in the store yet
    redis_flush()  # Redis loses everything
    assert counter(redis_client, ks) == {}
    principal = hit(ks, token)
    assert principal.quota is not None and principal.quota.used == 7  # not 1
    assert counter(redis_client, ks)["pages"] == 7
    for _ in range(3):
        hit(ks, token)
    refused(ks, token)
    ks.flush()
    assert stored_pages(ks) == 10


def test_a_lost_counter_keeps_per_key_usage(
    engines: Engines, store: SQLiteStore, redis_flush: Callable[[], None]
) -> None:
    (ks,) = engines(1, monthly_page_limit=100)
    token = new_key(ks)
    record = store.get(token.split("_")[2])
    assert record is not None
    store.replace(dataclasses.replace(record, page_limit=3, version="v2"), record.version)
    hit(ks, token)
    hit(ks, token)
    ks.flush()
    redis_flush()
    hit(ks, token)
    error = refused(ks, token)
    assert "This key's page limit of 3 pages" in error.message


def test_a_rebuilt_counter_gets_other_processes_unflushed_charges_back_at_their_flush(
    engines: Engines, redis_client: redis.Redis, redis_flush: Callable[[], None]
) -> None:
    """Documented: a rebuilt counter has the store plus the rebuilding process's buffer.
    Charges another process has not flushed yet are missing from it until that process's
    next flush adds them back (the loss window); then the counter and the store agree."""
    a, b = engines(2, monthly_page_limit=100)
    token = new_key(a)
    for _ in range(3):
        hit(a, token)
    a.flush()
    hit(b, token)
    hit(b, token)  # b's 2 pages are only in b's buffer
    hit(a, token)  # and a's fourth only in a's
    redis_flush()
    principal = hit(a, token)
    assert principal.quota is not None
    assert principal.quota.used == 3 + 1 + 1  # store + a's buffer + this one; b's 2 missing
    principal = hit(b, token)  # b finds the counter rebuilt and does not rebuild it again
    assert principal.quota is not None and principal.quota.used == 6
    assert counter(redis_client, a)["pages"] == 6  # the window: b's 2 unflushed are missing
    a.flush()
    b.flush()  # b's flush adds them back
    assert stored_pages(a) == 8  # the store has every charge
    assert counter(redis_client, a)["pages"] == 8


def test_a_rebuild_restores_threshold_marks(
    engines: Engines, redis_flush: Callable[[], None]
) -> None:
    events: list[ThresholdEvent] = []
    (ks,) = engines(1, monthly_page_limit=10, on_quota_threshold=events.append)
    token = new_key(ks)
    for _ in range(8):
        hit(ks, token)
    assert [e.threshold for e in events] == [0.8]
    redis_flush()  # nothing flushed yet: rebuilt from this process's buffer
    hit(ks, token)  # 9: the 80% mark is set again by the rebuild, not fired
    assert [e.threshold for e in events] == [0.8]
    ks.flush()
    redis_flush()  # now rebuilt from the store
    hit(ks, token)  # 10
    assert [e.threshold for e in events] == [0.8, 1.0]
    ks.flush()
    redis_flush()
    refused(ks, token)
    assert [e.threshold for e in events] == [0.8, 1.0]


def test_a_rebuild_across_engines_does_not_fire_thresholds_again(
    engines: Engines, redis_flush: Callable[[], None]
) -> None:
    events: list[ThresholdEvent] = []
    a, b = engines(2, monthly_page_limit=10, on_quota_threshold=events.append)
    token = new_key(a)
    for _ in range(9):
        hit(a, token)
    a.flush()
    redis_flush()
    hit(b, token)
    assert [e.threshold for e in events] == [0.8, 1.0]


# -- backend errors ---------------------------------------------------------------------------


def test_fail_closed_refuses_when_redis_is_unreachable(
    engines: Engines, store: SQLiteStore
) -> None:
    (ks,) = engines(1, monthly_page_limit=10, redis_url=closed_port_url())
    token = new_key(ks)
    error = refused(ks, token, BACKEND_UNAVAILABLE)
    assert error.code == "SVC_001" and error.status == 503
    rendered = render(error)
    assert rendered.status == 503 and ("retry-after", "1") in rendered.headers
    ks.flush()
    assert store.usage(ACCOUNT, [PERIOD]) == []


def test_fail_closed_refuses_a_warm_key_when_redis_goes_down(
    engines: Engines, redis_client: redis.Redis
) -> None:
    (ks,) = engines(1, monthly_page_limit=10)
    token = new_key(ks)
    hit(ks, token)
    with Outage(ks):
        refused(ks, token, BACKEND_UNAVAILABLE)
    hit(ks, token)
    ks.flush()  # the refused request's counter is rebuilt from the store: it never counted
    assert stored_pages(ks) == 2
    assert hit(ks, token).quota.used == 3  # type: ignore[union-attr]
    assert counter(redis_client, ks)["pages"] == 3


def test_a_refund_while_redis_is_down_reaches_redis_later(
    engines: Engines, redis_client: redis.Redis
) -> None:
    (ks,) = engines(1, monthly_page_limit=10)
    token = new_key(ks)
    hit(ks, token)
    principal = ks.authenticate(bearer(token))
    assert counter(redis_client, ks)["pages"] == 2
    with Outage(ks):
        ks.settle(principal, 500)  # never raises; the store has it
    assert counter(redis_client, ks)["pages"] == 2
    ks.flush()  # Redis answers again: the refund is sent again
    assert counter(redis_client, ks)["pages"] == 1
    assert stored_pages(ks) == 1
    assert hit(ks, token).quota.used == 2  # type: ignore[union-attr]
    assert counter(redis_client, ks)["pages"] == 2


def test_degrade_admits_when_redis_is_unreachable_and_records_the_usage(
    engines: Engines, store: SQLiteStore
) -> None:
    (ks,) = engines(
        1, monthly_page_limit=10, redis_url=closed_port_url(), on_backend_error="degrade"
    )
    token = new_key(ks)
    principal = hit(ks, token)  # a cold key: verified against the store
    assert principal.meter is not None and principal.meter.reserved == 1
    hit(ks, token, charge=3)
    hit(ks, token, status=500)
    ks.flush()
    assert stored_pages(ks) == 4  # recorded in the store
    assert stored_requests(ks) == 3
    # Redis is still unreachable: the charges wait to be resolved in its counter
    assert (ACCOUNT, PERIOD, "live") in ks.admission.resends.counters()


def test_degrade_admits_async_when_redis_is_unreachable(engines: Engines) -> None:
    (ks,) = engines(
        1, monthly_page_limit=10, redis_url=closed_port_url(), on_backend_error="degrade"
    )
    token = new_key(ks)

    async def main() -> None:
        try:
            principal = await ks.authenticate_async(bearer(token))
            await ks.settle_async(principal, 200)
        finally:
            await ks.aclose()

    asyncio.run(main())
    ks.flush()
    assert stored_pages(ks) == 1


def test_degraded_charges_are_reconciled_into_redis(
    engines: Engines, redis_client: redis.Redis
) -> None:
    (ks,) = engines(1, monthly_page_limit=10, on_backend_error="degrade")
    token = new_key(ks)
    hit(ks, token)
    hit(ks, token)
    with Outage(ks):
        for _ in range(2):
            principal = hit(ks, token)
            assert principal.meter is not None and not principal.meter.replay
        hit(ks, token, charge=3)
    assert counter(redis_client, ks)["pages"] == 2
    ks.flush()  # Redis is back: each charge it never saw is made, once
    assert len(ks.admission.resends) == 0
    assert counter(redis_client, ks)["pages"] == stored_pages(ks) == 7
    principal = hit(ks, token)
    assert principal.quota is not None and principal.quota.used == 8
    ks.flush()  # reconciled once only
    assert counter(redis_client, ks)["pages"] == 8
    assert stored_pages(ks) == 8


def test_reconciliation_waits_while_redis_stays_down(
    engines: Engines, redis_client: redis.Redis
) -> None:
    (ks,) = engines(1, monthly_page_limit=10, on_backend_error="degrade")
    token = new_key(ks)
    hit(ks, token)
    with Outage(ks):
        hit(ks, token)
        ks.flush()  # the store gets it, Redis can't
        assert stored_pages(ks) == 2
    assert (ACCOUNT, PERIOD, "live") in ks.admission.resends.counters()
    ks.flush()
    assert len(ks.admission.resends) == 0
    assert hit(ks, token).quota.used == 3  # type: ignore[union-attr]
    assert counter(redis_client, ks)["pages"] == 3


def test_degraded_requests_are_reconciled_too(engines: Engines, redis_client: redis.Redis) -> None:
    (ks,) = engines(1, monthly_page_limit=10, on_backend_error="degrade")
    token = new_key(ks)
    hit(ks, token)
    with Outage(ks):
        hit(ks, token)
        hit(ks, token)
    ks.flush()
    assert stored_requests(ks) == 3
    hit(ks, token)
    assert counter(redis_client, ks)["requests"] == 4
    assert ks.quotas.usage(ACCOUNT).requests == 4


def test_degraded_charges_are_not_counted_twice_after_redis_lost_its_data(
    engines: Engines, redis_client: redis.Redis, redis_flush: Callable[[], None]
) -> None:
    (ks,) = engines(1, monthly_page_limit=10, on_backend_error="degrade")
    token = new_key(ks)
    hit(ks, token)
    with Outage(ks):
        hit(ks, token)
        hit(ks, token)
    redis_flush()  # Redis comes back empty (a restart)
    principal = hit(ks, token)
    assert principal.quota is not None and principal.quota.used == 4  # rebuilt: 1 + 2 + 1
    ks.flush()
    assert stored_pages(ks) == 4
    assert counter(redis_client, ks)["pages"] == 4
    assert ks.quotas.usage(ACCOUNT).pages == 4


class LostReply:
    """The meter script runs in Redis, but its reply never arrives (a timeout)."""

    def __init__(self, ks: Keystile, monkeypatch: pytest.MonkeyPatch) -> None:
        original = ks.redis.scripts["meter"]  # below the gateway: its error policy applies
        self.lost = 0

        def meter_then_time_out(**call: Any) -> Any:
            if self.lost:
                self.lost -= 1
                original(**call)
                raise redis.TimeoutError("Timeout reading from socket (simulated)")
            return original(**call)

        monkeypatch.setitem(ks.redis.scripts, "meter", meter_then_time_out)


def two_charged_then_lost(
    engines: Engines, monkeypatch: pytest.MonkeyPatch, policy: str, *, replies: int
) -> tuple[Keystile, str, LostReply]:
    """An engine whose key has 2 pages charged, and whose next ``replies`` meter replies are
    lost after the script ran."""
    (ks,) = engines(1, monthly_page_limit=10, on_backend_error=policy)
    token = new_key(ks)
    hit(ks, token)
    hit(ks, token)
    lost = LostReply(ks, monkeypatch)
    lost.lost = replies
    return ks, token, lost


@pytest.mark.parametrize("policy", ["degrade", "fail_closed"])
def test_a_timed_out_charge_is_sent_again_and_counted_once(
    engines: Engines, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    ks, token, lost = two_charged_then_lost(engines, monkeypatch, policy, replies=1)
    hit(ks, token)  # the retry is answered from the first call's marker: admitted, either way
    assert lost.lost == 0
    assert counter(redis_client, ks)["pages"] == 3
    ks.flush()
    assert counter(redis_client, ks)["pages"] == stored_pages(ks) == 3


@pytest.mark.parametrize("policy", ["degrade", "fail_closed"])
def test_a_charge_lost_twice_is_never_counted_twice_nor_for_a_refusal(
    engines: Engines, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    # the call and its retry both run, neither reply arrives
    ks, token, _ = two_charged_then_lost(engines, monkeypatch, policy, replies=2)
    if policy == "degrade":
        hit(ks, token)  # admitted: served, so billed once
        served = 3
    else:
        refused(ks, token, BACKEND_UNAVAILABLE)  # refused: not billed
        served = 2
    assert counter(redis_client, ks)["pages"] == 3  # Redis ran it, once
    ks.flush()  # resolved: a refusal's charge is taken back
    assert counter(redis_client, ks)["pages"] == stored_pages(ks) == served
    assert hit(ks, token).quota.used == served + 1  # type: ignore[union-attr]
    ks.flush()
    assert counter(redis_client, ks)["pages"] == stored_pages(ks) == served + 1


def test_an_outage_is_reconciled_once_when_another_process_rebuilt_first(
    engines: Engines, redis_client: redis.Redis, redis_flush: Callable[[], None]
) -> None:
    a, b = engines(2, monthly_page_limit=100, on_backend_error="degrade")
    token = new_key(a)
    hit(a, token)
    with Outage(a):
        for _ in range(5):
            hit(a, token)  # admitted while a cannot reach Redis
        a.flush()  # the store has them
    redis_flush()  # meanwhile Redis lost the counter ...
    assert hit(b, token).quota.used == 7  # ... and b rebuilt it from the store: 6 + 1
    a.flush()  # a reconciles: nothing is added twice
    assert hit(b, token).quota.used == 8
    b.flush()
    assert counter(redis_client, a)["pages"] == stored_pages(a) == 8


# -- charges a counter lost: added back at the next flush ---------------------------------------


def lose_pages(client: Any, ks: Keystile, pages: int) -> None:
    """What a failover that lost the last writes leaves: the counter and this process's pending
    field both short of ``pages`` (they change in the same script, so they replicate alike)."""
    key = ks.redis_keys.usage(ACCOUNT, PERIOD, "live")
    client.hincrby(key, "pages", -pages)
    client.hincrby(key, f"p:{ks.admission.holder}", -pages)


def test_pages_a_failover_lost_are_added_back_at_the_next_flush(
    engines: Engines, redis_client: Any
) -> None:
    a, b = engines(2, monthly_page_limit=100)
    token = new_key(a)
    for ks in (a, b, a, b, a):
        hit(ks, token)
    lose_pages(redis_client, a, 2)  # a's last two charges never reached the replica
    assert counter(redis_client, a)["pages"] == 3
    a.flush()
    b.flush()
    assert counter(redis_client, a)["pages"] == stored_pages(a) == 5
    a.flush()  # nothing twice
    assert counter(redis_client, a)["pages"] == 5


def test_the_pending_field_follows_refunds_and_leaves_once_written(
    engines: Engines, redis_client: Any
) -> None:
    (ks,) = engines(1, monthly_page_limit=100)
    token = new_key(ks)
    hit(ks, token)
    hit(ks, token, charge=4)
    hit(ks, token, status=500)  # refunded
    field = f"p:{ks.admission.holder}"
    assert counter(redis_client, ks)[field] == 5 == counter(redis_client, ks)["pages"]
    ks.flush()
    assert field not in counter(redis_client, ks)  # all of it is in the store now
    assert counter(redis_client, ks)["pages"] == stored_pages(ks) == 5


def test_a_charge_on_its_way_back_is_never_taken_away(
    engines: Engines, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush runs while a charge is counted in Redis but not yet in this process's buffer
    (its reply is on the way): the counter keeps it."""
    (ks,) = engines(1, monthly_page_limit=100)
    token = new_key(ks)
    hit(ks, token)
    original = ks.admission._record

    def flush_first(charge: Any, outcome: Any) -> None:
        monkeypatch.setattr(ks.admission, "_record", original)
        ks.flush()  # the charge is in Redis (and its pending field), not yet recorded here
        original(charge, outcome)

    monkeypatch.setattr(ks.admission, "_record", flush_first)
    hit(ks, token)
    assert counter(redis_client, ks)["pages"] == 2
    ks.flush()
    assert counter(redis_client, ks)["pages"] == stored_pages(ks) == 2


@pytest.mark.parametrize("lost", [1, 2])
def test_a_pending_write_whose_reply_is_lost_takes_its_pages_off_once(
    engines: Engines, redis_client: Any, monkeypatch: pytest.MonkeyPatch, lost: int
) -> None:
    """``lost=2``: the call and its retry both ran unanswered; the flusher sends it again."""
    (ks,) = engines(1, monthly_page_limit=100)
    token = new_key(ks)
    for _ in range(3):
        hit(ks, token)
    original = ks.redis.scripts["pending"]
    left = [lost]

    def written_then_time_out(**call: Any) -> Any:
        reply = original(**call)
        if call["args"][2] == "written" and left[0]:
            left[0] -= 1
            raise redis.TimeoutError("Timeout reading from socket (simulated)")
        return reply

    monkeypatch.setitem(ks.redis.scripts, "pending", written_then_time_out)
    ks.flush()
    ks.flush()  # sends a twice-lost one again: answered from its marker
    hit(ks, token)
    ks.flush()
    assert counter(redis_client, ks)["pages"] == stored_pages(ks) == 4
    assert f"p:{ks.admission.holder}" not in counter(redis_client, ks)
