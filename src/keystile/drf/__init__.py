"""Django REST framework: keystile's keys as DRF authentication, permissions and quota costs.

settings.py::

    MIDDLEWARE += ["keystile.django.KeystileMiddleware"]   # optional, see below
    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": ["keystile.drf.KeystileAuthentication"],
        "DEFAULT_PERMISSION_CLASSES": ["keystile.drf.HasRequiredPermissions"],
        "EXCEPTION_HANDLER": "keystile.drf.exception_handler",  # optional, see below
    }

views.py::

    class Jobs(APIView):
        required_permissions_by_method = {"GET": ["jobs:read"], "POST": ["jobs:write"]}
        keystile_cost = {"POST": 5}                 # or an int; a viewset: {"create": 5}

        def get(self, request):
            return Response({"account": request.auth.account_id})  # the Principal

``request.auth`` is the :class:`~keystile.Principal`, ``request.user`` a :class:`KeyUser`.
With the middleware installed every request is authenticated and settled by it (and
``keystile.django.cost`` / ``requires`` work on the class too); without it,
:class:`KeystileAuthentication` admits and settles DRF's requests itself, by the same rules,
and leaves a request without a keystile credential to the next authentication class.
Refusals keep keystile's status, code and headers under DRF's own exception handler; with
:func:`exception_handler` they are byte for byte keystile's, problem details included. With
drf-spectacular installed, the schema shows keystile's security schemes.
"""

from importlib.util import find_spec

from keystile.django.decorators import cost, requires
from keystile.drf.authentication import KeystileAuthentication
from keystile.drf.errors import Refused, exception_handler
from keystile.drf.permissions import HasRequiredPermissions
from keystile.drf.users import KeyUser

if find_spec("drf_spectacular") is not None:  # registers the extension by being imported
    from keystile.drf import schema as schema

__all__ = [
    "HasRequiredPermissions",
    "KeyUser",
    "KeystileAuthentication",
    "Refused",
    "cost",
    "exception_handler",
    "requires",
]
