"""Store and settings failures end as one clear line (CLI) or a 503 (management API), never a
traceback or a 500; nothing is half-written. Real SQLite files, the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from keystile import BackendError, ConfigError, Keystile
from keystile._cli import config
from keystile.stores import open_store
from keystile.stores.sqlite import SQLiteStore

from .conftest import FAST_ARGON2, subprocess_environ

UNREACHABLE_PG = "postgresql://keystile:hunter2-not-shown@127.0.0.1:1/test"
ADMIN = ["writeApiKeys", "readApiKeys", "readUsage", "readAudit"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = subprocess_environ()
    return {
        **clean,
        "KEYSTILE_STORE": f"sqlite:///{tmp_path / 'keys.db'}",
        "KEYSTILE_ARGON2": json.dumps(FAST_ARGON2),
        "NO_COLOR": "1",
    }


def run(env: dict[str, str], *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keystile", *args],
        env={**env, **overrides},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The run failed with ``code`` and exactly one stderr line holding every needle (besides
    the line naming the store, when the store opened)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    if lines and lines[0].startswith("keystile: store "):
        lines = lines[1:]
    assert len(lines) == 1, done.stderr
    assert done.returncode == code, done.stderr
    assert lines[0].startswith("keystile: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def not_a_database(tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_text("this is a text file, not an SQLite database\n" * 20)
    return path


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Another connection holds ``BEGIN EXCLUSIVE`` (with a write) on the database."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        other.execute("CREATE TABLE IF NOT EXISTS lock_holder (x)")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


# -- SQLite: a store that cannot be opened ----------------------------------------------------


def test_open_store_in_a_missing_directory_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="store") as error:
        open_store("sqlite:////nonexistent/dir/x.db")
    assert "/nonexistent/dir" in str(error.value)


def test_open_store_on_a_file_that_is_not_a_database_is_a_backend_error(tmp_path: Path) -> None:
    path = not_a_database(tmp_path)
    with pytest.raises(BackendError, match="not a database") as error:
        open_store(f"sqlite:///{path}")
    assert isinstance(error.value.__cause__, sqlite3.DatabaseError)
    assert path.read_text().startswith("this is a text file")  # left as it was


@pytest.mark.parametrize("command", [["keys", "list", "--account", "a1"], ["check-config"]])
def test_cli_store_in_a_missing_directory(env: dict[str, str], command: list[str]) -> None:
    done = run(env, *command, KEYSTILE_STORE="sqlite:////nonexistent/dir/x.db")
    one_line_error(done, 2, "store", "/nonexistent/dir")


@pytest.mark.parametrize("command", [["keys", "list", "--account", "a1"], ["check-config"]])
def test_cli_store_file_that_is_not_a_database(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    path = not_a_database(tmp_path)
    done = run(env, *command, KEYSTILE_STORE=f"sqlite:///{path}")
    one_line_error(done, 1, "not a database")
    assert done.stdout == ""


def test_demo_with_a_store_that_cannot_be_opened(env: dict[str, str], tmp_path: Path) -> None:
    done = run(env, "demo", "--port", "0", "--store", "sqlite:////nonexistent/x.db")
    one_line_error(done, 2, "store", "/nonexistent")
    assert "token" not in done.stdout.lower()
    done = run(env, "demo", "--port", "0", "--store", f"sqlite:///{not_a_database(tmp_path)}")
    one_line_error(done, 1, "not a database")
    assert "token" not in done.stdout.lower()


# -- SQLite: a locked database ----------------------------------------------------------------


def test_store_calls_on_a_locked_database_raise_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    engine = Keystile(
        {"store": "memory://", "argon2": FAST_ARGON2}, store=SQLiteStore(str(path), timeout=0.05)
    )
    try:
        engine.keys.create("acct_1", "first")
        with exclusive_lock(path):
            with pytest.raises(BackendError, match="database is locked") as error:
                engine.keys.create("acct_1", "second")
            assert isinstance(error.value.__cause__, sqlite3.OperationalError)
        # The store is usable again and holds exactly what was committed.
        assert [k.name for k in engine.keys.list("acct_1").items] == ["first"]
        engine.keys.create("acct_1", "third")
        assert engine.keys.list("acct_1").total == 2
    finally:
        engine.close()


def test_sqlite_busy_timeout_is_the_store_timeout(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "keys.db"), timeout=0.05)
    try:
        locked = pytest.raises(BackendError, match="database is locked")
        with exclusive_lock(tmp_path / "keys.db"), locked:
            store.set_limit("acct_1", None)  # after 0.05 s, not SQLite's default 5
    finally:
        store.close()


def test_management_api_answers_503_when_the_database_is_locked(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from keystile.starlette import KeystileMiddleware, management_mount

    path = tmp_path / "keys.db"
    engine = Keystile(
        {"store": "memory://", "argon2": FAST_ARGON2}, store=SQLiteStore(str(path), timeout=0.05)
    )
    app = Starlette(routes=[management_mount("/v1", engine)])
    app.add_middleware(KeystileMiddleware, keystile=engine)
    admin = engine.keys.create("acct_1", "admin", permissions=ADMIN)
    headers = {"x-api-key": admin.token}
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.get("/v1/apikeys", headers=headers).status_code == 200
            with exclusive_lock(path):
                response = client.post("/v1/apikeys", headers=headers, json={"name": "new"})
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "SVC_001"
            listing = client.get("/v1/apikeys", headers=headers).json()
            assert [k["name"] for k in listing["items"]] == ["admin"]
    finally:
        engine.close()


def test_cli_on_a_locked_database_is_one_line_and_writes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert run(env, "keys", "create", "--account", "a1", "--name", "first").returncode == 0
    with exclusive_lock(tmp_path / "keys.db"):  # takes the store's busy timeout (5 s)
        done = run(env, "keys", "create", "--account", "a1", "--name", "second")
    one_line_error(done, 1, "database is locked")
    assert "token" not in done.stdout
    listing = run(env, "--json", "keys", "list", "--account", "a1")
    assert [k["name"] for k in json.loads(listing.stdout)["items"]] == ["first"]


# -- Django and PostgreSQL stores -------------------------------------------------------------


def test_cli_django_store_outside_a_django_project(env: dict[str, str]) -> None:
    pytest.importorskip("django")
    for command in (["keys", "list", "--account", "a1"], ["check-config"]):
        done = run(env, *command, KEYSTILE_STORE="django://")
        one_line_error(done, 2, "store", "DJANGO_SETTINGS_MODULE")
    done = run(
        env,
        "check-config",
        KEYSTILE_STORE="django://",
        DJANGO_SETTINGS_MODULE="no_such_project.settings",
    )
    one_line_error(done, 2, "store", "no_such_project.settings")


def django_project(tmp_path: Path, installed: list[str], engine: str) -> dict[str, str]:
    """A settings module ``cliproj.settings`` on the path, and the variables that select it."""
    package = tmp_path / "cliproj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    database = {"ENGINE": engine, "NAME": str(tmp_path / "django.db")}
    (package / "settings.py").write_text(
        f"SECRET_KEY = 'cli-tests'\nUSE_TZ = True\nINSTALLED_APPS = {installed!r}\n"
        f"DATABASES = {{'default': {database!r}}}\n"
    )
    return {
        "KEYSTILE_STORE": "django://",
        "DJANGO_SETTINGS_MODULE": "cliproj.settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }


def test_cli_django_project_without_keystile_installed(env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("django")
    project = django_project(tmp_path, [], "django.db.backends.sqlite3")
    done = run(env, "keys", "list", "--account", "a1", **project)
    one_line_error(done, 2, "store", "INSTALLED_APPS")


def test_cli_django_project_misconfigured(env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("django")
    project = django_project(tmp_path, ["keystile.django"], "django.db.backends.no_such_backend")
    done = run(env, "keys", "list", "--account", "a1", **project)
    one_line_error(done, 2, "store", "misconfigured", "no_such_backend")


def test_cli_django_project_before_and_after_migrate(env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("django")
    installed = ["django.contrib.contenttypes", "django.contrib.auth", "keystile.django"]
    project = django_project(tmp_path, installed, "django.db.backends.sqlite3")
    done = run(env, "keys", "list", "--account", "a1", **project)
    one_line_error(done, 1, "Django store", "migrate")
    migrate = [sys.executable, "-m", "django", "migrate", "--verbosity", "0"]
    migrated = subprocess.run(
        migrate, env={**env, **project}, capture_output=True, text=True, timeout=120
    )
    assert migrated.returncode == 0, migrated.stderr
    done = run(env, "--json", "keys", "create", "--account", "a1", "--name", "dj", **project)
    assert done.returncode == 0, done.stderr
    listing = run(env, "--json", "keys", "list", "--account", "a1", **project)
    assert [k["name"] for k in json.loads(listing.stdout)["items"]] == ["dj"]


def test_django_errors_become_keystile_errors() -> None:
    pytest.importorskip("django")
    from django.core.exceptions import ImproperlyConfigured
    from django.db import OperationalError

    from keystile.django.cli import keystile_error

    misconfigured = keystile_error(ImproperlyConfigured("no ENGINE\nmore detail"))
    assert isinstance(misconfigured, ConfigError)
    assert str(misconfigured) == "setting 'store': the Django project is misconfigured: no ENGINE"
    missing = keystile_error(OperationalError("no such table: keystile_key"))
    assert isinstance(missing, BackendError)
    assert str(missing) == (
        "Django store: OperationalError: no such table: keystile_key "
        "(run python manage.py migrate?)"
    )
    leaky = keystile_error(OperationalError("cannot reach postgresql://u:hunter2@db/x"))
    assert leaky is not None and "hunter2" not in str(leaky)
    assert keystile_error(RuntimeError("not Django's")) is None


def test_postgres_store_on_an_unreachable_server_raises_backend_error() -> None:
    psycopg = pytest.importorskip("psycopg")
    from keystile.stores.postgres import PostgresStore

    store = PostgresStore(UNREACHABLE_PG, timeout=1.0)
    try:
        with pytest.raises(BackendError) as error:
            store.get("A1b2C3d4E5f6G7h8")
        assert isinstance(error.value.__cause__, psycopg.OperationalError)
        assert "hunter2" not in str(error.value)
    finally:
        store.close()
    with pytest.raises(BackendError):  # closed is closed
        store.get("A1b2C3d4E5f6G7h8")


def test_postgres_pool_timeout_is_a_backend_error(postgres_url: str, postgres_schema: str) -> None:
    from psycopg_pool import PoolTimeout

    from keystile.stores.postgres import PostgresStore

    store = PostgresStore(postgres_url, schema=postgres_schema, max_size=1, timeout=0.2)
    try:
        assert store.get("A1b2C3d4E5f6G7h8") is None
        # The only connection is busy.
        with store._pool.connection(), pytest.raises(BackendError, match="PostgreSQL") as error:
            store.get("A1b2C3d4E5f6G7h8")
        assert isinstance(error.value.__cause__, PoolTimeout)
        assert store.get("A1b2C3d4E5f6G7h8") is None
    finally:
        store.close()


def test_postgres_invalid_url_is_a_config_error() -> None:
    pytest.importorskip("psycopg")
    from keystile.stores.postgres import PostgresStore

    with pytest.raises(ConfigError, match="store") as error:
        PostgresStore("postgresql://u:s3cr%zzet@127.0.0.1:notaport/test")
    assert "s3cr" not in str(error.value)


@pytest.mark.parametrize("command", [["keys", "list", "--account", "a1"], ["check-config"]])
def test_cli_postgres_unreachable(env: dict[str, str], command: list[str]) -> None:
    pytest.importorskip("psycopg")
    done = run(env, *command, KEYSTILE_STORE=UNREACHABLE_PG)
    line = one_line_error(done, 1, "PostgreSQL", "127.0.0.1")
    assert "hunter2" not in done.stderr + done.stdout
    assert "Settings are valid" not in done.stdout
    assert "refused" in line.lower() or "timeout" in line.lower()


def test_check_config_reports_unreachable_redis(env: dict[str, str]) -> None:
    done = run(
        env,
        "check-config",
        KEYSTILE_REDIS_URL="redis://127.0.0.1:1/0",
        KEYSTILE_SECRET="a-server-secret-of-some-length",
        KEYSTILE_REDIS_TIMEOUT="0.2",
    )
    one_line_error(done, 1, "redis_url")


def test_check_config_reads_the_store(env: dict[str, str], tmp_path: Path) -> None:
    done = run(env, "--json", "check-config")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    # A database that opens, but whose keys table is not keystile's: reading it fails.
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE keystile_keys (kid, account_id, created_at)")
    done = run(env, "check-config", KEYSTILE_STORE=f"sqlite:///{path}")
    one_line_error(done, 1, "store", "token_prefix")
    assert "Settings are valid" not in done.stdout


# -- --expires-in-days ------------------------------------------------------------------------


@pytest.mark.parametrize("days", ["nan", "inf", "-inf", "1e10", "36501", "0", "-1"])
def test_create_refuses_unusable_expires_in_days(env: dict[str, str], days: str) -> None:
    done = run(env, "keys", "create", "--account", "a1", "--name", "x", f"--expires-in-days={days}")
    one_line_error(done, 2, "--expires-in-days")
    listing = run(env, "--json", "keys", "list", "--account", "a1")
    assert json.loads(listing.stdout)["total"] == 0


@pytest.mark.parametrize("days", ["nan", "inf", "-inf", "1e9", "36501"])
def test_update_refuses_unusable_expires_in_days(env: dict[str, str], days: str) -> None:
    created = run(env, "--json", "keys", "create", "--account", "a1", "--name", "x")
    key_id = json.loads(created.stdout)["key"]["id"]
    done = run(env, "keys", "update", key_id, f"--expires-in-days={days}")
    one_line_error(done, 2, "--expires-in-days")
    shown = json.loads(run(env, "--json", "keys", "show", key_id).stdout)
    assert shown["expires_at"] is None


def test_expires_in_days_up_to_a_century_works(env: dict[str, str]) -> None:
    for days in ("0.5", "36500"):
        done = run(
            env, "--json", "keys", "create", "--account", "a1", "--name", "x",
            "--expires-in-days", days,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["key"]["expires_at"] is not None


# -- KEYSTILE_* variables ---------------------------------------------------------------------


def test_string_settings_from_the_environment_are_taken_verbatim() -> None:
    environ = {
        "KEYSTILE_REDIS_PREFIX": "2024",
        "KEYSTILE_SECRET": "12345678901234567890",
        "KEYSTILE_BILLING_TIMEZONE": "UTC",
        "KEYSTILE_ON_BACKEND_ERROR": "degrade",
        "KEYSTILE_TOKEN_PREFIX": "true",
        "KEYSTILE_STORE": "sqlite:///x.db",
        # Not strings: decoded as JSON, as before.
        "KEYSTILE_ENVIRONMENTS": '["live", "dev"]',
        "KEYSTILE_LOCAL_CACHE_SIZE": "5",
        "KEYSTILE_REDIS_TIMEOUT": "0.5",
        "KEYSTILE_MONTHLY_PAGE_LIMIT": "null",
        "KEYSTILE_ARGON2": '{"time_cost": 1}',
        "KEYSTILE_PLANS": '{"pro": 100}',
        "OTHER": "1",
    }
    expected = {"store", "redis_url", "secret", "redis_prefix", "token_prefix"}
    assert expected | {"on_backend_error", "billing_timezone"} == config.STRING_SETTINGS
    settings: dict[str, Any] = config.load_config(None, environ)
    assert settings == {
        "redis_prefix": "2024",
        "secret": "12345678901234567890",
        "billing_timezone": "UTC",
        "on_backend_error": "degrade",
        "token_prefix": "true",
        "store": "sqlite:///x.db",
        "environments": ["live", "dev"],
        "local_cache_size": 5,
        "redis_timeout": 0.5,
        "monthly_page_limit": None,
        "argon2": {"time_cost": 1},
        "plans": {"pro": 100},
    }


def test_numeric_redis_prefix_from_the_environment(env: dict[str, str]) -> None:
    done = run(env, "--json", "check-config", KEYSTILE_REDIS_PREFIX="2024")
    assert done.returncode == 0, done.stderr
    done = run(env, "check-config", KEYSTILE_LOCAL_CACHE_SIZE="many")
    one_line_error(done, 2, "local_cache_size")


def test_a_reader_that_stops_early_gets_no_traceback(env: dict[str, str]) -> None:
    for n in range(3):
        assert run(env, "keys", "create", "--account", "a1", "--name", f"k{n}").returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "keystile", "keys", "list", "--account", "a1", "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like `| head -0`: gone before the first line is written
    error = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert "Traceback" not in error and error == ""
