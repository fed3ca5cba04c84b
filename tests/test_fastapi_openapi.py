"""The OpenAPI document of a FastAPI app using keystile's dependencies, and its docs pages:
the security schemes, and with ``document(app)`` the 401/403/429 keystile answers with and
each route's permissions, validated with openapi-spec-validator."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from openapi_spec_validator import validate
from starlette.applications import Starlette

from keystile import Keystile, Principal
from keystile.fastapi import (
    KeystileMiddleware,
    cost,
    document,
    document_key_pair,
    get_principal,
    require,
)

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
    app = build_app(docs_exempt, key_pair=False)
    document(app, key_pair=False)
    doc = app.openapi()
    assert set(doc["components"]["securitySchemes"]) == {"BearerToken", "ApiKey"}
    for path, method in [("/jobs", "get"), ("/jobs", "post"), ("/me", "get")]:
        assert [set(r) for r in requirement_of(doc, path, method)] == [
            {"BearerToken"},
            {"ApiKey"},
        ]


def test_undocumented_the_dependency_is_the_bearer_scheme_alone(docs_exempt: Keystile) -> None:
    """Without document(): FastAPI's own document, from the one dependency each route has
    (another, for x-api-key, would cost every request a dependency to solve)."""
    doc = build_app(docs_exempt, key_pair=False).openapi()
    assert set(doc["components"]["securitySchemes"]) == {"BearerToken"}
    for path, method in [("/jobs", "get"), ("/jobs", "post"), ("/me", "get")]:
        assert requirement_of(doc, path, method) == [{"BearerToken": []}]
    assert "security" not in doc["paths"]["/status"]["get"]


def test_each_route_solves_one_keystile_dependency_per_use() -> None:
    """What a request pays for: get_principal and require() have no sub-dependency."""
    app = FastAPI()

    @app.get("/me")
    async def me(principal: Principal = Depends(get_principal)) -> dict[str, str]:
        return {"key_id": principal.key_id}

    (route,) = [r for r in app.routes if getattr(r, "path", "") == "/me"]
    (dependency,) = route.dependant.dependencies  # type: ignore[attr-defined]
    assert dependency.call is get_principal
    assert dependency.dependencies == []
    assert [p.name for p in dependency.query_params + dependency.header_params] == []


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


# -- document(app): keystile's answers and each route's permissions -----------------------


def build_documented_app(ks: Keystile) -> FastAPI:
    app = build_app(ks, key_pair=False)

    @app.post("/extract", dependencies=[Depends(cost(2))])
    def extract() -> dict[str, int]:  # only cost(): keystile guards it all the same
        return {"pages": 2}

    @app.get("/reports", responses={403: {"description": "Reports are for admins."}})
    def reports(principal: Principal = Depends(require("reports:read"))) -> dict[str, str]:
        """The monthly reports."""
        return {"key_id": principal.key_id}

    router = APIRouter(prefix="/v2", dependencies=[Depends(require("v2"))])

    @router.get("/jobs/{job_id}")
    async def job(
        job_id: str, principal: Principal = Depends(require("jobs:read"))
    ) -> dict[str, str]:
        return {"job": job_id}

    app.include_router(router)
    app.mount("/static", Starlette())  # neither an APIRoute nor in the document
    document(app)
    return app


GUARDED = [
    ("/jobs", "get", ["jobs:read"]),
    ("/jobs", "post", ["jobs:read", "jobs:write"]),
    ("/me", "get", []),
    ("/extract", "post", []),
    ("/reports", "get", ["reports:read"]),
    ("/v2/jobs/{job_id}", "get", ["jobs:read", "v2"]),
]
STATUS_CODES = {
    401: {"AUTH_001", "AUTH_002", "AUTH_003"},
    403: {"AUTH_004", "AUTH_005", "AUTH_008"},
    429: {"AUTH_007", "RATE_001", "BILLING_001"},
}


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    name = schema["$ref"].removeprefix("#/components/schemas/")
    resolved: dict[str, Any] = doc["components"]["schemas"][name]
    return resolved


def test_the_documented_document_is_valid_openapi(docs_exempt: Keystile) -> None:
    doc = build_documented_app(docs_exempt).openapi()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


@pytest.mark.parametrize(("path", "method", "permissions"), GUARDED)
def test_guarded_operations_list_keystiles_answers(
    docs_exempt: Keystile, path: str, method: str, permissions: list[str]
) -> None:
    doc = build_documented_app(docs_exempt).openapi()
    operation = doc["paths"][path][method]
    for status, codes in STATUS_CODES.items():
        answer = operation["responses"][str(status)]
        if (path, status) == ("/reports", 403):
            assert answer == {"description": "Reports are for admins."}  # the route's own wins
            continue
        assert all(code in answer["description"] for code in codes), answer["description"]
        schema = resolve(doc, answer["content"]["application/json"]["schema"])
        error = schema["properties"]["error"]
        assert schema["required"] == ["error"]
        assert set(error["required"]) == {"code", "type", "message"}
        assert set(error["properties"]["code"]["enum"]) == codes
        problem = resolve(doc, answer["content"]["application/problem+json"]["schema"])
        assert {"status", "code"} <= set(problem["properties"])
    assert "200" in operation["responses"]


@pytest.mark.parametrize(("path", "method", "permissions"), GUARDED)
def test_guarded_operations_name_their_permissions(
    docs_exempt: Keystile, path: str, method: str, permissions: list[str]
) -> None:
    doc = build_documented_app(docs_exempt).openapi()
    operation = doc["paths"][path][method]
    assert requirement_of(doc, path, method) == [
        {"BearerToken": permissions},
        {"ApiKey": permissions},
        {"ApiKey": permissions, "ApiSecret": permissions},
    ]
    description = operation.get("description", "")
    for permission in permissions:
        assert f"`{permission}`" in description
    if not permissions:
        assert "Permissions" not in description
    if path == "/reports":
        assert description.startswith("The monthly reports.\n\n")  # the docstring stays first


def test_unguarded_operations_are_left_alone(docs_exempt: Keystile) -> None:
    doc = build_documented_app(docs_exempt).openapi()
    status = doc["paths"]["/status"]["get"]
    assert "security" not in status and set(status["responses"]) == {"200"}
    assert "security" not in doc
    assert not [path for path in doc["paths"] if path.startswith("/static")]


def test_documenting_happens_once(docs_exempt: Keystile) -> None:
    app = build_documented_app(docs_exempt)
    doc = app.openapi()
    assert app.openapi() is doc
    assert doc["paths"]["/jobs"]["get"]["description"].count("Permissions") == 1
    assert requirement_of(doc, "/me", "get").count({"ApiKey": [], "ApiSecret": []}) == 1


def test_a_cost_only_app_still_gets_the_schemes(make_keystile: Callable[..., Keystile]) -> None:
    app = FastAPI()

    @app.get("/pages", dependencies=[Depends(cost(1))])
    def pages() -> dict[str, bool]:
        return {"ok": True}

    document(app, key_pair=False)
    doc = app.openapi()
    validate(doc)
    assert set(doc["components"]["securitySchemes"]) == {"BearerToken", "ApiKey"}
    assert requirement_of(doc, "/pages", "get") == [{"BearerToken": []}, {"ApiKey": []}]
    assert {"401", "403", "429"} <= set(doc["paths"]["/pages"]["get"]["responses"])


def test_real_refusals_match_the_documented_schemas(make_keystile: Callable[..., Keystile]) -> None:
    ks = make_keystile(exempt_paths=["/openapi.json"], monthly_page_limit=1)
    app = build_documented_app(ks)
    with TestClient(app) as client:
        doc = client.get("/openapi.json").json()
        validate(doc)
        key = ks.keys.create("acct-1", "reader", permissions=["jobs:read"])
        answers = [
            ("/jobs", "get", client.get("/jobs")),
            ("/jobs", "get", client.get("/jobs", headers={"x-api-key": key.token + "x"})),
            ("/jobs", "post", client.post("/jobs", headers={"x-api-key": key.token})),
            ("/jobs", "post", client.post("/jobs", headers={"x-api-key": key.token})),
            ("/jobs", "get", client.get("/jobs", headers={"x-api-key": key.token})),
            ("/jobs", "get", client.get("/jobs", headers={"x-api-key": key.token})),
        ]
    statuses = [response.status_code for _, _, response in answers]
    assert statuses == [401, 401, 403, 403, 200, 429]  # the refusals were refunded
    for path, method, response in answers:
        if response.status_code == 200:
            continue
        documented = doc["paths"][path][method]["responses"][str(response.status_code)]
        schema = resolve(doc, documented["content"]["application/json"]["schema"])
        jsonschema.validate(response.json(), schema)
        assert response.json()["error"]["code"] in STATUS_CODES[response.status_code]


def test_the_example_app_documents_itself_and_exempts_its_docs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the example's store is sqlite:///keystile.db here
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    sys.modules.pop("examples.fastapi_app", None)
    example = __import__("examples.fastapi_app", fromlist=["app"])
    try:
        with TestClient(example.app) as client:
            for page in ("/docs", "/redoc"):
                served = client.get(page)
                assert served.status_code == 200 and "/openapi.json" in served.text
            doc = client.get("/openapi.json").json()
    finally:
        sys.modules.pop("examples.fastapi_app", None)
    validate(doc)
    assert requirement_of(doc, "/jobs", "get")[0] == {"BearerToken": ["jobs:read"]}
    assert requirement_of(doc, "/extract", "post")[0] == {"BearerToken": ["jobs:write"]}
    assert {"401", "403", "429"} <= set(doc["paths"]["/whoami"]["get"]["responses"])
    assert "401" not in doc["paths"]["/health"]["get"]["responses"]
