"""Views for the behaviour harnesses and the quota tests: sync ones (urls.py) and async ones
(urls_async.py), using every form of keystile's decorators."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from keystile._core.principal import check_permissions
from keystile.django import cost, principal_of, requires

from ..behaviour.harness import principal_fields


def exempt_body(request: Any) -> dict[str, Any]:
    return {"ok": True, "principal": getattr(request.state, "principal", None) is not None}


# -- sync -----------------------------------------------------------------------------------


def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse(principal_fields(request.principal))  # type: ignore[attr-defined]


@requires("read")
def read(request: HttpRequest) -> JsonResponse:
    return JsonResponse(principal_fields(request.state.principal))  # type: ignore[attr-defined]


@method_decorator(requires("write"), name="dispatch")
class WriteView(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(principal_fields(request.principal))  # type: ignore[attr-defined]


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse(exempt_body(request))


def exempt_principal(request: HttpRequest) -> JsonResponse:
    return JsonResponse(principal_fields(principal_of(request)))


def home(request: HttpRequest) -> JsonResponse:
    quota = request.principal.quota  # type: ignore[attr-defined]
    return JsonResponse({"used": quota.used, "remaining": quota.remaining, "limit": quota.limit})


@cost(3)
def expensive(request: HttpRequest) -> JsonResponse:
    principal = request.principal  # type: ignore[attr-defined]
    return JsonResponse({"reserved": principal.meter.reserved, "used": principal.quota.used})


@cost(4)
def expensive_charged(request: HttpRequest) -> HttpResponse:
    request.principal.charge(int(request.GET["n"]))  # type: ignore[attr-defined]
    return HttpResponse("ok")


def charged(request: HttpRequest) -> HttpResponse:
    request.principal.charge(int(request.GET["n"]))  # type: ignore[attr-defined]
    return HttpResponse("ok")


def failing(request: HttpRequest) -> HttpResponse:
    return HttpResponse("upstream broke", status=int(request.GET["s"]))


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("handler bug")


@requires("admin")
def admin_only(request: HttpRequest) -> HttpResponse:
    return HttpResponse("admin")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    principal = request.principal  # type: ignore[attr-defined]
    n = int(request.GET["n"])

    def body() -> Iterator[bytes]:
        for _ in range(3):
            yield b"chunk "
        principal.charge(n)  # the real cost, known once the work is done

    return StreamingHttpResponse(body())


def raises_auth_error(request: HttpRequest) -> HttpResponse:
    from keystile.starlette import check_permissions

    check_permissions(request.principal, ("nope",))  # type: ignore[attr-defined]
    return HttpResponse("unreachable")


@requires("admin")
class AdminClassView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("admin")


class AdminMethodView(View):
    @requires("admin")
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("admin")


@method_decorator(cost(3), name="dispatch")
class ExpensiveView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")


# -- async ----------------------------------------------------------------------------------


async def whoami_async(request: HttpRequest) -> JsonResponse:
    return JsonResponse(principal_fields(request.principal))  # type: ignore[attr-defined]


@requires("read")
async def read_async(request: HttpRequest) -> JsonResponse:
    return JsonResponse(principal_fields(request.state.principal))  # type: ignore[attr-defined]


@requires("write")
class WriteAsyncView(View):
    async def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(principal_fields(request.principal))  # type: ignore[attr-defined]


async def health_async(request: HttpRequest) -> JsonResponse:
    return JsonResponse(exempt_body(request))


async def exempt_principal_async(request: HttpRequest) -> JsonResponse:
    return JsonResponse(principal_fields(principal_of(request)))


async def home_async(request: HttpRequest) -> JsonResponse:
    return home(request)


@cost(3)
async def expensive_async(request: HttpRequest) -> JsonResponse:
    principal = request.principal  # type: ignore[attr-defined]
    return JsonResponse({"reserved": principal.meter.reserved, "used": principal.quota.used})


@cost(4)
async def expensive_charged_async(request: HttpRequest) -> HttpResponse:
    return charged(request)


async def charged_async(request: HttpRequest) -> HttpResponse:
    return charged(request)


async def failing_async(request: HttpRequest) -> HttpResponse:
    return failing(request)


async def boom_async(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("handler bug")


@requires("admin")
async def admin_only_async(request: HttpRequest) -> HttpResponse:
    return HttpResponse("admin")


async def stream_async(request: HttpRequest) -> StreamingHttpResponse:
    principal = request.principal  # type: ignore[attr-defined]
    n = int(request.GET["n"])

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"chunk "
        principal.charge(n)

    return StreamingHttpResponse(body())


async def raises_auth_error_async(request: HttpRequest) -> HttpResponse:
    return raises_auth_error(request)


class AdminMethodAsyncView(View):
    @requires("admin")
    async def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("admin")


@method_decorator(requires("admin"), name="dispatch")
class AdminDispatchAsyncView(View):
    async def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("admin")


@method_decorator(cost(3), name="dispatch")
class ExpensiveAsyncView(View):
    async def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")


# -- idempotency (tests/test_idempotency.py): the view must still get the whole body ----------


def _echo_body(request: HttpRequest) -> dict[str, Any]:
    import hashlib

    return {"sha256": hashlib.sha256(request.body).hexdigest(), "size": len(request.body)}


@csrf_exempt
def echo(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_echo_body(request))


@csrf_exempt
async def echo_async(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_echo_body(request))


# -- a streamed body refused by keystile after it started (tests/behaviour/test_settlement.py)


def stream_refused(request: HttpRequest) -> StreamingHttpResponse:
    principal = request.principal  # type: ignore[attr-defined]

    def body() -> Iterator[bytes]:
        yield b"chunk "
        check_permissions(principal, ("admin",))

    return StreamingHttpResponse(body())


async def stream_refused_async(request: HttpRequest) -> StreamingHttpResponse:
    principal = request.principal  # type: ignore[attr-defined]

    async def body() -> AsyncIterator[bytes]:
        yield b"chunk "
        check_permissions(principal, ("admin",))

    return StreamingHttpResponse(body())
