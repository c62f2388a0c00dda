"""Read paths of the audit app."""

from __future__ import annotations

from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import QuerySet

from audit.models import ChangeRecord


def change_history_for(obj: models.Model) -> QuerySet[ChangeRecord]:
    """Every recorded change of obj, newest first (also after obj was deleted)."""
    content_type = ContentType.objects.get_for_model(obj, for_concrete_model=True)
    return ChangeRecord.objects.filter(
        content_type=content_type, object_id=str(obj.pk)
    ).select_related("actor")


def change_list(*, filters: dict | None = None) -> QuerySet[ChangeRecord]:
    """All configuration changes, newest first, optionally by model name or actor."""
    filters = filters or {}
    qs = ChangeRecord.objects.select_related("content_type", "actor")
    if filters.get("model"):
        qs = qs.filter(content_type__model=str(filters["model"]).lower())
    if filters.get("actor"):
        qs = qs.filter(actor_name=filters["actor"])
    if filters.get("request_id"):
        qs = qs.filter(request_id=filters["request_id"])
    return qs
