"""Approval fixtures: a datasource reviewed by team B, two reviewers in it, requests."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import override_settings

from approvals import services
from approvals.models import ApprovalRequest
from governance import services as gov
from governance.models import Role
from tests.approvals import scenario
from tests.conftest import FAST_HASHERS, _make_user


@pytest.fixture
def review_setup(
    demo_policy: SimpleNamespace,
    admin_user: Any,
    reviewer_user: Any,
    _policy_copy: SimpleNamespace | None,
) -> SimpleNamespace:
    """demo_policy (crm-prod, connect team A, review team B) plus reviewers in team B.

    ``reviewer_user`` and ``reviewer2`` (role reviewer) are in team B; ``requester``
    is a human in team A with role reviewer too (so only the rules stop them);
    ``demo_policy.owner`` (security persona) owns the agent and the service.
    A module that uses ``review_once`` (with ``policy_once``) makes them once.
    """
    extras = getattr(_policy_copy, "review", None) or _review_extras(
        demo_policy, admin_user, reviewer_user
    )
    return SimpleNamespace(**vars(demo_policy), reviewer=reviewer_user, **vars(extras))


def _review_extras(demo_policy: SimpleNamespace, admin_user: Any, reviewer_user: Any) -> Any:
    reviewer2 = _make_user("reviewer2", Role.REVIEWER, actor=admin_user)
    requester = _make_user("requester", Role.REVIEWER, actor=admin_user)
    team_a, team_b = demo_policy.team_a, demo_policy.team_b
    gov.identity_update(actor=admin_user, identity=reviewer_user.identity, data={"teams": [team_b]})
    gov.identity_update(actor=admin_user, identity=reviewer2.identity, data={"teams": [team_b]})
    # The requester reviews for team B too: only the self-approval rule stops them.
    gov.identity_update(
        actor=admin_user, identity=requester.identity, data={"teams": [team_a, team_b]}
    )
    return SimpleNamespace(reviewer2=reviewer2, requester=requester)


@pytest.fixture(scope="module")
def review_once(policy_once: SimpleNamespace, django_db_blocker: Any) -> None:
    """review_setup's reviewers, made once for the module inside ``policy_once``'s
    transaction (see there)."""
    personas = policy_once.personas
    with django_db_blocker.unblock(), override_settings(PASSWORD_HASHERS=FAST_HASHERS):
        policy_once.review = _review_extras(
            policy_once.demo_policy, personas["admin"], personas["reviewer"]
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


@pytest.fixture(scope="module")
def _scenario_once(policy_once: SimpleNamespace, django_db_blocker: Any) -> None:
    # The inbox scenario (tests.approvals.scenario), built once per module with the
    # personas and the demo policy (tests.conftest.policy_once): every test starts
    # from these rows and gets its own copy of the objects (``s``).
    personas = policy_once.personas
    with django_db_blocker.unblock(), override_settings(PASSWORD_HASHERS=FAST_HASHERS):
        policy_once.scenario = scenario.build(
            demo=policy_once.demo_policy, admin=personas["admin"], reviewer=personas["reviewer"]
        )


@pytest.fixture
def s(_policy_copy: SimpleNamespace) -> SimpleNamespace:
    return _policy_copy.scenario
