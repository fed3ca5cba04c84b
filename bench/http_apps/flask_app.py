"""Flask under gunicorn (one sync worker): ``bare`` and ``keystile`` (settings from env)."""

from __future__ import annotations

from bench.http_apps import case_settings, variant
from flask import Flask


def build_app(name: str) -> Flask:
    app = Flask("bench_http")
    app.add_url_rule("/", "hello", lambda: "ok")
    if name == "keystile":
        from keystile.flask import Keystile

        Keystile(app, settings=case_settings())
    elif name != "bare":
        raise RuntimeError(f"unknown flask variant {name!r}")
    return app


app = build_app(variant())
