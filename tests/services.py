"""Real Redis / PostgreSQL servers for the test suite (a pytest plugin module).

Load it from the root conftest with ``pytest_plugins = ["tests.services"]`` or with
``from tests.services import *``; the fixtures are plain module-level fixtures.

Redis
-----
``redis_server`` (session) is resolved in this order:

1. ``KEYSTILE_TEST_REDIS_URL`` if set: used as is (``private=False``); it must answer
   PING, otherwise every test that needs it fails with the reason.
2. A private ``redis-server`` found on PATH, started on a free 127.0.0.1 port in a
   temporary directory with persistence off (``private=True``), stopped at the end.
3. Nothing: the tests are skipped, or fail when ``CI`` is ``true``/``1``.

Per-test isolation never relies on FLUSHALL for a server the tests did not start:
every test gets its own key prefix (``redis_prefix``) whose keys are deleted at
teardown with SCAN + UNLINK.  Tests that simulate "Redis lost its data" call
``redis_flush()``: FLUSHALL on a private server, only the test's prefix otherwise.

PostgreSQL
----------
``postgres_server`` (session) is resolved the same way: ``KEYSTILE_TEST_POSTGRES_URL``,
else ``postgresql://127.0.0.1:5432/test`` if it answers, else a private cluster made
with ``initdb`` and run with ``postgres`` (from PATH or /usr/lib/postgresql/*/bin),
else skip (fail under CI).  psycopg (3) is needed for all of it.  Each test gets its
own schema from ``postgres_schema``, dropped with CASCADE at teardown.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis

__all__ = [
    "postgres_schema",
    "postgres_server",
    "postgres_url",
    "redis_client",
    "redis_flush",
    "redis_prefix",
    "redis_server",
    "redis_url",
]

REDIS_URL_ENV = "KEYSTILE_TEST_REDIS_URL"
POSTGRES_URL_ENV = "KEYSTILE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://127.0.0.1:5432/test"
REDIS_MISSING = f"redis-server not found; install it or set {REDIS_URL_ENV}"

REDIS_START_TIMEOUT = 10.0
POSTGRES_START_TIMEOUT = 30.0
_START_ATTEMPTS = 3  # a new free port per attempt (the chosen port can be taken meanwhile)


@dataclass(frozen=True)
class Service:
    url: str
    private: bool  # True: started by the tests, anything may be done to it


# --------------------------------------------------------------------------- helpers


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def service_missing(reason: str) -> NoReturn:
    """Skip the requesting test; under CI (CI=true/1) fail it instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing test service is an error)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return text[-limit:].strip() or "<empty>"


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn(
    cmd: list[str],
    log_path: Path,
    ready: Callable[[], bool],
    timeout: float,
    stop_signal: int,
    **popen: Any,
) -> subprocess.Popen[bytes] | str:
    """Start ``cmd`` (output appended to ``log_path``) and wait until ``ready()``.

    Returns the process, or the reason it failed (with the log's tail)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **popen
        )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            why = f"exited with status {proc.returncode}"
            break
        if ready():
            return proc
        if time.monotonic() > deadline:
            why = f"did not answer within {timeout:.0f} s"
            _stop(proc, stop_signal)
            break
        time.sleep(0.05)
    return f"{cmd[0]} {why}; command: {' '.join(cmd)}\n--- {log_path} ---\n{_log_tail(log_path)}"


# ----------------------------------------------------------------------------- Redis


def redis_error(url: str, timeout: float = 2.0) -> str | None:
    """None if the server at ``url`` answers PING, else why not."""
    try:
        with redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        ) as client:
            client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def external_redis(url: str) -> Service:
    error = redis_error(url)
    if error is not None:
        pytest.fail(f"{REDIS_URL_ENV}={url} does not answer PING: {error}", pytrace=False)
    return Service(url, private=False)


@contextlib.contextmanager
def private_redis(binary: str, workdir: Path, port: int | None = None) -> Iterator[Service]:
    """Run ``binary`` (a redis-server) on 127.0.0.1 in ``workdir`` for the block.

    With ``port=None`` a free port is chosen (and retried); fails with the log on error."""
    log_path = workdir / "redis-server.log"
    failures: list[str] = []
    for _ in range(1 if port is not None else _START_ATTEMPTS):
        p = port if port is not None else free_port()
        url = f"redis://127.0.0.1:{p}/0"
        cmd = [
            binary,
            "--port", str(p),
            "--bind", "127.0.0.1",
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        result = _spawn(
            cmd,
            log_path,
            lambda url=url: redis_error(url, timeout=0.5) is None,
            REDIS_START_TIMEOUT,
            signal.SIGTERM,
            cwd=workdir,
        )
        if isinstance(result, str):
            failures.append(result)
            continue
        try:
            yield Service(url, private=True)
        finally:
            _stop(result, signal.SIGTERM)
        return
    pytest.fail("could not start a private redis-server:\n" + "\n\n".join(failures), pytrace=False)


def new_redis_prefix() -> str:
    return f"kst-{uuid.uuid4().hex[:12]}"


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def delete_prefixed(client: redis.Redis, prefix: str, batch: int = 500) -> int:
    """Delete every key starting with ``prefix`` (SCAN MATCH + UNLINK); return how many."""
    if not prefix:
        raise ValueError("refusing to delete with an empty prefix")
    deleted = 0
    keys: list[Any] = []

    def drop() -> int:
        try:
            return int(client.unlink(*keys))
        except redis.ResponseError:  # a server without UNLINK (< 4.0)
            return int(client.delete(*keys))

    for key in client.scan_iter(match=_glob_escape(prefix) + "*", count=batch):
        keys.append(key)
        if len(keys) >= batch:
            deleted += drop()
            keys.clear()
    if keys:
        deleted += drop()
    return deleted


@contextlib.contextmanager
def redis_key_prefix(url: str) -> Iterator[str]:
    """A fresh key prefix for the block; its keys are deleted when the block ends."""
    prefix = new_redis_prefix()
    try:
        yield prefix
    finally:
        with redis.Redis.from_url(url) as client:
            delete_prefixed(client, prefix)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The Redis the tests use: ``.url`` and ``.private`` (True if the tests started it)."""
    url = os.environ.get(REDIS_URL_ENV, "").strip()
    if url:
        yield external_redis(url)
        return
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing(REDIS_MISSING)
    with private_redis(binary, tmp_path_factory.mktemp("redis")) as service:
        yield service


@pytest.fixture
def redis_url(redis_server: Service) -> str:
    return redis_server.url


@pytest.fixture
def redis_prefix(redis_server: Service) -> Iterator[str]:
    """``kst-<12 hex>``, unique per test; all keys starting with it are deleted afterwards."""
    with redis_key_prefix(redis_server.url) as prefix:
        yield prefix


@pytest.fixture
def redis_flush(redis_server: Service, redis_prefix: str) -> Callable[[], None]:
    """``redis_flush()`` simulates "Redis lost its data".

    FLUSHALL on a private server; on a server the tests did not start it deletes only
    the keys under this test's ``redis_prefix`` (so code under test must use it)."""

    def flush() -> None:
        with redis.Redis.from_url(redis_server.url) as client:
            if redis_server.private:
                client.flushall()
            else:
                delete_prefixed(client, redis_prefix)

    return flush


@pytest.fixture
def redis_client(redis_server: Service) -> Iterator[redis.Redis]:
    """A sync client (bytes responses) for ``redis_server``, closed afterwards."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=False)
    try:
        yield client
    finally:
        client.close()


# ------------------------------------------------------------------------ PostgreSQL


def import_psycopg() -> Any:
    try:
        return importlib.import_module("psycopg")
    except ImportError:
        return None


def postgres_error(url: str, timeout: int = 3) -> str | None:
    """None if ``url`` accepts a connection and ``SELECT 1``, else why not."""
    psycopg = import_psycopg()
    if psycopg is None:
        return "psycopg is not installed"
    try:
        with psycopg.connect(url, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except (psycopg.Error, OSError) as exc:
        return f"{type(exc).__name__}: {str(exc).strip()}"
    return None


def find_postgres_bindir() -> Path | None:
    """A directory holding both ``initdb`` and ``postgres``, or None."""
    candidates: list[Path] = []
    for name in ("initdb", "pg_ctl", "postgres"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(os.path.realpath(found)).parent)

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version)[::-1]
    ]
    for bindir in candidates:
        if all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "postgres")):
            return bindir
    return None


@contextlib.contextmanager
def private_postgres(bindir: Path) -> Iterator[Service]:
    """initdb a throwaway cluster and run it on 127.0.0.1 for the block.

    As root, the server runs as the ``postgres`` user (initdb refuses to run as root)."""
    base = Path(tempfile.mkdtemp(prefix="keystile-pg-"))
    popen: dict[str, Any] = {"cwd": base}
    try:
        if getattr(os, "geteuid", lambda: 1)() == 0:
            import pwd

            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                service_missing(
                    "no PostgreSQL to test against: initdb cannot run as root "
                    f"and there is no 'postgres' user; set {POSTGRES_URL_ENV}"
                )
            os.chown(base, owner.pw_uid, owner.pw_gid)
            popen.update(user=owner.pw_uid, group=owner.pw_gid, extra_groups=[])
        data, log_path = base / "data", base / "postgres.log"
        with open(log_path, "wb") as log:
            init = subprocess.run(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--no-locale", "-N"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False,
                **popen,
            )  # fmt: skip
        if init.returncode != 0:
            pytest.fail(f"initdb failed ({init.returncode}):\n{_log_tail(log_path)}", pytrace=False)
        failures: list[str] = []
        for _ in range(_START_ATTEMPTS):
            port = free_port()
            url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            cmd = [
                str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(base),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            ]  # fmt: skip
            result = _spawn(
                cmd,
                log_path,
                lambda url=url: postgres_error(url, timeout=1) is None,
                POSTGRES_START_TIMEOUT,
                signal.SIGINT,  # "fast" shutdown
                **popen,
            )
            if isinstance(result, str):
                failures.append(result)
                continue
            try:
                yield Service(url, private=True)
            finally:
                _stop(result, signal.SIGINT, timeout=20)
            return
        pytest.fail(
            "could not start a private PostgreSQL:\n" + "\n\n".join(failures), pytrace=False
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def postgres_schema_scope(url: str) -> Iterator[str]:
    """A fresh schema ``kst_<12 hex>`` for the block, dropped (CASCADE) when it ends."""
    psycopg = import_psycopg()
    from psycopg import sql

    name = f"kst_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")  # fail rather than hang on a leak
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Service]:
    """The PostgreSQL the tests use: ``.url`` and ``.private``."""
    url = os.environ.get(POSTGRES_URL_ENV, "").strip()
    have_psycopg = import_psycopg() is not None
    if url:
        if not have_psycopg:
            service_missing(f"{POSTGRES_URL_ENV} is set but psycopg is not installed")
        error = postgres_error(url)
        if error is not None:
            pytest.fail(f"{POSTGRES_URL_ENV}={url} does not answer: {error}", pytrace=False)
        yield Service(url, private=False)
        return
    if not have_psycopg:
        service_missing("psycopg is not installed (pip install 'psycopg[binary]')")
    default_error = postgres_error(DEFAULT_POSTGRES_URL)
    if default_error is None:
        yield Service(DEFAULT_POSTGRES_URL, private=False)
        return
    bindir = find_postgres_bindir()
    if bindir is None:
        service_missing(
            f"no PostgreSQL at {DEFAULT_POSTGRES_URL} ({default_error}) and no initdb/postgres "
            f"binaries to start one; install PostgreSQL or set {POSTGRES_URL_ENV}"
        )
    with private_postgres(bindir) as service:
        yield service


@pytest.fixture(scope="session")
def postgres_url(postgres_server: Service) -> str:
    return postgres_server.url


@pytest.fixture
def postgres_schema(postgres_server: Service) -> Iterator[str]:
    """A unique schema name, created before the test and dropped (CASCADE) after it."""
    with postgres_schema_scope(postgres_server.url) as name:
        yield name
