"""The behaviour harness's routes (see :mod:`tests.behaviour.harness`) as DRF views, each way
keystile.drf declares permissions and costs; a viewset; and views for the CSRF tests."""

# ruff: noqa: RUF012  (DRF's view settings are class attributes: lists and dicts)

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import NotAcceptable
from rest_framework.generics import GenericAPIView
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import ViewSet

from keystile._core.principal import check_permissions
from keystile.drf import HasRequiredPermissions, KeystileAuthentication, cost, requires

from ..behaviour.harness import principal_fields, quota_body


class JSONForAnyAccept(DefaultContentNegotiation):
    """DRF picks the renderer before it authenticates: by default a client whose Accept no
    renderer matches (``application/problem+json`` alone, ``text/html``) gets DRF's 406 before
    any permission is checked. These views answer JSON instead, so that the behaviour suite
    sees keystile's answers, in the shape Accept asks for, and not DRF's negotiation."""

    def select_renderer(self, request: Any, renderers: Any, format_suffix: Any = None) -> Any:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type


class KeyView(APIView):
    authentication_classes = [KeystileAuthentication]
    permission_classes = [HasRequiredPermissions]
    content_negotiation_class = JSONForAnyAccept


class WhoAmI(KeyView):
    def get(self, request: Request) -> Response:
        return Response(principal_fields(request.auth))


class Read(KeyView):
    required_permissions = ["read"]

    def get(self, request: Request) -> Response:
        return Response(principal_fields(request.auth))


class Write(KeyView):
    required_permissions_by_method = {"GET": ["write"]}

    def get(self, request: Request) -> Response:
        return Response(principal_fields(request.user.principal))


class Exempt(KeyView):
    permission_classes: list[Any] = []

    def get(self, request: Request) -> Response:
        state = getattr(request._request, "state", None)
        return Response({"ok": True, "principal": getattr(state, "principal", None) is not None})


class Home(KeyView):
    def get(self, request: Request) -> Response:
        return Response(quota_body(request.auth))


class Expensive(KeyView):
    keystile_cost = 3

    def get(self, request: Request) -> Response:
        meter = request.auth.meter
        return Response({"reserved": meter.reserved, "used": request.auth.quota.used})


class ExpensiveCharged(KeyView):
    @cost(4)
    def get(self, request: Request) -> HttpResponse:
        request.auth.charge(int(request.query_params["n"]))
        return HttpResponse("ok")


class Charged(KeyView):
    def get(self, request: Request) -> HttpResponse:
        request.auth.charge(int(request.query_params["n"]))
        return HttpResponse("ok")


class Failing(KeyView):
    def get(self, request: Request) -> HttpResponse:
        return HttpResponse("upstream broke", status=int(request.query_params["s"]))


class Boom(KeyView):
    def get(self, request: Request) -> Response:
        raise RuntimeError("handler bug")


class NeedsAdmin(KeyView):
    def get_required_permissions(self, request: Request) -> list[str]:
        return ["admin"]

    def get(self, request: Request) -> HttpResponse:
        return HttpResponse("admin")


class NeedsAdminByDecorator(KeyView):
    permission_classes: list[Any] = []

    @requires("admin")
    def get(self, request: Request) -> HttpResponse:
        return HttpResponse("admin")


class Raises(KeyView):
    def get(self, request: Request) -> Response:
        check_permissions(request.auth, ("nope",))
        return Response("unreachable")


class Stream(KeyView):
    def get(self, request: Request) -> StreamingHttpResponse:
        principal, n = request.auth, int(request.query_params["n"])

        def body() -> Iterator[bytes]:
            for _ in range(3):
                yield b"chunk "
            principal.charge(n)

        return StreamingHttpResponse(body())


class StreamRefused(KeyView):
    def get(self, request: Request) -> StreamingHttpResponse:
        principal = request.auth

        def body() -> Iterator[bytes]:
            yield b"chunk "
            check_permissions(principal, ("admin",))

        return StreamingHttpResponse(body())


class Reports(KeyView):
    """Permissions and costs per method."""

    required_permissions = ["reports"]
    required_permissions_by_method = {"GET": ["reports:read"], "POST": ["reports:write"]}
    keystile_cost = {"POST": 5}

    def get(self, request: Request) -> Response:
        return Response({"reports": [], "used": request.auth.quota.used})

    def post(self, request: Request) -> Response:
        return Response({"created": True, "reserved": request.auth.meter.reserved}, status=201)


class DocumentSerializer(serializers.Serializer):
    title = serializers.CharField()


class Documents(KeyView, GenericAPIView):
    """A generic view: DRF's OPTIONS asks its permissions for POST on the side."""

    serializer_class = DocumentSerializer
    required_permissions_by_method = {"OPTIONS": ["read"], "POST": ["write"]}

    def post(self, request: Request) -> Response:
        return Response({"title": request.data["title"]}, 201)


class Jobs(ViewSet):
    """A viewset: permissions by action, a cost per action and one by decorator."""

    authentication_classes = [KeystileAuthentication]
    permission_classes = [HasRequiredPermissions]
    keystile_cost = {"create": 2}

    def get_required_permissions(self, request: Request) -> list[str]:
        return ["jobs:read"] if self.action == "list" else ["jobs:write"]

    def list(self, request: Request) -> Response:
        return Response({"jobs": [], "account": request.auth.account_id})

    def create(self, request: Request) -> Response:
        meter = request.auth.meter
        return Response({"name": request.data.get("name"), "reserved": meter.reserved}, 201)

    @action(detail=False, methods=["post"])
    @cost(7)
    def bulk(self, request: Request) -> Response:
        return Response({"reserved": request.auth.meter.reserved}, 201)


# -- CSRF -------------------------------------------------------------------------------


def submit(request: HttpRequest) -> JsonResponse:
    """A plain Django view, CSRF-protected (no ``csrf_exempt``), behind keystile."""
    principal = getattr(request, "principal", None)
    user = getattr(request, "user", None)
    return JsonResponse(
        {
            "key": None if principal is None else principal.key_id,
            "user": None if user is None or user.is_anonymous else user.get_username(),
        }
    )


class Notes(APIView):
    """Keys or a browser session: DRF enforces CSRF for the session only."""

    authentication_classes = [KeystileAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]

    def post(self, request: Request) -> Response:
        return Response({"user": str(request.user), "by_key": request.auth is not None})
