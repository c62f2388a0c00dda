"""Configuration history, retention and verification runs in the Django admin: view only.

Retention is set with ``manage.py audit_retention`` (``audit.sink.retention.audit_retention_set``),
which records the change in history and in the audit trail: shortening it deletes events.
"""

from django.contrib import admin

from audit.models import AuditRetention, AuditVerification, ChangeRecord
from governance.admin import ReadOnlyAdmin


@admin.register(ChangeRecord)
class ChangeRecordAdmin(ReadOnlyAdmin):
    list_display = ["at", "actor_name", "action", "content_type", "object_repr", "request_id"]
    list_filter = ["action", "content_type"]
    search_fields = ["actor_name", "object_repr", "request_id"]


@admin.register(AuditRetention)
class AuditRetentionAdmin(ReadOnlyAdmin):
    """How long each environment's events are kept; enforced hourly by beat."""

    list_display = ["environment", "days"]


@admin.register(AuditVerification)
class AuditVerificationAdmin(ReadOnlyAdmin):
    list_display = ["started_at", "ok", "checked", "chains", "first_broken"]
    list_filter = ["ok"]
