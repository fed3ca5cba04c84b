"""Tests of the test-service fixtures themselves (tests/services.py)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from pathlib import Path

import pytest
import redis

from tests.services import (
    REDIS_MISSING,
    REDIS_URL_ENV,
    Service,
    delete_prefixed,
    external_redis,
    find_postgres_bindir,
    free_port,
    import_psycopg,
    new_redis_prefix,
    postgres_error,
    postgres_schema_scope,
    private_postgres,
    private_redis,
    redis_error,
    redis_key_prefix,
    service_missing,
)

needs_psycopg = pytest.mark.skipif(
    import_psycopg() is None, reason="psycopg is not installed (PostgreSQL fixtures unused)"
)


def _config(client: redis.Redis, name: str) -> str:
    value = {
        k.decode() if isinstance(k, bytes) else k: v for k, v in client.config_get(name).items()
    }[name]
    return value.decode() if isinstance(value, bytes) else str(value)


def _redis_binary() -> str:
    return shutil.which("redis-server") or service_missing(REDIS_MISSING)


# ------------------------------------------------------------------- service_missing


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", " true "])
def test_service_missing_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no such service"):
        service_missing("no such service")


@pytest.mark.parametrize("value", [None, "", "false", "0", "no"])
def test_service_missing_skips_outside_ci(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no such service"):
        service_missing("no such service")


# ----------------------------------------------------------------------------- Redis


@pytest.mark.redis
def test_redis_answers_ping(redis_client: redis.Redis, redis_url: str, redis_prefix: str) -> None:
    assert redis_client.ping() is True
    assert redis_error(redis_url) is None
    redis_client.set(f"{redis_prefix}:k", b"\x00v")
    assert redis_client.get(f"{redis_prefix}:k") == b"\x00v"  # bytes, not decoded


@pytest.mark.redis
def test_redis_server_resolution(redis_server: Service, redis_client: redis.Redis) -> None:
    env_url = os.environ.get(REDIS_URL_ENV, "").strip()
    if env_url:
        assert redis_server == Service(env_url, private=False)
        return
    assert redis_server.private is True
    assert redis_server.url.startswith("redis://127.0.0.1:")
    assert _config(redis_client, "save") == ""
    assert _config(redis_client, "appendonly") == "no"
    assert _config(redis_client, "port") == redis_server.url.rsplit(":", 1)[1].split("/")[0]


@pytest.mark.redis
def test_redis_prefix_is_fresh(redis_prefix: str, redis_client: redis.Redis) -> None:
    assert re.fullmatch(r"kst-[0-9a-f]{12}", redis_prefix)
    assert new_redis_prefix() != redis_prefix
    assert list(redis_client.scan_iter(match=redis_prefix + "*")) == []


@pytest.mark.redis
def test_delete_prefixed_deletes_only_prefixed_keys(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    # Nested scenario: an inner prefix inside the test's prefix, with glob
    # metacharacters that must be matched literally.
    inner = f"{redis_prefix}:in[*]?\\:"
    inside = [f"{inner}{i}" for i in range(1200)]  # more than one SCAN batch
    inside.append(inner)  # the prefix itself is a key too
    foreign = [
        f"{redis_prefix}:inX*]?\\:0",  # would match if * ? [ ] \ were not escaped
        f"{redis_prefix}:in[*]?",  # a strict prefix of the inner prefix
        f"{redis_prefix}:other",
        f"x{inner}0",  # contains the prefix, does not start with it
    ]
    pipe = redis_client.pipeline(transaction=False)
    for key in inside + foreign:
        pipe.set(key, b"1")
    pipe.hset(f"{inner}hash", "f", "v")  # other types go too
    pipe.rpush(f"{inner}list", "a")
    pipe.execute()
    try:
        assert delete_prefixed(redis_client, inner) == len(inside) + 2
        assert redis_client.exists(*inside, f"{inner}hash", f"{inner}list") == 0
        assert redis_client.exists(*foreign) == len(foreign)
        assert delete_prefixed(redis_client, inner) == 0
    finally:
        redis_client.delete(*foreign)


def test_delete_prefixed_refuses_empty_prefix() -> None:
    with pytest.raises(ValueError):
        delete_prefixed(redis.Redis(), "")  # never connects


@pytest.mark.redis
def test_redis_key_prefix_cleans_up_on_exit(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    survivor = f"{redis_prefix}:survivor"
    redis_client.set(survivor, b"1")
    with pytest.raises(RuntimeError), redis_key_prefix(redis_url) as inner:
        assert re.fullmatch(r"kst-[0-9a-f]{12}", inner)
        redis_client.set(f"{inner}:a", b"1")
        redis_client.set(inner, b"1")
        raise RuntimeError("the test failed")  # cleanup must still happen
    assert redis_client.exists(f"{inner}:a", inner) == 0
    assert redis_client.get(survivor) == b"1"


@pytest.mark.redis
def test_redis_flush(
    redis_server: Service,
    redis_client: redis.Redis,
    redis_prefix: str,
    redis_flush: object,
) -> None:
    assert callable(redis_flush)
    foreign = f"kst-foreign-{uuid.uuid4().hex}"
    redis_client.set(f"{redis_prefix}:a", b"1")
    redis_client.set(foreign, b"1")
    try:
        redis_flush()
        assert redis_client.exists(f"{redis_prefix}:a") == 0
        if redis_server.private:
            assert redis_client.dbsize() == 0
        else:  # a shared server: only this test's keys may go
            assert redis_client.get(foreign) == b"1"
    finally:
        redis_client.delete(foreign)


def test_private_redis_starts_and_stops(tmp_path: Path) -> None:
    with private_redis(_redis_binary(), tmp_path) as service:
        assert service.private
        with redis.Redis.from_url(service.url) as client:
            assert client.ping() is True
            assert _config(client, "dir") == str(tmp_path.resolve())
    assert redis_error(service.url, timeout=0.5) is not None  # stopped


def test_private_redis_failure_shows_its_log(tmp_path: Path) -> None:
    binary = _redis_binary()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(pytest.fail.Exception) as failure,
            private_redis(binary, tmp_path, port=port),
        ):
            pass
    message = str(failure.value)
    assert "redis-server.log" in message
    assert "Address already in use" in message


def test_external_redis_must_answer_ping() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(pytest.fail.Exception, match=re.escape(f"{REDIS_URL_ENV}={url}")):
        external_redis(url)


# ------------------------------------------------------------------------ PostgreSQL


@needs_psycopg
def test_postgres_answers(postgres_url: str) -> None:
    import psycopg

    assert postgres_error(postgres_url) is None
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@needs_psycopg
def test_postgres_schema_is_created(postgres_url: str, postgres_schema: str) -> None:
    import psycopg

    assert re.fullmatch(r"kst_[0-9a-f]{12}", postgres_schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{postgres_schema}".t (x int)')
        conn.execute(f'INSERT INTO "{postgres_schema}".t VALUES (1)')
        assert conn.execute(f'SELECT x FROM "{postgres_schema}".t').fetchall() == [(1,)]


def _schema_exists(url: str, name: str) -> bool:
    import psycopg

    with psycopg.connect(url) as conn:
        query = "SELECT count(*) FROM pg_namespace WHERE nspname = %s"
        row = conn.execute(query, (name,)).fetchone()
    return row is not None and row[0] == 1


@needs_psycopg
def test_postgres_schema_scope_drops_with_cascade(postgres_url: str, postgres_schema: str) -> None:
    import psycopg

    with pytest.raises(RuntimeError), postgres_schema_scope(postgres_url) as inner:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE TABLE "{inner}".t (x int)')
        assert _schema_exists(postgres_url, inner)
        raise RuntimeError("the test failed")
    assert not _schema_exists(postgres_url, inner)
    assert _schema_exists(postgres_url, postgres_schema)  # the outer one survives


@needs_psycopg
def test_private_postgres_starts_and_stops() -> None:
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.skip("initdb/postgres not found")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a 'postgres' user")
    with private_postgres(bindir) as service:
        assert service.private
        assert service.url.startswith("postgresql://postgres@127.0.0.1:")
        assert postgres_error(service.url) is None
        with postgres_schema_scope(service.url) as name:
            assert _schema_exists(service.url, name)
    assert postgres_error(service.url, timeout=1) is not None  # stopped
