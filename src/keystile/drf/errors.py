"""Keystile's refusals in a Django REST framework view, whichever exception handler answers.

A refusal is raised as :class:`Refused`, an ``APIException``. DRF's own exception handler
answers it with keystile's status and JSON body, its ``WWW-Authenticate`` (``auth_header``)
and ``Retry-After`` (``wait``); the other headers (``Cache-Control: no-store``, ``Vary``,
``RateLimit``) go on the view's ``headers``, which DRF adds to whatever response the view ends
with. :func:`exception_handler` answers it byte for byte as keystile's other adapters do, RFC
9457 problem details included (DRF's renderers have no ``application/problem+json``).
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework.exceptions import APIException  # type: ignore[import-untyped,unused-ignore]

from keystile import AuthError
from keystile._core.errors import render
from keystile._http.exchange import Exchange
from keystile.django.decorators import EXCHANGE_ATTR, refuse

__all__ = ["Refused", "exception_handler", "refused"]

#: What the response's renderer decides, not the refusal.
_BODY_HEADERS = frozenset({"content-type", "content-length"})


class Refused(APIException):  # type: ignore[misc,unused-ignore]
    """Keystile refused the request; ``error`` is the :class:`~keystile.AuthError`."""

    def __init__(self, error: AuthError) -> None:
        rendered = render(error)
        self.error = error
        self.status_code = rendered.status
        #: Every header keystile's answer carries but the body's own.
        self.headers = [(k, v) for k, v in rendered.headers if k not in _BODY_HEADERS]
        found = dict(self.headers)
        self.auth_header = found.get("www-authenticate")
        retry_after = found.get("retry-after", "")
        self.wait = int(retry_after) if retry_after.isdigit() else None
        super().__init__(json.loads(rendered.body))


def http_request(request: Any) -> Any:
    """The ``HttpRequest`` a DRF ``Request`` wraps (or ``request`` itself)."""
    return getattr(request, "_request", request)


def refused(error: AuthError, request: Any, view: Any = None) -> Refused:
    """``error`` as the exception a DRF view raises: the request is refunded (keystile's own
    refusal is never billed) and ``view``'s response will carry keystile's headers."""
    exchange: Exchange | None = getattr(http_request(request), EXCHANGE_ATTR, None)
    if exchange is not None:
        exchange.refund()
    exc = Refused(error)
    headers = getattr(view, "headers", None)
    if isinstance(headers, dict):
        for name, value in exc.headers:
            if name == "vary":  # DRF merges its own Vary with the response's
                headers["Vary"] = f"{headers['Vary']}, {value}" if "Vary" in headers else value
            else:
                headers[name] = value
    return exc


def exception_handler(exc: Exception, context: dict[str, Any]) -> Any:
    """``REST_FRAMEWORK["EXCEPTION_HANDLER"] = "keystile.drf.exception_handler"``: keystile's
    refusals (and an :class:`~keystile.AuthError` a view raises) answered from keystile's one
    table, in the shape the client's ``Accept`` asks for; anything else by DRF's handler."""
    # Here, not at the top: rest_framework.views imports the authentication classes (this
    # package) while it is itself being imported.
    from rest_framework.views import (  # type: ignore[import-untyped,unused-ignore]
        exception_handler as drf_exception_handler,
    )
    from rest_framework.views import set_rollback  # type: ignore[import-untyped,unused-ignore]

    error = exc.error if isinstance(exc, Refused) else exc
    request = context.get("request")
    if not isinstance(error, AuthError) or request is None:
        return drf_exception_handler(exc, context)
    set_rollback()
    return refuse(http_request(request), error)
