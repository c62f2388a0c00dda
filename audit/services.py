"""Write paths of the audit app: recording configuration changes."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models

from audit.context import current_request_id
from audit.models import ChangeAction, ChangeRecord

# Never copied into history: secrets and derived credentials.
_NEVER_RECORDED = {"masking_key", "digest", "scram_verifier", "password"}


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
) -> ChangeRecord | None:
    """Record one change; an update that changed nothing records nothing."""
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
        object_repr=str(obj)[:200],
        before=before,
        after=after,
    )
    record.full_clean()
    record.save()
    return record


def audit_control_event(
    *,
    action: str,
    actor: Any = None,
    datasource: Any = None,
    target: str = "",
    outcome: str = "",
    detail: dict[str, Any] | None = None,
    client_addr: str = "",
) -> None:
    """Record a decision a person (or the control plane) took, in the audit trail.

    ``action`` is dotted, e.g. ``approval.approved``, ``auth.sign_in_failed``,
    ``token.issued``; ``detail`` must never hold a secret or a raw classified
    value. The trail itself lands with the audit issue; until then this is the
    one call site every app uses, so nothing has to change when it does.
    """
    del action, actor, datasource, target, outcome, detail, client_addr
