"""drf-spectacular: the security schemes of a view that uses KeystileAuthentication.

``Authorization: Bearer <token>``, ``x-api-key: <token>``, or ``x-api-key: <key id>`` with
``x-api-secret``: the same three schemes, and names, as :mod:`keystile.fastapi` documents.
drf-spectacular finds an extension once the module defining it is imported; ``keystile.drf``
imports this one whenever drf-spectacular is installed.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

__all__ = ["SCHEMES", "KeystileScheme"]

SCHEMES: dict[str, dict[str, Any]] = {
    "BearerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <token>",
    },
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "The full token, or the key id together with x-api-secret.",
    },
    "ApiSecret": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-secret",
        "description": "The key's secret, sent with the key id in x-api-key.",
    },
}


# Its __init_subclass__ (the registration) is untyped.
class KeystileScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call,unused-ignore]
    target_class = "keystile.drf.KeystileAuthentication"
    name = list(SCHEMES)  # noqa: RUF012 (the type drf-spectacular declares)

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [dict(scheme) for scheme in SCHEMES.values()]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        # Alternatives: a Bearer token, x-api-key alone, or x-api-key with x-api-secret.
        return [{"BearerToken": []}, {"ApiKey": []}, {"ApiKey": [], "ApiSecret": []}]
