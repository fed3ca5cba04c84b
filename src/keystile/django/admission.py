"""The steps of a Django request through keystile: arrived, admitted, started, settled.

:class:`~keystile.django.KeystileMiddleware` takes them around every request; ``keystile.drf``
takes the same ones inside a Django REST framework view when no middleware is installed, so
both follow one policy (:mod:`keystile._http.exchange`). Headers: under ASGI from the raw
``scope`` (exact names, repeats kept); under WSGI from ``request.META``, with the
:mod:`keystile.wsgi` rules (the server must drop names with an underscore).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from keystile._core.environheaders import EnvironHeaders
from keystile._core.rawheaders import RawHeaders
from keystile._http.bodies import comparable_length
from keystile._http.exchange import Exchange
from keystile.django.conf import get_engine
from keystile.django.csrf import exempt_header_credentials
from keystile.django.decorators import EXCHANGE_ATTR, REFUSAL_MARK

__all__ = ["admit", "admitted", "arrive", "request_headers", "request_parts", "started"]


def request_headers(request: Any) -> list[tuple[str, str]]:
    return list(_headers(request))


def _headers(request: Any) -> Sequence[tuple[str, str]]:
    """For ``authenticate``: the headers, converted only when something reads them all."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and scope.get("type") == "http" and "headers" in scope:
        return RawHeaders(scope["headers"])
    return EnvironHeaders(request.META)


def _body(request: Any) -> bytes | None:
    if comparable_length(request.META) is None:
        return None
    try:
        body: bytes = request.body  # kept by Django: the view reads it (and POST) as usual
    except Exception:  # RequestDataTooBig and the like: Django answers those itself later
        return None
    return body


def arrive(request: Any) -> Exchange | None:
    """The request's exchange, not yet admitted; None for an exempt path."""
    engine = get_engine()
    request.state = SimpleNamespace()
    request.principal = None
    if engine.is_exempt(request.path_info):
        return None
    exchange = Exchange(engine)
    setattr(request, EXCHANGE_ATTR, exchange)
    return exchange


def request_parts(request: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of ``engine.authenticate`` (or ``authenticate_async``) for ``request``."""
    query, peer = request.META.get("QUERY_STRING", ""), request.META.get("REMOTE_ADDR")
    body = lambda: _body(request)  # noqa: E731 (read only for an Idempotency-Key)
    args = _headers(request), request.method or "GET", request.path_info
    return args, {"query": query, "body": body, "peer": peer}


def admitted(request: Any, exchange: Exchange) -> None:
    """The engine admitted ``request``: its principal where views look for it."""
    request.state.principal = request.principal = exchange.principal
    request.state.keystile = exchange.engine
    exempt_header_credentials(request)


def admit(request: Any) -> Exchange | None:
    """Blocking: the request's admitted exchange (AuthError if refused); None if exempt."""
    exchange = arrive(request)
    if exchange is not None:
        args, kwargs = request_parts(request)
        exchange.principal = exchange.engine.authenticate(*args, **kwargs)
        admitted(request, exchange)
    return exchange


def started(exchange: Exchange, response: Any) -> bool:
    """The response starts: its quota headers are added. True if it is still to be settled:
    not when keystile refused the request (and refunded it) in the app."""
    if getattr(response, REFUSAL_MARK, False) or exchange.settled:
        return False
    for name, value in exchange.start(response.status_code):
        response.headers[name] = value
    if response.streaming:
        content = response.streaming_content
        is_async = getattr(response, "is_async", False)
        watch = exchange.watch_async if is_async else exchange.watch
        response.streaming_content = watch(content)
    return True
