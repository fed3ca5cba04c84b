"""One DRF ``APIView`` at ``/``: open (``AllowAny``) or, for ``drf-api-key``, ``HasAPIKey``."""

from __future__ import annotations

from typing import Any, ClassVar

from bench.http_apps import variant
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class Hello(APIView):
    authentication_classes: ClassVar[list[Any]] = []
    permission_classes: ClassVar[list[Any]] = [AllowAny]

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


def view_class(name: str) -> type[APIView]:
    if name != "drf-api-key":
        return Hello
    from rest_framework_api_key.permissions import HasAPIKey

    class HelloWithAPIKey(Hello):
        permission_classes: ClassVar[list[Any]] = [HasAPIKey]

    return HelloWithAPIKey


urlpatterns = [path("", view_class(variant()).as_view())]
