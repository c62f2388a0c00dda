from django.contrib import admin

from approvals.models import ApprovalRequest, Grant, ReviewSettings


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(admin.ModelAdmin):
    list_display = ["id", "datasource", "identity", "kind", "risk", "state", "created_at"]
    list_filter = ["state"]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False  # decisions go through approvals.services, never the admin


@admin.register(Grant)
class GrantAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "datasource",
        "identity",
        "uses_left",
        "uses_total",
        "state",
        "expires_at",
    ]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


admin.site.register(ReviewSettings)
