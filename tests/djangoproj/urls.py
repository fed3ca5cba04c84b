"""Sync views (the "django-sync" harness, quota tests) and the admin."""

from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("echo", views.echo),
    path("echo2", views.echo),
    path("whoami", views.whoami),
    path("read", views.read),
    path("write", views.WriteView.as_view()),
    path("health", views.health),
    path("public/x", views.health),
    path("public/principal", views.exempt_principal),
    path("", views.home),
    path("expensive", views.expensive),
    path("expensive-charged", views.expensive_charged),
    path("charged", views.charged),
    path("failing", views.failing),
    path("boom", views.boom),
    path("needs-admin", views.admin_only),
    path("needs-admin/class", views.AdminClassView.as_view()),
    path("needs-admin/method", views.AdminMethodView.as_view()),
    path("expensive/class", views.ExpensiveView.as_view()),
    path("stream", views.stream),
    path("stream-refused", views.stream_refused),
    path("raises", views.raises_auth_error),
    path("admin/", admin.site.urls),
]
