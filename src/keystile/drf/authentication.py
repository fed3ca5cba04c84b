"""``KeystileAuthentication``: DRF's ``request.auth`` is the key's :class:`~keystile.Principal`,
``request.user`` a :class:`KeyUser` for the key.

Behind :class:`~keystile.django.KeystileMiddleware` it reads what the middleware decided (and
the middleware settles the request). Without the middleware it admits the request itself, by
the same steps (:mod:`keystile.django.admission`), and settles it when the view's response is
finalized; then a request without a keystile credential is left to the next authentication
class (``Authorization`` of another scheme, or a Bearer token that is not keystile's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework.authentication import (  # type: ignore[import-untyped,unused-ignore]
    BaseAuthentication,
)

from keystile import AuthError, Principal
from keystile._core.errors import MISSING_API_KEY, render
from keystile._core.metering import check_route_cost
from keystile._http.exchange import Exchange
from keystile.django.admission import admit, request_headers, started
from keystile.django.conf import get_engine
from keystile.django.decorators import engine_of
from keystile.drf.errors import http_request, refused
from keystile.drf.users import KeyUser

__all__ = ["KeystileAuthentication", "carries_key", "view_cost"]

#: What keystile's 401s carry (RFC 6750 3.1): DRF answers 401, not 403, when it has one.
CHALLENGE = dict(render(AuthError(MISSING_API_KEY)).headers)["www-authenticate"]


def carries_key(headers: list[tuple[str, str]], token_prefix: str) -> bool:
    """Whether the headers hold a keystile credential (well formed or not)."""
    for name, value in headers:
        if name in ("x-api-key", "x-api-secret"):
            return True
        if name == "authorization":
            words = value.split(maxsplit=1)
            if len(words) == 2 and words[0].lower() == "bearer":
                return words[1].strip().startswith(f"{token_prefix}_")
    return False


def view_cost(view: Any, method: str) -> int | None:
    """The view's ``keystile_cost``: pages, or a dict by viewset action or by HTTP method."""
    declared = getattr(view, "keystile_cost", None)
    if isinstance(declared, Mapping):
        action = getattr(view, "action", None)
        declared = declared[action] if action in declared else declared.get(method)
    return None if declared is None else check_route_cost(declared)


def _settled_with(view: Any, exchange: Exchange) -> None:
    """The view's response settles ``exchange`` (when the server closes it), an exception
    DRF does not answer refunds it: this view instance serves this one request."""
    finalize, handle = view.finalize_response, view.handle_exception

    def finalize_response(request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = finalize(request, response, *args, **kwargs)
        if started(exchange, response):
            response._resource_closers.append(exchange.settle)
        return response

    def handle_exception(exc: Exception) -> Any:
        try:
            return handle(exc)
        except BaseException:
            exchange.refund()
            raise

    view.finalize_response = finalize_response
    view.handle_exception = handle_exception


class KeystileAuthentication(BaseAuthentication):  # type: ignore[misc,unused-ignore]
    """``DEFAULT_AUTHENTICATION_CLASSES`` (or a view's ``authentication_classes``) entry."""

    def authenticate(self, request: Any) -> tuple[KeyUser, Principal] | None:
        raw = http_request(request)
        view = request.parser_context.get("view")
        if not hasattr(raw, "principal"):  # no KeystileMiddleware in front
            if not carries_key(request_headers(raw), get_engine().settings.token_prefix):
                return None
            if view is None:
                raise RuntimeError("KeystileAuthentication needs a DRF view or the middleware")
            try:
                exchange = admit(raw)
            except AuthError as error:
                raise refused(error, request, view) from None
            if exchange is not None:
                _settled_with(view, exchange)
        principal = raw.principal
        if not isinstance(principal, Principal):  # an exempt path
            return None
        pages = view_cost(view, request.method)
        if pages is not None:
            try:
                engine_of(raw).reserve(principal, pages)
            except AuthError as error:
                raise refused(error, request, view) from None
        return KeyUser(principal), principal

    def authenticate_header(self, request: Any) -> str:
        return CHALLENGE
