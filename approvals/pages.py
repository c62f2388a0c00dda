"""What the approval pages need to know about one request for one viewer.

The services decide (``approval_decide`` refuses self-approval, the agent's
owner, a second vote by the same reviewer); this module asks the same
questions (``decision_refusal``) so a page can say why instead of showing
buttons that would be refused. It reads, never writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from approvals import selectors, services
from approvals.models import ApprovalDecision, ApprovalRequest, Grant, GrantState
from governance.permissions import can_review

PENDING = "pending"


def may_review(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and can_review(user))


def may_revoke(*, approval: ApprovalRequest, grant: Grant | None, user: Any) -> bool:
    """Whether to offer the Revoke button: an active grant, and a viewer
    ``grant_revoke`` would let revoke it."""
    return (
        grant is not None
        and grant.state == GrantState.ACTIVE
        and grant.expires_at > timezone.now()
        and services.revoke_refusal(user=user, request=approval) is None
    )


def pending_count(*, user: Any) -> int:
    return int(selectors.approvals_pending_count(user=user))


def other_requests(*, user: Any, approval: ApprovalRequest, limit: int) -> list[ApprovalRequest]:
    """The identity's other requests, newest first, among those the viewer may see
    (a reviewer must not read another team's deny reasons through a shared agent)."""
    recent = selectors.identity_recent_activity(
        identity=approval.identity, limit=limit + 1, user=user
    )
    return [past for past in recent if past.pk != approval.pk][:limit]


@dataclass
class ApprovalFacts:
    approvals: list[ApprovalDecision] = field(default_factory=list)
    needed: int = 1
    may_decide: bool = False
    why_not: str = ""
    is_requester: bool = False

    @property
    def progress(self) -> str:
        """ "1 of 2" while a second approval is still needed, else ""."""
        if self.needed > 1:
            return f"{len(self.approvals)} of {self.needed}"
        return ""


def approval_facts(*, approval: ApprovalRequest, user: Any) -> ApprovalFacts:
    approvals = [d for d in approval.decisions.all() if d.approve]
    facts = ApprovalFacts(approvals=approvals, needed=approval.required_approvals)
    facts.is_requester = services.is_requester(user=user, request=approval)
    if approval.state != PENDING:
        facts.why_not = f"This request is {approval.state}."
    elif not may_review(user):
        facts.why_not = (
            f"Waiting for a reviewer of {approval.datasource.name}."
            if facts.is_requester
            else "Only reviewers decide requests."
        )
    elif refusal := services.decision_refusal(user=user, request=approval):
        facts.why_not = refusal
    elif any(d.reviewer_id == user.pk for d in approvals):
        facts.why_not = "You approved this; it needs another reviewer's approval too."
    else:
        facts.may_decide = True
    return facts
