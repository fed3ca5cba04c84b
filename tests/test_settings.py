"""Settings: defaults, validation (every mistake names its key), exempt paths, repr."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest

from keystile import ConfigError, Keystile, Settings
from keystile._core.settings import Argon2Params, load_settings, redact_url

from .conftest import FAST_ARGON2

GOOD_SECRET = "s" * 16


def config_error(raw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(raw)
    return info.value


def assert_names(raw: dict[str, Any], key: str) -> ConfigError:
    error = config_error(raw)
    assert f"'{key}'" in str(error) or key in str(error), str(error)
    return error


# -- defaults ---------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert load_settings(None) == settings
    assert settings.store == "sqlite:///keystile.db"
    assert settings.redis_url is None
    assert settings.secret is None
    assert settings.token_prefix == "sk"
    assert settings.environments == ("live", "test")
    assert settings.exempt_paths == ()
    assert settings.argon2 == Argon2Params(time_cost=2, memory_cost=19 * 1024, parallelism=1)
    assert settings.on_backend_error == "fail_closed"
    assert settings.cache_ttl == 300
    assert settings.negative_cache_ttl == 60
    assert settings.local_cache_ttl == 10.0
    assert settings.last_used_interval == 60.0
    assert settings.billing_timezone == "UTC"
    assert settings.billing_anchor_day == 1


def test_settings_instance_passes_through() -> None:
    settings = load_settings({"token_prefix": "acme"})
    assert load_settings(settings) is settings


def test_valid_settings_are_kept() -> None:
    settings = load_settings(
        {
            "store": "memory://",
            "redis_url": "rediss://user:pw@cache:6380/1",
            "secret": GOOD_SECRET,
            "token_prefix": "acme2",
            "environments": ["prod", "dev", "ci1"],
            "exempt_paths": ["/health", "/docs*"],
            "argon2": {"time_cost": 3, "memory_cost": 32 * 1024, "parallelism": 2},
            "on_backend_error": "degrade",
            "local_cache_ttl": 0,
            "last_used_interval": 0.5,
            "billing_timezone": "Europe/Paris",
        }
    )
    assert settings.environments == ("prod", "dev", "ci1")
    assert isinstance(settings.environments, tuple)
    assert settings.exempt_paths == ("/health", "/docs*")
    assert settings.argon2 == Argon2Params(3, 32 * 1024, 2)
    assert settings.local_cache_ttl == 0.0
    assert settings.on_backend_error == "degrade"


def test_argon2_partial_dict_keeps_other_defaults() -> None:
    assert load_settings({"argon2": {"time_cost": 4}}).argon2 == Argon2Params(4, 19 * 1024, 1)


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.secret = "x" * 32  # type: ignore[misc]


def test_keystile_validates_its_settings() -> None:
    with pytest.raises(ConfigError, match="tokn_prefix"):
        Keystile({"store": "memory://", "tokn_prefix": "x"})
    with pytest.raises(ConfigError, match="token_prefix"):
        Keystile({"store": "memory://", "token_prefix": "Bad_"})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# -- one bad key at a time --------------------------------------------------------------------


@pytest.mark.parametrize("raw", [[("store", "memory://")], "store=memory://", 42])
def test_settings_must_be_a_dict(raw: Any) -> None:
    assert "dict" in str(config_error(raw))


@pytest.mark.parametrize("key", ["tokn_prefix", "redis", "Store", "argon"])
def test_unknown_key_is_named(key: str) -> None:
    error = assert_names({key: "x"}, key)
    assert "unknown" in str(error)


def test_unknown_non_string_key_is_named() -> None:
    assert_names({1: "x", "store": "memory://"}, "1")


BAD = [
    # store
    ("store", "mysql://localhost/db"),
    ("store", "keystile.db"),
    ("store", ""),
    ("store", None),
    ("store", 3),
    # redis_url
    ("redis_url", "http://localhost:6379"),
    ("redis_url", "localhost:6379"),
    ("redis_url", ""),
    ("redis_url", 6379),
    # secret
    ("secret", ""),
    ("secret", 1234567890123456789),
    ("secret", b"bytes-secret-0123456789"),
    # names
    ("token_prefix", ""),
    ("token_prefix", "SK"),
    ("token_prefix", "s_k"),
    ("token_prefix", "1sk"),
    ("token_prefix", "a" * 13),
    ("token_prefix", None),
    ("redis_prefix", ""),
    ("environments", ["live", "sess"]),
    ("environments", ["Live"]),
    ("environments", ["LIVE", "test"]),
    ("environments", ["live", "live"]),
    ("environments", "live"),
    ("environments", []),
    ("environments", ["li-ve"]),
    ("environments", ["li_ve"]),
    ("environments", ["1live"]),
    ("environments", ["a" * 17]),
    ("environments", [""]),
    ("environments", [None]),
    ("environments", {"live", "test"}),
    # exempt paths
    ("exempt_paths", ["health"]),
    ("exempt_paths", ["/health", "docs*"]),
    ("exempt_paths", ["/a*b"]),
    ("exempt_paths", ["/*/x"]),
    ("exempt_paths", ["/a**"]),
    ("exempt_paths", ["*"]),
    ("exempt_paths", [""]),
    ("exempt_paths", "/health"),
    ("exempt_paths", [None]),
    # argon2
    ("argon2", {"time_cost": 1, "memroy_cost": 8}),
    ("argon2", {"salt_len": 16}),
    ("argon2", {"memory_cost": 7}),
    ("argon2", {"memory_cost": 15, "parallelism": 2}),
    ("argon2", {"memory_cost": 0}),
    ("argon2", {"time_cost": 0}),
    ("argon2", {"time_cost": 101}),
    ("argon2", {"parallelism": 0}),
    ("argon2", {"time_cost": True}),
    ("argon2", {"memory_cost": 1024.0}),
    ("argon2", {"time_cost": "2"}),
    ("argon2", "fast"),
    ("argon2", None),
    # bool or str where a number is expected
    ("cache_ttl", True),
    ("cache_ttl", False),
    ("cache_ttl", "300"),
    ("cache_ttl", 0),
    ("cache_ttl", 1.5),
    ("negative_cache_ttl", True),
    ("local_cache_size", True),
    ("local_cache_size", -1),
    ("argon2_max_concurrency", True),
    ("argon2_max_concurrency", 0),
    ("local_cache_ttl", True),
    ("local_cache_ttl", -1),
    ("local_cache_ttl", "10"),
    ("redis_timeout", 0),
    ("redis_timeout", False),
    ("last_used_interval", -0.1),
    ("last_used_interval", None),
    ("idempotency_ttl", True),
    ("monthly_page_limit", True),
    ("monthly_page_limit", -1),
    ("billing_anchor_day", 0),
    ("billing_anchor_day", 32),
    ("billing_anchor_day", True),
    # choices
    ("on_backend_error", "fail_open"),
    ("on_backend_error", "FAIL_CLOSED"),
    ("on_backend_error", None),
    ("on_backend_error", ["degrade"]),
    ("on_backend_error", True),
    # time zone
    ("billing_timezone", "Mars/Olympus_Mons"),
    ("billing_timezone", "utc+1"),
    ("billing_timezone", "../../etc/passwd"),
    ("billing_timezone", ""),
    ("billing_timezone", 1),
    ("billing_timezone", None),
]


@pytest.mark.parametrize("key,value", BAD, ids=[f"{k}={v!r}"[:60] for k, v in BAD])
def test_bad_value_raises_config_error_naming_the_key(key: str, value: Any) -> None:
    raw: dict[str, Any] = {key: value}
    if key == "redis_url":
        raw["secret"] = GOOD_SECRET
    assert_names(raw, key.split(".")[0])


def test_argon2_errors_name_the_subkey() -> None:
    assert "memroy_cost" in str(config_error({"argon2": {"memroy_cost": 8}}))
    assert "argon2.memory_cost" in str(config_error({"argon2": {"memory_cost": 7}}))
    assert "argon2.time_cost" in str(config_error({"argon2": {"time_cost": True}}))
    assert "argon2.parallelism" in str(config_error({"argon2": {"parallelism": 65}}))


def test_argon2_minimum_memory_is_accepted() -> None:
    assert load_settings({"argon2": FAST_ARGON2}).argon2 == Argon2Params(1, 8, 1)
    assert load_settings({"argon2": {"memory_cost": 16, "parallelism": 2}}).argon2.memory_cost == 16


def test_redis_url_needs_secret() -> None:
    error = config_error({"redis_url": "redis://localhost:6379/0"})
    assert "secret" in str(error) and "redis_url" in str(error)


@pytest.mark.parametrize("secret", ["short", "x" * 15])
def test_short_secret(secret: str) -> None:
    error = assert_names({"secret": secret}, "secret")
    assert secret not in str(error)


def test_short_secret_with_redis() -> None:
    error = assert_names({"redis_url": "redis://localhost", "secret": "tooshort"}, "secret")
    assert "tooshort" not in str(error)


def test_secret_of_16_chars_is_enough() -> None:
    assert load_settings({"secret": "x" * 16}).secret == "x" * 16


def test_bad_secret_value_is_not_echoed() -> None:
    error = assert_names({"secret": 1234567890123456789}, "secret")
    assert "1234567890123456789" not in str(error)


def test_bad_redis_url_is_echoed_without_password() -> None:
    error = assert_names(
        {"redis_url": "http://user:hunter2@localhost:6379", "secret": GOOD_SECRET}, "redis_url"
    )
    assert "hunter2" not in str(error)


def test_first_bad_key_is_reported_even_with_good_ones() -> None:
    assert_names(
        {"store": "memory://", "cache_ttl": 60, "on_backend_error": "nope"}, "on_backend_error"
    )


def test_sqlite_store_without_path() -> None:
    with pytest.raises(ConfigError, match="store"):
        Keystile({"store": "sqlite://", "argon2": FAST_ARGON2})


@pytest.mark.parametrize("value", [[], ()])
def test_empty_exempt_paths_are_fine(value: Any) -> None:
    assert load_settings({"exempt_paths": value}).exempt_paths == ()


@pytest.mark.parametrize(
    "key", ["local_cache_ttl", "redis_timeout", "last_used_interval", "usage_flush_interval"]
)
def test_nan_is_not_a_number_setting(key: str) -> None:
    # Regression: `nan < low` is False, so NaN used to pass (last_used_interval=nan never flushed).
    assert_names({key: math.nan}, key)


def test_argon2_unknown_keys_of_mixed_types() -> None:
    # Regression: sorted() of mixed-type keys used to raise TypeError instead of ConfigError.
    assert_names({"argon2": {1: 2, "salt": 3}}, "argon2")


# -- exempt paths -----------------------------------------------------------------------------


@pytest.fixture
def exempting() -> Settings:
    return load_settings({"exempt_paths": ["/health", "/docs*", "/a.b", "/v1/public/*"]})


@pytest.mark.parametrize(
    "path",
    ["/health", "/docs", "/docs/", "/docs/x", "/docs/x/y?z", "/a.b", "/v1/public/", "/v1/public/x"],
)
def test_exempt(exempting: Settings, path: str) -> None:
    assert exempting.is_exempt(path)


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/health/",
        "/health/x",
        "/Health",
        "/api/health",
        "health",
        "",
        "/",
        "/doc",
        "/Docs/x",
        "/axb",  # '.' is not a regex wildcard
        "/a.bc",
        "/v1/public",
        "/v1/publicx",
        "/v1/private/x",
        "\0",
    ],
)
def test_not_exempt(exempting: Settings, path: str) -> None:
    assert not exempting.is_exempt(path)


def test_nothing_exempt_by_default() -> None:
    settings = load_settings({})
    for path in ("/", "/health", "", "/docs", "/\0"):
        assert not settings.is_exempt(path)


@pytest.mark.parametrize("exempt_paths", [[], ["/health"]])
def test_nul_path_is_not_exempt_without_prefixes(exempt_paths: list[str]) -> None:
    # Regression: with no "x*" path the prefix fell back to a NUL, so GET /%00... (ASGI paths
    # are percent-decoded) skipped authentication.
    settings = load_settings({"exempt_paths": exempt_paths})
    assert not settings.is_exempt("\0")
    assert not settings.is_exempt("\0admin")


def test_regex_characters_in_exempt_paths_are_literal() -> None:
    settings = load_settings({"exempt_paths": ["/x+", "/(a|b)*", "/[a-z]"]})
    assert settings.is_exempt("/x+")
    assert not settings.is_exempt("/xx")
    assert settings.is_exempt("/(a|b)/c")
    assert not settings.is_exempt("/a")
    assert settings.is_exempt("/[a-z]")
    assert not settings.is_exempt("/q")


def test_star_alone_exempts_everything_under_root() -> None:
    settings = load_settings({"exempt_paths": ["/*"]})
    assert settings.is_exempt("/")
    assert settings.is_exempt("/anything/at/all")


def test_engine_is_exempt_delegates(make_keystile) -> None:  # type: ignore[no-untyped-def]
    ks = make_keystile(exempt_paths=["/health"])
    assert ks.is_exempt("/health")
    assert not ks.is_exempt("/healthz")


# -- repr -------------------------------------------------------------------------------------


def test_repr_hides_secret_and_passwords() -> None:
    settings = load_settings(
        {
            "store": "postgresql://app:db-hunter2@db:5432/keys",
            "redis_url": "redis://default:redis-hunter2@cache:6379/0",
            "secret": "server-secret-hunter2-xyz",
        }
    )
    text = repr(settings)
    assert "db-hunter2" not in text
    assert "redis-hunter2" not in text
    assert "server-secret-hunter2-xyz" not in text
    assert "secret=***" in text
    assert "redis://default:***@cache:6379/0" in text
    assert "app:***@db" in text
    assert str(settings) == text


def test_repr_without_secret() -> None:
    text = repr(load_settings({"store": "memory://"}))
    assert "secret=None" in text
    assert "memory://" in text


def test_repr_hides_password_without_user() -> None:
    settings = load_settings({"redis_url": "rediss://:hunter2@cache:6380", "secret": GOOD_SECRET})
    assert "hunter2" not in repr(settings)
    assert ":***@cache" in repr(settings)


def test_engine_repr_hides_secrets() -> None:
    ks = Keystile(
        {"store": "memory://", "secret": "server-secret-hunter2-xyz", "argon2": FAST_ARGON2}
    )
    try:
        assert "hunter2" not in repr(ks)
    finally:
        ks.close()


@pytest.mark.parametrize(
    "url,shown",
    [
        ("redis://u:p@h:1/0", "redis://u:***@h:1/0"),
        ("redis://:p@h", "redis://:***@h"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://user@h", "redis://user@h"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # an unencoded "@" in it
        ("failed: postgresql://u:pw@h refused a@b", "failed: postgresql://u:***@h refused a@b"),
        ("postgresql://h/db?password=pw&x=1", "postgresql://h/db?password=***&x=1"),
        (None, None),
    ],
)
def test_redact_url(url: str | None, shown: str | None) -> None:
    assert redact_url(url) == shown


def test_repr_hides_password_in_query_string() -> None:
    # Regression: redis-py reads ?password=... too; repr used to print it.
    settings = load_settings(
        {"redis_url": "redis://cache:6379/0?password=hunter2", "secret": GOOD_SECRET}
    )
    assert "hunter2" not in repr(settings)


def test_error_messages_name_allowed_values() -> None:
    assert re.search(r"fail_closed.*degrade", str(config_error({"on_backend_error": "x"})))
