"""Request headers as keystile reads them, from an ASGI scope or a WSGI environ: ``(lowercase
name, value)`` pairs, values as the server's latin-1 text (the core refuses non-ASCII)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from keystile._core.credentials import asgi_headers
from keystile._core.environheaders import EnvironHeaders, environ_headers

__all__ = ["encode_headers", "environ_headers", "environ_request", "request_path", "scope_headers"]


def scope_headers(scope: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An ASGI scope's raw headers: exact names, repeats kept."""
    return asgi_headers(scope["headers"])


def encode_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Headers for an ASGI message."""
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def environ_request(environ: Mapping[str, Any]) -> tuple[EnvironHeaders, dict[str, Any]]:
    """A WSGI environ's (or ``request.META``'s) headers, and the ``query`` and ``peer`` to
    pass with them to ``authenticate``."""
    extra = {"query": environ.get("QUERY_STRING", ""), "peer": environ.get("REMOTE_ADDR")}
    return EnvironHeaders(environ), extra


def request_path(environ: Mapping[str, Any]) -> str:
    """``PATH_INFO`` as text: the path below the app's mount point, as its routes see it."""
    raw = environ.get("PATH_INFO") or "/"
    try:  # PEP 3333 carries the URL's bytes as latin-1; they are UTF-8 on the wire.
        path: str = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        path = raw
    return path
