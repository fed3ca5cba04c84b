"""The OpenAPI description of the management API, as shipped in the package."""

from __future__ import annotations

from importlib import resources


def openapi_document() -> str:
    """The OpenAPI 3.1 description of this API (``keystile/_http/openapi.json``)."""
    return resources.files("keystile._http").joinpath("openapi.json").read_text()
