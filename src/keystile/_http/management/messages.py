"""What crosses between an adapter and the management API: one request in, one response out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keystile._core.errors import ApiError, render
from keystile._core.principal import Principal

#: The largest request body the API reads; adapters stop reading beyond it.
MAX_BODY = 64 * 1024


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


def json_response(status: int, data: Any) -> ApiResponse:
    body = json.dumps(data, separators=(",", ":")).encode()
    return ApiResponse(
        status,
        [("content-type", "application/json"), ("cache-control", "no-store")],
        body,
    )


def error_response(error: ApiError, request: ApiRequest | None = None) -> ApiResponse:
    accept = None
    if request is not None:
        accept = next((value for name, value in request.headers if name == "accept"), None)
    rendered = render(error, accept)
    return ApiResponse(rendered.status, list(rendered.headers), rendered.body)
