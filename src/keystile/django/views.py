"""The key management HTTP API as a Django view (see :mod:`keystile._http.management`).

urls.py::

    path("v1/", include("keystile.django.urls"))

settings.py::

    KEYSTILE_MANAGEMENT_PREFIX = "/v1"     # where it is included

The engine has to know the prefix before the first request reaches the middleware, so that
``<prefix>/auth/login`` and ``<prefix>/openapi.json`` need no key and management requests
cost no pages; only the URLconf knows it, and it is read after the middleware has run, hence
the setting. (Call :func:`mount` yourself when ``KEYSTILE`` is a ready engine.) A request that
arrives under a prefix the engine was not told about mounts it then, with a warning.

The view is sync (Django runs it in a thread under ASGI: the API blocks anyway) and
CSRF-exempt: its callers authenticate with a key, not a cookie.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped,unused-ignore]
from django.views.decorators.csrf import (  # type: ignore[import-untyped,unused-ignore]
    csrf_exempt,
)

from keystile import Keystile, Principal
from keystile._http.bodies import read_limited
from keystile._http.management import MAX_BODY, ApiRequest, ApiResponse, ManagementAPI
from keystile._http.mounting import management_api
from keystile.django.conf import PREFIX_SETTING, get_engine, mount, mounted
from keystile.django.conf import clean_prefix as _clean
from keystile.django.middleware import request_headers

__all__ = ["api", "management_view", "mount", "mounted"]

log = logging.getLogger("keystile")
_apis: weakref.WeakKeyDictionary[Keystile, ManagementAPI] = weakref.WeakKeyDictionary()


def _api(engine: Keystile) -> ManagementAPI:
    api = _apis.get(engine)
    if api is None:
        api = _apis[engine] = management_api(engine)
    return api


def _content_length(request: HttpRequest) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def read_body(request: HttpRequest, limit: int = MAX_BODY) -> bytes:
    """At most ``limit`` bytes of the body (more reads as oversized: a 422). Not
    ``request.body``: that reads everything up to DATA_UPLOAD_MAX_MEMORY_SIZE first."""
    return read_limited(request.read, _content_length(request), limit)


def _query_string(request: HttpRequest) -> str:
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and isinstance(scope.get("query_string"), bytes):
        return str(scope["query_string"].decode("latin-1"))  # the raw bytes, as on Starlette
    return str(request.META.get("QUERY_STRING", ""))


def api_request(request: HttpRequest, path: str) -> ApiRequest:
    """The Django request as the API sees it; ``path`` is below the mount."""
    principal = getattr(request, "principal", None)
    return ApiRequest(
        method=request.method or "GET",
        path=path,
        query_string=_query_string(request),
        headers=request_headers(request),
        body=read_body(request),
        principal=principal if isinstance(principal, Principal) else None,
        client=request.META.get("REMOTE_ADDR") or None,
    )


def django_response(response: ApiResponse) -> Any:
    out = HttpResponse(response.body, status=response.status)
    if not any(name.lower() == "content-type" for name, _ in response.headers):
        del out.headers["Content-Type"]  # no Django default (text/html) on a bodiless 204
    for name, value in response.headers:
        out.headers[name] = value
    out.headers["Content-Length"] = str(len(response.body))
    return out


def management_view(request: HttpRequest, rest: str = "") -> Any:
    """Every management route: ``rest`` is the path below the include."""
    engine = get_engine()
    path_info = request.path_info
    prefix = path_info[: len(path_info) - len(rest)]
    if not mounted(prefix, engine):
        log.warning(
            "keystile: the management API is included at %r but the engine was not told: set "
            "%s = %r (or call keystile.django.views.mount(%r)); mounting it now, but until "
            "then its login needed a key and its requests cost pages",
            _clean(prefix) + "/",
            PREFIX_SETTING,
            _clean(prefix),
            _clean(prefix),
        )
        mount(prefix, engine)
    return django_response(_api(engine).handle(api_request(request, "/" + rest)))


#: The view the urls use: CSRF-exempt (its callers send a key, not a session cookie).
api: Callable[..., Any] = csrf_exempt(management_view)
