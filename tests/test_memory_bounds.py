"""What a long-running worker keeps grows to a bound, not with the traffic."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from keystile import Keystile
from keystile._core import localcounters


def post(ks: Keystile, token: str, key: str) -> int:
    headers = [("authorization", f"Bearer {token}"), ("idempotency-key", key)]
    principal = ks.authenticate(headers, "POST", "/orders", body=b"{}")
    ks.settle(principal, 200)
    return principal.quota.used  # type: ignore[union-attr]


def test_idempotency_markers_without_redis_stay_bounded(
    make_keystile: Callable[..., Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localcounters, "IDEMPOTENCY_MARKERS", 50)
    ks = make_keystile()
    token = ks.keys.create("acct-1", "k").token
    for n in range(500):
        post(ks, token, f"order-{n}")
    markers = ks.admission.counters._idempotency
    assert len(markers) == 50
    used = post(ks, token, "order-499")  # a recent key still names its first request
    assert used == 500
    assert post(ks, token, "order-0") == 501  # the oldest was let go: charged again


def test_expired_idempotency_markers_leave_first(
    make_keystile: Callable[..., Keystile],
) -> None:
    now = [1_800_000_000.0]
    ks = make_keystile(clock=lambda: now[0], idempotency_ttl=60)
    token = ks.keys.create("acct-1", "k").token
    for n in range(10):
        post(ks, token, f"order-{n}")
    now[0] += 61
    post(ks, token, "later")  # the ten expired markers leave as the new one comes
    assert len(ks.admission.counters._idempotency) == 1


@pytest.mark.redis
def test_a_closed_event_loops_redis_client_is_let_go(
    make_keystile: Callable[..., Keystile], redis_settings: dict[str, object]
) -> None:
    """Code that runs a loop per call (asyncio.run, async_to_sync) must not pile clients."""
    import asyncio

    ks = make_keystile(**redis_settings)
    token = ks.keys.create("acct-1", "k").token

    async def once() -> None:
        principal = await ks.authenticate_async([("authorization", f"Bearer {token}")])
        await ks.settle_async(principal, 200)

    for _ in range(20):
        asyncio.run(once())
    assert len(ks.redis.aio._by_loop) == 1  # the last loop's, kept until the next one
