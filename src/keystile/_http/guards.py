"""What a route asks before it runs, once for every adapter: the principal, the engine,
``requires(...)`` (permissions) and ``cost(pages)`` (a reservation), blocking or async.

Adapters keep the principal and the engine where their framework keeps request data: on
``request.state`` (Starlette, FastAPI, Flask, Django) or in the WSGI environ. :func:`principal_of`
and :func:`engine_of` read either. A :class:`Guard` is a check on such a request; an adapter
turns it into its own decorator with :func:`guarded`, telling it how to find the request among
the endpoint's arguments and, if the framework wants a response rather than an exception, how
to answer a refusal.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from keystile import AuthError, Keystile, Principal
from keystile._core.errors import MISSING_API_KEY
from keystile._core.metering import check_route_cost
from keystile._core.principal import check_permissions

F = TypeVar("F", bound=Callable[..., Any])
#: Where the WSGI middleware keeps them in the environ.
PRINCIPAL_KEY = "keystile.principal"
ENGINE_KEY = "keystile"

FindRequest = Callable[[tuple[Any, ...], dict[str, Any]], Any]
Refuse = Callable[[Any, AuthError], Any]
RefuseAsync = Callable[[Any, AuthError], Awaitable[Any]]


def principal_of(request: Any) -> Principal:
    """The principal keystile put on ``request`` (its ``state``) or a WSGI environ; raises
    AUTH_001 when there is none (an exempt path, or no middleware in front)."""
    if isinstance(request, dict):  # not Mapping: Starlette's requests are Mappings too
        principal = request.get(PRINCIPAL_KEY)
    else:
        principal = getattr(getattr(request, "state", None), "principal", None)
    if not isinstance(principal, Principal):
        raise AuthError(MISSING_API_KEY)
    return principal


def engine_of(request: Any, default: Callable[[], Keystile] | None = None) -> Keystile:
    """The engine that authenticated ``request``; ``default()`` when none did."""
    if isinstance(request, dict):
        engine = request.get(ENGINE_KEY)
    else:
        engine = getattr(getattr(request, "state", None), "keystile", None)
    if isinstance(engine, Keystile):
        return engine
    if default is not None:
        return default()
    raise RuntimeError("cost() needs keystile's middleware (KeystileMiddleware) in front of it")


class Guard:
    """A check on a request before its route runs: ``check`` blocks, ``check_async`` does
    not. Either raises AuthError to refuse."""

    __slots__ = ("check", "check_async")

    def __init__(
        self, check: Callable[[Any], None], check_async: Callable[[Any], Awaitable[None]]
    ) -> None:
        self.check = check
        self.check_async = check_async


def permissions_guard(permissions: tuple[str, ...]) -> Guard:
    """Every permission must be granted (``*`` wildcards in grants), else AUTH_004."""

    def check(request: Any) -> None:
        check_permissions(principal_of(request), permissions)

    async def check_async(request: Any) -> None:
        check(request)

    return Guard(check, check_async)


def cost_guard(pages: int, engine: Callable[[Any], Keystile] = engine_of) -> Guard:
    """The route costs ``pages``: reserved before it runs (BILLING_001 if over). The
    handler may still report the real cost with ``principal.charge(n)``."""
    check_route_cost(pages)

    def check(request: Any) -> None:
        principal = principal_of(request)
        engine(request).reserve(principal, pages)

    async def check_async(request: Any) -> None:
        principal = principal_of(request)
        await engine(request).reserve_async(principal, pages)

    return Guard(check, check_async)


def guarded(
    endpoint: F,
    guard: Guard,
    find_request: FindRequest,
    *,
    is_async: bool | None = None,
    blocking: bool = False,
    refuse: Refuse | None = None,
    refuse_async: RefuseAsync | None = None,
) -> F:
    """``endpoint`` with ``guard`` checked first, async when the endpoint is (``is_async``
    overrides the guess). ``blocking``: an async endpoint still gets the blocking check (a
    framework that runs it in an event loop of its own per request). ``refuse``: answer a
    refusal with ``refuse(request, error)`` instead of raising it."""
    if is_async is None:
        is_async = inspect.iscoroutinefunction(endpoint)
    if is_async:
        check_async = guard.check_async

        @functools.wraps(endpoint)
        async def async_endpoint(*args: Any, **kwargs: Any) -> Any:
            request = find_request(args, kwargs)
            try:
                if blocking:
                    guard.check(request)
                else:
                    await check_async(request)
            except AuthError as error:
                if refuse_async is None:
                    raise
                return await refuse_async(request, error)
            return await endpoint(*args, **kwargs)

        return async_endpoint  # type: ignore[return-value]

    check = guard.check

    @functools.wraps(endpoint)
    def sync_endpoint(*args: Any, **kwargs: Any) -> Any:
        request = find_request(args, kwargs)
        try:
            check(request)
        except AuthError as error:
            if refuse is None:
                raise
            return refuse(request, error)
        return endpoint(*args, **kwargs)

    return sync_endpoint  # type: ignore[return-value]


class Requires(Protocol):
    def __call__(self, *permissions: str) -> Callable[[F], F]: ...


class Cost(Protocol):
    def __call__(self, pages: int) -> Callable[[F], F]: ...


def decorators(wrap: Callable[[Any, Guard], Any]) -> tuple[Requires, Cost]:
    """An adapter's ``requires`` and ``cost``; ``wrap(endpoint, guard)`` puts the guard in
    front of an endpoint (:func:`guarded`, told how to find the request)."""

    def requires(*permissions: str) -> Callable[[F], F]:
        """Decorator: every permission must be granted (``*`` wildcards in grants), else
        AUTH_004."""
        guard = permissions_guard(permissions)
        return lambda endpoint: wrap(endpoint, guard)

    def cost(pages: int) -> Callable[[F], F]:
        """Decorator: the route costs ``pages``, reserved before it runs (BILLING_001 if
        over). The handler may still report the real cost with ``principal.charge(n)``."""
        guard = cost_guard(pages)
        return lambda endpoint: wrap(endpoint, guard)

    return requires, cost
