"""What keystile answers on an application's routes, for its OpenAPI document, without a
framework: the 401, 403 and 429 responses with keystile's error body (from the one table in
:mod:`keystile._core.errors`), and the permissions an operation needs.

An adapter finds the operations that keystile guards and calls :func:`describe` on the
document its framework built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from keystile._core.errors import ERRORS, JSON, PROBLEM_JSON

#: The statuses keystile answers on any route it guards, before or instead of the route.
STATUSES = (401, 403, 429)
#: The security schemes that stand for a keystile credential (``ApiSecret``: with the key id).
SCHEMES = ("BearerToken", "ApiKey", "ApiSecret")
PROBLEM = "KeystileProblem"
_WHY = {
    401: "No credential, or one that is invalid, expired or revoked.",
    403: "The key lacks a permission, may not act for `x-account-id`, or not from here.",
    429: "Too many failed attempts, over the key's rate limit or the monthly page limit.",
}
#: The permissions an operation needs, by (path, lowercase method): what :func:`describe` takes.
Operations = Mapping[tuple[str, str], Iterable[str]]


def schema_name(status: int) -> str:
    return "Keystile" + HTTPStatus(status).phrase.replace(" ", "") + "Error"


def error_schema(status: int) -> dict[str, Any]:
    """The default error body, ``{"error": {"code", "type", "message"}}``, for ``status``."""
    specs = [spec for spec in ERRORS if spec.status == status]
    detail = {
        "type": "object",
        "required": ["code", "type", "message"],
        "properties": {
            "code": {"type": "string", "enum": [spec.code for spec in specs]},
            "type": {"type": "string", "enum": [spec.type for spec in specs]},
            "message": {"type": "string"},
        },
    }
    return {"type": "object", "required": ["error"], "properties": {"error": detail}}


def problem_schema() -> dict[str, Any]:
    """RFC 9457 problem details, for a client that sends ``Accept: application/problem+json``."""
    members = {"type": "string", "title": "string", "status": "integer", "detail": "string"}
    properties = {name: {"type": kind} for name, kind in members.items()}
    properties["code"] = {"type": "string", "description": "keystile's error code"}
    return {"type": "object", "required": ["status", "code"], "properties": properties}


def response(status: int) -> dict[str, Any]:
    codes = ", ".join(f"`{spec.code}`" for spec in ERRORS if spec.status == status)
    content = {
        JSON: {"schema": {"$ref": f"#/components/schemas/{schema_name(status)}"}},
        PROBLEM_JSON: {"schema": {"$ref": f"#/components/schemas/{PROBLEM}"}},
    }
    return {"description": f"{_WHY[status]} keystile codes: {codes}.", "content": content}


def guarded(
    routes: Iterable[Any], permissions_of: Callable[[Any], Iterable[str] | None]
) -> Operations:
    """The operations of ``routes`` (FastAPI's: ``dependant``, ``path_format``, ``methods``) with
    a dependency anywhere in their tree for which ``permissions_of(call)`` is not None, and
    the permissions those ask for."""
    operations: dict[tuple[str, str], list[str]] = {}
    for route in routes:
        dependant = getattr(route, "dependant", None)  # None: a Starlette route or mount
        stack = [dependant] if dependant and getattr(route, "include_in_schema", False) else []
        guarded, permissions = False, list[str]()
        while stack:
            dependant = stack.pop()
            asked = permissions_of(dependant.call)
            if asked is not None:
                guarded = True
                permissions.extend(asked)
            stack.extend(dependant.dependencies)
        if guarded:
            for method in route.methods or ():
                operations[route.path_format, method.lower()] = permissions
    return operations


def described(document: Mapping[str, Any]) -> bool:
    return PROBLEM in document.get("components", {}).get("schemas", {})


def describe(
    document: dict[str, Any], operations: Operations, schemes: Mapping[str, dict[str, Any]]
) -> None:
    """Edit ``document`` in place: every operation in ``operations`` gets keystile's
    responses, and its permissions as the scopes of its keystile requirements (and in its
    description). One that names none of keystile's schemes (it has only ``cost()``, say)
    gets them all; ``schemes`` defines those the document lacks."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    offered = components.setdefault("securitySchemes", {})
    for name, scheme in schemes.items():
        offered.setdefault(name, scheme)
    requirements: list[dict[str, list[str]]] = [
        {name: []} for name in SCHEMES if name in offered and name != "ApiSecret"
    ]
    if "ApiSecret" in offered:
        requirements.append({"ApiKey": [], "ApiSecret": []})
    for status in STATUSES:
        schemas.setdefault(schema_name(status), error_schema(status))
    schemas.setdefault(PROBLEM, problem_schema())
    paths = document.get("paths", {})
    for (path, method), wanted in operations.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            continue
        permissions = sorted(set(wanted))
        security = operation.setdefault("security", [])
        named = [set(requirement) for requirement in security]
        # Each way in, once: the framework listed some (or none, for cost() alone).
        security.extend(dict(r) for r in requirements if set(r) not in named)
        for requirement in security:
            for name in requirement:
                if name in SCHEMES:
                    requirement[name] = list(permissions)
        if permissions:
            listed = ", ".join(f"`{p}`" for p in permissions)
            line = f"**Permissions:** {listed} (a key's `*` is a wildcard)."
            text = operation.get("description")
            operation["description"] = f"{text}\n\n{line}" if text else line
        answers = operation.setdefault("responses", {})
        for status in STATUSES:
            answers.setdefault(str(status), response(status))


# Not dependencies: each would cost every request a dependency to solve, and FastAPI lists
# each security dependency as an alternative of its own, so an x-api-secret one would tell
# clients that it alone will do. add_api_key adds them to the document.
API_SECRET_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "x-api-secret",
    "description": "The key's secret, sent with the key id in x-api-key.",
}
_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def add_api_key(document: dict[str, Any], api_key: Mapping[str, Any], pair: bool = True) -> None:
    """Offer ``x-api-key`` (the ``api_key`` scheme) wherever ``BearerToken`` is offered: alone
    (the full token), and with ``pair`` also with ``x-api-secret`` (the key id and the
    secret), as one requirement. Each once, however often this runs."""
    schemes = document.get("components", {}).get("securitySchemes", {})
    if "BearerToken" not in schemes:
        return
    schemes.setdefault("ApiKey", dict(api_key))
    added: list[dict[str, list[str]]] = [{"ApiKey": []}]
    if pair:
        schemes.setdefault("ApiSecret", dict(API_SECRET_SCHEME))
        added.append({"ApiKey": [], "ApiSecret": []})
    for item in document.get("paths", {}).values():
        for method, operation in item.items():
            security = operation.get("security", []) if method in _HTTP_METHODS else []
            bearer = next((r for r in security if set(r) == {"BearerToken"}), None)
            if bearer is None:
                continue
            named = [set(requirement) for requirement in security]
            for requirement in added:
                if set(requirement) not in named:
                    security.append({name: list(bearer["BearerToken"]) for name in requirement})
