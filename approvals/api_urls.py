"""Approvals management API routes, under /api/v1/ (see approvals.api)."""

from rest_framework.routers import SimpleRouter

from approvals import api

router = SimpleRouter(trailing_slash="/?")
router.register("approvals", api.ApprovalViewSet, basename="approval")
router.register("review-settings", api.ReviewSettingsViewSet, basename="review-settings")

app_name = "approvals-api"
urlpatterns = router.urls
