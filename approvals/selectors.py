"""Read paths of approvals, already restricted to what the user may see.

Reviewers see the requests of datasources one of their teams reviews (and,
once a request is escalated, of the datasource's fallback team); admins see
all; every other role sees none in the inbox. Requesters see their own
requests: those of their human identity and of the agents and service
accounts they own. A request out of scope answers 404, like one that does
not exist.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Count, Min, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from approvals.models import ApprovalEvent, ApprovalRequest, ApprovalState, ReviewSettings
from approvals.services import REVIEWER_ROLES
from governance.models import Datasource, Identity, Role, Team
from governance.permissions import user_role

__all__ = [
    "approval_for_requester",
    "approval_for_reviewer",
    "approval_timeline",
    "approvals_inbox",
    "approvals_of_requester",
    "approvals_pending_count",
    "approvals_pending_everywhere",
    "identity_recent_activity",
    "review_settings_of",
]

_BASE_RELATED = ("datasource", "datasource__environment", "identity", "identity__owner")


def _base() -> QuerySet[ApprovalRequest]:
    return ApprovalRequest.objects.select_related(*_BASE_RELATED, "denied_by").order_by(
        "-created_at"
    )


def _active_identities(user: Any) -> QuerySet[Identity]:
    now = timezone.now()
    return Identity.objects.filter(user=user, is_active=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )


def _reviewer_scope(user: Any) -> QuerySet[ApprovalRequest]:
    role = user_role(user)
    if role == Role.ADMIN:
        return _base()
    if role not in REVIEWER_ROLES:
        return ApprovalRequest.objects.none()
    # Through the user's identity while it is in force: a deactivated or expired one
    # reviews nothing, and reads nothing either (deciding checks the same).
    teams = Team.objects.filter(identities__in=_active_identities(user))
    return _base().filter(
        Q(datasource__review_teams__in=teams)
        | Q(escalated_at__isnull=False, datasource__review_settings__fallback_team__in=teams)
    )


def _distinct_ids(qs: QuerySet[ApprovalRequest]) -> QuerySet[ApprovalRequest]:
    # Joins through teams repeat rows; filter by id instead of DISTINCT so ordering stays free.
    return _base().filter(pk__in=qs.values("pk"))


def approvals_inbox(
    *,
    user: Any,
    state: str | None = ApprovalState.PENDING,
    datasource: Datasource | str | None = None,
    environment: str | None = None,
    identity_kind: str | None = None,
    q: str | None = None,
) -> QuerySet[ApprovalRequest]:
    """Requests the user reviews, newest first; ``state`` None or "all" for every state."""
    qs = _distinct_ids(_reviewer_scope(user))
    if state and state != "all":
        qs = qs.filter(state=state)
    if isinstance(datasource, Datasource):
        qs = qs.filter(datasource=datasource)
    elif datasource:
        qs = qs.filter(datasource__name=datasource)
    if environment:
        qs = qs.filter(datasource__environment__name=environment)
    if identity_kind:
        qs = qs.filter(identity__kind=identity_kind)
    if q:
        qs = qs.filter(
            Q(identity__name__icontains=q)
            | Q(datasource__name__icontains=q)
            | Q(statement__icontains=q)
            | Q(kind__iexact=q)
        )
    return qs


def approvals_pending_count(*, user: Any) -> int:
    return approvals_inbox(user=user).count()


def approvals_pending_everywhere(*, user: Any) -> tuple[int, Any]:
    """(how many requests wait for a decision on every datasource, the oldest one's
    creation time) for admin and security, who watch the queue without reading it;
    (0, None) for everyone else."""
    if user_role(user) not in {Role.ADMIN, Role.SECURITY}:
        return 0, None
    pending = ApprovalRequest.objects.filter(state=ApprovalState.PENDING)
    summary = pending.aggregate(count=Count("pk"), oldest=Min("created_at"))
    return summary["count"], summary["oldest"]


def approvals_of_requester(*, user: Any, state: str | None = None) -> QuerySet[ApprovalRequest]:
    """The user's own requests: their human identity's, and those of identities they own."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return ApprovalRequest.objects.none()
    # Owned: the agents and service accounts the user answers for (a person has no
    # owner; one set before that rule gives no reach).
    owned = Q(identity__owner__user=user) & ~Q(identity__kind="human")
    qs = _base().filter(Q(identity__user=user) | owned)
    if state and state != "all":
        qs = qs.filter(state=state)
    return qs


def _by_id(qs: QuerySet[ApprovalRequest], request_id: Any) -> ApprovalRequest:
    try:
        pk = uuid.UUID(str(request_id))
    except ValueError as exc:
        raise Http404("No such approval request.") from exc
    request = qs.filter(pk=pk).first()
    if request is None:
        raise Http404("No such approval request.")
    return request


def approval_for_reviewer(*, user: Any, request_id: Any) -> ApprovalRequest:
    return _by_id(_distinct_ids(_reviewer_scope(user)), request_id)


def approval_for_requester(*, user: Any, request_id: Any) -> ApprovalRequest:
    return _by_id(approvals_of_requester(user=user), request_id)


def approval_visible(*, user: Any, request_id: Any) -> ApprovalRequest:
    """The request if the user reviews it or asked for it (the detail page and API)."""
    scope = _reviewer_scope(user).values("pk")
    mine = approvals_of_requester(user=user).values("pk")
    return _by_id(_base().filter(Q(pk__in=scope) | Q(pk__in=mine)), request_id)


def approval_timeline(*, request: ApprovalRequest) -> list[dict[str, Any]]:
    """What happened to the request, oldest first: creation, notices, escalation,
    reminders, each approval, the denial, expiry or cancellation, and grant uses."""
    events = ApprovalEvent.objects.filter(request=request).select_related("actor")
    return [
        {
            "at": event.at,
            "kind": event.kind,
            "label": event.get_kind_display(),
            "actor": event.actor.get_username() if event.actor else "",
            "detail": event.detail,
        }
        for event in events.order_by("at", "id")
    ]


def identity_recent_activity(
    *, identity: Identity, limit: int = 10, user: Any = None
) -> list[ApprovalRequest]:
    """The identity's latest approval requests, for a reviewer weighing a new one.

    With ``user``, only those the user may see (reviewing or asking): a shared
    agent's history must not show one team another team's deny reasons.
    """
    qs = _base().filter(identity=identity)
    if user is not None:
        scope = _reviewer_scope(user).values("pk")
        mine = approvals_of_requester(user=user).values("pk")
        qs = qs.filter(Q(pk__in=scope) | Q(pk__in=mine))
    return list(qs[:limit])


def review_settings_of(*, datasource: Datasource) -> ReviewSettings:
    """The datasource's review settings, or an unsaved row of the defaults."""
    row = ReviewSettings.objects.filter(datasource=datasource).first()
    return row or ReviewSettings(datasource=datasource)
