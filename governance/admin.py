"""Django admin registrations: a read-mostly escape hatch for admins.

Policy is edited through the security-team UI and the API (which go through
the services and record history); here secrets stay hidden and digests are
read-only.
"""

from django.contrib import admin

from governance.models import (
    AccessToken,
    ApiToken,
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


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "role"]
    list_filter = ["role"]


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    list_display = ["identity", "name", "prefix", "created_at", "expires_at", "revoked_at"]
    readonly_fields = ["prefix", "digest", "scram_verifier", "created_at", "created_by"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["user", "name", "prefix", "created_at", "expires_at", "revoked_at"]
    readonly_fields = ["prefix", "digest", "created_at"]


@admin.register(Datasource)
class DatasourceAdmin(admin.ModelAdmin):
    list_display = ["name", "environment", "engine"]


for model in (
    Team,
    Identity,
    Environment,
    Classification,
    ColumnClassification,
    MaskingRule,
    GuardrailRule,
):
    admin.site.register(model)
