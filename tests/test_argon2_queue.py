"""argon2 runs are capped; when every slot stays busy, the excess gets a fast 429."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from keystile import AuthError, Keystile
from keystile._core.errors import TOO_MANY_ATTEMPTS
from keystile.starlette import KeystileMiddleware, management_mount


def busy_engine(make_keystile: Callable[..., Keystile]) -> Keystile:
    return make_keystile(argon2_max_concurrency=1, argon2_queue_timeout=0.05)


def test_a_full_argon2_queue_answers_429_fast_and_recovers(
    make_keystile: Callable[..., Keystile],
) -> None:
    ks = busy_engine(make_keystile)
    key = ks.keys.create("acct_1", "k")
    assert ks.hasher._slots.acquire()  # another request holds the only slot
    try:
        # Waits argon2_queue_timeout (0.05 s) for the slot, then refuses instead of queueing.
        with pytest.raises(AuthError) as refused:
            ks.authenticate([("x-api-key", key.token)])
        assert refused.value.spec is TOO_MANY_ATTEMPTS
        assert refused.value.headers == {"retry-after": "1"}
        with pytest.raises(AuthError) as login:
            ks.sessions.login([("x-api-key", key.token)], client="10.0.0.1")
        assert login.value.spec is TOO_MANY_ATTEMPTS
    finally:
        ks.hasher._slots.release()
    assert ks.authenticate([("x-api-key", key.token)]).key_id == key.key_id
    # A busy refusal is not a failed login: the client is not being limited.
    assert ks.sessions.failures.count("client:10.0.0.1") == 0
    assert ks.sessions.login([("x-api-key", key.token)], client="10.0.0.1").token


def test_login_over_http_gets_a_json_429_when_busy(make_keystile: Callable[..., Keystile]) -> None:
    ks = busy_engine(make_keystile)
    key = ks.keys.create("acct_1", "k")
    app = Starlette(routes=[management_mount("/v1", ks)])
    app.add_middleware(KeystileMiddleware, keystile=ks)
    with TestClient(app) as client:
        assert ks.hasher._slots.acquire()
        try:
            response = client.post(
                "/v1/auth/login", headers={"x-api-key": key.key_id, "x-api-secret": key.secret}
            )
        finally:
            ks.hasher._slots.release()
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "AUTH_007"
        assert response.headers["retry-after"] == "1"
        again = client.post(
            "/v1/auth/login", headers={"x-api-key": key.key_id, "x-api-secret": key.secret}
        )
        assert again.status_code == 200


def test_usage_is_reachable_from_the_engine(make_keystile: Callable[..., Keystile]) -> None:
    ks = make_keystile()
    key = ks.keys.create("acct_1", "k")
    ks.settle(ks.authenticate([("x-api-key", key.token)]), 200)
    assert ks.usage("acct_1").pages == 1
    assert ks.usage("acct_1") == ks.quotas.usage("acct_1")
