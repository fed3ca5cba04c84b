"""Key life through the public API: create, get, list, update, revoke, roll, delete, and what
authentication makes of each state. Runs on the in-memory store and on a real SQLite file."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from keystile import ApiKey, AuthError, CreatedKey, InvalidInput, Keystile, NotFound
from keystile._core.errors import (
    ACCOUNT_FORBIDDEN,
    EXPIRED_API_KEY,
    INVALID_API_KEY,
    ErrorSpec,
)
from keystile._core.tokens import format_token, new_secret, parse_token

from .conftest import FAST_ARGON2, Clock

ACCT = "acct-a"
STRONGER_ARGON2 = {"time_cost": 2, "memory_cost": 16, "parallelism": 1}


def bearer(token: str, account: str | None = None) -> list[tuple[str, str]]:
    headers = [("authorization", f"Bearer {token}")]
    if account is not None:
        headers.append(("x-account-id", account))
    return headers


def refused(ks: Keystile, headers: list[tuple[str, str]]) -> ErrorSpec:
    with pytest.raises(AuthError) as info:
        ks.authenticate(headers)
    return info.value.spec


def kid_of(created: CreatedKey) -> str:
    return created.key_id.removeprefix("key_")


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "memory":
        return "memory://"
    return "sqlite:///" + str(tmp_path / "keys.db")


@pytest.fixture
def ks(make_keystile: Callable[..., Keystile], clock: Clock, store_url: str) -> Keystile:
    return make_keystile(clock=clock, store=store_url)


# -- create -----------------------------------------------------------------------------------


def test_create_returns_the_token_once(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci", permissions=["read"])
    parsed = parse_token(created.token, "sk", ("live", "test"))
    assert parsed is not None
    assert created.key_id == parsed.key_id == created.key.id
    assert created.secret == parsed.secret
    assert created.token.endswith("_" + created.secret)
    principal = ks.authenticate(bearer(created.token))
    assert principal.key_id == created.key_id
    assert principal.account_id == ACCT
    assert principal.auth_method == "bearer"
    # Nothing readable afterwards holds the token or the secret.
    record = ks.store.get(kid_of(created))
    assert record is not None
    assert created.secret not in record.secret_hash
    assert record.secret_hash.startswith("$argon2id$")
    for shown in (ks.keys.get(created.key_id), ks.keys.list(ACCT).items[0]):
        text = repr(shown) + json.dumps(shown.to_dict())
        assert created.secret not in text
        assert created.token not in text


def test_tokens_are_unique(ks: Keystile) -> None:
    created = [ks.keys.create(ACCT, f"k{i}") for i in range(10)]
    assert len({c.token for c in created}) == 10
    assert len({c.key_id for c in created}) == 10


def test_created_key_repr_hides_token(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci")
    for text in (repr(created), str(created)):
        assert created.token not in text
        assert created.secret not in text
        assert created.key_id in text


def test_api_key_has_no_secret_or_hash(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci", meta={"team": "infra"})
    key = ks.keys.get(created.key_id)
    assert isinstance(key, ApiKey)
    for attr in ("secret", "secret_hash", "previous_hash", "token", "hash", "kid"):
        assert not hasattr(key, attr), attr
    data = key.to_dict()
    assert not {"secret", "secret_hash", "previous_hash", "token"} & set(data)
    encoded = json.dumps(data)
    record = ks.store.get(kid_of(created))
    assert record is not None
    for text in (repr(key), str(key), encoded, repr(record)):
        assert created.secret not in text
        assert created.token not in text
        assert record.secret_hash not in text
        assert created.secret[:12] not in text


def test_api_key_fields(ks: Keystile, clock: Clock) -> None:
    expires = ks.now() + timedelta(days=30)
    created = ks.keys.create(
        ACCT,
        "  deploy bot  ",
        permissions=["read", "write", "read"],
        environment="test",
        expires_at=expires,
        owner="alice@example.com",
        accounts=["acct-b", "acct-b", ACCT, "acct-c"],
        meta={"team": "infra", "n": 1, "nested": {"a": [1, 2]}},
    )
    key = ks.keys.get(created.key_id)
    assert key == created.key
    assert key.name == "deploy bot"
    assert key.permissions == ("read", "write")
    assert key.environment == "test"
    assert key.expires_at == expires
    assert key.owner == "alice@example.com"
    assert key.accounts == ("acct-b", "acct-c")
    assert dict(key.meta) == {"team": "infra", "n": 1, "nested": {"a": [1, 2]}}
    assert key.created_at == datetime.fromtimestamp(clock.now, timezone.utc)
    assert key.created_at.tzinfo is not None
    assert key.last_used_at is None and key.revoked_at is None
    assert key.enabled is True
    assert key.status(ks.now()) == "active"
    assert created.token.startswith("sk_test_")


def test_api_key_is_immutable(ks: Keystile) -> None:
    key = ks.keys.create(ACCT, "ci", meta={"a": 1}).key
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        key.meta["a"] = 2  # type: ignore[index]
    assert ks.keys.get(key.id).meta["a"] == 1


@pytest.mark.parametrize("environment", ["live", "test"])
def test_preview(ks: Keystile, environment: str) -> None:
    created = ks.keys.create(ACCT, "ci", environment=environment)
    assert created.key.preview == f"sk_{environment}_…{created.token[-4:]}"
    assert ks.keys.get(created.key_id).preview == created.key.preview
    assert created.secret[:-4] not in created.key.preview


def test_preview_uses_custom_prefix(make_keystile: Callable[..., Keystile]) -> None:
    ks = make_keystile(token_prefix="acme", environments=["prod", "dev"])
    created = ks.keys.create(ACCT, "ci", environment="dev")
    assert created.token.startswith("acme_dev_")
    assert created.key.preview == f"acme_dev_…{created.token[-4:]}"
    assert ks.authenticate(bearer(created.token)).environment == "dev"


def test_accepted_edge_values(ks: Keystile) -> None:
    created = ks.keys.create(
        "a" * 128,
        "n" * 200,
        permissions=["apikeys:*", "a/b.c-d_e", "x" * 100, *[f"p{i}" for i in range(197)]],
        owner="o" * 200,
        accounts=["Z", "org:team@x.y-z"],
        meta={"k": "v" * 4000},
    )
    assert created.key.account_id == "a" * 128
    assert len(created.key.permissions) == 200
    assert ks.keys.create("Z9", "n", permissions=[], owner=None, meta=None).key.meta == {}


_NAIVE = datetime(2099, 1, 1)
_PAST = datetime(2000, 1, 1, tzinfo=timezone.utc)
_circular: dict[str, Any] = {}
_circular["self"] = _circular

INVALID_CREATE = [
    ("account_id", {"account_id": ""}),
    ("account_id", {"account_id": " "}),
    ("account_id", {"account_id": "a b"}),
    ("account_id", {"account_id": "-a"}),
    ("account_id", {"account_id": ".a"}),
    ("account_id", {"account_id": "é"}),
    ("account_id", {"account_id": "a" * 129}),
    ("account_id", {"account_id": None}),
    ("account_id", {"account_id": 42}),
    ("account_id", {"account_id": "a\x00"}),
    ("name", {"name": ""}),
    ("name", {"name": "   "}),
    ("name", {"name": "x" * 201}),
    ("name", {"name": "a\nb"}),
    ("name", {"name": "a\x00b"}),
    ("name", {"name": "a\u2028b"}),
    ("name", {"name": None}),
    ("name", {"name": 5}),
    ("permissions", {"permissions": "read"}),
    ("permissions", {"permissions": 5}),
    ("permissions", {"permissions": None}),
    ("permissions", {"permissions": [5]}),
    ("permissions", {"permissions": [None]}),
    ("permissions", {"permissions": ["has space"]}),
    ("permissions", {"permissions": [""]}),
    ("permissions", {"permissions": ["x" * 101]}),
    ("permissions", {"permissions": ["é"]}),
    ("permissions", {"permissions": ["read", "a\tb"]}),
    ("permissions", {"permissions": [f"p{i}" for i in range(201)]}),
    ("environment", {"environment": "prod"}),
    ("environment", {"environment": "sess"}),
    ("environment", {"environment": "LIVE"}),
    ("environment", {"environment": ""}),
    ("environment", {"environment": 7}),
    ("expires_at", {"expires_at": _NAIVE}),
    ("expires_at", {"expires_at": _PAST}),
    ("expires_at", {"expires_at": "2099-01-01T00:00:00Z"}),
    ("expires_at", {"expires_at": 4102444800}),
    ("meta", {"meta": "x"}),
    ("meta", {"meta": [("a", 1)]}),
    ("meta", {"meta": 5}),
    ("meta", {"meta": {"x": object()}}),
    ("meta", {"meta": {"x": {1, 2}}}),
    ("meta", {"meta": {"x": b"bytes"}}),
    ("meta", {"meta": {"x": _circular}}),
    ("meta", {"meta": {"x": "a" * 5000}}),
    ("meta", {"meta": {f"k{i}": "v" * 20 for i in range(300)}}),
    ("owner", {"owner": 5}),
    ("owner", {"owner": "o" * 201}),
    ("owner", {"owner": ["alice"]}),
    ("accounts", {"accounts": "acct-b"}),
    ("accounts", {"accounts": ["bad acct"]}),
    ("accounts", {"accounts": [None]}),
    ("accounts", {"accounts": ["é"]}),
    ("accounts", {"accounts": [""]}),
    ("accounts", {"accounts": ["ok", "a" * 129]}),
]


@pytest.mark.parametrize(
    "field,kwargs", INVALID_CREATE, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID_CREATE)]
)
def test_create_validation_names_the_field(
    ks: Keystile, field: str, kwargs: dict[str, Any]
) -> None:
    args: dict[str, Any] = {"account_id": ACCT, "name": "ci", **kwargs}
    with pytest.raises(InvalidInput) as info:
        ks.keys.create(**args)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    # Nothing was written.
    assert ks.keys.list(ACCT, include_revoked=True).total == 0


def test_create_defaults_to_the_first_configured_environment(make_keystile: Any) -> None:
    staging_first = make_keystile(environments=["staging", "live"])
    created = staging_first.keys.create(ACCT, "ci")
    assert created.key.environment == "staging"
    assert created.token.startswith("sk_staging_")
    assert staging_first.keys.create(ACCT, "ci", environment="live").key.environment == "live"


def test_expiry_exactly_now_is_refused(ks: Keystile) -> None:
    with pytest.raises(InvalidInput) as info:
        ks.keys.create(ACCT, "ci", expires_at=ks.now())
    assert info.value.field == "expires_at"


@pytest.mark.parametrize(
    "field,kwargs",
    [
        ("account_id", {"account_id": "acct\n"}),
        ("account_id", {"account_id": "a" * 128 + "\n"}),
        ("permissions", {"permissions": ["read\n"]}),
        ("accounts", {"accounts": ["acct-b\n"]}),
    ],
)
def test_trailing_newline_is_refused(ks: Keystile, field: str, kwargs: dict[str, Any]) -> None:
    # Regression: the patterns ended in '$', which also matches before a trailing newline.
    args: dict[str, Any] = {"account_id": ACCT, "name": "ci", **kwargs}
    with pytest.raises(InvalidInput) as info:
        ks.keys.create(**args)
    assert info.value.field == field


@pytest.mark.parametrize("accounts", [None, 5])
def test_non_iterable_accounts_is_invalid_input(ks: Keystile, accounts: Any) -> None:
    # Regression: accounts was iterated unchecked (TypeError instead of InvalidInput).
    with pytest.raises(InvalidInput) as info:
        ks.keys.create(ACCT, "ci", accounts=accounts)
    assert info.value.field == "accounts"


@pytest.mark.parametrize("number", [math.nan, math.inf])
def test_meta_with_nan_is_not_json(ks: Keystile, number: float) -> None:
    # Regression: json.dumps allowed NaN/Infinity, which are not JSON.
    with pytest.raises(InvalidInput) as info:
        ks.keys.create(ACCT, "ci", meta={"x": number})
    assert info.value.field == "meta"


# -- get / list -------------------------------------------------------------------------------


@pytest.mark.parametrize("key_id", ["", "key_", "nope", "key_AAAAAAAAAAAAAAAA", 42, None])
def test_get_unknown_is_not_found(ks: Keystile, key_id: Any) -> None:
    with pytest.raises(NotFound):
        ks.keys.get(key_id)


@pytest.mark.parametrize("step", [1.0, 0.0, 1e-7, 0.3333333])
def test_pagination_is_stable_and_complete(ks: Keystile, clock: Clock, step: float) -> None:
    original = []
    for i in range(25):
        original.append(ks.keys.create(ACCT, f"key {i}").key_id)
        clock.advance(step)
    ks.keys.create("acct-other", "not mine")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = ks.keys.list(ACCT, limit=7, cursor=cursor)
        pages += 1
        if pages == 1:
            assert page.total == 25
        assert len(page.items) <= 7
        seen.extend(key.id for key in page.items)
        # Keys created between page fetches must not disturb the walk.
        ks.keys.create(ACCT, f"late {pages}")
        clock.advance(step)
        cursor = page.next_cursor
        if cursor is None:
            break
        assert pages < 20
    assert len(seen) == len(set(seen)), "duplicates across pages"
    assert set(original) <= set(seen)
    assert all(ks.keys.get(key_id).account_id == ACCT for key_id in seen)


def test_pagination_order_is_newest_first(ks: Keystile, clock: Clock) -> None:
    ids = []
    for i in range(5):
        ids.append(ks.keys.create(ACCT, f"k{i}").key_id)
        clock.advance(1)
    page = ks.keys.list(ACCT, limit=100)
    assert [key.id for key in page.items] == ids[::-1]
    assert page.next_cursor is None
    assert page.total == 5


def test_pagination_exact_multiple_has_no_empty_last_page(ks: Keystile, clock: Clock) -> None:
    for i in range(10):
        ks.keys.create(ACCT, f"k{i}")
        clock.advance(1)
    first = ks.keys.list(ACCT, limit=5)
    second = ks.keys.list(ACCT, limit=5, cursor=first.next_cursor)
    assert len(first.items) == len(second.items) == 5
    assert second.next_cursor is None


def test_list_of_unknown_account_is_empty(ks: Keystile) -> None:
    page = ks.keys.list("nobody")
    assert list(page.items) == [] and page.total == 0 and page.next_cursor is None


@pytest.fixture
def named(ks: Keystile, clock: Clock) -> Keystile:
    for name in ["alpha one", "alpha two", "100% done", "a_b", "axb", "back\\slash", "plain"]:
        ks.keys.create(ACCT, name)
        clock.advance(1)
    ks.keys.create("acct-other", "alpha other")
    return ks


@pytest.mark.parametrize(
    "search,expected",
    [
        ("alpha", {"alpha one", "alpha two"}),
        ("two", {"alpha two"}),
        ("%", {"100% done"}),
        ("0%", {"100% done"}),
        ("_", {"a_b"}),
        ("a_b", {"a_b"}),
        ("\\", {"back\\slash"}),
        ("k\\s", {"back\\slash"}),
        ("zzz", set()),
        ("'; DROP TABLE keystile_keys; --", set()),
    ],
)
def test_search_by_name_is_literal(named: Keystile, search: str, expected: set[str]) -> None:
    page = named.keys.list(ACCT, search=search, limit=100)
    assert {key.name for key in page.items} == expected
    assert page.total == len(expected)


def test_empty_search_lists_all(named: Keystile) -> None:
    assert named.keys.list(ACCT, search="").total == 7
    assert named.keys.list(ACCT, search=None).total == 7


def test_environment_filter(ks: Keystile) -> None:
    live = {ks.keys.create(ACCT, f"live {i}").key_id for i in range(3)}
    test = {ks.keys.create(ACCT, f"test {i}", environment="test").key_id for i in range(2)}
    assert {k.id for k in ks.keys.list(ACCT, environment="live").items} == live
    page = ks.keys.list(ACCT, environment="test")
    assert {k.id for k in page.items} == test and page.total == 2
    assert ks.keys.list(ACCT).total == 5


def test_include_revoked(ks: Keystile) -> None:
    keep = ks.keys.create(ACCT, "keep").key_id
    gone = ks.keys.create(ACCT, "gone").key_id
    ks.keys.revoke(gone)
    page = ks.keys.list(ACCT)
    assert [k.id for k in page.items] == [keep] and page.total == 1
    page = ks.keys.list(ACCT, include_revoked=True)
    assert {k.id for k in page.items} == {keep, gone} and page.total == 2


def test_search_and_filters_combine(named: Keystile) -> None:
    named.keys.revoke(named.keys.list(ACCT, search="alpha one").items[0].id)
    named.keys.create(ACCT, "alpha test", environment="test")
    assert {k.name for k in named.keys.list(ACCT, search="alpha").items} == {
        "alpha two",
        "alpha test",
    }
    assert {k.name for k in named.keys.list(ACCT, search="alpha", environment="live").items} == {
        "alpha two"
    }
    page = named.keys.list(ACCT, search="alpha", include_revoked=True, environment="live")
    assert page.total == 2


@pytest.mark.parametrize(
    "cursor", ["garbage!!", "bm90LWEtY3Vyc29y", "é", "%%%", "YWJjfGtpZA", "////", "a"]
)
def test_bad_cursor(ks: Keystile, cursor: str) -> None:
    ks.keys.create(ACCT, "k")
    with pytest.raises(InvalidInput) as info:
        ks.keys.list(ACCT, cursor=cursor)
    assert info.value.field == "cursor"


@pytest.mark.parametrize(
    "field,kwargs",
    [
        ("limit", {"limit": 0}),
        ("limit", {"limit": 101}),
        ("limit", {"limit": -1}),
        ("limit", {"limit": True}),
        ("limit", {"limit": "5"}),
        ("limit", {"limit": 5.0}),
        ("search", {"search": "x" * 201}),
        ("search", {"search": 5}),
        ("environment", {"environment": "prod"}),
        ("account_id", {"account_id": "bad acct"}),
        ("account_id", {"account_id": None}),
    ],
)
def test_list_validation(ks: Keystile, field: str, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"account_id": ACCT, **kwargs}
    with pytest.raises(InvalidInput) as info:
        ks.keys.list(**args)
    assert info.value.field == field


# -- update -----------------------------------------------------------------------------------


def test_update_each_field(ks: Keystile, clock: Clock) -> None:
    created = ks.keys.create(ACCT, "old", permissions=["read"], meta={"a": 1})
    key_id = created.key_id
    assert ks.keys.update(key_id, name="  new  ").name == "new"
    assert ks.keys.update(key_id, permissions=["write", "admin:*"]).permissions == (
        "write",
        "admin:*",
    )
    later = ks.now() + timedelta(hours=1)
    assert ks.keys.update(key_id, expires_at=later).expires_at == later
    assert ks.keys.update(key_id, expires_at=None).expires_at is None
    assert dict(ks.keys.update(key_id, meta={"b": [2]}).meta) == {"b": [2]}
    assert dict(ks.keys.update(key_id, meta=None).meta) == {}
    assert ks.keys.update(key_id, enabled=False).enabled is False
    assert ks.keys.update(key_id, enabled=True).enabled is True
    key = ks.keys.get(key_id)
    assert (key.name, key.permissions, key.expires_at, dict(key.meta), key.enabled) == (
        "new",
        ("write", "admin:*"),
        None,
        {},
        True,
    )
    # Unchanged by updates.
    assert key.created_at == created.key.created_at
    assert key.preview == created.key.preview
    assert ks.authenticate(bearer(created.token)).key_id == key_id


def test_update_several_fields_at_once(ks: Keystile) -> None:
    key_id = ks.keys.create(ACCT, "old").key_id
    key = ks.keys.update(key_id, name="n", permissions=["p"], enabled=False)
    assert (key.name, key.permissions, key.enabled) == ("n", ("p",), False)


def test_update_with_nothing_changes_nothing(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "same")
    assert ks.keys.update(created.key_id) == created.key


def test_update_permissions_take_effect_at_once(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci", permissions=["read"])
    assert ks.authenticate(bearer(created.token)).has_permission("read")
    ks.keys.update(created.key_id, permissions=["write"])
    principal = ks.authenticate(bearer(created.token))
    assert principal.permissions == frozenset({"write"})
    assert not principal.has_permission("read")


@pytest.mark.parametrize(
    "field,kwargs",
    [
        ("name", {"name": ""}),
        ("name", {"name": "a\nb"}),
        ("permissions", {"permissions": "read"}),
        ("permissions", {"permissions": ["bad perm"]}),
        ("expires_at", {"expires_at": _NAIVE}),
        ("expires_at", {"expires_at": "tomorrow"}),
        ("meta", {"meta": {"x": object()}}),
        ("meta", {"meta": {"x": "a" * 5000}}),
        ("enabled", {"enabled": "yes"}),
        ("enabled", {"enabled": 1}),
        ("enabled", {"enabled": None}),
    ],
)
def test_update_validation(ks: Keystile, field: str, kwargs: dict[str, Any]) -> None:
    created = ks.keys.create(ACCT, "ci", permissions=["read"])
    with pytest.raises(InvalidInput) as info:
        ks.keys.update(created.key_id, **kwargs)
    assert info.value.field == field
    assert ks.keys.get(created.key_id) == created.key


def test_update_unknown_key(ks: Keystile) -> None:
    with pytest.raises(NotFound):
        ks.keys.update("key_AAAAAAAAAAAAAAAA", name="x")


def test_update_expiry_into_the_past_expires_the_key(ks: Keystile, clock: Clock) -> None:
    created = ks.keys.create(ACCT, "ci")
    ks.authenticate(bearer(created.token))
    ks.keys.update(created.key_id, expires_at=ks.now() - timedelta(seconds=1))
    assert refused(ks, bearer(created.token)) is EXPIRED_API_KEY
    assert ks.keys.get(created.key_id).status(ks.now()) == "expired"


# -- revoke -----------------------------------------------------------------------------------


def test_revoke_is_idempotent_and_stamped(ks: Keystile, clock: Clock) -> None:
    created = ks.keys.create(ACCT, "ci")
    clock.advance(100)
    first = ks.keys.revoke(created.key_id)
    assert first.revoked_at == datetime.fromtimestamp(clock.now, timezone.utc)
    assert first.status(ks.now()) == "revoked"
    clock.advance(100)
    second = ks.keys.revoke(created.key_id)
    assert second.revoked_at == first.revoked_at
    assert ks.keys.get(created.key_id).revoked_at == first.revoked_at


def test_revoked_key_is_refused_after_the_secret_check(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci")
    assert ks.authenticate(bearer(created.token))  # now cached
    ks.keys.revoke(created.key_id)
    assert refused(ks, bearer(created.token)) is EXPIRED_API_KEY
    pair = [("x-api-key", created.key_id), ("x-api-secret", created.secret)]
    assert refused(ks, pair) is EXPIRED_API_KEY
    # A wrong secret (valid checksum) must not learn that the key exists and is revoked.
    kid = kid_of(created)
    wrong = format_token("sk", "live", kid, new_secret(kid))
    assert refused(ks, bearer(wrong)) is INVALID_API_KEY


def test_revoke_cannot_be_undone(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci")
    ks.keys.revoke(created.key_id)
    ks.keys.update(created.key_id, enabled=True)
    assert refused(ks, bearer(created.token)) is EXPIRED_API_KEY


def test_revoke_unknown_key(ks: Keystile) -> None:
    with pytest.raises(NotFound):
        ks.keys.revoke("key_AAAAAAAAAAAAAAAA")


# -- delete -----------------------------------------------------------------------------------


def test_delete(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci")
    assert ks.authenticate(bearer(created.token))  # now cached
    assert ks.keys.delete(created.key_id) is None
    with pytest.raises(NotFound):
        ks.keys.get(created.key_id)
    assert refused(ks, bearer(created.token)) is INVALID_API_KEY
    assert ks.keys.list(ACCT, include_revoked=True).total == 0
    with pytest.raises(NotFound):
        ks.keys.delete(created.key_id)
    for call in (ks.keys.revoke, ks.keys.roll):
        with pytest.raises(NotFound):
            call(created.key_id)


def test_delete_leaves_other_keys_alone(ks: Keystile) -> None:
    a = ks.keys.create(ACCT, "a")
    b = ks.keys.create(ACCT, "b")
    ks.keys.delete(a.key_id)
    assert ks.authenticate(bearer(b.token)).key_id == b.key_id


# -- roll -------------------------------------------------------------------------------------


def test_roll_without_grace(ks: Keystile) -> None:
    old = ks.keys.create(ACCT, "ci", permissions=["read"])
    assert ks.authenticate(bearer(old.token))  # now cached
    new = ks.keys.roll(old.key_id)
    assert new.key_id == old.key_id
    assert new.token != old.token and new.secret != old.secret
    assert new.key.preview == f"sk_live_…{new.token[-4:]}"
    assert ks.keys.get(old.key_id).preview == new.key.preview
    assert refused(ks, bearer(old.token)) is INVALID_API_KEY
    principal = ks.authenticate(bearer(new.token))
    assert principal.key_id == old.key_id
    assert principal.permissions == frozenset({"read"})
    assert refused(ks, bearer(old.token)) is INVALID_API_KEY


def test_roll_with_grace(ks: Keystile, clock: Clock) -> None:
    old = ks.keys.create(ACCT, "ci")
    assert ks.authenticate(bearer(old.token))
    new = ks.keys.roll(old.key_id, grace_seconds=60)
    via_old = ks.authenticate(bearer(old.token))
    assert via_old.key_id == old.key_id and via_old.used_previous_secret
    grace_ends = ks.store.get(old.key_id.removeprefix("key_")).previous_expires_at  # type: ignore[union-attr]
    assert via_old.previous_secret_expires_at == grace_ends is not None
    via_new = ks.authenticate(bearer(new.token))
    assert via_new.key_id == old.key_id and not via_new.used_previous_secret
    assert via_new.previous_secret_expires_at is None
    clock.advance(59)
    assert ks.authenticate(bearer(old.token)).key_id == old.key_id
    pair = [("x-api-key", old.key_id), ("x-api-secret", old.secret)]
    assert ks.authenticate(pair).auth_method == "key_secret"
    clock.advance(2)
    assert refused(ks, bearer(old.token)) is INVALID_API_KEY
    assert refused(ks, pair) is INVALID_API_KEY
    assert ks.authenticate(bearer(new.token)).key_id == old.key_id


def test_roll_grace_ends_on_a_fresh_engine(
    make_keystile: Callable[..., Keystile], clock: Clock, tmp_path: Any
) -> None:
    url = "sqlite:///" + str(tmp_path / "keys.db")
    ks = make_keystile(clock=clock, store=url)
    old = ks.keys.create(ACCT, "ci")
    ks.keys.roll(old.key_id, grace_seconds=60)
    clock.advance(61)
    fresh = make_keystile(clock=clock, store=url)
    assert refused(fresh, bearer(old.token)) is INVALID_API_KEY


def test_roll_then_revoke_refuses_both(ks: Keystile) -> None:
    old = ks.keys.create(ACCT, "ci")
    new = ks.keys.roll(old.key_id, grace_seconds=600)
    ks.keys.revoke(old.key_id)
    assert refused(ks, bearer(new.token)) is EXPIRED_API_KEY
    assert refused(ks, bearer(old.token)) is EXPIRED_API_KEY


def test_roll_of_revoked_key(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci")
    ks.keys.revoke(created.key_id)
    with pytest.raises(InvalidInput) as info:
        ks.keys.roll(created.key_id)
    assert info.value.field == "key_id"
    assert refused(ks, bearer(created.token)) is EXPIRED_API_KEY


@pytest.mark.parametrize("grace", [-1, True, 1.5, "60", 30 * 24 * 3600 + 1, None])
def test_roll_grace_validation(ks: Keystile, grace: Any) -> None:
    created = ks.keys.create(ACCT, "ci")
    with pytest.raises(InvalidInput) as info:
        ks.keys.roll(created.key_id, grace_seconds=grace)
    assert info.value.field == "grace_seconds"
    assert ks.authenticate(bearer(created.token))  # still the old secret


def test_roll_keeps_environment(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci", environment="test")
    rolled = ks.keys.roll(created.key_id)
    assert rolled.token.startswith("sk_test_")
    assert ks.authenticate(bearer(rolled.token)).environment == "test"


# -- state: expiry, disabled, environment, accounts -------------------------------------------


def test_expiry(ks: Keystile, clock: Clock) -> None:
    created = ks.keys.create(ACCT, "ci", expires_at=ks.now() + timedelta(seconds=60))
    principal = ks.authenticate(bearer(created.token))
    assert principal.expires_at == ks.now() + timedelta(seconds=60)
    clock.advance(59)
    assert ks.authenticate(bearer(created.token))
    clock.advance(1)
    assert refused(ks, bearer(created.token)) is EXPIRED_API_KEY
    clock.advance(3600)
    assert refused(ks, bearer(created.token)) is EXPIRED_API_KEY
    # Moving the expiry revives it at once.
    ks.keys.update(created.key_id, expires_at=ks.now() + timedelta(days=1))
    assert ks.authenticate(bearer(created.token)).key_id == created.key_id


def test_disabled_key(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci")
    assert ks.authenticate(bearer(created.token))
    ks.keys.update(created.key_id, enabled=False)
    assert refused(ks, bearer(created.token)) is EXPIRED_API_KEY
    assert ks.keys.get(created.key_id).status(ks.now()) == "disabled"
    ks.keys.update(created.key_id, enabled=True)
    assert ks.authenticate(bearer(created.token)).key_id == created.key_id


def test_wrong_secret_and_unknown_key(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci")
    kid = kid_of(created)
    wrong = format_token("sk", "live", kid, new_secret(kid))
    assert refused(ks, bearer(wrong)) is INVALID_API_KEY
    assert refused(ks, bearer(wrong)) is INVALID_API_KEY  # negative cache
    assert ks.authenticate(bearer(created.token)).key_id == created.key_id
    unknown = format_token("sk", "live", "A" * 16, new_secret("A" * 16))
    assert refused(ks, bearer(unknown)) is INVALID_API_KEY


def test_token_of_other_environment_is_invalid(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci", environment="live")
    other_env = created.token.replace("sk_live_", "sk_test_", 1)
    assert refused(ks, bearer(other_env)) is INVALID_API_KEY
    assert ks.authenticate(bearer(created.token)).environment == "live"
    assert refused(ks, bearer(other_env)) is INVALID_API_KEY


def test_all_three_forms_authenticate(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci")
    forms = {
        "bearer": bearer(created.token),
        "api_key": [("x-api-key", created.token)],
        "key_secret": [("x-api-key", created.key_id), ("x-api-secret", created.secret)],
    }
    for method, headers in forms.items():
        principal = ks.authenticate(headers)
        assert principal.auth_method == method
        assert principal.key_id == created.key_id


def test_account_header(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci", accounts=["acct-b"])
    own = ks.authenticate(bearer(created.token, ACCT))
    assert own.account_id == own.key_account_id == ACCT
    extra = ks.authenticate(bearer(created.token, "acct-b"))
    assert extra.account_id == "acct-b"
    assert extra.key_account_id == ACCT
    assert refused(ks, bearer(created.token, "acct-c")) is ACCOUNT_FORBIDDEN
    assert refused(ks, bearer(created.token, "ACCT-A")) is ACCOUNT_FORBIDDEN
    plain = ks.authenticate(bearer(created.token))
    assert plain.account_id == ACCT


def test_key_without_extra_accounts_cannot_switch(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci")
    assert refused(ks, bearer(created.token, "acct-b")) is ACCOUNT_FORBIDDEN


def test_principal_reflects_the_key(ks: Keystile) -> None:
    created = ks.keys.create(
        ACCT, "ci", permissions=["read"], owner="alice", environment="test", meta={"plan": "pro"}
    )
    principal = ks.authenticate(bearer(created.token))
    assert principal.name == "ci"
    assert principal.owner == "alice"
    assert principal.environment == "test"
    assert principal.permissions == frozenset({"read"})
    assert dict(principal.meta) == {"plan": "pro"}
    assert principal.expires_at is None


# -- SQLite file store ------------------------------------------------------------------------


def test_sqlite_data_survives_a_new_engine(
    make_keystile: Callable[..., Keystile], clock: Clock, tmp_path: Any
) -> None:
    path = tmp_path / "keys.db"
    url = "sqlite:///" + str(path)
    first = make_keystile(clock=clock, store=url)
    kept = first.keys.create(ACCT, "kept", permissions=["read"], accounts=["acct-b"])
    revoked = first.keys.create(ACCT, "revoked")
    first.keys.revoke(revoked.key_id)
    deleted = first.keys.create(ACCT, "deleted")
    first.keys.delete(deleted.key_id)
    first.close()
    assert path.exists()

    second = make_keystile(clock=clock, store=url)
    assert second.keys.get(kept.key_id) == kept.key
    assert second.keys.list(ACCT, include_revoked=True).total == 2
    principal = second.authenticate(bearer(kept.token, "acct-b"))
    assert (principal.account_id, principal.key_account_id) == ("acct-b", ACCT)
    assert refused(second, bearer(revoked.token)) is EXPIRED_API_KEY
    assert refused(second, bearer(deleted.token)) is INVALID_API_KEY


def test_sqlite_two_engines_see_each_others_changes(
    make_keystile: Callable[..., Keystile], clock: Clock, tmp_path: Any
) -> None:
    url = "sqlite:///" + str(tmp_path / "keys.db")
    admin = make_keystile(clock=clock, store=url)
    api = make_keystile(clock=clock, store=url, local_cache_ttl=0)
    created = admin.keys.create(ACCT, "ci")
    assert api.authenticate(bearer(created.token)).key_id == created.key_id
    admin.keys.revoke(created.key_id)
    assert refused(api, bearer(created.token)) is EXPIRED_API_KEY


def test_argon2_parameters_are_upgraded(
    make_keystile: Callable[..., Keystile], clock: Clock, tmp_path: Any
) -> None:
    url = "sqlite:///" + str(tmp_path / "keys.db")
    weak = make_keystile(clock=clock, store=url, argon2=FAST_ARGON2)
    created = weak.keys.create(ACCT, "ci")
    kid = kid_of(created)
    before = weak.store.get(kid)
    assert before is not None and "m=8,t=1,p=1" in before.secret_hash

    strong = make_keystile(clock=clock, store=url, argon2=STRONGER_ARGON2)
    assert strong.authenticate(bearer(created.token)).key_id == created.key_id
    after = strong.store.get(kid)
    assert after is not None
    assert after.secret_hash != before.secret_hash
    assert "m=16,t=2,p=1" in after.secret_hash
    assert created.secret not in after.secret_hash
    assert after.version == before.version  # the secret did not change
    # The token still works, through a fresh engine that has nothing cached.
    fresh = make_keystile(clock=clock, store=url, argon2=STRONGER_ARGON2)
    pair = [("x-api-key", created.key_id), ("x-api-secret", created.secret)]
    assert fresh.authenticate(pair).key_id == created.key_id
    again = fresh.store.get(kid)
    assert again is not None and again.secret_hash == after.secret_hash  # no second rehash
    # A wrong secret still fails against the new hash.
    wrong = format_token("sk", "live", kid, new_secret(kid))
    assert refused(fresh, bearer(wrong)) is INVALID_API_KEY


def test_argon2_parameters_are_never_downgraded(
    make_keystile: Callable[..., Keystile], clock: Clock, tmp_path: Any
) -> None:
    # Regression: check_needs_rehash is True for any difference, so a weaker engine (an old
    # process in a rolling deploy) used to rewrite a stronger hash with a weaker one.
    url = "sqlite:///" + str(tmp_path / "keys.db")
    strong = make_keystile(clock=clock, store=url, argon2=STRONGER_ARGON2)
    created = strong.keys.create(ACCT, "ci")
    weak = make_keystile(clock=clock, store=url, argon2=FAST_ARGON2)
    assert weak.authenticate(bearer(created.token)).key_id == created.key_id
    record = weak.store.get(kid_of(created))
    assert record is not None and "m=16,t=2,p=1" in record.secret_hash


# -- last use ---------------------------------------------------------------------------------


def test_last_used_is_written_on_flush(
    make_keystile: Callable[..., Keystile], clock: Clock, store_url: str
) -> None:
    ks = make_keystile(
        clock=clock, store=store_url, last_used_interval=3600, usage_flush_interval=3600
    )
    created = ks.keys.create(ACCT, "ci")
    kid = kid_of(created)
    clock.advance(10)
    ks.authenticate(bearer(created.token))
    record = ks.store.get(kid)
    assert record is not None and record.last_used_at is None  # batched, not yet written
    ks.flush()
    first = datetime.fromtimestamp(clock.now, timezone.utc)
    assert ks.keys.get(created.key_id).last_used_at == first
    clock.advance(10)
    ks.authenticate(bearer(created.token))  # from the cache this time
    ks.flush()
    assert ks.keys.get(created.key_id).last_used_at == first + timedelta(seconds=10)
    ks.flush()  # nothing pending: harmless
    assert ks.keys.get(created.key_id).last_used_at == first + timedelta(seconds=10)


def test_failed_authentication_is_not_a_use(ks: Keystile) -> None:
    created = ks.keys.create(ACCT, "ci")
    ks.keys.update(created.key_id, enabled=False)
    refused(ks, bearer(created.token))
    ks.flush()
    assert ks.keys.get(created.key_id).last_used_at is None


def test_last_used_with_zero_interval(
    make_keystile: Callable[..., Keystile], clock: Clock, store_url: str
) -> None:
    ks = make_keystile(clock=clock, store=store_url, last_used_interval=0)
    created = ks.keys.create(ACCT, "ci")
    ks.authenticate(bearer(created.token))
    deadline = time.monotonic() + 5
    while ks.keys.get(created.key_id).last_used_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ks.keys.get(created.key_id).last_used_at == ks.now()


def test_close_flushes_last_used(
    make_keystile: Callable[..., Keystile], clock: Clock, tmp_path: Any
) -> None:
    url = "sqlite:///" + str(tmp_path / "keys.db")
    ks = make_keystile(clock=clock, store=url, last_used_interval=3600, usage_flush_interval=3600)
    created = ks.keys.create(ACCT, "ci")
    ks.authenticate(bearer(created.token))
    ks.close()
    reopened = make_keystile(clock=clock, store=url)
    assert reopened.keys.get(created.key_id).last_used_at == reopened.now()
