"""The key management HTTP API as a Flask blueprint (see :mod:`keystile._http.management`).

::

    keystile = Keystile(app)                                # the extension first
    app.register_blueprint(management_blueprint("/v1"))     # then the API under /v1

Register it after the extension is set up on the app (or pass ``keystile=``): on
registration the blueprint tells the engine its real prefix (``url_prefix`` given to
``register_blueprint`` and parent blueprints included), so ``<prefix>/auth/login`` and
``<prefix>/openapi.json`` need no key and management requests cost no pages.

Every path and method below the prefix reaches the API, which answers 404 and 405 (with
``Allow``) itself, as on every other framework; OPTIONS too (no automatic Flask answer). A
body over :data:`~keystile._http.management.MAX_BODY` bytes is a 422, read no further.
"""

from __future__ import annotations

import weakref
from typing import Any, cast

from flask import Blueprint, Flask, Response, current_app, g, request
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import BaseConverter

from keystile import Keystile as Engine
from keystile import Principal
from keystile._http.bodies import read_limited
from keystile._http.headers import environ_headers
from keystile._http.management import MAX_BODY, ApiRequest, ApiResponse, ManagementAPI
from keystile._http.mounting import management_api, mount_management
from keystile.flask import EXTENSION_KEY
from keystile.flask import Keystile as FlaskKeystile

__all__ = ["management_blueprint"]

#: Every method goes to the API (which answers 405 with ``Allow`` for the wrong ones).
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
CONVERTER = "keystile_rest"


class RestConverter(BaseConverter):
    """The rest of the path, any characters (slashes, empty, a leading slash) included, so
    ``/v1/`` and ``/v1//apikeys`` reach the API as they do on Starlette."""

    regex = ".*"
    part_isolating = False


def _engine(keystile: FlaskKeystile | Engine | None, app: Flask) -> Engine:
    if isinstance(keystile, Engine):
        return keystile
    if keystile is not None:
        with app.app_context():
            return keystile.engine
    engine = app.extensions.get(EXTENSION_KEY)
    if not isinstance(engine, Engine):
        raise RuntimeError(
            "management_blueprint(): set up keystile.flask.Keystile(app) before registering "
            "the blueprint, or pass keystile="
        )
    return engine


def read_body(limit: int = MAX_BODY) -> bytes:
    """At most ``limit`` bytes of the request body (more reads as oversized: a 422)."""
    return read_limited(request.stream.read, request.content_length, limit)


def api_request(path: str) -> ApiRequest:
    """The current Flask request as the API sees it; ``path`` is below the mount."""
    principal = g.get("principal")
    return ApiRequest(
        method=request.method,
        path=path,
        query_string=request.query_string.decode("latin-1"),
        headers=environ_headers(request.environ),
        body=read_body(),
        principal=principal if isinstance(principal, Principal) else None,
        client=request.remote_addr,
    )


def flask_response(response: ApiResponse) -> Response:
    out = Response(response.body, status=response.status, headers=response.headers)
    if not any(name.lower() == "content-type" for name, _ in response.headers):
        del out.headers["Content-Type"]  # no Flask default (text/html) on a bodiless 204
    return out


def management_blueprint(
    url_prefix: str = "/v1",
    keystile: FlaskKeystile | Engine | None = None,
    *,
    name: str = "keystile_management",
) -> Blueprint:
    """A blueprint serving the management API under ``url_prefix``.

    ``keystile`` is the :class:`keystile.flask.Keystile` extension or an engine; without it,
    the app's extension at registration. The blueprint may be registered on several apps
    (each with its own engine) and under several prefixes (give each a ``name``)."""
    blueprint = Blueprint(name, __name__, url_prefix=url_prefix)
    apis: weakref.WeakKeyDictionary[Flask, tuple[Engine, ManagementAPI]] = (
        weakref.WeakKeyDictionary()
    )

    def setup(state: BlueprintSetupState) -> None:
        app = cast(Flask, state.app)
        app.url_map.converters.setdefault(CONVERTER, RestConverter)
        engine = _engine(keystile, app)
        app_engine = app.extensions.get(EXTENSION_KEY)
        if isinstance(app_engine, Engine) and app_engine is not engine:
            raise ValueError(
                "management_blueprint(): its engine is not the one keystile.flask.Keystile "
                "authenticates this app's requests with"
            )
        if app not in apis or apis[app][0] is not engine:
            apis[app] = (engine, management_api(engine))
        mount_management(engine, state.url_prefix or "")
        if state.url_prefix:  # the prefix itself, no slash after it
            state.add_url_rule("", "api_root", view, **options)
        state.add_url_rule(f"/<{CONVERTER}:rest>", "api", view, **options)

    def view(rest: str = "") -> Response:
        app: Any = current_app
        api = apis[app._get_current_object()][1]
        return flask_response(api.handle(api_request("/" + rest)))

    options: dict[str, Any] = {
        "methods": METHODS,
        "provide_automatic_options": False,
        "strict_slashes": False,
        "merge_slashes": False,
    }
    blueprint.record(setup)
    return blueprint
