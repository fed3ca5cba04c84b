"""The key management HTTP API, once for every framework: request in, response out.

Adapters mount it under a prefix (:func:`keystile.starlette.management_mount`, the Flask
blueprint, the Django urls) and pass each request as an :class:`ApiRequest`; the principal is
the one the middleware authenticated. Calls block (store, argon2): async adapters run
:meth:`ManagementAPI.handle` in a thread.

No privilege escalation: a caller acts only on its (acting) account's keys, never grants a
permission it does not hold, never touches a key more powerful than itself, never makes a key
that outlives its own expiry, and only in its own environment. Another account's key answers
404, like a key that does not exist, so ids don't leak.

"More powerful" (:meth:`ManagementAPI._not_stronger`) is any of: another environment, a
permission the caller lacks, an extra account (``x-account-id``) outside the caller key's own
account and extra accounts, or a looser per-key ``page_limit`` (none is the loosest). It bars
PATCH (any field, disabling included), revoke and roll. Roll, and a PATCH that sets
``enabled: true``, also need the key not to outlive the caller: the first hands over a token,
the second brings a key back to life. A new key gets no extra accounts and the caller's
``page_limit``, as it gets the caller's expiry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from keystile._core.errors import (
    BACKEND_UNAVAILABLE,
    INSUFFICIENT_PERMISSIONS,
    INVALID_API_KEY,
    INVALID_REQUEST,
    METHOD_NOT_ALLOWED,
    MISSING_API_KEY,
    NOT_FOUND,
    ApiError,
    AuthError,
    BackendError,
    InvalidInput,
    NotFound,
    RequestError,
    render,
)
from keystile._core.models import ApiKey
from keystile._core.principal import Principal, missing_permissions
from keystile._services.audit import entry_to_dict
from keystile._services.keys import CreatedKey, check_permissions

if TYPE_CHECKING:
    from keystile._runtime.engine import Keystile

MAX_BODY = 64 * 1024
#: Paths under the mount that need no principal: the middleware lets them through.
PUBLIC_PATHS = ("/auth/login", "/openapi.json")
#: Every route's path under the mount prefix.
ROUTE = re.compile(
    r"/(?:auth/login|auth/logout|apikeys(?:/[^/]+(?:/roll)?)?|usage|audit|openapi\.json)"
)

_KEY_PATH = re.compile(r"/apikeys/([^/]+)")
_ROLL_PATH = re.compile(r"/apikeys/([^/]+)/roll")


@dataclass(frozen=True, slots=True)
class ApiRequest:
    method: str
    path: str  # below the mount: "/apikeys/key_…"
    query_string: str
    headers: Sequence[tuple[str, str]]  # lowercase names
    body: bytes
    principal: Principal | None
    client: str | None = None


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _json(status: int, data: Any) -> ApiResponse:
    body = json.dumps(data, separators=(",", ":")).encode()
    return ApiResponse(
        status,
        [("content-type", "application/json"), ("cache-control", "no-store")],
        body,
    )


def _invalid(field: str, message: str) -> RequestError:
    return RequestError(INVALID_REQUEST, f"{field}: {message}", field=field)


def _body(request: ApiRequest, allowed: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The JSON object body, with only ``allowed`` fields of the right JSON types."""
    if len(request.body) > MAX_BODY:
        raise _invalid("body", f"at most {MAX_BODY} bytes")
    if not request.body.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise _invalid("body", "not valid JSON (or nested too deeply)") from None
    if not isinstance(data, dict):
        raise _invalid("body", "expected a JSON object")
    for name, value in data.items():
        if name not in allowed:
            raise _invalid(name, "unknown field")
        kinds = allowed[name]
        if isinstance(value, bool) and bool not in (
            kinds if isinstance(kinds, tuple) else (kinds,)
        ):
            raise _invalid(name, "wrong type")
        if not isinstance(value, kinds):
            raise _invalid(name, "wrong type")
    return data


def _datetime(field: str, value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(field, "expected an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise _invalid(field, "the date-time needs a time zone, e.g. 2027-01-01T00:00:00Z")
    return parsed


def _query(request: ApiRequest, allowed: Sequence[str]) -> dict[str, str]:
    try:
        parsed = parse_qs(request.query_string, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise _invalid("query", "malformed query string") from None
    out: dict[str, str] = {}
    for name, values in parsed.items():
        if name not in allowed:
            raise _invalid(name, "unknown query parameter")
        if len(values) != 1:
            raise _invalid(name, "given more than once")
        out[name] = values[0]
    return out


def _int_param(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise _invalid(name, "expected a whole number")
    return int(raw)


def _bool_param(name: str, raw: str | None) -> bool:
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise _invalid(name, "expected true or false")
    return raw == "true"


def _created(created: CreatedKey) -> dict[str, Any]:
    return {
        "token": created.token,
        "key_id": created.key_id,
        "secret": created.secret,
        "key": created.key.to_dict(),
    }


class ManagementAPI:
    def __init__(self, engine: Keystile) -> None:
        self.engine = engine
        self._routes: list[tuple[re.Pattern[str], dict[str, Callable[..., ApiResponse]]]] = [
            (re.compile(r"/auth/login"), {"POST": self.login}),
            (re.compile(r"/auth/logout"), {"POST": self.logout}),
            (re.compile(r"/apikeys"), {"GET": self.list_keys, "POST": self.create_key}),
            (_ROLL_PATH, {"POST": self.roll_key}),
            (
                _KEY_PATH,
                {"GET": self.get_key, "PATCH": self.update_key, "DELETE": self.revoke_key},
            ),
            (re.compile(r"/usage"), {"GET": self.usage}),
            (re.compile(r"/audit"), {"GET": self.audit}),
            (re.compile(r"/openapi.json"), {"GET": self.openapi}),
        ]

    def handle(self, request: ApiRequest) -> ApiResponse:
        """Blocking. Every failure is a JSON error from the core table; never a 500 for input."""
        try:
            for pattern, methods in self._routes:
                match = pattern.fullmatch(request.path.rstrip("/") or "/")
                if match is None:
                    continue
                handler = methods.get(request.method.upper())
                if handler is None:
                    error = RequestError(METHOD_NOT_ALLOWED, headers={"allow": ", ".join(methods)})
                    raise error
                return handler(request, *match.groups())
            raise RequestError(NOT_FOUND)
        except ApiError as error:
            rendered = render(error)
            return ApiResponse(rendered.status, rendered.headers, rendered.body)
        except InvalidInput as error:
            rendered = render(_invalid(error.field, str(error).split(": ", 1)[-1]))
            return ApiResponse(rendered.status, rendered.headers, rendered.body)
        except NotFound:
            rendered = render(RequestError(NOT_FOUND))
            return ApiResponse(rendered.status, rendered.headers, rendered.body)
        except BackendError:
            rendered = render(AuthError(BACKEND_UNAVAILABLE))
            return ApiResponse(rendered.status, rendered.headers, rendered.body)

    # -- guards -----------------------------------------------------------------------------

    def _caller(self, request: ApiRequest, *permissions: str) -> Principal:
        principal = request.principal
        if principal is None:
            raise AuthError(MISSING_API_KEY)
        missing = missing_permissions(principal.permissions, permissions)
        if missing:
            raise AuthError(
                INSUFFICIENT_PERMISSIONS,
                f"API key lacks the permission(s): {', '.join(missing)}.",
            )
        return principal

    def _own_key(self, caller: Principal, key_id: str) -> ApiKey:
        """The key, if the caller's acting account owns it; 404 otherwise (no id leaks)."""
        try:
            key = self.engine.keys.get(key_id)
        except NotFound:
            raise RequestError(NOT_FOUND, "No such API key.") from None
        if key.account_id != caller.account_id:
            raise RequestError(NOT_FOUND, "No such API key.")
        return key

    def _no_escalation(
        self,
        caller: Principal,
        permissions: Sequence[str] | None,
        expires_at: datetime | None,
        expires_given: bool,
    ) -> None:
        if permissions is not None:
            permissions = check_permissions(permissions)  # 422 before any comparison
            beyond = missing_permissions(caller.permissions, permissions)
            if beyond:
                raise AuthError(
                    INSUFFICIENT_PERMISSIONS,
                    f"Cannot grant permission(s) the calling key lacks: {', '.join(beyond)}.",
                )
        if (
            expires_given
            and caller.expires_at is not None
            and (expires_at is None or expires_at > caller.expires_at)
        ):
            raise AuthError(
                INSUFFICIENT_PERMISSIONS,
                "Cannot set an expiry later than the calling key's own "
                f"({caller.expires_at.isoformat()}).",
            )

    def _caller_key(self, caller: Principal) -> ApiKey:
        """The calling key as stored: its extra accounts and page limit are not on the
        principal. Gone since the middleware checked it (deleted just now): 401, as it would
        be on the next request."""
        try:
            return self.engine.keys.get(caller.key_id)
        except NotFound:
            raise AuthError(INVALID_API_KEY) from None

    def _not_stronger(self, caller: Principal, key: ApiKey, *, rolling: bool = False) -> None:
        """A caller changes only keys no more powerful than itself; a roll hands over the key,
        so it must not outlive the caller either."""
        if key.environment != caller.environment:
            raise AuthError(
                INSUFFICIENT_PERMISSIONS,
                f"A {caller.environment} key cannot change {key.environment} keys.",
            )
        if missing_permissions(caller.permissions, key.permissions):
            raise AuthError(
                INSUFFICIENT_PERMISSIONS, "Cannot change a key that holds permissions you lack."
            )
        own = self._caller_key(caller)
        if not set(key.accounts) <= {own.account_id, *own.accounts}:
            raise AuthError(
                INSUFFICIENT_PERMISSIONS,
                "Cannot change a key that may act for an account the calling key may not.",
            )
        if own.page_limit is not None and (
            key.page_limit is None or key.page_limit > own.page_limit
        ):
            raise AuthError(
                INSUFFICIENT_PERMISSIONS,
                "Cannot change a key whose page limit is higher than the calling key's "
                "(or unlimited).",
            )
        if rolling:
            self._not_outliving(caller, key.expires_at, "Cannot roll a key")

    @staticmethod
    def _not_outliving(caller: Principal, expires_at: datetime | None, action: str) -> None:
        if caller.expires_at is not None and (expires_at is None or expires_at > caller.expires_at):
            raise AuthError(INSUFFICIENT_PERMISSIONS, f"{action} that outlives the calling key.")

    # -- sessions ---------------------------------------------------------------------------

    def login(self, request: ApiRequest) -> ApiResponse:
        _body(request, {})
        session = self.engine.sessions.login(request.headers, request.client)
        return _json(
            200,
            {
                "token": session.token,
                "session_id": session.session_id,
                "key_id": session.key_id,
                "account_id": session.account_id,
                "expires_at": session.expires_at.isoformat(),
                "idle_timeout": session.idle_timeout,
            },
        )

    def logout(self, request: ApiRequest) -> ApiResponse:
        caller = self._caller(request)
        self.engine.sessions.logout(caller)
        return ApiResponse(204, [("cache-control", "no-store")], b"")

    # -- keys -------------------------------------------------------------------------------

    def create_key(self, request: ApiRequest) -> ApiResponse:
        caller = self._caller(request, "writeApiKeys")
        data = _body(
            request,
            {
                "name": str,
                "permissions": list,
                "environment": str,
                "expires_at": (str, type(None)),
                "meta": (dict, type(None)),
            },
        )
        if "name" not in data:
            raise _invalid("name", "required")
        permissions = data.get("permissions", [])
        expires_at = _datetime("expires_at", data.get("expires_at"))
        if "expires_at" not in data:
            expires_at = caller.expires_at  # a new key never outlives the key that made it
        self._no_escalation(caller, permissions, expires_at, expires_given=True)
        environment = data.get("environment", caller.environment)
        if environment != caller.environment:
            raise AuthError(
                INSUFFICIENT_PERMISSIONS,
                f"A {caller.environment} key can only create {caller.environment} keys.",
            )
        created = self.engine.keys.create(
            caller.account_id,
            data["name"],
            permissions=permissions,
            environment=environment,
            expires_at=expires_at,
            owner=caller.owner,
            meta=data.get("meta"),
            # No extra accounts (this API cannot give any), and the caller's own monthly cap:
            # a capped key must not make an uncapped one.
            page_limit=self._caller_key(caller).page_limit,
            actor=caller.key_id,
        )
        return _json(201, _created(created))

    def list_keys(self, request: ApiRequest) -> ApiResponse:
        caller = self._caller(request, "readApiKeys")
        query = _query(request, ("search", "environment", "include_revoked", "limit", "cursor"))
        page = self.engine.keys.list(
            caller.account_id,
            search=query.get("search"),
            environment=query.get("environment"),
            include_revoked=_bool_param("include_revoked", query.get("include_revoked")),
            limit=_int_param("limit", query.get("limit"), 20),
            cursor=query.get("cursor"),
        )
        return _json(
            200,
            {
                "items": [key.to_dict() for key in page.items],
                "total": page.total,
                "next_cursor": page.next_cursor,
            },
        )

    def get_key(self, request: ApiRequest, key_id: str) -> ApiResponse:
        caller = self._caller(request, "readApiKeys")
        return _json(200, self._own_key(caller, key_id).to_dict())

    def update_key(self, request: ApiRequest, key_id: str) -> ApiResponse:
        caller = self._caller(request, "writeApiKeys")
        data = _body(
            request,
            {
                "name": str,
                "permissions": list,
                "expires_at": (str, type(None)),
                "meta": (dict, type(None)),
                "enabled": bool,
            },
        )
        key = self._own_key(caller, key_id)
        self._not_stronger(caller, key)
        changes: dict[str, Any] = {k: v for k, v in data.items() if k != "expires_at"}
        expires_given = "expires_at" in data
        expires_at = _datetime("expires_at", data.get("expires_at"))
        if expires_given:
            changes["expires_at"] = expires_at
        self._no_escalation(caller, data.get("permissions"), expires_at, expires_given)
        if data.get("enabled") is True:  # a disabled key back to life must not outlive us
            self._not_outliving(
                caller, expires_at if expires_given else key.expires_at, "Cannot enable a key"
            )
        updated = self.engine.keys.update(key.id, actor=caller.key_id, **changes)
        return _json(200, updated.to_dict())

    def revoke_key(self, request: ApiRequest, key_id: str) -> ApiResponse:
        caller = self._caller(request, "writeApiKeys")
        key = self._own_key(caller, key_id)
        self._not_stronger(caller, key)
        return _json(200, self.engine.keys.revoke(key.id, actor=caller.key_id).to_dict())

    def roll_key(self, request: ApiRequest, key_id: str) -> ApiResponse:
        caller = self._caller(request, "writeApiKeys")
        data = _body(request, {"grace_seconds": int})
        key = self._own_key(caller, key_id)
        self._not_stronger(caller, key, rolling=True)
        created = self.engine.keys.roll(
            key.id, grace_seconds=data.get("grace_seconds", 0), actor=caller.key_id
        )
        return _json(200, _created(created))

    # -- reports ----------------------------------------------------------------------------

    def usage(self, request: ApiRequest) -> ApiResponse:
        caller = self._caller(request, "readUsage")
        query = _query(request, ("month", "environment"))
        report = self.engine.quotas.usage(
            caller.account_id, month=query.get("month"), environment=query.get("environment")
        )
        return _json(200, report.to_dict())

    def audit(self, request: ApiRequest) -> ApiResponse:
        caller = self._caller(request, "readAudit")
        query = _query(request, ("action", "limit", "cursor"))
        page = self.engine.audit.list(
            caller.account_id,
            action=query.get("action"),
            limit=_int_param("limit", query.get("limit"), 50),
            cursor=query.get("cursor"),
        )
        return _json(
            200,
            {"items": [entry_to_dict(e) for e in page.items], "next_cursor": page.next_cursor},
        )

    def openapi(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(200, [("content-type", "application/json")], openapi_document().encode())


def openapi_document() -> str:
    """The OpenAPI 3.1 description of this API, shipped in the package."""
    return resources.files("keystile._http").joinpath("openapi.json").read_text()
