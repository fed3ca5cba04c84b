"""Reading credentials from headers: every form, every conflict, and garbage. No I/O."""

from __future__ import annotations

import random

import pytest

from keystile._core.credentials import MAX_ACCOUNT_LENGTH, Credentials, read_credentials
from keystile._core.errors import (
    INVALID_API_KEY,
    MALFORMED_CREDENTIALS,
    MISSING_API_KEY,
    AuthError,
    ErrorSpec,
)
from keystile._core.tokens import ParsedToken, format_token, new_kid, new_secret

PREFIX = "sk"
ENVS = ("live", "test")


def new_token(environment: str = "live") -> tuple[str, str, str]:
    kid = new_kid()
    secret = new_secret(kid)
    return format_token(PREFIX, environment, kid, secret), f"key_{kid}", secret


TOKEN, KEY_ID, SECRET = new_token()
OTHER_TOKEN, OTHER_KEY_ID, OTHER_SECRET = new_token()


def read(*headers: tuple[str, str]) -> Credentials:
    return read_credentials(list(headers), PREFIX, ENVS)


def refused(spec: ErrorSpec, *headers: tuple[str, str]) -> AuthError:
    with pytest.raises(AuthError) as info:
        read(*headers)
    assert info.value.spec is spec, (info.value.spec.code, info.value.message)
    return info.value


# -- accepted forms ---------------------------------------------------------------------------


def test_bearer() -> None:
    creds = read(("authorization", f"Bearer {TOKEN}"))
    assert creds.auth_method == "bearer"
    assert creds.token == ParsedToken(KEY_ID[4:], SECRET, "live")
    assert creds.account_id is None


def test_api_key_with_full_token() -> None:
    creds = read(("x-api-key", TOKEN))
    assert creds.auth_method == "api_key"
    assert creds.token == ParsedToken(KEY_ID[4:], SECRET, "live")


def test_key_id_and_secret() -> None:
    creds = read(("x-api-key", KEY_ID), ("x-api-secret", SECRET))
    assert creds.auth_method == "key_secret"
    assert creds.token == ParsedToken(KEY_ID[4:], SECRET, None)
    assert creds.token.key_id == KEY_ID


def test_key_id_and_secret_in_either_order() -> None:
    creds = read(("x-api-secret", SECRET), ("x-api-key", KEY_ID))
    assert creds.auth_method == "key_secret"


def test_test_environment_token() -> None:
    token, _, _ = new_token("test")
    assert read(("x-api-key", token)).token.environment == "test"


def test_account_header_is_returned() -> None:
    creds = read(("authorization", f"Bearer {TOKEN}"), ("x-account-id", "acct_42"))
    assert creds.account_id == "acct_42"
    creds = read(("x-api-key", KEY_ID), ("x-api-secret", SECRET), ("x-account-id", "a"))
    assert creds.account_id == "a"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    assert read(("authorization", f"{scheme} {TOKEN}")).auth_method == "bearer"


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer  {TOKEN}",
        f"Bearer    {TOKEN}   ",
        f"  Bearer {TOKEN}",
        f"\tBearer {TOKEN}\t",
        f" \t Bearer {TOKEN} \t ",
    ],
)
def test_extra_spaces_around_bearer_token(value: str) -> None:
    assert read(("authorization", value)).token.secret == SECRET


@pytest.mark.parametrize("value", [f" {TOKEN}", f"{TOKEN} ", f"\t{TOKEN}\t", f"  {TOKEN}  "])
def test_extra_spaces_around_api_key(value: str) -> None:
    assert read(("x-api-key", value)).auth_method == "api_key"


def test_extra_spaces_around_key_id_and_secret() -> None:
    creds = read(("x-api-key", f" {KEY_ID} "), ("x-api-secret", f"\t{SECRET} "))
    assert creds.token.secret == SECRET


def test_unrelated_headers_are_ignored() -> None:
    creds = read(
        ("host", "example.com"),
        ("cookie", "a=b"),
        ("x-api-keys", "junk"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("authorization", f"Bearer {TOKEN}"),
        ("accept", "*/*"),
        ("accept", "text/html"),  # repeated unrelated headers are fine
    )
    assert creds.auth_method == "bearer"


def test_header_names_are_not_normalised_here() -> None:
    # Adapters lowercase names; a non-lowercase name is not one we read.
    refused(MISSING_API_KEY, ("Authorization", f"Bearer {TOKEN}"))
    refused(MISSING_API_KEY, ("X-Api-Key", TOKEN))


def test_same_value_in_bearer_and_api_key_is_accepted() -> None:
    creds = read(("authorization", f"Bearer {TOKEN}"), ("x-api-key", TOKEN))
    assert creds.auth_method == "bearer"
    creds = read(("authorization", f"Bearer {TOKEN}"), ("x-api-key", f" {TOKEN} "))
    assert creds.auth_method == "bearer"


def test_headers_may_be_any_iterable() -> None:
    creds = read_credentials(iter([("x-api-key", TOKEN)]), PREFIX, ENVS)
    assert creds.auth_method == "api_key"
    creds = read_credentials((h for h in [("x-api-key", TOKEN)]), PREFIX, ENVS)
    assert creds.auth_method == "api_key"


def test_custom_prefix_and_environments() -> None:
    kid = new_kid()
    token = format_token("acme", "prod", kid, new_secret(kid))
    creds = read_credentials([("x-api-key", token)], "acme", ("prod",))
    assert creds.token.environment == "prod"
    with pytest.raises(AuthError) as info:
        read_credentials([("x-api-key", TOKEN)], "acme", ("prod",))
    assert info.value.spec is INVALID_API_KEY


def test_credentials_repr_has_no_secret() -> None:
    for creds in (
        read(("authorization", f"Bearer {TOKEN}")),
        read(("x-api-key", KEY_ID), ("x-api-secret", SECRET)),
    ):
        assert SECRET not in repr(creds)
        assert SECRET not in str(creds)
        assert KEY_ID in repr(creds)


# -- missing ----------------------------------------------------------------------------------


def test_no_headers_is_missing() -> None:
    error = refused(MISSING_API_KEY)
    assert error.status == 401


@pytest.mark.parametrize("name", ["authorization", "x-api-key"])
@pytest.mark.parametrize("value", ["", " ", "\t", "  \t  "])
def test_empty_values_are_missing(name: str, value: str) -> None:
    refused(MISSING_API_KEY, (name, value))


def test_empty_everything_is_missing() -> None:
    refused(
        MISSING_API_KEY,
        ("authorization", ""),
        ("x-api-key", " "),
        ("x-api-secret", ""),
        ("x-account-id", ""),
    )


def test_empty_secret_with_key_id_is_still_key_id_without_secret() -> None:
    refused(MALFORMED_CREDENTIALS, ("x-api-key", KEY_ID), ("x-api-secret", "  "))


def test_empty_api_key_next_to_bearer_is_ignored() -> None:
    assert read(("authorization", f"Bearer {TOKEN}"), ("x-api-key", "")).auth_method == "bearer"


# -- malformed or conflicting (400) -----------------------------------------------------------


@pytest.mark.parametrize(
    "name,values",
    [
        ("authorization", [f"Bearer {TOKEN}", f"Bearer {TOKEN}"]),
        ("authorization", [f"Bearer {TOKEN}", f"Bearer {OTHER_TOKEN}"]),
        ("x-api-key", [TOKEN, TOKEN]),
        ("x-api-key", [TOKEN, OTHER_TOKEN]),
        ("x-api-key", [TOKEN, ""]),
        ("x-api-secret", [SECRET, SECRET]),
        ("x-account-id", ["a", "b"]),
        ("x-account-id", ["a", "a"]),
    ],
)
def test_duplicated_headers(name: str, values: list[str]) -> None:
    headers = [(name, value) for value in values]
    if name == "x-api-secret":
        headers.append(("x-api-key", KEY_ID))
    elif name == "x-account-id":
        headers.append(("authorization", f"Bearer {TOKEN}"))
    error = refused(MALFORMED_CREDENTIALS, *headers)
    assert error.status == 400
    assert name in error.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("authorization", f"Bearer {TOKEN},Bearer {TOKEN}"),
        ("x-api-key", f"{TOKEN},x"),
        ("x-api-secret", f"{SECRET},{SECRET}"),
        ("x-account-id", "acct_b,x"),
    ],
)
def test_a_comma_is_a_repeat_on_every_adapter(name: str, value: str) -> None:
    """A WSGI server joins a repeated header with ","; the core reads it so for all."""
    headers = [(name, value)]
    if name == "x-api-secret":
        headers.append(("x-api-key", KEY_ID))
    elif name == "x-account-id":
        headers.append(("authorization", f"Bearer {TOKEN}"))
    error = refused(MALFORMED_CREDENTIALS, *headers)
    assert error.status == 400 and name in error.message


def test_bearer_and_different_api_key_conflict() -> None:
    refused(MALFORMED_CREDENTIALS, ("authorization", f"Bearer {TOKEN}"), ("x-api-key", OTHER_TOKEN))
    refused(MALFORMED_CREDENTIALS, ("authorization", f"Bearer {TOKEN}"), ("x-api-key", KEY_ID))
    refused(MALFORMED_CREDENTIALS, ("authorization", f"Bearer {TOKEN}"), ("x-api-key", "garbage"))


def test_secret_without_key_id() -> None:
    refused(MALFORMED_CREDENTIALS, ("x-api-secret", SECRET))
    refused(MALFORMED_CREDENTIALS, ("x-api-secret", SECRET), ("x-api-key", ""))


def test_secret_with_bearer() -> None:
    refused(
        MALFORMED_CREDENTIALS,
        ("authorization", f"Bearer {TOKEN}"),
        ("x-api-key", KEY_ID),
        ("x-api-secret", SECRET),
    )
    refused(MALFORMED_CREDENTIALS, ("authorization", f"Bearer {TOKEN}"), ("x-api-secret", SECRET))


def test_key_id_without_secret() -> None:
    refused(MALFORMED_CREDENTIALS, ("x-api-key", KEY_ID))


def test_full_token_in_api_key_together_with_secret() -> None:
    refused(MALFORMED_CREDENTIALS, ("x-api-key", TOKEN), ("x-api-secret", SECRET))
    refused(MALFORMED_CREDENTIALS, ("x-api-key", "garbage"), ("x-api-secret", SECRET))


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        f"Digest {TOKEN}",
        TOKEN,  # no scheme at all
        f"Bearer{TOKEN}",
        f"Bearer:{TOKEN}",
        "Bearer",
        "Bearer   ",
    ],
)
def test_non_bearer_or_empty_bearer_is_malformed(value: str) -> None:
    refused(MALFORMED_CREDENTIALS, ("authorization", value))


@pytest.mark.parametrize(
    "account",
    [
        "a" * (MAX_ACCOUNT_LENGTH + 1),
        "a" * 10_000,
        "é",
        "acct-é",
        "acct\u2028",
        "acct\x00",
        "ac\nct",
        "ac\rct",
        "\x7f",
        "a\tb",
    ],
)
def test_bad_account_header_is_malformed(account: str) -> None:
    refused(MALFORMED_CREDENTIALS, ("authorization", f"Bearer {TOKEN}"), ("x-account-id", account))


def test_longest_account_header_is_accepted() -> None:
    account = "a" * MAX_ACCOUNT_LENGTH
    assert read(("x-api-key", TOKEN), ("x-account-id", account)).account_id == account


def test_blank_account_header_is_absent() -> None:
    assert read(("x-api-key", TOKEN), ("x-account-id", "  ")).account_id is None


# -- garbage (401 invalid) --------------------------------------------------------------------

GARBAGE = [
    "x" * 10 * 1024,
    "A" * 1024 * 1024,
    TOKEN + "x" * 10 * 1024,
    TOKEN[:-1] + "é",
    "é",
    "\u2028",
    TOKEN[:20] + "\u2028" + TOKEN[21:],
    "tok\x00en",
    TOKEN[:-1] + "\x00",
    "\x00",
    "\x1b[31m",
    "a\rb",
    "a\nb",
    "\x7f",
    "\ud800",  # lone surrogate
    "\U0001f600",
    "garbage",
    "sk_live_",
    "sk_live_x_y",
    TOKEN.replace("sk_", "pk_"),
    TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B"),
    TOKEN + TOKEN,
    f"{TOKEN} {TOKEN}",
]


@pytest.mark.parametrize("value", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_bearer_is_invalid(value: str) -> None:
    refused(INVALID_API_KEY, ("authorization", f"Bearer {value}"))


@pytest.mark.parametrize("value", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_api_key_is_invalid(value: str) -> None:
    refused(INVALID_API_KEY, ("x-api-key", value))


@pytest.mark.parametrize("value", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_secret_is_invalid(value: str) -> None:
    refused(INVALID_API_KEY, ("x-api-key", KEY_ID), ("x-api-secret", value))


@pytest.mark.parametrize(
    "key_id",
    ["key_", "key_short", KEY_ID + "x", KEY_ID[:-1] + "é", KEY_ID + "\x00", "key_" + "A" * 10_000],
)
def test_garbage_key_id_is_invalid(key_id: str) -> None:
    refused(INVALID_API_KEY, ("x-api-key", key_id), ("x-api-secret", SECRET))


@pytest.mark.parametrize(
    "value",
    ["Bearer " + "x" * 10 * 1024, "Bearer " + "x" * 1024 * 1024, "é" * 1000, "Bearer\x00" + TOKEN],
)
def test_garbage_authorization_never_escapes_as_other_exception(value: str) -> None:
    with pytest.raises(AuthError) as info:
        read(("authorization", value))
    assert info.value.spec in (INVALID_API_KEY, MALFORMED_CREDENTIALS)


def test_secret_of_another_key_is_invalid() -> None:
    refused(INVALID_API_KEY, ("x-api-key", KEY_ID), ("x-api-secret", OTHER_SECRET))


def test_unknown_environment_and_prefix_are_invalid() -> None:
    kid = new_kid()
    refused(INVALID_API_KEY, ("x-api-key", format_token(PREFIX, "prod", kid, new_secret(kid))))
    refused(INVALID_API_KEY, ("x-api-key", format_token("pk", "live", kid, new_secret(kid))))


def test_auth_errors_never_echo_the_credential() -> None:
    bad = TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B")
    for headers in (
        [("authorization", f"Bearer {bad}")],
        [("x-api-key", bad)],
        [("x-api-key", KEY_ID), ("x-api-secret", bad.rsplit("_", 1)[1])],
        [("authorization", f"Basic {TOKEN}")],
        [("authorization", f"Bearer {TOKEN}"), ("x-api-key", OTHER_TOKEN)],
    ):
        with pytest.raises(AuthError) as info:
            read_credentials(headers, PREFIX, ENVS)
        text = f"{info.value} {info.value.message}"
        for secret in (SECRET, OTHER_SECRET, bad.rsplit("_", 1)[1]):
            assert secret not in text


# -- fuzz -------------------------------------------------------------------------------------

_NAMES = [
    "authorization",
    "x-api-key",
    "x-api-secret",
    "x-account-id",
    "Authorization",
    "cookie",
    "host",
    "",
]


def _random_text(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        alphabet = "abcXYZ019_- \t:"
    elif kind == 1:
        alphabet = "".join(chr(c) for c in range(0, 128))
    elif kind == 2:
        alphabet = "é\u2028\u2029\u00a0\ufeff\U0001f600\x00\ud800"
    elif kind == 3:
        return "".join(rng.choice("ab_") for _ in range(rng.choice([600, 5000])))
    elif kind == 4:
        return rng.choice(["", " ", "Bearer", "Bearer ", "key_", "sk_live_"])
    else:
        alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))


def _mutate(rng: random.Random, text: str) -> str:
    if not text or rng.random() < 0.5:
        return text
    position = rng.randrange(len(text))
    op = rng.randrange(3)
    if op == 0:
        return text[:position] + text[position + 1 :]
    char = rng.choice("aZ9_ é\x00")
    if op == 1:
        return text[:position] + char + text[position + 1 :]
    return text[:position] + char + text[position:]


def _random_value(rng: random.Random, name: str) -> str:
    token, key_id, secret = rng.choice([(TOKEN, KEY_ID, SECRET), new_token("test")])
    candidates = {
        "authorization": [f"Bearer {token}", f"bearer  {token} ", f"Basic {token}", token],
        "x-api-key": [token, key_id, f" {key_id}"],
        "x-api-secret": [secret, " " + secret],
        "x-account-id": ["acct", "a" * 129, "é"],
    }.get(name, ["x"])
    base = rng.choice([*candidates, _random_text(rng)])
    return _mutate(rng, base)


def test_fuzz_only_auth_errors_or_credentials() -> None:
    rng = random.Random(20240611)
    outcomes: dict[str, int] = {}
    for _ in range(2000):
        token, key_id, secret = rng.choice([(TOKEN, KEY_ID, SECRET), new_token("test")])
        template = rng.choice(
            [
                [],
                [("authorization", f"Bearer {token}")],
                [("x-api-key", token)],
                [("x-api-key", key_id), ("x-api-secret", secret)],
            ]
        )
        headers = [(name, _mutate(rng, value)) for name, value in template]
        for _ in range(rng.choice([0, 0, 1, 2, 4])):
            name = rng.choice(_NAMES)
            headers.insert(rng.randrange(len(headers) + 1), (name, _random_value(rng, name)))
        try:
            creds = read_credentials(headers, PREFIX, ENVS)
        except AuthError as error:
            assert error.spec in (MISSING_API_KEY, INVALID_API_KEY, MALFORMED_CREDENTIALS)
            outcomes[error.spec.code] = outcomes.get(error.spec.code, 0) + 1
        else:
            assert isinstance(creds, Credentials)
            assert creds.auth_method in ("bearer", "api_key", "key_secret")
            assert creds.token.kid and creds.token.secret
            assert creds.account_id is None or (
                creds.account_id.isascii() and len(creds.account_id) <= MAX_ACCOUNT_LENGTH
            )
            outcomes[creds.auth_method] = outcomes.get(creds.auth_method, 0) + 1
    # The generator must really reach every outcome, or the loop proves little.
    for outcome in ("AUTH_001", "AUTH_002", "AUTH_006", "bearer", "api_key", "key_secret"):
        assert outcomes.get(outcome, 0) > 10, outcomes
