"""Routes of the audit pages, mounted at ``/audit/``."""

from django.urls import path

from audit import views

app_name = "audit"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("events/", views.explorer, name="explorer"),
    path("events/<int:pk>/", views.event_detail, name="event_detail"),
    path("events/export.<str:fmt>", views.export, name="export"),
    path("searches/", views.saved_search_create, name="saved_search_create"),
    path("searches/<int:pk>/", views.saved_search_open, name="saved_search_open"),
    path("searches/<int:pk>/delete/", views.saved_search_delete, name="saved_search_delete"),
    path("reports/pii/", views.pii_report, name="pii_report"),
    path("evidence/", views.evidence_list, name="evidence_list"),
    path("evidence/<int:pk>/status/", views.evidence_status, name="evidence_status"),
    path("evidence/<int:pk>/download/", views.evidence_download, name="evidence_download"),
]
