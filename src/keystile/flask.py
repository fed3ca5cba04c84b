"""Flask: the :class:`Keystile` extension and the :func:`requires` / :func:`cost` decorators::

    keystile = Keystile(app)  # settings from app.config["KEYSTILE"]; or Keystile() + init_app
    @app.get("/jobs")
    @requires("jobs:read")  # the principal: g.principal (and request.state.principal)
    def jobs(): return {"account": g.principal.account_id}

Keystile runs before every other ``before_request`` function; a refusal is a normal Flask
response (other ``after_request`` hooks, CORS say, still run).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from flask import Flask, Response, current_app, g, has_app_context, request

from keystile import AuthError, Principal
from keystile import Keystile as Engine
from keystile._core.errors import render
from keystile._http import guards
from keystile._http.bodies import read_environ_body
from keystile._http.exchange import Exchange
from keystile._http.headers import environ_request
from keystile._http.mounting import config_settings

__all__ = ["Keystile", "cost", "current_principal", "requires"]

EXTENSION_KEY = "keystile"
_PENDING = "_keystile_pending"


def error_response(error: AuthError) -> Response:
    rendered = render(error, request.headers.get("accept"))
    return Response(rendered.body, status=rendered.status, headers=list(rendered.headers))


class Keystile:
    """The extension: ``settings=`` (a dict), ``keystile=`` (an engine) or, without them, one
    engine per app from ``app.config["KEYSTILE"]`` (or flat ``KEYSTILE_STORE``-style keys)."""

    def __init__(
        self,
        app: Flask | None = None,
        settings: Mapping[str, Any] | None = None,
        *,
        keystile: Engine | None = None,
    ) -> None:
        if settings is not None and keystile is not None:
            raise TypeError("pass settings or keystile, not both")
        self.settings = settings
        self._engine = keystile
        self._engines: list[Engine] = []
        if app is not None:
            self.init_app(app)

    @property
    def engine(self) -> Engine:
        """The current app's engine (outside an app context: the only app's)."""
        if self._engine is not None:
            return self._engine
        if has_app_context():
            return engine_for(current_app)
        if len(self._engines) == 1:
            return self._engines[0]
        raise RuntimeError("several apps use this extension: ask inside an app context")

    def init_app(self, app: Flask) -> None:
        engine = self._engine
        if engine is None:
            engine = Engine(config_settings(app.config) if self.settings is None else self.settings)
            if self.settings is not None:
                self._engine = engine  # one settings dict, one engine
        app.extensions[EXTENSION_KEY] = engine
        if engine not in self._engines:
            self._engines.append(engine)
        # First of all before_request functions: nothing runs for a refused request. Not a
        # functools.partial: Flask asks per request whether a hook is a coroutine, slow for those.
        app.before_request_funcs.setdefault(None, []).insert(0, lambda: _before(engine))
        app.after_request(_after)
        app.teardown_request(_refund)
        app.register_error_handler(AuthError, _refused)


def engine_for(app: Flask) -> Engine:
    engine = app.extensions.get(EXTENSION_KEY)
    if not isinstance(engine, Engine):
        raise RuntimeError("keystile.flask.Keystile(app) was not set up on this app")
    return engine


def _body() -> bytes | None:  # for an Idempotency-Key, put back where werkzeug reads it
    body = read_environ_body(request.environ)
    request.__dict__.pop("stream", None)  # a cached_property, if something already read it
    return body


def _before(engine: Engine) -> Response | None:
    # Flask's globals are proxies, each read a lookup: resolved once here.
    req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
    req.state = state = SimpleNamespace(keystile=engine)
    path, environ = req.path, req.environ
    if engine.is_exempt(path):
        return None
    exchange = Exchange(engine)
    try:
        headers, extra = environ_request(environ)
        principal = engine.authenticate(headers, req.method, path, body=_body, **extra)
    except AuthError as error:
        return error_response(error)
    state.principal = exchange.principal = ctx.principal = principal
    setattr(ctx, _PENDING, exchange)
    return None


def _after(response: Response) -> Response:
    exchange: Exchange | None = g.pop(_PENDING, None)
    if exchange is not None:
        response.headers.extend(exchange.start(response.status_code))
        if response.is_streamed:  # refunded if it fails; settled after it, at its real cost
            response.response = exchange.watch(response.response)  # type: ignore[assignment]
        response.call_on_close(exchange.settle)
    return response


def _refund(exc: BaseException | None = None) -> None:  # no response: refunded, if pending
    exchange: Exchange | None = g.pop(_PENDING, None)
    if exchange is not None:
        exchange.refund()


def _refused(error: AuthError) -> Response:  # raised by a view: requires(), cost()
    _refund()
    return error_response(error)


def current_principal() -> Principal:
    """The principal of the current request (raises AUTH_001 when there is none)."""
    return guards.principal_of(request)


# A view's arguments are its URL's; the request is Flask's global. Blocking checks: Flask runs
# an async view in a loop of its own per request, and the async Redis client is per loop.
requires, cost = guards.decorators(
    functools.partial(guards.guarded, find_request=lambda *_: request, blocking=True)
)
