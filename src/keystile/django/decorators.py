"""``@requires(...)`` and ``@cost(pages)`` for Django views: functions, class-based views
(decorate the class, a handler method, or use ``method_decorator``), sync and async; and
keystile's refusals as Django responses.

A refusal is returned as keystile's rendered response (no exception travels through
Django's exception middleware, which would cost an async view a thread hop) and is refunded.
"""

from __future__ import annotations

import functools
from typing import Any

from asgiref.sync import iscoroutinefunction

from keystile import AuthError, Keystile
from keystile._core.errors import render
from keystile._http import guards
from keystile._http.exchange import Exchange
from keystile._http.guards import Guard
from keystile._http.guards import principal_of as principal_of
from keystile.django.conf import get_engine

__all__ = ["cost", "engine_of", "principal_of", "requires"]

#: Set on keystile's own refusals, which are settled (refunded) when they are made.
REFUSAL_MARK = "_keystile_refusal"
#: Where the middleware keeps the request's exchange.
EXCHANGE_ATTR = "_keystile_exchange"


def engine_of(request: Any) -> Keystile:
    """The engine that authenticated ``request``, else the shared one."""
    return guards.engine_of(request, get_engine)


def refusal(request: Any, error: AuthError) -> Any:
    """An ``HttpResponse`` for ``error``, from keystile's one table."""
    from django.http import HttpResponse  # type: ignore[import-untyped,unused-ignore]

    rendered = render(error, request.META.get("HTTP_ACCEPT"))
    response = HttpResponse(rendered.body, status=rendered.status)
    for name, value in rendered.headers:
        response.headers[name] = value
    setattr(response, REFUSAL_MARK, True)
    return response


def refuse(request: Any, error: AuthError) -> Any:
    """Keystile refused this request after admitting it: nothing is billed."""
    exchange: Exchange | None = getattr(request, EXCHANGE_ATTR, None)
    if exchange is not None:
        exchange.refund()
    return refusal(request, error)


async def refuse_async(request: Any, error: AuthError) -> Any:
    exchange: Exchange | None = getattr(request, EXCHANGE_ATTR, None)
    if exchange is not None:
        await exchange.refund_async()
    return refusal(request, error)


def _find_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from django.http import HttpRequest  # type: ignore[import-untyped,unused-ignore]

    for value in (*args, *kwargs.values()):
        if isinstance(value, HttpRequest):
            return value
        inner = getattr(value, "_request", None)  # Django REST framework's Request wraps one
        if isinstance(inner, HttpRequest):
            return inner
    raise TypeError("keystile's view decorators need a view that receives the request")


def _is_async_view(view: Any) -> bool:
    if iscoroutinefunction(view):
        return True
    # method_decorator(..., name="dispatch") hands us partial(view_instance.dispatch): async
    # when the class-based view's handlers are.
    bound = getattr(view, "func", None)
    owner = getattr(bound, "__self__", None)
    return bool(getattr(type(owner), "view_is_async", False)) if owner is not None else False


_refusing = functools.partial(guards.guarded, refuse=refuse, refuse_async=refuse_async)


def _guard_view(view: Any, guard: Guard) -> Any:
    if not isinstance(view, type):
        return _refusing(view, guard, _find_request, is_async=_is_async_view(view))
    if not hasattr(view, "dispatch"):
        raise TypeError("decorate a view function or a class-based view")
    is_async = bool(getattr(view, "view_is_async", False))
    # dispatch(self, request, ...)
    view.dispatch = _refusing(view.dispatch, guard, lambda args, _: args[1], is_async=is_async)
    return view


requires, cost = guards.decorators(_guard_view)
