"""The in-process cache: junk tokens cannot evict verified keys, and a key changed while it
was being verified is not cached in its old state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from keystile import AuthError, Keystile
from keystile._core import tokens
from keystile._core.errors import EXPIRED_API_KEY
from keystile._core.localcache import LocalCache

Make = Callable[..., Keystile]


def test_negative_entries_have_their_own_room() -> None:
    cache: LocalCache[str] = LocalCache(3, lambda: 0.0)
    for n in range(3):
        cache.put(f"good{n}", f"kid{n}", "snapshot", 10)
    for n in range(100):
        cache.put(f"junk{n}", f"other{n}", "negative", 10, negative=True)
    assert [cache.get(f"good{n}") for n in range(3)] == ["snapshot"] * 3
    assert cache.get("junk99") == "negative" and cache.get("junk0") is None
    assert len(cache) == 6
    cache.drop_group("kid0")
    assert cache.get("good0") is None


def test_an_entry_changes_kind_without_leaving_a_copy() -> None:
    cache: LocalCache[str] = LocalCache(3, lambda: 0.0)
    cache.put("d", "kid", "negative", 10, negative=True)
    cache.put("d", "kid", "snapshot", 10)
    assert cache.get("d") == "snapshot" and len(cache) == 1
    cache.drop("d")
    assert cache.get("d") is None and len(cache) == 0


def test_a_put_after_a_group_drop_is_skipped() -> None:
    cache: LocalCache[str] = LocalCache(3, lambda: 0.0)
    epoch = cache.epoch
    cache.drop_group("kid")  # the key changed after its value was read
    cache.put("d", "kid", "old state", 10, epoch=epoch)
    assert cache.get("d") is None
    cache.put("d", "kid", "new state", 10, epoch=cache.epoch)
    assert cache.get("d") == "new state"


def random_token() -> str:
    kid = tokens.new_kid()
    return tokens.format_token("sk", "live", kid, tokens.new_secret(kid))


def test_a_flood_of_unknown_keys_does_not_cost_a_known_key_argon2(
    make_keystile: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = make_keystile(local_cache_size=5)
    key = ks.keys.create("acct_1", "k")
    runs: list[int] = []
    verify = ks.hasher.verify
    monkeypatch.setattr(ks.hasher, "verify", lambda *a: runs.append(1) or verify(*a))
    ks.authenticate([("x-api-key", key.token)])
    for _ in range(50):
        with pytest.raises(AuthError):
            ks.authenticate([("x-api-key", random_token())])
    ks.authenticate([("x-api-key", key.token)])
    assert len(runs) == 1


def test_without_redis_a_revoke_racing_a_verification_is_not_undone(
    make_keystile: Make,
) -> None:
    ks = make_keystile()
    key = ks.keys.create("acct_1", "k")
    kid = key.key_id.removeprefix("key_")
    read = ks.store.get
    revoked: list[Any] = []

    def get_then_revoke(wanted: str) -> Any:
        record = read(wanted)
        if wanted == kid and not revoked:  # the revoke lands right after this read
            revoked.append(True)
            ks.keys.revoke(key.key_id)
        return record

    ks.store.get = get_then_revoke  # type: ignore[method-assign]
    ks.authenticate([("x-api-key", key.token)])  # raced the revoke: may pass
    assert revoked
    for _ in range(3):  # after it, never
        with pytest.raises(AuthError) as refused:
            ks.authenticate([("x-api-key", key.token)])
        assert refused.value.spec is EXPIRED_API_KEY
