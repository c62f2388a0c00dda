"""Sidecar services: registering the sidecars in front of a datasource, and their tokens.

Registration, token rotation and revocation (the old token stops working when the
change commits), and the heartbeat each sidecar sends. A sidecar is not part of
any bundle: these services record history (the heartbeat not even that) and
recompile nothing. A sidecar's schema report is a scan: ``datasources``.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.models import ChangeAction
from audit.sink.history import change_record_create, object_snapshot
from audit.sink.trail import audit_control_event
from governance.errors import ApplicationError
from governance.models import SIDECAR_TOKEN_PREFIX, Datasource, Sidecar, token_digest
from governance.services.history import _create, _revoke
from governance.services.policy import _require_policy_editor
from governance.sidecar_auth import sidecar_auth_forget_on_commit

_HEARTBEAT_COUNTER_LIMIT = 64


def _sidecar_token() -> tuple[str, str, str]:
    raw = SIDECAR_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return raw, raw[:10], token_digest(raw)


@transaction.atomic
def sidecar_register(*, actor: Any, datasource: Datasource, name: str) -> tuple[Sidecar, str]:
    """Register a sidecar for ``datasource``; the raw token is returned here once."""
    _require_policy_editor(actor)
    raw, prefix, digest = _sidecar_token()
    sidecar = Sidecar(
        datasource=datasource, name=name, token_prefix=prefix, token_digest=digest, created_by=actor
    )
    _create(actor, sidecar)
    _sidecar_event("sidecar.registered", actor, sidecar)
    return sidecar, raw


def _sidecar_event(action: str, actor: Any, sidecar: Sidecar) -> None:
    audit_control_event(
        action=action,
        actor=actor,
        datasource=sidecar.datasource,
        target=f"sidecar:{sidecar.pk} {sidecar.name}",
        outcome="ok",
        detail={"prefix": sidecar.token_prefix},
    )


@transaction.atomic
def sidecar_rotate_token(*, actor: Any, sidecar: Sidecar) -> tuple[Sidecar, str]:
    """Replace the token; the old one stops working when this commits."""
    _require_policy_editor(actor)
    sidecar = Sidecar.objects.select_for_update(no_key=True).get(pk=sidecar.pk)
    if sidecar.revoked_at is not None:
        raise ApplicationError("This sidecar is revoked; register a new one.")
    before = object_snapshot(sidecar)
    old_digest = sidecar.token_digest
    raw, sidecar.token_prefix, sidecar.token_digest = _sidecar_token()
    sidecar.token_rotated_at = timezone.now()
    sidecar.full_clean()
    sidecar.save()
    sidecar_auth_forget_on_commit(digest=old_digest)
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE,
        obj=sidecar,
        before=before,
        after=object_snapshot(sidecar),
    )
    _sidecar_event("sidecar.token_rotated", actor, sidecar)
    return sidecar, raw


@transaction.atomic
def sidecar_revoke(*, actor: Any, sidecar: Sidecar) -> Sidecar:
    _require_policy_editor(actor)
    sidecar = _revoke(actor, sidecar, already="This sidecar is already revoked.")
    sidecar_auth_forget_on_commit(digest=sidecar.token_digest)
    _sidecar_event("sidecar.revoked", actor, sidecar)
    return sidecar


def sidecar_heartbeat_record(
    *,
    sidecar_id: int,
    revision: str,
    version: str,
    counters: dict[str, int],
    bundle_status: dict[str, Any],
) -> None:
    """Store what a sidecar reports. Not history: it changes every few seconds."""
    if len(counters) > _HEARTBEAT_COUNTER_LIMIT:
        raise ValidationError({"counters": f"At most {_HEARTBEAT_COUNTER_LIMIT} counters."})
    Sidecar.objects.filter(pk=sidecar_id, revoked_at__isnull=True).update(
        last_heartbeat_at=timezone.now(),
        running_revision=revision,
        version=version,
        counters=counters,
        bundle_status=bundle_status,
    )
