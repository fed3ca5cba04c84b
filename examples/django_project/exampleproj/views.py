from django.http import HttpRequest, JsonResponse
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from keystile.django import cost, get_engine, requires


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@requires("jobs:read")
def list_jobs(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"account": request.principal.account_id, "jobs": []})


@csrf_exempt  # an API authenticated by key, not by a session cookie
@require_POST
@requires("jobs:write")
@cost(5)
def extract(request: HttpRequest) -> JsonResponse:
    pages = 3  # the real work turned out cheaper than the declared 5
    request.principal.charge(pages)
    return JsonResponse({"pages": pages})


@requires("usage:read")
class UsageView(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        report = get_engine().quotas.usage(request.principal.account_id)
        return JsonResponse({"month": report.month, "pages": report.pages, "limit": report.limit})
