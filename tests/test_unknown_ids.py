"""A flood of well-formed tokens whose key ids do not exist, with Redis in use.

Redis holds the set of every existing key id (``RedisKeys.kids()``), marked seeded once it
was filled from the store. An id the seeded set lacks is refused by the slow path's one Redis
call (the fetch_known script): no store read, no argon2, no negative entry written to Redis.
Costs are counted, never timed (see tests/test_engine_redis.py for the helpers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from keystile import Keystile
from keystile._core.rediskeys import KIDS_READY
from keystile.stores import KeyStore, open_store
from tests.test_engine_redis import (
    FAST_ARGON2,
    aauth,
    aclose,
    auth,
    count_argon2,
    count_async_redis,
    count_redis,
    count_store,
    kid_of,
    unknown_token,
)

pytestmark = pytest.mark.redis


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engines(redis_settings: dict[str, Any]) -> Iterator[Callable[..., Keystile]]:
    """``engines(**settings)``: a new engine ("process") on one shared store and Redis."""
    store: KeyStore = open_store("memory://")
    made: list[Keystile] = []

    def make(**extra: Any) -> Keystile:
        settings = {**redis_settings, "store": "memory://", "argon2": FAST_ARGON2, **extra}
        ks = Keystile(settings, store=store)
        made.append(ks)
        return ks

    yield make
    for ks in made:
        ks.flush()
    for ks in made:
        ks.close()
    store.close()


def wait_seeded(ks: Keystile, timeout: float = 10.0) -> bool:
    """Wait (bounded) until Redis's key-id set is seeded from the store."""
    client = redis.Redis.from_url(ks.settings.redis_url or "")
    try:
        deadline = time.monotonic() + timeout
        while not client.sismember(ks.redis_keys.kids(), KIDS_READY):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True
    finally:
        client.close()


def seeded(ks: Keystile) -> Keystile:
    """``ks`` with Redis's key-id set seeded (its first unknown id starts the seeding) and
    the fetch_known script loaded on the server, so that counts start clean."""
    assert auth(ks, unknown_token()) == "AUTH_002"
    assert wait_seeded(ks)
    assert auth(ks, unknown_token()) == "AUTH_002"
    return ks


def test_unknown_ids_cost_one_redis_call_and_no_store_read_or_argon2(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = seeded(engines())
    key = ks.keys.create("acct-1", "real")
    store, argon2 = count_store(monkeypatch, ks.store), count_argon2(monkeypatch, ks)
    calls = count_redis(monkeypatch, ks)
    for _ in range(200):
        calls.reset()
        assert auth(ks, unknown_token()) == "AUTH_002"
        assert calls.names == ["EVALSHA"]  # the one round trip: fetch_known
    assert (len(store), len(argon2)) == (0, 0)
    assert auth(ks, key.token).key_id == key.key_id  # the real key is not affected


@pytest.mark.anyio
async def test_async_unknown_ids_cost_one_redis_call_and_no_store_read_or_argon2(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines()
    try:
        assert await aauth(ks, unknown_token()) == "AUTH_002"
        assert wait_seeded(ks)
        assert await aauth(ks, unknown_token()) == "AUTH_002"  # the script is loaded
        store, argon2 = count_store(monkeypatch, ks.store), count_argon2(monkeypatch, ks)
        calls = count_async_redis(monkeypatch, ks)
        for _ in range(200):
            calls.reset()
            assert await aauth(ks, unknown_token()) == "AUTH_002"
            assert calls.names == ["EVALSHA"]
        assert (len(store), len(argon2)) == (0, 0)
        key = ks.keys.create("acct-1", "real")
        assert (await aauth(ks, key.token)).key_id == key.key_id
    finally:
        await aclose(ks)


def test_key_created_on_one_engine_works_at_once_on_another(
    engines: Callable[..., Keystile],
) -> None:
    a, b = engines(), seeded(engines())
    key = a.keys.create("acct-1", "new")
    assert auth(b, key.token).key_id == key.key_id  # its first request, through b


def test_deleted_key_is_refused_without_a_store_read(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = seeded(engines())
    key = a.keys.create("acct-1", "doomed")
    assert auth(a, key.token).key_id == key.key_id
    a.keys.delete(key.key_id)
    b = engines()
    store = count_store(monkeypatch, a.store)  # the shared store: counts a and b
    assert auth(a, key.token) == "AUTH_002"
    assert auth(b, key.token) == "AUTH_002"
    assert len(store) == 0


def test_revoked_key_is_still_refused_by_its_state(engines: Callable[..., Keystile]) -> None:
    a = seeded(engines())
    key = a.keys.create("acct-1", "revoked")
    a.keys.revoke(key.key_id)
    assert auth(engines(), key.token) == "AUTH_003"  # a member still: refused by its state


def test_unseeded_set_goes_to_the_store_then_gets_seeded(
    engines: Callable[..., Keystile],
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
) -> None:
    a = seeded(engines())
    key = a.keys.create("acct-1", "old")
    redis_client.srem(a.redis_keys.kids(), KIDS_READY)  # the marker is lost
    b = engines()
    store = count_store(monkeypatch, b.store)
    assert auth(b, unknown_token()) == "AUTH_002"
    assert len(store) == 1  # as before the set existed
    assert wait_seeded(b)
    assert auth(b, unknown_token()) == "AUTH_002"
    assert len(store) == 1  # seeded again: no store read
    assert auth(b, key.token).key_id == key.key_id  # the seeding found the existing key


def test_flushed_set_is_reseeded_with_every_stored_key(
    engines: Callable[..., Keystile], redis_client: redis.Redis
) -> None:
    a = engines()
    keys = [a.keys.create("acct-1", f"k{i}") for i in range(5)]
    redis_client.delete(a.redis_keys.kids())  # eviction, FLUSHALL: no set, no marker
    b = seeded(engines())
    kids = b.redis_keys.kids()
    assert all(redis_client.sismember(kids, kid_of(key.token)) for key in keys)
    for key in keys:
        assert auth(b, key.token).key_id == key.key_id


def test_seeding_keeps_a_key_created_meanwhile(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = engines()
    original = a.store.all_kids
    created: list[Any] = []

    def all_kids() -> list[str]:
        listed = original()
        created.append(a.keys.create("acct-1", "during"))  # after the store was read
        return listed

    monkeypatch.setattr(a.store, "all_kids", all_kids)
    seeded(a)
    assert created
    assert auth(engines(), created[0].token).key_id == created[0].key_id


def test_redis_failing_the_check_never_refuses_a_real_key(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(**call: Any) -> Any:
        raise redis.ConnectionError("down")

    degrade = seeded(engines(on_backend_error="degrade"))
    key = degrade.keys.create("acct-1", "real")
    monkeypatch.setitem(degrade.redis.scripts, "fetch_known", down)  # below the gateway
    assert auth(degrade, key.token).key_id == key.key_id  # from the store, as before
    store = count_store(monkeypatch, degrade.store)
    assert auth(degrade, unknown_token()) == "AUTH_002"
    assert len(store) == 1  # the old path: the store says it does not exist

    closed = engines(on_backend_error="fail_closed")
    monkeypatch.setitem(closed.redis.scripts, "fetch_known", down)
    assert auth(closed, key.token) == "SVC_001"  # the existing answer, not AUTH_002


def test_create_while_redis_is_down_is_added_to_the_set_later(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = seeded(engines())
    client = a.redis.client
    original = client.sadd
    failures = [1]

    def sadd(*args: Any) -> Any:
        if failures:
            failures.pop()
            raise redis.ConnectionError("down")
        return original(*args)

    monkeypatch.setattr(client, "sadd", sadd)
    key = a.keys.create("acct-1", "late")  # still succeeds
    deadline = time.monotonic() + 10
    while not a.redis.client.sismember(a.redis_keys.kids(), kid_of(key.token)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert auth(engines(), key.token).key_id == key.key_id


def test_sessions_skip_the_set(engines: Callable[..., Keystile]) -> None:
    a = seeded(engines())
    key = a.keys.create("acct-1", "login")
    session = a.sessions.login([("authorization", f"Bearer {key.token}")])
    assert auth(engines(), session.token).key_id == key.key_id
