"""HTML routes for sidecars, included by governance.urls under /sidecars/."""

from django.urls import path

from governance import sidecar_views

urlpatterns = [
    path("", sidecar_views.sidecar_list, name="sidecar_list"),
    path("<int:pk>/rotate/", sidecar_views.sidecar_rotate, name="sidecar_rotate"),
    path("<int:pk>/revoke/", sidecar_views.sidecar_revoke, name="sidecar_revoke"),
]
