"""Any WSGI app: :class:`KeystileMiddleware`, :func:`requires` and :func:`cost`.

Pure WSGI (PEP 3333). Exempt paths pass straight through; every other request is
authenticated before the app runs, and the principal lands in
``environ["keystile.principal"]`` (the engine in ``environ["keystile"]``). Metered responses
get the quota headers in ``start_response``; the request is settled once the server closes
the response body (the rules are :mod:`keystile._http.exchange`'s).

Header names in a WSGI environ are ambiguous: ``X-Api-Key`` and ``X_Api_Key`` both arrive as
``HTTP_X_API_KEY``, and a header sent twice arrives as one value joined with ``,``. The
middleware cannot tell the spellings apart; the server must drop names with an underscore,
as gunicorn (22+, ``header_map="drop"``), waitress, Werkzeug's development server (2.3+),
Django's runserver, nginx and Apache 2.4 do by default. A ``,`` in a credential header
(no credential can contain one) is read as the header sent more than once: AUTH_006.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from http import HTTPStatus
from types import TracebackType
from typing import Any, Protocol

from keystile import AuthError, Keystile
from keystile._core.credentials import CREDENTIAL_HEADERS as CREDENTIAL_HEADERS
from keystile._core.errors import render
from keystile._http import guards
from keystile._http.bodies import read_environ_body as read_body
from keystile._http.exchange import Exchange, SettledOnClose
from keystile._http.guards import ENGINE_KEY as ENGINE_KEY
from keystile._http.guards import PRINCIPAL_KEY as PRINCIPAL_KEY
from keystile._http.guards import engine_of as engine_of
from keystile._http.guards import principal_of as principal_of
from keystile._http.headers import environ_headers as environ_headers
from keystile._http.headers import environ_request
from keystile._http.headers import request_path as request_path
from keystile._http.mounting import WrapsApp

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Environ = dict[str, Any]
Headers = list[tuple[str, str]]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: Headers, exc_info: ExcInfo | None = ..., /
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


def error_response(
    environ: Environ,
    start_response: StartResponse,
    error: AuthError,
    exc_info: ExcInfo | None = None,
) -> list[bytes]:
    """Start a refusal rendered from keystile's table; returns the body to hand the server."""
    rendered = render(error, environ.get("HTTP_ACCEPT"))
    if exc_info is None:
        start_response(status_line(rendered.status), list(rendered.headers))
    else:
        start_response(status_line(rendered.status), list(rendered.headers), exc_info)
    return [rendered.body]


class _WSGIExchange(Exchange):
    __slots__ = ("server_start",)

    def __init__(self, engine: Keystile, server_start: StartResponse) -> None:
        super().__init__(engine)
        self.server_start = server_start

    def start_response(
        self, status: str, headers: Headers, exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        try:
            code: int | None = int(status.split(None, 1)[0])
        except (ValueError, IndexError):
            code = None
        extra = self.start(code)
        if extra:
            headers = [*headers, *extra]
        if exc_info is None:
            return self.server_start(status, headers)
        return self.server_start(status, headers, exc_info)


class KeystileMiddleware(WrapsApp[WSGIApp]):
    """``app.wsgi_app = KeystileMiddleware(app.wsgi_app, settings={...})`` (or ``keystile=``)."""

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        engine = self.keystile
        path = request_path(environ)
        if engine.is_exempt(path):
            try:
                return self.app(environ, start_response)
            except AuthError as error:  # the app asked for a principal where no key is checked
                exc_info = (type(error), error, error.__traceback__)
                return error_response(environ, start_response, error, exc_info)
        exchange = _WSGIExchange(engine, start_response)
        try:
            headers, extra = environ_request(environ)
            principal = exchange.principal = engine.authenticate(
                headers,
                environ.get("REQUEST_METHOD", "GET"),
                path,
                body=lambda: read_body(environ),
                **extra,
            )
        except AuthError as error:
            return error_response(environ, start_response, error)
        environ[PRINCIPAL_KEY] = principal
        environ[ENGINE_KEY] = engine
        try:
            body = self.app(environ, exchange.start_response)
        except BaseException as exc:
            refusal = exchange.fail(exc)  # refunded: raised by requires() or cost(), or a bug
            if refusal is not None:
                return error_response(environ, start_response, refusal)
            if not isinstance(exc, AuthError):
                raise
            # The app had started a response: replace it (PEP 3333's exc_info; re-raises if
            # the server already sent the headers).
            return error_response(environ, start_response, exc, (type(exc), exc, exc.__traceback__))
        return SettledOnClose(body, exchange)


def _environ(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0]  # a WSGI app is called with (environ, start_response)


requires, cost = guards.decorators(
    functools.partial(guards.guarded, find_request=_environ, is_async=False)
)
