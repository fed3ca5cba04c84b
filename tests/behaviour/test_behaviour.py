"""What a client sees, identical on every framework adapter, with and without Redis.

Every test takes ``client`` (one per framework, see ``conftest.HARNESSES``) and ``ks``, the
engine behind it (``backend``: in-memory only, or with the test Redis).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.utils import format_datetime
from http import HTTPStatus
from typing import Any

import pytest

from keystile import Keystile
from keystile._core import tokens
from keystile._services.keys import CreatedKey

from .harness import EXEMPT_PATHS, Harness, Result, error_of

CLOSED_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1

#: code -> (status, type, RFC 6750 error attribute of the WWW-Authenticate challenge: "" for
#: a challenge without one, None when there must be no challenge)
ERRORS: dict[str, tuple[int, str, str | None]] = {
    "AUTH_001": (401, "missing_api_key", ""),
    "AUTH_002": (401, "invalid_api_key", "invalid_token"),
    "AUTH_003": (401, "expired_api_key", "invalid_token"),
    "AUTH_004": (403, "insufficient_permissions", "insufficient_scope"),
    "AUTH_005": (403, "account_forbidden", None),
    "AUTH_006": (400, "malformed_credentials", "invalid_request"),
    "AUTH_007": (429, "too_many_attempts", None),
    "AUTH_008": (403, "ip_not_allowed", None),
    "BILLING_001": (429, "quota_exceeded", None),
    "RATE_001": (429, "rate_limited", None),
    "SVC_001": (503, "backend_unavailable", None),
}


# ------------------------------------------------------------------------------ helpers


def new_key(ks: Keystile, **options: Any) -> CreatedKey:
    options.setdefault("permissions", ["read"])
    return ks.keys.create(options.pop("account_id", "acct-1"), "test key", **options)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_refused(result: Result, code: str) -> dict[str, Any]:
    """A refusal rendered from keystile's one table: status, body, headers (RFC 6750's
    challenge, with the body's message as its description)."""
    status, kind, attribute = ERRORS[code]
    error = error_of(result)
    assert (result.status, error["code"], error["type"]) == (status, code, kind), result
    assert result.headers["content-type"].split(";")[0].strip() == "application/json"
    assert result.headers.get("cache-control") == "no-store"
    challenge = result.headers.get("www-authenticate")
    if attribute is None:
        assert challenge is None
    elif not attribute:
        assert challenge == 'Bearer realm="api"'
    else:
        expected = f'Bearer realm="api", error="{attribute}", '
        described = re.sub(r"[^\x20\x21\x23-\x5b\x5d-\x7e]", "?", error["message"])  # RFC 6750 3
        expected += f'error_description="{described}"'
        assert challenge is not None and challenge.startswith(expected), challenge
        rest = challenge[len(expected) :]
        assert rest == "" or (code == "AUTH_004" and rest.startswith(', scope="')), challenge
    return error


def assert_client_error(result: Result) -> dict[str, Any]:
    """Any 4xx, with keystile's JSON body: never a 500, never a framework's own page."""
    assert 400 <= result.status < 500, result
    error = error_of(result)
    assert error["code"] in ERRORS, error
    assert_refused(result, error["code"])
    return error


def other_secret(token: str) -> str:
    prefix, env, kid, _ = token.split("_")
    return tokens.format_token(prefix, env, kid, tokens.new_secret(kid))


# ------------------------------------------------------------------------ error table


def _missing(ks: Keystile) -> tuple[str, Any]:
    return "/whoami", None


def _invalid(ks: Keystile) -> tuple[str, Any]:
    return "/whoami", bearer(other_secret(new_key(ks).token))


def _revoked(ks: Keystile) -> tuple[str, Any]:
    key = new_key(ks)
    ks.keys.revoke(key.key_id)
    return "/whoami", bearer(key.token)


def _no_permission(ks: Keystile) -> tuple[str, Any]:
    return "/write", bearer(new_key(ks, permissions=["read"]).token)


def _other_account(ks: Keystile) -> tuple[str, Any]:
    return "/whoami", {**bearer(new_key(ks).token), "x-account-id": "acct-other"}


def _malformed(ks: Keystile) -> tuple[str, Any]:
    return "/whoami", {"authorization": "Basic dXNlcjpwYXNz"}


REFUSALS: list[tuple[str, Callable[[Keystile], tuple[str, Any]]]] = [
    ("AUTH_001", _missing),
    ("AUTH_002", _invalid),
    ("AUTH_003", _revoked),
    ("AUTH_004", _no_permission),  # refused by requires(), after admission
    ("AUTH_005", _other_account),
    ("AUTH_006", _malformed),
]


def test_each_refusal_has_its_status_body_and_headers(client: Harness, ks: Keystile) -> None:
    # Every case on one engine, here and below: a backend's setup costs more than a case.
    for code, scenario in REFUSALS:
        path, headers = scenario(ks)
        error = assert_refused(client.request("GET", path, headers), code)
        assert error["message"].endswith("."), code


PROBLEM = {"accept": "application/problem+json"}


def assert_problem(result: Result, code: str) -> dict[str, Any]:
    """RFC 9457 problem details for a refusal: the same status, code and headers."""
    status, _, _ = ERRORS[code]
    assert result.status == status, result
    assert result.headers["content-type"] == "application/problem+json"
    assert result.headers.get("cache-control") == "no-store"
    assert "accept" in result.headers.get("vary", "").lower()
    problem = result.json
    assert isinstance(problem, dict), result
    assert (problem["status"], problem["code"]) == (status, code), problem
    assert isinstance(problem["detail"], str) and problem["detail"].endswith("."), problem
    assert "error" not in problem
    return problem


def test_a_client_asking_for_problem_json_gets_rfc_9457_problem_details(
    client: Harness, ks: Keystile
) -> None:
    for code, scenario in REFUSALS:
        path, headers = scenario(ks)
        default = client.request("GET", path, headers)
        asked = client.request("GET", path, {**(headers or {}), **PROBLEM})
        problem = assert_problem(asked, code)
        status, _, _ = ERRORS[code]
        assert problem["type"] == "about:blank"
        assert problem["title"] == HTTPStatus(status).phrase
        assert problem["detail"] == error_of(default)["message"]
        assert asked.headers.get("www-authenticate") == default.headers.get("www-authenticate")
        # Plain JSON ranked first, or problem+json refused, keeps the seeds' body.
        for accept in ("application/json, application/problem+json;q=0.5",
                       "application/problem+json;q=0", "*/*", "text/html"):  # fmt: skip
            assert_refused(client.request("GET", path, {**(headers or {}), "accept": accept}), code)


def test_a_quota_problem_names_the_violated_policy(client: Harness, ks: Keystile) -> None:
    ks.quotas.set_limit("acct-quota", 1)
    key = new_key(ks, account_id="acct-quota")
    assert client.request("GET", "/whoami", bearer(key.token)).status == 200
    refused = client.request("GET", "/whoami", {**bearer(key.token), **PROBLEM})
    problem = assert_problem(refused, "BILLING_001")
    assert problem["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert problem["violated-policies"] == ["monthly"]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit"].startswith('"monthly";r=0;')


def test_a_keys_rate_limit_is_429_rate_001_and_never_charged(client: Harness, ks: Keystile) -> None:
    ks.quotas.set_limit("acct-rate", 100)
    key = new_key(ks, account_id="acct-rate", rate_limit="2/h")
    for remaining in (1, 0):
        ok = client.request("GET", "/whoami", bearer(key.token))
        assert ok.status == 200, ok
        policy = ok.headers["ratelimit-policy"]
        assert policy.startswith('"monthly";q=100;w=') and '"key-rate";q=2;w=3600;pk=:' in policy
        assert f'"key-rate";r={remaining};' in ok.headers["ratelimit"]
    refused = client.request("GET", "/whoami", bearer(key.token))
    error = assert_refused(refused, "RATE_001")
    assert "2/h" in error["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert '"key-rate";r=0;' in refused.headers["ratelimit"]
    problem = assert_problem(
        client.request("GET", "/whoami", {**bearer(key.token), **PROBLEM}), "RATE_001"
    )
    assert problem["violated-policies"] == ["key-rate"]
    ks.flush()
    assert ks.quotas.usage("acct-rate").pages == 2  # the refused requests cost nothing


def test_quota_exceeded_is_429_with_retry_after(client: Harness, ks: Keystile) -> None:
    ks.quotas.set_limit("acct-quota", 1)
    key = new_key(ks, account_id="acct-quota")
    first = client.request("GET", "/whoami", bearer(key.token))
    assert first.status == 200
    assert first.headers.get("x-ratelimit-remaining") == "0"
    refused = client.request("GET", "/whoami", bearer(key.token))
    assert_refused(refused, "BILLING_001")
    assert int(refused.headers["retry-after"]) >= 1


def test_backend_unavailable_is_503_with_retry_after(
    harness_for: Callable[[Keystile], Harness], make_keystile: Callable[..., Keystile]
) -> None:
    down = make_keystile(
        redis_url=CLOSED_REDIS, secret="s" * 32, exempt_paths=EXEMPT_PATHS
    )  # fail_closed is the default
    key = new_key(down)
    client = harness_for(down)
    result = client.request("GET", "/whoami", bearer(key.token))
    assert_refused(result, "SVC_001")
    assert result.headers.get("retry-after") == "1"
    # Exempt paths never need Redis.
    assert client.request("GET", "/health").status == 200
    # A request that fails before any I/O keeps its own answer.
    assert_refused(client.request("GET", "/whoami"), "AUTH_001")


def test_degrade_keeps_serving_when_redis_is_down(
    harness_for: Callable[[Keystile], Harness], make_keystile: Callable[..., Keystile]
) -> None:
    down = make_keystile(
        redis_url=CLOSED_REDIS,
        secret="s" * 32,
        exempt_paths=EXEMPT_PATHS,
        on_backend_error="degrade",
    )
    key = new_key(down)
    client = harness_for(down)
    assert client.request("GET", "/read", bearer(key.token)).json["key_id"] == key.key_id
    assert_refused(client.request("GET", "/write", bearer(key.token)), "AUTH_004")


# ------------------------------------------------------------------- credential forms


def test_the_three_credential_forms(client: Harness, ks: Keystile) -> None:
    key = new_key(ks, permissions=["write", "read"])
    expected = {
        "key_id": key.key_id,
        "account_id": "acct-1",
        "environment": "live",
        "permissions": ["read", "write"],
    }
    forms = {
        "bearer": bearer(key.token),
        "api_key": {"x-api-key": key.token},
        "key_secret": {"x-api-key": key.key_id, "x-api-secret": key.secret},
    }
    for method, headers in forms.items():
        result = client.request("GET", "/whoami", headers)
        assert result.status == 200, result
        assert result.json == {**expected, "auth_method": method}
    # The same token in both places is not a conflict.
    both = {**bearer(key.token), "x-api-key": key.token}
    assert client.request("GET", "/whoami", both).json["auth_method"] == "bearer"


def test_test_environment_keys(client: Harness, ks: Keystile) -> None:
    key = new_key(ks, environment="test")
    assert key.token.startswith("sk_test_")
    assert client.request("GET", "/whoami", bearer(key.token)).json["environment"] == "test"
    wrong_env = key.token.replace("sk_test_", "sk_live_", 1)
    assert_refused(client.request("GET", "/whoami", bearer(wrong_env)), "AUTH_002")
    assert client.request("GET", "/whoami", bearer(key.token)).status == 200


GARBAGE: list[tuple[dict[str, str], str]] = [
    ({"authorization": "Basic dXNlcjpwYXNz"}, "AUTH_006"),
    ({"authorization": "Bearer"}, "AUTH_006"),
    ({"authorization": "Bearer not-a-token"}, "AUTH_002"),
    ({"x-api-key": "not-a-token"}, "AUTH_002"),
    ({"x-api-secret": "orphan"}, "AUTH_006"),
    ({"x-api-key": "key_0123456789abcdef"}, "AUTH_006"),
    ({"x-api-key": "key_0123456789abcdef", "x-api-secret": "x" * 49}, "AUTH_002"),
]


def test_malformed_and_garbage_credentials(client: Harness) -> None:
    for headers, code in GARBAGE:
        assert_refused(client.request("GET", "/whoami", headers), code)


def test_conflicting_credentials_are_400(client: Harness, ks: Keystile) -> None:
    key = new_key(ks)
    other = new_key(ks)
    conflicts = [
        {**bearer(key.token), "x-api-key": other.token},
        {**bearer(key.token), "x-api-secret": key.secret},
        {"x-api-key": key.token, "x-api-secret": key.secret},
    ]
    for headers in conflicts:
        assert_refused(client.request("GET", "/whoami", headers), "AUTH_006")


def test_wrong_secret_then_right_secret(client: Harness, ks: Keystile) -> None:
    key = new_key(ks)
    wrong = {"x-api-key": key.key_id, "x-api-secret": other_secret(key.token).split("_")[3]}
    for _ in range(2):
        assert_refused(client.request("GET", "/whoami", wrong), "AUTH_002")
    right = {"x-api-key": key.key_id, "x-api-secret": key.secret}
    assert client.request("GET", "/whoami", right).status == 200  # no owner lockout


def test_a_key_ids_budget_of_wrong_secrets_refuses_guesses_but_never_its_owner(
    harness_for: Callable[[Keystile], Harness], make_keystile: Callable[..., Keystile],
    backend: dict[str, Any], clock: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    budget = 3
    ks = make_keystile(
        clock=clock, exempt_paths=EXEMPT_PATHS, login_max_failures_per_key=budget, **backend
    )
    assert ks.ready(10.0)
    client = harness_for(ks)
    key = new_key(ks)
    runs = [0]
    verify = ks.hasher.verify

    def counting(*args: Any) -> Any:
        runs[0] += 1
        return verify(*args)

    monkeypatch.setattr(ks.hasher, "verify", counting)
    for n in range(budget + 5):
        guess = other_secret(key.token)
        refused = client.request("GET", "/whoami", bearer(guess))
        if n < budget:
            assert_refused(refused, "AUTH_002")
        else:
            assert_refused(refused, "AUTH_007")
            assert refused.headers["retry-after"] == str(ks.settings.login_failure_window)
    assert runs[0] == budget  # past the budget, a guess runs no argon2
    # The owner's key, never used before, in both forms: its credential is known.
    assert client.request("GET", "/whoami", bearer(key.token)).status == 200
    pair = {"x-api-key": key.key_id, "x-api-secret": key.secret}
    assert client.request("GET", "/whoami", pair).status == 200


# ---------------------------------------------------------------------------- accounts


def test_account_header_own_extra_and_forbidden(client: Harness, ks: Keystile) -> None:
    key = new_key(ks, accounts=["acct-2"])
    own = client.request("GET", "/whoami", {**bearer(key.token), "x-account-id": "acct-1"})
    assert (own.status, own.json["account_id"]) == (200, "acct-1")
    extra = client.request("GET", "/whoami", {**bearer(key.token), "x-account-id": "acct-2"})
    assert (extra.status, extra.json["account_id"]) == (200, "acct-2")
    assert extra.json["key_id"] == key.key_id
    forbidden = client.request("GET", "/whoami", {**bearer(key.token), "x-account-id": "acct-3"})
    assert_refused(forbidden, "AUTH_005")
    plain = client.request("GET", "/whoami", bearer(key.token))
    assert plain.json["account_id"] == "acct-1"


def test_account_change_reaches_the_next_request(client: Harness, ks: Keystile) -> None:
    key = new_key(ks)
    headers = {**bearer(key.token), "x-account-id": "acct-2"}
    assert_refused(client.request("GET", "/whoami", headers), "AUTH_005")
    ks.keys.revoke(key.key_id)
    assert_refused(client.request("GET", "/whoami", headers), "AUTH_003")


# ------------------------------------------------------------------------- permissions


def test_permissions(client: Harness, ks: Keystile) -> None:
    reader = new_key(ks, permissions=["read"])
    assert client.request("GET", "/read", bearer(reader.token)).status == 200
    refused = client.request("GET", "/write", bearer(reader.token))
    error = assert_refused(refused, "AUTH_004")
    assert "write" in error["message"]
    assert refused.headers["www-authenticate"].endswith(', scope="write"')  # what it needed
    everything = new_key(ks, permissions=["*"])
    for path in ("/read", "/write", "/whoami"):
        assert client.request("GET", path, bearer(everything.token)).status == 200
    nothing = new_key(ks, permissions=[])
    assert client.request("GET", "/whoami", bearer(nothing.token)).status == 200
    for path in ("/read", "/write"):
        assert_refused(client.request("GET", path, bearer(nothing.token)), "AUTH_004")


def test_permission_change_reaches_the_next_request(client: Harness, ks: Keystile) -> None:
    key = new_key(ks, permissions=["read"])
    assert_refused(client.request("GET", "/write", bearer(key.token)), "AUTH_004")
    ks.keys.update(key.key_id, permissions=["read", "write"])
    assert client.request("GET", "/write", bearer(key.token)).status == 200
    ks.keys.update(key.key_id, permissions=[])
    assert_refused(client.request("GET", "/read", bearer(key.token)), "AUTH_004")


# ------------------------------------------------------------------- expiry, revocation


def test_expiry_follows_the_clock(client: Harness, ks: Keystile, clock: Any) -> None:
    from datetime import timedelta

    key = new_key(ks, expires_at=ks.now() + timedelta(seconds=60))
    assert client.request("GET", "/whoami", bearer(key.token)).status == 200
    clock.advance(59)
    assert client.request("GET", "/whoami", bearer(key.token)).status == 200
    clock.advance(1)
    error = assert_refused(client.request("GET", "/whoami", bearer(key.token)), "AUTH_003")
    assert "expired" in error["message"]


def test_revocation_and_disabling_take_effect_at_once(client: Harness, ks: Keystile) -> None:
    key = new_key(ks)
    for _ in range(2):
        assert client.request("GET", "/whoami", bearer(key.token)).status == 200
    ks.keys.update(key.key_id, enabled=False)
    assert_refused(client.request("GET", "/whoami", bearer(key.token)), "AUTH_003")
    ks.keys.update(key.key_id, enabled=True)
    assert client.request("GET", "/whoami", bearer(key.token)).status == 200
    ks.keys.revoke(key.key_id)
    error = assert_refused(client.request("GET", "/whoami", bearer(key.token)), "AUTH_003")
    assert "revoked" in error["message"]
    pair = {"x-api-key": key.key_id, "x-api-secret": key.secret}
    assert_refused(client.request("GET", "/whoami", pair), "AUTH_003")


def test_roll_and_delete(client: Harness, ks: Keystile) -> None:
    key = new_key(ks)
    assert client.request("GET", "/whoami", bearer(key.token)).status == 200
    rolled = ks.keys.roll(key.key_id)
    assert_refused(client.request("GET", "/whoami", bearer(key.token)), "AUTH_002")
    assert client.request("GET", "/whoami", bearer(rolled.token)).json["key_id"] == key.key_id
    ks.keys.delete(key.key_id)
    assert_refused(client.request("GET", "/whoami", bearer(rolled.token)), "AUTH_002")


def test_a_rolled_keys_old_secret_is_answered_with_deprecation_and_sunset(
    client: Harness, ks: Keystile
) -> None:
    key = new_key(ks)
    rolled = ks.keys.roll(key.key_id, grace_seconds=3600)
    old = client.request("GET", "/whoami", bearer(key.token))
    assert old.status == 200, old
    record = ks.store.get(key.key_id.removeprefix("key_"))
    assert record is not None and record.previous_expires_at is not None
    ends = record.previous_expires_at
    assert old.headers["deprecation"] == f"@{int(ends.timestamp())}"
    assert old.headers["sunset"] == format_datetime(ends, usegmt=True)
    pair = client.request("GET", "/whoami", {"x-api-key": key.key_id, "x-api-secret": key.secret})
    assert pair.headers["deprecation"] == old.headers["deprecation"]
    # The new secret, and a key never rolled, carry neither.
    for token in (rolled.token, new_key(ks).token):
        fresh = client.request("GET", "/whoami", bearer(token))
        assert fresh.status == 200 and "deprecation" not in fresh.headers, fresh
        assert "sunset" not in fresh.headers


# ------------------------------------------------------------------------ IP allowlists


def test_a_key_with_an_allowlist_is_refused_from_elsewhere(client: Harness, ks: Keystile) -> None:
    here = new_key(ks, allowed_ips=["127.0.0.0/8", "2001:db8::/32"])  # the harness's peer
    there = new_key(ks, allowed_ips=["203.0.113.0/24"])
    assert client.request("GET", "/whoami", bearer(here.token)).status == 200
    error = assert_refused(client.request("GET", "/whoami", bearer(there.token)), "AUTH_008")
    assert "203.0.113" not in error["message"]  # the list is the owner's business
    pair = {"x-api-key": there.key_id, "x-api-secret": there.secret}
    assert_refused(client.request("GET", "/whoami", pair), "AUTH_008")
    # Said only after the secret checks out: a wrong one is just a wrong one.
    assert_refused(client.request("GET", "/whoami", bearer(other_secret(there.token))), "AUTH_002")
    # Without trusted proxies, X-Forwarded-For is anyone's to write.
    spoofed = {**bearer(there.token), "x-forwarded-for": "203.0.113.9"}
    assert_refused(client.request("GET", "/whoami", spoofed), "AUTH_008")
    # A change reaches the next request, the list lifted or narrowed.
    ks.keys.update(there.key_id, allowed_ips=[])
    assert client.request("GET", "/whoami", bearer(there.token)).status == 200
    ks.keys.update(here.key_id, allowed_ips=["198.51.100.7"])
    assert_refused(client.request("GET", "/whoami", bearer(here.token)), "AUTH_008")


def test_behind_trusted_proxies_the_forwarded_client_counts(
    harness_for: Callable[[Keystile], Harness],
    make_keystile: Callable[..., Keystile],
    backend: dict[str, Any],
) -> None:
    engine = make_keystile(exempt_paths=EXEMPT_PATHS, trusted_proxies=["127.0.0.1"], **backend)
    assert engine.ready(10.0)
    client = harness_for(engine)
    key = new_key(engine, allowed_ips=["203.0.113.0/24"])

    def via(forwarded: str | None) -> Result:
        extra = {} if forwarded is None else {"x-forwarded-for": forwarded}
        return client.request("GET", "/whoami", {**bearer(key.token), **extra})

    assert via("203.0.113.9").status == 200
    assert via("198.51.100.1, 203.0.113.9").status == 200  # what the proxy appended counts
    assert via("203.0.113.9, 127.0.0.1").status == 200  # a trusted hop is skipped
    for refused in ("203.0.113.9, 198.51.100.1", "not-an-ip", None, "::ffff:198.51.100.1"):
        assert_refused(via(refused), "AUTH_008")
    assert via("::ffff:203.0.113.9").status == 200  # an IPv4 client of a dual-stack proxy


# ------------------------------------------------------------------------ exempt paths


@pytest.mark.parametrize("path", ["/health", "/public/x"])
def test_exempt_paths_pass_without_a_key_and_get_no_principal(
    client: Harness, ks: Keystile, path: str
) -> None:
    key = new_key(ks)
    for headers in (None, bearer(key.token), bearer("garbage"), {"authorization": "Basic x"}):
        result = client.request("GET", path, headers)
        assert (result.status, result.json) == (200, {"ok": True, "principal": False}), headers


def test_a_route_that_reads_the_principal_on_an_exempt_path_is_refused(
    client: Harness, ks: Keystile
) -> None:
    """No key is checked there, so there is no principal: the stack's way of reading it
    answers keystile's 401, never a 500, whatever the request carries."""
    key = new_key(ks)
    for headers in (None, bearer(key.token), bearer("garbage")):
        assert_refused(client.request("GET", "/public/principal", headers), "AUTH_001")


def test_paths_near_an_exempt_one_are_not_exempt(client: Harness) -> None:
    for path in ("/healthz", "/health/x", "/public", "/publicx", "/HEALTH"):
        assert_refused(client.request("GET", path), "AUTH_001")


# --------------------------------------------------------------------- hostile headers

BIG = "A" * 100_000


def _hostile_cases(key: CreatedKey) -> dict[str, tuple[Any, str | None]]:
    """id -> (headers, the expected code, or None for "any 4xx with keystile's body")."""
    return {
        "huge-x-api-key": ({"x-api-key": BIG}, "AUTH_002"),
        "huge-bearer": ({"authorization": f"Bearer {BIG}"}, "AUTH_002"),
        "huge-authorization-scheme": ({"authorization": BIG}, "AUTH_002"),
        "huge-secret": ({"x-api-key": key.key_id, "x-api-secret": BIG}, "AUTH_002"),
        "huge-account": ({**bearer(key.token), "x-account-id": BIG}, "AUTH_006"),
        "huge-token-lookalike": ({"x-api-key": key.token + BIG}, "AUTH_002"),
        "non-ascii-api-key": ({"x-api-key": b"sk_live_\xff\xfe\xfd"}, "AUTH_002"),
        "non-ascii-bearer": ({"authorization": b"Bearer \xc3\xa9t\xc3\xa9"}, "AUTH_002"),
        "non-ascii-token-tail": ({"x-api-key": key.token.encode() + b"\xe9"}, "AUTH_002"),
        "non-ascii-secret": (
            {"x-api-key": key.key_id, "x-api-secret": key.secret.encode()[:-1] + b"\x80"},
            "AUTH_002",
        ),
        "non-ascii-account": ({**bearer(key.token), "x-account-id": b"acct-\xff"}, "AUTH_006"),
        "tab-in-bearer": ({"authorization": f"Bearer\t{key.token}"}, "AUTH_002"),
        "duplicate-x-api-key": ([("x-api-key", key.token), ("x-api-key", key.token)], "AUTH_006"),
        "duplicate-authorization": (
            [("authorization", f"Bearer {key.token}")] * 2,
            "AUTH_006",
        ),
        "duplicate-account": (
            [*bearer(key.token).items(), ("x-account-id", "acct-1"), ("x-account-id", "acct-1")],
            "AUTH_006",
        ),
        "duplicate-secret": (
            [("x-api-key", key.key_id), ("x-api-secret", key.secret), ("x-api-secret", "x")],
            "AUTH_006",
        ),
        "empty-x-api-key": ({"x-api-key": ""}, "AUTH_001"),
        "empty-authorization": ({"authorization": ""}, "AUTH_001"),
        "blank-authorization": ({"authorization": "   "}, "AUTH_001"),
        "bearer-with-spaces-only": ({"authorization": "Bearer    "}, "AUTH_006"),
        "empty-secret-with-key-id": ({"x-api-key": key.key_id, "x-api-secret": ""}, "AUTH_006"),
        "empty-account": ({"x-account-id": ""}, "AUTH_001"),
        "bearer-three-words": ({"authorization": f"Bearer {key.token} extra"}, "AUTH_002"),
        "token-in-wrong-prefix": ({"x-api-key": key.token.replace("sk_", "pk_", 1)}, "AUTH_002"),
        "token-with-extra-underscore": ({"x-api-key": key.token + "_x"}, "AUTH_002"),
        "key-id-lookalike": ({"x-api-key": b"key_\xc3\xa9\xc3\xa9"}, "AUTH_002"),
        "nul-in-value": ({"x-api-key": b"sk_live_\x00"}, "AUTH_002"),
    }


def test_hostile_headers_get_a_4xx_with_the_json_body(client: Harness, ks: Keystile) -> None:
    # Every case on one engine: a backend's setup costs more than the case. (Random headers
    # on every stack: tests/test_header_fuzz.py.)
    key = new_key(ks)
    for case, (headers, code) in sorted(_hostile_cases(key).items()):
        result = client.request("GET", "/whoami", headers)
        error = assert_client_error(result)
        if code is not None:
            assert error["code"] == code, (case, result)
        # The key itself still works afterwards.
        assert client.request("GET", "/whoami", bearer(key.token)).status == 200, case


def test_a_huge_unrelated_header_does_not_matter(client: Harness, ks: Keystile) -> None:
    key = new_key(ks)
    result = client.request("GET", "/whoami", {**bearer(key.token), "x-filler": BIG})
    assert result.status == 200
    assert_refused(client.request("GET", "/whoami", {"x-filler": BIG}), "AUTH_001")


def test_header_names_are_case_insensitive(client: Harness, ks: Keystile) -> None:
    key = new_key(ks)
    cases = {
        "api_key": [("X-API-KEY", key.token)],
        "bearer": [("AUTHORIZATION", f"bEaReR {key.token}")],
        "key_secret": [("X-Api-Key", key.key_id), ("X-API-Secret", key.secret)],
    }
    for method, headers in cases.items():
        result = client.request("GET", "/whoami", headers)
        assert (result.status, result.json["auth_method"]) == (200, method), headers
    with_account = [("Authorization", f"BEARER {key.token}"), ("X-Account-ID", "nope")]
    assert_refused(client.request("GET", "/whoami", with_account), "AUTH_005")
    # Two spellings of one name are still the same header twice.
    twice = [("x-api-key", key.token), ("X-API-KEY", key.token)]
    assert_refused(client.request("GET", "/whoami", twice), "AUTH_006")


def test_lookalike_header_names_are_not_credentials(client: Harness, ks: Keystile) -> None:
    key = new_key(ks)
    for name in ("x_api_key", "x-api_key", "X_API_KEY", "xapikey", "api-key"):
        assert_refused(client.request("GET", "/whoami", {name: key.token}), "AUTH_001")


def test_underscore_secret_header_is_not_the_secret(client: Harness, ks: Keystile) -> None:
    key = new_key(ks)
    headers = {"x-api-key": key.key_id, "x_api_secret": key.secret}
    assert_refused(client.request("GET", "/whoami", headers), "AUTH_006")
