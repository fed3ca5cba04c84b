"""The cost of keystile in the WSGI family, in-process (no network), against each bare app.

    python bench/frameworks.py [--requests 5000] [--rounds 3] [--redis redis://127.0.0.1:6379/0]

For plain WSGI, Flask, Django's sync stack (WSGIHandler) and Django's async stack
(ASGIHandler), the same one-route app runs bare and behind keystile, in the same run; each
line prints microseconds per request and the ratio to that framework's bare app. Requests
are fed straight to the app (a WSGI environ, or an ASGI scope), the body read and closed as a
server does. With --redis (or KEYSTILE_BENCH_REDIS_URL) the Redis scenarios run too, under a
throwaway key prefix deleted afterwards. Every keystile request is metered.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# bench/ holds http.py, which would shadow the standard library's http package (werkzeug
# imports http.server).
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from keystile import Keystile  # noqa: E402  (after the path insert)

FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
BATCHES = 10


# ----------------------------------------------------------------------------- apps


def plain_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("content-type", "text/plain"), ("content-length", "2")])
    return [b"ok"]


def wsgi_app(engine: Keystile | None) -> Any:
    if engine is None:
        return plain_app
    from keystile.wsgi import KeystileMiddleware

    return KeystileMiddleware(plain_app, keystile=engine)


def flask_app(engine: Keystile | None) -> Any:
    from flask import Flask

    app = Flask("bench")
    app.add_url_rule("/", "hello", lambda: "ok")
    if engine is not None:
        from keystile.flask import Keystile as FlaskKeystile

        FlaskKeystile(app, keystile=engine)
    return app


def hello(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("ok")


async def hello_async(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("ok")


urlpatterns: list[Any] = []  # this module is the Django urlconf


def configure_django() -> None:
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        LOGGING={"version": 1, "loggers": {"django.request": {"level": "CRITICAL"}}},
    )
    django.setup()
    from django.urls import path

    urlpatterns.extend([path("", hello), path("async", hello_async)])


def django_handler(engine: Keystile | None, is_async: bool) -> Any:
    configure_django()
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    from keystile.django import reset_engine

    middleware = ["keystile.django.KeystileMiddleware"] if engine is not None else []
    with override_settings(MIDDLEWARE=middleware):
        handler = ASGIHandler() if is_async else WSGIHandler()

    def activate() -> None:  # the process's engine is read from settings.KEYSTILE
        from django.conf import settings

        settings.KEYSTILE = engine
        reset_engine()

    handler.activate = activate
    return handler


# --------------------------------------------------------------------------- drivers


def environ_for(headers: list[tuple[str, str]], path: str = "/") -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "bench",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def time_batches(call: Callable[[], int], count: int, expect: int) -> float:
    for _ in range(50):  # warm caches and code paths
        status = call()
    if status != expect:
        raise SystemExit(f"scenario answered {status}, expected {expect}")
    per_batch = max(1, count // BATCHES)
    samples = []
    for _ in range(BATCHES):
        start = time.perf_counter()
        for _ in range(per_batch):
            call()
        samples.append((time.perf_counter() - start) / per_batch)
    return statistics.median(samples) * 1e6


def run_wsgi(app: Any, headers: list[tuple[str, str]], count: int, expect: int) -> float:
    template = environ_for(headers)
    status: list[str] = []

    def start_response(line: str, response_headers: Any, exc_info: Any = None) -> Any:
        status.append(line)
        return None

    def one() -> int:
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO()
        body: Iterable[bytes] = app(environ, start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return int(status.pop()[:3])

    return time_batches(one, count, expect)


def run_asgi(app: Any, headers: list[tuple[str, str]], count: int, expect: int) -> float:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/async",
        "raw_path": b"/async",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")]
        + [(k.encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    statuses: list[int] = []

    def receiver() -> Callable[[], Any]:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # no disconnect: the handler cancels this wait
            raise AssertionError("unreachable")

        return receive

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def measure() -> float:
        for _ in range(50):
            await app(dict(scope), receiver(), send)
        if statuses[-1] != expect:
            raise SystemExit(f"scenario answered {statuses[-1]}, expected {expect}")
        per_batch = max(1, count // BATCHES)
        samples = []
        for _ in range(BATCHES):
            start = time.perf_counter()
            for _ in range(per_batch):
                await app(dict(scope), receiver(), send)
            samples.append((time.perf_counter() - start) / per_batch)
        return statistics.median(samples) * 1e6

    return asyncio.run(measure())


# ------------------------------------------------------------------------- scenarios

FRAMEWORKS: dict[str, tuple[Callable[[Keystile | None], Any], Callable[..., float]]] = {
    "wsgi": (wsgi_app, run_wsgi),
    "flask": (flask_app, run_wsgi),
    "django-sync": (lambda engine: django_handler(engine, False), run_wsgi),
    "django-async": (lambda engine: django_handler(engine, True), run_asgi),
}


def unknown_token() -> str:
    other = Keystile({"store": "memory://", "argon2": FAST_ARGON2})
    token = other.keys.create("acct_other", "not in the benched store").token
    other.close()
    return token


def bench(
    frameworks: list[str], redis_url: str | None, count: int, rounds: int
) -> list[tuple[str, float, float]]:
    """Every scenario of a framework runs once per round, interleaved with its bare app;
    the best round counts (the least disturbed by whatever else the machine does)."""
    configs: list[tuple[str, dict[str, Any]]] = [("in-process", {})]
    prefix = f"ksbench-{uuid.uuid4().hex[:8]}"
    if redis_url:
        configs.append(
            ("redis", {"redis_url": redis_url, "secret": "bench-secret-0123456789",
                       "redis_prefix": prefix})
        )  # fmt: skip
    rows: list[tuple[str, float, float]] = []
    stranger = unknown_token()
    engines: list[Keystile] = []
    try:
        for name in frameworks:
            build, run = FRAMEWORKS[name]
            cases: list[tuple[str, Any, list[tuple[str, str]], int]] = [
                (f"{name:13} bare app", build(None), [], 200)
            ]
            for label, extra in configs:
                for limit_label, limit in (("unlimited", None), ("limit", 10**9)):
                    engine = Keystile(
                        {"store": "memory://", "argon2": FAST_ARGON2,
                         "monthly_page_limit": limit, **extra}
                    )  # fmt: skip
                    engines.append(engine)
                    token = engine.keys.create("acct_bench", "bench").token
                    bad = token[:-1] + ("A" if token[-1] != "A" else "B")
                    app = build(engine)
                    scenarios = [
                        ("valid key (warm)", [("authorization", f"Bearer {token}")], 200),
                        ("bad-checksum token", [("x-api-key", bad)], 401),
                        ("unknown key id", [("x-api-key", stranger)], 401),
                    ]
                    for scenario, headers, status in scenarios:
                        if limit_label == "limit" and status != 200:
                            continue
                        case = f"{name:13} {label:10} {limit_label:9} {scenario}"
                        cases.append((case, app, headers, status))
            best = [float("inf")] * len(cases)
            for _ in range(rounds):
                for index, (_, app, headers, status) in enumerate(cases):
                    getattr(app, "activate", lambda: None)()
                    best[index] = min(best[index], run(app, headers, count, status))
            bare = best[0]
            rows += [(case[0], micros, micros / bare) for case, micros in zip(cases, best)]
    finally:
        for engine in engines:
            if engine.has_redis:
                asyncio.run(engine.aclose())
            engine.close()
        if redis_url:
            import redis

            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.unlink(key)
            client.close()
    return rows


def main(argv: list[str] | None = None, printer: Callable[..., None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5_000, help="per scenario and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default=os.environ.get("KEYSTILE_BENCH_REDIS_URL"))
    parser.add_argument(
        "--frameworks", default=",".join(FRAMEWORKS), help="comma-separated: " + ", ".join(FRAMEWORKS)
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.frameworks.split(",") if n.strip()]
    unknown = sorted(set(names) - set(FRAMEWORKS))
    if unknown:
        parser.error(f"unknown frameworks {unknown}")
    rows = bench(names, args.redis, args.requests, args.rounds)
    printer(f"{'scenario':60} {'µs/request':>12} {'× bare':>8}")
    for label, micros, ratio in rows:
        printer(f"{label:60} {micros:12.1f} {ratio:8.2f}")


if __name__ == "__main__":
    main()
