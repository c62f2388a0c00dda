"""Django admin registrations: a view-only window onto policy, for admins.

Every change to policy goes through the services (the security-team UI, the API,
the management commands): they check who may make it, record it in history and
in the audit trail, and recompile the sidecars' bundles. An edit in the admin
would do none of that, so nothing registered here, nor in approvals.admin or
audit.admin, can be added, changed or deleted. Secrets stay hidden: digests and
verifiers are never shown. The admin's sign-in is allauth's (config/urls.py).
"""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from governance.models import (
    AccessToken,
    ApiToken,
    BreakGlassGrant,
    Classification,
    ColumnClassification,
    Datasource,
    Environment,
    GuardrailRule,
    Identity,
    MaskingRule,
    Membership,
    Team,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """View only: lists and read-only object pages; no add, change, delete or bulk action."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ["user", "role"]
    list_filter = ["role"]


@admin.register(AccessToken)
class AccessTokenAdmin(ReadOnlyAdmin):
    list_display = ["identity", "name", "prefix", "created_at", "expires_at", "revoked_at"]
    exclude = ["digest", "scram_verifier"]


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ["user", "name", "prefix", "created_at", "expires_at", "revoked_at"]
    exclude = ["digest"]


@admin.register(Datasource)
class DatasourceAdmin(ReadOnlyAdmin):
    list_display = ["name", "environment", "engine"]


for model in (
    Team,
    Identity,
    Environment,
    Classification,
    ColumnClassification,
    MaskingRule,
    GuardrailRule,
    BreakGlassGrant,
):
    admin.site.register(model, ReadOnlyAdmin)
