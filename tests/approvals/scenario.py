"""A review scenario on top of ``demo_policy``, shared by the page and browser tests.

Reviewers of crm-prod are the members of team B (its review team): ``reviewer``
(the persona) and ``reviewer2``. Team A's datasource ``billing-prod`` is reviewed
only by team A, so its requests are "another team's" for both. Requests are
opened through ``approval_request_open``, as the sidecar API does.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

from approvals.models import ApprovalRequest
from approvals.services import approval_request_open
from governance import services
from governance.models import Environment, Role
from tests.conftest import _make_user


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hold(
    *,
    datasource: Any,
    identity: Any,
    statement: str = "DELETE FROM public.customers WHERE id = $1",
    kind: str = "delete",
    risk: int = 75,
    tables: list[str] | None = None,
    classifications: list[str] | None = None,
) -> ApprovalRequest:
    request, grant, created = approval_request_open(
        datasource=datasource,
        identity=identity,
        fingerprint=fingerprint(f"{identity.name}:{statement}"),
        statement=statement,
        kind=kind,
        risk=risk,
        reasons=[
            {"rule": "review-agent-writes", "message": "Writes by AI agents need a human reviewer."}
        ],
        tables=tables if tables is not None else ["public.customers"],
        classifications=classifications if classifications is not None else ["pii.email"],
        client_addr="127.0.0.1",
        application_name="psql",
    )
    assert created and grant is None
    return request


def build(*, demo: Any, admin: Any, reviewer: Any) -> SimpleNamespace:
    team_a, team_b = demo.team_a, demo.team_b
    services.identity_update(actor=admin, identity=reviewer.identity, data={"teams": [team_b]})
    reviewer2 = _make_user("reviewer2", Role.REVIEWER, actor=admin)
    services.identity_update(actor=admin, identity=reviewer2.identity, data={"teams": [team_b]})
    # An agent owned by the reviewer persona.
    reviewers_agent = services.identity_create(
        actor=admin, name="agent-cleanup", kind="agent", owner=reviewer.identity, teams=[team_a]
    )
    billing = services.datasource_create(
        actor=admin,
        name="billing-prod",
        environment=Environment.objects.get(name="production"),
        connect_teams=[team_a],
        review_teams=[team_a],
    )
    return SimpleNamespace(
        reviewer=reviewer,
        reviewer2=reviewer2,
        # agent-reports (owned by security): one approval needed.
        agent_request=hold(datasource=demo.datasource, identity=demo.agent),
        # svc-billing, risk above critical_at: two approvals needed.
        critical_request=hold(
            datasource=demo.datasource,
            identity=demo.service,
            statement="UPDATE public.customers SET email = $1",
            kind="update",
            risk=88,
        ),
        # reviewer2's own statement.
        own_request=hold(
            datasource=demo.datasource,
            identity=reviewer2.identity,
            statement="DELETE FROM public.orders WHERE id = $1",
            tables=["public.orders"],
            classifications=[],
        ),
        # an agent the reviewer persona owns.
        owned_agent_request=hold(
            datasource=demo.datasource,
            identity=reviewers_agent,
            statement="DELETE FROM public.customers WHERE id < $1",
        ),
        other_team_request=hold(datasource=billing, identity=demo.agent),
        billing=billing,
    )
