"""Flask: the :class:`Keystile` extension and the :func:`requires` / :func:`cost` decorators.

::

    app.config["KEYSTILE"] = {"exempt_paths": ["/health"]}
    keystile = Keystile(app)            # or Keystile() + keystile.init_app(app)

    @app.get("/jobs")
    @requires("jobs:read")
    def jobs(): return {"account": g.principal.account_id}

The extension authenticates before any other ``before_request`` function, so a refusal is a
normal Flask response (other extensions' ``after_request`` hooks, CORS say, still run). The
principal is ``flask.g.principal`` and ``flask.request.state.principal``. The request is
settled when the server closes the response (5xx, refusals and unhandled exceptions refunded,
as the core decides). Headers are read from the WSGI environ exactly as
:mod:`keystile.wsgi` reads them; see it for the underscore/duplicate header rules.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, has_app_context, request

from keystile._core.errors import MISSING_API_KEY, AuthError, render
from keystile._core.metering import check_route_cost
from keystile._core.principal import Principal, check_permissions
from keystile._runtime.engine import Keystile as Engine
from keystile.wsgi import environ_headers, read_body

__all__ = ["Keystile", "cost", "current_principal", "requires"]

F = TypeVar("F", bound=Callable[..., Any])
EXTENSION_KEY = "keystile"
_PENDING = "_keystile_pending"


def error_response(error: AuthError) -> Response:
    """A Flask response for ``error``, from keystile's one table."""
    rendered = render(error)
    return Response(rendered.body, status=rendered.status, headers=rendered.headers)


class Keystile:
    """The Flask extension. ``settings`` (a dict) or ``keystile`` (an engine) are optional:
    without them :meth:`init_app` reads ``app.config["KEYSTILE"]``, one engine per app."""

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
        """The engine (``engine.keys``, ``engine.quotas``): the current app's, or outside an
        app context the only app's."""
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
            settings = self.settings if self.settings is not None else app.config.get("KEYSTILE")
            engine = Engine(settings)
            if self.settings is not None:
                self._engine = engine  # one settings dict, one engine
        app.extensions[EXTENSION_KEY] = engine
        if engine not in self._engines:
            self._engines.append(engine)
        # First of all before_request functions: nothing runs for a refused request.
        app.before_request_funcs.setdefault(None, []).insert(0, functools.partial(_before, engine))
        app.after_request(functools.partial(_after, engine))
        app.teardown_request(functools.partial(_teardown, engine))
        app.register_error_handler(AuthError, functools.partial(_refused, engine))


def _body() -> bytes | None:
    """The body, for an Idempotency-Key, put back in the environ; werkzeug then builds
    ``request.stream`` (and so ``get_data``, ``form``, ``files``) from it as usual."""
    body = read_body(request.environ)
    request.__dict__.pop("stream", None)  # a cached_property, if something already read it
    return body


def engine_for(app: Flask) -> Engine:
    engine = app.extensions.get(EXTENSION_KEY)
    if not isinstance(engine, Engine):
        raise RuntimeError("keystile.flask.Keystile(app) was not set up on this app")
    return engine


def _before(engine: Engine) -> Response | None:
    state = SimpleNamespace()
    request.state = state  # type: ignore[attr-defined]
    if engine.is_exempt(request.path):
        return None
    try:
        headers = environ_headers(request.environ)
        principal = engine.authenticate(
            headers,
            request.method,
            request.path,
            query=request.environ.get("QUERY_STRING", ""),
            body=_body,  # read only for an Idempotency-Key
        )
    except AuthError as error:
        return error_response(error)
    state.principal = principal
    state.keystile = engine
    g.principal = principal
    setattr(g, _PENDING, principal)
    return None


def _after(engine: Engine, response: Response) -> Response:
    principal = g.pop(_PENDING, None)
    if isinstance(principal, Principal):
        response.headers.extend(engine.quota_headers(principal))
        # After the body: a streamed response may report its real cost while streaming.
        response.call_on_close(lambda: engine.settle(principal, response.status_code))
    return response


def _refused(engine: Engine, error: AuthError) -> Response:
    """An AuthError raised by a view (requires(), cost()): rendered from the one table.
    Refused by keystile itself: nothing was served, nothing is billed."""
    principal = g.pop(_PENDING, None)
    if isinstance(principal, Principal):
        engine.settle(principal, None)
    return error_response(error)


def _teardown(engine: Engine, exc: BaseException | None) -> None:
    principal = g.pop(_PENDING, None)
    if isinstance(principal, Principal):  # no response was made: an unhandled exception
        engine.settle(principal, None)


def current_principal() -> Principal:
    """The principal of the current request (raises AUTH_001 when there is none)."""
    principal = g.get("principal")
    if not isinstance(principal, Principal):
        raise AuthError(MISSING_API_KEY)
    return principal


def _wrap_view(check: Callable[[], None]) -> Callable[[F], F]:
    # Flask runs an async view in an event loop of its own per request, so the check stays
    # blocking (the engine's async Redis client belongs to one loop).
    def decorate(view: F) -> F:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_view(*args: Any, **kwargs: Any) -> Any:
                check()
                return await view(*args, **kwargs)

            return async_view  # type: ignore[return-value]

        @functools.wraps(view)
        def sync_view(*args: Any, **kwargs: Any) -> Any:
            check()
            return view(*args, **kwargs)

        return sync_view  # type: ignore[return-value]

    return decorate


def requires(*permissions: str) -> Callable[[F], F]:
    """View decorator: every permission must be granted (``*`` wildcards in grants)."""

    def check() -> None:
        check_permissions(current_principal(), permissions)

    return _wrap_view(check)


def cost(pages: int) -> Callable[[F], F]:
    """View decorator: the view costs ``pages`` (reserved before it runs; 429 if over).

    The view may still report the real cost with ``g.principal.charge(n)``."""
    check_route_cost(pages)

    def check() -> None:
        principal = current_principal()
        engine_for(current_app).reserve(principal, pages)

    return _wrap_view(check)
