"""Async views (the "django-async" harness, quota tests)."""

from django.urls import path

from . import views

urlpatterns = [
    path("echo", views.echo_async),
    path("echo2", views.echo_async),
    path("whoami", views.whoami_async),
    path("read", views.read_async),
    path("write", views.WriteAsyncView.as_view()),
    path("health", views.health_async),
    path("public/x", views.health_async),
    path("public/principal", views.exempt_principal_async),
    path("", views.home_async),
    path("expensive", views.expensive_async),
    path("expensive-charged", views.expensive_charged_async),
    path("charged", views.charged_async),
    path("failing", views.failing_async),
    path("boom", views.boom_async),
    path("needs-admin", views.admin_only_async),
    path("needs-admin/method", views.AdminMethodAsyncView.as_view()),
    path("needs-admin/dispatch", views.AdminDispatchAsyncView.as_view()),
    path("expensive/class", views.ExpensiveAsyncView.as_view()),
    path("stream", views.stream_async),
    path("stream-refused", views.stream_refused_async),
    path("raises", views.raises_auth_error_async),
]
