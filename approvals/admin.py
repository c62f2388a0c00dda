"""Read-only admin views: every approval write goes through approvals.services."""

from django.contrib import admin

from approvals.models import ApprovalRequest, Grant, ReviewSettings
from governance.admin import ReadOnlyAdmin


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(ReadOnlyAdmin):
    list_display = ["id", "datasource", "identity", "kind", "risk", "state", "created_at"]
    list_filter = ["state"]


@admin.register(Grant)
class GrantAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "datasource",
        "identity",
        "uses_left",
        "uses_total",
        "state",
        "expires_at",
    ]


@admin.register(ReviewSettings)
class ReviewSettingsAdmin(ReadOnlyAdmin):
    list_display = ["datasource", "fallback_team", "escalate_after_seconds", "webhook_url"]
