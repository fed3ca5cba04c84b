"""Settings from the environment (``KEYSTILE_*`` over the ``KEYSTILE_CONFIG`` file) for an app
that passes none, on the engine and on every middleware; explicit settings used alone; and
the engine as a ``with`` / ``async with`` block that flushes and closes on the way out."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from keystile import ConfigError, Keystile, Settings
from keystile._cli.config import load_config
from keystile._runtime.environment import environment_settings

from .behaviour.harness_sync import call_wsgi, server_environ
from .conftest import FAST_ARGON2, SECRET

ACCOUNT = "acct_1"
#: The flusher thread must not write first: only the end of the block can have done it.
NEVER = {"usage_flush_interval": 3600, "last_used_interval": 3600}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: none of the developer's own KEYSTILE_* variables."""
    for name in list(os.environ):
        if name.startswith("KEYSTILE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SQLite store named by KEYSTILE_STORE, with cheap hashing from KEYSTILE_ARGON2."""
    path = tmp_path / "keys.db"
    monkeypatch.setenv("KEYSTILE_STORE", f"sqlite:///{path}")
    monkeypatch.setenv("KEYSTILE_ARGON2", json.dumps(FAST_ARGON2))
    return path


def explicit(db: Path, **extra: Any) -> dict[str, Any]:
    return {"store": f"sqlite:///{db}", "argon2": FAST_ARGON2, **NEVER, **extra}


def new_token(db: Path) -> str:
    with Keystile(explicit(db)) as setup:
        return setup.keys.create(ACCOUNT, "k").token


def stored(db: Path) -> tuple[int, bool]:
    """The account's pages in the store, and whether its key's last use was written."""
    with Keystile(explicit(db)) as reader:
        (key,) = reader.keys.list(ACCOUNT).items
        return reader.usage(ACCOUNT).pages, key.last_used_at is not None


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- the engine with no settings --------------------------------------------------------------


def test_keystile_with_no_settings_reads_the_variables(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSTILE_SECRET", SECRET)
    monkeypatch.setenv("KEYSTILE_ENVIRONMENTS", '["live", "dev"]')
    monkeypatch.setenv("KEYSTILE_MONTHLY_PAGE_LIMIT", "5")
    monkeypatch.setenv("KEYSTILE_REDIS_TIMEOUT", "0.5")
    monkeypatch.setenv("KEYSTILE_REDIS_PREFIX", "2024")  # a string setting: never a number
    monkeypatch.setenv("KEYSTILE_MANAGEMENT_PREFIX", "/v1")  # Django's, not a setting
    with Keystile() as ks:
        settings = ks.settings
        created = ks.keys.create(ACCOUNT, "k", environment="dev")
    assert settings.secret == SECRET
    assert settings.environments == ("live", "dev")
    assert settings.monthly_page_limit == 5
    assert settings.redis_timeout == 0.5
    assert settings.redis_prefix == "2024"
    assert settings.argon2.memory_cost == FAST_ARGON2["memory_cost"]
    assert created.token.startswith("sk_dev_")
    with Keystile(explicit(db, secret=SECRET, environments=["live", "dev"])) as reader:
        assert [k.id for k in reader.keys.list(ACCOUNT).items] == [created.key_id]


def test_the_config_file_and_the_variables_over_it(
    tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "keystile.toml",
        '[keystile]\nstore = "memory://"\nmonthly_page_limit = 7\nexempt_paths = ["/health"]\n',
    )
    monkeypatch.setenv("KEYSTILE_CONFIG", path)
    monkeypatch.setenv("KEYSTILE_MONTHLY_PAGE_LIMIT", "9")
    with Keystile() as ks:
        assert ks.settings.exempt_paths == ("/health",)  # the file's
        assert ks.settings.monthly_page_limit == 9  # the variable's, over the file's
        assert ks.settings.store == f"sqlite:///{db}"  # KEYSTILE_STORE, over the file's
    # The same rules as the command line's.
    assert load_config(None) == {
        "store": f"sqlite:///{db}",
        "argon2": FAST_ARGON2,
        "monthly_page_limit": 9,
        "exempt_paths": ["/health"],
    }


def test_a_config_file_without_a_keystile_table_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSTILE_CONFIG", write(tmp_path / "k.toml", 'store = "memory://"\n'))
    assert environment_settings().store == "memory://"


def test_explicit_settings_are_used_alone(
    tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSTILE_MONTHLY_PAGE_LIMIT", "5")
    monkeypatch.setenv("KEYSTILE_LOCAL_CACHE_SIZE", "not a number")  # never even read
    monkeypatch.setenv("KEYSTILE_CONFIG", str(tmp_path / "missing.toml"))
    monkeypatch.chdir(tmp_path)
    for given in ({"store": "memory://"}, Settings(store="memory://")):
        with Keystile(given) as ks:
            assert ks.settings.monthly_page_limit is None
            assert ks.settings.local_cache_size == Settings().local_cache_size
            assert ks.settings.argon2 == Settings().argon2
    with Keystile({"argon2": FAST_ARGON2}) as ks:  # a dict of one key: the defaults for the rest
        assert ks.settings.store == Settings().store
    assert (tmp_path / "keystile.db").exists() and not db.exists()


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("KEYSTILE_LOCAL_CACHE_SIZE", "many", "an integer"),
        ("KEYSTILE_ENVIRONMENTS", "live", "list of names"),
        ("KEYSTILE_EXEMPT_PATHS", '["health"]', "starting with '/'"),
        ("KEYSTILE_ARGON2", '{"time_cost": 0}', "argon2.time_cost"),
        ("KEYSTILE_PLANS", '{"pro": -1}', "plans.pro"),
        ("KEYSTILE_STORE", "mysql://db", "'memory://'"),
        ("KEYSTILE_REDIS_URL", "http://cache:6379", "redis"),
        ("KEYSTILE_CONSISTENCY", "fast", "redis_url"),
        ("KEYSTILE_SECRET", "too-short", "at least 16"),
        ("KEYSTILE_BILLING_TIMEZONE", "Mars/Olympus", "billing_timezone"),
    ],
)
def test_a_bad_value_names_its_variable(
    variable: str, value: str, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSTILE_STORE", "memory://")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        Keystile()
    message = str(info.value)
    assert message.startswith(f"{variable}: "), message
    assert words in message
    if variable == "KEYSTILE_SECRET":
        assert value not in message


def test_redis_url_without_a_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSTILE_REDIS_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match=r"^KEYSTILE_REDIS_URL: .*'secret' is required"):
        Keystile()


def test_a_bad_value_in_the_file_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "k.toml", '[keystile]\nstore = "memory://"\nlocal_cache_size = -1\n')
    monkeypatch.setenv("KEYSTILE_CONFIG", path)
    with pytest.raises(ConfigError) as info:
        Keystile()
    assert str(info.value).startswith(f"KEYSTILE_CONFIG {path!r}: setting 'local_cache_size'")
    # A variable that sets it right wins over the file, as everywhere.
    monkeypatch.setenv("KEYSTILE_LOCAL_CACHE_SIZE", "3")
    assert environment_settings().local_cache_size == 3
    write(tmp_path / "k.toml", '[keystile]\nstroe = "memory://"\n')
    with pytest.raises(ConfigError, match=r"^KEYSTILE_CONFIG .*unknown setting\(s\) \['stroe'\]"):
        Keystile()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "KEYSTILE_CONFIG: no such file"),
        ("store = [", "KEYSTILE_CONFIG: cannot read"),
        ("keystile = 3", "KEYSTILE_CONFIG: [keystile] in"),
        (b"\xff\xfe", "KEYSTILE_CONFIG: cannot read"),
    ],
)
def test_a_config_file_that_cannot_be_read_is_a_config_error(
    content: str | bytes | None, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "k.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    monkeypatch.setenv("KEYSTILE_CONFIG", str(path))
    with pytest.raises(ConfigError) as info:
        Keystile()
    assert str(info.value).startswith(words), str(info.value)
    assert repr(str(path)) in str(info.value)


def test_an_empty_keystile_config_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSTILE_CONFIG", "")
    with pytest.raises(ConfigError, match=r"^KEYSTILE_CONFIG is empty"):
        Keystile()


# -- the command line -------------------------------------------------------------------------


def test_the_cli_reads_keystile_config_and_its_config_flag_wins(tmp_path: Path) -> None:
    named = write(tmp_path / "named.toml", '[keystile]\nstore = "memory://"\ncache_ttl = 9\n')
    flag = write(tmp_path / "flag.toml", "[keystile]\ncache_ttl = 8\n")
    environ = {"KEYSTILE_CONFIG": named, "KEYSTILE_CACHE_TTL": "7"}
    assert load_config(None, environ) == {"store": "memory://", "cache_ttl": 7}
    assert load_config(None, {"KEYSTILE_CONFIG": named}) == {"store": "memory://", "cache_ttl": 9}
    assert load_config(flag, {"KEYSTILE_CONFIG": named}) == {"cache_ttl": 8}
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"^--config: no such file"):
        load_config(missing, {"KEYSTILE_CONFIG": named})
    with pytest.raises(ConfigError, match=r"^KEYSTILE_CONFIG: no such file"):
        load_config(None, {"KEYSTILE_CONFIG": missing})


def test_the_cli_command_honours_keystile_config(tmp_path: Path) -> None:
    db = tmp_path / "from-config.db"
    config = write(
        tmp_path / "keystile.toml",
        f'[keystile]\nstore = "sqlite:///{db}"\nargon2 = {{ time_cost = 1, memory_cost = 8 }}\n',
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTILE_")}
    done = subprocess.run(
        [sys.executable, "-m", "keystile", "--json", "check-config"],
        env={**env, "KEYSTILE_CONFIG": config},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert db.exists()


def test_the_cli_names_the_variable_a_bad_value_came_from(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTILE_")}
    done = subprocess.run(
        [sys.executable, "-m", "keystile", "keys", "list", "--account", "a"],
        env={**env, "KEYSTILE_STORE": "memory://", "KEYSTILE_MONTHLY_PAGE_LIMIT": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("keystile: error: KEYSTILE_MONTHLY_PAGE_LIMIT: ")
    assert "Traceback" not in done.stderr


# -- every middleware with no settings --------------------------------------------------------


def test_starlette_middleware_with_no_settings(db: Path) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from keystile.starlette import KeystileMiddleware

    token = new_token(db)

    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"account": request.state.principal.account_id})

    app = Starlette(routes=[Route("/me", me)])
    app.add_middleware(KeystileMiddleware)
    with TestClient(app) as client:
        response = client.get("/me", headers=dict(bearer(token)))
        assert response.status_code == 200, response.text
        assert response.json() == {"account": ACCOUNT}
        assert client.get("/me").status_code == 401


def test_wsgi_middleware_with_no_settings(db: Path) -> None:
    from keystile.wsgi import KeystileMiddleware, principal_of

    token = new_token(db)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [principal_of(environ).account_id.encode()]

    middleware = KeystileMiddleware(app)
    try:
        done = call_wsgi(middleware, server_environ("GET", "/", dict(bearer(token))))
        assert (done.status, done.text) == (200, ACCOUNT)
        assert call_wsgi(middleware, server_environ("GET", "/")).status == 401
    finally:
        middleware.keystile.close()


def test_flask_extension_with_no_settings(db: Path) -> None:
    flask = pytest.importorskip("flask")
    from keystile.flask import Keystile as Extension
    from keystile.flask import current_principal

    token = new_token(db)
    app = flask.Flask("keystile_env_test")
    extension = Extension(app)  # no app.config["KEYSTILE"]: the environment

    @app.get("/me")
    def me() -> str:
        return current_principal().account_id

    try:
        client = app.test_client()
        response = client.get("/me", headers=dict(bearer(token)))
        assert (response.status_code, response.text) == (200, ACCOUNT)
        assert client.get("/me").status_code == 401
        assert extension.engine.settings.store == f"sqlite:///{db}"
    finally:
        extension.engine.close()


def test_django_without_a_keystile_setting(db: Path) -> None:
    pytest.importorskip("django")
    from .djangoproj import settings as project

    project.configure()
    from django.conf import settings
    from django.test import override_settings

    from keystile.django import get_engine, reset_engine

    token = new_token(db)
    with override_settings(KEYSTILE=None):
        del settings.KEYSTILE  # not set at all, within this block
        reset_engine()
        try:
            engine = get_engine()
            assert engine.settings.store == f"sqlite:///{db}"
            assert engine.authenticate(bearer(token)).account_id == ACCOUNT
        finally:
            reset_engine()


# -- the engine as a with block ---------------------------------------------------------------


def test_a_with_block_flushes_and_closes(db: Path) -> None:
    token = new_token(db)
    engine = Keystile(explicit(db))
    with engine as ks:
        assert ks is engine
        ks.settle(ks.authenticate(bearer(token)), 200)
        assert stored(db) == (0, False)  # batched, not yet written
    assert stored(db) == (1, True)


def test_a_with_block_left_by_an_exception_still_closes(db: Path) -> None:
    token = new_token(db)
    with pytest.raises(RuntimeError, match="in the block"), Keystile(explicit(db)) as ks:
        ks.settle(ks.authenticate(bearer(token)), 200)
        raise RuntimeError("in the block")
    assert stored(db) == (1, True)


def test_an_async_with_block_flushes_and_closes(db: Path) -> None:
    token = new_token(db)

    async def serve() -> Keystile:
        async with Keystile(explicit(db)) as ks:
            await ks.settle_async(await ks.authenticate_async(bearer(token)), 200)
            return ks

    asyncio.run(serve())
    assert stored(db) == (1, True)

    async def fail() -> None:
        async with Keystile(explicit(db)) as ks:
            await ks.settle_async(await ks.authenticate_async(bearer(token)), 200)
            raise RuntimeError("in the block")

    with pytest.raises(RuntimeError, match="in the block"):
        asyncio.run(fail())
    assert stored(db) == (2, True)


def test_an_async_with_block_on_redis_from_the_environment(
    db: Path, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSTILE_REDIS_URL", redis_url)
    monkeypatch.setenv("KEYSTILE_SECRET", SECRET)
    monkeypatch.setenv("KEYSTILE_REDIS_PREFIX", redis_prefix)
    monkeypatch.setenv("KEYSTILE_USAGE_FLUSH_INTERVAL", "3600")
    monkeypatch.setenv("KEYSTILE_LAST_USED_INTERVAL", "3600")
    with Keystile() as setup:
        token = setup.keys.create(ACCOUNT, "k").token

    async def serve() -> None:
        async with Keystile() as ks:
            assert ks.redis is not None
            for _ in range(2):
                await ks.settle_async(await ks.authenticate_async(bearer(token)), 200)

    asyncio.run(serve())
    assert stored(db) == (2, True)


def counting(calls: list[str], name: str, method: Callable[[], Any]) -> Callable[[], Any]:
    def counted() -> Any:
        calls.append(name)
        return method()

    return counted


def test_closing_twice_does_nothing_the_second_time(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = new_token(db)
    calls: list[str] = []
    ks = Keystile(explicit(db))
    monkeypatch.setattr(ks.store, "close", counting(calls, "store.close", ks.store.close))
    monkeypatch.setattr(ks, "flush", counting(calls, "flush", ks.flush))
    with ks:
        ks.settle(ks.authenticate(bearer(token)), 200)
        ks.close()  # closed inside the block: leaving it closes nothing more
    ks.close()
    asyncio.run(ks.aclose())
    assert calls == ["flush", "store.close"]

    calls.clear()
    engine = Keystile(explicit(db))
    monkeypatch.setattr(engine.store, "close", counting(calls, "store.close", engine.store.close))

    async def twice() -> None:
        async with engine:
            pass
        await engine.aclose()

    asyncio.run(twice())
    engine.close()
    assert calls == ["store.close"]
    assert stored(db) == (1, True)
