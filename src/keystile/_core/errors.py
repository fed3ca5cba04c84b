"""Every failure keystile answers with, and how it is rendered: the one table adapters use.

An adapter never picks a status or writes an error body itself; it calls :func:`render` with
the request's ``Accept`` and copies status, headers and body into its framework's response.

Two body shapes, one table: the seeds' ``{"error": {"code", "type", "message"}}``, and RFC
9457 problem details for a client that asks for ``application/problem+json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    code: str
    type: str
    status: int
    message: str


MISSING_API_KEY: Final = ErrorSpec("AUTH_001", "missing_api_key", 401, "API key is required.")
INVALID_API_KEY: Final = ErrorSpec("AUTH_002", "invalid_api_key", 401, "Invalid API key.")
EXPIRED_API_KEY: Final = ErrorSpec(
    "AUTH_003", "expired_api_key", 401, "API key has expired or been revoked."
)
INSUFFICIENT_PERMISSIONS: Final = ErrorSpec(
    "AUTH_004", "insufficient_permissions", 403, "API key lacks the permission for this request."
)
ACCOUNT_FORBIDDEN: Final = ErrorSpec(
    "AUTH_005", "account_forbidden", 403, "API key may not act for this account."
)
MALFORMED_CREDENTIALS: Final = ErrorSpec(
    "AUTH_006", "malformed_credentials", 400, "Credentials are malformed or conflicting."
)
TOO_MANY_ATTEMPTS: Final = ErrorSpec(
    "AUTH_007", "too_many_attempts", 429, "Too many failed attempts; retry later."
)
IP_NOT_ALLOWED: Final = ErrorSpec(
    "AUTH_008", "ip_not_allowed", 403, "API key may not be used from this address."
)
INVALID_REQUEST: Final = ErrorSpec(
    "REQ_001", "invalid_request", 422, "The request body or parameters are invalid."
)
NOT_FOUND: Final = ErrorSpec("REQ_002", "not_found", 404, "No such resource.")
METHOD_NOT_ALLOWED: Final = ErrorSpec(
    "REQ_003", "method_not_allowed", 405, "Method not allowed on this resource."
)
RATE_LIMITED: Final = ErrorSpec(
    "RATE_001", "rate_limited", 429, "Rate limit exceeded; retry later."
)
QUOTA_EXCEEDED: Final = ErrorSpec(
    "BILLING_001", "quota_exceeded", 429, "Monthly page limit exceeded."
)
BACKEND_UNAVAILABLE: Final = ErrorSpec(
    "SVC_001", "backend_unavailable", 503, "Authentication backend is unavailable; retry shortly."
)

ERRORS: Final[tuple[ErrorSpec, ...]] = (
    MISSING_API_KEY,
    INVALID_API_KEY,
    EXPIRED_API_KEY,
    INSUFFICIENT_PERMISSIONS,
    ACCOUNT_FORBIDDEN,
    MALFORMED_CREDENTIALS,
    TOO_MANY_ATTEMPTS,
    IP_NOT_ALLOWED,
    INVALID_REQUEST,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    RATE_LIMITED,
    QUOTA_EXCEEDED,
    BACKEND_UNAVAILABLE,
)


class KeystileError(Exception):
    """Base of keystile's exceptions."""


class ConfigError(KeystileError, ValueError):
    """A setting is unknown or has a wrong type or value; the message names it."""


class NotFound(KeystileError, LookupError):
    """No such key (or the key belongs to another account)."""


class InvalidInput(KeystileError, ValueError):
    """A value given to a management call is wrong; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class BackendError(KeystileError):
    """The store or Redis failed; the cause is chained, never a secret."""

    #: Set when the store write succeeded and only telling Redis failed.
    record: Any = None


class ApiError(KeystileError):
    """An answer with one of the codes above. Carries the spec plus an optional more precise
    message; :func:`render` turns it into status, headers and body."""

    def __init__(
        self,
        spec: ErrorSpec,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        field: str | None = None,
        scope: Sequence[str] = (),
        policies: Sequence[str] = (),
    ) -> None:
        self.spec = spec
        self.message = message or spec.message
        self.headers = headers or {}
        #: The request field at fault (422s of the management API).
        self.field = field
        #: The permissions the request needed (AUTH_004): the challenge's ``scope``.
        self.scope = tuple(scope)
        #: The RateLimit policies the request exceeded (a 429): the problem's
        #: ``violated-policies``.
        self.policies = tuple(policies)
        super().__init__(f"{spec.code} {spec.type}: {self.message}")

    @property
    def code(self) -> str:
        return self.spec.code

    @property
    def status(self) -> int:
        return self.spec.status


class AuthError(ApiError):
    """A request is refused: its credential, permissions, account or quota (``AUTH_*``,
    ``BILLING_*``, ``SVC_*``)."""


class RequestError(ApiError):
    """A request keystile cannot serve as asked, whoever sent it: no such route or resource,
    a method the route lacks, invalid input (``REQ_*``: 404, 405, 422)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


#: RFC 6750 3: what an ``error_description`` may hold (printable ASCII but ``"`` and ``\``),
#: and a ``scope`` token (RFC 6749 3.3: the same, without the space).
_NOT_DESCRIPTION = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_NOT_SCOPE = re.compile(r"[^\x21\x23-\x5b\x5d-\x7e]")


def _challenge(error: ApiError) -> str | None:
    """The ``WWW-Authenticate`` value (RFC 6750 3), or None for an answer that has none."""
    spec = error.spec
    if spec is MISSING_API_KEY:  # 3.1: no error attribute without credentials
        return 'Bearer realm="api"'
    if spec is INSUFFICIENT_PERMISSIONS:
        kind = "insufficient_scope"
    elif spec is MALFORMED_CREDENTIALS:
        kind = "invalid_request"
    elif spec.status == 401:
        kind = "invalid_token"
    else:
        return None
    description = _NOT_DESCRIPTION.sub("?", error.message)
    value = f'Bearer realm="api", error="{kind}", error_description="{description}"'
    scope = " ".join(token for p in error.scope if (token := _NOT_SCOPE.sub("", p)))
    return f'{value}, scope="{scope}"' if scope else value


JSON: Final = "application/json"
PROBLEM_JSON: Final = "application/problem+json"
#: draft-ietf-httpapi-ratelimit-headers 5.1: a request past one or more quota policies.
QUOTA_EXCEEDED_TYPE: Final = "https://iana.org/assignments/http-problem-types#quota-exceeded"
_QUOTA_EXCEEDED_TITLE: Final = "Request cannot be satisfied as assigned quota has been exceeded"
#: An Accept header is read this far: past it, a client gets the default shape.
_ACCEPT_READ = 1024


def wants_problem(accept: str | None) -> bool:
    """Whether ``accept`` ranks ``application/problem+json`` above plain JSON (RFC 9110
    12.5.1: the more specific range wins a tie; ``q=0`` refuses a type)."""
    accept = (accept or "")[:_ACCEPT_READ].lower()
    if "problem" not in accept:
        return False
    problem = plain = 0.0
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip()
        if media not in (PROBLEM_JSON, JSON):
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = min(1.0, max(0.0, float(value.strip())))
                except ValueError:
                    q = 0.0
        if media == PROBLEM_JSON:
            problem = max(problem, q)
        else:
            plain = max(plain, q)
    return problem > 0 and problem >= plain


def _problem(error: ApiError) -> dict[str, Any]:
    """RFC 9457 members. The ``type`` is ``about:blank`` (the status says what went wrong;
    keystile has no pages to point at) but for the quota draft's ``quota-exceeded``; the
    keystile ``code`` is the stable name, as in the default body."""
    spec = error.spec
    if spec.status == 429 and error.policies:
        problem: dict[str, Any] = {"type": QUOTA_EXCEEDED_TYPE, "title": _QUOTA_EXCEEDED_TITLE}
    else:
        problem = {"type": "about:blank", "title": HTTPStatus(spec.status).phrase}
    problem.update(status=spec.status, detail=error.message, code=spec.code)
    if error.policies:
        problem["violated-policies"] = list(error.policies)
    if error.field is not None:
        problem["field"] = error.field
    return problem


def render(error: ApiError, accept: str | None = None) -> Rendered:
    """Status, headers and body for ``error``, in the shape ``accept`` asks for: the only
    place they are decided."""
    problem = wants_problem(accept)
    # Most refusals (a bad or unknown key above all) say nothing of the request: their
    # rendering is kept, so a flood of them costs no JSON encoding.
    plain = not error.headers and error.field is None and not error.scope and not error.policies
    if plain:
        cached = _RENDERED.get((error.spec, error.message, problem))
        if cached is not None:
            return cached
    if problem:
        content_type, shape = PROBLEM_JSON, _problem(error)
    else:
        detail = {"code": error.spec.code, "type": error.spec.type, "message": error.message}
        if error.field is not None:
            detail["field"] = error.field
        content_type, shape = JSON, {"error": detail}
    body = json.dumps(shape, separators=(",", ":")).encode()
    headers = [("content-type", content_type), ("content-length", str(len(body)))]
    challenge = _challenge(error)
    if challenge is not None:
        headers.append(("www-authenticate", challenge))
    if error.spec is BACKEND_UNAVAILABLE:
        headers.append(("retry-after", "1"))
    headers.extend((name.lower(), value) for name, value in error.headers.items())
    headers.append(("cache-control", "no-store"))
    headers.append(("vary", "accept"))  # the body's shape follows Accept
    rendered = Rendered(error.spec.status, tuple(headers), body)
    if plain:
        if len(_RENDERED) >= _RENDERED_KEPT:
            _RENDERED.clear()  # messages are few; a bound all the same
        _RENDERED[(error.spec, error.message, problem)] = rendered
    return rendered


#: Renderings of refusals that say nothing of their request, by spec, message and shape.
_RENDERED: dict[tuple[ErrorSpec, str, bool], Rendered] = {}
_RENDERED_KEPT: Final = 256
