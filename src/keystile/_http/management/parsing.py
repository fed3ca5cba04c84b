"""Reading a management request's body and query: only the fields a route allows, of the
right JSON types, or a 422 that names the field."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from keystile._core.errors import INVALID_REQUEST, RequestError
from keystile._http.management.messages import MAX_BODY, ApiRequest


def invalid(field: str, message: str) -> RequestError:
    return RequestError(INVALID_REQUEST, f"{field}: {message}", field=field)


def body(request: ApiRequest, allowed: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The JSON object body, with only ``allowed`` fields of the right JSON types."""
    if len(request.body) > MAX_BODY:
        raise invalid("body", f"at most {MAX_BODY} bytes")
    if not request.body.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise invalid("body", "not valid JSON (or nested too deeply)") from None
    if not isinstance(data, dict):
        raise invalid("body", "expected a JSON object")
    for name, value in data.items():
        if name not in allowed:
            raise invalid(name, "unknown field")
        kinds = allowed[name]
        # JSON true is a Python int too: a bool passes only where bool is named.
        if isinstance(value, bool) and bool not in (
            kinds if isinstance(kinds, tuple) else (kinds,)
        ):
            raise invalid(name, "wrong type")
        if not isinstance(value, kinds):
            raise invalid(name, "wrong type")
    return data


def date_time(field: str, value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise invalid(field, "expected an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise invalid(field, "the date-time needs a time zone, e.g. 2027-01-01T00:00:00Z")
    return parsed


def query(request: ApiRequest, allowed: Sequence[str]) -> dict[str, str]:
    try:
        parsed = parse_qs(request.query_string, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise invalid("query", "malformed query string") from None
    out: dict[str, str] = {}
    for name, values in parsed.items():
        if name not in allowed:
            raise invalid(name, "unknown query parameter")
        if len(values) != 1:
            raise invalid(name, "given more than once")
        out[name] = values[0]
    return out


def int_param(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise invalid(name, "expected a whole number")
    return int(raw)


def bool_param(name: str, raw: str | None) -> bool:
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise invalid(name, "expected true or false")
    return raw == "true"
