"""The key management HTTP API, once for every framework: request in, response out.

Adapters mount it under a prefix (:func:`keystile.starlette.management_mount`, the Flask
blueprint, the Django urls), build a :class:`ManagementAPI` from the engine's managers, and
pass each request as an :class:`ApiRequest`; the principal is the one the middleware
authenticated. Who may do what is :mod:`keystile._http.management.guards`; the routes and
their handlers are :mod:`keystile._http.management.api`.
"""

from keystile._http.management.api import PUBLIC_PATHS, ROUTE, ROUTES, ManagementAPI, Route
from keystile._http.management.messages import MAX_BODY, ApiRequest, ApiResponse
from keystile._http.management.openapi import openapi_document

__all__ = [
    "MAX_BODY",
    "PUBLIC_PATHS",
    "ROUTE",
    "ROUTES",
    "ApiRequest",
    "ApiResponse",
    "ManagementAPI",
    "Route",
    "openapi_document",
]
