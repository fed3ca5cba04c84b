"""The error table and how every error is rendered."""

from __future__ import annotations

import json

import pytest

from keystile._core import errors
from keystile._core.errors import (
    ACCOUNT_FORBIDDEN,
    BACKEND_UNAVAILABLE,
    ERRORS,
    EXPIRED_API_KEY,
    INSUFFICIENT_PERMISSIONS,
    INVALID_API_KEY,
    MALFORMED_CREDENTIALS,
    MISSING_API_KEY,
    QUOTA_EXCEEDED,
    TOO_MANY_ATTEMPTS,
    AuthError,
    BackendError,
    ConfigError,
    ErrorSpec,
    InvalidInput,
    KeystileError,
    NotFound,
    render,
)

EXPECTED = {
    "AUTH_001": ("missing_api_key", 401),
    "AUTH_002": ("invalid_api_key", 401),
    "AUTH_003": ("expired_api_key", 401),
    "AUTH_004": ("insufficient_permissions", 403),
    "AUTH_005": ("account_forbidden", 403),
    "AUTH_006": ("malformed_credentials", 400),
    "AUTH_007": ("too_many_attempts", 429),
    "AUTH_008": ("ip_not_allowed", 403),
    "REQ_001": ("invalid_request", 422),
    "REQ_002": ("not_found", 404),
    "REQ_003": ("method_not_allowed", 405),
    "RATE_001": ("rate_limited", 429),
    "BILLING_001": ("quota_exceeded", 429),
    "SVC_001": ("backend_unavailable", 503),
}


def header_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), f"repeated header in {names}"
    return dict(headers)


def test_table_is_complete() -> None:
    assert {spec.code: (spec.type, spec.status) for spec in ERRORS} == EXPECTED
    module_specs = {v for v in vars(errors).values() if isinstance(v, ErrorSpec)}
    assert module_specs == set(ERRORS)


def test_codes_and_types_are_unique() -> None:
    assert len({spec.code for spec in ERRORS}) == len(ERRORS)
    assert len({spec.type for spec in ERRORS}) == len(ERRORS)


def test_specs_are_immutable() -> None:
    with pytest.raises(AttributeError):
        INVALID_API_KEY.status = 200  # type: ignore[misc]


@pytest.mark.parametrize("spec", ERRORS, ids=[s.code for s in ERRORS])
def test_render(spec: ErrorSpec) -> None:
    rendered = render(AuthError(spec))
    assert rendered.status == spec.status
    assert json.loads(rendered.body) == {
        "error": {"code": spec.code, "type": spec.type, "message": spec.message}
    }
    headers = header_dict(rendered.headers)
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(rendered.body))
    assert headers["cache-control"] == "no-store"
    assert all(name == name.lower() for name, _ in rendered.headers)
    assert isinstance(rendered.body, bytes)
    rendered.body.decode("ascii")  # json.dumps escapes, so the body is plain ASCII


@pytest.mark.parametrize("spec", [s for s in ERRORS if s.status == 401], ids=lambda s: s.code)
def test_401s_carry_bearer_challenge(spec: ErrorSpec) -> None:
    challenge = header_dict(render(AuthError(spec)).headers)["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'realm="api"' in challenge


def test_challenge_details() -> None:
    def challenge(spec: ErrorSpec) -> str | None:
        return header_dict(render(AuthError(spec)).headers).get("www-authenticate")

    # RFC 6750 3.1: no error attribute when no credentials were sent.
    assert challenge(MISSING_API_KEY) == 'Bearer realm="api"'
    assert challenge(INVALID_API_KEY) == (
        'Bearer realm="api", error="invalid_token", error_description="Invalid API key."'
    )
    assert challenge(EXPIRED_API_KEY) == (
        'Bearer realm="api", error="invalid_token", '
        'error_description="API key has expired or been revoked."'
    )
    assert challenge(MALFORMED_CREDENTIALS) == (
        'Bearer realm="api", error="invalid_request", '
        'error_description="Credentials are malformed or conflicting."'
    )
    assert challenge(INSUFFICIENT_PERMISSIONS) == (
        'Bearer realm="api", error="insufficient_scope", '
        'error_description="API key lacks the permission for this request."'
    )
    for spec in (ACCOUNT_FORBIDDEN, QUOTA_EXCEEDED, BACKEND_UNAVAILABLE, TOO_MANY_ATTEMPTS):
        assert challenge(spec) is None, spec.code


def test_insufficient_scope_names_the_needed_permissions() -> None:
    error = AuthError(INSUFFICIENT_PERMISSIONS, "lacks: admin.", scope=("read", "admin:*"))
    challenge = header_dict(render(error).headers)["www-authenticate"]
    assert challenge.endswith('error_description="lacks: admin.", scope="read admin:*"')


def test_a_description_holds_only_what_rfc_6750_allows() -> None:
    error = AuthError(INVALID_API_KEY, 'a "quoted" \\ back\u00e9\r\nslash')
    challenge = header_dict(render(error).headers)["www-authenticate"]
    description = challenge.split('error_description="', 1)[1][:-1]
    assert description == "a ?quoted? ? back???slash"
    assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in description)


def test_backend_unavailable_asks_to_retry() -> None:
    headers = header_dict(render(AuthError(BACKEND_UNAVAILABLE)).headers)
    assert headers["retry-after"] == "1"
    for spec in ERRORS:
        if spec is not BACKEND_UNAVAILABLE:
            assert "retry-after" not in header_dict(render(AuthError(spec)).headers)


def test_custom_message_and_headers() -> None:
    error = AuthError(
        QUOTA_EXCEEDED, 'Monthly limit "pro" reached — é', headers={"Retry-After": "3600"}
    )
    assert error.code == "BILLING_001"
    assert error.status == 429
    rendered = render(error)
    body = json.loads(rendered.body)
    assert body["error"]["message"] == 'Monthly limit "pro" reached — é'
    assert body["error"]["code"] == "BILLING_001"
    headers = header_dict(rendered.headers)
    assert headers["retry-after"] == "3600"
    assert headers["content-length"] == str(len(rendered.body))


def test_default_message_and_str() -> None:
    error = AuthError(INVALID_API_KEY)
    assert error.message == INVALID_API_KEY.message
    assert error.headers == {}
    assert str(error) == "AUTH_002 invalid_api_key: Invalid API key."
    assert str(AuthError(INVALID_API_KEY, "")) == "AUTH_002 invalid_api_key: Invalid API key."


def test_render_is_stable_json() -> None:
    body = render(AuthError(MISSING_API_KEY)).body
    assert body == (
        b'{"error":{"code":"AUTH_001","type":"missing_api_key","message":"API key is required."}}'
    )


def test_exception_hierarchy() -> None:
    for cls in (ConfigError, NotFound, InvalidInput, BackendError, AuthError):
        assert issubclass(cls, KeystileError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(NotFound, LookupError)
    error = InvalidInput("name", "too long")
    assert error.field == "name"
    assert str(error) == "name: too long"


def test_errors_from_credentials_render() -> None:
    from keystile._core.credentials import read_credentials

    for headers, code, status in (
        ([], "AUTH_001", 401),
        ([("authorization", "Bearer nope")], "AUTH_002", 401),
        ([("authorization", "Basic eDp5")], "AUTH_006", 400),
    ):
        with pytest.raises(AuthError) as info:
            read_credentials(headers, "sk", ("live", "test"))
        rendered = render(info.value)
        assert rendered.status == status
        assert json.loads(rendered.body)["error"]["code"] == code


@pytest.mark.parametrize(
    ("accept", "problem"),
    [
        (None, False),
        ("", False),
        ("application/json", False),
        ("*/*", False),
        ("application/problem+json", True),
        ("Application/Problem+JSON", True),
        ("application/problem+json, application/json", True),  # a tie: the first asked
        ("application/json;q=0.9, application/problem+json", True),
        ("application/json, application/problem+json;q=0.5", False),
        ("application/problem+json;q=0", False),
        ("application/problem+json;q=oops", False),
        ("text/html, application/problem+json;q=0.1", True),
        ("application/problem+jsonx", False),
        ("x" * 2000 + ", application/problem+json", False),  # past what is read
    ],
)
def test_wants_problem(accept: str | None, problem: bool) -> None:
    assert errors.wants_problem(accept) is problem


def test_problem_details_keep_the_code_and_headers() -> None:
    error = AuthError(QUOTA_EXCEEDED, "Over.", {"Retry-After": "9"}, policies=("monthly",))
    rendered = render(error, "application/problem+json")
    body = json.loads(rendered.body)
    assert body == {
        "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": "Over.",
        "code": "BILLING_001",
        "violated-policies": ["monthly"],
    }
    headers = dict(rendered.headers)
    assert headers["content-type"] == "application/problem+json"
    assert headers["retry-after"] == "9" and headers["cache-control"] == "no-store"
    assert headers["content-length"] == str(len(rendered.body))
    assert render(error).body == render(error, "application/json").body
    assert json.loads(render(error).body)["error"]["code"] == "BILLING_001"


def test_a_kept_rendering_answers_only_the_same_refusal_in_the_same_shape() -> None:
    """Refusals that say nothing of their request are rendered once and kept; what tells
    two of them apart (spec, message, Accept) still does, and one that carries headers,
    a field, a scope or policies is rendered anew."""
    plain = render(AuthError(INVALID_API_KEY))
    assert render(AuthError(INVALID_API_KEY)) is plain
    assert isinstance(plain.headers, tuple)  # shared: nobody can add to it
    other = render(AuthError(INVALID_API_KEY, "The x-api-key header does not hold a valid one."))
    assert json.loads(other.body)["error"]["message"].startswith("The x-api-key header")
    assert json.loads(render(AuthError(INVALID_API_KEY)).body)["error"]["message"] == (
        "Invalid API key."
    )
    problem = render(AuthError(INVALID_API_KEY), "application/problem+json")
    assert dict(problem.headers)["content-type"] == "application/problem+json"
    assert dict(render(AuthError(INVALID_API_KEY)).headers)["content-type"] == "application/json"
    assert render(AuthError(EXPIRED_API_KEY)).body != plain.body
    for retry in ("10", "20"):
        limited = render(AuthError(QUOTA_EXCEEDED, headers={"Retry-After": retry}))
        assert dict(limited.headers)["retry-after"] == retry
    for field in ("name", "owner"):
        invalid = render(errors.RequestError(errors.INVALID_REQUEST, "too long", field=field))
        assert json.loads(invalid.body)["error"]["field"] == field
    needed = render(AuthError(INSUFFICIENT_PERMISSIONS, scope=("jobs:write",)))
    assert 'scope="jobs:write"' in dict(needed.headers)["www-authenticate"]
    assert (
        "scope="
        not in dict(render(AuthError(INSUFFICIENT_PERMISSIONS)).headers)["www-authenticate"]
    )


def test_kept_renderings_are_bounded() -> None:
    for n in range(3 * errors._RENDERED_KEPT):
        render(AuthError(INVALID_API_KEY, f"message {n}"))
    assert len(errors._RENDERED) <= errors._RENDERED_KEPT
