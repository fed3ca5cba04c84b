"""Batched usage reaches the store when the app stops: ASGI lifespan shutdown, and process exit
for WSGI and Django processes that never close their engine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from keystile import Keystile
from keystile.starlette import KeystileMiddleware

# The flusher thread must not write first: only the shutdown can have done it.
NEVER = {"usage_flush_interval": 3600, "last_used_interval": 3600}
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


def settings(db: Path, **extra: Any) -> dict[str, Any]:
    return {
        "store": f"sqlite:///{db}",
        "monthly_page_limit": 3,
        "argon2": FAST_ARGON2,
        **NEVER,
        **extra,
    }


def pages_in_store(db: Path, account: str) -> int:
    reader = Keystile(settings(db))
    try:
        return reader.usage(account).pages
    finally:
        reader.close()


def test_lifespan_shutdown_writes_usage_and_the_next_process_counts_it(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    setup = Keystile(settings(db))
    token = setup.keys.create("acct_1", "k").token
    setup.close()

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    def serve_twice() -> list[int]:
        app = Starlette(routes=[Route("/", ok)])
        app.add_middleware(KeystileMiddleware, settings=settings(db))
        with TestClient(app) as client:  # startup ... shutdown
            return [client.get("/", headers={"x-api-key": token}).status_code for _ in range(2)]

    assert serve_twice() == [200, 200]
    assert pages_in_store(db, "acct_1") == 2
    # A restarted process rebuilds its count from the store: the limit of 3 holds.
    assert serve_twice() == [200, 429]
    assert pages_in_store(db, "acct_1") == 3


def test_an_engine_nobody_closed_is_flushed_when_the_process_exits(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    setup = Keystile(settings(db))
    token = setup.keys.create("acct_1", "k").token
    setup.close()
    script = textwrap.dedent(
        f"""
        from keystile import Keystile
        ks = Keystile({settings(db)!r})
        for _ in range(2):
            ks.settle(ks.authenticate([("x-api-key", {token!r})]), 200)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert pages_in_store(db, "acct_1") == 2
    reader = Keystile(settings(db))
    try:
        (key,) = reader.keys.list("acct_1").items
        assert key.last_used_at is not None
    finally:
        reader.close()
