"""``@requires(...)`` and ``@cost(pages)`` for Django views: functions, class-based views
(decorate the class, a handler method, or use ``method_decorator``), sync and async.

A refusal is returned as keystile's rendered response (no exception travels through
Django's exception middleware, which would cost an async view a thread hop) and is refunded.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction

from keystile._core.errors import MISSING_API_KEY, AuthError
from keystile._core.metering import check_route_cost
from keystile._core.principal import Principal, check_permissions
from keystile._runtime.engine import Keystile
from keystile.django.conf import get_engine
from keystile.django.middleware import refuse, refuse_async

T = TypeVar("T")
Check = Callable[[Any], None]
AsyncCheck = Callable[[Any], Awaitable[None]]


def principal_of(request: Any) -> Principal:
    """The principal the middleware put on the request (or raises AUTH_001)."""
    principal = getattr(request, "principal", None)
    if not isinstance(principal, Principal):
        principal = getattr(getattr(request, "state", None), "principal", None)
    if not isinstance(principal, Principal):
        raise AuthError(MISSING_API_KEY)
    return principal


def engine_of(request: Any) -> Keystile:
    engine = getattr(getattr(request, "state", None), "keystile", None)
    return engine if isinstance(engine, Keystile) else get_engine()


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


def _wrap_function(view: Callable[..., Any], check: Check, check_async: AsyncCheck) -> Any:
    if _is_async_view(view):

        @functools.wraps(view)
        async def async_view(*args: Any, **kwargs: Any) -> Any:
            request = _find_request(args, kwargs)
            try:
                await check_async(request)
            except AuthError as error:
                return await refuse_async(request, error)
            return await view(*args, **kwargs)

        return async_view

    @functools.wraps(view)
    def sync_view(*args: Any, **kwargs: Any) -> Any:
        request = _find_request(args, kwargs)
        try:
            check(request)
        except AuthError as error:
            return refuse(request, error)
        return view(*args, **kwargs)

    return sync_view


def _wrap_class(view_class: type[T], check: Check, check_async: AsyncCheck) -> type[T]:
    original = view_class.dispatch  # type: ignore[attr-defined]
    if getattr(view_class, "view_is_async", False):

        async def async_dispatch(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                await check_async(request)
            except AuthError as error:
                return await refuse_async(request, error)
            return await original(self, request, *args, **kwargs)

        dispatch: Any = async_dispatch
    else:

        def sync_dispatch(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                check(request)
            except AuthError as error:
                return refuse(request, error)
            return original(self, request, *args, **kwargs)

        dispatch = sync_dispatch
    view_class.dispatch = functools.wraps(original)(dispatch)  # type: ignore[attr-defined]
    return view_class


def _decorator(check: Check, check_async: AsyncCheck) -> Callable[[T], T]:
    def decorate(view: T) -> T:
        if isinstance(view, type):
            if not hasattr(view, "dispatch"):
                raise TypeError("decorate a view function or a class-based view")
            return _wrap_class(view, check, check_async)  # type: ignore[return-value]
        wrapped: T = _wrap_function(view, check, check_async)  # type: ignore[arg-type]
        return wrapped

    return decorate


def requires(*permissions: str) -> Callable[[T], T]:
    """Every permission must be granted (``*`` wildcards in grants), else 403 AUTH_004."""

    def check(request: Any) -> None:
        check_permissions(principal_of(request), permissions)

    async def check_async(request: Any) -> None:
        check(request)

    return _decorator(check, check_async)


def cost(pages: int) -> Callable[[T], T]:
    """The view costs ``pages``: reserved before it runs (429 BILLING_001 if over).

    The view may still report the real cost with ``request.principal.charge(n)``."""
    check_route_cost(pages)

    def check(request: Any) -> None:
        principal = principal_of(request)
        engine_of(request).reserve(principal, pages)

    async def check_async(request: Any) -> None:
        principal = principal_of(request)
        await engine_of(request).reserve_async(principal, pages)

    return _decorator(check, check_async)


__all__ = ["cost", "engine_of", "principal_of", "requires"]
