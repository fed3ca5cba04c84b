"""The credentials of admitted keys, remembered by their headers: what is remembered, what is
not, and that remembering one never skips a check. Without Redis: no I/O but the engine's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from keystile import AuthError, Keystile
from keystile._core.credentialreader import CredentialReader
from keystile._core.settings import load_settings
from keystile._core.tokens import format_token, new_secret
from keystile.stores import KeyStore

FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
ACCOUNT = "acct_reader"


@pytest.fixture
def ks() -> Iterator[Keystile]:
    engine = Keystile({"store": "memory://", "argon2": FAST_ARGON2})
    yield engine
    engine.close()


def bearer(token: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("host", "api.example"), ("authorization", f"Bearer {token}"), *extra]


def refusal(ks: Keystile, headers: list[tuple[str, str]]) -> str:
    with pytest.raises(AuthError) as info:
        ks.authenticate(headers)
    return info.value.code


def remembered(ks: Keystile, headers: list[tuple[str, str]]) -> bool:
    return ks.credentials.read(headers)[2] is None


def test_an_admitted_credential_is_read_by_lookup_and_gives_what_parsing_gave(
    ks: Keystile,
) -> None:
    token = ks.keys.create(ACCOUNT, "k").token
    headers = bearer(token)
    parsed, digest, _ = ks.credentials.read(headers)
    principal = ks.authenticate(headers)  # verified: the key is in the in-process cache now
    assert not remembered(ks, headers)
    ks.authenticate(headers)  # admitted from the cache: remembered
    assert remembered(ks, headers)
    again, again_digest, _ = ks.credentials.read(list(headers))
    assert again_digest == digest
    assert again.token.secret == ""  # remembered without the secret
    assert again._replace(token=parsed.token) == parsed
    assert ks.authenticate(headers).key_id == principal.key_id
    # The same token in another header, or acting for another account, is another entry.
    assert not remembered(ks, [("x-api-key", token)])
    assert not remembered(ks, bearer(token, ("x-account-id", "acct_other")))


def test_refused_and_unknown_credentials_are_not_remembered(ks: Keystile) -> None:
    key = ks.keys.create(ACCOUNT, "k")
    assert refusal(ks, bearer(key.token[:-1] + "x")) == "AUTH_002"  # bad checksum
    ks.keys.revoke(key.key_id)
    assert refusal(ks, bearer(key.token)) == "AUTH_003"
    assert not remembered(ks, bearer(key.token))
    live = ks.keys.create(ACCOUNT, "live")
    ks.authenticate(bearer(live.token))
    kid = live.key_id.removeprefix("key_")
    forged = format_token("sk", "live", kid, new_secret(kid))  # its id, another secret
    assert refusal(ks, bearer(forged)) == "AUTH_002"
    assert not remembered(ks, bearer(forged))


def test_a_remembered_credential_is_still_checked_on_every_request(ks: Keystile) -> None:
    """Only the reading is skipped: revocation, the header rules and the account still apply."""
    key = ks.keys.create(ACCOUNT, "k", accounts=["acct_second"])
    headers = bearer(key.token)
    ks.authenticate(headers)
    ks.authenticate(headers)
    assert remembered(ks, headers)
    twice = [*headers, ("authorization", f"Bearer {key.token}")]
    assert refusal(ks, twice) == "AUTH_006"  # a header sent twice: still a 400
    assert refusal(ks, bearer(key.token, ("x-account-id", "acct_not_its"))) == "AUTH_005"
    ks.keys.revoke(key.key_id)
    assert refusal(ks, headers) == "AUTH_003"  # revoked: refused on the very next request


def test_nothing_remembered_holds_a_secret_and_a_cold_request_reads_it_again(
    ks: Keystile,
) -> None:
    key = ks.keys.create(ACCOUNT, "k")
    headers = bearer(key.token)
    ks.authenticate(headers)
    ks.authenticate(headers)
    secret = key.token.rsplit("_", 1)[1]
    remembered_values = list(ks.credentials._known.items())
    assert remembered_values and all(secret not in repr(v) for v in remembered_values)
    assert all(key.token.encode() not in name for name, _ in remembered_values)
    # The key leaves the in-process cache (as on a change): the request verifies the secret
    # again, read from its headers, and is admitted.
    ks.local.clear()
    assert ks.authenticate(headers).key_id == key.key_id
    wrong = f"{key.token.rsplit('_', 1)[0]}_{new_secret(key.key_id[4:])}"
    assert refusal(ks, bearer(wrong)) == "AUTH_002"


def test_the_memory_is_bounded_by_the_in_process_cache_size() -> None:
    def reader(size: int) -> tuple[CredentialReader, list[list[tuple[str, str]]]]:
        engine = Keystile({"store": "memory://", "argon2": FAST_ARGON2})
        tokens = [engine.keys.create(ACCOUNT, f"k{i}").token for i in range(5)]
        engine.close()
        settings: Any = load_settings({"store": "memory://", "local_cache_size": size})
        return CredentialReader(settings, b"s" * 32), [bearer(t) for t in tokens]

    small, headers = reader(3)
    for h in headers:
        creds, digest, key = small.read(h)
        assert key is not None
        small.remember(key, creds, digest)
    # Full at three: cleared for the fourth, which stays with the fifth.
    assert [small.read(h)[2] is None for h in headers] == [False, False, False, True, True]
    none, headers = reader(0)
    creds, digest, key = none.read(headers[0])
    assert key is not None
    none.remember(key, creds, digest)
    assert none.read(headers[0])[2] is not None  # a cache of size 0 remembers nothing


@pytest.mark.redis
def test_a_stale_remembered_credential_is_verified_again_with_its_secret(
    redis_settings: dict[str, Any], shared_store: KeyStore
) -> None:
    """Strict mode: another process changed the key, so the meter script finds this
    process's snapshot stale; the request is verified again, secret and all, and admitted."""
    settings = {**redis_settings, "argon2": FAST_ARGON2, "store": "memory://"}
    with (
        Keystile(settings, store=shared_store) as here,
        Keystile(settings, store=shared_store) as there,
    ):
        key = here.keys.create(ACCOUNT, "k", permissions=["jobs:read"])
        headers = bearer(key.token)
        here.authenticate(headers)
        here.authenticate(headers)
        assert remembered(here, headers)
        there.keys.update(key.key_id, permissions=["jobs:write"])
        assert here.authenticate(headers).permissions == frozenset({"jobs:write"})
        assert remembered(here, headers)
