"""The key management HTTP API's URLs: ``path("v1/", include("keystile.django.urls"))``.

One pattern takes everything below the include, so the API itself answers unknown paths
(404) and wrong methods (405 with ``Allow``) as on every other framework. Tell the engine
the prefix with ``KEYSTILE_MANAGEMENT_PREFIX = "/v1"`` (see :mod:`keystile.django.views`).
"""

from __future__ import annotations

from django.urls import re_path  # type: ignore[import-untyped,unused-ignore]

from keystile.django import views

urlpatterns = [
    re_path(r"^(?P<rest>.*)\Z", views.api, name="keystile-management"),
]
