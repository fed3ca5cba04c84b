"""keystile.flask: the extension (init_app, app.config), g/request.state, decorators on sync
and async views, refusals as Flask responses, settlement at close, and the example app.
(The shared behaviour suite and the quota suite run Flask too: see tests/behaviour and
tests/test_wsgi.py.)"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

flask = pytest.importorskip("flask")

from flask import Flask, Response, g, request  # noqa: E402

from keystile import Keystile as Engine  # noqa: E402
from keystile._core.errors import AuthError  # noqa: E402
from keystile.flask import Keystile, cost, current_principal, requires  # noqa: E402

from .conftest import FAST_ARGON2, Clock  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "acct_1"
Make = Callable[..., Engine]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def ks(make_keystile: Make, clock: Clock) -> Engine:
    return make_keystile(clock=clock, monthly_page_limit=10, exempt_paths=["/health"])


@pytest.fixture
def token(ks: Engine) -> str:
    return ks.keys.create(ACCOUNT, "app", permissions=["read"]).token


def used(ks: Engine) -> int:
    return ks.quotas.usage(ACCOUNT).pages


def build(ks: Engine, **config: Any) -> Flask:
    app = Flask("keystile_test")
    app.config.update(config)
    Keystile(app, keystile=ks)

    @app.get("/me")
    def me() -> dict[str, Any]:
        state = request.state  # type: ignore[attr-defined]
        assert state.principal is g.principal is current_principal()
        assert state.keystile is ks
        return {"account": g.principal.account_id, "method": g.principal.auth_method}

    @app.get("/health")
    def health() -> dict[str, Any]:
        state = request.state  # type: ignore[attr-defined]
        return {"state": hasattr(state, "principal"), "g": "principal" in g}

    @app.get("/read-async")
    @requires("read")
    async def read_async() -> dict[str, Any]:
        return {"account": current_principal().account_id}

    @app.get("/admin-async")
    @requires("admin")
    async def admin_async() -> str:
        return "never"

    @app.get("/dear-async")
    @cost(4)
    async def dear_async() -> dict[str, Any]:
        return {"reserved": g.principal.meter.reserved}

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("handler bug")

    @app.get("/stream")
    def stream() -> Response:
        principal = g.principal

        def body() -> Iterator[bytes]:
            yield b"a"
            principal.charge(7)
            yield b"b"

        return Response(body())

    return app


def test_principal_on_g_and_request_state(ks: Engine, token: str) -> None:
    client = build(ks).test_client()
    response = client.get("/me", headers=bearer(token))
    assert response.json == {"account": ACCOUNT, "method": "bearer"}
    assert response.headers["x-ratelimit-remaining"] == "9"
    assert client.get("/health", headers=bearer(token)).json == {"state": False, "g": False}
    assert used(ks) == 1


def test_refusals_are_rendered_from_the_core_table(ks: Engine) -> None:
    client = build(ks).test_client()
    response = client.get("/me", headers={"x-api-key": "garbage"})
    assert response.status_code == 401
    assert response.json["error"]["code"] == "AUTH_002"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == (
        'Bearer realm="api", error="invalid_token", error_description="Invalid API key."'
    )
    assert response.headers["cache-control"] == "no-store"


def test_keystile_runs_first_and_refusals_still_get_after_request_hooks(ks: Engine) -> None:
    app = Flask("hooks")
    ran: list[str] = []
    app.before_request(lambda: ran.append("app before_request") and None)

    @app.after_request
    def cors(response: Response) -> Response:  # what a CORS extension does
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    Keystile(app, keystile=ks)
    app.add_url_rule("/", "index", lambda: "ok")
    response = app.test_client().get("/")
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert ran == []  # the app's own before_request never saw the refused request


def test_async_views_with_requires_and_cost(ks: Engine, token: str) -> None:
    pytest.importorskip("asgiref")  # Flask's async views need it
    client = build(ks).test_client()
    assert client.get("/read-async", headers=bearer(token)).json == {"account": ACCOUNT}
    refused = client.get("/admin-async", headers=bearer(token))
    assert (refused.status_code, refused.json["error"]["code"]) == (403, "AUTH_004")
    assert "x-ratelimit-remaining" not in refused.headers
    assert client.get("/dear-async", headers=bearer(token)).json == {"reserved": 4}
    assert used(ks) == 1 + 4  # the 403 was refunded


def test_streamed_response_is_settled_when_closed(ks: Engine, token: str) -> None:
    response = build(ks).test_client().get("/stream", headers=bearer(token))
    assert response.data == b"ab"
    assert used(ks) == 1  # the reservation, until the server closes the response
    response.close()
    assert used(ks) == 7


@pytest.mark.parametrize("propagate", [False, True])
def test_exceptions_are_refunded(ks: Engine, token: str, propagate: bool) -> None:
    client = build(ks, PROPAGATE_EXCEPTIONS=propagate).test_client()
    if propagate:
        with pytest.raises(RuntimeError, match="handler bug"):
            client.get("/boom", headers=bearer(token))
    else:
        assert client.get("/boom", headers=bearer(token), buffered=True).status_code == 500
    assert used(ks) == 0


def test_init_app_reads_app_config(tmp_path: Path) -> None:
    extension = Keystile()
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.config["KEYSTILE"] = {
            "store": f"sqlite:///{tmp_path / name}.db",
            "argon2": FAST_ARGON2,
            "exempt_paths": ["/open"],
        }
        extension.init_app(app)
        app.add_url_rule("/open", "open", lambda: "open")
        apps.append(app)
    one, two = (app.extensions["keystile"] for app in apps)
    assert one is not two and one.settings.store.endswith("one.db")
    with apps[1].app_context():
        assert extension.engine is two
    token = one.keys.create(ACCOUNT, "k").token
    assert apps[0].test_client().get("/open").status_code == 200
    assert apps[0].test_client().get("/x", headers=bearer(token)).status_code == 404
    assert apps[1].test_client().get("/x", headers=bearer(token)).status_code == 401
    one.close()
    two.close()


def test_settings_or_engine_and_bad_settings(ks: Engine) -> None:
    with pytest.raises(TypeError):
        Keystile(settings={}, keystile=ks)
    extension = Keystile(Flask("s"), settings={"store": "memory://"})
    assert extension.engine.settings.store == "memory://"
    extension.engine.close()
    app = Flask("bad")
    app.config["KEYSTILE"] = {"stor": "memory://"}
    from keystile._core.errors import ConfigError

    with pytest.raises(ConfigError, match="stor"):
        Keystile(app)
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError):
            cost(bad)  # type: ignore[arg-type]


def test_decorators_without_the_extension() -> None:
    app = Flask("bare")

    @app.get("/")
    @requires("read")
    def index() -> str:
        return "never"

    with app.test_request_context("/"), pytest.raises(AuthError) as refused:
        index()
    assert refused.value.code == "AUTH_001"


def test_the_flask_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the example keeps keys in ./keystile.db, like the CLI
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("examples.flask_app", None)
    from examples import flask_app

    engine = flask_app.keystile.engine
    try:
        token = engine.keys.create(ACCOUNT, "example", permissions=["jobs:*"]).token
        client = flask_app.app.test_client()
        assert client.get("/health").json == {"ok": True}
        assert client.get("/jobs").json["error"]["code"] == "AUTH_001"
        response = client.get("/jobs", headers=bearer(token))
        assert response.json == {"account": ACCOUNT, "jobs": []}
        assert response.headers["x-ratelimit-limit"] == "1000"
        response = client.post("/extract", headers={"x-api-key": token}, buffered=True)
        assert response.json == {"pages": 3}
        assert engine.quotas.usage(ACCOUNT).pages == 1 + 3
    finally:
        engine.close()
        sys.modules.pop("examples.flask_app", None)
