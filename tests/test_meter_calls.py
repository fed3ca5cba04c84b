"""meter.lua's keys and arguments, kept per charge: each call still gets its own marker, its
own time to live and its own seed, and a changed key (a new snapshot) its own stamp."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone

from keystile._core.metercalls import TTL_ARG, MeterCalls
from keystile._core.metering import USAGE_GRACE_SECONDS, Charge
from keystile._core.periods import Period
from keystile._core.rediskeys import RedisKeys
from keystile._core.snapshot import Snapshot

PERIOD = Period(
    datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc), "2026-12"
)
END = PERIOD.end.timestamp()


def calls(size: int = 100) -> MeterCalls:
    ids = (f"proc{n}" for n in itertools.count())
    return MeterCalls(RedisKeys("ks"), lambda: next(ids), "proc", ("8000,10000", 86400, 300), size)


def charge(idempotency: str | None = None, account: str = "acct_1") -> Charge:
    return Charge(account, "live", "kid1", None, PERIOD, 1, idempotency)


def snapshot(version: str) -> Snapshot:
    return Snapshot(
        "kid1", "acct_1", "n", None, "live", (), (), {}, None, False, True, None, version
    )


def test_each_call_has_its_own_marker_and_time_to_live() -> None:
    meter, paid = calls(), charge()
    first_keys, first_args = meter.call(paid, None, "", "", END - 100)
    second_keys, second_args = meter.call(paid, None, "", "", END - 50)
    assert first_keys[:-1] == second_keys[:-1]
    assert first_keys[-1] != second_keys[-1]
    assert first_keys[-1].startswith("ks:{a:acct_1}:c:")
    assert first_args[TTL_ARG] == 100 + USAGE_GRACE_SECONDS
    assert second_args[TTL_ARG] == 50 + USAGE_GRACE_SECONDS
    first_args[0] = "1"  # a caller's retry changes its own copy only
    assert meter.call(paid, None, "", "", END - 50)[1][0] == "0"


def test_a_seed_goes_with_its_call_only() -> None:
    meter, paid = calls(), charge()
    _, seeded = meter.call(paid, None, "none", '{"pages":3}', END - 10)
    assert seeded[6:8] == ["none", '{"pages":3}']
    _, plain = meter.call(paid, None, "", "", END - 10)
    assert plain[6:8] == ["", ""]


def test_a_new_snapshot_sends_its_own_stamp() -> None:
    meter, paid = calls(), charge()
    old, new = snapshot("v1"), snapshot("v2")
    old_keys, old_args = meter.call(paid, old, "", "", END - 10)
    new_keys, new_args = meter.call(paid, new, "", "", END - 10)
    assert (old_args[4], new_args[4]) == ("v1", "v2")
    assert old_keys[3] == new_keys[3] == "ks:{a:acct_1}:v:kid1"  # the stamp compared
    assert meter.call(paid, None, "", "", END - 10)[1][4] == ""  # none compared


def test_an_idempotent_request_names_its_marker_and_is_not_kept() -> None:
    meter = calls()
    keys, args = meter.call(charge("digest1"), None, "", "", END - 10)
    assert keys[2] == "ks:{a:acct_1}:i:digest1" and args[12] == "1"
    assert meter.call(charge(), None, "", "", END - 10)[0][2] == "ks:{a:acct_1}:u:2026-12:live"
    assert len(meter._kept) == 1


def test_kept_calls_are_bounded() -> None:
    meter = calls(size=5)
    for n in range(40):
        keys, _ = meter.call(charge(account=f"acct_{n}"), None, "", "", END - 10)
        assert keys[0] == f"ks:{{a:acct_{n}}}:u:2026-12:live"
    assert len(meter._kept) <= 5


def test_a_keys_newer_snapshot_replaces_the_kept_call() -> None:
    meter, paid = calls(), charge()
    for version in ("v1", "v2", "v3"):
        assert meter.call(paid, snapshot(version), "", "", END - 10)[1][4] == version
    assert len(meter._kept) == 1
