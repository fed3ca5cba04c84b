"""The OpenAPI document of a FastAPI app using keystile's dependencies, and its docs pages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from keystile import Keystile, Principal
from keystile.fastapi import KeystileMiddleware, document_key_pair, get_principal, require

SCHEMES = {
    "BearerToken": {"type": "http", "scheme": "bearer"},
    "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    "ApiSecret": {"type": "apiKey", "in": "header", "name": "x-api-secret"},
}


def build_app(ks: Keystile, key_pair: bool = True) -> FastAPI:
    app = FastAPI(title="jobs")
    app.add_middleware(KeystileMiddleware, keystile=ks)

    @app.get("/jobs")
    def jobs(principal: Principal = Depends(require("jobs:read"))) -> dict[str, str]:
        return {"key_id": principal.key_id}

    @app.post("/jobs")
    def create_job(
        principal: Principal = Depends(require("jobs:read", "jobs:write")),
        again: Principal = Depends(require("jobs:write")),
    ) -> dict[str, str]:
        return {"key_id": principal.key_id}

    @app.get("/me")
    def me(principal: Principal = Depends(get_principal)) -> dict[str, str]:
        return {"key_id": principal.key_id}

    @app.get("/status")
    def status() -> dict[str, bool]:  # exempt in the tests below; no keystile dependency
        return {"ok": True}

    if key_pair:
        document_key_pair(app)
    return app


@pytest.fixture
def docs_exempt(make_keystile: Callable[..., Keystile]) -> Keystile:
    return make_keystile(exempt_paths=["/docs", "/docs/*", "/openapi.json", "/status"])


@pytest.fixture
def client(docs_exempt: Keystile) -> Iterator[TestClient]:
    with TestClient(build_app(docs_exempt)) as test_client:
        yield test_client


def requirement_of(doc: dict[str, Any], path: str, method: str) -> list[dict[str, list[str]]]:
    security: list[dict[str, list[str]]] = doc["paths"][path][method].get("security", [])
    return security


def test_security_schemes_are_listed(docs_exempt: Keystile) -> None:
    doc = build_app(docs_exempt).openapi()
    schemes = doc["components"]["securitySchemes"]
    assert set(schemes) == set(SCHEMES)
    for name, expected in SCHEMES.items():
        assert expected.items() <= schemes[name].items(), schemes[name]
        assert schemes[name].get("description")


@pytest.mark.parametrize(("path", "method"), [("/jobs", "get"), ("/jobs", "post"), ("/me", "get")])
def test_routes_with_a_keystile_dependency_carry_the_security_requirement(
    docs_exempt: Keystile, path: str, method: str
) -> None:
    doc = build_app(docs_exempt).openapi()
    security = requirement_of(doc, path, method)
    names = [name for requirement in security for name in requirement]
    assert {"BearerToken", "ApiKey"} <= set(names), security
    distinct = {frozenset(requirement) for requirement in security}
    assert len(security) == len(distinct), f"a requirement listed twice: {security}"
    for requirement in security:
        assert all(scopes == [] for scopes in requirement.values())
    # No parameter leaks into the document: the schemes read the headers, not the route.
    parameters = doc["paths"][path][method].get("parameters", [])
    assert not [p for p in parameters if p["name"].lower().startswith(("x-api", "authorization"))]


def test_routes_without_a_keystile_dependency_have_no_requirement(docs_exempt: Keystile) -> None:
    doc = build_app(docs_exempt).openapi()
    assert "security" not in doc["paths"]["/status"]["get"]
    assert "security" not in doc  # nothing global


def test_the_key_pair_is_one_requirement(docs_exempt: Keystile) -> None:
    app = build_app(docs_exempt)
    doc = app.openapi()
    for path, method in [("/jobs", "get"), ("/jobs", "post"), ("/me", "get")]:
        assert requirement_of(doc, path, method) == [
            {"BearerToken": []},
            {"ApiKey": []},
            {"ApiKey": [], "ApiSecret": []},
        ]
    assert "security" not in doc["paths"]["/status"]["get"]
    assert app.openapi() is doc  # built once and cached; asking again adds nothing
    assert requirement_of(app.openapi(), "/me", "get").count({"ApiKey": [], "ApiSecret": []}) == 1


def test_without_the_key_pair_the_secret_is_never_offered(docs_exempt: Keystile) -> None:
    doc = build_app(docs_exempt, key_pair=False).openapi()
    assert set(doc["components"]["securitySchemes"]) == {"BearerToken", "ApiKey"}
    for path, method in [("/jobs", "get"), ("/jobs", "post"), ("/me", "get")]:
        assert requirement_of(doc, path, method) == [{"BearerToken": []}, {"ApiKey": []}]


def test_docs_and_openapi_json_can_be_exempted(client: TestClient) -> None:
    doc = client.get("/openapi.json")
    assert doc.status_code == 200
    assert set(doc.json()["components"]["securitySchemes"]) == set(SCHEMES)
    page = client.get("/docs")
    assert page.status_code == 200
    assert "swagger" in page.text.lower()
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.get("/status").json() == {"ok": True}
    # The API itself still wants a key, rendered by keystile rather than by FastAPI.
    refused = client.get("/jobs")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "AUTH_001"


def test_docs_need_a_key_unless_exempted(make_keystile: Callable[..., Keystile]) -> None:
    ks = make_keystile()
    with TestClient(build_app(ks)) as client:
        for path in ("/openapi.json", "/docs"):
            refused = client.get(path)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "AUTH_001"
        key = ks.keys.create("acct-1", "docs reader")
        assert client.get("/openapi.json", headers={"x-api-key": key.token}).status_code == 200


def test_the_documented_schemes_all_work(docs_exempt: Keystile, client: TestClient) -> None:
    key = docs_exempt.keys.create("acct-1", "k", permissions=["jobs:*"])
    forms = [
        {"authorization": f"Bearer {key.token}"},
        {"x-api-key": key.token},
        {"x-api-key": key.key_id, "x-api-secret": key.secret},
    ]
    for headers in forms:
        assert client.get("/jobs", headers=headers).json() == {"key_id": key.key_id}
        assert client.post("/jobs", headers=headers).json() == {"key_id": key.key_id}
    reader = docs_exempt.keys.create("acct-1", "reader", permissions=["jobs:read"])
    refused = client.post("/jobs", headers={"x-api-key": reader.token})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "AUTH_004"
    # The secret alone, as the document's last alternative allows, is refused.
    alone = client.get("/jobs", headers={"x-api-secret": key.secret})
    assert alone.status_code == 400
    assert alone.json()["error"]["code"] == "AUTH_006"
