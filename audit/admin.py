"""Configuration history in the Django admin: read-only."""

from typing import Any

from django.contrib import admin

from audit.models import AuditRetention, AuditVerification, ChangeRecord


@admin.register(ChangeRecord)
class ChangeRecordAdmin(admin.ModelAdmin):
    list_display = ["at", "actor_name", "action", "content_type", "object_repr", "request_id"]
    list_filter = ["action", "content_type"]
    search_fields = ["actor_name", "object_repr", "request_id"]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(AuditRetention)
class AuditRetentionAdmin(admin.ModelAdmin):
    """How long each environment's events are kept; enforced hourly by beat."""

    list_display = ["environment", "days"]


@admin.register(AuditVerification)
class AuditVerificationAdmin(admin.ModelAdmin):
    list_display = ["started_at", "ok", "checked", "chains", "first_broken"]
    list_filter = ["ok"]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False
