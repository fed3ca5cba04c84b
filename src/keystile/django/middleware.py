"""``MIDDLEWARE += ["keystile.django.KeystileMiddleware"]``: one class for WSGI and ASGI.

In an async stack the middleware is a coroutine (no thread of its own), in a sync stack it
blocks. The request is settled when the response is closed (a streamed body may report its
real cost while it streams), by the rules of :mod:`keystile._http.exchange`. Headers: under
ASGI from the raw ``scope`` (exact names, repeats kept); under WSGI from ``request.META``, with
the :mod:`keystile.wsgi` rules (the server must drop names with an underscore).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from keystile import AuthError
from keystile._http.bodies import comparable_length
from keystile._http.exchange import Exchange
from keystile._http.headers import environ_headers, scope_headers
from keystile.django.conf import get_engine
from keystile.django.decorators import EXCHANGE_ATTR, REFUSAL_MARK
from keystile.django.decorators import refusal as refusal
from keystile.django.decorators import refuse as refuse
from keystile.django.decorators import refuse_async as refuse_async

__all__ = ["KeystileMiddleware", "refusal", "refuse", "refuse_async", "request_headers"]


def request_headers(request: Any) -> list[tuple[str, str]]:
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and scope.get("type") == "http" and "headers" in scope:
        return scope_headers(scope)
    return environ_headers(request.META)


def _body(request: Any) -> bytes | None:
    if comparable_length(request.META) is None:
        return None
    try:
        body: bytes = request.body  # kept by Django: the view reads it (and POST) as usual
    except Exception:  # RequestDataTooBig and the like: Django answers those itself later
        return None
    return body


def _arrive(request: Any) -> Exchange | None:
    """The request's exchange, not yet admitted; None for an exempt path."""
    engine = get_engine()
    request.state = SimpleNamespace()
    request.principal = None
    if engine.is_exempt(request.path_info):
        return None
    exchange = Exchange(engine)
    setattr(request, EXCHANGE_ATTR, exchange)
    return exchange


def _parts(request: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    query, peer = request.META.get("QUERY_STRING", ""), request.META.get("REMOTE_ADDR")
    body = lambda: _body(request)  # noqa: E731 (read only for an Idempotency-Key)
    args = request_headers(request), request.method or "GET", request.path_info
    return args, {"query": query, "body": body, "peer": peer}


def _admitted(request: Any, exchange: Exchange) -> None:
    request.state.principal = request.principal = exchange.principal
    request.state.keystile = exchange.engine


def _started(exchange: Exchange, response: Any) -> bool:  # True: still to be settled
    if getattr(response, REFUSAL_MARK, False):
        return False
    for name, value in exchange.start(response.status_code):
        response.headers[name] = value
    if response.streaming:
        content = response.streaming_content
        is_async = getattr(response, "is_async", False)
        watch = exchange.watch_async if is_async else exchange.watch
        response.streaming_content = watch(content)
    return True


class KeystileMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        exchange = _arrive(request)
        if exchange is None:
            return self.get_response(request)
        try:
            args, kwargs = _parts(request)
            exchange.principal = exchange.engine.authenticate(*args, **kwargs)
        except AuthError as error:
            return refusal(request, error)
        _admitted(request, exchange)
        try:
            response = self.get_response(request)
        except BaseException:
            exchange.refund()
            raise
        if _started(exchange, response):  # settled once the server has sent it
            response._resource_closers.append(exchange.settle)
        return response

    async def __acall__(self, request: Any) -> Any:
        exchange = _arrive(request)
        if exchange is None:
            return await self.get_response(request)
        try:
            # ASGIHandler has already spooled the body: reading it here does not wait on I/O.
            args, kwargs = _parts(request)
            exchange.principal = await exchange.engine.authenticate_async(*args, **kwargs)
        except AuthError as error:
            return refusal(request, error)
        _admitted(request, exchange)
        try:
            response = await self.get_response(request)
        except BaseException:
            await exchange.refund_async()
            raise
        if _started(exchange, response):
            if response.streaming:  # settled once the stream is closed
                response._resource_closers.append(exchange.settle)
            else:  # the body is complete: settle here, without leaving the event loop
                await exchange.settle_async()
        return response

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """An :class:`AuthError` raised by a view is rendered from the one table."""
        if isinstance(exception, AuthError):
            return refuse(request, exception)
        return None
