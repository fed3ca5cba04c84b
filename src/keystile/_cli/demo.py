"""``keystile demo``: an example API on the embedded defaults, with a working key printed."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

from keystile._core.settings import redact_url
from keystile._runtime.engine import Keystile

DEMO_ACCOUNT = "acct_demo"


def build_demo_app(keystile: Keystile) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from keystile.starlette import KeystileMiddleware, management_mount, requires

    async def index(request: Request) -> JSONResponse:
        return JSONResponse({"service": "keystile demo", "try": "/v1/whoami"})

    async def whoami(request: Request) -> JSONResponse:
        p = request.state.principal
        return JSONResponse(
            {
                "key_id": p.key_id,
                "account_id": p.account_id,
                "environment": p.environment,
                "auth_method": p.auth_method,
                "permissions": sorted(p.permissions),
            }
        )

    @requires("extract")
    async def extract(request: Request) -> JSONResponse:
        return JSONResponse({"pages": 1, "markdown": "# Hello from keystile"})

    @requires("admin")
    async def admin(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/v1/whoami", whoami),
            Route("/v1/extract", extract, methods=["POST"]),
            Route("/v1/admin", admin),
            management_mount("/manage", keystile),
        ]
    )
    app.add_middleware(KeystileMiddleware, keystile=keystile)
    return app


def run_demo(host: str = "127.0.0.1", port: int = 8000, store: str | None = None) -> None:
    try:
        import uvicorn
    except ImportError:
        raise SystemExit(
            "keystile demo needs the demo extra: pip install 'keystile[demo]'"
        ) from None
    # Bound before the key is made: a busy port must not print curl lines for someone else's
    # server. Port 0 lets the system pick one.
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise SystemExit(
            f"keystile demo: cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "is another demo running? Pick another port with --port (0: any free one)."
        ) from None
    port = listener.getsockname()[1]
    if store is None:
        store = "sqlite:///" + str(Path(tempfile.mkdtemp(prefix="keystile-demo-")) / "keys.db")
    try:
        # A store that cannot be opened or written raises ConfigError or BackendError: the
        # command line reports it as one line; no key, no curl lines.
        keystile = Keystile({"store": store, "exempt_paths": ["/"], "monthly_page_limit": 1000})
    except BaseException:
        listener.close()
        raise
    try:
        created = keystile.keys.create(
            DEMO_ACCOUNT, "Demo key", permissions=["extract", "read*"], owner="demo@example.com"
        )
    except BaseException:
        listener.close()
        keystile.close()
        raise
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(
        f"""
keystile demo: an API protected by keystile (store {redact_url(store)}, in-process cache)

Your demo key (shown once):   {created.token}
Key id + secret form:         x-api-key: {created.key_id}
                              x-api-secret: {created.secret}

  curl -s {base}/v1/whoami -H "Authorization: Bearer {created.token}"
  curl -s -X POST {base}/v1/extract -H "x-api-key: {created.token}"
  curl -s {base}/v1/whoami                       # 401 AUTH_001 missing_api_key
  curl -s {base}/v1/whoami -H "x-api-key: sk_live_not_a_real_key"   # 401 AUTH_002
  curl -s {base}/v1/admin -H "x-api-key: {created.token}"            # 403 AUTH_004
  curl -si -X POST {base}/v1/extract -H "x-api-key: {created.token}" | grep -i ratelimit
  curl -s {base}/manage/apikeys -H "x-api-key: {created.token}"      # the key management API
  curl -s {base}/manage/usage -H "x-api-key: {created.token}"        # pages this month, per key
  curl -s -X POST {base}/manage/auth/login \\
       -H "x-api-key: {created.key_id}" -H "x-api-secret: {created.secret}"   # a session token

Press Ctrl+C to stop.
""",
        flush=True,
    )
    config = uvicorn.Config(build_demo_app(keystile), log_level="warning")
    uvicorn.Server(config).run(sockets=[listener])
