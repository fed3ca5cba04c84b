"""``MIDDLEWARE += ["keystile.django.KeystileMiddleware"]``: one class for WSGI and ASGI.

In an async stack the middleware is a coroutine (no thread of its own), in a sync stack it
blocks. The request is settled when the response is closed (a streamed body may report its
real cost while it streams), by the rules of :mod:`keystile._http.exchange`; the steps are in
:mod:`keystile.django.admission`.

A request admitted by its key needs no CSRF token (:mod:`keystile.django.csrf`). Any place in
``MIDDLEWARE`` will do for that: Django runs the ``process_view`` hooks (CsrfViewMiddleware's
check) only once every middleware has been called, so the mark is always in time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from keystile import AuthError
from keystile.django.admission import admit, admitted, arrive, request_parts, started
from keystile.django.admission import request_headers as request_headers
from keystile.django.decorators import refusal as refusal
from keystile.django.decorators import refuse as refuse
from keystile.django.decorators import refuse_async as refuse_async

__all__ = ["KeystileMiddleware", "refusal", "refuse", "refuse_async", "request_headers"]


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
        try:
            exchange = admit(request)
        except AuthError as error:
            return refusal(request, error)
        if exchange is None:
            return self.get_response(request)
        try:
            response = self.get_response(request)
        except BaseException:
            exchange.refund()
            raise
        if started(exchange, response):  # settled once the server has sent it
            response._resource_closers.append(exchange.settle)
        return response

    async def __acall__(self, request: Any) -> Any:
        exchange = arrive(request)
        if exchange is None:
            return await self.get_response(request)
        try:
            # ASGIHandler has already spooled the body: reading it here does not wait on I/O.
            args, kwargs = request_parts(request)
            exchange.principal = await exchange.engine.authenticate_async(*args, **kwargs)
        except AuthError as error:
            return refusal(request, error)
        admitted(request, exchange)
        try:
            response = await self.get_response(request)
        except BaseException:
            await exchange.refund_async()
            raise
        if started(exchange, response):
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
