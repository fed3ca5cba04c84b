"""Harnesses for the WSGI family: plain WSGI, Flask, Django (sync and async stacks), and
Django REST framework views (tests/drfproj) behind keystile's Django middleware.

Same interface and routes as :mod:`.harness` (``GET /whoami``, ``/read``, ``/write``,
``/health``, ``/public/x``); :data:`SYNC_HARNESSES` has the shape of ``HARNESSES``, so the one
behaviour suite runs over both (``python -m pytest -p tests.behaviour.plugin_sync``).

A WSGI app never sees the HTTP request itself but the environ a server builds from it, so the
WSGI harnesses play the server: :func:`server_environ` builds the environ as gunicorn (22+,
default ``header_map="drop"``), Werkzeug's dev server (2.3+) and Django's runserver do, dropping
header names with an underscore and joining a repeated header with ``,``. (Werkzeug's and
Django's test clients do neither, so they are not used to send the headers here.) The
Django async stack is driven in-process through Django's ASGI handler and the raw headers,
like the Starlette harness.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keystile import Keystile

from .harness import (
    ASGIHarness,
    Harness,
    Headers,
    Result,
    _exempt_body,
    principal_fields,
    quota_body,
)


def header_pairs(headers: Headers) -> list[tuple[str, str | bytes]]:
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])


def server_environ(method: str, path: str, headers: Headers = None) -> dict[str, Any]:
    """The environ a WSGI server builds for this request (see the module docstring)."""
    raw_path, _, query = path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": raw_path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "testserver",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in header_pairs(headers):
        if "_" in name:
            continue  # unmappable without ambiguity: dropped, as the servers above do
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        text = text.strip(" \t")
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = f"HTTP_{key}"
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


def _result(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> Result:
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return Result(status, {k.lower(): v for k, v in headers}, parsed, text)


def call_wsgi(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> Result:
    """Run one request through a WSGI app as a server does: iterate the body, then close it."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None

    body = app(environ, start_response)
    try:
        chunks = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    status, headers = started
    return _result(int(status.split()[0]), headers, chunks)


class WSGIHarness:
    def __init__(self, name: str, app: Callable[..., Iterable[bytes]]) -> None:
        self.name = name
        self.app = app

    def request(self, method: str, path: str, headers: Headers = None) -> Result:
        return call_wsgi(self.app, server_environ(method, path, headers))

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- WSGI


def build_wsgi_app(ks: Keystile) -> Any:
    from keystile.wsgi import KeystileMiddleware, principal_of, request_path, requires

    def respond(start_response: Any, body: Any, status: str = "200 OK") -> list[bytes]:
        data = json.dumps(body).encode()
        start_response(
            status, [("content-type", "application/json"), ("content-length", str(len(data)))]
        )
        return [data]

    def whoami(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return respond(start_response, principal_fields(principal_of(environ)))

    def exempt(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return respond(start_response, {"ok": True, "principal": "keystile.principal" in environ})

    routes = {
        "/whoami": whoami,
        "/read": requires("read")(whoami),
        "/write": requires("write")(whoami),
        "/health": exempt,
        "/public/x": exempt,
        "/public/principal": whoami,
        **wsgi_quota_routes(),
    }

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        route = routes.get(request_path(environ))
        if route is None:
            return respond(start_response, {"detail": "Not Found"}, "404 Not Found")
        result: Iterable[bytes] = route(environ, start_response)
        return result

    return KeystileMiddleware(app, keystile=ks)


def make_wsgi(ks: Keystile) -> Harness:
    return WSGIHarness("wsgi", build_wsgi_app(ks))


# ---------------------------------------------------------------------------- Flask


def build_flask_app(ks: Keystile) -> Any:
    from flask import Flask, g, request

    from keystile.flask import Keystile as FlaskKeystile
    from keystile.flask import current_principal, requires

    app = Flask("keystile_harness")
    FlaskKeystile(app, keystile=ks)
    add_flask_quota_routes(app)

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return principal_fields(g.principal)

    @app.get("/read")
    @requires("read")
    def read() -> dict[str, Any]:
        return principal_fields(request.state.principal)  # type: ignore[attr-defined]

    @app.get("/write")
    @requires("write")
    def write() -> dict[str, Any]:
        return principal_fields(g.principal)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return _exempt_body(request.state)  # type: ignore[attr-defined]

    @app.get("/public/x")
    def public() -> dict[str, Any]:
        return _exempt_body(request.state)  # type: ignore[attr-defined]

    @app.get("/public/principal")
    def public_principal() -> dict[str, Any]:
        return principal_fields(current_principal())

    return app


def make_flask(ks: Keystile) -> Harness:
    return WSGIHarness("flask", build_flask_app(ks))


# --------------------------------------------------------------------------- Django


def django_overrides(ks: Keystile, urlconf: str) -> Any:
    from django.test import override_settings

    from ..djangoproj import settings as project

    project.configure()
    return override_settings(KEYSTILE=ks, ROOT_URLCONF=f"{project.PACKAGE}.{urlconf}")


class DjangoSyncHarness:
    """``django.test.Client`` on the sync stack, the environ built as a WSGI server would."""

    name = "django-sync"

    def __init__(self, ks: Keystile, urlconf: str = "urls") -> None:
        from ..djangoproj import settings as project

        project.configure()
        from django.test import Client

        self.ks = ks
        self.urlconf = urlconf
        self.client = Client()

    def overrides(self) -> Any:
        return django_overrides(self.ks, self.urlconf)

    def request(self, method: str, path: str, headers: Headers = None) -> Result:
        environ = server_environ(method, path, headers)
        extra = {k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_"))}
        with self.overrides():
            response = self.client.generic(method, path, **extra)
            try:  # as a WSGI server does: send the body, then close it, come what may
                streamed = response.streaming
                body = b"".join(response.streaming_content) if streamed else response.content
            finally:
                response.close()
        return _result(response.status_code, response.headers.items(), body)

    def close(self) -> None:
        pass


def _with_lifespan(app: Any) -> Any:
    """Django's ASGI handler refuses lifespan events; answer them so one TestClient (one
    event loop, as the engine's async Redis client needs) can serve every request."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapper


class DjangoAsyncHarness(ASGIHarness):
    """Django's ASGI handler (async middleware stack, async views) in-process."""

    def __init__(self, ks: Keystile, urlconf: str = "urls_async") -> None:
        from ..djangoproj import settings as project

        project.configure()
        from django.core.handlers.asgi import ASGIHandler

        self.overrides = django_overrides(ks, urlconf)
        self.handler = ASGIHandler()
        super().__init__("django-async", _with_lifespan(self.handler), ks)

    def request(self, method: str, path: str, headers: Headers = None) -> Result:
        with self.overrides:
            return super().request(method, path, headers)


class DRFHarness(DjangoSyncHarness):
    """The DRF app (tests/drfproj) on the sync stack: behind keystile's middleware, or
    (``middleware=False``) authenticated and settled by ``keystile.drf`` alone; ``settings``
    override the app's (``REST_FRAMEWORK={}``: DRF's defaults)."""

    def __init__(self, ks: Keystile, middleware: bool = True, **settings: Any) -> None:
        super().__init__(ks)
        self.name = "drf" if middleware else "drf-alone"
        self.middleware = middleware
        self.settings = settings

    def overrides(self) -> Any:
        from django.test import override_settings

        from ..drfproj import settings_for

        return override_settings(KEYSTILE=self.ks, **settings_for(self.middleware, **self.settings))


def make_drf(ks: Keystile) -> Harness:
    return DRFHarness(ks)


def make_django_sync(ks: Keystile) -> Harness:
    return DjangoSyncHarness(ks)


def make_django_async(ks: Keystile) -> Harness:
    return DjangoAsyncHarness(ks)


# ------------------------------------------------------------------- quota routes
#
# Served by every harness, for the settlement tests (tests/behaviour/test_settlement.py) and
# the quota tests (tests/test_wsgi.py): see the routes in the docstring of :mod:`.harness`.


def wsgi_quota_routes() -> dict[str, Any]:
    from urllib.parse import parse_qs

    from keystile._core.principal import check_permissions
    from keystile.wsgi import cost, principal_of, requires

    def respond(start_response: Any, body: Any, status: int = 200) -> list[bytes]:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        start_response(f"{status} X", [("content-type", "application/json")])
        return [data]

    def arg(environ: dict[str, Any], name: str) -> int:
        return int(parse_qs(environ.get("QUERY_STRING", ""))[name][0])

    def home(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return respond(start_response, quota_body(principal_of(environ)))

    def expensive(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        principal = principal_of(environ)
        assert principal.meter is not None
        return respond(
            start_response, {"reserved": principal.meter.reserved, "used": principal.quota.used}
        )

    def charged(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        principal_of(environ).charge(arg(environ, "n"))
        return respond(start_response, b"ok")

    def failing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return respond(start_response, b"upstream broke", arg(environ, "s"))

    def boom(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("handler bug")

    def stream(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        principal, n = principal_of(environ), arg(environ, "n")
        start_response("200 OK", [("content-type", "text/plain")])
        for _ in range(3):
            yield b"chunk "
        principal.charge(n)

    def stream_refused(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        principal = principal_of(environ)
        start_response("200 OK", [("content-type", "text/plain")])
        yield b"chunk "
        check_permissions(principal, ("admin",))

    def admin(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return respond(start_response, b"admin")

    return {
        "/": home,
        "/expensive": cost(3)(expensive),
        "/expensive-charged": cost(4)(charged),
        "/charged": charged,
        "/failing": failing,
        "/boom": boom,
        "/needs-admin": requires("admin")(admin),
        "/stream": stream,
        "/stream-refused": stream_refused,
    }


def add_flask_quota_routes(app: Any) -> None:
    from flask import Response, g, request, stream_with_context

    from keystile._core.principal import check_permissions
    from keystile.flask import cost, requires

    @app.get("/")
    def home() -> dict[str, Any]:
        return quota_body(g.principal)

    @app.get("/expensive")
    @cost(3)
    def expensive() -> dict[str, Any]:
        return {"reserved": g.principal.meter.reserved, "used": g.principal.quota.used}

    @app.get("/expensive-charged")
    @cost(4)
    def expensive_charged() -> str:
        g.principal.charge(int(request.args["n"]))
        return "ok"

    @app.get("/charged")
    def charged() -> str:
        g.principal.charge(int(request.args["n"]))
        return "ok"

    @app.get("/failing")
    def failing() -> tuple[str, int]:
        return "upstream broke", int(request.args["s"])

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("handler bug")

    @app.get("/needs-admin")
    @requires("admin")
    def needs_admin() -> str:
        return "admin"

    @app.get("/stream")
    def stream() -> Response:
        principal, n = g.principal, int(request.args["n"])

        def body() -> Any:
            for _ in range(3):
                yield "chunk "
            principal.charge(n)

        return Response(stream_with_context(body()))

    @app.get("/stream-refused")
    def stream_refused() -> Response:
        principal = g.principal

        def body() -> Any:
            yield "chunk "
            check_permissions(principal, ("admin",))

        return Response(stream_with_context(body()))


#: The WSGI family's harnesses, for tests/test_wsgi.py: they all serve the quota routes.
QUOTA_HARNESSES: dict[str, Callable[[Keystile], Harness]] = {
    "wsgi": lambda ks: make_wsgi(ks),
    "flask": lambda ks: make_flask(ks),
    "django-sync": lambda ks: DjangoSyncHarness(ks, "urls"),
    "django-async": lambda ks: DjangoAsyncHarness(ks, "urls_async"),
}


#: name -> factory(engine) -> Harness, like ``harness.HARNESSES``.
SYNC_HARNESSES: dict[str, Callable[[Keystile], Harness]] = {
    "wsgi": make_wsgi,
    "flask": make_flask,
    "django-sync": make_django_sync,
    "django-async": make_django_async,
    "drf": make_drf,
}
