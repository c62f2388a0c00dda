"""Configuration history: a ``ChangeRecord`` per change, and its ``policy.change`` event.

Other apps' services call ``change_record_create`` inside their own transaction;
what it needs of them (the object, the datasource whose chain the event joins)
comes as arguments.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import uuid
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import QuerySet

from audit.context import current_request_id
from audit.models import ChangeAction, ChangeRecord
from audit.sink.trail import audit_control_event

# Never copied into history: secrets and derived credentials.
_NEVER_RECORDED = {"digest", "token_digest", "scram_verifier", "password"}
# Secrets whose change the history must still show: recorded as a short digest. A
# webhook's URL often carries its bearer token (a review's finding: every viewer
# role read it on /changes, though the settings API hides it from them).
_DIGESTED = {"webhook_url"}


def _digested(value: Any) -> str:
    if not value:
        return ""
    return "(set, sha256 " + hashlib.sha256(str(value).encode()).hexdigest()[:12] + ")"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    return value


def object_snapshot(obj: models.Model) -> dict[str, Any]:
    """A JSON-ready dict of obj's fields; relations by their natural name.

    Foreign keys and many-to-many fields are recorded as the related object's
    ``str()`` so that "from what to what" stays readable after renames.
    Timestamps that change on every save are left out.
    """
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if field.name in _NEVER_RECORDED or field.name in {"id", "created_at", "updated_at"}:
            continue
        if isinstance(field, models.ForeignKey):
            related = getattr(obj, field.name)
            data[field.name] = str(related) if related is not None else None
        elif field.name in _DIGESTED:
            data[field.name] = _digested(field.value_from_object(obj))
        else:
            data[field.name] = _plain(field.value_from_object(obj))
    if obj.pk is not None:
        for field in obj._meta.many_to_many:
            data[field.name] = sorted(str(o) for o in getattr(obj, field.name).all())
    return data


def change_record_create(
    *,
    actor: Any,
    action: str,
    obj: models.Model,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    object_id: Any = None,
    datasource: Any = None,
    reason: str = "",
    object_repr: str = "",
) -> ChangeRecord | None:
    """Record one change; an update that changed nothing records nothing.

    ``reason`` is the actor's why (kept on the record and in the event);
    ``object_repr`` names an object that is not one row (the guardrail order).

    Its ``policy.change`` event joins the chain of ``datasource`` (the caller
    passes it when ``obj`` is a datasource: this module knows no other app's
    models), else of the datasource ``obj`` belongs to through its ``datasource``
    relation, else the control plane's.
    """
    if action == ChangeAction.UPDATE and before == after:
        return None
    is_user = actor is not None and getattr(actor, "is_authenticated", False)
    record = ChangeRecord(
        actor=actor if is_user else None,
        actor_name=(actor.get_username() if is_user else "system")[:150],
        request_id=current_request_id(),
        action=action,
        content_type=ContentType.objects.get_for_model(obj, for_concrete_model=True),
        object_id=str(object_id if object_id is not None else obj.pk),
        object_repr=(object_repr or str(obj))[:200],
        before=before,
        after=after,
        reason=reason.strip(),
    )
    record.full_clean()
    record.save()
    if datasource is None:
        datasource = getattr(obj, "datasource", None)
    _policy_change_event(record, datasource)
    return record


def _policy_change_event(record: ChangeRecord, datasource: Any) -> None:
    """Every recorded policy change is also a ``policy.change`` event in the trail.

    Field names only, never the values (history keeps those, with its own rules).
    """
    audit_control_event(
        action="policy.change",
        actor=record.actor,
        actor_name=record.actor_name,
        datasource=datasource,
        target=f"{record.content_type.model}:{record.object_id} {record.object_repr}"[:300],
        outcome=record.action,
        detail={
            "change_record": record.pk,
            "model": record.content_type.model,
            "fields": [name for name, _b, _a in record.changes],
            "request_id": record.request_id,
            **({"reason": record.reason} if record.reason else {}),
        },
    )


def change_history_for(obj: models.Model) -> QuerySet[ChangeRecord]:
    """Every recorded change of obj, newest first (also after obj was deleted)."""
    content_type = ContentType.objects.get_for_model(obj, for_concrete_model=True)
    return ChangeRecord.objects.filter(
        content_type=content_type, object_id=str(obj.pk)
    ).select_related("actor")


def change_list(*, filters: dict | None = None) -> QuerySet[ChangeRecord]:
    """All configuration changes, newest first, optionally by model name, actor,
    request or day (``since``, a date: changes on that day and after)."""
    filters = filters or {}
    qs = ChangeRecord.objects.select_related("content_type", "actor")
    if filters.get("model"):
        qs = qs.filter(content_type__model=str(filters["model"]).lower())
    if filters.get("actor"):
        qs = qs.filter(actor_name=filters["actor"])
    if filters.get("request_id"):
        qs = qs.filter(request_id=filters["request_id"])
    if filters.get("since"):
        qs = qs.filter(at__date__gte=filters["since"])
    return qs
