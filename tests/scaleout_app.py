"""The app the multi-process tests (tests/test_scaleout.py) run under real servers::

    KEYSTILE_TEST_SETTINGS='{"store": ..., "redis_url": ...}' \\
        python -m uvicorn tests.scaleout_app:app --workers 4
    KEYSTILE_TEST_SETTINGS='...' python -m gunicorn -w 4 tests.scaleout_app:flask_app

``GET /work`` answers 200 JSON (the worker's pid and the principal's account); every other
answer, keystile's refusals included, carries the worker's pid in ``x-worker-pid``, so a test
can tell which processes answered.  ``app`` (Starlette, ``KeystileMiddleware``) and
``flask_app`` (Flask, ``keystile.flask.Keystile``) are built on first access, so a server
importing one never builds the other's engine.
"""

from __future__ import annotations

import json
import os
from typing import Any

SETTINGS_ENV = "KEYSTILE_TEST_SETTINGS"
PID_HEADER = "x-worker-pid"
#: Usage reaches the store at least this often (tests wait for a flush, not 5 s).
FLUSH_INTERVAL = 0.5


def settings() -> dict[str, Any]:
    """The keystile settings from ``KEYSTILE_TEST_SETTINGS`` (JSON), with a short flush."""
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise RuntimeError(f"set {SETTINGS_ENV} to the keystile settings as JSON")
    return {"usage_flush_interval": FLUSH_INTERVAL, **json.loads(raw)}


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from keystile.starlette import KeystileMiddleware

    pid = str(os.getpid()).encode()

    async def work(request: Request) -> JSONResponse:
        principal = request.state.principal
        return JSONResponse({"pid": os.getpid(), "account": principal.account_id})

    class WorkerPid:  # outermost: keystile's own refusals get the header too
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return

            async def send_with_pid(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (PID_HEADER.encode(), pid)]
                await send(message)

            await self.app(scope, receive, send_with_pid)

    app = Starlette(routes=[Route("/work", work)])
    app.add_middleware(KeystileMiddleware, settings=settings())
    app.add_middleware(WorkerPid)
    return app


def _flask_app() -> Any:
    from flask import Flask, Response, g

    from keystile.flask import Keystile

    app = Flask(__name__)
    app.config["KEYSTILE"] = settings()
    Keystile(app)

    @app.get("/work")
    def work() -> dict[str, Any]:
        return {"pid": os.getpid(), "account": g.principal.account_id}

    @app.after_request
    def worker_pid(response: Response) -> Response:  # runs for keystile's refusals too
        response.headers[PID_HEADER] = str(os.getpid())
        return response

    return app


_BUILDERS = {"app": _starlette_app, "flask_app": _flask_app}
_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name not in _BUILDERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _built:
        _built[name] = _BUILDERS[name]()
    return _built[name]
