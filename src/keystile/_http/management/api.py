"""The management API's routes and what each does: a request in, the managers called, a
response out (the guards in :mod:`keystile._http.management.guards` decide who may)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from keystile._core.errors import (
    BACKEND_UNAVAILABLE,
    INSUFFICIENT_PERMISSIONS,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    ApiError,
    AuthError,
    BackendError,
    InvalidInput,
    NotFound,
    RequestError,
)
from keystile._http.management import guards, parsing
from keystile._http.management.messages import (
    ApiRequest,
    ApiResponse,
    error_response,
    json_response,
)
from keystile._http.management.openapi import openapi_document
from keystile._services.audit import AuditLog, entry_to_dict
from keystile._services.keys import CreatedKey, KeyManager
from keystile._services.quotas import QuotaManager
from keystile._services.sessions import SessionManager

#: Paths under the mount that need no principal: the middleware lets them through.
PUBLIC_PATHS = ("/auth/login", "/openapi.json")


def _created(created: CreatedKey) -> dict[str, Any]:
    return {
        "token": created.token,
        "key_id": created.key_id,
        "secret": created.secret,
        "key": created.key.to_dict(),
    }


@dataclass(frozen=True, kw_only=True, eq=False)
class ManagementAPI:
    """The API over the engine's managers. Blocking (store, argon2): async adapters run
    :meth:`handle` in a thread."""

    keys: KeyManager
    sessions: SessionManager
    quotas: QuotaManager
    audit: AuditLog

    def handle(self, request: ApiRequest) -> ApiResponse:
        """Every failure is a JSON error from the core table; never a 500 for input."""
        try:
            path = request.path.rstrip("/") or "/"
            for route in ROUTES:
                match = route.pattern.fullmatch(path)
                if match is None:
                    continue
                handler = route.methods.get(request.method.upper())
                if handler is None:
                    allow = ", ".join(route.methods)
                    raise RequestError(METHOD_NOT_ALLOWED, headers={"allow": allow})
                return handler(self, request, *match.groups())
            raise RequestError(NOT_FOUND)
        except ApiError as error:
            return error_response(error, request)
        except InvalidInput as error:
            return error_response(
                parsing.invalid(error.field, str(error).split(": ", 1)[-1]), request
            )
        except NotFound:
            return error_response(RequestError(NOT_FOUND), request)
        except BackendError:
            return error_response(AuthError(BACKEND_UNAVAILABLE), request)

    # -- sessions ---------------------------------------------------------------------------

    def login(self, request: ApiRequest) -> ApiResponse:
        parsing.body(request, {})
        session = self.sessions.login(request.headers, request.client)
        return json_response(
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
        caller = guards.caller(request)
        self.sessions.logout(caller)
        return ApiResponse(204, [("cache-control", "no-store")], b"")

    # -- keys -------------------------------------------------------------------------------

    def create_key(self, request: ApiRequest) -> ApiResponse:
        caller = guards.caller(request, "writeApiKeys")
        data = parsing.body(
            request,
            {
                "name": str,
                "permissions": list,
                "environment": str,
                "expires_at": (str, type(None)),
                "meta": (dict, type(None)),
                "allowed_ips": (list, type(None)),
                "rate_limit": (str, type(None)),
            },
        )
        if "name" not in data:
            raise parsing.invalid("name", "required")
        permissions = data.get("permissions", [])
        expires_at = parsing.date_time("expires_at", data.get("expires_at"))
        if "expires_at" not in data:
            expires_at = caller.expires_at  # a new key never outlives the key that made it
        guards.no_escalation(caller, permissions, expires_at, expires_given=True)
        environment = data.get("environment", caller.environment)
        if environment != caller.environment:
            raise AuthError(
                INSUFFICIENT_PERMISSIONS,
                f"A {caller.environment} key can only create {caller.environment} keys.",
            )
        own = guards.caller_key(self.keys, caller)
        allowed_ips = own.allowed_ips  # a key made by a restricted key is restricted as much
        if "allowed_ips" in data:
            allowed_ips = guards.allowed_ips_for(own, data["allowed_ips"])
        rate_limit = own.rate_limit  # and its requests no faster
        if "rate_limit" in data:
            rate_limit = guards.rate_limit_for(own, data["rate_limit"])
        created = self.keys.create(
            caller.account_id,
            data["name"],
            permissions=permissions,
            environment=environment,
            expires_at=expires_at,
            owner=caller.owner,
            meta=data.get("meta"),
            # No extra accounts (this API cannot give any), and the caller's own monthly cap:
            # a capped key must not make an uncapped one.
            page_limit=own.page_limit,
            allowed_ips=allowed_ips,
            rate_limit=rate_limit,
            actor=caller.key_id,
        )
        return json_response(201, _created(created))

    def list_keys(self, request: ApiRequest) -> ApiResponse:
        caller = guards.caller(request, "readApiKeys")
        query = parsing.query(
            request, ("search", "environment", "include_revoked", "limit", "cursor")
        )
        page = self.keys.list(
            caller.account_id,
            search=query.get("search"),
            environment=query.get("environment"),
            include_revoked=parsing.bool_param("include_revoked", query.get("include_revoked")),
            limit=parsing.int_param("limit", query.get("limit"), 20),
            cursor=query.get("cursor"),
        )
        return json_response(
            200,
            {
                "items": [key.to_dict() for key in page.items],
                "total": page.total,
                "next_cursor": page.next_cursor,
            },
        )

    def get_key(self, request: ApiRequest, key_id: str) -> ApiResponse:
        caller = guards.caller(request, "readApiKeys")
        return json_response(200, guards.own_key(self.keys, caller, key_id).to_dict())

    def update_key(self, request: ApiRequest, key_id: str) -> ApiResponse:
        caller = guards.caller(request, "writeApiKeys")
        data = parsing.body(
            request,
            {
                "name": str,
                "permissions": list,
                "expires_at": (str, type(None)),
                "meta": (dict, type(None)),
                "enabled": bool,
                "allowed_ips": (list, type(None)),
                "rate_limit": (str, type(None)),
            },
        )
        key = guards.own_key(self.keys, caller, key_id)
        guards.not_stronger(self.keys, caller, key)
        changes: dict[str, Any] = {k: v for k, v in data.items() if k != "expires_at"}
        own = (
            guards.caller_key(self.keys, caller)
            if {"allowed_ips", "rate_limit"} & set(data)
            else None
        )
        if own is not None and "allowed_ips" in data:
            changes["allowed_ips"] = guards.allowed_ips_for(own, data["allowed_ips"])
        if own is not None and "rate_limit" in data:
            changes["rate_limit"] = guards.rate_limit_for(own, data["rate_limit"])
        expires_given = "expires_at" in data
        expires_at = parsing.date_time("expires_at", data.get("expires_at"))
        if expires_given:
            changes["expires_at"] = expires_at
        guards.no_escalation(caller, data.get("permissions"), expires_at, expires_given)
        if data.get("enabled") is True:  # a disabled key back to life must not outlive us
            guards.not_outliving(
                caller, expires_at if expires_given else key.expires_at, "Cannot enable a key"
            )
        updated = self.keys.update(key.id, actor=caller.key_id, **changes)
        return json_response(200, updated.to_dict())

    def revoke_key(self, request: ApiRequest, key_id: str) -> ApiResponse:
        caller = guards.caller(request, "writeApiKeys")
        key = guards.own_key(self.keys, caller, key_id)
        guards.not_stronger(self.keys, caller, key)
        return json_response(200, self.keys.revoke(key.id, actor=caller.key_id).to_dict())

    def roll_key(self, request: ApiRequest, key_id: str) -> ApiResponse:
        caller = guards.caller(request, "writeApiKeys")
        data = parsing.body(request, {"grace_seconds": int})
        key = guards.own_key(self.keys, caller, key_id)
        guards.not_stronger(self.keys, caller, key, rolling=True)
        created = self.keys.roll(
            key.id, grace_seconds=data.get("grace_seconds", 0), actor=caller.key_id
        )
        return json_response(200, _created(created))

    # -- reports ----------------------------------------------------------------------------

    def get_usage(self, request: ApiRequest) -> ApiResponse:
        caller = guards.caller(request, "readUsage")
        query = parsing.query(request, ("month", "environment"))
        report = self.quotas.usage(
            caller.account_id, month=query.get("month"), environment=query.get("environment")
        )
        return json_response(200, report.to_dict())

    def list_audit(self, request: ApiRequest) -> ApiResponse:
        caller = guards.caller(request, "readAudit")
        query = parsing.query(request, ("action", "limit", "cursor"))
        page = self.audit.list(
            caller.account_id,
            action=query.get("action"),
            limit=parsing.int_param("limit", query.get("limit"), 50),
            cursor=query.get("cursor"),
        )
        return json_response(
            200,
            {"items": [entry_to_dict(e) for e in page.items], "next_cursor": page.next_cursor},
        )

    def get_openapi(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(200, [("content-type", "application/json")], openapi_document().encode())


class Route(NamedTuple):
    """A path below the mount (its groups are the handler's arguments) and, per method, the
    :class:`ManagementAPI` method that answers it."""

    pattern: re.Pattern[str]
    methods: Mapping[str, Callable[..., ApiResponse]]


#: Tried in order; the first pattern that matches the whole path serves it.
ROUTES: tuple[Route, ...] = (
    Route(re.compile(r"/auth/login"), {"POST": ManagementAPI.login}),
    Route(re.compile(r"/auth/logout"), {"POST": ManagementAPI.logout}),
    Route(
        re.compile(r"/apikeys"), {"GET": ManagementAPI.list_keys, "POST": ManagementAPI.create_key}
    ),
    Route(re.compile(r"/apikeys/([^/]+)/roll"), {"POST": ManagementAPI.roll_key}),
    Route(
        re.compile(r"/apikeys/([^/]+)"),
        {
            "GET": ManagementAPI.get_key,
            "PATCH": ManagementAPI.update_key,
            "DELETE": ManagementAPI.revoke_key,
        },
    ),
    Route(re.compile(r"/usage"), {"GET": ManagementAPI.get_usage}),
    Route(re.compile(r"/audit"), {"GET": ManagementAPI.list_audit}),
    Route(re.compile(r"/openapi\.json"), {"GET": ManagementAPI.get_openapi}),
)

#: Every route's path in one pattern, for :meth:`re.Pattern.fullmatch` against a path below
#: the mount with its trailing slashes stripped: what the admission check counts as the
#: management API's own (free of pages), never an app's route that shares the prefix.
ROUTE = re.compile("|".join(f"(?:{route.pattern.pattern})" for route in ROUTES))
