"""FastAPI under uvicorn: ``bare``, ``keystile-middleware``, ``keystile-depends``,
``keystile-request``, ``noop-depends`` and ``safe-api-keys``, all on the same ``async def``
route returning ``{"ok": true}``.

- ``keystile-middleware``: keystile's middleware; the route does not ask for the principal.
- ``keystile-depends``: the same, and the route takes ``Depends(get_principal)``.
- ``keystile-request``: the same, and the route takes ``request: Request`` and reads
  ``principal_of(request)``: the principal without a dependency for FastAPI to solve.
- ``noop-depends``: the middleware, and the route takes ``Depends`` of an ``async def``
  that only returns (it takes the request, as ``get_principal`` does): what FastAPI's
  solving of one dependency costs, whatever the dependency does.
- ``safe-api-keys``: that package's ``APIKeyAuth`` dependency, as its FastAPI example shows
  (``AsyncKeyManager``, ``auth.install(app)``, ``Depends(auth.scopes(...))``), on its
  standard-library ``SQLiteStore`` (the bench issues the key into it before starting).
"""

from __future__ import annotations

from typing import Any

from bench.http_apps import case_settings, variant
from fastapi import Depends, FastAPI, Request

SAFE_API_KEYS_SCOPE = "bench:read"


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    return app


async def nothing(request: Request) -> None:
    return None


def keystile_app(with_depends: bool, noop: bool = False, request: bool = False) -> FastAPI:
    from keystile import Principal
    from keystile.fastapi import KeystileMiddleware, get_principal, principal_of

    app = FastAPI()
    app.add_middleware(KeystileMiddleware, settings=case_settings())
    if request:

        @app.get("/")
        async def root_with_request(request: Request) -> dict[str, bool]:
            principal_of(request)
            return {"ok": True}

    elif noop:

        @app.get("/")
        async def root_with_noop(unused: None = Depends(nothing)) -> dict[str, bool]:
            return {"ok": True}

    elif with_depends:

        @app.get("/")
        async def root_with_principal(
            principal: Principal = Depends(get_principal),
        ) -> dict[str, bool]:
            return {"ok": True}

    else:

        @app.get("/")
        async def root() -> dict[str, bool]:
            return {"ok": True}

    return app


def safe_api_keys_app() -> FastAPI:
    from safe_api_keys import AsyncKeyManager, KeyRecord
    from safe_api_keys.contrib.fastapi import APIKeyAuth
    from safe_api_keys.stores import SQLiteStore

    config = case_settings()
    store = SQLiteStore(config["store_path"])
    km = AsyncKeyManager(store, prefix=config["prefix"], pepper=config["pepper"].encode())
    auth = APIKeyAuth(km)
    app = FastAPI()
    auth.install(app)

    @app.get("/")
    async def root(key: KeyRecord = Depends(auth.scopes(SAFE_API_KEYS_SCOPE))) -> dict[str, bool]:
        return {"ok": True}

    return app


def build_app(name: str) -> Any:
    if name == "bare":
        return bare_app()
    if name in ("keystile-middleware", "keystile-depends"):
        return keystile_app(with_depends=name == "keystile-depends")
    if name == "keystile-request":
        return keystile_app(with_depends=False, request=True)
    if name == "noop-depends":
        return keystile_app(with_depends=False, noop=True)
    if name == "safe-api-keys":
        return safe_api_keys_app()
    raise RuntimeError(f"unknown fastapi variant {name!r}")


app = build_app(variant())
