"""Any WSGI app: :class:`KeystileMiddleware`, :func:`requires` and :func:`cost`.

Pure WSGI (PEP 3333). Exempt paths pass straight through; every other request is
authenticated before the app runs, and the principal lands in
``environ["keystile.principal"]`` (the engine in ``environ["keystile"]``). Refusals are
rendered from keystile's one error table, metered responses get the quota headers in
``start_response``, and the request is settled once the server closes the response body.

Header names in a WSGI environ are ambiguous: ``X-Api-Key`` and ``X_Api_Key`` both arrive as
``HTTP_X_API_KEY``, and a header sent twice arrives as one value joined with ``,``. The
middleware cannot tell the spellings apart; the server must drop names with an underscore,
as gunicorn (22+, ``header_map="drop"``), waitress, Werkzeug's development server (2.3+),
Django's runserver, nginx and Apache 2.4 do by default. A ``,`` in a credential header
(no credential can contain one) is read as the header sent more than once, which keystile
refuses with AUTH_006 as it does on every other adapter.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any, Protocol

from keystile._core.credentials import CREDENTIAL_HEADERS
from keystile._core.errors import MISSING_API_KEY, AuthError, render
from keystile._core.metering import IDEMPOTENT_BODY_LIMIT, check_route_cost
from keystile._core.principal import Principal, check_permissions
from keystile._runtime.engine import Keystile, engine_from

__all__ = [
    "CREDENTIAL_HEADERS",
    "KeystileMiddleware",
    "cost",
    "engine_of",
    "environ_headers",
    "principal_of",
    "request_path",
    "requires",
]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Environ = dict[str, Any]
Headers = list[tuple[str, str]]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: Headers, exc_info: ExcInfo | None = ..., /
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

PRINCIPAL_KEY = "keystile.principal"
ENGINE_KEY = "keystile"


def environ_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The request's headers as ``(lowercase dashed name, value)`` pairs, read from the
    ``HTTP_*`` keys (and ``CONTENT_TYPE``/``CONTENT_LENGTH``) of a WSGI environ or a Django
    ``request.META``. Values stay the server's latin-1 strings: the core refuses non-ASCII.

    A credential header whose value holds a ``,`` was sent more than once (servers join
    repeats with ``,``): it is split back into its parts so the core sees the repeat."""
    headers: list[tuple[str, str]] = []
    for key, value in environ.items():
        if not isinstance(value, str):
            continue
        if key.startswith("HTTP_"):
            name = key[5:].lower().replace("_", "-")
            if "," in value and name in CREDENTIAL_HEADERS:
                headers.extend((name, part) for part in value.split(","))
            else:
                headers.append((name, value))
        elif key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            headers.append((key.lower().replace("_", "-"), value))
    return headers


def request_path(environ: Mapping[str, Any]) -> str:
    """``PATH_INFO`` as text: the path below the app's mount point, as its routes see it."""
    raw = environ.get("PATH_INFO") or "/"
    try:  # PEP 3333 carries the URL's bytes as latin-1; they are UTF-8 on the wire.
        path: str = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        path = raw
    return path


def read_body(environ: Environ) -> bytes | None:
    """The body, for an Idempotency-Key, put back for the app to read; None when it is too
    large or of unknown length (chunked) to compare."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length > IDEMPOTENT_BODY_LIMIT or length < 0:
        return None
    if length == 0:
        return b""
    body: bytes = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


def error_response(
    start_response: StartResponse, error: AuthError, exc_info: ExcInfo | None = None
) -> list[bytes]:
    """Start a refusal rendered from keystile's table; returns the body to hand the server."""
    rendered = render(error)
    if exc_info is None:
        start_response(status_line(rendered.status), list(rendered.headers))
    else:
        start_response(status_line(rendered.status), list(rendered.headers), exc_info)
    return [rendered.body]


class _Exchange:
    """One authenticated request: its status once started, and its settlement."""

    __slots__ = ("engine", "failed", "principal", "server_start", "settled", "status")

    def __init__(self, engine: Keystile, principal: Principal, server_start: StartResponse):
        self.engine = engine
        self.principal = principal
        self.server_start = server_start
        self.status: int | None = None
        self.failed = False
        self.settled = False

    def start_response(
        self, status: str, headers: Headers, exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        try:
            self.status = int(status.split(None, 1)[0])
        except (ValueError, IndexError):
            self.status = None
        extra = self.engine.quota_headers(self.principal)
        if extra:
            headers = [*headers, *extra]
        if exc_info is None:
            return self.server_start(status, headers)
        return self.server_start(status, headers, exc_info)

    def settle(self, status: int | None) -> None:
        if not self.settled:
            self.settled = True
            self.engine.settle(self.principal, status)


class _Body:
    """The app's response body; the request is settled when the server closes it."""

    __slots__ = ("_body", "_exchange")

    def __init__(self, body: Iterable[bytes], exchange: _Exchange) -> None:
        self._body = body
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except BaseException:
            self._exchange.failed = True
            raise

    def close(self) -> None:
        exchange = self._exchange
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        except BaseException:
            exchange.settle(None)
            raise
        exchange.settle(None if exchange.failed else exchange.status)


class KeystileMiddleware:
    """``app.wsgi_app = KeystileMiddleware(app.wsgi_app, settings={...})`` (or ``keystile=``)."""

    def __init__(
        self,
        app: WSGIApp,
        settings: Mapping[str, Any] | None = None,
        keystile: Keystile | None = None,
    ) -> None:
        self.app = app
        self.keystile = engine_from(settings, keystile)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        engine = self.keystile
        path = request_path(environ)
        if engine.is_exempt(path):
            return self.app(environ, start_response)
        headers = environ_headers(environ)
        try:
            principal = engine.authenticate(
                headers,
                environ.get("REQUEST_METHOD", "GET"),
                path,
                query=environ.get("QUERY_STRING", ""),
                body=lambda: read_body(environ),  # read only for an Idempotency-Key
            )
        except AuthError as error:
            return error_response(start_response, error)
        environ[PRINCIPAL_KEY] = principal
        environ[ENGINE_KEY] = engine
        exchange = _Exchange(engine, principal, start_response)
        try:
            body = self.app(environ, exchange.start_response)
        except AuthError as error:
            # Raised by requires() or cost(): rendered here, from the one table. Refused by
            # keystile itself: nothing was served, nothing is billed.
            exchange.settle(None)
            if exchange.status is None:
                return error_response(start_response, error)
            # The app had started a response: replace it (PEP 3333's exc_info; re-raises if
            # the server already sent the headers).
            return error_response(start_response, error, _exc_info())
        except BaseException:
            exchange.settle(None)  # unhandled: refunded
            raise
        return _Body(body, exchange)


def _exc_info() -> ExcInfo:
    kind, value, traceback = sys.exc_info()
    assert kind is not None and value is not None
    return kind, value, traceback


def principal_of(environ: Mapping[str, Any]) -> Principal:
    """The principal :class:`KeystileMiddleware` authenticated (or raises AUTH_001)."""
    principal = environ.get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):
        raise AuthError(MISSING_API_KEY)
    return principal


def engine_of(environ: Mapping[str, Any]) -> Keystile:
    engine = environ.get(ENGINE_KEY)
    if not isinstance(engine, Keystile):
        raise RuntimeError("cost() needs KeystileMiddleware in front of the app")
    return engine


def _guard(check: Callable[[Environ], None]) -> Callable[[WSGIApp], WSGIApp]:
    def decorate(app: WSGIApp) -> WSGIApp:
        @functools.wraps(app)
        def guarded(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            check(environ)
            return app(environ, start_response)

        return guarded

    return decorate


def requires(*permissions: str) -> Callable[[WSGIApp], WSGIApp]:
    """Wrap a WSGI app (or route handler taking ``environ, start_response``): every
    permission must be granted, else AUTH_004, rendered by the middleware."""

    def check(environ: Environ) -> None:
        check_permissions(principal_of(environ), permissions)

    return _guard(check)


def cost(pages: int) -> Callable[[WSGIApp], WSGIApp]:
    """Wrap a WSGI app: it costs ``pages`` (reserved before it runs; BILLING_001 if over)."""
    check_route_cost(pages)

    def check(environ: Environ) -> None:
        engine_of(environ).reserve(principal_of(environ), pages)

    return _guard(check)
