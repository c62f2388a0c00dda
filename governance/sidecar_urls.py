"""Routes of the sidecar-facing API, mounted at /api/v1/sidecar/ (see governance.sidecar_api)."""

from django.urls import path

from governance import sidecar_api

app_name = "sidecar-api"
urlpatterns = [
    path("bundle", sidecar_api.bundle_view, name="bundle"),
    path("keys", sidecar_api.keys_view, name="keys"),
    path("heartbeat", sidecar_api.heartbeat_view, name="heartbeat"),
    path("schema", sidecar_api.schema_view, name="schema"),
    path("audit", sidecar_api.audit_view, name="audit"),
    path("approvals", sidecar_api.approvals_view, name="approvals"),
    path("approvals/<str:request_id>", sidecar_api.approvals_view, name="approval"),
]
