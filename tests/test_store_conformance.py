"""One KeyStore contract, every store: ``memory://``, a SQLite file and PostgreSQL.

Each test runs on the three stores and checks the exact semantics of the reference (SQLite)
store. The PostgreSQL store gets its own schema per test (the ``postgres_schema`` fixture);
without a PostgreSQL server its cases are skipped (and fail when CI is set). The end of the
file runs a whole engine on PostgreSQL.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import keystile
import keystile.stores
from keystile import Keystile
from keystile._core.errors import EXPIRED_API_KEY, AuthError, ConfigError, InvalidInput
from keystile._core.models import KeyRecord
from keystile.stores import open_store, register_store
from keystile.stores.base import (
    AccountLimit,
    AuditEntry,
    KeyStore,
    Page,
    SessionRecord,
    UsageDelta,
    UsageRow,
)

from .conftest import FAST_ARGON2, Clock

UTC = timezone.utc
T0 = datetime(2026, 9, 10, 12, 0, 0, 123456, tzinfo=UTC)
ACCT = "acct-1"
STORES = ["memory", "sqlite", "postgres", "django"]


def search_path_url(url: str, schema: str) -> str:
    """``url`` with the libpq option that puts new connections in ``schema``."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def postgres_store(request: pytest.FixtureRequest, **options: Any) -> Any:
    """A PostgresStore in this test's own schema (the fixtures are only asked for here, so
    memory and SQLite cases need no server)."""
    url: str = request.getfixturevalue("postgres_url")
    schema: str = request.getfixturevalue("postgres_schema")
    from keystile.stores.postgres import PostgresStore

    return PostgresStore(url, schema=schema, **options)


def django_store(request: pytest.FixtureRequest) -> Any:
    """A DjangoStore on the test project's SQLite file (the "concurrent" alias: the threaded
    tests need real concurrent writers), its tables emptied before and after the test."""
    pytest.importorskip("django")
    from .djangoproj import settings as project

    project.setup_database()
    from keystile.django.models import AuditEntry as AuditRow
    from keystile.django.models import Key, Limit, Session, Usage
    from keystile.django.store import DjangoStore

    def clear() -> None:
        for model in (Key, Usage, Limit, AuditRow, Session):
            model.objects.using("concurrent").all().delete()

    clear()
    request.addfinalizer(clear)
    return DjangoStore(using="concurrent")


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    made: KeyStore
    if request.param == "memory":
        made = open_store("memory://")
    elif request.param == "sqlite":
        made = open_store(f"sqlite:///{tmp_path / 'keys.db'}")
    elif request.param == "django":
        made = django_store(request)
    else:
        made = postgres_store(request)
    try:
        yield made
    finally:
        made.close()


def record(kid: str, **changes: Any) -> KeyRecord:
    values: dict[str, Any] = {
        "kid": kid,
        "token_prefix": "sk",
        "last4": kid[-4:].rjust(4, "0"),
        "name": f"key {kid}",
        "account_id": ACCT,
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
    }
    values.update(changes)
    return KeyRecord(**values)


def kid(i: int) -> str:
    return f"K{i:015d}"


def list_page(store: KeyStore, cursor: str | None = None, **options: Any) -> Page:
    options = {
        "search": None,
        "environment": None,
        "include_revoked": False,
        "limit": 20,
        **options,
    }
    return store.list(options.pop("account_id", ACCT), cursor=cursor, **options)


def all_pages(store: KeyStore, limit: int, **options: Any) -> tuple[list[str], list[int]]:
    """Every kid, page after page, and the total each page reported."""
    kids: list[str] = []
    totals: list[int] = []
    cursor: str | None = None
    for _ in range(1000):
        page = list_page(store, cursor, limit=limit, **options)
        assert len(page.items) <= limit
        kids += [item.kid for item in page.items]
        totals.append(page.total)
        cursor = page.next_cursor
        if cursor is None:
            return kids, totals
    raise AssertionError("pagination does not end")


def run_together(workers: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``workers`` threads released at the same instant."""
    barrier = threading.Barrier(workers)

    def start(i: int) -> Any:
        barrier.wait(timeout=30)
        return work(i)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(start, range(workers)))


def is_utc(value: datetime | None) -> bool:
    return value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0)


# -- the store itself -------------------------------------------------------------------------


def test_blocking_flag(store: KeyStore, request: pytest.FixtureRequest) -> None:
    in_memory = request.node.callspec.params["store"] == "memory"
    assert store.blocking is (not in_memory)


def test_close_twice(store: KeyStore) -> None:
    store.insert(record(kid(1)))
    store.close()
    store.close()


# -- opening a store by URL -------------------------------------------------------------------


def test_a_registered_scheme_opens_its_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keystile.stores, "_FACTORIES", dict(keystile.stores._FACTORIES))
    opened: list[str] = []

    def factory(url: str) -> KeyStore:
        opened.append(url)
        return open_store("memory://")

    register_store("custom", factory)
    open_store("custom://somewhere").close()
    assert opened == ["custom://somewhere"]
    with pytest.raises(ConfigError, match="'ftp'"):
        open_store("ftp://somewhere")


def test_django_without_its_app_is_a_config_error_and_stores_never_import_it() -> None:
    # A fresh interpreter: in this one a Django test may have imported keystile.django.
    code = (
        "import sys\n"
        "from keystile._core.errors import ConfigError\n"
        "from keystile.stores import open_store\n"
        "try:\n"
        "    open_store('django://')\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
        "assert 'keystile.django' not in sys.modules\n"
    )
    src = str(Path(keystile.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "'django://'" in done.stdout and "INSTALLED_APPS" in done.stdout


# -- keys: insert, get ------------------------------------------------------------------------


def test_insert_and_get_round_trip_every_field(store: KeyStore) -> None:
    full = record(
        "A1b2C3d4E5f6G7h8",
        owner="ops@example.com",
        permissions=("read", "write", "jobs:*"),
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
    got = store.get(full.kid)
    assert got == full
    assert got is not None and isinstance(got.permissions, tuple)
    assert isinstance(got.accounts, tuple) and got.enabled is False
    minimal = record(kid(1))
    store.insert(minimal)
    assert store.get(minimal.kid) == minimal
    assert store.get("missing") is None
    zero = record(kid(2), page_limit=0, permissions=())
    store.insert(zero)
    assert store.get(zero.kid) == zero


def test_inserting_a_kid_twice_fails_and_keeps_the_first(store: KeyStore) -> None:
    first = record(kid(1))
    store.insert(first)
    with pytest.raises(Exception):  # noqa: B017  (each database's integrity error)
        store.insert(record(kid(1), name="second"))
    assert store.get(kid(1)) == first
    store.insert(record(kid(2)))  # the store still works afterwards
    assert store.get(kid(2)) is not None


@pytest.mark.parametrize(
    "zone",
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))],
    ids=["utc", "plus-0530", "minus-08"],
)
def test_datetimes_come_back_as_the_same_instant_in_utc(store: KeyStore, zone: timezone) -> None:
    at = datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=UTC).astimezone(zone)
    key = record(
        kid(1),
        created_at=at,
        expires_at=at + timedelta(days=365),
        last_used_at=at + timedelta(microseconds=1),
        revoked_at=at + timedelta(hours=1),
        previous_expires_at=at - timedelta(days=400),
    )
    store.insert(key)
    got = store.get(key.kid)
    assert got is not None
    for name in ("created_at", "expires_at", "last_used_at", "revoked_at", "previous_expires_at"):
        value = getattr(got, name)
        assert value == getattr(key, name), name
        assert is_utc(value), name
        assert value.tzinfo == UTC, name
    assert got.created_at.isoformat() == "2026-03-29T01:59:59.999999+00:00"
    # Old and far-future instants too.
    old = record(kid(2), created_at=datetime(1970, 1, 1, tzinfo=UTC))
    far = record(kid(3), created_at=datetime(2999, 12, 31, 23, 59, 59, tzinfo=zone))
    for item in (old, far):
        store.insert(item)
        round_trip = store.get(item.kid)
        assert round_trip is not None and round_trip.created_at == item.created_at
        assert is_utc(round_trip.created_at)


def test_json_meta_round_trip(store: KeyStore) -> None:
    meta = {
        "unicode": 'Grüße, 東京, مرحبا, 😀 \u2028 "quoted" back\\slash',
        "ключ 🔑": ["ü", {"深い": {"deeper": [None, True, False]}}],
        "int": 42,
        "negative": -7,
        "big": 2**53 + 1,
        "float": 3.25,
        "small": 1.5e-7,
        "empty": {},
        "list": [],
        "": "empty key",
        "null": None,
    }
    store.insert(record(kid(1), meta=meta))
    got = store.get(kid(1))
    assert got is not None and dict(got.meta) == meta
    assert isinstance(got.meta["float"], float) and isinstance(got.meta["int"], int)
    # replace carries the new meta too
    changed = got.changed(meta={"after": "→ ✓"})
    assert store.replace(changed, got.version)
    again = store.get(kid(1))
    assert again is not None and dict(again.meta) == {"after": "→ ✓"}


# -- keys: replace, set_hash, delete ----------------------------------------------------------


def test_replace_checks_the_version(store: KeyStore) -> None:
    original = record(kid(1))
    store.insert(original)
    changed = original.changed(
        name="renamed",
        permissions=("write",),
        enabled=False,
        revoked_at=T0 + timedelta(days=2),
        meta={"x": 1},
        page_limit=9,
        owner="someone",
        accounts=("acct-9",),
        expires_at=T0 + timedelta(days=3),
        secret_hash="$other",
        previous_hash=original.secret_hash,
        previous_expires_at=T0 + timedelta(minutes=5),
    )
    assert store.replace(changed, expected_version="stale") is False
    assert store.get(original.kid) == original
    assert store.replace(changed, expected_version=original.version) is True
    assert store.get(original.kid) == changed
    # The old version no longer matches.
    assert store.replace(changed.changed(name="late"), expected_version=original.version) is False
    assert store.get(original.kid) == changed
    # Writing the same version again is allowed: only the expected version matters.
    assert store.replace(changed, expected_version=changed.version) is True
    assert store.replace(record("missing00000000x"), expected_version="v1") is False
    assert store.get("missing00000000x") is None


@pytest.mark.parametrize("writers", [2, 8])
def test_concurrent_replace_with_one_version_has_exactly_one_winner(
    store: KeyStore, writers: int
) -> None:
    for round_ in range(10):
        key = record(kid(round_))
        store.insert(key)

        def write(i: int, key: KeyRecord = key) -> bool:
            return store.replace(key.changed(name=f"writer {i}"), expected_version=key.version)

        results = run_together(writers, write)
        assert results.count(True) == 1, results
        winner = results.index(True)
        stored = store.get(key.kid)
        assert stored is not None and stored.name == f"writer {winner}"
        assert stored.version != key.version


def test_set_hash_only_from_the_old_hash_and_keeps_the_version(store: KeyStore) -> None:
    key = record(kid(1), last_used_at=T0)
    store.insert(key)
    store.set_hash(key.kid, "not the hash", "$new")
    assert store.get(key.kid) == key
    store.set_hash(key.kid, key.secret_hash, "$new")
    got = store.get(key.kid)
    assert got == dataclasses.replace(key, secret_hash="$new")
    store.set_hash(key.kid, key.secret_hash, "$newer")  # the old hash is gone: no change
    assert store.get(key.kid) == got
    store.set_hash("missing", "a", "b")  # nothing to change: fine


def test_delete(store: KeyStore) -> None:
    store.insert(record(kid(1)))
    store.insert(record(kid(2)))
    assert store.delete(kid(1)) is True
    assert store.delete(kid(1)) is False
    assert store.get(kid(1)) is None
    assert store.get(kid(2)) is not None
    assert store.delete("missing") is False


# -- keys: list -------------------------------------------------------------------------------


def test_list_pages_newest_first_with_ties_and_a_total(store: KeyStore) -> None:
    expected = []
    for i in range(23):
        # Groups of three share a created_at: ties are broken by kid, descending.
        when = T0 + timedelta(microseconds=(i // 3) * 7)
        key = record(kid(i), created_at=when, environment="test" if i % 5 == 0 else "live")
        store.insert(key)
        expected.append(key)
    store.insert(record("other00000000000", account_id="acct-2"))
    newest_first = [k.kid for k in sorted(expected, key=lambda k: (k.created_at, k.kid))][::-1]
    for limit in (1, 2, 3, 4, 22, 23, 24, 100):
        kids, totals = all_pages(store, limit)
        assert kids == newest_first, limit
        assert set(totals) == {23}
    page = list_page(store, limit=23)
    assert page.next_cursor is None and len(page.items) == 23
    page = list_page(store, limit=22)
    assert page.next_cursor is not None and len(page.items) == 22
    live, totals = all_pages(store, 5, environment="live")
    assert live == [k for k in newest_first if int(k[1:]) % 5 != 0] and set(totals) == {18}
    assert all_pages(store, 5, environment="staging") == ([], [0])
    assert all_pages(store, 5, account_id="acct-2") == (["other00000000000"], [1])
    assert all_pages(store, 5, account_id="nobody") == ([], [0])


def test_list_orders_kids_bytewise(store: KeyStore) -> None:
    # Mixed case and digits with one created_at: the order is by code point, as in SQLite.
    kids = ["aaaa", "AAAA", "bbbb", "BBBB", "0000", "zzzz", "Zzzz", "a_b_", "a-b-"]
    for k in kids:
        store.insert(record(k))
    assert all_pages(store, 2)[0] == sorted(kids, reverse=True)


def test_list_hides_revoked_keys_unless_asked(store: KeyStore) -> None:
    store.insert(record(kid(1)))
    store.insert(record(kid(2), revoked_at=T0))
    store.insert(record(kid(3), enabled=False))  # disabled is not revoked
    assert all_pages(store, 10) == ([kid(3), kid(1)], [2])
    assert all_pages(store, 1, include_revoked=True) == ([kid(3), kid(2), kid(1)], [3, 3, 3])


def test_search_is_a_literal_case_insensitive_substring(store: KeyStore) -> None:
    names = ["50% off", "5000 off", "a_b", "axb", "back\\slash", "Plain", "under_score_", "x%y_z"]
    for i, name in enumerate(names):
        store.insert(record(kid(i), name=name))

    def found(text: str | None, **options: Any) -> list[str]:
        kids, totals = all_pages(store, 3, search=text, **options)
        assert set(totals) == {len(kids)}
        return sorted(names[int(k[1:])] for k in kids)

    assert found("%") == ["50% off", "x%y_z"]
    assert found("0%") == ["50% off"]
    assert found("_") == ["a_b", "under_score_", "x%y_z"]
    assert found("a_b") == ["a_b"]
    assert found("%y_") == ["x%y_z"]
    assert found("\\") == ["back\\slash"]
    assert found("k\\s") == ["back\\slash"]
    assert found("OFF") == ["50% off", "5000 off"]
    assert found("plain") == ["Plain"]
    assert found("PLAIN") == ["Plain"]
    assert found("zzz") == []
    assert found("") == sorted(names)  # an empty search is no search
    assert found(None) == sorted(names)
    store.insert(record(kid(len(names)), name="other 50% off", revoked_at=T0))
    names.append("other 50% off")
    assert found("50%") == ["50% off"]
    assert found("50%", include_revoked=True) == ["50% off", "other 50% off"]


def test_search_environment_and_revoked_filters_combine(store: KeyStore) -> None:
    store.insert(record(kid(1), name="alpha live", environment="live"))
    store.insert(record(kid(2), name="alpha test", environment="test"))
    store.insert(record(kid(3), name="alpha gone", environment="live", revoked_at=T0))
    store.insert(record(kid(4), name="beta live", environment="live"))
    store.insert(record(kid(5), name="alpha elsewhere", account_id="acct-2"))
    assert all_pages(store, 10, search="ALPHA", environment="live") == ([kid(1)], [1])
    assert all_pages(store, 10, search="alpha", environment="live", include_revoked=True) == (
        [kid(3), kid(1)],
        [2],
    )
    assert all_pages(store, 10, search="alpha") == ([kid(2), kid(1)], [2])


def test_pagination_is_complete_and_stable_while_keys_are_added(store: KeyStore) -> None:
    original = []
    for i in range(30):
        key = record(kid(i), created_at=T0 + timedelta(seconds=i // 2))  # pairs tie
        store.insert(key)
        original.append(key.kid)
    seen: list[str] = []
    cursor: str | None = None
    added = 0
    last: tuple[datetime, str] | None = None
    while True:
        page = list_page(store, cursor, limit=4)
        for item in page.items:
            position = (item.created_at, item.kid)
            assert last is None or position < last  # strictly newer to older
            last = position
        seen += [item.kid for item in page.items]
        assert page.total == 30 + added
        # Meanwhile: newer keys, a key tied with the oldest, a revoked one.
        store.insert(record(f"N{added:015d}", created_at=T0 + timedelta(days=1, seconds=added)))
        store.insert(record(f"R{added:015d}", created_at=T0, revoked_at=T0))
        added += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen))  # nothing twice
    assert set(original) <= set(seen)  # nothing missed
    assert [k for k in seen if k in original] == sorted(
        original, key=lambda k: (int(k[1:]) // 2, k), reverse=True
    )


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "Zm9v",  # "foo": no separator
        base64.urlsafe_b64encode(b"yesterday|K1").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe|K1").decode(),
        "a",
    ],
)
def test_a_bad_cursor_is_invalid_input(store: KeyStore, cursor: str) -> None:
    store.insert(record(kid(1)))
    with pytest.raises(InvalidInput) as error:
        list_page(store, cursor, limit=5)
    assert error.value.field == "cursor"
    assert list_page(store, "", limit=5).total == 1  # an empty cursor is the first page


# -- keys: touch ------------------------------------------------------------------------------


def test_touch_only_moves_last_use_forward(store: KeyStore) -> None:
    store.insert(record(kid(1)))
    store.insert(record(kid(2), last_used_at=T0 + timedelta(hours=1)))
    later, earlier = T0 + timedelta(minutes=5), T0 + timedelta(minutes=1)
    store.touch({kid(1): later, kid(2): earlier, "missing": later})
    first, second = store.get(kid(1)), store.get(kid(2))
    assert first is not None and first.last_used_at == later and first.version == "v1"
    assert second is not None and second.last_used_at == T0 + timedelta(hours=1)
    store.touch({kid(1): earlier})
    assert store.get(kid(1)).last_used_at == later  # type: ignore[union-attr]
    store.touch({kid(1): later})  # the same instant: unchanged
    assert store.get(kid(1)).last_used_at == later  # type: ignore[union-attr]
    latest = (T0 + timedelta(hours=2)).astimezone(timezone(timedelta(hours=-3)))
    store.touch({kid(1): latest, kid(2): latest})
    for k in (kid(1), kid(2)):
        got = store.get(k)
        assert got is not None and got.last_used_at == latest and is_utc(got.last_used_at)
        assert got.version == "v1"
    store.touch({})


def test_concurrent_touches_keep_the_latest(store: KeyStore) -> None:
    kids = [kid(i) for i in range(5)]
    for k in kids:
        store.insert(record(k))

    def touch(i: int) -> None:
        for step in range(10):
            at = T0 + timedelta(seconds=step * 8 + i)
            # Each batch names the keys in another order.
            order = kids[i % 5 :] + kids[: i % 5]
            store.touch({k: at for k in order})

    run_together(8, touch)
    for k in kids:
        got = store.get(k)
        assert got is not None and got.last_used_at == T0 + timedelta(seconds=9 * 8 + 7)


# -- usage ------------------------------------------------------------------------------------


def test_add_usage_sums_and_usage_reads_by_period(store: KeyStore) -> None:
    store.add_usage(
        [
            UsageDelta(ACCT, "2026-09", "live", "k1", 5, 1),
            UsageDelta(ACCT, "2026-09", "live", "k2", 2, 1),
            UsageDelta(ACCT, "2026-08", "live", "k1", 1, 1),
            UsageDelta("acct-2", "2026-09", "live", "k1", 9, 9),
        ]
    )
    store.add_usage(
        [
            UsageDelta(ACCT, "2026-09", "live", "k1", 3, 2),
            UsageDelta(ACCT, "2026-09", "live", "k1", -1, 0),  # a refund, in the same batch
            UsageDelta(ACCT, "2026-09", "test", "k1", 4, 1),
        ]
    )
    rows = sorted(store.usage(ACCT, ["2026-09"]), key=lambda r: (r.environment, r.kid))
    assert rows == [
        UsageRow("2026-09", "live", "k1", 7, 3),
        UsageRow("2026-09", "live", "k2", 2, 1),
        UsageRow("2026-09", "test", "k1", 4, 1),
    ]
    assert store.usage(ACCT, ["2026-08", "2026-07"]) == [UsageRow("2026-08", "live", "k1", 1, 1)]
    both = sorted(
        store.usage(ACCT, ("2026-08", "2026-09")), key=lambda r: (r.period, r.environment, r.kid)
    )
    assert [(r.period, r.environment, r.kid) for r in both] == [
        ("2026-08", "live", "k1"),
        ("2026-09", "live", "k1"),
        ("2026-09", "live", "k2"),
        ("2026-09", "test", "k1"),
    ]
    assert store.usage("acct-2", ["2026-09"]) == [UsageRow("2026-09", "live", "k1", 9, 9)]
    assert store.usage("acct-3", ["2026-09"]) == []
    assert store.usage(ACCT, []) == []
    store.add_usage([])
    big = 2**40
    store.add_usage([UsageDelta(ACCT, "2026-10", "live", "k1", big, big)] * 3)
    assert store.usage(ACCT, ["2026-10"]) == [UsageRow("2026-10", "live", "k1", 3 * big, 3 * big)]


def test_usage_upserts_sum_under_eight_threads(store: KeyStore) -> None:
    rounds = 25

    def add(i: int) -> None:
        for n in range(rounds):
            store.add_usage(
                [
                    UsageDelta(ACCT, "2026-09", "live", "shared", 2, 1),
                    UsageDelta(ACCT, "2026-09", "live", f"own-{i}", 1, 1),
                    # Batches overlap in different orders.
                    UsageDelta(ACCT, "2026-09", "test", f"other-{(i + n) % 3}", 1, 0),
                ]
            )

    run_together(8, add)
    rows = {(r.environment, r.kid): (r.pages, r.requests) for r in store.usage(ACCT, ["2026-09"])}
    assert rows.pop(("live", "shared")) == (2 * 8 * rounds, 8 * rounds)
    for i in range(8):
        assert rows.pop(("live", f"own-{i}")) == (rounds, rounds)
    others = [rows.pop(("test", f"other-{j}")) for j in range(3)]
    assert sum(p for p, _ in others) == 8 * rounds and all(r == 0 for _, r in others)
    assert rows == {}


# -- limits -----------------------------------------------------------------------------------


def test_limits(store: KeyStore) -> None:
    assert store.get_limit(ACCT) is None
    store.set_limit(ACCT, AccountLimit(100))
    assert store.get_limit(ACCT) == AccountLimit(100)
    store.set_limit(ACCT, AccountLimit(None, "pro"))
    assert store.get_limit(ACCT) == AccountLimit(None, "pro")
    store.set_limit(ACCT, AccountLimit(5, "pro"))
    assert store.get_limit(ACCT) == AccountLimit(5, "pro")
    store.set_limit(ACCT, AccountLimit(None))
    assert store.get_limit(ACCT) == AccountLimit(None)  # unlimited, not "no row"
    store.set_limit(ACCT, AccountLimit(0))
    assert store.get_limit(ACCT) == AccountLimit(0)
    store.set_limit("acct-2", AccountLimit(7))
    store.set_limit(ACCT, None)
    assert store.get_limit(ACCT) is None
    assert store.get_limit("acct-2") == AccountLimit(7)
    store.set_limit("acct-3", None)  # nothing to delete: fine
    assert store.get_limit("acct-3") is None


# -- audit ------------------------------------------------------------------------------------


def audit(i: int, **changes: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "at": T0 + timedelta(seconds=i),
        "account_id": ACCT,
        "actor": "cli:ops",
        "action": "key.create" if i % 2 == 0 else "key.revoke",
        "target": f"key_{kid(i)}",
        "details": {"i": i},
    }
    values.update(changes)
    return AuditEntry(**values)


def all_audit(store: KeyStore, limit: int, **options: Any) -> list[AuditEntry]:
    seen: list[AuditEntry] = []
    cursor: str | None = None
    options.setdefault("action", None)
    for _ in range(1000):
        items, cursor = store.list_audit(ACCT, limit=limit, cursor=cursor, **options)
        assert len(items) <= limit
        seen += items
        if cursor is None:
            return seen
    raise AssertionError("pagination does not end")


def test_audit_entries_newest_first_with_a_cursor(store: KeyStore) -> None:
    for i in range(7):
        store.add_audit(audit(i, account_id=ACCT if i != 3 else "acct-2"))
    for limit in (1, 2, 6, 7, 50):
        seen = all_audit(store, limit)
        assert [e.details["i"] for e in seen] == [6, 5, 4, 2, 1, 0], limit
    seen = all_audit(store, 2)
    ids = [e.id for e in seen]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids, reverse=True)  # type: ignore[type-var]
    assert len(set(ids)) == len(ids)
    first = seen[0]
    assert first == dataclasses.replace(audit(6), id=first.id)
    assert is_utc(first.at)
    revokes, cursor = store.list_audit(ACCT, action="key.revoke", limit=10, cursor=None)
    assert [e.details["i"] for e in revokes] == [5, 1] and cursor is None
    assert [e.details["i"] for e in all_audit(store, 1, action="key.create")] == [6, 4, 2, 0]
    assert store.list_audit(ACCT, action="session.login", limit=5, cursor=None) == ([], None)
    other, _ = store.list_audit("acct-2", action=None, limit=5, cursor=None)
    assert [e.details["i"] for e in other] == [3]
    assert store.list_audit("nobody", action=None, limit=5, cursor=None) == ([], None)
    # A cursor past the newest id starts from the newest entry.
    for past in (str(10**6), "9" * 30, "9" * 5000):
        newest, _ = store.list_audit(ACCT, action=None, limit=1, cursor=past)
        assert newest[0].details["i"] == 6
    oldest, cursor = store.list_audit(ACCT, action=None, limit=5, cursor=str(seen[-1].id))
    assert (oldest, cursor) == ([], None)


def test_audit_details_round_trip_json_and_stringify_the_rest(store: KeyStore) -> None:
    details = {
        "name": "Grüße 😀 東京",
        "permissions": ["read", "write"],
        "nested": {"n": 1, "f": 0.5, "none": None, "yes": True},
        "when": T0,  # not JSON: stored as its str(), like SQLite does
    }
    zone = timezone(timedelta(hours=9))
    store.add_audit(audit(1, details=details, at=T0.astimezone(zone), target=None))
    (entry,), _ = store.list_audit(ACCT, action=None, limit=5, cursor=None)
    assert dict(entry.details) == {**details, "when": str(T0)}
    assert entry.at == T0 and entry.at.tzinfo == UTC and entry.target is None


@pytest.mark.parametrize("cursor", ["x1", "1.5", "-1", "1 ", " 1", "0x10"])
def test_a_bad_audit_cursor_is_invalid_input(store: KeyStore, cursor: str) -> None:
    store.add_audit(audit(1))
    with pytest.raises(InvalidInput) as error:
        store.list_audit(ACCT, action=None, limit=2, cursor=cursor)
    assert error.value.field == "cursor"
    assert len(store.list_audit(ACCT, action=None, limit=2, cursor="")[0]) == 1


# -- sessions ---------------------------------------------------------------------------------


def session(sid: str = "S000000000000001", **changes: Any) -> SessionRecord:
    values: dict[str, Any] = {
        "sid": sid,
        "kid": kid(1),
        "account_id": ACCT,
        "secret_digest": "d" * 64,
        "key_hash_fingerprint": "f" * 32,
        "created_at": T0,
        "expires_at": T0 + timedelta(hours=12),
        "idle_timeout": 1800.0,
        "last_seen_at": T0,
    }
    values.update(changes)
    return SessionRecord(**values)


def test_sessions_round_trip(store: KeyStore) -> None:
    plain = session()
    store.insert_session(plain)
    got = store.get_session(plain.sid)
    assert got == plain and got is not None
    assert all(is_utc(v) for v in (got.created_at, got.expires_at, got.last_seen_at))
    assert got.ended_at is None and isinstance(got.idle_timeout, float)
    zone = timezone(timedelta(hours=-5))
    odd = session(
        "S000000000000002",
        created_at=T0.astimezone(zone),
        expires_at=(T0 + timedelta(seconds=1.5)).astimezone(zone),
        last_seen_at=T0.astimezone(zone),
        idle_timeout=0.25,
        ended_at=T0 + timedelta(microseconds=1),
    )
    store.insert_session(odd)
    got = store.get_session(odd.sid)
    assert got == odd and got is not None and got.created_at.tzinfo == UTC
    assert got.ended_at is not None and got.ended_at.tzinfo == UTC
    assert store.get_session("missing") is None
    with pytest.raises(Exception):  # noqa: B017  (each database's integrity error)
        store.insert_session(session(plain.sid, kid="other"))
    assert store.get_session(plain.sid) == plain


def test_a_session_ends_only_once(store: KeyStore) -> None:
    store.insert_session(session())
    assert store.end_session("S000000000000001", T0 + timedelta(minutes=9)) is True
    assert store.end_session("S000000000000001", T0 + timedelta(minutes=10)) is False
    got = store.get_session("S000000000000001")
    assert got is not None and got.ended_at == T0 + timedelta(minutes=9)
    assert store.end_session("missing", T0) is False


def test_concurrent_logouts_end_a_session_once(store: KeyStore) -> None:
    store.insert_session(session())
    results = run_together(
        8, lambda i: store.end_session("S000000000000001", T0 + timedelta(seconds=i))
    )
    assert results.count(True) == 1
    got = store.get_session("S000000000000001")
    assert got is not None and got.ended_at == T0 + timedelta(seconds=results.index(True))


def test_touch_sessions_only_moves_forward(store: KeyStore) -> None:
    store.insert_session(session())
    store.insert_session(session("S000000000000002", last_seen_at=T0 + timedelta(hours=1)))
    store.touch_sessions(
        {
            "S000000000000001": T0 + timedelta(minutes=5),
            "S000000000000002": T0 + timedelta(minutes=5),  # older than what it has
            "missing": T0,
        }
    )
    store.touch_sessions({"S000000000000001": T0 + timedelta(minutes=1)})  # never backwards
    first, second = store.get_session("S000000000000001"), store.get_session("S000000000000002")
    assert first is not None and first.last_seen_at == T0 + timedelta(minutes=5)
    assert second is not None and second.last_seen_at == T0 + timedelta(hours=1)
    assert first.ended_at is None
    store.touch_sessions({})


# -- PostgreSQL only --------------------------------------------------------------------------


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> Iterator[Any]:
    made = postgres_store(request)
    try:
        yield made
    finally:
        made.close()


def tables_in(url: str, schema: str) -> set[str]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {row[0] for row in rows}


TABLES = {
    "keystile_schema",
    "keystile_keys",
    "keystile_usage",
    "keystile_audit",
    "keystile_sessions",
    "keystile_limits",
}


def test_postgres_creates_its_tables_in_the_schema_on_first_use(
    postgres_url: str, postgres_schema: str
) -> None:
    from keystile.stores.postgres import PostgresStore

    stores = [PostgresStore(postgres_url, schema=postgres_schema) for _ in range(4)]
    try:
        assert tables_in(postgres_url, postgres_schema) == set()  # nothing until first use
        assert postgres_url not in repr(stores[0])
        # Several stores (as several processes would) create the schema at once.
        run_together(4, lambda i: stores[i].get("nothing"))
        assert tables_in(postgres_url, postgres_schema) == TABLES
        stores[0].insert(record(kid(1)))
        assert all(s.get(kid(1)) == record(kid(1)) for s in stores)
    finally:
        for s in stores:
            s.close()


def test_postgres_creates_a_missing_schema(postgres_url: str, postgres_schema: str) -> None:
    import psycopg
    from psycopg import sql

    from keystile.stores.postgres import PostgresStore

    nested = postgres_schema + "_new"
    store = PostgresStore(postgres_url, schema=nested)
    try:
        store.insert(record(kid(1)))
        assert tables_in(postgres_url, nested) == TABLES
    finally:
        store.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(nested)))


def test_open_store_honours_a_search_path_in_the_url(
    postgres_url: str, postgres_schema: str
) -> None:
    from keystile.stores.postgres import PostgresStore

    store = open_store(search_path_url(postgres_url, postgres_schema))
    try:
        assert isinstance(store, PostgresStore) and store.blocking is True
        store.insert(record(kid(1)))
        assert tables_in(postgres_url, postgres_schema) == TABLES
    finally:
        store.close()
    again = PostgresStore(postgres_url, schema=postgres_schema)
    try:
        assert again.get(kid(1)) == record(kid(1))
    finally:
        again.close()


def test_postgres_works_for_a_role_that_cannot_create_tables(
    postgres_url: str, postgres_schema: str
) -> None:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from keystile.stores.postgres import PostgresStore

    owner = PostgresStore(postgres_url, schema=postgres_schema)
    owner.insert(record(kid(1)))
    owner.close()
    role = f"{postgres_schema}_app"
    ident, schema = sql.Identifier(role), sql.Identifier(postgres_schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test user may not create roles")
        try:
            for grant in (
                "GRANT USAGE ON SCHEMA {schema} TO {role}",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
                "GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            ):
                conn.execute(sql.SQL(grant).format(schema=schema, role=ident))
            app = PostgresStore(make_conninfo(postgres_url, user=role), schema=postgres_schema)
            try:
                assert app.get(kid(1)) == record(kid(1))
                app.insert(record(kid(2)))
                app.add_audit(audit(1))
                assert len(app.list_audit(ACCT, action=None, limit=5, cursor=None)[0]) == 1
            finally:
                app.close()
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_postgres_errors_are_backend_errors(postgres_url: str, postgres_schema: str) -> None:
    import psycopg

    from keystile._core.errors import BackendError
    from keystile.stores.postgres import PostgresStore

    nowhere = PostgresStore("postgresql://127.0.0.1:1/none?connect_timeout=1", timeout=1.0)
    try:
        with pytest.raises(BackendError) as failed:
            nowhere.get(kid(1))
        assert isinstance(failed.value.__cause__, psycopg.OperationalError)
    finally:
        nowhere.close()
    store = PostgresStore(postgres_url, schema=postgres_schema)
    try:
        with pytest.raises(BackendError) as failed:
            store.insert(record(kid(1), page_limit=2**63))
        assert isinstance(failed.value.__cause__, psycopg.errors.NumericValueOutOfRange)
        store.insert(record(kid(1)))  # the pool is still fine
        assert store.get(kid(1)) is not None
    finally:
        store.close()
    with pytest.raises(BackendError):  # closed is closed
        store.get(kid(1))


def test_postgres_refuses_nul_characters_as_invalid_input(pg: Any) -> None:
    with pytest.raises(InvalidInput) as error:
        pg.insert(record(kid(1), meta={"a": "nul\x00here"}))
    assert error.value.field == "meta"
    with pytest.raises(InvalidInput) as error:
        pg.insert(record(kid(1), owner="o\x00"))
    assert error.value.field == "owner"
    pg.insert(record(kid(1)))
    with pytest.raises(InvalidInput):
        pg.replace(record(kid(1), meta={"k\x00": 1}), "v1")
    assert pg.get(kid(1)) == record(kid(1))
    # The audit trail keeps the entry rather than losing it.
    pg.add_audit(audit(1, details={"x": "a\x00b"}))
    (entry,), _ = pg.list_audit(ACCT, action=None, limit=5, cursor=None)
    assert entry.details == {"x": "a\ufffdb"}


def test_postgres_search_with_a_nul_finds_nothing(pg: Any) -> None:
    # (SQLite's LIKE stops at the NUL and so matches every name.)
    pg.insert(record(kid(1), name="abc"))
    assert list_page(pg, search="a\x00").total == 0
    assert list_page(pg, search="a").total == 1


@pytest.mark.parametrize("cursor", ["١٢", "²"])
def test_postgres_audit_cursors_are_ascii_digits(pg: Any, cursor: str) -> None:
    # (SQLite's str.isdigit() check lets these through, to compare as text.)
    with pytest.raises(InvalidInput):
        pg.list_audit(ACCT, action=None, limit=2, cursor=cursor)


def test_postgres_stores_real_types(pg: Any, postgres_url: str, postgres_schema: str) -> None:
    import psycopg

    pg.insert(record(kid(1), meta={"a": [1]}))
    pg.add_audit(audit(1))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s",
            (postgres_schema,),
        ).fetchall()
        types = {(t, c): d for t, c, d in rows}
        assert types["keystile_keys", "created_at"] == "timestamp with time zone"
        assert types["keystile_keys", "meta"] == "jsonb"
        assert types["keystile_keys", "permissions"] == "jsonb"
        assert types["keystile_keys", "enabled"] == "boolean"
        assert types["keystile_audit", "details"] == "jsonb"
        assert types["keystile_sessions", "expires_at"] == "timestamp with time zone"
        meta = conn.execute(
            f"SELECT meta -> 'a' ->> 0 FROM \"{postgres_schema}\".keystile_keys"
        ).fetchone()
        assert meta == ("1",)


# -- the engine on PostgreSQL -----------------------------------------------------------------


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_the_engine_on_postgres(postgres_url: str, postgres_schema: str, clock: Clock) -> None:
    from keystile.stores.postgres import PostgresStore

    settings = {
        "store": search_path_url(postgres_url, postgres_schema),
        "argon2": FAST_ARGON2,
        "monthly_page_limit": 10,
    }
    ks = Keystile(settings, clock=clock)
    try:
        assert isinstance(ks.store, PostgresStore)
        created = ks.keys.create(ACCT, "pg key", permissions=["read"], meta={"team": "données"})
        assert ks.keys.list(ACCT).total == 1
        assert ks.keys.list(ACCT, search="PG").items[0].id == created.key_id
        for _ in range(3):
            principal = ks.authenticate(bearer(created.token))
            assert principal.key_id == created.key_id and principal.account_id == ACCT
            ks.settle(principal, 200)
        assert ks.quotas.usage(ACCT).pages == 3  # buffered, not yet in the store
        kid_ = created.key_id.removeprefix("key_")
        assert ks.store.usage(ACCT, ["2026-09"]) == []
        ks.flush()
        assert ks.store.usage(ACCT, ["2026-09"]) == [UsageRow("2026-09", "live", kid_, 3, 3)]
        ks.flush()  # nothing left: no double count
        assert ks.store.usage(ACCT, ["2026-09"]) == [UsageRow("2026-09", "live", kid_, 3, 3)]
        key = ks.keys.get(created.key_id)
        assert key.last_used_at == ks.now() and key.meta == {"team": "données"}
        ks.quotas.set_limit(ACCT, 50)
        assert ks.store.get_limit(ACCT) == AccountLimit(50)
        session = ks.sessions.login(bearer(created.token), client="127.0.0.1")
        by_session = bearer(session.token)
        assert ks.authenticate(by_session).auth_method == "session"
        ks.sessions.logout(ks.authenticate(by_session))
        with pytest.raises(AuthError):
            ks.authenticate(by_session)
        clock.advance(60)
        revoked = ks.keys.revoke(created.key_id)
        assert revoked.revoked_at == ks.now()
        with pytest.raises(AuthError) as refused:
            ks.authenticate(bearer(created.token))
        assert refused.value.spec is EXPIRED_API_KEY
        assert ks.keys.list(ACCT).total == 0
        assert ks.keys.list(ACCT, include_revoked=True).total == 1
        actions = [entry.action for entry in ks.audit.list(ACCT).items]
        assert actions[0] == "key.revoke" and "key.create" in actions
        assert {"session.login", "session.logout", "limit.change"} <= set(actions)
        ks.flush()
    finally:
        ks.close()
    # A restart on the same database carries on from the stored usage.
    store = PostgresStore(postgres_url, schema=postgres_schema)
    again = Keystile({"argon2": FAST_ARGON2, "monthly_page_limit": 10}, clock=clock, store=store)
    try:
        pages = again.quotas.usage(ACCT).pages
        assert pages == 5  # three by key, two by session
        assert again.keys.get(created.key_id).revoked_at == revoked.revoked_at
        second = again.keys.create(ACCT, "second")
        again.settle(again.authenticate(bearer(second.token)), 200)
        again.flush()
        assert again.quotas.usage(ACCT).pages == pages + 1
    finally:
        again.close()


def test_the_async_engine_on_postgres(
    postgres_url: str, postgres_schema: str, clock: Clock
) -> None:
    import asyncio

    from keystile.stores.postgres import PostgresStore

    store = PostgresStore(postgres_url, schema=postgres_schema)
    ks = Keystile({"argon2": FAST_ARGON2}, clock=clock, store=store)
    try:
        created = ks.keys.create(ACCT, "async key")

        async def main() -> list[str]:
            principals = await asyncio.gather(
                *(ks.authenticate_async(bearer(created.token)) for _ in range(8))
            )
            for principal in principals:
                await ks.settle_async(principal, 200)
            return [p.key_id for p in principals]

        assert asyncio.run(main()) == [created.key_id] * 8
        ks.flush()
        assert sum(r.pages for r in store.usage(ACCT, ["2026-09"])) == 8
    finally:
        ks.close()


def test_a_store_failure_is_a_503(clock: Clock) -> None:
    pytest.importorskip("psycopg_pool")
    from keystile._core.tokens import format_token, new_kid, new_secret
    from keystile.stores.postgres import PostgresStore

    store = PostgresStore("postgresql://127.0.0.1:1/none?connect_timeout=1", timeout=1.0)
    ks = Keystile({"argon2": FAST_ARGON2}, clock=clock, store=store)
    try:
        kid_ = new_kid()
        token = format_token("sk", "live", kid_, new_secret(kid_))
        with pytest.raises(AuthError) as error:
            ks.authenticate(bearer(token))
        assert error.value.status == 503
    finally:
        ks.close()


def test_set_hash_moves_the_keys_sessions_to_the_new_fingerprint(store: KeyStore) -> None:
    from keystile.stores.base import fingerprint

    key = record(kid(1))
    store.insert(key)
    current = fingerprint(key.secret_hash)
    store.insert_session(session("S000000000000001", key_hash_fingerprint=current))
    store.insert_session(session("S000000000000002", key_hash_fingerprint="f" * 32))  # rolled
    store.set_hash(key.kid, "not the hash", "$new")  # no rehash: nothing moves
    assert store.get_session("S000000000000001").key_hash_fingerprint == current  # type: ignore[union-attr]
    store.set_hash(key.kid, key.secret_hash, "$new")
    moved = store.get_session("S000000000000001")
    assert moved is not None and moved.key_hash_fingerprint == fingerprint("$new")
    stale = store.get_session("S000000000000002")
    assert stale is not None and stale.key_hash_fingerprint == "f" * 32
