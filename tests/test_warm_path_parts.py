"""The warm path's parts, one by one: ASGI header bytes read lazily, credentials named by their
raw bytes, principals built unfrozen, the lock-free cache, counters that feed the usage buffer,
and a settle that costs no coroutine. Pure unit tests: no Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import random
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import pytest

from keystile import AuthError, Keystile
from keystile._core.credentials import Credentials, asgi_headers
from keystile._core.errors import MALFORMED_CREDENTIALS
from keystile._core.localcache import LocalCache
from keystile._core.localcounters import LocalCounters
from keystile._core.metering import Charge, UsageBuffer, UsageDelta
from keystile._core.periods import PeriodPolicy
from keystile._core.principal import Principal, Unfrozen
from keystile._core.ratelimits import parse_rate
from keystile._core.rawheaders import RawHeaders
from keystile._core.snapshot import Snapshot
from keystile._core.verification import principal_of
from keystile._runtime.awaitables import DONE

FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
Raw = list[tuple[bytes, bytes]]
Key = dict[str, bytes]  # token, key_id and secret, as header bytes


@pytest.fixture
def ks() -> Iterator[Keystile]:
    engine = Keystile({"store": "memory://", "argon2": FAST_ARGON2})
    yield engine
    engine.close()


@pytest.fixture
def key(ks: Keystile) -> Key:
    made = ks.keys.create("acct_1", "name")
    secret = made.token.rsplit("_", 1)[1]
    return {"token": made.token.encode(), "key_id": made.key_id.encode(), "secret": secret.encode()}


def bearer(key: Key, *extra: tuple[bytes, bytes]) -> Raw:
    return [(b"host", b"api.example"), (b"authorization", b"Bearer " + key["token"]), *extra]


def remember(ks: Keystile, raw: Raw) -> tuple[Credentials, str]:
    """Read ``raw`` (not known yet) and remember it, as the engine does for an admitted key."""
    creds, digest, name = ks.credentials.read_raw(raw)
    assert name is not None
    ks.credentials.remember(name, creds, digest)
    return creds, digest


def refusal_code(call: Any, headers: Any) -> str:
    with pytest.raises(AuthError) as info:
        call(headers)
    return info.value.code


# -- RawHeaders --------------------------------------------------------------------------
def test_raw_headers_decode_only_when_read_and_match_asgi_headers() -> None:
    raw = [(b"Host", b"api"), (b"User-Agent", b"caf\xe9"), (b"authorization", b"Bearer tok")]
    headers = RawHeaders(raw)
    assert len(headers) == 3 and headers._decoded is None  # len() must not decode
    expected = asgi_headers(raw)
    assert list(headers) == expected and headers._decoded is not None
    assert headers[0] == ("host", "api") and headers[-1] == expected[-1]
    assert headers[1:] == expected[1:]
    assert ("user-agent", "café") in headers  # Sequence mixins work on the decoded pairs
    assert list(reversed(headers)) == expected[::-1]
    assert headers.raw is raw


def test_raw_headers_repr_never_shows_a_value() -> None:
    headers = RawHeaders([(b"authorization", b"Bearer sk_live_secret"), (b"x-api-key", b"k2")])
    list(headers)  # decoded or not, the repr stays the same
    for shown in (repr(headers), str(headers)):
        assert "secret" not in shown and "Bearer" not in shown and "k2" not in shown
        assert "2 headers" in shown


# -- CredentialReader.read_raw -----------------------------------------------------------

FORMS = {  # form: (the headers, the auth_method they make)
    "bearer": (lambda k: bearer(k), "bearer"),
    "api_key": (lambda k: [(b"x-api-key", k["token"]), (b"accept", b"*/*")], "api_key"),
    "key_secret": (lambda k: [(b"x-api-key", k["key_id"]), (b"x-api-secret", k["secret"])], ""),
    "account": (lambda k: bearer(k, (b"x-account-id", b"acct_other")), "bearer"),
}


@pytest.mark.parametrize("form", FORMS)
def test_read_raw_gives_what_reading_the_decoded_pairs_gives(
    ks: Keystile, key: Key, form: str
) -> None:
    build, method = FORMS[form]
    raw = build(key)
    creds, digest, name = ks.credentials.read_raw(raw)
    decoded_creds, decoded_digest, _ = ks.credentials.read(asgi_headers(raw))
    assert (creds, digest) == (decoded_creds, decoded_digest)
    assert creds.token.secret and name is not None
    assert creds.account_id == ("acct_other" if form == "account" else None)
    assert creds.auth_method == (method or form)
    # read() hands RawHeaders to read_raw: the same triple, name included.
    assert ks.credentials.read(RawHeaders(raw)) == (creds, digest, name)


def test_a_remembered_raw_credential_is_found_without_its_secret(ks: Keystile, key: Key) -> None:
    raw = bearer(key)
    creds, digest = remember(ks, raw)
    again, again_digest, again_name = ks.credentials.read_raw(list(raw))
    assert again_name is None and again_digest == digest
    assert again.token.secret == ""  # nothing secret is kept
    assert again._replace(token=creds.token) == creds
    # whole() reads the secret back from the headers, for a request that must verify it.
    assert ks.credentials.whole(again, RawHeaders(raw)) == creds


BAD = {
    "duplicate": lambda k: [*bearer(k), (b"authorization", b"Bearer " + k["token"])],
    "duplicate_mixed_case": lambda k: [*bearer(k), (b"Authorization", b"Bearer " + k["token"])],
    "duplicate_account": lambda k: bearer(k, (b"x-account-id", b"a"), (b"x-account-id", b"a")),
    "comma": lambda k: [(b"authorization", b"Bearer " + k["token"] + b",x")],
    "secret_without_key_id": lambda k: [(b"x-api-secret", k["secret"])],
}


@pytest.mark.parametrize("case", BAD)
def test_ambiguous_raw_headers_are_refused_like_decoded_ones_even_once_remembered(
    ks: Keystile, key: Key, case: str
) -> None:
    remember(ks, bearer(key))  # the single, valid form is known now
    bad = BAD[case](key)
    raw_code = refusal_code(ks.credentials.read_raw, bad)
    assert raw_code == refusal_code(ks.credentials.read, asgi_headers(bad))
    assert raw_code == MALFORMED_CREDENTIALS.code


def test_uppercase_raw_names_name_the_same_credential(ks: Keystile, key: Key) -> None:
    upper = [(b"Host", b"api.example"), (b"Authorization", b"Bearer " + key["token"])]
    assert ks.credentials.read_raw(upper) == ks.credentials.read_raw(bearer(key))
    digest = remember(ks, bearer(key))[1]
    assert ks.credentials.read_raw(upper)[1:] == (digest, None)  # found by either spelling


def test_whitespace_or_an_idempotency_key_make_another_name(ks: Keystile, key: Key) -> None:
    plain = ks.credentials.read_raw([(b"authorization", b"Bearer " + key["token"])])
    padded = ks.credentials.read_raw([(b"authorization", b" Bearer " + key["token"] + b"\t")])
    assert plain[2] != padded[2]  # the name digests the bytes as they came...
    assert plain[:2] == padded[:2]  # ...but they carry the same credential
    assert not plain[0].idempotent
    idempotent = ks.credentials.read_raw(bearer(key, (b"Idempotency-Key", b"abc")))
    assert idempotent[0].idempotent and idempotent[2] != plain[2]


# -- the engine, end to end --------------------------------------------------------------
def test_authenticate_async_with_raw_headers(ks: Keystile, key: Key) -> None:
    raw = bearer(key, (b"user-agent", b"x"))

    async def run() -> list[tuple[Principal, RawHeaders]]:
        done = []
        for _ in range(3):  # verified, then admitted warm (remembered), then found by name
            headers = RawHeaders(raw)
            principal = await ks.authenticate_async(headers, "GET", "/")
            await ks.settle_async(principal, 200)
            done.append((principal, headers))
        return done

    done = asyncio.run(run())
    for principal, _ in done:
        assert principal.key_id == key["key_id"].decode() and principal.account_id == "acct_1"
    assert ks.credentials.read_raw(raw)[2] is None
    # A remembered credential on the warm path decodes no header at all.
    assert done[-1][1]._decoded is None


def test_a_page_cost_callable_sees_decoded_headers() -> None:
    seen: list[list[tuple[str, str]]] = []

    def cost(request: Any) -> int:
        seen.append(list(request.headers))
        assert request.header("user-agent") == "x"
        return 1

    engine = Keystile({"store": "memory://", "argon2": FAST_ARGON2, "page_cost": cost})
    try:
        token = engine.keys.create("acct_1", "name").token.encode()
        raw = [(b"authorization", b"Bearer " + token), (b"User-Agent", b"x")]
        for _ in range(2):  # the steps' path, then the warm path
            asyncio.run(engine.authenticate_async(RawHeaders(raw), "GET", "/"))
    finally:
        engine.close()
    assert len(seen) >= 2
    for headers in seen:
        assert headers == asgi_headers(raw) and ("user-agent", "x") in headers
        assert all(type(n) is str and type(v) is str for n, v in headers)


# -- principals built unfrozen -----------------------------------------------------------
def test_the_request_paths_principal_is_a_real_frozen_principal() -> None:
    snapshot = Snapshot(
        "kid1", "acct_1", "n", "o", "live", ("read",), (), {}, 1_900_000_000.0, False, True,
        1_800_000_000.0, "v1",
    )  # fmt: skip
    built = principal_of(snapshot, "acct_2", "bearer", None)
    made = Principal(
        key_id="key_kid1", account_id="acct_2", name="n", owner="o", environment="live",
        permissions=frozenset({"read"}), auth_method="bearer",
        expires_at=datetime.fromtimestamp(1_900_000_000, timezone.utc), key_account_id="acct_1",
        meta={}, meter=None, session_id=None,
        previous_secret_expires_at=datetime.fromtimestamp(1_800_000_000, timezone.utc),
    )  # fmt: skip
    assert type(built) is Principal and not isinstance(built, Unfrozen)
    for field in dataclasses.fields(Principal):  # every slot set, none swapped
        assert getattr(built, field.name) == getattr(made, field.name), field.name
    assert built == made and repr(built) == repr(made) and built.used_previous_secret
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.key_id = "other"  # type: ignore[misc]
    assert dataclasses.replace(built, name="m").name == "m"
    assert dataclasses.asdict(built) == dataclasses.asdict(made)
    if pickle.loads(pickle.dumps(made)) == made:  # only if the dataclass itself pickles
        assert pickle.loads(pickle.dumps(built)) == made


# -- LocalCache --------------------------------------------------------------------------
def test_a_get_keeps_its_key_from_eviction() -> None:
    cache: LocalCache[str] = LocalCache(2, lambda: 0.0)
    cache.put("a", "g", "A", 10)
    cache.put("b", "g", "B", 10)
    assert cache.get("a") == "A"  # "a" is now the most recent: "b" goes first
    cache.put("c", "g", "C", 10)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    assert cache._groups == {"g": {"a", "c"}}


def test_expired_entries_are_removed_on_get_and_negatives_keep_apart() -> None:
    now = [0.0]
    cache: LocalCache[str] = LocalCache(2, lambda: now[0])
    cache.put("good", "kid", "snapshot", 10)
    cache.put("junk", "other", "negative", 5, negative=True)
    cache.put("junk2", "other", "negative", 5, negative=True)
    cache.put("junk3", "other", "negative", 5, negative=True)  # evicts junk, not good
    assert cache.get("good") == "snapshot" and cache.get("junk") is None
    now[0] = 5.0
    assert cache.get("junk2") is None and cache.get("good") == "snapshot"
    assert cache.get("good", now=10.0) is None  # the caller's clock decides
    assert len(cache) == 1 and "good" not in cache._entries
    assert cache._groups == {"other": {"junk3"}}


def test_the_cache_stays_consistent_under_threads() -> None:
    size, now, errors = 8, [0.0], []
    cache: LocalCache[int] = LocalCache(size, lambda: now[0])

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for n in range(2_000):
                key, group, op = f"k{rng.randrange(24)}", f"g{rng.randrange(5)}", rng.random()
                if op < 0.5:
                    cache.get(key, now[0] if n % 2 else None)
                elif op < 0.85:
                    cache.put(key, group, n, rng.randrange(1, 20), negative=rng.random() < 0.3)
                elif op < 0.93:
                    cache.drop_group(group)
                elif op < 0.96:
                    cache.clear()
                else:
                    now[0] += 1.0  # some entries expire, so gets take the locked branch
        except Exception as exc:  # reported below: a thread's error is lost otherwise
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: more interleavings in the same ops
    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert len(cache) <= 2 * size and len(cache._entries) <= size >= len(cache._negatives)
    for group, members in cache._groups.items():
        assert members, group  # no empty group is left behind
        for member in members:
            entry = cache._entries.get(member) or cache._negatives.get(member)
            assert entry is not None and entry[1] == group, (group, member)
    # And the other way: every entry can still be dropped with its group.
    for member, (_, group, _) in [*cache._entries.items(), *cache._negatives.items()]:
        assert member in cache._groups.get(group, ()), (group, member)


# -- LocalCounters feeding the usage buffer ----------------------------------------------

PERIOD = PeriodPolicy(1, "UTC").period_at(datetime(2026, 12, 2, tzinfo=timezone.utc))


def counters_with(limit: int | None, thresholds: Sequence[float] = ()) -> LocalCounters:
    counters = LocalCounters(UsageBuffer())
    counters.seed("acct", PERIOD.label, "live", {"pages": 0}, limit, thresholds)
    return counters


def pending(counters: LocalCounters) -> list[UsageDelta]:
    assert counters._buffer is not None
    return counters._buffer.take()


def test_admitted_charges_reach_the_buffer_under_one_lock() -> None:
    buffer = UsageBuffer()
    assert LocalCounters(buffer)._lock is buffer.lock  # one lock, not two
    counters = counters_with(None)
    charge = Charge("acct", "live", "k1", None, PERIOD, 2, None)
    assert counters.meter(charge, None, (), 0.0, 60).result == "ok"  # type: ignore[union-attr]
    free = Charge("acct", "live", "k1", None, PERIOD, 3, None, count_request=False)
    assert counters.meter(free, None, (), 0.0, 60).result == "ok"  # type: ignore[union-attr]
    assert pending(counters) == [UsageDelta("acct", PERIOD.label, "live", "k1", 5, 1)]
    # A charge crossing a threshold returns by another branch: it is added all the same.
    marked = counters_with(10, (0.5,))
    outcome = marked.meter(Charge("acct", "live", "k1", None, PERIOD, 6, None), 10, (0.5,), 0, 60)
    assert outcome is not None and outcome.result == "ok" and outcome.crossed == (0.5,)
    assert pending(marked) == [UsageDelta("acct", PERIOD.label, "live", "k1", 6, 1)]
    unseeded = LocalCounters(UsageBuffer())  # None: seed it from the store first
    assert unseeded.meter(charge, None, (), 0.0, 60) is None and pending(unseeded) == []


@pytest.mark.parametrize("refused", ["exceeded", "replay", "rate_limited"])
def test_refused_charges_add_nothing_to_the_buffer(refused: str) -> None:
    counters = counters_with(3)
    charge = Charge(
        "acct", "live", "k1", None, PERIOD, 2, "idem1" if refused == "replay" else None,
        rate=parse_rate("1/min") if refused == "rate_limited" else None,
    )  # fmt: skip
    first = counters.meter(charge, 3, (), 0.0, 60)
    assert first is not None and first.result == "ok"
    pending(counters)  # the admitted one, taken
    second = counters.meter(charge, 3, (), 1.0, 60)
    assert second is not None and second.result == refused
    assert pending(counters) == []


# -- settle_async ------------------------------------------------------------------------
def test_settle_async_without_redis_is_done_and_still_settles(ks: Keystile, key: Key) -> None:
    headers = asgi_headers(bearer(key))
    principal = ks.authenticate(headers)
    assert ks.settle_async(principal, 200) is DONE
    assert ks.settle_async(None, 200) is DONE
    assert ks.settle_async(dataclasses.replace(principal, meter=None), 200) is DONE
    refunded = ks.authenticate(headers)
    assert refunded.meter is not None
    usage = ks.admission.counters._usage[refunded.meter.charge_info.counter]
    assert usage["pages"] == 2
    settled = ks.settle_async(refunded, 500)  # not counted: refunded, in this process
    assert settled is DONE and usage["pages"] == 1

    async def twice() -> None:
        await settled  # the one DONE can be awaited any number of times
        await DONE

    assert asyncio.run(twice()) is None
