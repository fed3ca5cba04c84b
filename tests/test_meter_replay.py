"""A meter call sent again (its first reply lost) is answered from the call's marker
(once.lua): the outcome of the first reply, and nothing runs twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keystile import Keystile
from keystile._core.metering import parse_script_reply

Call = tuple[list[str], list[Any], Any]


def warm_meter_call(ks: Keystile, token: str) -> Call:
    """A warm strict request's meter call: its keys, its arguments and the reply it got."""
    headers = [("authorization", f"Bearer {token}")]
    ks.settle(ks.authenticate(headers), 200)  # cold: verifies and caches the key
    assert ks.redis is not None
    scripts = ks.redis.sync.scripts
    meter, calls = scripts["meter"], []

    def recording(keys: list[str], args: list[Any]) -> Any:
        reply = meter(keys, args)
        calls.append((list(keys), list(args), reply))
        return reply

    scripts["meter"] = recording
    try:
        ks.settle(ks.authenticate(headers), 200)
    finally:
        scripts["meter"] = meter
    assert len(calls) == 1
    return calls[0]


def replayed(ks: Keystile, call: Call) -> Any:
    keys, args, _ = call
    assert ks.redis is not None
    again = ["1", *args[1:]]  # the retry flag: answered from the marker, not run
    return ks.redis.sync.scripts["meter"](keys, again)


def test_a_resent_charge_is_answered_with_the_first_outcome(
    make_keystile: Callable[..., Keystile], redis_settings: dict[str, Any]
) -> None:
    # A limit that the second request crosses 80% of, and rate limits on the key and the
    # account: every field of the reply is set.
    ks = make_keystile(**redis_settings, monthly_page_limit=2, quota_thresholds=[0.5, 1.0])
    ks.quotas.set_rate_limit("acct_1", "1000/h")
    token = ks.keys.create("acct_1", "k", rate_limit="100/min").token
    call = warm_meter_call(ks, token)
    first = call[2]
    assert first[0] == "ok" and first[3] == "10000"  # the second page of two: 100% crossed
    assert len(first) == 15  # two rate limits, five fields each
    again = replayed(ks, call)
    by_points = ks.admission.by_points
    assert parse_script_reply(again, by_points) == parse_script_reply(first, by_points)
    assert ks.redis is not None
    usage = ks.redis.sync.client.hgetall(call[0][0])
    assert usage["pages"] == "2"  # the resend ran nothing


def test_a_resent_charge_without_limits_is_answered_alike(
    make_keystile: Callable[..., Keystile], redis_settings: dict[str, Any]
) -> None:
    ks = make_keystile(**redis_settings)
    call = warm_meter_call(ks, ks.keys.create("acct_1", "k").token)
    first, again = call[2], replayed(ks, call)
    assert first[:4] == ["ok", 2, -1, ""]
    by_points = ks.admission.by_points
    assert parse_script_reply(again, by_points) == parse_script_reply(first, by_points)
