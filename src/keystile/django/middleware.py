"""``MIDDLEWARE += ["keystile.django.KeystileMiddleware"]``: one class for WSGI and ASGI.

Django picks the mode from the stack: in an async stack the middleware is a coroutine
(``authenticate_async``, no thread of its own), in a sync stack it blocks. Exempt paths pass
through; refusals are rendered from keystile's one table; metered responses get the quota
headers; the request is settled when the response is closed (a streamed body may report its
real cost while it streams), with 5xx, unhandled exceptions and keystile's own refusals from
:func:`~keystile.django.requires` / :func:`~keystile.django.cost` refunded.

Headers: under ASGI they are read from the raw ``scope`` (exact names, repeats kept, so
``X_Api_Key`` is never ``X-Api-Key``); under WSGI from ``request.META``, with the
:mod:`keystile.wsgi` rules (the server must drop names with an underscore, as runserver,
gunicorn 22+ and waitress do).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from keystile._core.credentials import asgi_headers
from keystile._core.errors import AuthError, render
from keystile._core.metering import IDEMPOTENT_BODY_LIMIT
from keystile._core.principal import Principal
from keystile._runtime.engine import Keystile
from keystile.django.conf import get_engine
from keystile.wsgi import environ_headers

#: Set on keystile's own refusals, which are settled (refunded) when they are made.
REFUSAL_MARK = "_keystile_refusal"


def request_headers(request: Any) -> list[tuple[str, str]]:
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and scope.get("type") == "http" and "headers" in scope:
        return _scope_headers(scope)
    return environ_headers(request.META)


def refusal(error: AuthError) -> Any:
    """An ``HttpResponse`` for ``error``, from keystile's one table."""
    from django.http import HttpResponse  # type: ignore[import-untyped,unused-ignore]

    rendered = render(error)
    response = HttpResponse(rendered.body, status=rendered.status)
    for name, value in rendered.headers:
        response.headers[name] = value
    setattr(response, REFUSAL_MARK, True)
    return response


def refuse(request: Any, error: AuthError) -> Any:
    """Keystile refused this request after admitting it: nothing is billed."""
    state = getattr(request, "state", None)
    principal = getattr(state, "principal", None)
    engine = getattr(state, "keystile", None)
    if isinstance(principal, Principal) and isinstance(engine, Keystile):
        engine.settle(principal, None)
    return refusal(error)


async def refuse_async(request: Any, error: AuthError) -> Any:
    state = getattr(request, "state", None)
    principal = getattr(state, "principal", None)
    engine = getattr(state, "keystile", None)
    if isinstance(principal, Principal) and isinstance(engine, Keystile):
        await engine.settle_async(principal, None)
    return refusal(error)


def _idempotency_parts(request: Any, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """Query and body, which tell an Idempotency-Key's retry from a reuse of the key; the
    body is read only once the credential is verified."""
    return {"query": request.META.get("QUERY_STRING", ""), "body": lambda: _body(request)}


def _body(request: Any) -> bytes | None:
    if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length > IDEMPOTENT_BODY_LIMIT:
        return None
    try:
        body: bytes = request.body  # kept by Django: the view reads it (and POST) as usual
    except Exception:  # RequestDataTooBig and the like: Django answers those itself later
        return None
    return body


def _admit(request: Any, engine: Keystile, principal: Principal | None) -> None:
    state = SimpleNamespace()
    if principal is not None:
        state.principal = principal
        state.keystile = engine
    request.state = state
    request.principal = principal


def _add_quota_headers(engine: Keystile, principal: Principal, response: Any) -> bool:
    """Quota headers; True when the response still has to be settled by the caller."""
    if getattr(response, REFUSAL_MARK, False):
        return False
    for name, value in engine.quota_headers(principal):
        response.headers[name] = value
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
        engine = get_engine()
        path = request.path_info
        if engine.is_exempt(path):
            _admit(request, engine, None)
            return self.get_response(request)
        headers = request_headers(request)
        try:
            principal = engine.authenticate(
                headers, request.method or "GET", path, **_idempotency_parts(request, headers)
            )
        except AuthError as error:
            return refusal(error)
        _admit(request, engine, principal)
        try:
            response = self.get_response(request)
        except BaseException:
            engine.settle(principal, None)  # unhandled: refunded
            raise
        if _add_quota_headers(engine, principal, response):
            # After the body: Django closes the response once the server has sent it.
            response._resource_closers.append(
                lambda: engine.settle(principal, response.status_code)
            )
        return response

    async def __acall__(self, request: Any) -> Any:
        engine = get_engine()
        path = request.path_info
        if engine.is_exempt(path):
            _admit(request, engine, None)
            return await self.get_response(request)
        headers = request_headers(request)
        try:
            # ASGIHandler has already spooled the body: reading it here does not wait on I/O.
            principal = await engine.authenticate_async(
                headers, request.method or "GET", path, **_idempotency_parts(request, headers)
            )
        except AuthError as error:
            return refusal(error)
        _admit(request, engine, principal)
        try:
            response = await self.get_response(request)
        except BaseException:
            await engine.settle_async(principal, None)
            raise
        if _add_quota_headers(engine, principal, response):
            if response.streaming:  # settled once the stream is closed
                response._resource_closers.append(
                    lambda: engine.settle(principal, response.status_code)
                )
            else:  # the body is complete: settle here, without leaving the event loop
                await engine.settle_async(principal, response.status_code)
        return response

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """An :class:`AuthError` raised by a view is rendered from the one table."""
        if isinstance(exception, AuthError):
            return refuse(request, exception)
        return None


__all__ = ["KeystileMiddleware", "refusal", "refuse", "refuse_async", "request_headers"]


def _scope_headers(scope: dict[str, Any]) -> list[tuple[str, str]]:
    return asgi_headers(scope["headers"])
