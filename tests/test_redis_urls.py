"""``redis_url`` for one server, a Redis Cluster or Sentinel: parsed at settings time, every
mistake named, no password in any message or repr; and the start-up eviction warning."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from keystile import ConfigError, Keystile
from keystile._core.redisurl import CLUSTER, SENTINEL, SINGLE, RedisUrlError, parse_redis_url
from keystile._core.settings import load_settings
from keystile._redis.eviction import check_eviction

from .services import Service

SECRET = "test-server-secret-0123456789"


@pytest.mark.parametrize(
    "url,kind,nodes,service,db",
    [
        ("redis://localhost:6379/0", SINGLE, (), None, 0),
        ("unix:///run/redis.sock", SINGLE, (), None, 0),
        ("redis+cluster://10.0.0.1:7000", CLUSTER, (("10.0.0.1", 7000),), None, 0),
        (
            "rediss+cluster://a:7000,b:7001,c",
            CLUSTER,
            (("a", 7000), ("b", 7001), ("c", 6379)),
            None,
            0,
        ),
        (
            "redis+sentinel://s1:26379,s2/mymaster",
            SENTINEL,
            (("s1", 26379), ("s2", 26379)),
            "mymaster",
            0,
        ),
        ("redis+sentinel://[::1]:5000/main/3", SENTINEL, (("::1", 5000),), "main", 3),
    ],
)
def test_the_forms_parse(
    url: str, kind: str, nodes: tuple[Any, ...], service: str | None, db: int
) -> None:
    target = parse_redis_url(url)
    assert (target.kind, target.nodes, target.service, target.db) == (kind, nodes, service, db)
    assert load_settings({"redis_url": url, "secret": SECRET}).redis_url == url


def test_tls_and_credentials_are_read_and_the_password_kept_out_of_the_repr() -> None:
    target = parse_redis_url("rediss+cluster://app:s3cr%40t@a:7000,b:7001")
    assert target.tls and target.username == "app" and target.password == "s3cr@t"
    assert "s3cr" not in repr(target)


@pytest.mark.parametrize(
    "url,part",
    [
        ("http://localhost:6379", "scheme"),
        ("redis+clusters://a:1", "scheme"),
        ("redis+cluster://a:1/3", "database"),
        ("redis+cluster://a:notaport", "node 'a:notaport'"),
        ("redis+cluster://a:1,,b:2", "node ''"),
        ("redis+cluster://a:99999", "port"),
        ("redis+cluster://a:1?timeout=3", "query"),
        ("redis+sentinel://s1:26379", "service name"),
        ("redis+sentinel://s1:26379/", "service name"),
        ("redis+sentinel://s1:26379/main/x", "path"),
        ("redis+sentinel://s1:26379/main/1/2", "path"),
    ],
)
def test_a_bad_url_names_the_wrong_part(url: str, part: str) -> None:
    with pytest.raises(RedisUrlError) as parsed:
        parse_redis_url(url)
    assert part in str(parsed.value)
    with pytest.raises(ConfigError) as configured:
        load_settings({"redis_url": url, "secret": SECRET})
    assert "redis_url" in str(configured.value) and part in str(configured.value)


def test_a_bad_url_error_never_holds_the_password() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"redis_url": "redis+cluster://u:hunter22@a:1/3", "secret": SECRET})
    assert "hunter22" not in str(raised.value) and "***" in str(raised.value)


# -- maxmemory-policy --------------------------------------------------------------------------


@pytest.fixture
def eviction_policy(redis_server: Service) -> Iterator[Any]:
    """Sets the test server's maxmemory-policy for one test (only a server the tests started:
    never reconfigure someone else's), and puts it back."""
    if not redis_server.private:
        pytest.skip("only on a Redis the tests started")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    before = client.config_get("maxmemory-policy")["maxmemory-policy"]
    yield lambda policy: client.config_set("maxmemory-policy", policy)
    client.config_set("maxmemory-policy", before)
    client.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_policy_is_warned_about_at_start(
    eviction_policy: Any, redis_url: str, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    eviction_policy(policy)
    settings = {"redis_url": redis_url, "secret": SECRET, "store": "memory://"}
    with caplog.at_level(logging.WARNING, logger="keystile"):
        engine = Keystile(settings)
        engine.eviction_check.join(10)
        engine.close()
    warned = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warned) == 1 and policy in warned[0] and "noeviction" in warned[0]


def test_noeviction_is_quiet(eviction_policy: Any, redis_url: str) -> None:
    eviction_policy("noeviction")
    assert check_eviction(load_settings({"redis_url": redis_url, "secret": SECRET})) == []


def test_no_warning_when_redis_does_not_answer(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(
        {"redis_url": "redis://127.0.0.1:1/0", "secret": SECRET, "redis_timeout": 0.2}
    )
    with caplog.at_level(logging.WARNING, logger="keystile"):
        assert check_eviction(settings) == []
    assert not caplog.records
