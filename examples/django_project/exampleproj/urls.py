from django.urls import path

from . import views

urlpatterns = [
    path("health", views.health),
    path("jobs", views.list_jobs),
    path("extract", views.extract),
    path("usage", views.UsageView.as_view()),
]
