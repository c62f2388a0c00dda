"""Configuration history: how every governance service saves and records a change.

``_create``, ``_update``, ``_delete`` and ``_revoke`` validate (``full_clean()``), save and record
the change in history (``audit.services.change_record_create``: a ``ChangeRecord``
and its ``policy.change`` event), inside the caller's transaction. They never touch
bundles: a service whose change can reach a sidecar also calls
``governance.bundles.bundles_mark_stale`` itself, so which changes recompile which
datasources reads off each service.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from audit.models import ChangeAction
from audit.sink.history import change_record_create, object_snapshot
from governance.errors import ApplicationError
from governance.models import Datasource


def _own_chain(obj: models.Model) -> Datasource | None:
    """A datasource's own changes join its chain (the audit sink knows no governance model)."""
    return obj if isinstance(obj, Datasource) else None


def _m2m_names(model: type[models.Model]) -> set[str]:
    return {f.name for f in model._meta.many_to_many}


def _create(
    actor: Any,
    obj: models.Model,
    m2m: dict[str, Iterable[Any]] | None = None,
    *,
    reason: str = "",
) -> None:
    obj.full_clean()
    obj.save()
    for name, values in (m2m or {}).items():
        getattr(obj, name).set(list(values))
    change_record_create(
        actor=actor,
        action=ChangeAction.CREATE,
        obj=obj,
        before=None,
        after=object_snapshot(obj),
        datasource=_own_chain(obj),
        reason=reason,
    )


def _update(
    actor: Any, obj: models.Model, data: dict[str, Any], *, allowed: set[str], reason: str = ""
) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValidationError({name: "This field cannot be changed here." for name in unknown})
    before = object_snapshot(obj)
    m2m = _m2m_names(type(obj))
    for name, value in data.items():
        if name not in m2m:
            setattr(obj, name, value)
    obj.full_clean()
    obj.save()
    for name, value in data.items():
        if name in m2m:
            getattr(obj, name).set(list(value))
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE,
        obj=obj,
        before=before,
        after=object_snapshot(obj),
        datasource=_own_chain(obj),
        reason=reason,
    )


def _delete(actor: Any, obj: models.Model, *, blocked_by: str, reason: str = "") -> None:
    before = object_snapshot(obj)
    pk = obj.pk
    try:
        with transaction.atomic():
            obj.delete()
    except ProtectedError as exc:
        users = sorted({str(o) for o in exc.protected_objects})[:5]
        raise ApplicationError(
            f"{obj} is still used by {blocked_by}: {', '.join(users)}.",
            {"protected": users},
        ) from exc
    change_record_create(
        actor=actor,
        action=ChangeAction.DELETE,
        obj=obj,
        before=before,
        after=None,
        object_id=pk,
        datasource=_own_chain(obj),
        reason=reason,
    )


R = TypeVar("R", bound=models.Model)


def _revoke(actor: Any, obj: R, *, already: str) -> R:
    """Lock ``obj`` (a token or a sidecar), stamp its ``revoked_at`` and record the
    change; ``already`` is the refusal when it was revoked before."""
    obj = type(obj)._default_manager.select_for_update(no_key=True).get(pk=obj.pk)
    if obj.revoked_at is not None:
        raise ApplicationError(already)
    before = object_snapshot(obj)
    obj.revoked_at = timezone.now()
    obj.save(update_fields=["revoked_at"])
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE,
        obj=obj,
        before=before,
        after=object_snapshot(obj),
    )
    return obj
