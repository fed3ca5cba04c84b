"""The figures of the key-id budget, counted (argon2 runs through a counting hasher, never
timed): guesses at a real key id buy at most the budget of argon2 runs, on every path and
across processes, while the key's owner is never locked out, even before its first use; and a
wrong secret costs the same work whatever state the key is in.

The budget's answers on every stack are in the behaviour suite
(``test_a_key_ids_budget_of_wrong_secrets_refuses_guesses_but_never_its_owner``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from keystile import AuthError, Keystile
from keystile._core import tokens

from .conftest import Clock

ACCT = "acct-budget"
BUDGET = 20  # the default login_max_failures_per_key


class Runs:
    """argon2 runs of every engine given, counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *engines: Keystile) -> None:
        self.count = 0
        self._lock = threading.Lock()
        for ks in engines:
            monkeypatch.setattr(ks.hasher, "verify", self._counting(ks.hasher.verify))

    def _counting(self, verify: Callable[..., bool]) -> Callable[..., bool]:
        def counting(*args: Any) -> bool:
            with self._lock:
                self.count += 1
            return verify(*args)

        return counting


def guess(token: str) -> str:
    """The same key id with a random well-formed secret (its checksum is right)."""
    prefix, env, kid, _ = token.split("_")
    return tokens.format_token(prefix, env, kid, tokens.new_secret(kid))


def outcome(ks: Keystile, headers: list[tuple[str, str]]) -> str:
    try:
        ks.authenticate(headers)
    except AuthError as error:
        return error.code
    return "ok"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def engines(
    request: pytest.FixtureRequest,
    make_keystile: Callable[..., Keystile],
    clock: Clock,
    tmp_path: Path,
) -> list[Keystile]:
    """Without Redis one process; with Redis two, sharing the store and the budget."""
    if request.param == "memory":
        return [make_keystile(clock=clock)]
    redis = request.getfixturevalue("redis_settings")
    shared = {**redis, "clock": clock, "store": f"sqlite:///{tmp_path / 'keys.db'}"}
    return [make_keystile(**shared), make_keystile(**shared)]


def test_ten_thousand_guesses_buy_at_most_the_budget_of_argon2_runs(
    engines: list[Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = engines[0].keys.create(ACCT, "owner")
    runs = Runs(monkeypatch, *engines)
    outcomes: dict[str, int] = {}
    owner = []
    for n in range(10_000):
        ks = engines[n % len(engines)]
        code = outcome(ks, bearer(guess(key.token)))
        outcomes[code] = outcomes.get(code, 0) + 1
        if n % 1_000 == 999:  # the owner, all along, from every process
            owner += [outcome(e, bearer(key.token)) for e in engines]
    assert runs.count <= BUDGET + len(engines)  # the guesses' budget, and the owner's first
    assert outcomes == {"AUTH_002": BUDGET, "AUTH_007": 10_000 - BUDGET}
    assert owner == ["ok"] * len(owner)


def test_the_owners_first_login_passes_a_thousand_failed_ones(
    engines: list[Keystile], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = engines[0].keys.create(ACCT, "owner")
    for n in range(1_000):
        ks = engines[n % len(engines)]
        with pytest.raises(AuthError) as refused:
            ks.sessions.login([("x-api-key", guess(key.token))], client=f"10.1.{n % 100}.1")
        assert refused.value.code in ("AUTH_002", "AUTH_007")
    runs = Runs(monkeypatch, *engines)
    for ks in engines:
        for form in ([("x-api-key", key.token)], [("x-api-key", key.key_id), ("x-api-secret", key.secret)]):  # fmt: skip
            session = ks.sessions.login(form, client="10.1.0.1")  # an attacker's address too
            assert session.key_id == key.key_id
    assert runs.count <= 2 * len(engines)


def test_a_rolled_keys_new_secret_is_known_at_once(
    make_keystile: Callable[..., Keystile], clock: Clock
) -> None:
    ks = make_keystile(clock=clock, login_max_failures_per_key=2)
    key = ks.keys.create(ACCT, "owner")
    rolled = ks.keys.roll(key.key_id, grace_seconds=60)
    for _ in range(5):
        outcome(ks, bearer(guess(key.token)))
    assert outcome(ks, bearer(guess(key.token))) == "AUTH_007"
    assert outcome(ks, bearer(rolled.token)) == "ok"


@pytest.mark.parametrize("state", ["active", "revoked", "disabled", "expired"])
def test_a_wrong_secret_costs_the_same_whatever_the_keys_state(
    make_keystile: Callable[..., Keystile],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    state: str,
) -> None:
    """Timing must not tell a revoked, disabled or expired key from a live one: a wrong
    secret runs argon2 once in every state, and is refused alike (AUTH_002)."""
    ks = make_keystile(clock=clock)
    soon = datetime.fromtimestamp(clock(), timezone.utc) + timedelta(seconds=60)
    key = ks.keys.create(ACCT, "owner", expires_at=soon if state == "expired" else None)
    if state == "revoked":
        ks.keys.revoke(key.key_id)
    elif state == "disabled":
        ks.keys.update(key.key_id, enabled=False)
    elif state == "expired":
        clock.advance(61)
    runs = Runs(monkeypatch, ks)
    assert outcome(ks, bearer(guess(key.token))) == "AUTH_002"
    assert runs.count == 1
    # The right secret runs argon2 once too; only then is the key's state told.
    assert outcome(ks, bearer(key.token)) == ("ok" if state == "active" else "AUTH_003")
    assert runs.count == 2
