"""``HasRequiredPermissions``: the keystile permissions a DRF view asks of the key.

The view says which, in the first of these it has:

* ``get_required_permissions(self, request)``: any rule (a viewset can look at ``self.action``);
* ``required_permissions = [...]`` for every method, plus ``required_permissions_by_method =
  {"GET": [...], "POST": [...]}`` per method. With a ``..._by_method`` dict, a method it does
  not list is refused (HEAD is GET's): a method forgotten there is closed, not open.

Without a principal (no key) it refuses with AUTH_001. It raises keystile's refusal rather than
returning False, so the answer is keystile's own, not DRF's generic 401/403: in a composed
permission (``A | HasRequiredPermissions``) put it last.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission  # type: ignore[import-untyped,unused-ignore]

from keystile import AuthError, Principal
from keystile._core.errors import INSUFFICIENT_PERMISSIONS
from keystile._core.principal import check_permissions
from keystile._http.guards import principal_of
from keystile.drf.errors import Refused, http_request, refused

__all__ = ["HasRequiredPermissions", "required_permissions"]


def required_permissions(request: Any, view: Any) -> tuple[str, ...]:
    """What ``view`` asks of the key for ``request``; AUTH_004 for a method it does not list."""
    getter = getattr(view, "get_required_permissions", None)
    if callable(getter):
        return tuple(getter(request))
    needed = tuple(getattr(view, "required_permissions", ()))
    by_method = getattr(view, "required_permissions_by_method", None)
    if by_method is None:
        return needed
    method = (request.method or "GET").upper()
    if method == "HEAD" and method not in by_method:
        method = "GET"
    if method not in by_method:
        raise AuthError(INSUFFICIENT_PERMISSIONS)
    return needed + tuple(by_method[method])


class HasRequiredPermissions(BasePermission):  # type: ignore[misc,unused-ignore]
    def has_permission(self, request: Any, view: Any) -> bool:
        try:
            auth = request.auth  # force_authenticate(request, token=principal) in tests too
            principal = auth if isinstance(auth, Principal) else principal_of(http_request(request))
            check_permissions(principal, required_permissions(request, view))
        except AuthError as error:
            if request.method != http_request(request).method:
                # DRF asking about another method (OPTIONS metadata, the browsable API's
                # forms): an answer to that question, not a refusal of this request.
                raise Refused(error) from None
            raise refused(error, request, view) from None
        return True
