"""Management REST API routes, under /api/v1/ (see governance.api)."""

from django.urls import re_path
from rest_framework.routers import SimpleRouter

from governance import api, sidecar_mgmt_api

router = SimpleRouter(trailing_slash="/?")
router.register("teams", api.TeamViewSet, basename="team")
router.register("identities", api.IdentityViewSet, basename="identity")
router.register("tokens", api.AccessTokenViewSet, basename="token")
router.register("api-tokens", api.ApiTokenViewSet, basename="api-token")
router.register("environments", api.EnvironmentViewSet, basename="environment")
router.register("datasources", api.DatasourceViewSet, basename="datasource")
router.register("classifications", api.ClassificationViewSet, basename="classification")
router.register(
    "column-classifications", api.ColumnClassificationViewSet, basename="column-classification"
)
router.register("masking-rules", api.MaskingRuleViewSet, basename="masking-rule")
router.register("guardrails", api.GuardrailViewSet, basename="guardrail")
router.register("sidecars", sidecar_mgmt_api.SidecarViewSet, basename="sidecar")
router.register("detectors", api.CustomDetectorViewSet, basename="detector")
router.register("break-glass", api.BreakGlassViewSet, basename="break-glass")

app_name = "api"
urlpatterns = [
    re_path(r"^simulate/?$", api.SimulateView.as_view(), name="simulate"),
    re_path(r"^datasources/(?P<pk>\d+)/scans?/?$", api.ScanRequestView.as_view(), name="scan"),
    re_path(
        r"^datasources/(?P<pk>\d+)/scan-schedule/?$",
        api.ScanScheduleView.as_view(),
        name="scan-schedule",
    ),
    re_path(
        r"^column-classifications/(?P<pk>\d+)/decide/?$",
        api.ReviewDecisionView.as_view(),
        name="column-classification-decide",
    ),
    *router.urls,
]
