"""Approval fixtures: a datasource reviewed by team B, two reviewers in it, requests."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from approvals import services
from approvals.models import ApprovalRequest
from governance import services as gov
from governance.models import Role
from tests.conftest import _make_user


@pytest.fixture
def review_setup(
    demo_policy: SimpleNamespace, admin_user: Any, reviewer_user: Any
) -> SimpleNamespace:
    """demo_policy (crm-prod, connect team A, review team B) plus reviewers in team B.

    ``reviewer_user`` and ``reviewer2`` (role reviewer) are in team B; ``requester``
    is a human in team A with role reviewer too (so only the rules stop them);
    ``demo_policy.owner`` (security persona) owns the agent and the service.
    """
    reviewer2 = _make_user("reviewer2", Role.REVIEWER, actor=admin_user)
    requester = _make_user("requester", Role.REVIEWER, actor=admin_user)
    team_a, team_b = demo_policy.team_a, demo_policy.team_b
    gov.identity_update(actor=admin_user, identity=reviewer_user.identity, data={"teams": [team_b]})
    gov.identity_update(actor=admin_user, identity=reviewer2.identity, data={"teams": [team_b]})
    # The requester reviews for team B too: only the self-approval rule stops them.
    gov.identity_update(
        actor=admin_user, identity=requester.identity, data={"teams": [team_a, team_b]}
    )
    return SimpleNamespace(
        **vars(demo_policy), reviewer=reviewer_user, reviewer2=reviewer2, requester=requester
    )


def open_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "fingerprint": "ab" * 16,
        "statement": "DELETE FROM public.customers WHERE id = $1",
        "kind": "delete",
        "risk": 75,
        "reasons": [{"rule": "review-agent-writes", "message": "Writes need a reviewer."}],
        "tables": ["public.customers"],
        "classifications": ["pii.email"],
        "client_addr": "127.0.0.1",
        "application_name": "psql",
    }
    payload.update(overrides)
    return payload


@pytest.fixture
def open_request(review_setup: SimpleNamespace) -> Callable[..., ApprovalRequest]:
    def make(identity: Any = None, **overrides: Any) -> ApprovalRequest:
        request, _, _ = services.approval_request_open(
            datasource=review_setup.datasource,
            identity=identity or review_setup.requester.identity,
            **open_payload(**overrides),
        )
        return request

    return make
