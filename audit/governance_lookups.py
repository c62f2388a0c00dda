"""The facts of governance the audit sink needs, for ``audit.sink.lookups``.

Installed by ``audit.apps.AuditConfig.ready``. Governance never imports this
module, so reading its models here makes no import cycle.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Q

from audit.models import sidecar_chain
from audit.sink.lookups import BatchContext, Lookups
from governance.models import Datasource, Environment, Role, Sidecar
from governance.permissions import user_role


def batch_context(sidecar_id: int, datasource_id: int) -> BatchContext:
    datasource = Datasource.objects.select_related("environment").get(pk=datasource_id)
    name = Sidecar.objects.filter(pk=sidecar_id).values_list("name", flat=True).first()
    return {
        "chain": sidecar_chain(datasource_id, sidecar_id),
        "datasource_id": datasource_id,
        "environment": datasource.environment.name,
        "sidecar_name": name or str(sidecar_id),
    }


def environments() -> list[str]:
    return list(Environment.objects.values_list("name", flat=True))


def admin_emails() -> list[str]:
    return list(
        get_user_model()
        .objects.filter(Q(is_superuser=True) | Q(membership__role=Role.ADMIN), is_active=True)
        .exclude(email="")
        .values_list("email", flat=True)
        .distinct()
    )


def is_admin(user: Any) -> bool:
    return bool(user_role(user) == Role.ADMIN)


LOOKUPS = Lookups(
    batch_context=batch_context,
    environments=environments,
    admin_emails=admin_emails,
    is_admin=is_admin,
)
