"""The cost of keystile over real HTTP, as ratios to baselines measured in the same run.

    .venv/bin/python bench/http.py [--quick] [--rounds R] [--duration S] [--connections C]
        [--stacks starlette,fastapi,flask,django] [--cases SUBSTRING,...] [--markdown]
        [--json FILE] [--against SRC]

Needs: ``pip install -e '.[bench]'`` (gunicorn, safe-api-keys, djangorestframework,
djangorestframework-api-key, uvicorn, starlette, fastapi, flask, django), ``wrk``
(``apt-get install wrk``) and ``redis-server`` on PATH. A case whose dependency is missing is
skipped with a note; so are the Redis cases without ``redis-server``.

Every case is its own server process on a free loopback port: uvicorn (one worker, asyncio
loop, httptools if installed, else h11) for Starlette and FastAPI, gunicorn (one sync worker)
for Flask and Django. Redis is a private ``redis-server`` on a free loopback port, without
persistence, stopped at the end. Keys are created up front in this process in one SQLite store
in a temp dir (fast argon2 parameters) and handed to ``wrk -t1 -c32 --latency`` as a header.

All servers of a stack run at once; after a short warm-up each, the rounds interleave
(A B C A B C ...), one wrk at a time, and each round's ratio is the case's req/s divided by
the stack's baseline req/s of that same round. Tables give medians over rounds (req/s, p50,
p99), summed non-2xx/3xx responses and socket errors, the ratio's median, min and max, the
CPU time (user + system) each server spent per request and the CPU ratio (the baseline's CPU
per request over the case's, round by round: the req/s ratio of servers that never waited
for a core, which wrk and Redis share with them, nor for Redis's replies), the requests each
server answered, and how much its resident memory grew from the end of the warm-up to the
end of the last round (master and workers together).

Cases (every app has one route, ``GET /``):

starlette (uvicorn)
    bare               no middleware; a PlainTextResponse "ok"
    least-key-check    a pure-ASGI middleware doing the least a key check does: one scan of
                       the headers for Authorization, one dict lookup, a principal attached
                       to the scope's state: the ceiling of any check over HTTP
    naive-redis-get    a pure-ASGI middleware doing one redis.asyncio GET of a fixed key per
                       request (one module-level client, BlockingConnectionPool(64)): the
                       floor any Redis-backed check pays, and the baseline to beat
    keystile-strict    KeystileMiddleware with Redis, "consistency": "strict"
    keystile-fast      the same with "consistency": "fast"
    keystile-no-redis  KeystileMiddleware without Redis (SQLite store, in-process cache)
    strict-rated       keystile-strict, the key with a rate limit (100000000/h, never reached)
    fast-rated         keystile-fast with that key: requests reserved in blocks, not per request
    unknown-ids        strict, and every request a new well-formed token (valid checksum)
                       whose key id exists nowhere (bench/wrk/unknown_ids.lua): a flood
                       that must stay cheap; every answer is a 401
fastapi (uvicorn)
    bare                 an async route returning {"ok": true}
    keystile-middleware  KeystileMiddleware (Redis, strict); the route ignores the principal
    keystile-depends     the same, and the route takes Depends(get_principal)
    keystile-request     the same, and the route takes request: Request and reads
                         principal_of(request): no dependency for FastAPI to solve
    noop-depends         the middleware, and Depends of an async def that only returns:
                         FastAPI's own cost of one dependency, keystile-depends' ceiling
    safe-api-keys        the safe-api-keys package: APIKeyAuth + AsyncKeyManager on its
                         SQLiteStore, Depends(auth.scopes(...)), key sent as X-API-Key
flask (gunicorn -w 1, sync)
    bare, keystile-strict, keystile-fast, keystile-no-redis  as for Starlette, with
    keystile.flask.Keystile(app, settings=...)
django (gunicorn -w 1, sync; a DRF APIView returning Response({"ok": True}))
    bare-drf           AllowAny, no authentication classes, no middleware
    drf-api-key        djangorestframework-api-key's HasAPIKey on the same view
                       (header "Authorization: Api-Key <key>")
    keystile-strict    keystile.django.KeystileMiddleware (Redis, strict), view as bare-drf
    keystile-fast      the same, "consistency": "fast"
    keystile-no-redis  the same without Redis
    Ratios are to bare-drf; each keystile case / drf-api-key is printed too.

--quick is about two minutes (2 rounds x 3 s). ``--against SRC`` (another checkout's ``src``,
an older commit's say) runs every keystile case on it too, as ``CASE@base`` in the same rounds,
and prints each case's ratio to its twin per round: a change's effect over HTTP.
"""

# This file is named http.py, and running it puts bench/ first on sys.path, where it would
# shadow the standard library's http package (http.client, http.cookies). So bench/ is swapped
# for the repository root (which also makes bench.http_apps importable) before other imports.
# ruff: noqa: E402

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(ROOT))

import argparse
import contextlib
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bench.http_apps import (
    DJANGO_DB_ENV,
    NAIVE_REDIS_KEY,
    REDIS_URL_ENV,
    SETTINGS_ENV,
    VARIANT_ENV,
)

HOST = "127.0.0.1"
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
REDIS_SECRET = "bench-secret-0123456789abcdef"
ACCOUNT = "acct_bench"
SAFE_API_KEYS_PREFIX = "bench_live"
SAFE_API_KEYS_SCOPE = "bench:read"  # the scope bench/http_apps/fastapi_app.py requires
SERVER_START_TIMEOUT = 20.0
SERVER_STOP_TIMEOUT = 5.0
WRK_GRACE = 30.0  # seconds a wrk run may take beyond its duration before it is killed
WRK_MISSING = "wrk not found: install it with 'apt-get install wrk' (Debian package wrk)"
INSTALL_HINT = "pip install -e '.[bench]'"

#: Importable module -> the PyPI name to install.
PIP_NAMES = {
    "uvicorn": "uvicorn",
    "gunicorn": "gunicorn",
    "starlette": "starlette",
    "fastapi": "fastapi",
    "flask": "flask",
    "django": "django",
    "rest_framework": "djangorestframework",
    "rest_framework_api_key": "djangorestframework-api-key",
    "safe_api_keys": "safe-api-keys",
}


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class BenchEnv:
    """What the cases share: the temp dir, the private Redis, keystile's capabilities."""

    tmp: Path
    redis_url: str | None
    has_consistency: bool

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.tmp / 'ks.db'}"

    @property
    def django_db(self) -> Path:
        return self.tmp / "django.db"


@dataclass(frozen=True)
class Prepared:
    """A case made ready to serve: the settings for its app and the headers wrk sends."""

    settings: Mapping[str, Any] | None = None
    headers: tuple[str, ...] = ()
    script: str | None = None  # a wrk Lua script that makes each request instead


Preparer = Callable[[BenchEnv], Prepared]


@dataclass(frozen=True)
class Case:
    name: str
    variant: str  # which app bench/http_apps builds (KS_BENCH_VARIANT)
    prepare: Preparer
    requires: tuple[str, ...] = ()
    needs_redis: bool = False
    needs_consistency: bool = False
    refused: bool = False  # every answer is a refusal (401): the case measures how cheap
    src: str | None = None  # another checkout's src the server imports keystile from


@dataclass(frozen=True)
class Stack:
    name: str
    server: str  # "uvicorn" or "gunicorn"
    target: str  # module:attribute
    requires: tuple[str, ...]
    baseline: str
    cases: tuple[Case, ...]
    pairs: tuple[tuple[str, str], ...] = ()  # extra per-round ratios: (numerator, denominator)


@dataclass(frozen=True)
class WrkResult:
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int
    #: CPU time (user + system) the server's processes spent per request in this run, in µs:
    #: unlike req/s, it leaves out the time the server waited for a core or for Redis (whose
    #: own time is not in it).
    server_cpu_us: float = float("nan")


@dataclass
class Server:
    case: Case
    prepared: Prepared
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    probe_status: int | None = None


@dataclass
class StackReport:
    stack: Stack
    server_label: str
    runs: dict[str, list[WrkResult]] = field(default_factory=dict)
    probes: dict[str, int | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    #: Resident memory of each case's server (and its workers), in MiB, after the warm-up
    #: and after the last round.
    rss: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    rounds: int
    duration: int
    warmup: int
    connections: int
    stacks: tuple[str, ...]
    case_filters: tuple[str, ...]
    markdown: bool
    json_path: Path | None
    http_impl: str
    against: str | None = None


class ServerError(RuntimeError):
    """A server did not come up (or died)."""


# ----------------------------------------------------------------------------- keys


def keystile_settings(env: BenchEnv, mode: str) -> dict[str, Any]:
    """Settings for ``mode``: ``strict``/``fast`` (with Redis) or ``no-redis``."""
    settings: dict[str, Any] = {"store": env.store_url, "argon2": dict(FAST_ARGON2)}
    if mode == "no-redis":
        return settings
    settings.update(redis_url=env.redis_url, secret=REDIS_SECRET)
    if env.has_consistency:
        settings["consistency"] = mode
    return settings


#: A rate limit the bench never reaches: what checking one costs, not what refusing does.
BENCH_RATE_LIMIT = "100000000/h"


def create_keystile_token(settings: Mapping[str, Any], rate_limit: str | None = None) -> str:
    from keystile import Keystile

    engine = Keystile(dict(settings))
    try:
        return engine.keys.create(ACCOUNT, "bench", rate_limit=rate_limit).token
    finally:
        engine.close()


UNKNOWN_IDS_SCRIPT = str(Path(__file__).resolve().parent / "wrk" / "unknown_ids.lua")


def unknown_ids_case(mode: str) -> Preparer:
    """Every request a new well-formed token whose key id exists nowhere (a flood)."""

    def prepare(env: BenchEnv) -> Prepared:
        settings = keystile_settings(env, mode)
        create_keystile_token(settings)  # a store with a key in it, as in the other cases
        return Prepared(settings=settings, script=UNKNOWN_IDS_SCRIPT)

    return prepare


def keystile_case(mode: str, rate_limit: str | None = None) -> Preparer:
    def prepare(env: BenchEnv) -> Prepared:
        settings = keystile_settings(env, mode)
        token = create_keystile_token(settings, rate_limit)
        return Prepared(settings=settings, headers=(f"Authorization: Bearer {token}",))

    return prepare


def least_key_check_case(env: BenchEnv) -> Prepared:
    """A keystile token, sent as keystile's cases send it, that the app only looks up."""
    token = create_keystile_token(keystile_settings(env, "no-redis"))
    header = f"Bearer {token}"
    return Prepared(settings={"authorization": header}, headers=(f"Authorization: {header}",))


def no_auth(env: BenchEnv) -> Prepared:
    return Prepared()


def safe_api_keys_case(env: BenchEnv) -> Prepared:
    """Issue a key with safe-api-keys' own API into its SQLite store; the app opens it."""
    from safe_api_keys import KeyManager
    from safe_api_keys.stores import SQLiteStore

    config = {
        "store_path": str(env.tmp / "safe_api_keys.db"),
        "prefix": SAFE_API_KEYS_PREFIX,
        "pepper": secrets.token_urlsafe(32),
    }
    manager = KeyManager(
        SQLiteStore(config["store_path"]), config["prefix"], pepper=config["pepper"].encode()
    )
    try:
        raw_key = manager.issue(ACCOUNT, scopes=[SAFE_API_KEYS_SCOPE]).raw_key
    finally:
        manager.close()
    return Prepared(settings=config, headers=(f"X-API-Key: {raw_key}",))


def drf_api_key_case(env: BenchEnv) -> Prepared:
    """Migrate the Django cases' database here, once, and create a djangorestframework-api-key
    key in it."""
    overrides = {
        "DJANGO_SETTINGS_MODULE": "bench.http_apps.django_settings",
        VARIANT_ENV: "drf-api-key",
        DJANGO_DB_ENV: str(env.django_db),
    }
    with patched_environ(overrides):
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        from rest_framework_api_key.models import APIKey

        _, key = APIKey.objects.create_key(name="bench")
    return Prepared(headers=(f"Authorization: Api-Key {key}",))


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def supports_consistency(env: BenchEnv) -> bool:
    """Whether this keystile accepts the "consistency" setting (it is being added)."""
    from keystile import Keystile
    from keystile._core.errors import ConfigError

    probe = BenchEnv(env.tmp, env.redis_url or "redis://127.0.0.1:1/0", has_consistency=True)
    try:
        for mode in ("strict", "fast"):
            Keystile(keystile_settings(probe, mode)).close()
    except ConfigError as exc:
        reason = str(exc).split(";")[0]
        print(f"note: keystile rejects 'consistency' ({reason}): skipping the keystile-fast cases")
        print("      and running keystile-strict without the 'consistency' key")
        return False
    return True


# ----------------------------------------------------------------------------- stacks


def all_stacks() -> tuple[Stack, ...]:
    strict, fast, no_redis = (
        keystile_case("strict"),
        keystile_case("fast"),
        keystile_case("no-redis"),
    )
    unknown_ids = unknown_ids_case("strict")
    strict_rated = keystile_case("strict", BENCH_RATE_LIMIT)
    fast_rated = keystile_case("fast", BENCH_RATE_LIMIT)
    return (
        Stack(
            name="starlette",
            server="uvicorn",
            target="bench.http_apps.starlette_app:app",
            requires=("uvicorn", "starlette"),
            baseline="bare",
            cases=(
                Case("bare", "bare", no_auth),
                Case("least-key-check", "least-key-check", least_key_check_case),
                Case("naive-redis-get", "naive-redis-get", no_auth, needs_redis=True),
                Case("keystile-strict", "keystile", strict, needs_redis=True),
                Case("keystile-fast", "keystile", fast, needs_redis=True, needs_consistency=True),
                Case("keystile-no-redis", "keystile", no_redis),
                Case("strict-rated", "keystile", strict_rated, needs_redis=True),
                Case(
                    "fast-rated", "keystile", fast_rated, needs_redis=True, needs_consistency=True
                ),
                Case("unknown-ids", "keystile", unknown_ids, needs_redis=True, refused=True),
            ),
            pairs=(("keystile-strict", "naive-redis-get"), ("fast-rated", "strict-rated")),
        ),
        Stack(
            name="fastapi",
            server="uvicorn",
            target="bench.http_apps.fastapi_app:app",
            requires=("uvicorn", "fastapi"),
            baseline="bare",
            cases=(
                Case("bare", "bare", no_auth),
                Case("keystile-middleware", "keystile-middleware", strict, needs_redis=True),
                Case("keystile-depends", "keystile-depends", strict, needs_redis=True),
                Case("keystile-request", "keystile-request", strict, needs_redis=True),
                Case("noop-depends", "noop-depends", strict, needs_redis=True),
                Case("safe-api-keys", "safe-api-keys", safe_api_keys_case, ("safe_api_keys",)),
            ),
            pairs=(
                ("keystile-depends", "keystile-middleware"),
                ("keystile-request", "keystile-middleware"),
                ("noop-depends", "keystile-middleware"),
                ("keystile-depends", "noop-depends"),
                ("keystile-middleware", "safe-api-keys"),
            ),
        ),
        Stack(
            name="flask",
            server="gunicorn",
            target="bench.http_apps.flask_app:app",
            requires=("gunicorn", "flask"),
            baseline="bare",
            cases=(
                Case("bare", "bare", no_auth),
                Case("keystile-strict", "keystile", strict, needs_redis=True),
                Case("keystile-fast", "keystile", fast, needs_redis=True, needs_consistency=True),
                Case("keystile-no-redis", "keystile", no_redis),
            ),
        ),
        Stack(
            name="django",
            server="gunicorn",
            target="bench.http_apps.django_wsgi:application",
            requires=("gunicorn", "django", "rest_framework"),
            baseline="bare-drf",
            cases=(
                Case("bare-drf", "bare-drf", no_auth),
                Case("drf-api-key", "drf-api-key", drf_api_key_case, ("rest_framework_api_key",)),
                Case("keystile-strict", "keystile", strict, needs_redis=True),
                Case("keystile-fast", "keystile", fast, needs_redis=True, needs_consistency=True),
                Case("keystile-no-redis", "keystile", no_redis),
            ),
            pairs=tuple(
                (case, "drf-api-key")
                for case in ("keystile-strict", "keystile-fast", "keystile-no-redis")
            ),
        ),
    )


def missing_modules(modules: Sequence[str]) -> list[str]:
    return [PIP_NAMES.get(m, m) for m in modules if importlib.util.find_spec(m) is None]


def skip_reason(stack: Stack, case: Case, env: BenchEnv) -> str | None:
    missing = missing_modules(stack.requires + case.requires)
    if missing:
        names = " ".join(missing)
        return f"missing {', '.join(missing)} (install: {INSTALL_HINT}, or pip install {names})"
    if case.needs_redis and env.redis_url is None:
        return "needs Redis: redis-server is not on PATH"
    if case.needs_consistency and not env.has_consistency:
        return "keystile has no 'consistency' setting yet"
    return None


def wanted(stack: Stack, case: Case, filters: Sequence[str]) -> bool:
    """The baseline always runs (the ratios need it); others match a --cases substring."""
    return case.name == stack.baseline or not filters or any(f in case.name for f in filters)


# ----------------------------------------------------------------------------- processes


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started (start_new_session), then SIGKILL if needed."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=SERVER_STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    | " + line for line in text.splitlines()[-lines:])


@contextlib.contextmanager
def private_redis(tmp: Path) -> Iterator[str | None]:
    """A throwaway redis-server on a free loopback port (None when there is none on PATH)."""
    executable = shutil.which("redis-server")
    if executable is None:
        print("note: redis-server not on PATH; the Redis cases are skipped")
        yield None
        return
    port = free_port(set())
    log_path = tmp / "redis.log"
    command = [executable, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly",
               "no", "--dir", str(tmp), "--logfile", str(log_path)]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"redis://{HOST}:{port}/0"
    try:
        wait_for_redis(url, process, log_path)
        yield url
    finally:
        stop_process(process)


def wait_for_redis(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                raise ServerError(
                    f"redis-server exited ({process.returncode})\n{log_tail(log_path)}"
                )
            try:
                client.set(NAIVE_REDIS_KEY, "1")
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise ServerError("redis-server did not answer in time") from None
                time.sleep(0.1)
    finally:
        client.close()


def choose_http_impl() -> str:
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def server_command(stack: Stack, port: int, http_impl: str) -> list[str]:
    if stack.server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", stack.target, "--host", HOST, "--port",
                str(port), "--loop", "asyncio", "--http", http_impl, "--log-level", "warning",
                "--no-access-log"]  # fmt: skip
    command = [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "sync", "-b", f"{HOST}:{port}",
               "--log-level", "warning", "--chdir", str(ROOT)]  # fmt: skip
    if gunicorn_has_flag("--no-control-socket"):
        command.append("--no-control-socket")  # gunicorn 25+ would put a socket in ~/.gunicorn
    return [*command, stack.target]


def gunicorn_has_flag(flag: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(flag in (setting.cli or ()) for setting in KNOWN_SETTINGS)


def server_environ(case: Case, prepared: Prepared, env: BenchEnv) -> dict[str, str]:
    environ = dict(os.environ)
    environ.pop(SETTINGS_ENV, None)
    environ.update({VARIANT_ENV: case.variant, DJANGO_DB_ENV: str(env.django_db)})
    environ["DJANGO_SETTINGS_MODULE"] = "bench.http_apps.django_settings"
    paths = [case.src, str(ROOT), environ.get("PYTHONPATH")]
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    if env.redis_url is not None:
        environ[REDIS_URL_ENV] = env.redis_url
    if prepared.settings is not None:
        environ[SETTINGS_ENV] = json.dumps(prepared.settings)
    return environ


def start_server(
    stack: Stack, case: Case, prepared: Prepared, env: BenchEnv, http_impl: str, taken: set[int]
) -> Server:
    port = free_port(taken)
    log_path = env.tmp / f"{stack.name}-{case.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            server_command(stack, port, http_impl),
            cwd=ROOT,
            env=server_environ(case, prepared, env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(case, prepared, port, process, log_path)


def split_header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


def probe(server: Server) -> int | None:
    """One GET / with the case's headers: its status, or None if nothing answered."""
    connection = http.client.HTTPConnection(HOST, server.port, timeout=5)
    try:
        connection.request("GET", "/", headers=dict(map(split_header, server.prepared.headers)))
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


def wait_until_ready(server: Server) -> int:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise ServerError(
                f"exited with {server.process.returncode}\n{log_tail(server.log_path)}"
            )
        status = probe(server)
        if status is not None:
            return status
        if time.monotonic() > deadline:
            raise ServerError(f"no answer within {SERVER_START_TIMEOUT:.0f} s\n"
                              f"{log_tail(server.log_path)}")  # fmt: skip
        time.sleep(0.1)


# ----------------------------------------------------------------------------- wrk

_LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(output: str) -> WrkResult:
    rps = _RPS.search(output)
    requests = _REQUESTS.search(output)
    if rps is None or requests is None:
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    percentiles = {
        float(p): float(value) * _LATENCY_UNITS_MS[unit]
        for p, value, unit in _PERCENTILE.findall(output)
    }
    non_2xx = _NON_2XX.search(output)
    socket_errors = _SOCKET_ERRORS.search(output)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=percentiles.get(50.0, float("nan")),
        p99_ms=percentiles.get(99.0, float("nan")),
        requests=int(requests.group(1)),
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(map(int, socket_errors.groups())) if socket_errors else 0,
    )


def run_wrk(wrk: str, server: Server, duration: int, connections: int) -> WrkResult:
    command = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for header in server.prepared.headers:
        command += ["-H", header]
    if server.prepared.script:
        command += ["-s", server.prepared.script]
    command.append(f"http://{HOST}:{server.port}/")
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + WRK_GRACE, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    return parse_wrk(completed.stdout)


# ----------------------------------------------------------------------------- running


def server_label(stack: Stack, http_impl: str) -> str:
    if stack.server == "uvicorn":
        return f"uvicorn, 1 worker, asyncio loop, {http_impl}"
    return "gunicorn -w 1, sync worker"


def select_cases(stack: Stack, env: BenchEnv, options: Options, report: StackReport) -> list[Case]:
    chosen = []
    for case in stack.cases:
        if not wanted(stack, case, options.case_filters):
            continue
        reason = skip_reason(stack, case, env)
        if reason is None:
            chosen.append(case)
        else:
            report.skipped[case.name] = reason
            print(f"skip {stack.name}/{case.name}: {reason}")
    return chosen


def start_servers(
    stack: Stack, cases: Sequence[Case], env: BenchEnv, options: Options, report: StackReport
) -> list[Server]:
    """Start every case's server and wait for each; a case that fails is skipped, noted."""
    servers: list[Server] = []
    taken: set[int] = set()
    for case in cases:
        try:
            prepared = case.prepare(env)
        except Exception as exc:
            report.skipped[case.name] = f"setup failed: {exc!r}"
            print(f"skip {stack.name}/{case.name}: setup failed: {exc!r}")
            continue
        servers.append(start_server(stack, case, prepared, env, options.http_impl, taken))
    ready = []
    for server in servers:
        try:
            server.probe_status = wait_until_ready(server)
        except ServerError as exc:
            report.skipped[server.case.name] = f"server failed: {exc}"
            print(f"skip {stack.name}/{server.case.name}: server failed: {exc}")
            stop_process(server.process)
            continue
        report.probes[server.case.name] = server.probe_status
        if not server.case.refused and not 200 <= server.probe_status < 400:
            print(f"WARNING {stack.name}/{server.case.name}: first GET / answered "
                  f"{server.probe_status}")  # fmt: skip
        ready.append(server)
    return ready


def tree_proc_files(pid: int, name: str) -> list[str]:
    """``/proc/<pid>/<name>`` of a process and of its descendants (gunicorn's master and
    worker), those still running."""
    texts, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            texts.append(Path(f"/proc/{current}/{name}").read_text())
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo += [int(child) for child in children]
    return texts


def tree_rss_mib(pid: int) -> float:
    """VmRSS of a process and its descendants, in MiB."""
    found = (
        re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
        for text in tree_proc_files(pid, "status")
    )
    return sum(int(match.group(1)) for match in found if match) / 1024


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants so far, in seconds."""
    ticks = 0
    for stat in tree_proc_files(pid, "stat"):
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: stat's fields 14 and 15
    return ticks / os.sysconf("SC_CLK_TCK")


def run_measured(wrk: str, server: Server, options: Options) -> WrkResult:
    """One wrk run, with the CPU time the server spent on it per request."""
    before = tree_cpu_seconds(server.process.pid)
    result = run_wrk(wrk, server, options.duration, options.connections)
    spent = tree_cpu_seconds(server.process.pid) - before
    per_request = spent / result.requests * 1e6 if result.requests else float("nan")
    return replace(result, server_cpu_us=per_request)


def run_rounds(wrk: str, servers: Sequence[Server], options: Options, report: StackReport) -> None:
    for server in servers:
        run_wrk(wrk, server, options.warmup, options.connections)
    warm = {server.case.name: tree_rss_mib(server.process.pid) for server in servers}
    for round_no in range(1, options.rounds + 1):
        for server in servers:
            result = run_measured(wrk, server, options)
            report.runs.setdefault(server.case.name, []).append(result)
            print(f"  {report.stack.name:<9} round {round_no}/{options.rounds} "
                  f"{server.case.name:<20} {result.requests_per_sec:>9.0f} req/s  "
                  f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                  f"CPU {result.server_cpu_us:6.1f} µs/req  "
                  f"non-2xx {result.non_2xx_3xx}  socket errors {result.socket_errors}",
                  flush=True)  # fmt: skip
    for server in servers:
        report.rss[server.case.name] = (warm[server.case.name], tree_rss_mib(server.process.pid))


def bench_stack(wrk: str, stack: Stack, env: BenchEnv, options: Options) -> StackReport:
    report = StackReport(stack, server_label(stack, options.http_impl))
    print(f"\n== {stack.name} ({report.server_label})", flush=True)
    cases = select_cases(stack, env, options, report)
    if stack.baseline not in {case.name for case in cases}:
        print(f"skip {stack.name}: its baseline {stack.baseline!r} cannot run")
        return report
    servers: list[Server] = []
    try:
        servers = start_servers(stack, cases, env, options, report)
        if stack.baseline in {server.case.name for server in servers}:
            run_rounds(wrk, servers, options, report)
        else:
            print(f"skip {stack.name}: its baseline {stack.baseline!r} did not start")
    finally:
        for server in servers:
            stop_process(server.process)
            report_server_log(stack, server)
    return report


def report_server_log(stack: Stack, server: Server) -> None:
    """Servers log at warning level: anything they said is worth showing."""
    tail = log_tail(server.log_path)
    if tail:
        print(f"server log of {stack.name}/{server.case.name}:\n{tail}")


# ----------------------------------------------------------------------------- reporting


def per_round_ratios(
    runs: Mapping[str, list[WrkResult]], numerator: str, denominator: str, *, cpu: bool = False
) -> list[float]:
    """The numerator's req/s over the denominator's, round by round; ``cpu``: the
    denominator's CPU per request over the numerator's instead (the req/s ratio of servers
    that never waited for anything but their own work)."""
    pairs = zip(runs.get(numerator, []), runs.get(denominator, []))
    if cpu:
        # > 0 is False for NaN too: a run that answered nothing has no CPU per request.
        return [b.server_cpu_us / a.server_cpu_us for a, b in pairs
                if a.server_cpu_us > 0 and b.server_cpu_us > 0]  # fmt: skip
    return [a.requests_per_sec / b.requests_per_sec for a, b in pairs if b.requests_per_sec > 0]


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def spread_cells(values: Sequence[float]) -> list[str]:
    """Median, min and max as table cells ("-" when there is nothing to show)."""
    return [f"{value:.2f}" for value in spread(values)] if values else ["-"] * 3


TABLE_HEADERS = ("case", "req/s", "p50 ms", "p99 ms", "non-2xx", "socket errors",
                 "ratio (median)", "min", "max", "CPU µs/req", "CPU ratio (median)", "min", "max",
                 "requests", "RSS MiB growth")  # fmt: skip


def table_rows(report: StackReport) -> list[list[str]]:
    rows = []
    for case in report.stack.cases:
        runs = report.runs.get(case.name)
        if not runs:
            continue
        baseline = report.stack.baseline
        ratio_cells = spread_cells(per_round_ratios(report.runs, case.name, baseline))
        cpu_cells = spread_cells(per_round_ratios(report.runs, case.name, baseline, cpu=True))
        start, end = report.rss.get(case.name, (0.0, 0.0))
        rows.append([
            case.name,
            f"{statistics.median(r.requests_per_sec for r in runs):.0f}",
            f"{statistics.median(r.p50_ms for r in runs):.2f}",
            f"{statistics.median(r.p99_ms for r in runs):.2f}",
            str(sum(r.non_2xx_3xx for r in runs)),
            str(sum(r.socket_errors for r in runs)),
            *ratio_cells,
            f"{statistics.median(r.server_cpu_us for r in runs):.1f}",
            *cpu_cells,
            str(sum(r.requests for r in runs)),
            f"{end - start:+.1f} ({start:.0f} to {end:.0f})",
        ])  # fmt: skip
    return rows


def pair_lines(report: StackReport) -> list[str]:
    lines = []
    for numerator, denominator in report.stack.pairs:
        ratios = per_round_ratios(report.runs, numerator, denominator)
        if ratios:
            median, low, high = spread(ratios)
            line = (f"{numerator} / {denominator} req/s per round: median {median:.2f} "
                    f"(min {low:.2f}, max {high:.2f})")  # fmt: skip
            cpu = per_round_ratios(report.runs, numerator, denominator, cpu=True)
            if cpu:
                median, low, high = spread(cpu)
                line += f"; by CPU per request {median:.2f} ({low:.2f}-{high:.2f})"
            lines.append(line)
    return lines


def render_text(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest])

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def render_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    align = ["---", *["---:"] * (len(headers) - 1)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [headers, align, *rows])


def stack_title(report: StackReport) -> str:
    return (f"{report.stack.name} ({report.server_label}); ratio = req/s / "
            f"{report.stack.baseline} req/s of the same round")  # fmt: skip


def print_tables(reports: Sequence[StackReport], options: Options) -> None:
    print(f"\nResults: median of {options.rounds} rounds x {options.duration} s, "
          f"wrk -t1 -c{options.connections}; non-2xx and socket errors summed over rounds")  # fmt: skip
    for report in reports:
        rows = table_rows(report)
        if not rows:
            continue
        print(f"\n{stack_title(report)}\n{render_text(TABLE_HEADERS, rows)}")
        for line in pair_lines(report):
            print(line)
        for name, reason in report.skipped.items():
            print(f"(skipped {name}: {reason.splitlines()[0]})")
    if options.markdown:
        print_markdown(reports)


def print_markdown(reports: Sequence[StackReport]) -> None:
    print("\n<!-- Markdown -->")
    for report in reports:
        rows = table_rows(report)
        if not rows:
            continue
        print(f"\n**{stack_title(report)}**\n\n{render_markdown(TABLE_HEADERS, rows)}")
        for line in pair_lines(report):
            print(f"\n{line}")


def warn_about_refusals(reports: Sequence[StackReport]) -> None:
    for report in reports:
        refusing = {case.name for case in report.stack.cases if case.refused}
        for name, runs in report.runs.items():
            refused = sum(r.non_2xx_3xx for r in runs)
            if refused and name not in refusing:
                print(f"WARNING {report.stack.name}/{name}: {refused} non-2xx/3xx responses")


def write_json(path: Path, meta: Mapping[str, Any], reports: Sequence[StackReport]) -> None:
    stacks = {
        report.stack.name: {
            "server": report.server_label,
            "baseline": report.stack.baseline,
            "cases": {
                name: {"probe_status": report.probes.get(name), "rounds": [asdict(r) for r in runs]}
                for name, runs in report.runs.items()
            },
            "skipped": report.skipped,
        }
        for report in reports
    }
    path.write_text(json.dumps({"meta": meta, "stacks": stacks}, indent=2) + "\n")
    print(f"\nraw results written to {path}")


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def tool_version(command: Sequence[str]) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (completed.stdout or completed.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average: {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


def describe_run(wrk: str, options: Options) -> dict[str, Any]:
    meta = {
        "python": platform.python_version(),
        "uvicorn": version_of("uvicorn"),
        "uvicorn_http": options.http_impl,
        "gunicorn": version_of("gunicorn"),
        "keystile": version_of("keystile"),
        "wrk": tool_version([wrk, "-v"]),
        "redis_server": tool_version(["redis-server", "--version"]),
        "rounds": options.rounds,
        "duration_s": options.duration,
        "warmup_s": options.warmup,
        "connections": options.connections,
        "load_average_start": os.getloadavg(),
    }
    print(load_average())
    print(f"python {meta['python']}, uvicorn {meta['uvicorn']} (--http {options.http_impl}, "
          f"--loop asyncio), gunicorn {meta['gunicorn']}, keystile {meta['keystile']}")  # fmt: skip
    print(f"{meta['wrk']}; {meta['redis_server']}")
    print(f"{options.rounds} rounds x {options.duration} s per case (warm-up {options.warmup} s), "
          f"wrk -t1 -c{options.connections}")  # fmt: skip
    return meta


# ----------------------------------------------------------------------------- main


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds x 3 s (about 2 minutes)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 2)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5; quick 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    names = [stack.name for stack in all_stacks()]
    parser.add_argument("--stacks", default=",".join(names), help="comma-separated, of: "
                        + ", ".join(names))  # fmt: skip
    parser.add_argument("--cases", default="", help="comma-separated substrings of case names "
                        "(the baseline always runs)")  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write raw results here")
    parser.add_argument("--against", metavar="SRC", help="also run every keystile case on "
                        "another checkout's src (an older commit), in the same rounds, as "
                        "CASE@base")  # fmt: skip
    args = parser.parse_args(argv)
    stacks = tuple(name.strip() for name in args.stacks.split(",") if name.strip())
    unknown = sorted(set(stacks) - set(names))
    if unknown:
        parser.error(f"unknown stack(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    rounds = args.rounds or (2 if args.quick else 3)
    duration = args.duration or (3 if args.quick else 5)
    if rounds < 1 or duration < 1 or args.connections < 1:
        parser.error("--rounds, --duration and --connections must be at least 1")
    return Options(
        rounds=rounds,
        duration=duration,
        warmup=1 if args.quick else 2,
        connections=args.connections,
        stacks=stacks,
        case_filters=tuple(f.strip() for f in args.cases.split(",") if f.strip()),
        markdown=args.markdown,
        json_path=args.json,
        http_impl=choose_http_impl(),
        against=None if args.against is None else str(Path(args.against).resolve()),
    )


def against(stack: Stack, src: str | None) -> Stack:
    """``stack`` with each keystile case twice: on this checkout and on ``src`` (CASE@base),
    and each pair's ratio per round."""
    if src is None:
        return stack
    twins = [
        replace(c, name=f"{c.name}@base", src=src)
        for c in stack.cases
        if c.variant.startswith("keystile")
    ]
    pairs = tuple((twin.name.removesuffix("@base"), twin.name) for twin in twins)
    return replace(stack, cases=(*stack.cases, *twins), pairs=(*stack.pairs, *pairs))


def interrupt_on_sigterm() -> None:
    """SIGTERM acts as Ctrl-C, so the finally blocks stop the servers and Redis."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2
    interrupt_on_sigterm()
    try:
        return run(wrk, options)
    except KeyboardInterrupt:
        print("\ninterrupted: servers and Redis stopped", file=sys.stderr)
        return 130


def run(wrk: str, options: Options) -> int:
    meta = describe_run(wrk, options)
    reports: list[StackReport] = []
    with tempfile.TemporaryDirectory(prefix="ks-http-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with private_redis(tmp) as redis_url:
            env = BenchEnv(tmp, redis_url, has_consistency=False)
            env = BenchEnv(tmp, redis_url, has_consistency=supports_consistency(env))
            for stack in all_stacks():
                if stack.name in options.stacks:
                    reports.append(bench_stack(wrk, against(stack, options.against), env, options))
    print_tables(reports, options)
    warn_about_refusals(reports)
    print(f"\n{load_average()}")
    if options.json_path is not None:
        meta["load_average_end"] = os.getloadavg()
        write_json(options.json_path, meta, reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
