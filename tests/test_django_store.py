"""The ``django://`` store keeps the KeyStore contract with the same semantics as the embedded
SQLite store: every contract test runs on both. Then the engine on it, sync and async, and
with Redis on top."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

pytest.importorskip("django")

from .djangoproj import settings as project

project.setup_database()

from django.test import override_settings  # noqa: E402

from keystile import Keystile  # noqa: E402
from keystile._core.errors import AuthError, InvalidInput  # noqa: E402
from keystile._core.models import KeyRecord  # noqa: E402
from keystile.stores.base import (  # noqa: E402
    AccountLimit,
    AuditEntry,
    KeyStore,
    SessionRecord,
    UsageDelta,
    UsageRow,
)
from keystile.stores.sqlite import SQLiteStore  # noqa: E402

from .conftest import Clock  # noqa: E402

UTC = timezone.utc
T0 = datetime(2026, 9, 10, 12, 0, 0, 123456, tzinfo=UTC)


def clear_tables() -> None:
    from keystile.django.models import AuditEntry, Key, Limit, Session, Usage

    for model in (Key, Usage, Limit, AuditEntry, Session):
        model.objects.all().delete()


@pytest.fixture(params=["sqlite", "django"])
def store(request: pytest.FixtureRequest) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        sqlite = SQLiteStore(":memory:")
        yield sqlite
        sqlite.close()
        return
    from keystile.django.store import DjangoStore

    clear_tables()
    yield DjangoStore()
    clear_tables()


def record(kid: str, **changes: Any) -> KeyRecord:
    values: dict[str, Any] = {
        "kid": kid,
        "token_prefix": "sk",
        "last4": kid[-4:].rjust(4, "0"),
        "name": f"key {kid}",
        "account_id": "acct-1",
        "owner": None,
        "permissions": ("read", "jobs:*"),
        "environment": "live",
        "accounts": (),
        "created_at": T0,
        "expires_at": None,
        "last_used_at": None,
        "revoked_at": None,
        "enabled": True,
        "meta": {},
        "secret_hash": f"$argon2id$hash-{kid}",
        "previous_hash": None,
        "previous_expires_at": None,
        "version": "v1",
        "page_limit": None,
        "allowed_ips": (),
        "rate_limit": None,
    }
    values.update(changes)
    return KeyRecord(**values)


def test_insert_and_get_round_trip_every_field(store: KeyStore) -> None:
    full = record(
        "A1b2C3d4E5f6G7h8",
        owner="ops@example.com",
        accounts=("acct-2", "acct-3"),
        expires_at=T0 + timedelta(days=30),
        last_used_at=T0 + timedelta(seconds=1),
        revoked_at=T0 + timedelta(days=1),
        enabled=False,
        meta={"team": "data", "n": 3, "nested": {"a": [1, 2]}},
        previous_hash="$argon2id$old",
        previous_expires_at=T0 + timedelta(hours=2),
        page_limit=500,
    )
    store.insert(full)
    assert store.get(full.kid) == full
    assert store.get("nope") is None
    minimal = record("0000000000000001")
    store.insert(minimal)
    got = store.get(minimal.kid)
    assert got == minimal and got is not None and got.created_at.tzinfo is not None
    with pytest.raises(Exception):  # noqa: B017  (sqlite3's or Django's IntegrityError)
        store.insert(minimal)


def test_replace_checks_the_version(store: KeyStore) -> None:
    original = record("0000000000000002")
    store.insert(original)
    changed = original.changed(name="renamed", permissions=("write",))
    assert store.replace(changed, expected_version="stale") is False
    assert store.get(original.kid) == original
    assert store.replace(changed, expected_version=original.version) is True
    assert store.get(original.kid) == changed
    assert store.replace(changed.changed(), expected_version=original.version) is False
    assert store.replace(record("missing00000000x"), expected_version="v1") is False


def test_set_hash_only_from_the_old_hash_and_keeps_the_version(store: KeyStore) -> None:
    key = record("0000000000000003")
    store.insert(key)
    store.set_hash(key.kid, "not the hash", "$new")
    assert store.get(key.kid) == key
    store.set_hash(key.kid, key.secret_hash, "$new")
    got = store.get(key.kid)
    assert got is not None and (got.secret_hash, got.version) == ("$new", key.version)


def test_delete(store: KeyStore) -> None:
    store.insert(record("0000000000000004"))
    assert store.delete("0000000000000004") is True
    assert store.delete("0000000000000004") is False
    assert store.get("0000000000000004") is None


def _all_pages(store: KeyStore, limit: int, **filters: Any) -> tuple[list[str], list[int]]:
    kids: list[str] = []
    totals: list[int] = []
    cursor = None
    options = {"search": None, "environment": None, "include_revoked": False, **filters}
    while True:
        page = store.list("acct-1", limit=limit, cursor=cursor, **options)
        kids += [item.kid for item in page.items]
        totals.append(page.total)
        assert len(page.items) <= limit
        cursor = page.next_cursor
        if cursor is None:
            return kids, totals


def test_list_pages_newest_first_with_ties_and_a_total(store: KeyStore) -> None:
    expected = []
    for i in range(23):
        # Groups of three share a created_at (ties are broken by kid, descending).
        when = T0 + timedelta(microseconds=(i // 3) * 7)
        key = record(f"{i:016d}", created_at=when, environment="test" if i % 5 == 0 else "live")
        store.insert(key)
        expected.append(key)
    store.insert(record("other00000000000", account_id="acct-2"))
    newest_first = [k.kid for k in sorted(expected, key=lambda k: (k.created_at, k.kid))][::-1]
    for limit in (1, 4, 23, 100):
        kids, totals = _all_pages(store, limit)
        assert kids == newest_first
        assert set(totals) == {23}
    live, totals = _all_pages(store, 5, environment="live")
    assert live == [k for k in newest_first if int(k) % 5 != 0] and set(totals) == {18}


def test_list_hides_revoked_keys_unless_asked(store: KeyStore) -> None:
    store.insert(record("0000000000000005"))
    store.insert(record("0000000000000006", revoked_at=T0))
    assert _all_pages(store, 10) == (["0000000000000005"], [1])
    kids, totals = _all_pages(store, 10, include_revoked=True)
    assert kids == ["0000000000000006", "0000000000000005"] and totals == [2]


def test_search_is_a_literal_case_insensitive_substring(store: KeyStore) -> None:
    names = ["50% off", "5000 off", "a_b", "axb", "back\\slash", "Plain"]
    for i, name in enumerate(names):
        store.insert(record(f"{i:016d}", name=name))

    def found(text: str) -> list[str]:
        kids, _ = _all_pages(store, 10, search=text)
        return sorted(names[int(kid)] for kid in kids)

    assert found("%") == ["50% off"]
    assert found("_") == ["a_b"]
    assert found("\\") == ["back\\slash"]
    assert found("OFF") == ["50% off", "5000 off"]
    assert found("plain") == ["Plain"]
    assert found("zzz") == []


def test_a_bad_cursor_is_invalid_input(store: KeyStore) -> None:
    for bad in ("garbage!", "Zm9v", ""):
        if not bad:
            continue
        with pytest.raises(InvalidInput) as error:
            store.list(
                "acct-1", search=None, environment=None, include_revoked=False, limit=5,
                cursor=bad,
            )  # fmt: skip
        assert error.value.field == "cursor"


def test_touch_only_moves_last_use_forward(store: KeyStore) -> None:
    store.insert(record("0000000000000007"))
    store.insert(record("0000000000000008", last_used_at=T0 + timedelta(hours=1)))
    later, earlier = T0 + timedelta(minutes=5), T0 + timedelta(minutes=1)
    store.touch({"0000000000000007": later, "0000000000000008": earlier, "missing": later})
    first, second = store.get("0000000000000007"), store.get("0000000000000008")
    assert first is not None and first.last_used_at == later and first.version == "v1"
    assert second is not None and second.last_used_at == T0 + timedelta(hours=1)
    store.touch({"0000000000000007": earlier})
    assert store.get("0000000000000007").last_used_at == later  # type: ignore[union-attr]


def test_add_usage_sums_and_usage_reads_by_period(store: KeyStore) -> None:
    store.add_usage(
        [
            UsageDelta("acct-1", "2026-09", "live", "k1", 5, 1),
            UsageDelta("acct-1", "2026-09", "live", "k2", 2, 1),
            UsageDelta("acct-1", "2026-08", "live", "k1", 1, 1),
            UsageDelta("acct-2", "2026-09", "live", "k1", 9, 9),
        ]
    )
    store.add_usage(
        [
            UsageDelta("acct-1", "2026-09", "live", "k1", 3, 2),
            UsageDelta("acct-1", "2026-09", "live", "k1", -1, 0),  # a refund
            UsageDelta("acct-1", "2026-09", "test", "k1", 4, 1),
        ]
    )
    rows = sorted(store.usage("acct-1", ["2026-09"]), key=lambda r: (r.environment, r.kid))
    assert rows == [
        UsageRow("2026-09", "live", "k1", 7, 3),
        UsageRow("2026-09", "live", "k2", 2, 1),
        UsageRow("2026-09", "test", "k1", 4, 1),
    ]
    assert store.usage("acct-1", ["2026-08", "2026-07"]) == [
        UsageRow("2026-08", "live", "k1", 1, 1)
    ]
    assert store.usage("acct-3", ["2026-09"]) == []
    store.add_usage([])


def test_limits(store: KeyStore) -> None:
    assert store.get_limit("acct-1") is None
    store.set_limit("acct-1", AccountLimit(100))
    assert store.get_limit("acct-1") == AccountLimit(100)
    store.set_limit("acct-1", AccountLimit(None, "pro"))
    assert store.get_limit("acct-1") == AccountLimit(None, "pro")
    store.set_limit("acct-1", AccountLimit(None))
    assert store.get_limit("acct-1") == AccountLimit(None)
    store.set_limit("acct-1", None)
    assert store.get_limit("acct-1") is None
    store.set_limit("acct-2", None)  # nothing to delete: fine


def test_audit_entries_newest_first_with_a_cursor(store: KeyStore) -> None:
    for i in range(7):
        store.add_audit(
            AuditEntry(
                at=T0 + timedelta(seconds=i),
                account_id="acct-1" if i != 3 else "acct-2",
                actor="cli:ops",
                action="key.create" if i % 2 == 0 else "key.revoke",
                target=f"key_{i:016d}",
                details={"i": i, "when": T0},  # not JSON: stored as text, like SQLite does
            )
        )
    seen: list[AuditEntry] = []
    cursor = None
    while True:
        items, cursor = store.list_audit("acct-1", action=None, limit=2, cursor=cursor)
        seen += items
        if cursor is None:
            break
    assert [e.details["i"] for e in seen] == [6, 5, 4, 2, 1, 0]
    assert all(e.id is not None and e.at.tzinfo is not None for e in seen)
    assert seen[0].at == T0 + timedelta(seconds=6) and seen[0].actor == "cli:ops"
    assert seen[0].details["when"] == str(T0)
    revokes, cursor = store.list_audit("acct-1", action="key.revoke", limit=10, cursor=None)
    assert [e.details["i"] for e in revokes] == [5, 1] and cursor is None
    with pytest.raises(InvalidInput):
        store.list_audit("acct-1", action=None, limit=2, cursor="x1")


def test_sessions(store: KeyStore) -> None:
    session = SessionRecord(
        sid="S0000000000000001",
        kid="0000000000000001",
        account_id="acct-1",
        secret_digest="d" * 64,
        key_hash_fingerprint="f" * 32,
        created_at=T0,
        expires_at=T0 + timedelta(hours=12),
        idle_timeout=1800.0,
        last_seen_at=T0,
    )
    store.insert_session(session)
    assert store.get_session(session.sid) == session
    assert store.get_session("nope") is None
    store.touch_sessions({session.sid: T0 + timedelta(minutes=5), "nope": T0})
    store.touch_sessions({session.sid: T0 + timedelta(minutes=1)})  # never backwards
    got = store.get_session(session.sid)
    assert got is not None and got.last_seen_at == T0 + timedelta(minutes=5)
    assert store.end_session(session.sid, T0 + timedelta(minutes=9)) is True
    assert store.end_session(session.sid, T0 + timedelta(minutes=10)) is False
    got = store.get_session(session.sid)
    assert got is not None and got.ended_at == T0 + timedelta(minutes=9)


def test_concurrent_writers_add_up_and_never_deadlock() -> None:
    """Eight threads, each with its own connection, batches overlapping in different orders
    (on a SQLite file: the in-memory test database cannot have concurrent writers)."""
    from django.db import connections

    from keystile.django.models import Key, Usage
    from keystile.django.store import DjangoStore

    store = DjangoStore(using="concurrent")
    Usage.objects.using("concurrent").all().delete()
    Key.objects.using("concurrent").all().delete()
    kids = [f"{i:016d}" for i in range(5)]
    for kid in kids:
        store.insert(record(kid))
    rounds = 10

    def work(i: int) -> None:
        try:
            for n in range(rounds):
                store.add_usage(
                    [
                        UsageDelta("acct-1", "2026-09", "live", "shared", 2, 1),
                        UsageDelta("acct-1", "2026-09", "live", f"own-{i}", 1, 1),
                        UsageDelta("acct-1", "2026-09", "test", f"other-{(i + n) % 3}", 1, 0),
                    ]
                )
                order = kids[i % 5 :] + kids[: i % 5]
                store.touch({kid: T0 + timedelta(seconds=n * 8 + i) for kid in order})
        finally:
            connections.close_all()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    rows = {
        (r.environment, r.kid): (r.pages, r.requests) for r in store.usage("acct-1", ["2026-09"])
    }
    assert rows.pop(("live", "shared")) == (2 * 8 * rounds, 8 * rounds)
    assert all(rows.pop(("live", f"own-{i}")) == (rounds, rounds) for i in range(8))
    assert sum(rows.pop(("test", f"other-{j}"))[0] for j in range(3)) == 8 * rounds
    assert rows == {}
    latest = T0 + timedelta(seconds=(rounds - 1) * 8 + 7)
    assert all(store.get(kid).last_used_at == latest for kid in kids)  # type: ignore[union-attr]


def test_naive_datetimes_when_use_tz_is_off() -> None:
    from keystile.django.store import DjangoStore

    clear_tables()
    store = DjangoStore()
    with override_settings(USE_TZ=False):
        key = record("0000000000000009", expires_at=T0 + timedelta(days=1))
        store.insert(key)
        assert store.get(key.kid) == key
        kids, _ = _all_pages(store, 1)
        assert kids == [key.kid]
    clear_tables()


# ------------------------------------------------------------------- the engine on it

Make = Callable[..., Keystile]


@pytest.fixture
def django_engine(make_keystile: Make, clock: Clock) -> Iterator[Keystile]:
    clear_tables()
    yield make_keystile(clock=clock, store="django://", monthly_page_limit=50)
    clear_tables()


def test_the_engine_on_the_django_store(django_engine: Keystile) -> None:
    from keystile.django.models import Key, Usage
    from keystile.django.store import DjangoStore

    ks = django_engine
    assert isinstance(ks.store, DjangoStore)
    created = ks.keys.create("acct-1", "db key", permissions=["read"])
    row = Key.objects.get(kid=created.key_id.removeprefix("key_"))
    assert row.preview == created.key.preview and created.token not in str(vars(row))
    headers = [("authorization", f"Bearer {created.token}")]
    principal = ks.authenticate(headers)
    ks.settle(principal, 200)
    principal = asyncio.run(ks.authenticate_async(headers))  # the store from a worker thread
    ks.settle(principal, 200)
    ks.flush()
    assert Usage.objects.get(kid=row.kid).pages == 2
    assert ks.keys.get(created.key_id).last_used_at is not None
    assert ks.keys.list("acct-1").total == 1
    session = ks.sessions.login(headers, client="127.0.0.1")
    by_session = [("authorization", f"Bearer {session.token}")]
    assert ks.authenticate(by_session).auth_method == "session"
    principal = asyncio.run(ks.authenticate_async(by_session))
    ks.sessions.logout(principal)
    with pytest.raises(AuthError):
        ks.authenticate(by_session)
    actions = {entry.action for entry in ks.audit.list("acct-1").items}
    assert {"key.create", "session.login", "session.logout"} <= actions
    ks.keys.revoke(created.key_id)
    with pytest.raises(AuthError) as refused:
        ks.authenticate(headers)
    assert refused.value.code == "AUTH_003"
    assert ks.quotas.usage("acct-1").pages == 4  # two by key, two by session
    ks.quotas.set_limit("acct-1", 5)
    assert ks.quotas.limit("acct-1") == 5


@pytest.mark.redis
def test_redis_on_top_of_the_django_store(
    make_keystile: Make, clock: Clock, redis_settings: dict[str, Any]
) -> None:
    clear_tables()
    try:
        one = make_keystile(clock=clock, store="django://", **redis_settings)
        two = make_keystile(clock=clock, store="django://", **redis_settings)
        created = one.keys.create("acct-1", "shared", permissions=["read"])
        headers = [("x-api-key", created.token)]
        for engine in (one, two, two):
            engine.settle(engine.authenticate(headers), 200)
        one.keys.revoke(created.key_id)  # the state stamp in Redis changes
        with pytest.raises(AuthError) as refused:
            two.authenticate(headers)  # two had the key cached: Redis tells it at once
        assert refused.value.code == "AUTH_003"
        one.flush()
        two.flush()
        assert one.quotas.usage("acct-1").pages == 3
    finally:
        clear_tables()


def test_the_app_registers_the_django_scheme() -> None:
    from keystile.django.store import DjangoStore
    from keystile.stores import open_store

    opened = open_store("django://")
    assert isinstance(opened, DjangoStore) and opened.using is None


@pytest.mark.parametrize(
    ("message", "hint"),
    [("no such table: keystile_key", True), ("server closed the connection", False)],
)
def test_database_errors_are_backend_errors(
    monkeypatch: pytest.MonkeyPatch, message: str, hint: bool
) -> None:
    from django.db import OperationalError

    from keystile._core.errors import BackendError
    from keystile.django.store import DjangoStore

    store = DjangoStore()

    def broken(model: str) -> Any:
        raise OperationalError(message)

    monkeypatch.setattr(store, "_objects", broken)
    with pytest.raises(BackendError) as failed:
        store.get("abc")
    assert isinstance(failed.value.__cause__, OperationalError)
    assert ("migrate" in str(failed.value)) is hint
    assert message not in str(failed.value)
