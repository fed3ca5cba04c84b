"""Token format: generation, parsing, checksum, scanner regex. Pure functions, no I/O."""

from __future__ import annotations

import math
import re

import pytest

from keystile import TOKEN_PATTERN
from keystile._core import tokens
from keystile._core.tokens import (
    ALPHABET,
    CHECKSUM_LENGTH,
    KEY_ID_PREFIX,
    KID_LENGTH,
    RANDOM_LENGTH,
    SECRET_LENGTH,
    ParsedToken,
    check_pair,
    digest,
    format_token,
    mask,
    new_kid,
    new_secret,
    parse_key_id,
    parse_pair,
    parse_token,
    token_regex,
)

ENVS = ("live", "test")


def make_token(prefix: str = "sk", environment: str = "live") -> tuple[str, str, str]:
    kid = new_kid()
    secret = new_secret(kid)
    return format_token(prefix, environment, kid, secret), kid, secret


@pytest.fixture
def token() -> str:
    return make_token()[0]


# -- shape ------------------------------------------------------------------------------------


def test_token_shape() -> None:
    token, kid, secret = make_token()
    prefix, env, got_kid, got_secret = token.split("_")
    assert (prefix, env, got_kid, got_secret) == ("sk", "live", kid, secret)
    assert len(kid) == KID_LENGTH == 16
    assert len(secret) == SECRET_LENGTH == RANDOM_LENGTH + CHECKSUM_LENGTH == 49
    assert set(kid + secret) <= set(ALPHABET)
    assert len(ALPHABET) == len(set(ALPHABET)) == 62


def test_secret_entropy_is_at_least_256_bits() -> None:
    assert RANDOM_LENGTH == 43
    assert RANDOM_LENGTH * math.log2(len(ALPHABET)) >= 256


def test_random_part_uses_the_whole_alphabet_and_never_repeats() -> None:
    kids = {new_kid() for _ in range(2000)}
    assert len(kids) == 2000
    randoms = [new_secret(kid)[:RANDOM_LENGTH] for kid in list(kids)[:300]]
    assert len(set(randoms)) == len(randoms)
    # 300 * 43 draws from 62 symbols: every symbol shows up unless the generator is biased.
    assert set("".join(randoms)) == set(ALPHABET)


def test_checksum_depends_on_kid_and_random_part() -> None:
    kid = new_kid()
    secret = new_secret(kid)
    other_kid = new_kid()
    assert check_pair(kid, secret)
    assert not check_pair(other_kid, secret)


@pytest.mark.parametrize("environment", ENVS)
def test_generated_tokens_match_default_pattern(environment: str) -> None:
    for _ in range(50):
        token = make_token(environment=environment)[0]
        assert re.fullmatch(TOKEN_PATTERN, token)
        assert re.search(TOKEN_PATTERN, f'export API_KEY="{token}"\n').group(0) == token


def test_pattern_equals_default_regex() -> None:
    assert token_regex() == TOKEN_PATTERN
    assert token_regex("sk", ENVS) == TOKEN_PATTERN


def test_custom_prefix_and_environments_regex() -> None:
    pattern = token_regex("acme", ("prod", "dev"))
    for env in ("prod", "dev"):
        token = make_token("acme", env)[0]
        assert re.fullmatch(pattern, token)
        assert not re.search(TOKEN_PATTERN, token)
        assert parse_token(token, "acme", ("prod", "dev")) is not None
    assert not re.search(pattern, make_token("acme", "live")[0])
    assert not re.search(pattern, make_token("sk", "prod")[0])


def test_pattern_does_not_match_near_misses(token: str) -> None:
    prefix, env, kid, secret = token.split("_")
    near_misses = [
        token + "x",  # one char too long
        token[:-1],  # one char too short
        "x" + token,  # glued to a word
        f"{prefix}_prod_{kid}_{secret}",  # unknown environment
        f"pk_{env}_{kid}_{secret}",  # other prefix
        f"{prefix}_{env}_{kid}{secret}",  # missing separator
        f"key_{kid}",  # a key id is public, not a token
    ]
    for text in near_misses:
        assert not re.search(TOKEN_PATTERN, text), text


def test_regex_escapes_prefix() -> None:
    # token_prefix is validated to [a-z0-9], but the regex builder must not trust it blindly.
    pattern = token_regex("s.", ("live",))
    kid = new_kid()
    fake = format_token("sx", "live", kid, new_secret(kid))
    assert not re.search(pattern, fake)


# -- parsing ----------------------------------------------------------------------------------


def test_parse_round_trip() -> None:
    token, kid, secret = make_token(environment="test")
    parsed = parse_token(token, "sk", ENVS)
    assert parsed == ParsedToken(kid, secret, "test")
    assert parsed.key_id == KEY_ID_PREFIX + kid == f"key_{kid}"
    assert format_token("sk", parsed.environment, parsed.kid, parsed.secret) == token


def test_parse_pair_round_trip() -> None:
    _, kid, secret = make_token()
    parsed = parse_pair(f"key_{kid}", secret)
    assert parsed == ParsedToken(kid, secret, None)
    assert parse_key_id(f"key_{kid}") == kid


def test_both_forms_give_the_same_digest() -> None:
    token, kid, secret = make_token()
    full = parse_token(token, "sk", ENVS)
    pair = parse_pair(f"key_{kid}", secret)
    assert full is not None and pair is not None
    server_secret = b"server-secret-0123456789"
    assert digest(server_secret, full) == digest(server_secret, pair)
    assert re.fullmatch(r"[0-9a-f]{64}", digest(server_secret, full))


def test_digest_depends_on_server_secret_and_credential() -> None:
    a = parse_token(make_token()[0], "sk", ENVS)
    b = parse_token(make_token()[0], "sk", ENVS)
    assert a is not None and b is not None
    assert digest(b"one-secret-000000", a) != digest(b"two-secret-000000", a)
    assert digest(b"one-secret-000000", a) != digest(b"one-secret-000000", b)
    assert a.secret not in digest(b"one-secret-000000", a)


def test_every_single_character_change_is_rejected(token: str) -> None:
    checked = 0
    for position, original in enumerate(token):
        for replacement in ALPHABET + "_":
            if replacement == original:
                continue
            mutated = token[:position] + replacement + token[position + 1 :]
            assert parse_token(mutated, "sk", ENVS) is None, (position, replacement)
            checked += 1
    assert checked == len(token) * 62  # 62 alternatives among 63 symbols at each position


def test_every_single_character_change_of_a_pair_is_rejected() -> None:
    _, kid, secret = make_token()
    for position, original in enumerate(secret):
        for replacement in ALPHABET:
            if replacement != original:
                mutated = secret[:position] + replacement + secret[position + 1 :]
                assert parse_pair(f"key_{kid}", mutated) is None, (position, replacement)
    for position, original in enumerate(kid):
        for replacement in ALPHABET:
            if replacement != original:
                mutated = kid[:position] + replacement + kid[position + 1 :]
                assert parse_pair(f"key_{mutated}", secret) is None, (position, replacement)


def test_adjacent_transpositions_are_rejected(token: str) -> None:
    for position in range(len(token) - 1):
        a, b = token[position], token[position + 1]
        if a == b:
            continue
        swapped = token[:position] + b + a + token[position + 2 :]
        assert parse_token(swapped, "sk", ENVS) is None, position


def test_secret_of_one_key_with_id_of_another_is_rejected() -> None:
    _, kid_a, secret_a = make_token()
    _, kid_b, _ = make_token()
    assert parse_pair(f"key_{kid_b}", secret_a) is None
    assert parse_token(format_token("sk", "live", kid_b, secret_a), "sk", ENVS) is None
    assert parse_pair(f"key_{kid_a}", secret_a) is not None


def test_environment_is_outside_the_checksum(token: str) -> None:
    # Documented: the checksum covers id and secret only, so another known environment parses
    # here; the verifier must compare it with the stored key's environment.
    prefix, _, kid, secret = token.split("_")
    parsed = parse_token(f"{prefix}_test_{kid}_{secret}", "sk", ENVS)
    assert parsed is not None and parsed.environment == "test"


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda t: t.replace("sk_", "pk_", 1), id="other-prefix"),
        pytest.param(lambda t: t.replace("sk_", "SK_", 1), id="uppercase-prefix"),
        pytest.param(lambda t: t.replace("_live_", "_prod_", 1), id="unknown-env"),
        pytest.param(lambda t: t.replace("_live_", "_Live_", 1), id="uppercase-env"),
        pytest.param(lambda t: t.replace("_live_", "_", 1), id="no-env"),
        pytest.param(lambda t: "x" + t, id="leading-char"),
        pytest.param(lambda t: t + "x", id="trailing-char"),
        pytest.param(lambda t: t[:-1], id="truncated"),
        pytest.param(lambda t: t + "_", id="trailing-underscore"),
        pytest.param(lambda t: "_" + t, id="leading-underscore"),
        pytest.param(lambda t: t.replace("_", "__", 1), id="double-underscore"),
        pytest.param(lambda t: t.rsplit("_", 1)[0] + "_x_" + t.rsplit("_", 1)[1], id="extra-part"),
        pytest.param(lambda t: t.replace("_", "-"), id="dashes"),
        pytest.param(lambda t: " " + t, id="leading-space"),
        pytest.param(lambda t: t + "\n", id="trailing-newline"),
        pytest.param(lambda t: t.upper(), id="upper"),
        pytest.param(lambda t: t[:-1] + "é", id="non-ascii-last"),
        pytest.param(lambda t: t[:10] + "\u0660" + t[11:], id="arabic-digit"),
        pytest.param(lambda t: t[:10] + "\uff21" + t[11:], id="fullwidth-A"),
        pytest.param(lambda t: t[:10] + "\x00" + t[11:], id="nul"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: "___", id="only-separators"),
        pytest.param(lambda t: "sk_live__", id="empty-parts"),
        pytest.param(lambda t: t + "A" * 1_000_000, id="huge"),
        pytest.param(lambda t: "_" * 100_000, id="many-underscores"),
        pytest.param(lambda t: "key_" + t.split("_")[2], id="key-id"),
    ],
)
def test_malformed_tokens_are_rejected(token: str, transform) -> None:  # type: ignore[no-untyped-def]
    assert parse_token(transform(token), "sk", ENVS) is None


def test_prefix_and_environments_come_from_the_caller(token: str) -> None:
    assert parse_token(token, "sk", ENVS) is not None
    assert parse_token(token, "pk", ENVS) is None
    assert parse_token(token, "sk", ("test",)) is None
    assert parse_token(token, "sk", ()) is None


@pytest.mark.parametrize(
    "key_id",
    [
        "",
        "key_",
        "key",
        "KEY_{kid}",
        "{kid}",
        "key_{kid}x",
        "key_{short}",
        "key__{kid}",
        "key_{kid}\n",
        " key_{kid}",
        "api_{kid}",
        "key_" + "é" * 16,
        "key_" + "!" * 16,
    ],
)
def test_bad_key_ids_are_rejected(key_id: str) -> None:
    _, kid, secret = make_token()
    key_id = key_id.replace("{short}", kid[:-1]).replace("{kid}", kid)
    assert parse_key_id(key_id) is None
    assert parse_pair(key_id, secret) is None


@pytest.mark.parametrize(
    "secret_change",
    [
        lambda s: "",
        lambda s: s[:-1],
        lambda s: s + "A",
        lambda s: s[:RANDOM_LENGTH],  # no checksum
        lambda s: " " + s[1:],
        lambda s: s[:-1] + "é",
        lambda s: s * 1000,
    ],
)
def test_bad_secrets_are_rejected(secret_change) -> None:  # type: ignore[no-untyped-def]
    _, kid, secret = make_token()
    assert parse_pair(f"key_{kid}", secret_change(secret)) is None
    assert not check_pair(kid, secret_change(secret))


def test_check_pair_rejects_wrong_lengths_before_checksum() -> None:
    _, kid, secret = make_token()
    assert check_pair(kid, secret)
    assert not check_pair(kid[:-1], secret)
    assert not check_pair(kid + "A", secret)
    assert not check_pair("", "")


# -- what never leaks -------------------------------------------------------------------------


def test_parsed_token_repr_has_no_secret() -> None:
    token, kid, secret = make_token()
    parsed = parse_token(token, "sk", ENVS)
    assert parsed is not None
    for text in (repr(parsed), str(parsed)):
        assert secret not in text
        assert secret[:RANDOM_LENGTH] not in text
        assert token not in text
        assert f"key_{kid}" in text
    pair = parse_pair(f"key_{kid}", secret)
    assert pair is not None and secret not in repr(pair)


def test_parsed_token_is_immutable() -> None:
    parsed = parse_token(make_token()[0], "sk", ENVS)
    assert parsed is not None
    with pytest.raises(AttributeError):
        parsed.secret = "x"  # type: ignore[misc]


def test_mask() -> None:
    assert mask("sk", "live", "abcd") == "sk_live_…abcd"
    assert mask("acme", "test", "Z9z0") == "acme_test_…Z9z0"
    token = make_token()[0]
    masked = mask("sk", "live", token[-4:])
    assert masked.endswith(token[-4:])
    assert token[8:-4] not in masked


def test_module_exports_pattern() -> None:
    assert tokens.TOKEN_PATTERN is TOKEN_PATTERN
