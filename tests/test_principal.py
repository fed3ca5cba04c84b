"""The authenticated caller: permission wildcards, immutability, repr."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from keystile import Keystile, Principal
from keystile._core.principal import grants, missing_permissions


def make_principal(*permissions: str, **overrides: object) -> Principal:
    fields: dict[str, object] = {
        "key_id": "key_AAAAAAAAAAAAAAAA",
        "account_id": "acct-a",
        "name": "ci",
        "owner": None,
        "environment": "live",
        "permissions": frozenset(permissions),
        "auth_method": "bearer",
        "key_account_id": "acct-a",
    }
    fields.update(overrides)
    return Principal(**fields)  # type: ignore[arg-type]


GRANTED = [
    ("*", "read"),
    ("*", "apikeys:delete"),
    ("*", "a/b.c"),
    ("read", "read"),
    ("read*", "read"),
    ("read*", "read:all"),
    ("read*", "reader"),
    ("apikeys:*", "apikeys:read"),
    ("apikeys:*", "apikeys:"),
    ("apikeys:*", "apikeys:a:b"),
    ("*:read", "users:read"),
    ("a*c", "abc"),
    ("a*c", "ac"),
    ("a*b*c", "a1b2c"),
    ("a.b", "a.b"),
    ("a.*", "a.b"),
    ("docs/*", "docs/x/y"),
]

NOT_GRANTED = [
    ("read", "write"),
    ("read", "read:all"),
    ("read", "Read"),
    ("read", "rea"),
    ("read", ""),
    ("read*", "write"),
    ("read*", "rea"),
    ("read*", "xread"),
    ("apikeys:*", "apikeys"),
    ("apikeys:*", "users:read"),
    ("apikeys:*", "xapikeys:read"),
    ("*:read", "users:write"),
    ("*:read", "users:read:all"),
    ("a*c", "abcd"),
    ("a*c", "xabc"),
    # No accidental regex: every character but '*' is literal.
    ("a.b", "axb"),
    ("a.*", "axb"),
    ("a+", "aa"),
    ("a?", "a"),
    ("a?", ""),
    ("[ab]", "a"),
    ("(a|b)", "a"),
    ("a|b", "a"),
    ("^a$", "a"),
    ("a{2}", "aa"),
    ("\\d", "1"),
    ("read*", "read\nadmin"),
    ("*", "x\ny"),
]


@pytest.mark.parametrize("granted,wanted", GRANTED)
def test_grants(granted: str, wanted: str) -> None:
    assert grants(granted, wanted)
    assert make_principal(granted).has_permission(wanted)


@pytest.mark.parametrize("granted,wanted", NOT_GRANTED)
def test_does_not_grant(granted: str, wanted: str) -> None:
    assert not grants(granted, wanted)
    assert not make_principal(granted).has_permission(wanted)


def test_wanted_wildcard_is_not_a_wildcard() -> None:
    # A star in the *wanted* permission is a literal character.
    assert not grants("read", "*")
    assert not grants("read", "read*")
    assert grants("read*", "read*")


def test_no_permissions_grants_nothing() -> None:
    principal = make_principal()
    assert not principal.has_permission("read")
    assert not principal.has_permission("")
    assert principal.has_permissions()  # nothing asked, nothing missing


def test_has_permissions_needs_all() -> None:
    principal = make_principal("read", "apikeys:*")
    assert principal.has_permissions("read", "apikeys:create")
    assert not principal.has_permissions("read", "write")
    assert not principal.has_permissions("write")


def test_missing_permissions() -> None:
    assert missing_permissions(["read", "apikeys:*"], ["read", "write", "apikeys:x", "z"]) == [
        "write",
        "z",
    ]
    assert missing_permissions([], ["a"]) == ["a"]
    assert missing_permissions(iter(["*"]), ["a", "b"]) == []


def test_principal_is_immutable() -> None:
    principal = make_principal("read")
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.account_id = "acct-b"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.permissions = frozenset({"*"})  # type: ignore[misc]
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        principal.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        principal.permissions.add("*")  # type: ignore[attr-defined]
    assert principal.permissions == frozenset({"read"})


def test_repr_has_no_secret_or_meta() -> None:
    principal = make_principal("read", meta={"api_secret": "hunter2"})
    text = repr(principal)
    assert "hunter2" not in text
    assert "key_AAAAAAAAAAAAAAAA" in text and "acct-a" in text


def test_unmetered_principal() -> None:
    principal = make_principal()
    assert principal.quota is None
    with pytest.raises(RuntimeError):
        principal.charge(1)


# -- from a real engine -----------------------------------------------------------------------


@pytest.fixture
def engine(make_keystile: Callable[..., Keystile]) -> Keystile:
    return make_keystile()


def test_authenticated_principal(engine: Keystile) -> None:
    created = engine.keys.create("acct-a", "ci", permissions=["read*", "apikeys:*"])
    principal = engine.authenticate([("authorization", f"Bearer {created.token}")])
    assert isinstance(principal, Principal)
    assert principal.has_permission("read:all")
    assert principal.has_permission("apikeys:delete")
    assert not principal.has_permission("write")
    for text in (repr(principal), str(principal)):
        assert created.token not in text
        assert created.secret not in text
        assert created.secret[:10] not in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.account_id = "acct-b"  # type: ignore[misc]


def test_principal_meta_cannot_leak_into_later_requests(engine: Keystile) -> None:
    created = engine.keys.create("acct-a", "ci", meta={"plan": "free"})
    headers = [("authorization", f"Bearer {created.token}")]
    first = engine.authenticate(headers)
    with pytest.raises(TypeError):
        first.meta["plan"] = "enterprise"  # type: ignore[index]
    assert dict(engine.authenticate(headers).meta) == {"plan": "free"}


def test_nested_principal_meta_cannot_leak_into_later_requests(engine: Keystile) -> None:
    # Regression: meta was a shallow read-only view; nested values were the cached objects.
    created = engine.keys.create("acct-a", "ci", meta={"limits": {"rpm": 10}, "tags": ["a"]})
    headers = [("authorization", f"Bearer {created.token}")]
    first = engine.authenticate(headers)
    try:
        first.meta["limits"]["rpm"] = 10_000
        first.meta["tags"].append("admin")
    except (TypeError, AttributeError):
        pass  # deeply read-only meta is one fix
    again = engine.authenticate(headers)
    assert again.meta["limits"] == {"rpm": 10}
    assert list(again.meta["tags"]) == ["a"]


def test_the_request_paths_principal_is_the_dataclasses() -> None:
    """The request path fills an Unfrozen (the same slots, set by plain assignment) and gives
    it Principal's class: every field, and the result as frozen, equal and hashable as
    Principal(...)."""
    from keystile._core.principal import Unfrozen

    assert Unfrozen.__slots__ == tuple(f.name for f in dataclasses.fields(Principal))
    values = [f"v{n}" for n, _ in enumerate(dataclasses.fields(Principal))]
    made = Principal(*values)  # type: ignore[arg-type]
    built: Any = object.__new__(Unfrozen)
    for field, value in zip(dataclasses.fields(Principal), values):
        setattr(built, field.name, value)
    built.__class__ = Principal
    assert type(built) is Principal
    for field in dataclasses.fields(Principal):
        assert getattr(built, field.name) == getattr(made, field.name), field.name
    assert built == made and hash(built) == hash(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.key_id = "other"
