"""The DRF app's urls: the behaviour harness's routes, the viewset, the CSRF views."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter(trailing_slash=False)
router.register("jobs", views.Jobs, basename="jobs")

urlpatterns = [
    path("whoami", views.WhoAmI.as_view()),
    path("read", views.Read.as_view()),
    path("write", views.Write.as_view()),
    path("health", views.Exempt.as_view()),
    path("public/x", views.Exempt.as_view()),
    path("public/principal", views.WhoAmI.as_view()),
    path("", views.Home.as_view()),
    path("expensive", views.Expensive.as_view()),
    path("expensive-charged", views.ExpensiveCharged.as_view()),
    path("charged", views.Charged.as_view()),
    path("failing", views.Failing.as_view()),
    path("boom", views.Boom.as_view()),
    path("needs-admin", views.NeedsAdmin.as_view()),
    path("needs-admin/decorated", views.NeedsAdminByDecorator.as_view()),
    path("raises", views.Raises.as_view()),
    path("stream", views.Stream.as_view()),
    path("stream-refused", views.StreamRefused.as_view()),
    path("reports", views.Reports.as_view()),
    path("documents", views.Documents.as_view()),
    path("submit", views.submit),
    path("public/submit", views.submit),
    path("notes", views.Notes.as_view()),
    path("public/notes", views.Notes.as_view()),
    *router.urls,
]
