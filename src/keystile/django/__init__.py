"""Django: middleware, view decorators, system checks, and a key store in the project's DB.

settings.py::

    INSTALLED_APPS += ["keystile.django"]          # checks; models + admin for "django://"
    MIDDLEWARE += ["keystile.django.KeystileMiddleware"]
    KEYSTILE = {"store": "django://", "exempt_paths": ["/health", "/admin/*"]}

views.py::

    from keystile.django import cost, requires

    @requires("jobs:read")
    def jobs(request):
        return JsonResponse({"account": request.principal.account_id})

The principal is ``request.principal`` and ``request.state.principal``; the engine (for
``engine.keys`` and ``engine.quotas``) is :func:`get_engine`.
"""

from keystile.django.conf import get_engine, reset_engine
from keystile.django.decorators import cost, engine_of, principal_of, requires
from keystile.django.middleware import KeystileMiddleware
from keystile.django.store import register_scheme

# On import rather than in the app's ready(): Django imports every app's package before it
# loads models, so an engine built while another app's models load finds "django://" too.
register_scheme()

__all__ = [
    "KeystileMiddleware",
    "cost",
    "engine_of",
    "get_engine",
    "principal_of",
    "requires",
    "reset_engine",
]
