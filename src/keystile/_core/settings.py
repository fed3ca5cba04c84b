"""The settings dict: defaults, validation, and the frozen :class:`Settings` built from it.

Every key is checked at construction; a mistake raises :class:`~keystile._core.errors.ConfigError`
naming the key and what is allowed, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from keystile._core.errors import ConfigError, InvalidInput
from keystile._core.keyfields import check_networks
from keystile._core.redisurl import RedisUrlError, parse_redis_url

_NAME = re.compile(r"[a-z][a-z0-9]{0,15}")
POLICIES = ("fail_closed", "degrade")
CONSISTENCIES = ("strict", "fast")


@dataclass(frozen=True, slots=True)
class Argon2Params:
    time_cost: int = 2
    memory_cost: int = 19 * 1024  # KiB: OWASP's minimum recommendation for argon2id
    parallelism: int = 1


@dataclass(frozen=True, slots=True)
class Settings:
    store: str = "sqlite:///keystile.db"
    redis_url: str | None = None
    secret: str | None = None
    redis_prefix: str = "ks"
    token_prefix: str = "sk"
    environments: tuple[str, ...] = ("live", "test")
    exempt_paths: tuple[str, ...] = ()
    argon2: Argon2Params = field(default_factory=Argon2Params)
    argon2_max_concurrency: int = 2
    argon2_queue_timeout: float = 1.0
    local_cache_ttl: float = 10.0
    local_cache_size: int = 10_000
    cache_ttl: int = 300
    negative_cache_ttl: int = 60
    redis_timeout: float = 0.25
    on_backend_error: str = "fail_closed"
    #: "strict": every request checks the key's state and charges its quota in Redis (one
    #: round trip). "fast": changes are pushed to every process and quotas are spent from
    #: leases, so a warm key costs no round trip (see the README's consistency table).
    consistency: str = "strict"
    last_used_interval: float = 60.0
    # Quotas (see keystile._services.quotas).
    monthly_page_limit: int | None = None
    test_page_limit: int | None = 1000
    plans: Mapping[str, int | None] = field(default_factory=dict)
    billing_anchor_day: int = 1
    billing_timezone: str = "UTC"
    page_cost: int | Callable[[Any], int] = 1
    counted_statuses: tuple[int, ...] = tuple(range(100, 500))
    quota_thresholds: tuple[float, ...] = (0.8, 1.0)
    on_quota_threshold: Callable[..., Any] | None = None
    usage_flush_interval: float = 5.0
    idempotency_ttl: int = 24 * 3600
    # Sessions (POST /auth/login).
    session_ttl: int = 3600
    session_idle_ttl: int = 1800
    login_max_failures: int = 10
    login_max_failures_per_key: int = 20
    login_failure_window: int = 900
    #: Proxies (CIDRs) whose ``X-Forwarded-For`` names the client, for keys with an
    #: ``allowed_ips`` list; from any other peer the header is ignored.
    trusted_proxies: tuple[str, ...] = ()

    @property
    def exempt_exact(self) -> frozenset[str]:
        return frozenset(p for p in self.exempt_paths if not p.endswith("*"))

    @property
    def exempt_prefixes(self) -> tuple[str, ...]:
        return tuple(p[:-1] for p in self.exempt_paths if p.endswith("*"))

    def is_exempt(self, path: str) -> bool:
        prefixes = self.exempt_prefixes
        return path in self.exempt_exact or (bool(prefixes) and path.startswith(prefixes))

    def __repr__(self) -> str:
        # The server secret and any password in a URL stay out of logs.
        return (
            f"Settings(store={redact_url(self.store)!r}, "
            f"redis_url={redact_url(self.redis_url)!r}, secret={'***' if self.secret else None})"
        )


def redact_url(url: str | None) -> str | None:
    """The URL without its password, in the userinfo or in the query (``?password=``)."""
    if url is None:
        return None
    # Up to the last "@" of the authority: a password may hold an unencoded one.
    url = re.sub(r"//([^/@:\s]*):[^/\s]*@", r"//\1:***@", url)
    return re.sub(r"([?&][^=&]*password[^=&]*=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


def _fail(key: str, allowed: str, value: Any) -> ConfigError:
    shown = "***" if key == "secret" else repr(value)
    return ConfigError(f"setting {key!r}: expected {allowed}, got {shown}")


def _int(key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, "an integer", value)
    if value < low or (high is not None and value > high):
        raise _fail(key, f"an integer from {low}" + (f" to {high}" if high else " up"), value)
    return value


def _number(key: str, value: Any, low: float) -> float:
    bad_type = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad_type or not math.isfinite(value) or value < low:
        raise _fail(key, f"a number >= {low}", value)
    return float(value)


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(key, "a non-empty string", value)
    return value


def _optional_limit(key: str, value: Any) -> int | None:
    return None if value is None else _int(key, value, 0)


def _names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise _fail(key, "a non-empty list of names", value)
    for name in value:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == "sess":
            raise _fail(key, "lowercase alphanumeric names (1-16 chars, not 'sess')", name)
    if len(set(value)) != len(value):
        raise _fail(key, "distinct names", value)
    return tuple(value)


def _paths(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(key, "a list of paths", value)
    for path in value:
        if not isinstance(path, str) or not path.startswith("/") or "*" in path[:-1]:
            raise _fail(key, "paths starting with '/', '*' allowed only at the end", path)
    return tuple(value)


def _argon2(key: str, value: Any) -> Argon2Params:
    if not isinstance(value, Mapping):
        raise _fail(key, "a dict with time_cost, memory_cost (KiB), parallelism", value)
    unknown = set(value) - {"time_cost", "memory_cost", "parallelism"}
    if unknown:
        raise ConfigError(f"setting 'argon2': unknown key(s) {sorted(map(repr, unknown))}")
    params = Argon2Params(**value)
    _int("argon2.time_cost", params.time_cost, 1, 100)
    _int("argon2.parallelism", params.parallelism, 1, 64)
    _int("argon2.memory_cost", params.memory_cost, 8 * params.parallelism, 4 * 1024 * 1024)
    return params


def _statuses(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, range, set)):
        raise _fail(key, "a collection of HTTP status codes", value)
    return tuple(sorted(_int(key, status, 100, 599) for status in value))


def _thresholds(key: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(key, "a list of fractions in (0, 1]", value)
    out = []
    for item in value:
        number = _number(key, item, 0.0)
        if not 0 < number <= 1:
            raise _fail(key, "fractions in (0, 1]", item)
        out.append(number)
    return tuple(sorted(set(out)))


def _plans(key: str, value: Any) -> Mapping[str, int | None]:
    if not isinstance(value, Mapping):
        raise _fail(key, "a dict of plan name -> monthly pages (or None)", value)
    return {
        _str(key, name): _optional_limit(f"{key}.{name}", pages) for name, pages in value.items()
    }


def _callable_or_none(key: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise _fail(key, "a callable or None", value)
    return value


def _page_cost(key: str, value: Any) -> Any:
    return value if callable(value) else _int(key, value, 0)


def _store(key: str, value: Any) -> str:
    url = _str(key, value)
    if not url.startswith(("sqlite://", "memory://", "postgresql://", "postgres://", "django://")):
        raise _fail(key, "'sqlite:///path.db', 'memory://', 'postgresql://...' or 'django://'", url)
    return url


def _redis_url(key: str, value: Any) -> str | None:
    if value is None:
        return None
    url = _str(key, value)
    try:
        parse_redis_url(url)
    except RedisUrlError as exc:
        raise ConfigError(f"{key}: {exc} (got {redact_url(url)!r})") from None
    return url


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise _fail(key, " or ".join(repr(o) for o in options), value)
        return str(value)

    return check


def _token_prefix(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z][a-z0-9]{0,11}", value):
        raise _fail(key, "1-12 lowercase letters or digits, starting with a letter", value)
    return value


def _cidrs(key: str, value: Any) -> tuple[str, ...]:
    try:
        return check_networks(key, value)
    except InvalidInput as exc:
        raise ConfigError(f"setting {key!r}: {str(exc).split(': ', 1)[-1]}") from None


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "store": _store,
    "redis_url": _redis_url,
    "secret": lambda k, v: None if v is None else _str(k, v),
    "redis_prefix": _str,
    "token_prefix": _token_prefix,
    "environments": _names,
    "exempt_paths": _paths,
    "argon2": _argon2,
    "argon2_max_concurrency": lambda k, v: _int(k, v, 1, 256),
    "argon2_queue_timeout": lambda k, v: _number(k, v, 0.0),
    "local_cache_ttl": lambda k, v: _number(k, v, 0.0),
    "local_cache_size": lambda k, v: _int(k, v, 0),
    "cache_ttl": lambda k, v: _int(k, v, 1),
    "negative_cache_ttl": lambda k, v: _int(k, v, 1),
    "redis_timeout": lambda k, v: _number(k, v, 0.001),
    "on_backend_error": _choice(POLICIES),
    "consistency": _choice(CONSISTENCIES),
    "last_used_interval": lambda k, v: _number(k, v, 0.0),
    "monthly_page_limit": _optional_limit,
    "test_page_limit": _optional_limit,
    "plans": _plans,
    "billing_anchor_day": lambda k, v: _int(k, v, 1, 31),
    "billing_timezone": _str,
    "page_cost": _page_cost,
    "counted_statuses": _statuses,
    "quota_thresholds": _thresholds,
    "on_quota_threshold": _callable_or_none,
    "usage_flush_interval": lambda k, v: _number(k, v, 0.0),
    "idempotency_ttl": lambda k, v: _int(k, v, 1),
    "session_ttl": lambda k, v: _int(k, v, 60),
    "session_idle_ttl": lambda k, v: _int(k, v, 60),
    "login_max_failures": lambda k, v: _int(k, v, 1),
    "login_max_failures_per_key": lambda k, v: _int(k, v, 1),
    "login_failure_window": lambda k, v: _int(k, v, 1),
    "trusted_proxies": _cidrs,
}
assert set(_VALIDATORS) == {f.name for f in fields(Settings)}


def load_settings(raw: Mapping[str, Any] | Settings | None) -> Settings:
    if isinstance(raw, Settings):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"settings must be a dict, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _VALIDATORS)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {unknown}; allowed: {', '.join(sorted(_VALIDATORS))}"
        )
    values = {key: _VALIDATORS[key](key, value) for key, value in raw.items()}
    settings = Settings(**values)
    if settings.consistency == "fast" and not settings.redis_url:
        raise ConfigError(
            "setting 'consistency': 'fast' shares changes and quotas through Redis; "
            "set 'redis_url' (without Redis every check is already local)"
        )
    if settings.redis_url and not settings.secret:
        raise ConfigError("setting 'secret' is required when 'redis_url' is set")
    if settings.secret is not None and len(settings.secret) < 16:
        raise ConfigError("setting 'secret': expected at least 16 characters")
    from keystile._core.periods import PeriodPolicy

    try:
        PeriodPolicy(settings.billing_anchor_day, settings.billing_timezone)
    except ValueError as exc:
        raise ConfigError(f"setting 'billing_timezone': {exc}") from None
    return settings
