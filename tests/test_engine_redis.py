"""The engine on a real Redis: what each request costs, and how fast changes propagate.

With Redis, a request with a credential this process knows costs exactly one Redis call:
the meter script (EVALSHA), which compares the key's state stamp and charges the quota at
once (see keystile._core.admission). Costs are counted, not timed: Redis commands by wrapping the
client's ``execute_command``, argon2 runs by wrapping ``ks.hasher.verify``, store reads by
wrapping ``store.get``.
Engines that stand for separate processes share one store and one Redis (and its prefix)
but nothing else.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from keystile import AuthError, BackendError, Keystile
from keystile._core import tokens
from keystile._core.rediskeys import KIDS_READY
from keystile._core.verification import NEGATIVE, Snapshot
from keystile.stores import KeyStore
from tests.services import REDIS_MISSING, private_redis, service_missing

pytestmark = pytest.mark.redis

FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
CLOSED_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------- helpers


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def auth(ks: Keystile, token: str) -> Any:
    """The principal, or the refusal's code: what a request would get."""
    try:
        return ks.authenticate(bearer(token))
    except AuthError as error:
        return error.code


async def aauth(ks: Keystile, token: str) -> Any:
    try:
        return await ks.authenticate_async(bearer(token))
    except AuthError as error:
        return error.code


def other_secret(token: str) -> str:
    """The same key id with another well-formed secret (valid checksum, wrong secret)."""
    prefix, env, kid, _ = token.split("_")
    return tokens.format_token(prefix, env, kid, tokens.new_secret(kid))


def unknown_token(environment: str = "live") -> str:
    kid = tokens.new_kid()
    return tokens.format_token("sk", environment, kid, tokens.new_secret(kid))


def kid_of(token: str) -> str:
    return token.split("_")[2]


class Calls:
    """Recorded calls of one kind: ``len(calls)``, ``calls.names``, ``calls.reset()``."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        with self._lock:
            self.names.append(name)

    def reset(self) -> None:
        with self._lock:
            self.names.clear()

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Calls({self.names!r})"


def count_argon2(monkeypatch: pytest.MonkeyPatch, ks: Keystile, delay: float = 0.0) -> Calls:
    calls = Calls()
    original = ks.hasher.verify

    def verify(hashed: str, secret: str) -> bool:
        calls.add("verify")
        if delay:
            time.sleep(delay)  # keeps the flight open so that every caller joins it
        return original(hashed, secret)

    monkeypatch.setattr(ks.hasher, "verify", verify)
    return calls


def count_redis(monkeypatch: pytest.MonkeyPatch, ks: Keystile) -> Calls:
    calls = Calls()
    # redis-py's client, and keystile's own blocking client that the request path uses.
    for client in {id(c): c for c in (ks.redis.client, ks.redis.sync.commands)}.values():
        original = client.execute_command

        def execute_command(*args: Any, _original: Any = original, **options: Any) -> Any:
            calls.add(str(args[0]).upper())
            return _original(*args, **options)

        monkeypatch.setattr(client, "execute_command", execute_command)
    return calls


def count_async_redis(monkeypatch: pytest.MonkeyPatch, ks: Keystile) -> Calls:
    """Must run inside the event loop: the async client belongs to the running loop."""
    calls = Calls()
    client = ks.redis.aio.client
    original = client.execute_command

    async def execute_command(*args: Any, **options: Any) -> Any:
        calls.add(str(args[0]).upper())
        return await original(*args, **options)

    monkeypatch.setattr(client, "execute_command", execute_command)
    return calls


def count_store(monkeypatch: pytest.MonkeyPatch, store: KeyStore) -> Calls:
    calls = Calls()
    original = store.get

    def get(kid: str) -> Any:
        calls.add("get")
        return original(kid)

    monkeypatch.setattr(store, "get", get)
    return calls


class StoreProxy:
    """Another process's view of a shared store, whose ``get`` can be intercepted."""

    def __init__(self, store: KeyStore, after_get: Callable[[Any], None]) -> None:
        self._store = store
        self._after_get = after_get

    def get(self, kid: str) -> Any:
        record = self._store.get(kid)
        self._after_get(record)
        return record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def engines(
    redis_settings: dict[str, Any], shared_store: KeyStore
) -> Iterator[Callable[..., Keystile]]:
    """``engines(**settings)``: a new engine ("process") on the shared store and Redis."""
    made: list[Keystile] = []

    def make(clock: Callable[[], float] | None = None, store: Any = None, **extra: Any) -> Keystile:
        settings = {**redis_settings, "store": "memory://", "argon2": FAST_ARGON2, **extra}
        ks = Keystile(settings, clock=clock, store=store if store is not None else shared_store)
        made.append(ks)
        return ks

    yield make
    for ks in made:  # every batched write while the shared store is still open
        ks.flush()
    for ks in made:
        ks.close()


async def aclose(*engines: Keystile) -> None:
    """Close the engines' clients of the running loop (each loop has its own)."""
    for ks in engines:
        await ks.aclose()


def redis_values(client: redis.Redis, prefix: str) -> dict[bytes, list[bytes]]:
    """Every key under ``prefix`` with the bytes it holds (strings, hashes, sets, lists)."""
    found: dict[bytes, list[bytes]] = {}
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        kind = client.type(key)
        if kind == b"string":
            found[key] = [client.get(key) or b""]
        elif kind == b"hash":
            found[key] = [item for pair in client.hgetall(key).items() for item in pair]
        elif kind == b"set":
            found[key] = list(client.smembers(key))
        elif kind == b"list":
            found[key] = list(client.lrange(key, 0, -1))
        elif kind == b"zset":
            found[key] = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            found[key] = []
    return found


# ------------------------------------------------------------------ cost per request


def test_warm_key_costs_one_redis_call_and_no_argon2(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines()
    key = ks.keys.create("acct-1", "warm", permissions=["read"])
    assert auth(ks, key.token).key_id == key.key_id  # cold: verified once
    argon2, calls = count_argon2(monkeypatch, ks), count_redis(monkeypatch, ks)
    store = count_store(monkeypatch, ks.store)
    for _ in range(5):
        calls.reset()
        principal = auth(ks, key.token)
        assert principal.key_id == key.key_id
        assert calls.names == ["EVALSHA"]  # the meter script, which checks the state stamp
    assert len(argon2) == 0
    assert len(store) == 0


def test_cold_process_with_warm_redis_costs_two_calls_and_no_argon2(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "shared")
    assert auth(a, key.token).key_id == key.key_id
    argon2, calls = count_argon2(monkeypatch, b), count_redis(monkeypatch, b)
    store = count_store(monkeypatch, b.store)
    assert auth(b, key.token).key_id == key.key_id
    # The snapshot (with the key id's existence, one script), then meter + state stamp.
    assert calls.names == ["EVALSHA", "EVALSHA"]
    assert len(argon2) == 0
    assert len(store) == 0
    calls.reset()
    assert auth(b, key.token).key_id == key.key_id
    assert calls.names == ["EVALSHA"]  # now warm in this process too


def test_cold_key_costs_store_argon2_adopt_snapshot_set_and_meter(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines()
    key = ks.keys.create("acct-1", "cold")
    argon2, calls = count_argon2(monkeypatch, ks), count_redis(monkeypatch, ks)
    store = count_store(monkeypatch, ks.store)
    assert auth(ks, key.token).key_id == key.key_id
    assert len(argon2) == 1
    assert len(store) == 1
    # The fetch_known script (snapshot GET, a miss, and the id's existence), the GET of the
    # key id's failures (its budget, before argon2) and the SET of its credential's digest
    # (known: it passes the budget), the adopt script, SET of the snapshot, then the meter
    # script (run again to seed the account's limit and usage the first time). A script
    # this server has not seen yet costs SCRIPT LOAD + another EVALSHA.
    assert calls.names[:3] == ["EVALSHA", "GET", "SET"]
    snapshot_set = calls.names.index("SET", 3)
    assert set(calls.names[3:snapshot_set]) <= {"EVALSHA", "SCRIPT LOAD"}
    assert "EVALSHA" in calls.names[3:snapshot_set]  # adopt
    assert set(calls.names[snapshot_set + 1 :]) <= {"EVALSHA", "SCRIPT LOAD"}
    assert "EVALSHA" in calls.names[snapshot_set + 1 :]  # meter
    calls.reset()
    assert auth(ks, key.token).key_id == key.key_id
    assert calls.names == ["EVALSHA"]


def test_bad_checksum_costs_nothing(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines()
    key = ks.keys.create("acct-1", "k")
    forged = key.token[:-1] + ("A" if key.token[-1] != "A" else "B")
    argon2, calls = count_argon2(monkeypatch, ks), count_redis(monkeypatch, ks)
    store = count_store(monkeypatch, ks.store)
    for token in (forged, "sk_live_garbage", key.token.replace("sk_", "xx_", 1)):
        assert auth(ks, token) == "AUTH_002"
    assert (len(calls), len(store), len(argon2)) == (0, 0, 0)


def test_unknown_key_id_is_negatively_cached_by_digest_only(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, c = engines(), engines()
    token = unknown_token()
    argon2 = count_argon2(monkeypatch, a)
    store = count_store(monkeypatch, a.store)  # the shared store: counts a and c
    assert auth(a, token) == "AUTH_002"
    assert (len(store), len(argon2)) == (1, 0)  # unknown ids never reach argon2

    calls = count_redis(monkeypatch, a)
    assert auth(a, token) == "AUTH_002"
    assert (len(store), len(calls)) == (1, 0)  # remembered in this process

    c_calls = count_redis(monkeypatch, c)
    assert auth(c, token) == "AUTH_002"
    assert len(store) == 1  # another process: remembered in Redis, no store lookup
    assert c_calls.names == ["EVALSHA"]  # fetch_known: the snapshot and the id's existence

    # Another secret for the same unknown id: once Redis's key-id set is seeded (the first
    # lookup started that), the id itself is known not to exist: no store lookup either.
    # (A real key's id is in the set, so guessing it still locks nobody out.) The first
    # lookup started the seeding, in the background: wait for it, bounded.
    kids, deadline = a.redis_keys.kids(), time.monotonic() + 10
    while not a.redis.client.sismember(kids, KIDS_READY) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert auth(a, other_secret(token)) == "AUTH_002"
    assert len(store) == 1
    assert len(argon2) == 0


def test_wrong_secret_does_not_lock_out_the_owner(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "owner")
    wrong = other_secret(key.token)
    argon2 = count_argon2(monkeypatch, a)
    for _ in range(3):
        assert auth(a, wrong) == "AUTH_002"
    assert len(argon2) == 1  # the wrong secret is remembered: one argon2 run
    assert auth(a, key.token).key_id == key.key_id
    assert len(argon2) == 2
    b_argon2 = count_argon2(monkeypatch, b)
    assert auth(b, wrong) == "AUTH_002"  # served from Redis's negative entry
    assert auth(b, key.token).key_id == key.key_id
    assert len(b_argon2) == 0


def test_cached_key_with_a_wrong_secret_is_refused(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "k")
    assert auth(a, key.token).key_id == key.key_id
    assert auth(b, key.token).key_id == key.key_id
    wrong = other_secret(key.token)
    assert auth(a, wrong) == "AUTH_002"
    assert auth(b, wrong) == "AUTH_002"
    # and the key + secret form with a wrong secret
    bad_pair = [("x-api-key", key.key_id), ("x-api-secret", wrong.split("_")[3])]
    with pytest.raises(AuthError) as refused:
        b.authenticate(bad_pair)
    assert refused.value.code == "AUTH_002"


def test_both_credential_forms_share_one_cache_entry(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines()
    key = ks.keys.create("acct-1", "k")
    assert auth(ks, key.token).auth_method == "bearer"
    argon2, calls = count_argon2(monkeypatch, ks), count_redis(monkeypatch, ks)
    pair = [("x-api-key", key.key_id), ("x-api-secret", key.secret)]
    assert ks.authenticate(pair).auth_method == "key_secret"
    assert ks.authenticate([("x-api-key", key.token)]).auth_method == "api_key"
    assert len(argon2) == 0
    assert calls.names == ["EVALSHA", "EVALSHA"]


def test_wrong_environment_token_is_refused_when_the_key_is_cached(
    engines: Callable[..., Keystile],
) -> None:
    ks = engines()
    key = ks.keys.create("acct-1", "live key", environment="live")
    assert auth(ks, key.token).environment == "live"
    wrong_env = key.token.replace("sk_live_", "sk_test_", 1)
    assert auth(ks, wrong_env) == "AUTH_002"  # refused cold, so must be refused warm
    assert auth(engines(), wrong_env) == "AUTH_002"  # and from the Redis snapshot
    assert auth(ks, key.token).environment == "live"


def test_wrong_environment_token_does_not_lock_out_the_right_token(
    engines: Callable[..., Keystile],
) -> None:
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "live key", environment="live")
    wrong_env = key.token.replace("sk_live_", "sk_test_", 1)
    assert auth(a, wrong_env) == "AUTH_002"
    assert auth(b, key.token).key_id == key.key_id


# --------------------------------------------------------- changes reach every engine


CHANGES = ["revoke", "disable", "expire", "permissions", "roll", "delete"]


@pytest.mark.parametrize("change", CHANGES)
def test_management_on_one_engine_takes_effect_on_the_next_request_of_another(
    engines: Callable[..., Keystile], clock: Any, change: str
) -> None:
    a, b = engines(clock=clock), engines(clock=clock)
    key = a.keys.create("acct-1", "k", permissions=["read"])
    for ks in (a, b):  # both warm, locally and in Redis
        assert auth(ks, key.token).permissions == frozenset({"read"})
        assert auth(ks, key.token).permissions == frozenset({"read"})

    new_token = None
    if change == "revoke":
        a.keys.revoke(key.key_id)
    elif change == "disable":
        a.keys.update(key.key_id, enabled=False)
    elif change == "expire":
        a.keys.update(key.key_id, expires_at=a.now())
    elif change == "permissions":
        a.keys.update(key.key_id, permissions=["read", "write"])
    elif change == "roll":
        new_token = a.keys.roll(key.key_id).token
    elif change == "delete":
        a.keys.delete(key.key_id)

    expected = {
        "revoke": "AUTH_003",
        "disable": "AUTH_003",
        "expire": "AUTH_003",
        "roll": "AUTH_002",
        "delete": "AUTH_002",
    }
    for ks in (b, a):  # no clock movement: no TTL has passed
        result = auth(ks, key.token)
        if change == "permissions":
            assert result.permissions == frozenset({"read", "write"})
        else:
            assert result == expected[change], ks
    if new_token is not None:
        assert auth(b, new_token).key_id == key.key_id


def test_roll_with_grace_keeps_the_old_secret_until_the_grace_ends(
    engines: Callable[..., Keystile], clock: Any
) -> None:
    a, b = engines(clock=clock), engines(clock=clock)
    key = a.keys.create("acct-1", "k")
    assert auth(b, key.token).key_id == key.key_id
    rolled = a.keys.roll(key.key_id, grace_seconds=60)
    assert auth(b, key.token).key_id == key.key_id
    assert auth(b, rolled.token).key_id == key.key_id
    clock.advance(61)
    assert auth(b, key.token) == "AUTH_002"
    assert auth(engines(clock=clock), key.token) == "AUTH_002"
    assert auth(b, rolled.token).key_id == key.key_id


def test_revoke_racing_a_verification_never_recaches_the_key(
    engines: Callable[..., Keystile], shared_store: KeyStore
) -> None:
    """B reads the active record; A revokes before B publishes what it verified."""
    a = engines()
    key = a.keys.create("acct-1", "k")
    revoked: list[bool] = []

    def revoke_once(record: Any) -> None:
        if record is not None and record.revoked_at is None and not revoked:
            revoked.append(True)
            a.keys.revoke(key.key_id)

    b = engines(store=StoreProxy(shared_store, revoke_once))
    auth(b, key.token)  # whatever it answers, it must not cache the active state
    assert revoked == [True]
    # Read before any later request could repair it: the state B verified is not published.
    parsed = tokens.parse_token(key.token, "sk", ("live", "test"))
    assert parsed is not None
    raw = b.redis.client.get(b.redis_keys.snapshot(parsed.kid, b.digest(parsed)))
    assert raw is None or raw == NEGATIVE or Snapshot.loads(raw).revoked  # never the active one
    cached = b.local.get(b.digest(parsed))
    assert not isinstance(cached, Snapshot) or cached.revoked
    assert auth(b, key.token) == "AUTH_003"
    c = engines()
    assert auth(c, key.token) == "AUTH_003"


def test_revoke_between_adopt_and_snapshot_set_is_still_seen_next_request(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst interleaving: B's adopt passed, then A revokes, then B stores its snapshot."""
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "k")
    original = b.redis.adopt

    def adopt_then_revoke(account_id: str, kid: str, version: str, *rest: str) -> str:
        current = original(account_id, kid, version, *rest)
        a.keys.revoke(key.key_id)
        return current

    monkeypatch.setattr(b.redis, "adopt", adopt_then_revoke)
    auth(b, key.token)  # verified before the revoke landed: may pass this once
    monkeypatch.setattr(b.redis, "adopt", original)
    assert auth(b, key.token) == "AUTH_003"
    assert auth(engines(), key.token) == "AUTH_003"


def test_redis_flushed_keys_still_work_and_revocation_stays_immediate(
    engines: Callable[..., Keystile],
    redis_flush: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "k")
    other = a.keys.create("acct-1", "other")
    for ks in (a, b):
        assert auth(ks, key.token).key_id == key.key_id
        assert auth(ks, other.token).key_id == other.key_id
    redis_flush()
    argon2 = count_argon2(monkeypatch, b)
    assert auth(b, key.token).key_id == key.key_id  # re-verified: the stamp was lost
    assert len(argon2) == 1
    assert auth(b, key.token).key_id == key.key_id
    assert len(argon2) == 1
    assert auth(a, key.token).key_id == key.key_id
    a.keys.revoke(key.key_id)
    assert auth(b, key.token) == "AUTH_003"
    assert auth(a, key.token) == "AUTH_003"
    # A key warm before the flush and never re-verified is revoked just as fast.
    a.keys.revoke(other.key_id)
    assert auth(b, other.token) == "AUTH_003"


# ------------------------------------------------------------- a publish Redis missed


def _drop_snapshots(client: redis.Redis, ks: Keystile, token: str) -> None:
    """What the snapshots' TTL (cache_ttl) does: the shared cache forgets the credential."""
    kid = kid_of(token)
    for name in client.scan_iter(match=f"{ks.settings.redis_prefix}:{{k:{kid}}}:t:*"):
        client.delete(name)


def _refuse_redis_set(monkeypatch: pytest.MonkeyPatch, ks: Keystile) -> None:
    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("Redis blipped")

    monkeypatch.setattr(ks.redis.client, "set", unavailable)


def test_a_missed_publish_does_not_break_the_key_for_good(
    engines: Callable[..., Keystile],
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
) -> None:
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "k", permissions=["read"])
    assert auth(b, key.token).permissions == frozenset({"read"})
    with monkeypatch.context() as patch:
        _refuse_redis_set(patch, a)
        with pytest.raises(BackendError, match="saved, but Redis could not be told"):
            a.keys.update(key.key_id, permissions=["read", "write"])
    # The old state may be served for up to cache_ttl (documented); once the caches have
    # forgotten the credential, the store's state must be served.
    _drop_snapshots(redis_client, a, key.token)
    fresh = engines()
    argon2 = count_argon2(monkeypatch, fresh)
    result = auth(fresh, key.token)
    assert not isinstance(result, str), result  # is 'SVC_001'
    assert result.permissions == frozenset({"read", "write"})
    assert len(argon2) == 1


def test_a_roll_whose_publish_fails_leaves_the_caller_a_working_token(
    engines: Callable[..., Keystile],
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
) -> None:
    a = engines()
    key = a.keys.create("acct-1", "k")
    held = [key.token]
    with monkeypatch.context() as patch:
        _refuse_redis_set(patch, a)
        try:
            held.append(a.keys.roll(key.key_id).token)
        except BackendError as error:
            created = getattr(error, "created", None) or getattr(error, "key", None)
            if created is not None:
                held.append(created.token)
    # Take the stale-stamp problem (test above) out of the way: Redis forgets the key.
    redis_client.delete(a.redis_keys.state("acct-1", kid_of(key.token)))
    _drop_snapshots(redis_client, a, key.token)
    fresh = engines()
    results = [auth(fresh, token) for token in held]
    assert any(not isinstance(r, str) for r in results), results


# ------------------------------------------------------------------------ single flight


def test_single_flight_threads_one_argon2_run_per_engine(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "k")
    runs = {id(a): count_argon2(monkeypatch, a, 0.3), id(b): count_argon2(monkeypatch, b, 0.3)}
    per_engine = 20
    barrier = threading.Barrier(2 * per_engine)
    results: list[Any] = []

    def worker(ks: Keystile) -> None:
        barrier.wait()
        results.append(auth(ks, key.token))

    threads = [
        threading.Thread(target=worker, args=(ks,)) for ks in (a, b) for _ in range(per_engine)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 * per_engine
    assert all(getattr(r, "key_id", r) == key.key_id for r in results), results
    assert [len(runs[id(a)]), len(runs[id(b)])] == [1, 1]


def test_single_flight_shares_a_refusal_too(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines()
    key = ks.keys.create("acct-1", "k")
    wrong = other_secret(key.token)
    argon2 = count_argon2(monkeypatch, ks, 0.3)
    barrier = threading.Barrier(20)
    results: list[Any] = []

    def worker() -> None:
        barrier.wait()
        results.append(auth(ks, wrong))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["AUTH_002"] * 20
    assert len(argon2) == 1


@pytest.mark.anyio
async def test_single_flight_tasks_one_argon2_run_per_engine(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 200 requests per engine ("process") with one never-seen key. They share one pipelined
    # connection per engine; a generous timeout keeps a loaded machine from failing them.
    a, b = engines(redis_timeout=5), engines(redis_timeout=5)
    key = a.keys.create("acct-1", "k")
    try:
        runs = [count_argon2(monkeypatch, a, 0.3), count_argon2(monkeypatch, b, 0.3)]
        calls = (aauth(ks, key.token) for ks in (a, b) for _ in range(200))
        results = await asyncio.gather(*calls)
        assert all(getattr(r, "key_id", r) == key.key_id for r in results), results
        assert [len(r) for r in runs] == [1, 1]
    finally:
        await aclose(a, b)


def cold_reader(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch, *, fail_first: bool
) -> tuple[Keystile, Any, Calls]:
    """An engine whose cache lacks a key that another process verified (so its snapshot is
    in Redis), with its async snapshot reads counted; each is held open a moment, so that
    concurrent requests join it. ``fail_first``: the first read fails, as a lost reply."""
    other, ks = engines(), engines(redis_timeout=5)
    key = other.keys.create("acct-1", "k")
    assert auth(other, key.token).key_id == key.key_id
    reads = Calls()
    original = ks.redis.fetch_known_async

    async def fetch_known_async(kid: str, digest: str) -> Any:
        reads.add("fetch_known")
        if len(reads) == 1:
            await asyncio.sleep(0.05)
            if fail_first:
                raise BackendError("redis fetch_known failed: TimeoutError")
        return await original(kid, digest)

    monkeypatch.setattr(ks.redis, "fetch_known_async", fetch_known_async)
    return ks, key, reads


@pytest.mark.anyio
async def test_a_cold_burst_shares_one_read_of_the_snapshot(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks, key, reads = cold_reader(engines, monkeypatch, fail_first=False)
    argon2 = count_argon2(monkeypatch, ks)
    try:
        results = await asyncio.gather(*(aauth(ks, key.token) for _ in range(100)))
        assert all(getattr(r, "key_id", r) == key.key_id for r in results), results
        assert len(reads) == 1
        assert len(argon2) == 0  # the snapshot came from Redis
    finally:
        await aclose(ks)


@pytest.mark.anyio
async def test_a_shared_read_that_fails_fails_only_its_own_request(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks, key, reads = cold_reader(engines, monkeypatch, fail_first=True)
    try:
        results = await asyncio.gather(*(aauth(ks, key.token) for _ in range(20)))
        # The request that made the read is refused (fail_closed); those that joined it
        # read again on their own, and get in.
        assert sum(r == "SVC_001" for r in results) == 1, results
        assert sum(getattr(r, "key_id", None) == key.key_id for r in results) == 19
        assert 2 <= len(reads) <= 20
    finally:
        await aclose(ks)


def test_threads_share_one_read_of_the_snapshot(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    other, ks = engines(), engines()
    key = other.keys.create("acct-1", "k")
    assert auth(other, key.token).key_id == key.key_id
    reads = Calls()
    original = ks.redis.fetch_known

    def fetch_known(kid: str, digest: str) -> Any:
        reads.add("fetch_known")
        time.sleep(0.2)  # keeps the read open so that every thread joins it
        return original(kid, digest)

    monkeypatch.setattr(ks.redis, "fetch_known", fetch_known)
    barrier = threading.Barrier(10)
    results: list[Any] = []

    def worker() -> None:
        barrier.wait()
        results.append(auth(ks, key.token))

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [getattr(r, "key_id", r) for r in results] == [key.key_id] * 10
    assert len(reads) == 1


def test_single_flight_late_joiner_uses_the_finished_flight(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines()
    key = ks.keys.create("acct-1", "k")
    argon2 = count_argon2(monkeypatch, ks)
    late_missed, first_done = threading.Event(), threading.Event()
    ops = ks.driver.ops
    original = ops["single_flight"]  # after the cache and Redis missed, before the store

    def flight(digest: str, token: Any) -> Any:
        if threading.current_thread().name == "late":
            late_missed.set()  # a cache miss, like the first request's
            first_done.wait(10)  # ... which completes before this one goes on
        return original(digest, token)

    monkeypatch.setitem(ops, "single_flight", flight)
    results: list[Any] = []
    late = threading.Thread(target=lambda: results.append(auth(ks, key.token)), name="late")
    late.start()
    assert late_missed.wait(10)
    assert auth(ks, key.token).key_id == key.key_id
    first_done.set()
    late.join(10)
    assert results and results[0].key_id == key.key_id
    assert len(argon2) == 1


# ---------------------------------------------------------------- nothing secret in Redis


def test_redis_holds_no_token_secret_or_hash(
    engines: Callable[..., Keystile],
    redis_client: redis.Redis,
    redis_settings: dict[str, Any],
    shared_store: KeyStore,
) -> None:
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "k", meta={"plan": "pro"}, accounts=["acct-2"])
    rolled_from = a.keys.create("acct-1", "rolled")
    rolled = a.keys.roll(rolled_from.key_id, grace_seconds=60)
    wrong = other_secret(key.token)
    for ks in (a, b):
        auth(ks, key.token)
        ks.authenticate([("x-api-key", key.key_id), ("x-api-secret", key.secret)])
        auth(ks, wrong)
        auth(ks, rolled_from.token)
        auth(ks, rolled.token)
        auth(ks, unknown_token())
    stored = redis_values(redis_client, redis_settings["redis_prefix"])
    assert stored, "nothing was cached in Redis"
    kinds = {key_name.split(b":")[-2] for key_name in stored}
    assert {b"t", b"v"} <= kinds  # snapshots and state stamps were written

    forbidden = {
        "token": key.token,
        "secret": key.secret,
        "wrong secret": wrong.split("_")[3],
        "rolled token": rolled.token,
        "old token": rolled_from.token,
        "old secret": rolled_from.secret,
        "server secret": redis_settings["secret"],
        "argon2": "$argon2",
    }
    for record_key in (key, rolled_from):
        record = shared_store.get(kid_of(record_key.token))
        assert record is not None
        forbidden[f"hash of {record.name}"] = record.secret_hash
        if record.previous_hash:
            forbidden[f"previous hash of {record.name}"] = record.previous_hash
    for name, values in stored.items():
        for blob in (name, *values):
            for what, text in forbidden.items():
                assert text.encode() not in blob, f"{what} found in Redis key {name!r}"


# --------------------------------------------------------------------- Redis unavailable


@pytest.fixture
def stoppable_redis(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A private redis-server of this test's own: ``(url, stop)``."""
    binary = shutil.which("redis-server") or service_missing(REDIS_MISSING)
    with private_redis(binary, tmp_path) as service:

        def stop() -> None:
            client = redis.Redis.from_url(service.url)
            try:
                client.shutdown(nosave=True)
            except redis.ConnectionError:
                pass  # the server closes the connection as it goes
            finally:
                client.close()

        yield service.url, stop


def test_fail_closed_refuses_with_503_when_redis_is_down(
    engines: Callable[..., Keystile], stoppable_redis: Any
) -> None:
    url, stop = stoppable_redis
    a = engines()
    key = a.keys.create("acct-1", "k")
    cold = engines(redis_url=CLOSED_REDIS)
    with pytest.raises(AuthError) as refused:
        cold.authenticate(bearer(key.token))
    assert (refused.value.code, refused.value.status) == ("SVC_001", 503)

    warm = engines(redis_url=url)
    assert auth(warm, key.token).key_id == key.key_id
    stop()
    with pytest.raises(AuthError) as refused:
        warm.authenticate(bearer(key.token))  # cached locally, but the stamp can't be checked
    assert (refused.value.code, refused.value.status) == ("SVC_001", 503)


def test_degrade_authenticates_from_the_store_when_redis_is_down(
    engines: Callable[..., Keystile], stoppable_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, stop = stoppable_redis
    a = engines()
    key = a.keys.create("acct-1", "k", permissions=["read"])
    cold = engines(redis_url=CLOSED_REDIS, on_backend_error="degrade", local_cache_ttl=0.2)
    argon2 = count_argon2(monkeypatch, cold)
    assert auth(cold, key.token).permissions == frozenset({"read"})
    assert auth(cold, key.token).permissions == frozenset({"read"})
    assert len(argon2) == 1  # kept locally while degraded: an outage is no argon2 storm
    assert auth(cold, other_secret(key.token)) == "AUTH_002"
    # As without Redis, another process's revoke is seen once local_cache_ttl has passed.
    a.keys.revoke(key.key_id)
    time.sleep(0.25)
    assert auth(cold, key.token) == "AUTH_003"

    key2 = a.keys.create("acct-1", "k2")
    warm = engines(redis_url=url, on_backend_error="degrade")
    assert auth(warm, key2.token).key_id == key2.key_id
    stop()
    warm_argon2 = count_argon2(monkeypatch, warm)
    assert auth(warm, key2.token).key_id == key2.key_id  # from the local cache
    assert len(warm_argon2) == 0


@pytest.mark.anyio
async def test_async_fail_closed_and_degrade_with_redis_down(
    engines: Callable[..., Keystile],
) -> None:
    a = engines()
    key = a.keys.create("acct-1", "k")
    closed = engines(redis_url=CLOSED_REDIS)
    degraded = engines(redis_url=CLOSED_REDIS, on_backend_error="degrade")
    try:
        assert await aauth(closed, key.token) == "SVC_001"
        assert (await aauth(degraded, key.token)).key_id == key.key_id
    finally:
        await aclose(closed, degraded)


# ------------------------------------------------------------------------------- async


@pytest.mark.anyio
async def test_async_costs_match_the_sync_path(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "k")
    try:
        a_argon2 = count_argon2(monkeypatch, a)
        assert (await aauth(a, key.token)).key_id == key.key_id
        assert len(a_argon2) == 1
        a_calls = count_async_redis(monkeypatch, a)
        assert (await aauth(a, key.token)).key_id == key.key_id
        assert a_calls.names == ["EVALSHA"]
        assert len(a_argon2) == 1

        b_argon2, b_calls = count_argon2(monkeypatch, b), count_async_redis(monkeypatch, b)
        assert (await aauth(b, key.token)).key_id == key.key_id
        assert b_calls.names == ["EVALSHA", "EVALSHA"]  # fetch_known, then the meter
        b_calls.reset()
        assert (await aauth(b, key.token)).key_id == key.key_id
        assert b_calls.names == ["EVALSHA"]
        assert len(b_argon2) == 0

        forged = key.token[:-1] + ("A" if key.token[-1] != "A" else "B")
        b_calls.reset()
        assert await aauth(b, forged) == "AUTH_002"
        assert len(b_calls) == 0
    finally:
        await aclose(a, b)


@pytest.mark.anyio
@pytest.mark.parametrize("change", ["revoke", "permissions", "roll", "delete"])
async def test_async_management_takes_effect_on_the_next_request(
    engines: Callable[..., Keystile], change: str
) -> None:
    a, b = engines(), engines()
    key = a.keys.create("acct-1", "k", permissions=["read"])
    try:
        for ks in (a, b):
            assert (await aauth(ks, key.token)).key_id == key.key_id
        if change == "revoke":
            a.keys.revoke(key.key_id)
            assert await aauth(b, key.token) == "AUTH_003"
        elif change == "permissions":
            a.keys.update(key.key_id, permissions=["write"])
            assert (await aauth(b, key.token)).permissions == frozenset({"write"})
        elif change == "roll":
            rolled = a.keys.roll(key.key_id)
            assert await aauth(b, key.token) == "AUTH_002"
            assert (await aauth(b, rolled.token)).key_id == key.key_id
        else:
            a.keys.delete(key.key_id)
            assert await aauth(b, key.token) == "AUTH_002"
    finally:
        await aclose(a, b)


@pytest.mark.anyio
async def test_async_revoke_racing_a_verification_never_recaches_the_key(
    engines: Callable[..., Keystile], shared_store: KeyStore
) -> None:
    a = engines()
    key = a.keys.create("acct-1", "k")
    revoked: list[bool] = []

    def revoke_once(record: Any) -> None:
        if record is not None and record.revoked_at is None and not revoked:
            revoked.append(True)
            a.keys.revoke(key.key_id)

    b = engines(store=StoreProxy(shared_store, revoke_once))
    c = engines()
    try:
        await aauth(b, key.token)
        assert revoked == [True]
        parsed = tokens.parse_token(key.token, "sk", ("live", "test"))
        assert parsed is not None
        raw = b.redis.client.get(b.redis_keys.snapshot(parsed.kid, b.digest(parsed)))
        assert raw is None or raw == NEGATIVE or Snapshot.loads(raw).revoked
        assert await aauth(b, key.token) == "AUTH_003"
        assert await aauth(c, key.token) == "AUTH_003"
    finally:
        await aclose(b, c)


# ------------------------------------------------------------------------- last use


def test_last_used_at_is_batched(
    engines: Callable[..., Keystile], clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines(clock=clock, last_used_interval=3600, usage_flush_interval=3600)
    key = ks.keys.create("acct-1", "k")
    other = ks.keys.create("acct-1", "other")
    touches: list[dict[str, Any]] = []
    original = ks.store.touch

    def touch(batch: Any) -> None:
        touches.append(dict(batch))
        original(batch)

    monkeypatch.setattr(ks.store, "touch", touch)
    for _ in range(5):
        auth(ks, key.token)
        clock.advance(1)
    auth(ks, other.token)
    assert touches == []  # nothing written per request
    assert ks.keys.get(key.key_id).last_used_at is None
    ks.flush()
    assert len(touches) == 1  # one write for every key used since the last flush
    assert set(touches[0]) == {kid_of(key.token), kid_of(other.token)}
    last = ks.keys.get(key.key_id).last_used_at
    assert last is not None
    assert last.timestamp() == clock.now - 1  # the time of the last use, by the engine's clock
    ks.flush()
    assert len(touches) == 1  # nothing new: no write


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_last_used_is_flushed_in_the_background_and_never_fails_a_request(
    engines: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = engines(last_used_interval=0)  # the flusher runs every 50 ms
    key = ks.keys.create("acct-1", "k")
    auth(ks, key.token)
    assert _wait_for(lambda: ks.keys.get(key.key_id).last_used_at is not None)

    def broken(batch: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(ks.store, "touch", broken)
    assert auth(ks, key.token).key_id == key.key_id  # a lost last use is not worth a 500
    ks.flush()  # logs, never raises


@pytest.mark.anyio
async def test_last_used_async_requests_are_recorded_too(
    engines: Callable[..., Keystile],
) -> None:
    ks = engines(last_used_interval=3600, usage_flush_interval=3600)
    key = ks.keys.create("acct-1", "k")
    try:
        assert (await aauth(ks, key.token)).key_id == key.key_id
        assert ks.keys.get(key.key_id).last_used_at is None
        await asyncio.to_thread(ks.flush)
        assert ks.keys.get(key.key_id).last_used_at is not None
    finally:
        await aclose(ks)
