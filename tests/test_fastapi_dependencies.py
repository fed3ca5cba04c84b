"""keystile's FastAPI dependencies run on the event loop: no worker thread per request.

FastAPI runs a plain ``def`` dependency through ``run_in_threadpool``; counting the calls
that reach it shows which dependencies cost a thread hop.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from keystile import AuthError, Keystile, Principal
from keystile.fastapi import KeystileMiddleware, cost, get_principal, principal_of, require


def build_app(ks: Keystile) -> FastAPI:
    app = FastAPI()
    app.add_middleware(KeystileMiddleware, keystile=ks)

    @app.get("/me")
    async def me(principal: Principal = Depends(get_principal)) -> dict[str, str]:
        return {"key_id": principal.key_id}

    @app.get("/jobs", dependencies=[Depends(cost(2))])
    async def jobs(principal: Principal = Depends(require("jobs:read"))) -> dict[str, Any]:
        return {"key_id": principal.key_id, "used": principal.quota.used}  # type: ignore[union-attr]

    return app


@pytest.fixture
def counted_threads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    import fastapi.dependencies.utils as utils

    calls: list[Any] = []
    original = utils.run_in_threadpool

    async def run_in_threadpool(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(func)
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(utils, "run_in_threadpool", run_in_threadpool)
    return calls


def test_the_dependencies_are_coroutine_functions() -> None:
    assert inspect.iscoroutinefunction(get_principal.__call__)
    assert inspect.iscoroutinefunction(require("a").__call__)
    assert inspect.iscoroutinefunction(cost(1))


def test_no_dependency_runs_in_a_worker_thread(
    make_keystile: Callable[..., Keystile], counted_threads: list[Any]
) -> None:
    ks = make_keystile(monthly_page_limit=100)
    token = ks.keys.create("acct-1", "k", permissions=["jobs:read"]).token
    with TestClient(build_app(ks)) as client:
        headers = {"authorization": f"Bearer {token}"}
        assert client.get("/me", headers=headers).json()["key_id"].startswith("key_")
        body = client.get("/jobs", headers=headers).json()
        assert body["used"] == 3  # one page for /me, two reserved for /jobs
        other = ks.keys.create("acct-1", "no perms").token
        refused = client.get("/jobs", headers={"authorization": f"Bearer {other}"})
        assert refused.status_code == 403
    assert counted_threads == []


def test_principal_of_reads_the_principal_without_a_dependency(
    make_keystile: Callable[..., Keystile], counted_threads: list[Any]
) -> None:
    ks = make_keystile(monthly_page_limit=100, exempt_paths=["/open"])
    key = ks.keys.create("acct-1", "k")
    app = FastAPI()
    app.add_middleware(KeystileMiddleware, keystile=ks)
    seen: list[Any] = []

    @app.get("/me")
    @app.get("/open")
    async def me(request: Request) -> dict[str, Any]:
        try:
            principal = principal_of(request)
        except AuthError as error:  # an exempt path: no principal, as get_principal says
            seen.append(error.spec.code)
            return {"key_id": None}
        return {"key_id": principal.key_id, "used": principal.quota.used}  # type: ignore[union-attr]

    with TestClient(app) as client:
        answer = client.get("/me", headers={"authorization": f"Bearer {key.token}"})
        assert answer.json() == {"key_id": key.key_id, "used": 1}
        assert client.get("/me").json()["error"]["code"] == "AUTH_001"
        assert client.get("/open").json() == {"key_id": None}
    assert seen == ["AUTH_001"]
    assert counted_threads == []
