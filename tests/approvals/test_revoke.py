"""Revoking a grant: who may (the datasource's reviewers, an admin, the requester), who
may not (another team's reviewer, other roles), what it records, and that a revoked
grant never runs again. Through the service, the REST API and the request's page."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.test import Client
from django.urls import reverse

from approvals import services
from approvals.models import ApprovalEvent, ApprovalRequest, Grant, GrantState
from governance import services as gov
from governance.models import Environment
from tests.approvals.conftest import open_payload
from tests.governance.test_api_access import Api

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once", "review_once")]

BASE = "/api/v1/approvals"
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def approved(review_setup: Any, open_request: Any) -> ApprovalRequest:
    """The requester's request, approved by a reviewer of crm-prod: an active grant."""
    request = open_request()
    services.approval_decide(request_id=request.pk, user=review_setup.reviewer, approve=True)
    return request


@pytest.fixture
def other_team_approved(review_setup: Any, admin_user: Any) -> ApprovalRequest:
    """An approved request on a datasource only team A reviews (our reviewers are in B)."""
    other = gov.datasource_create(
        actor=admin_user,
        name="other-ds",
        environment=Environment.objects.get(name="staging"),
        connect_teams=[review_setup.team_a],
        review_teams=[review_setup.team_a],
    )
    request, _, _ = services.approval_request_open(
        datasource=other, identity=review_setup.agent, **open_payload()
    )
    # The requester persona reviews for team A too.
    services.approval_decide(request_id=request.pk, user=review_setup.requester, approve=True)
    return request


def _reopen(review_setup: Any) -> tuple[ApprovalRequest, Grant | None, bool]:
    return services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(),
    )


def _audited(action: str, target: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM audit_event e WHERE e::text LIKE %s AND e::text LIKE %s",
            [f"%{action}%", f"%{target}%"],
        )
        return int(cursor.fetchone()[0])


# --- the service ---------------------------------------------------------------------------


def test_a_reviewer_revokes_and_the_grant_never_runs_again(review_setup, approved):
    grant = services.grant_revoke(request_id=approved.pk, user=review_setup.reviewer2)
    assert grant.state == GrantState.REVOKED and grant.revoked_at is not None
    assert grant.revoked_by == review_setup.reviewer2
    stored = Grant.objects.get(pk=grant.pk)
    assert (stored.state, stored.uses_left, stored.revoked_by_id) == (
        "revoked",
        1,
        review_setup.reviewer2.pk,
    )
    event = ApprovalEvent.objects.get(request=approved, kind="grant_revoked")
    assert event.actor == review_setup.reviewer2
    assert event.detail == {"grant": str(grant.pk), "uses_left": 1}
    assert _audited("approval.grant_revoked", approved.pk) == 1
    # The sidecar asks at every use: the statement is held for a new review.
    fresh, used, created = _reopen(review_setup)
    assert used is None and created and fresh.pk != approved.pk
    # Twice is refused, clearly.
    with pytest.raises(ValidationError, match="already revoked"):
        services.grant_revoke(request_id=approved.pk, user=review_setup.reviewer)


@pytest.mark.parametrize("who", ["requester", "admin"])
def test_the_requester_and_an_admin_may_revoke(review_setup, approved, admin_user, who):
    user = review_setup.requester if who == "requester" else admin_user
    assert services.grant_revoke(request_id=approved.pk, user=user).state == "revoked"


def test_an_agents_owner_may_revoke_its_grant(review_setup, open_request):
    request = open_request(identity=review_setup.agent)
    services.approval_decide(request_id=request.pk, user=review_setup.reviewer, approve=True)
    grant = services.grant_revoke(request_id=request.pk, user=review_setup.owner.user)
    assert grant.state == "revoked"


def test_others_may_not_revoke(review_setup, approved, other_team_approved, personas):
    for role in ("security", "auditor", "none"):
        with pytest.raises(PermissionDenied):
            services.grant_revoke(request_id=approved.pk, user=personas[role])
    # A reviewer, but of other datasources.
    with pytest.raises(PermissionDenied, match="reviewer of other-ds"):
        services.grant_revoke(request_id=other_team_approved.pk, user=review_setup.reviewer)
    assert set(Grant.objects.values_list("state", flat=True)) == {"active"}


def test_only_an_active_grant_is_revoked(review_setup, approved, open_request):
    _reopen(review_setup)  # the one use
    with pytest.raises(ValidationError, match="already used up"):
        services.grant_revoke(request_id=approved.pk, user=review_setup.reviewer)
    pending = open_request(fingerprint="cd" * 16)
    with pytest.raises(ValidationError, match="no grant to revoke"):
        services.grant_revoke(request_id=pending.pk, user=review_setup.reviewer)
    second = open_request(fingerprint="ef" * 16)
    services.approval_decide(request_id=second.pk, user=review_setup.reviewer, approve=True)
    Grant.objects.filter(request=second).update(state="expired")
    with pytest.raises(ValidationError, match="already expired"):
        services.grant_revoke(request_id=second.pk, user=review_setup.reviewer)
    assert not ApprovalEvent.objects.filter(kind="grant_revoked").exists()


# --- the REST API --------------------------------------------------------------------------


@pytest.fixture
def clients(review_setup: Any, personas: dict[str, Any]) -> dict[str, Api]:
    result = {role: Api(user) for role, user in personas.items()}
    result["anonymous"] = Api()
    result["reviewer2"] = Api(review_setup.reviewer2)
    result["requester"] = Api(review_setup.requester)
    return result


def test_api_revoke_and_the_grant_in_the_request(clients, approved):
    url = f"{BASE}/{approved.pk}/revoke/"
    assert clients["anonymous"].call("POST", url).status_code == 401
    for role in ("auditor", "none", "security"):
        assert clients[role].call("POST", url).status_code == 404, role
    assert clients["reviewer"].call("GET", url).status_code == 405
    done = clients["reviewer"].call("POST", url)
    assert done.status_code == 200, done.content
    grant = done.json()["grant"]
    assert grant["state"] == "revoked" and grant["revoked_by"] == "reviewer"
    assert grant["revoked_at"] and grant["values_digest"] == ""
    assert [e["kind"] for e in done.json()["timeline"]][-1] == "grant_revoked"
    again = clients["requester"].call("POST", url)
    assert again.status_code == 409
    assert again.json()["error"]["message"] == "This grant is already revoked."


def test_api_revoke_by_the_requester(clients, approved):
    done = clients["requester"].call("POST", f"{BASE}/{approved.pk}/revoke/")
    assert done.status_code == 200 and done.json()["grant"]["state"] == "revoked"


def test_api_revoke_of_another_teams_grant_is_404(clients, other_team_approved):
    response = clients["reviewer"].call("POST", f"{BASE}/{other_team_approved.pk}/revoke/")
    assert response.status_code == 404
    assert Grant.objects.get(request=other_team_approved).state == "active"


def test_api_request_shows_binding_values_and_estimate(clients, review_setup):
    values = [{"statement": 0, "n": 1, "value": "'refunded'"}]
    estimate = {"rows": {"public.customers": 3}, "top": "ModifyTable", "error": ""}
    request, _, _ = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(values_digest="d" * 64, values=values, estimate=estimate),
    )
    body = clients["reviewer"].call("GET", f"{BASE}/{request.pk}/").json()
    assert body["binding"] == "statement" and body["values_digest"] == "d" * 64
    assert (body["values"], body["values_purged_at"], body["estimate"]) == (values, None, estimate)
    listed = clients["reviewer"].call("GET", f"{BASE}/").json()["results"][0]
    assert listed["values"] == values and listed["grant"] is None


# --- the request's page ---------------------------------------------------------------------


def test_page_offers_revoke_to_reviewers_and_the_requester_only(client, review_setup, approved):
    url = reverse("approvals:detail", args=[approved.pk])
    for user, offered in (
        (review_setup.reviewer, True),
        (review_setup.requester, True),
    ):
        client.force_login(user)
        page = client.get(url).content.decode()
        assert ("Revoke grant" in page) is offered
    client.force_login(review_setup.reviewer)
    services.grant_revoke(request_id=approved.pk, user=review_setup.reviewer)
    page = client.get(url).content.decode()
    assert "Revoke grant" not in page and "Revoked" in page


def test_page_revoke_with_htmx_swaps_the_grant(client, review_setup, approved):
    client.force_login(review_setup.reviewer)
    response = client.post(reverse("approvals:revoke", args=[approved.pk]), **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="grant"' in html and 'data-grant-state="revoked"' in html
    assert "Revoke grant" not in html
    again = client.post(reverse("approvals:revoke", args=[approved.pk]), **HTMX)
    assert again.status_code == 400 and "already revoked" in again.content.decode()


def test_page_revoke_without_javascript_redirects_back(client, review_setup, approved):
    client.force_login(review_setup.requester)
    url = reverse("approvals:revoke", args=[approved.pk])
    response = client.post(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("approvals:detail", args=[approved.pk])
    assert Grant.objects.get(request=approved).state == "revoked"


def test_page_revoke_refuses_others(client, review_setup, approved, other_team_approved, personas):
    url = reverse("approvals:revoke", args=[approved.pk])
    anonymous = client.post(url)
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    for role in ("auditor", "none", "security"):
        client.force_login(personas[role])
        assert client.post(url).status_code == 403, role
    client.force_login(review_setup.reviewer)
    assert client.get(url).status_code == 405
    other = reverse("approvals:revoke", args=[other_team_approved.pk])
    assert client.post(other, **HTMX).status_code == 404
    assert set(Grant.objects.values_list("state", flat=True)) == {"active"}


def test_page_revoke_needs_csrf(review_setup, approved):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(review_setup.reviewer)
    response = strict.post(reverse("approvals:revoke", args=[approved.pk]))
    assert response.status_code == 403
    assert Grant.objects.get(request=approved).state == "active"
