"""Self-approval and the owner rule hold across an account's link to its identity.

The identity (and the agent it owns) exist before the person's first sign-in;
the link is made by single sign-on with a verified address (a real OIDC
provider process, as in tests/governance/test_oidc.py) or by an admin. After
either, the account sees those requests under "My requests" and may decide
neither, although it reviews for the datasource; another reviewer may.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from approvals import services
from governance import services as gov
from governance.models import Identity
from tests.approvals.scenario import hold
from tests.governance import test_oidc

pytestmark = pytest.mark.django_db(transaction=True)

# The fake identity provider (a process) and allauth's settings for it.
idp = test_oidc.idp
sso_settings = test_oidc.sso_settings


def _carol_and_her_agent(admin_user: Any, demo_policy: Any) -> tuple[Identity, Identity]:
    carol = gov.identity_create(
        actor=admin_user, name="carol", kind="human", email="CAROL@corp.example"
    )
    agent = gov.identity_create(
        actor=admin_user, name="agent-carol", kind="agent", owner=carol, teams=[demo_policy.team_a]
    )
    return carol, agent


def _assert_follows_but_may_not_decide(
    user: Any, carol: Identity, agent: Identity, demo_policy: Any, reviewer: Any, admin: Any
) -> None:
    own = hold(datasource=demo_policy.datasource, identity=carol)
    agents = hold(datasource=demo_policy.datasource, identity=agent)
    client = Client()
    client.force_login(user)
    mine = client.get(reverse("approvals:mine"))
    assert mine.status_code == 200
    for request in (own, agents):
        assert f'id="mine-{request.pk}"'.encode() in mine.content
    # She reviews crm-prod (team B), and still decides neither.
    assert services.is_reviewer_of(user=user, request=own)
    with pytest.raises(PermissionDenied, match="Nobody decides their own request"):
        services.approval_decide(request_id=own.pk, user=user, approve=True)
    with pytest.raises(PermissionDenied, match="accountable owner"):
        services.approval_decide(request_id=agents.pk, user=user, approve=True)
    refused = client.post(reverse("approvals:approve", args=[own.pk]), HTTP_HX_REQUEST="true")
    assert refused.status_code == 403
    own.refresh_from_db()
    assert own.state == "pending"
    # She may cancel her own; another reviewer may approve her agent's.
    assert services.approval_cancel(request_id=own.pk, user=user).state == "cancelled"
    gov.identity_update(
        actor=admin, identity=reviewer.identity, data={"teams": [demo_policy.team_b]}
    )
    decided = services.approval_decide(request_id=agents.pk, user=reviewer, approve=True)
    assert decided.state == "approved"


def test_after_the_sso_link_her_requests_are_hers_and_not_hers_to_decide(
    sso_settings: Any, idp: Any, admin_user: Any, demo_policy: Any, reviewer_user: Any
) -> None:
    # The provider's groups make her a reviewer in team B, crm-prod's review team.
    sso_settings.OIDC_GROUP_TEAM_MAP = {"dba": "team-b"}
    sso_settings.OIDC_GROUP_ROLE_MAP = {"dba": "reviewer"}
    carol, agent = _carol_and_her_agent(admin_user, demo_policy)
    test_oidc.sso_sign_in(Client())
    user = get_user_model().objects.get(email="carol@corp.example")
    carol.refresh_from_db()
    assert carol.user == user  # linked automatically, by the verified address
    assert [t.slug for t in carol.teams.all()] == ["team-b"]
    _assert_follows_but_may_not_decide(user, carol, agent, demo_policy, reviewer_user, admin_user)


def test_after_an_admins_link_the_same_rules_hold(
    admin_user: Any, demo_policy: Any, reviewer_user: Any
) -> None:
    carol, agent = _carol_and_her_agent(admin_user, demo_policy)
    gov.identity_update(actor=admin_user, identity=carol, data={"teams": [demo_policy.team_b]})
    user = get_user_model().objects.create_user(username="carol.c", email="c@home.example")
    gov.membership_set_role(actor=admin_user, user=user, role="reviewer")
    client = Client()
    client.force_login(admin_user)
    linked = client.post(
        reverse("governance:identity_link", args=[carol.pk]), {"username": "carol.c"}
    )
    assert linked.status_code == 302
    _assert_follows_but_may_not_decide(user, carol, agent, demo_policy, reviewer_user, admin_user)
    # Unlinked, the account no longer follows them (and the rules no longer name it).
    client.post(reverse("governance:identity_unlink", args=[carol.pk]))
    mine = Client()
    mine.force_login(user)
    assert b'id="mine-' not in mine.get(reverse("approvals:mine")).content
