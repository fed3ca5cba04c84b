"""Starlette under uvicorn: ``bare``, ``least-key-check``, ``naive-redis-get`` and ``keystile``
(settings from env).

``least-key-check`` is the least a key check can cost: one header scan and one dict lookup.
``naive-redis-get`` is the floor any Redis-backed auth has to pay: a pure-ASGI middleware
doing one ``GET`` of a fixed key per request on one module-level ``redis.asyncio`` client,
then calling the app. It checks nothing.
"""

from __future__ import annotations

from typing import Any

from bench.http_apps import NAIVE_REDIS_KEY, case_settings, redis_url, variant
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

Scope = dict[str, Any]
ASGIApp = Any


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


class NaiveRedisGet:
    """Pure ASGI: one Redis GET per HTTP request, then the app."""

    def __init__(self, app: ASGIApp, client: Redis) -> None:
        self.app = app
        self.client = client

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.client.get(NAIVE_REDIS_KEY)
        await self.app(scope, receive, send)


class LeastKeyCheck:
    """The least a key check does: one header scan, one dict lookup, a principal attached."""

    def __init__(self, app: ASGIApp, principals: dict[bytes, object]) -> None:
        self.app = app
        self.principals = principals

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            principal = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    principal = self.principals.get(value)
                    break
            if principal is None:
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            scope["state"] = {**scope.get("state", {}), "principal": principal}
        await self.app(scope, receive, send)


def naive_client() -> Redis:
    pool = BlockingConnectionPool.from_url(redis_url(), max_connections=64)
    return Redis(connection_pool=pool)


def build_app(name: str) -> Starlette:
    app = Starlette(routes=[Route("/", hello)])
    if name == "naive-redis-get":
        app.add_middleware(NaiveRedisGet, client=NAIVE_CLIENT)
    elif name == "least-key-check":
        header = case_settings()["authorization"].encode("latin-1")
        app.add_middleware(LeastKeyCheck, principals={header: object()})
    elif name == "keystile":
        from keystile.starlette import KeystileMiddleware

        app.add_middleware(KeystileMiddleware, settings=case_settings())
    elif name != "bare":
        raise RuntimeError(f"unknown starlette variant {name!r}")
    return app


NAIVE_CLIENT: Redis | None = naive_client() if variant() == "naive-redis-get" else None
app = build_app(variant())
