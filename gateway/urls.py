"""Routes of the sidecar gateway, mounted at /api/v1/sidecar/: every call a sidecar makes."""

from django.urls import path

from gateway import approval_requests, audit_intake, bundle, reports

app_name = "sidecar-api"
urlpatterns = [
    path("bundle", bundle.bundle_view, name="bundle"),
    path("keys", bundle.keys_view, name="keys"),
    path("heartbeat", reports.heartbeat_view, name="heartbeat"),
    path("schema", reports.schema_view, name="schema"),
    path("audit", audit_intake.audit_view, name="audit"),
    path("approvals", approval_requests.approval_open_view, name="approvals"),
    path("approvals/<str:request_id>", approval_requests.approval_state_view, name="approval"),
]
