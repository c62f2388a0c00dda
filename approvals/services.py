"""Write paths of approvals: the one place a request is opened, decided, cancelled, expired.

The sidecar API, the management API and the pages all call these. Every
transition locks the request row (``select_for_update``) and re-checks its state
under the lock, so two reviewers clicking at once yield one decision and a grant
with one use left is consumed once. What a waiting sidecar needs to know is
published to Redis only once the transaction commits (``approval_publish``).
Notifications are idempotent: each one sent is recorded as an ``ApprovalEvent``
with a unique key in the same transaction that sends it, so a task that runs
twice (a retry, a duplicate delivery) finds the record and sends nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from approvals.models import (
    ApprovalDecision,
    ApprovalEvent,
    ApprovalEventKind,
    ApprovalRequest,
    ApprovalState,
    Grant,
    GrantBinding,
    GrantState,
    ReviewSettings,
    can_transition,
)
from audit.sink.history import change_record_create as _change_record_create
from audit.sink.history import object_snapshot
from audit.sink.trail import audit_control_event
from config.egress import EgressRefused, post_json
from governance.bundles import RISK_THRESHOLDS, bundles_mark_stale, redis_client
from governance.models import Datasource, Identity, IdentityKind, Sidecar, Team
from governance.permissions import Role, can_edit_policy, user_role

logger = logging.getLogger(__name__)

DECIDED_CHANNEL = "warden:approval-decided"
# Terminal states never change, so their cached answer may live long; a pending
# answer is only a shortcut and must not outlive a lost publication for long.
STATE_KEY_TTL_TERMINAL = 2 * 86400
STATE_KEY_TTL_PENDING = 60
REVIEWER_ROLES = frozenset({Role.ADMIN, Role.REVIEWER})


def state_key(request_id: Any) -> str:
    return f"warden:approval:{request_id}"


def approval_path(request_id: Any) -> str:
    """The request's page in the control plane (served by the approvals UI)."""
    return f"/approvals/{request_id}/"


def approval_url(request_id: Any, *, base: str | None = None) -> str:
    root = (settings.WARDEN_PUBLIC_URL or base or settings.WARDEN_BASE_URL).rstrip("/")
    return root + approval_path(request_id)


# --- who is who --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewPolicy:
    """A datasource's effective review settings (its ``ReviewSettings`` or the defaults)."""

    fallback_team_id: int | None
    escalate_after: datetime.timedelta
    remind_every: datetime.timedelta
    expire_after: datetime.timedelta
    webhook_url: str
    grant_binding: str = GrantBinding.STATEMENT
    values_retention: datetime.timedelta = datetime.timedelta(days=7)


def review_policy(*, datasource_id: int) -> ReviewPolicy:
    row = ReviewSettings.objects.filter(datasource_id=datasource_id).first()

    def seconds(value: int | None, default: int) -> datetime.timedelta:
        return datetime.timedelta(seconds=value if value else default)

    return ReviewPolicy(
        fallback_team_id=row.fallback_team_id if row else None,
        escalate_after=seconds(
            row.escalate_after_seconds if row else None, settings.WARDEN_APPROVAL_ESCALATE_SECONDS
        ),
        remind_every=seconds(
            row.remind_every_seconds if row else None, settings.WARDEN_APPROVAL_REMIND_SECONDS
        ),
        expire_after=seconds(
            row.expire_after_seconds if row else None, settings.WARDEN_APPROVAL_EXPIRE_SECONDS
        ),
        webhook_url=(row.webhook_url if row else "") or settings.WARDEN_APPROVAL_WEBHOOK_URL,
        grant_binding=row.grant_binding if row else GrantBinding.STATEMENT,
        values_retention=seconds(
            row.values_retention_seconds if row else None,
            settings.WARDEN_APPROVAL_VALUES_RETENTION_SECONDS,
        ),
    )


def requester_user_id(identity: Identity) -> int | None:
    """The user on the requester's side: a human's own login, or the owner's for an agent."""
    if identity.kind == IdentityKind.HUMAN:
        return identity.user_id
    owner = identity.owner
    return owner.user_id if owner is not None else None


def is_requester(*, user: Any, request: ApprovalRequest) -> bool:
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    identity = request.identity
    if identity.user_id is not None and identity.user_id == user.pk:
        return True
    return requester_user_id(identity) == user.pk


def deciding_team_ids(request: ApprovalRequest) -> set[int]:
    """Teams whose members may decide: the review teams, plus the fallback once escalated."""
    ids = set(request.datasource.review_teams.values_list("pk", flat=True))
    if request.escalated_at is not None:
        fallback = review_policy(datasource_id=request.datasource_id).fallback_team_id
        if fallback is not None:
            ids.add(fallback)
    return ids


def is_reviewer_of(*, user: Any, request: ApprovalRequest) -> bool:
    """Role admin or reviewer, and a member (through the user's identity) of a deciding team."""
    if user_role(user) not in REVIEWER_ROLES:
        return False
    team_ids = deciding_team_ids(request)
    return (
        bool(team_ids)
        and Identity.objects.filter(user=user, is_active=True, teams__in=team_ids)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .exists()
    )


def decision_refusal(*, user: Any, request: ApprovalRequest) -> str | None:
    """Why ``user`` may not decide ``request`` (None when they may)."""
    if not is_reviewer_of(user=user, request=request):
        return f"You are not a reviewer of {request.datasource.name}."
    identity = request.identity
    if identity.user_id is not None and identity.user_id == user.pk:
        return "Nobody decides their own request; cancel it instead."
    owner = identity.owner
    if owner is not None and owner.user_id is not None and owner.user_id == user.pk:
        # Whatever the identity's kind (a person has no owner since migration 0010 of
        # governance, but an owner is never a reviewer of what it answers for).
        return (
            f"You are the accountable owner of {identity.name}; "
            "its requests need another human reviewer."
        )
    return None


# --- publishing to waiting sidecars --------------------------------------------------------


def state_payload(request: ApprovalRequest) -> dict[str, Any]:
    """What ``GET /api/v1/sidecar/approvals/<id>`` answers, minus the absolute URL."""
    reviewer = ""
    if request.state == ApprovalState.DENIED and request.denied_by is not None:
        reviewer = request.denied_by.get_username()
    return {
        "id": str(request.id),
        "state": request.state,
        "reason": request.deny_reason if request.state == ApprovalState.DENIED else "",
        "denied_by": reviewer,
        "decided_at": request.decided_at.isoformat() if request.decided_at else None,
        "datasource_id": request.datasource_id,
        # Whose request it is: a sidecar tells an identity only about its own.
        "identity": request.identity.name,
    }


def approval_publish(*, request: ApprovalRequest, wake: bool = True) -> None:
    """Cache the request's state in Redis and (``wake``) wake every sidecar waiting on it.

    Called on commit. Failure is logged, not raised: the decision is already
    stored, and a sidecar that missed the wake-up reads it on its next poll.
    """
    payload = state_payload(request)
    ttl = STATE_KEY_TTL_PENDING if request.is_pending else STATE_KEY_TTL_TERMINAL
    try:
        pipe = redis_client().pipeline()
        # A pending answer never overwrites a decision (a slow reader caching
        # what it read before the decision committed).
        pipe.set(state_key(request.id), json.dumps(payload), ex=ttl, nx=request.is_pending)
        if wake and not request.is_pending:
            pipe.publish(DECIDED_CHANNEL, str(request.id))
        pipe.execute()
    except Exception as exc:  # Redis down: the database still has the decision
        logger.warning("could not publish approval %s: %s", request.id, exc)


def _on_commit_publish(request: ApprovalRequest) -> None:
    transaction.on_commit(lambda: approval_publish(request=request))


def _enqueue_notify(request_id: Any, kind: str) -> None:
    def send() -> None:
        from approvals.tasks import approval_notify_task

        try:
            approval_notify_task.delay(request_id=str(request_id), kind=kind)
        except Exception as exc:  # the broker is down; the reminder sweep catches up
            logger.warning("could not enqueue the %s notice of %s: %s", kind, request_id, exc)

    transaction.on_commit(send)


def _event(
    request: ApprovalRequest,
    kind: str,
    *,
    key: str = "",
    actor: Any = None,
    detail: dict[str, Any] | None = None,
) -> ApprovalEvent:
    return ApprovalEvent.objects.create(
        request=request,
        kind=kind,
        key=key,
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        detail=detail or {},
    )


def _audit(request: ApprovalRequest, action: str, *, actor: Any = None, **detail: Any) -> None:
    audit_control_event(
        action=f"approval.{action}",
        actor=actor,
        datasource=request.datasource,
        target=str(request.id),
        outcome=request.state,
        detail={
            "identity": request.identity.name,
            "kind": request.kind,
            "risk": request.risk,
            "fingerprint": request.fingerprint,
            **detail,
        },
        client_addr=request.client_addr,
    )


def _transition(request: ApprovalRequest, target: str, now: datetime.datetime) -> None:
    if not can_transition(request.state, target):
        raise ValidationError(f"This request is already {request.state}.")
    request.state = target
    request.decided_at = now


# --- opening a request (the sidecar) -------------------------------------------------------

FINGERPRINT_RE = re.compile(r"^[0-9a-f]{8,128}$")
KIND_RE = re.compile(r"^[a-z_]{1,32}$")
# A text of several statements carries one kind each (a list); stored joined.
MAX_KINDS = 10
KINDS_SEPARATOR = ", "
MAX_STATEMENT = 64 * 1024
MAX_LIST = 200
MAX_ITEM = 300
# What a sidecar may add so the reviewer approves exactly what runs (all optional).
VALUES_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_VALUES = 500
MAX_VALUE = 2000
MAX_PLACEHOLDER = 65535  # PostgreSQL's limit on the parameters of one statement
MAX_PLAN_NODE = 64
MAX_ESTIMATE_ERROR = 2000
# A statement denied this recently, with the same values, is answered with that denial.
DENIAL_MEMORY = datetime.timedelta(hours=1)


def _kinds(kind: Any) -> list[str] | None:
    """The statement kinds of a request: one (a string, as sidecars before lists sent
    it) or a list of one per statement; None when it is neither."""
    kinds = [kind] if isinstance(kind, str) else kind
    if (
        not isinstance(kinds, list)
        or not 1 <= len(kinds) <= MAX_KINDS
        or not all(isinstance(k, str) and KIND_RE.match(k) for k in kinds)
    ):
        return None
    return kinds


def _no_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, list):
        return all(_no_nul(v) for v in value)
    if isinstance(value, dict):
        return all(_no_nul(k) and _no_nul(v) for k, v in value.items())
    return True


def _index(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _values_valid(values: Any) -> bool:
    """``[{"statement": 0, "n": 1, "value": "'x'"} | {..., "classification": "pii.email"}]``."""
    if not isinstance(values, list) or len(values) > MAX_VALUES:
        return False
    for item in values:
        if not isinstance(item, dict) or not (
            _index(item.get("statement"), 0, MAX_KINDS - 1)
            and _index(item.get("n"), 1, MAX_PLACEHOLDER)
        ):
            return False
        if set(item) == {"statement", "n", "value"}:
            if not isinstance(item["value"], str) or len(item["value"]) > MAX_VALUE:
                return False
        elif set(item) == {"statement", "n", "classification"}:
            label = item["classification"]
            if not isinstance(label, str) or not 0 < len(label) <= MAX_ITEM:
                return False
        else:
            return False
    return True


def _estimate_valid(estimate: Any) -> bool:
    """``{"rows": {"orders": 993}, "top": "ModifyTable", "error": ""}``."""
    if not isinstance(estimate, dict) or set(estimate) != {"rows", "top", "error"}:
        return False
    rows, top, error = estimate["rows"], estimate["top"], estimate["error"]
    return (
        isinstance(rows, dict)
        and len(rows) <= MAX_LIST
        and all(
            isinstance(table, str)
            and 0 < len(table) <= MAX_ITEM
            and isinstance(n, int)
            and not isinstance(n, bool)
            and n >= 0
            for table, n in rows.items()
        )
        and isinstance(top, str)
        and len(top) <= MAX_PLAN_NODE
        and isinstance(error, str)
        and len(error) <= MAX_ESTIMATE_ERROR
    )


def validate_open_payload(
    *,
    fingerprint: Any,
    statement: Any,
    kind: Any,
    risk: Any,
    reasons: Any,
    tables: Any,
    classifications: Any,
    client_addr: Any = "",
    application_name: Any = "",
    values_digest: Any = None,
    values: Any = None,
    estimate: Any = None,
) -> None:
    """Refuse, field by field, what a sidecar must not store (raises ValidationError).

    ``values_digest``, ``values`` and ``estimate`` are optional (None: not sent, as by
    sidecars before them); sent, each must be exactly as the contract says.
    """
    errors: dict[str, str] = {}
    if values_digest is not None and (
        not isinstance(values_digest, str) or not VALUES_DIGEST_RE.match(values_digest)
    ):
        errors["values_digest"] = "64 lower-case hex characters."
    if values is not None and not _values_valid(values):
        errors["values"] = (
            f"A list of at most {MAX_VALUES} objects {{statement, n, value}} (a string of at "
            f"most {MAX_VALUE} characters) or {{statement, n, classification}}."
        )
    if estimate is not None and not _estimate_valid(estimate):
        errors["estimate"] = (
            "An object {rows: {table: estimated rows}, top: plan node type, error: text}."
        )
    if not isinstance(fingerprint, str) or not FINGERPRINT_RE.match(fingerprint):
        errors["fingerprint"] = "8 to 128 lower-case hex characters."
    if not isinstance(statement, str) or not statement.strip() or len(statement) > MAX_STATEMENT:
        errors["statement"] = f"The redacted statement, 1 to {MAX_STATEMENT} characters."
    if _kinds(kind) is None:
        errors["kind"] = (
            f"A statement kind such as 'delete', or a list of 1 to {MAX_KINDS} "
            "(one per statement of the text)."
        )
    if not isinstance(risk, int) or isinstance(risk, bool) or not 0 <= risk <= 100:
        errors["risk"] = "An integer from 0 to 100."
    if (
        not isinstance(reasons, list)
        or len(reasons) > MAX_LIST
        or not all(
            isinstance(r, dict)
            and set(r) == {"rule", "message"}
            and all(isinstance(v, str) and len(v) <= 1000 for v in r.values())
            for r in reasons
        )
    ):
        errors["reasons"] = "A list of {rule, message} objects."
    for name, value in (("tables", tables), ("classifications", classifications)):
        if (
            not isinstance(value, list)
            or len(value) > MAX_LIST
            or not all(isinstance(v, str) and 0 < len(v) <= MAX_ITEM for v in value)
        ):
            errors[name] = f"A list of at most {MAX_LIST} names."
    if not isinstance(client_addr, str) or len(client_addr) > 64:
        errors["client_addr"] = "A string of at most 64 characters."
    if not isinstance(application_name, str) or len(application_name) > 128:
        errors["application_name"] = "A string of at most 128 characters."
    for name, value in (
        ("statement", statement),
        ("reasons", reasons),
        ("tables", tables),
        ("classifications", classifications),
        ("client_addr", client_addr),
        ("application_name", application_name),
        ("values", values),
        ("estimate", estimate),
    ):
        if name not in errors and not _no_nul(value):
            errors[name] = "NUL characters are not allowed."
    if errors:
        raise ValidationError(errors)


def identity_for_datasource(*, datasource: Datasource, name: str) -> Identity | None:
    """The identity a sidecar names, if it may connect to this datasource now (as in its bundle)."""
    now = timezone.now()
    return (
        Identity.objects.filter(name=name, is_active=True, teams__in=datasource.connect_teams.all())
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .select_related("owner")
        .distinct()
        .first()
    )


def _grant_consume(
    *,
    datasource: Datasource,
    identity: Identity,
    fingerprint: str,
    values_digest: str,
    now: datetime.datetime,
) -> Grant | None:
    """Take one use of an active grant for this statement, if there is one.

    A grant bound to values (its ``values_digest``) runs only those values; a blank
    one (bound to the shape, or approved for an old sidecar that sent no digest)
    runs any. A run without a digest is matched by blank grants only.
    """
    same_values = Q(values_digest="")
    if values_digest:
        same_values |= Q(values_digest=values_digest)
    # Under READ COMMITTED a locked row is re-checked after the lock wait, so a
    # grant a concurrent caller just used up (or a reviewer revoked) is skipped,
    # never taken twice.
    grant = (
        Grant.objects.select_for_update(no_key=True)
        .filter(
            same_values,
            datasource=datasource,
            identity=identity,
            fingerprint=fingerprint,
            state=GrantState.ACTIVE,
            uses_left__gt=0,
            expires_at__gt=now,
        )
        .order_by("expires_at")
        .first()
    )
    if grant is None:
        return None
    grant.uses_left -= 1
    if grant.uses_left == 0:
        grant.state = GrantState.USED
    grant.save(update_fields=["uses_left", "state"])
    return grant


@transaction.atomic
def approval_request_open(
    *,
    datasource: Datasource,
    identity: Identity,
    fingerprint: str,
    statement: str,
    kind: str | list[str],
    risk: int,
    reasons: list[dict[str, str]],
    tables: list[str],
    classifications: list[str],
    sidecar: Sidecar | int | None = None,
    client_addr: str = "",
    application_name: str = "",
    values_digest: str | None = None,
    values: list[dict[str, Any]] | None = None,
    estimate: dict[str, Any] | None = None,
) -> tuple[ApprovalRequest, Grant | None, bool]:
    """May ``identity`` run this statement now? Returns (request, consumed grant, created).

    A usable grant is consumed (one use); else the pending request for the same
    statement and values is returned; else, when the same statement with the same
    values was denied within ``DENIAL_MEMORY``, that denied request (the caller
    answers with its reason at once); else a new one is opened and its reviewers
    notified. ``values_digest``, ``values`` and ``estimate`` are None when the
    sidecar did not send them.
    """
    validate_open_payload(
        fingerprint=fingerprint,
        statement=statement,
        kind=kind,
        risk=risk,
        reasons=reasons,
        tables=tables,
        classifications=classifications,
        client_addr=client_addr,
        application_name=application_name,
        values_digest=values_digest,
        values=values,
        estimate=estimate,
    )
    digest = values_digest or ""
    now = timezone.now()
    grant = _grant_consume(
        datasource=datasource,
        identity=identity,
        fingerprint=fingerprint,
        values_digest=digest,
        now=now,
    )
    if grant is not None:
        request = ApprovalRequest.objects.select_related("datasource__environment", "identity").get(
            pk=grant.request_id
        )
        used = grant.uses_total - grant.uses_left
        _event(
            request,
            ApprovalEventKind.GRANT_USED,
            key=str(used),
            detail={"uses_left": grant.uses_left, "application_name": application_name},
        )
        _audit(
            request,
            "grant_used",
            grant=str(grant.id),
            uses_left=grant.uses_left,
            grant_state=grant.state,
        )
        return request, grant, False

    lookup = {
        "datasource": datasource,
        "identity": identity,
        "fingerprint": fingerprint,
        "values_digest": digest,
    }
    pending = (
        ApprovalRequest.objects.select_for_update(no_key=True)
        .filter(state=ApprovalState.PENDING, **lookup)
        .first()
    )
    if pending is not None:
        if pending.expires_at > now:
            return pending, None, False
        _expire_locked(pending, now)

    if digest:
        # Asking again for what a reviewer just refused gets the refusal, not a new
        # request (and no new notices). Without a digest the values are unknown: a
        # retry may differ from what was denied, so it is reviewed anew.
        denied = (
            ApprovalRequest.objects.select_related("denied_by")
            .filter(state=ApprovalState.DENIED, decided_at__gt=now - DENIAL_MEMORY, **lookup)
            .order_by("-decided_at")
            .first()
        )
        if denied is not None:
            return denied, None, False

    policy = review_policy(datasource_id=datasource.pk)
    request = ApprovalRequest(
        datasource=datasource,
        identity=identity,
        sidecar_id=sidecar.pk if isinstance(sidecar, Sidecar) else sidecar,
        fingerprint=fingerprint,
        statement=statement,
        kind=KINDS_SEPARATOR.join(_kinds(kind) or ()),
        risk=risk,
        reasons=reasons,
        tables=tables,
        classifications=classifications,
        client_addr=client_addr,
        application_name=application_name,
        required_approvals=2 if risk >= RISK_THRESHOLDS["critical_at"] else 1,
        expires_at=now + policy.expire_after,
        binding=policy.grant_binding,
        values_digest=digest,
        values=values or [],
        estimate=estimate or {},
    )
    request.full_clean(validate_unique=False, validate_constraints=False)
    try:
        with transaction.atomic():
            request.save()
    except IntegrityError:
        # Another sidecar opened the same request a moment ago: share it.
        existing = ApprovalRequest.objects.filter(state=ApprovalState.PENDING, **lookup).first()
        if existing is None:
            raise
        return existing, None, False
    _event(
        request,
        ApprovalEventKind.CREATED,
        detail={"required_approvals": request.required_approvals, "risk": risk},
    )
    _audit(request, "pending", required_approvals=request.required_approvals)
    _on_commit_publish(request)
    _enqueue_notify(request.id, "created")
    return request, None, True


# --- deciding and cancelling -----------------------------------------------------------------


def _locked(request_id: Any) -> ApprovalRequest:
    try:
        uuid.UUID(str(request_id))
    except ValueError as exc:
        raise ApprovalRequest.DoesNotExist(f"No approval request {request_id}.") from exc
    return (
        ApprovalRequest.objects.select_for_update(of=("self",))
        .select_related("datasource", "datasource__environment", "identity", "identity__owner")
        .get(pk=request_id)
    )


def grant_default_uses() -> int:
    """The uses of a grant nobody narrowed, and the most a reviewer may give."""
    return int(min(settings.WARDEN_APPROVAL_DEFAULT_USES, settings.WARDEN_APPROVAL_MAX_USES))


def grant_default_seconds() -> int:
    """How long a grant nobody narrowed lasts, and the longest a reviewer may give."""
    return int(
        min(
            settings.WARDEN_APPROVAL_DEFAULT_GRANT_SECONDS,
            settings.WARDEN_APPROVAL_MAX_GRANT_SECONDS,
        )
    )


def _grant_limits(
    *, uses: int | None, expires_at: datetime.datetime | None, now: datetime.datetime
) -> None:
    """A reviewer narrows a grant, never widens it: fewer uses or an earlier expiry than
    the defaults, not more (a wider grant would outlive what they reviewed)."""
    errors: dict[str, str] = {}
    most_uses = grant_default_uses()
    if uses is not None and (
        not isinstance(uses, int) or isinstance(uses, bool) or not 1 <= uses <= most_uses
    ):
        errors["uses"] = (
            f"A grant can only be narrowed: from 1 to {most_uses} "
            f"use{'' if most_uses == 1 else 's'}, the default."
        )
    if expires_at is not None:
        seconds = grant_default_seconds()
        latest = now + datetime.timedelta(seconds=seconds)
        if timezone.is_naive(expires_at):
            errors["expires_at"] = "Give a time zone."
        elif expires_at <= now:
            errors["expires_at"] = "The grant's expiry must be in the future."
        elif expires_at > latest:
            errors["expires_at"] = (
                f"A grant can only be narrowed: it expires at most {seconds} s "
                f"({seconds // 60} minutes) after the approval, the default."
            )
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def approval_decide(
    *,
    request_id: Any,
    user: Any,
    approve: bool,
    reason: str = "",
    uses: int | None = None,
    expires_at: datetime.datetime | None = None,
) -> ApprovalRequest:
    """One reviewer approves or denies. A denial needs a reason and ends the request; an
    approval ends it once ``required_approvals`` distinct reviewers approved, with a grant
    as narrow as the narrowest approver asked (never wider than the settings allow)."""
    request = _locked(request_id)
    refusal = decision_refusal(user=user, request=request)
    if refusal:
        raise PermissionDenied(refusal)
    if not request.is_pending:
        raise ValidationError(f"This request is already {request.state}.")
    now = timezone.now()
    if request.expires_at <= now:
        raise ValidationError("This request has expired.")
    if request.decisions.filter(reviewer=user).exists():
        raise PermissionDenied("You have already approved this request; another reviewer must.")
    reason = (reason or "").strip()
    if not approve:
        if not reason:
            raise ValidationError({"reason": "Say why the request is denied."})
        if uses is not None or expires_at is not None:
            raise ValidationError({"uses": "A denial grants nothing."})
        ApprovalDecision.objects.create(
            request=request, reviewer=user, approve=False, reason=reason
        )
        _transition(request, ApprovalState.DENIED, now)
        request.deny_reason = reason[:2000]
        request.denied_by = user
        request.full_clean(validate_unique=False, validate_constraints=False)
        request.save(update_fields=["state", "decided_at", "deny_reason", "denied_by"])
        _event(
            request, ApprovalEventKind.DENIED, actor=user, detail={"reason": request.deny_reason}
        )
        _audit(request, "denied", actor=user, reviewer=user.get_username())
        _on_commit_publish(request)
        return request

    _grant_limits(uses=uses, expires_at=expires_at, now=now)
    ApprovalDecision.objects.create(
        request=request,
        reviewer=user,
        approve=True,
        reason=reason,
        uses=uses,
        grant_expires_at=expires_at,
    )
    approvals = list(request.decisions.filter(approve=True))
    _event(
        request,
        ApprovalEventKind.APPROVAL,
        key=str(user.pk),
        actor=user,
        detail={
            "approvals": len(approvals),
            "required": request.required_approvals,
            "uses": uses,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    if len(approvals) < request.required_approvals:
        _audit(
            request,
            "reviewed",
            actor=user,
            reviewer=user.get_username(),
            approvals=len(approvals),
            required=request.required_approvals,
        )
        return request

    _transition(request, ApprovalState.APPROVED, now)
    request.save(update_fields=["state", "decided_at"])
    # The narrowest of what the approvers asked, never wider than the defaults.
    uses_total = min([grant_default_uses(), *(d.uses for d in approvals if d.uses is not None)])
    expiry = min(
        [
            now + datetime.timedelta(seconds=grant_default_seconds()),
            *(d.grant_expires_at for d in approvals if d.grant_expires_at is not None),
        ]
    )
    grant = Grant.objects.create(
        request=request,
        datasource_id=request.datasource_id,
        identity_id=request.identity_id,
        fingerprint=request.fingerprint,
        # Bound to the statement: these values only. Blank: any values of the shape
        # (and a request of an old sidecar, which sent no digest).
        values_digest=(request.values_digest if request.binding == GrantBinding.STATEMENT else ""),
        uses_total=uses_total,
        uses_left=uses_total,
        expires_at=expiry,
    )
    _event(
        request,
        ApprovalEventKind.APPROVED,
        actor=user,
        detail={
            "grant": str(grant.id),
            "uses": grant.uses_total,
            "expires_at": grant.expires_at.isoformat(),
            "binding": request.binding,
            "reviewers": [d.reviewer.get_username() for d in approvals],
        },
    )
    _audit(
        request,
        "approved",
        actor=user,
        reviewers=[d.reviewer.get_username() for d in approvals],
        grant=str(grant.id),
        uses=grant.uses_total,
        grant_expires_at=grant.expires_at.isoformat(),
        binding=request.binding,
    )
    _on_commit_publish(request)
    return request


@transaction.atomic
def approval_cancel(*, request_id: Any, user: Any) -> ApprovalRequest:
    """The requester withdraws a pending request (the human, or an agent's owner)."""
    request = _locked(request_id)
    if not is_requester(user=user, request=request):
        raise PermissionDenied("Only the requester may cancel this request.")
    now = timezone.now()
    _transition(request, ApprovalState.CANCELLED, now)
    request.save(update_fields=["state", "decided_at"])
    _event(request, ApprovalEventKind.CANCELLED, actor=user)
    _audit(request, "cancelled", actor=user)
    _on_commit_publish(request)
    return request


def revoke_refusal(*, user: Any, request: ApprovalRequest) -> str | None:
    """Why ``user`` may not revoke the grant of ``request`` (None when they may).

    Those who may decide the datasource's requests, any admin, and the requester
    (the human, or an agent's owner): revoking only ever narrows what runs, so the
    rules that stop self-approval do not apply.
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return "Sign in first."
    if (
        user_role(user) == Role.ADMIN
        or is_reviewer_of(user=user, request=request)
        or is_requester(user=user, request=request)
    ):
        return None
    return f"Only a reviewer of {request.datasource.name}, an admin or the requester may revoke."


@transaction.atomic
def grant_revoke(*, request_id: Any, user: Any) -> Grant:
    """End the active grant of an approved request before its uses or time run out.

    The sidecar asks the control plane at every use (``approval_request_open``),
    so the next run of the statement is held again for a new review. A grant
    already used up, expired or revoked is refused (ValidationError).
    """
    try:
        uuid.UUID(str(request_id))
    except ValueError as exc:
        raise ApprovalRequest.DoesNotExist(f"No approval request {request_id}.") from exc
    # Only the grant is locked, as a consumer locks it: whoever comes second waits,
    # then finds it used or revoked. (Locking the request too would deadlock with a
    # consumer, whose GRANT_USED event takes a key-share lock on the request.)
    grant = Grant.objects.select_for_update(no_key=True).filter(request_id=request_id).first()
    request = ApprovalRequest.objects.select_related(
        "datasource", "datasource__environment", "identity", "identity__owner"
    ).get(pk=request_id)
    refusal = revoke_refusal(user=user, request=request)
    if refusal:
        raise PermissionDenied(refusal)
    if grant is None:
        raise ValidationError(f"This request is {request.state}: it has no grant to revoke.")
    now = timezone.now()
    if grant.state != GrantState.ACTIVE:
        raise ValidationError(f"This grant is already {grant.get_state_display().lower()}.")
    if grant.expires_at <= now:
        raise ValidationError("This grant has already expired.")
    grant.state = GrantState.REVOKED
    grant.revoked_at = now
    grant.revoked_by = user
    grant.save(update_fields=["state", "revoked_at", "revoked_by"])
    _event(
        request,
        ApprovalEventKind.GRANT_REVOKED,
        actor=user,
        detail={"grant": str(grant.id), "uses_left": grant.uses_left},
    )
    _audit(
        request,
        "grant_revoked",
        actor=user,
        grant=str(grant.id),
        uses_left=grant.uses_left,
        grant_state=grant.state,
    )
    return grant


# --- the sweeps (Celery beat) ---------------------------------------------------------------


def _expire_locked(request: ApprovalRequest, now: datetime.datetime) -> None:
    _transition(request, ApprovalState.EXPIRED, now)
    request.save(update_fields=["state", "decided_at"])
    _event(request, ApprovalEventKind.EXPIRED)
    _audit(request, "expired")
    _on_commit_publish(request)


def approvals_expire_stale(*, now: datetime.datetime | None = None) -> int:
    """Expire pending requests past their expiry, and grants past theirs. Returns how many
    requests and grants it ended. Each in its own short transaction; rows another
    transaction holds are left for the next run."""
    now = now or timezone.now()
    ended = 0
    due = ApprovalRequest.objects.filter(state=ApprovalState.PENDING, expires_at__lte=now)
    for request_id in due.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            request = (
                ApprovalRequest.objects.select_for_update(skip_locked=True)
                .select_related("datasource__environment", "identity")
                .filter(pk=request_id, state=ApprovalState.PENDING, expires_at__lte=now)
                .first()
            )
            if request is not None:
                _expire_locked(request, now)
                ended += 1
    grants = Grant.objects.filter(state=GrantState.ACTIVE, expires_at__lte=now)
    for grant_id in grants.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            grant = (
                Grant.objects.select_for_update(skip_locked=True)
                .filter(pk=grant_id, state=GrantState.ACTIVE, expires_at__lte=now)
                .first()
            )
            if grant is None:
                continue
            grant.state = GrantState.EXPIRED
            grant.save(update_fields=["state"])
            request = ApprovalRequest.objects.select_related(
                "datasource__environment", "identity"
            ).get(pk=grant.request_id)
            _event(request, ApprovalEventKind.GRANT_EXPIRED, detail={"uses_left": grant.uses_left})
            _audit(request, "grant_expired", grant=str(grant.id), uses_left=grant.uses_left)
            ended += 1
    return ended


def approvals_escalate_due(*, now: datetime.datetime | None = None) -> int:
    """Hand requests nobody acted on to the datasource's fallback team (notified, and
    allowed to decide). Only datasources with a fallback team escalate."""
    now = now or timezone.now()
    escalated = 0
    candidates = ApprovalRequest.objects.filter(
        state=ApprovalState.PENDING,
        escalated_at__isnull=True,
        datasource__review_settings__fallback_team__isnull=False,
    ).values_list("pk", "datasource_id", "created_at")
    policies: dict[int, ReviewPolicy] = {}
    for request_id, datasource_id, created_at in candidates[:1000]:
        policy = policies.setdefault(datasource_id, review_policy(datasource_id=datasource_id))
        if created_at + policy.escalate_after > now:
            continue
        with transaction.atomic():
            request = (
                ApprovalRequest.objects.select_for_update(skip_locked=True)
                .select_related("datasource__environment", "identity")
                .filter(pk=request_id, state=ApprovalState.PENDING, escalated_at__isnull=True)
                .first()
            )
            if request is None:
                continue
            request.escalated_at = now
            request.save(update_fields=["escalated_at"])
            team = Team.objects.filter(pk=policy.fallback_team_id).first()
            _event(
                request,
                ApprovalEventKind.ESCALATED,
                detail={"team": team.slug if team else None},
            )
            _audit(request, "escalated", team=team.slug if team else None)
            _enqueue_notify(request.id, "escalated")
            escalated += 1
    return escalated


def approvals_remind_due(*, now: datetime.datetime | None = None) -> int:
    """Remind the reviewers of requests still pending ``remind_every`` after the last nudge."""
    now = now or timezone.now()
    reminded = 0
    candidates = ApprovalRequest.objects.filter(
        state=ApprovalState.PENDING, expires_at__gt=now
    ).values_list("pk", "datasource_id", "created_at", "reminded_at")
    policies: dict[int, ReviewPolicy] = {}
    for request_id, datasource_id, created_at, reminded_at in candidates[:1000]:
        policy = policies.setdefault(datasource_id, review_policy(datasource_id=datasource_id))
        if (reminded_at or created_at) + policy.remind_every > now:
            continue
        with transaction.atomic():
            request = (
                ApprovalRequest.objects.select_for_update(skip_locked=True)
                .select_related("datasource__environment", "identity")
                .filter(pk=request_id, state=ApprovalState.PENDING)
                .first()
            )
            if (
                request is None
                or (request.reminded_at or request.created_at) + (policy.remind_every) > now
            ):
                continue
            request.reminded_at = now
            request.save(update_fields=["reminded_at"])
            round_no = request.events.filter(kind=ApprovalEventKind.REMINDED).count() + 1
            _event(request, ApprovalEventKind.REMINDED, key=str(round_no))
            _audit(request, "reminded", round=round_no)
            _enqueue_notify(request.id, f"reminder-{round_no}")
            reminded += 1
    return reminded


def approvals_purge_values(*, now: datetime.datetime | None = None) -> int:
    """Drop the literal values of requests decided longer ago than their datasource's
    retention (``values_retention_seconds``, else WARDEN_APPROVAL_VALUES_RETENTION_SECONDS).

    ``values`` becomes [] and ``values_purged_at`` is set, with a ``values_purged``
    event; pending requests keep theirs (a reviewer still needs them). The digest
    goes too, once the denial memory no longer needs it: a digest of few values
    (a card number's last four digits, a status) can be reversed by trying them
    all. A grant keeps its own copy while it can run, and loses it once it has
    ended. Idempotent: a purged request is not a candidate again. Returns how many
    it purged.
    """
    now = now or timezone.now()
    purged = 0
    candidates = (
        ApprovalRequest.objects.exclude(state=ApprovalState.PENDING)
        .filter(values_purged_at__isnull=True)
        .exclude(values=[], values_digest="")
    )
    datasource_ids = candidates.values_list("datasource_id", flat=True).distinct()
    for datasource_id in list(datasource_ids):
        retention = max(review_policy(datasource_id=datasource_id).values_retention, DENIAL_MEMORY)
        due = candidates.filter(datasource_id=datasource_id, decided_at__lte=now - retention)
        for request_id in due.values_list("pk", flat=True)[:1000]:
            with transaction.atomic():
                request = (
                    ApprovalRequest.objects.select_for_update(skip_locked=True, no_key=True)
                    .select_related("datasource__environment", "identity")
                    .filter(pk=request_id, values_purged_at__isnull=True)
                    .exclude(state=ApprovalState.PENDING)
                    .first()
                )
                if request is None:
                    continue
                kept = len(request.values)
                request.values = []
                request.values_digest = ""
                request.values_purged_at = now
                request.save(update_fields=["values", "values_digest", "values_purged_at"])
                _event(request, ApprovalEventKind.VALUES_PURGED, detail={"count": kept})
                _audit(request, "values_purged", count=kept)
                purged += 1
    # Never an active grant's: a blank digest would let it run any values.
    Grant.objects.exclude(state=GrantState.ACTIVE).exclude(values_digest="").filter(
        request__values_purged_at__isnull=False
    ).update(values_digest="")
    return purged


# --- notifications ---------------------------------------------------------------------------

NOTICE_RE = re.compile(r"^(created|escalated|reminder-[0-9]{1,6})$")


def _reviewer_recipients(request: ApprovalRequest, notice: str) -> list[tuple[int, str]]:
    """(user id, email) of those to tell: the review teams, or the fallback team when
    escalating; never the requester's side."""
    if notice == "escalated":
        fallback = review_policy(datasource_id=request.datasource_id).fallback_team_id
        team_ids = {fallback} if fallback is not None else set()
    else:
        team_ids = deciding_team_ids(request)
    if not team_ids:
        return []
    requester = requester_user_id(request.identity)
    users = (
        get_user_model()
        .objects.filter(identity__teams__in=team_ids, identity__is_active=True, is_active=True)
        .filter(Q(identity__expires_at__isnull=True) | Q(identity__expires_at__gt=timezone.now()))
        .exclude(email="")
        .distinct()
        .order_by("pk")
    )
    result = []
    for user in users:
        if user.pk in (requester, request.identity.user_id):
            continue
        if user_role(user) not in REVIEWER_ROLES:
            continue
        result.append((user.pk, user.email))
    return result


def _notice_text(request: ApprovalRequest, notice: str) -> tuple[str, str]:
    url = approval_url(request.id)
    headline = {
        "created": "needs a review",
        "escalated": "was escalated to you: nobody has reviewed it yet",
    }.get(notice, "is still waiting for a review")
    subject = (
        f"[Warden] {request.identity.name} on {request.datasource.name}: {request.kind} {headline}"
    )
    reasons = "; ".join(r.get("message", "") for r in request.reasons) or "—"
    body = "\n".join(
        [
            f"{request.identity.name} ({request.identity.kind}) wants to run a {request.kind} "
            f"on {request.datasource.name} (risk {request.risk}).",
            f"Why it was held: {reasons}",
            f"Statement (literals redacted): {request.statement[:2000]}",
            f"Approvals needed: {request.required_approvals}",
            "",
            f"Review it: {url}",
        ]
    )
    return subject, body


def _post_webhook(url: str, text: str) -> None:
    """POST the notice; never to an internal address, never following a redirect
    (config.egress). EgressRefused when refused, OSError when it failed."""
    post_json(
        url,
        {"text": text},
        timeout=settings.WARDEN_APPROVAL_WEBHOOK_TIMEOUT,
        allowed=settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS,
    )


def approval_notify(*, request_id: Any, kind: str) -> int:
    """Send one notice (``created``, ``escalated``, ``reminder-<n>``) of a pending request
    to each reviewer by email and to the webhook. Returns how many were sent now.

    Each delivery is its own transaction that takes an advisory lock on (request,
    notice, recipient), skips what an ``ApprovalEvent`` says was already sent,
    sends, and records it. A failed send raises (the task retries); what went out
    before it stays recorded and is not sent again.
    """
    if not NOTICE_RE.match(kind):
        raise ValueError(f"Unknown notice {kind!r}.")
    request = (
        ApprovalRequest.objects.select_related(
            "datasource", "datasource__environment", "identity", "identity__owner"
        )
        .filter(pk=request_id)
        .first()
    )
    if request is None or not request.is_pending:
        return 0
    subject, body = _notice_text(request, kind)
    policy = review_policy(datasource_id=request.datasource_id)
    deliveries: list[tuple[str, str, Any]] = [
        ("email", f"user-{uid}", addr) for uid, addr in _reviewer_recipients(request, kind)
    ]
    if policy.webhook_url:
        digest = hashlib.sha256(policy.webhook_url.encode()).hexdigest()[:16]
        deliveries.append(("webhook", f"webhook-{digest}", policy.webhook_url))
    sent = 0
    for channel, recipient, target in deliveries:
        key = f"{kind}:{recipient}"
        with transaction.atomic():
            # Serialise deliveries of this one notice (two copies of the task), not
            # the request: a reviewer deciding meanwhile must not wait for SMTP.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"{request.pk}:{key}"]
                )
            state = ApprovalRequest.objects.filter(pk=request.pk).values_list("state", flat=True)
            if state.first() != ApprovalState.PENDING:
                return sent
            if ApprovalEvent.objects.filter(
                request=request, kind=ApprovalEventKind.NOTIFIED, key=key
            ).exists():
                continue
            if channel == "email":
                send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [target])
            else:
                try:
                    _post_webhook(target, f"{subject}\n{approval_url(request.id)}")
                except EgressRefused as exc:
                    # The address or the answer (a redirect) is refused: a retry would
                    # be refused too. Not recorded as sent; the reviewers got their email.
                    logger.error(
                        "approval webhook for request %s (%s) not sent: %s", request.pk, kind, exc
                    )
                    continue
            _event(
                request,
                ApprovalEventKind.NOTIFIED,
                key=key,
                detail={"notice": kind, "channel": channel, "recipient": recipient},
            )
            sent += 1
    return sent


# --- review settings (management API) --------------------------------------------------------

# What a policy editor may set, in the order the form and the API show it.
REVIEW_SETTINGS_FIELDS = (
    "fallback_team",
    "escalate_after_seconds",
    "remind_every_seconds",
    "expire_after_seconds",
    "hold_seconds",
    "grant_binding",
    "values_retention_seconds",
    "webhook_url",
)
# A decided request keeps its values at least this long (as the setting's minimum).
MIN_VALUES_RETENTION_SECONDS = 60


def _review_settings_limits(row: ReviewSettings) -> None:
    """What the model cannot say alone: limits that come from settings."""
    errors: dict[str, str] = {}
    most = settings.WARDEN_APPROVAL_MAX_HOLD_SECONDS
    if row.hold_seconds is not None and not 1 <= row.hold_seconds <= most:
        errors["hold_seconds"] = (
            f"From 1 to {most} seconds: a sidecar holds a statement at most "
            f"{most} s (WARDEN_APPROVAL_MAX_HOLD_SECONDS)."
        )
    least = MIN_VALUES_RETENTION_SECONDS
    if row.values_retention_seconds is not None and row.values_retention_seconds < least:
        errors["values_retention_seconds"] = f"At least {least} seconds."
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def review_settings_set(
    *, actor: Any, datasource: Datasource, data: dict[str, Any]
) -> ReviewSettings:
    """Create or change a datasource's review settings (admin and security only)."""
    if not can_edit_policy(actor):
        raise PermissionDenied("Only admin and security may change review settings.")
    unknown = sorted(set(data).difference(REVIEW_SETTINGS_FIELDS))
    if unknown:
        raise ValidationError({name: "This field cannot be changed here." for name in unknown})
    row = (
        ReviewSettings.objects.select_for_update(no_key=True).filter(datasource=datasource).first()
    )
    before = object_snapshot(row) if row is not None else None
    if row is None:
        row = ReviewSettings(datasource=datasource)
    for name, value in data.items():
        setattr(row, name, value)
    _review_settings_limits(row)
    row.full_clean()
    row.save()
    _change_record_create(
        actor=actor,
        action="update" if before is not None else "create",
        obj=row,
        before=before,
        after=object_snapshot(row),
    )
    # The hold time is in the datasource's policy bundle: recompile it on commit.
    bundles_mark_stale(obj=datasource)
    return row
