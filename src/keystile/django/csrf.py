"""Cross-site request forgery and keystile's credentials.

CSRF protection guards what a browser attaches to a request on its own: cookies. A keystile
credential is a header (``Authorization``, ``x-api-key``), which a page on another site cannot
make a browser send without a CORS preflight the API has to allow. So a request whose header
credential verified is marked the way Django's test client marks its requests
(``_dont_enforce_csrf_checks``, honoured by ``CsrfViewMiddleware.process_view``), and a view
taking keys needs no ``@csrf_exempt``.

A request that also carries Django's session cookie keeps the check: ``request.user`` (the
cookie's user) acts in it too, and such a client can send the token. Requests keystile did not
verify (exempt paths, a login form) are never marked.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CSRF_MARK", "exempt_header_credentials"]

#: The attribute CsrfViewMiddleware (and Django REST framework's SessionAuthentication) read.
CSRF_MARK = "_dont_enforce_csrf_checks"


def exempt_header_credentials(request: Any) -> None:
    """``request`` was admitted by a header credential: no CSRF token needed, unless it
    also carries the session cookie."""
    from django.conf import settings  # type: ignore[import-untyped,unused-ignore]

    if settings.SESSION_COOKIE_NAME not in request.COOKIES:
        setattr(request, CSRF_MARK, True)
