"""The approvals management API: who may list, see, approve, deny and cancel what."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from django.utils import timezone

from approvals.models import ApprovalRequest, Grant, ReviewSettings
from governance import services as gov
from tests.governance.test_api_access import Api

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once", "review_once")]

BASE = "/api/v1/approvals"


@pytest.fixture
def clients(review_setup: Any, personas: dict[str, Any]) -> dict[str, Api]:
    result = {role: Api(user) for role, user in personas.items()}
    result["anonymous"] = Api()
    result["reviewer2"] = Api(review_setup.reviewer2)
    result["requester"] = Api(review_setup.requester)
    result["owner"] = Api(review_setup.owner.user)
    return result


@pytest.fixture
def other_team_request(review_setup: Any, admin_user: Any, open_request: Any) -> ApprovalRequest:
    """A request on a datasource reviewed only by team A (the reviewers are in team B)."""
    from governance.models import Environment

    other = gov.datasource_create(
        actor=admin_user,
        name="other-ds",
        environment=Environment.objects.get(name="staging"),
        connect_teams=[review_setup.team_a],
        review_teams=[review_setup.team_a],
    )
    from approvals import services
    from tests.approvals.conftest import open_payload

    request, _, _ = services.approval_request_open(
        datasource=other, identity=review_setup.requester.identity, **open_payload()
    )
    return request


def test_anonymous_is_401_everywhere(clients, open_request):
    request = open_request()
    anon = clients["anonymous"]
    assert anon.call("GET", f"{BASE}/").status_code == 401
    assert anon.call("GET", f"{BASE}/{request.pk}/").status_code == 401
    for verb in ("approve", "deny", "cancel"):
        assert anon.call("POST", f"{BASE}/{request.pk}/{verb}/", {}).status_code == 401
    assert ApprovalRequest.objects.get(pk=request.pk).state == "pending"


def test_inbox_needs_the_reviewer_role(clients, open_request):
    request = open_request()
    for role in ("security", "auditor", "none"):
        response = clients[role].call("GET", f"{BASE}/")
        assert response.status_code == 403, role
        assert response.json()["error"]["code"] == "permission_denied"
    listed = clients["reviewer"].call("GET", f"{BASE}/").json()
    assert [r["id"] for r in listed["results"]] == [str(request.pk)]
    assert listed["results"][0]["url"].endswith(f"/approvals/{request.pk}/")
    assert clients["admin"].call("GET", f"{BASE}/").json()["count"] == 1


def test_inbox_filters(clients, open_request, review_setup):
    open_request()
    agent = open_request(identity=review_setup.agent)
    reviewer = clients["reviewer"]
    agents = reviewer.call("GET", f"{BASE}/?identity_kind=agent").json()["results"]
    assert [r["id"] for r in agents] == [str(agent.pk)]
    assert reviewer.call("GET", f"{BASE}/?environment=staging").json()["count"] == 0
    assert reviewer.call("GET", f"{BASE}/?q=agent-rep").json()["count"] == 1
    assert reviewer.call("GET", f"{BASE}/?state=approved").json()["count"] == 0
    assert reviewer.call("GET", f"{BASE}/?state=bogus").status_code == 400
    assert reviewer.call("GET", f"{BASE}/?scope=bogus").status_code == 400


def test_mine_lists_own_requests_for_any_signed_in_user(clients, open_request, review_setup):
    mine = open_request()
    agent = open_request(identity=review_setup.agent)
    got = clients["requester"].call("GET", f"{BASE}/?scope=mine").json()
    assert [r["id"] for r in got["results"]] == [str(mine.pk)]
    owned = clients["owner"].call("GET", f"{BASE}/?scope=mine").json()
    assert [r["id"] for r in owned["results"]] == [str(agent.pk)]
    assert clients["none"].call("GET", f"{BASE}/?scope=mine").json()["count"] == 0
    assert clients["requester"].call("GET", f"{BASE}/{mine.pk}/").status_code == 200
    # Someone neither reviewing nor asking sees neither.
    assert clients["none"].call("GET", f"{BASE}/{mine.pk}/").status_code == 404
    assert clients["auditor"].call("GET", f"{BASE}/{agent.pk}/").status_code == 404


def test_another_teams_request_is_404(clients, other_team_request):
    for verb in ("approve", "deny"):
        response = clients["reviewer"].call(
            "POST", f"{BASE}/{other_team_request.pk}/{verb}/", {"reason": "x"}
        )
        assert response.status_code == 404
    assert clients["reviewer"].call("GET", f"{BASE}/{other_team_request.pk}/").status_code == 404
    assert clients["reviewer"].call("GET", f"{BASE}/not-a-uuid/").status_code == 404
    assert ApprovalRequest.objects.get(pk=other_team_request.pk).state == "pending"


def test_wrong_role_cannot_decide_403(clients, open_request):
    request = open_request()
    for role in ("security", "auditor", "none"):
        response = clients[role].call("POST", f"{BASE}/{request.pk}/approve/", {})
        assert response.status_code == 403, role
    # An admin outside the review team sees it, but may not decide it.
    assert clients["admin"].call("POST", f"{BASE}/{request.pk}/approve/", {}).status_code == 403
    assert ApprovalRequest.objects.get(pk=request.pk).state == "pending"


def test_self_approval_refused_403(clients, open_request):
    request = open_request()
    response = clients["requester"].call("POST", f"{BASE}/{request.pk}/approve/", {})
    assert response.status_code == 403
    assert "own request" in response.json()["error"]["message"]
    assert not Grant.objects.exists()


def test_agent_owner_refused_403(clients, open_request, review_setup, admin_user):
    owner_user = review_setup.owner.user
    owner_user.membership.role = "reviewer"
    owner_user.membership.save()
    gov.identity_update(
        actor=admin_user, identity=review_setup.owner, data={"teams": [review_setup.team_b]}
    )
    request = open_request(identity=review_setup.agent)
    response = clients["owner"].call("POST", f"{BASE}/{request.pk}/approve/", {})
    assert response.status_code == 403
    assert "accountable owner" in response.json()["error"]["message"]
    ok = clients["reviewer"].call("POST", f"{BASE}/{request.pk}/approve/", {})
    assert ok.status_code == 200 and ok.json()["state"] == "approved"


def test_critical_needs_two_reviewers(clients, open_request, settings):
    settings.WARDEN_APPROVAL_DEFAULT_USES = 3
    request = open_request(risk=95)
    first = clients["reviewer"].call("POST", f"{BASE}/{request.pk}/approve/", {"uses": 2})
    assert first.status_code == 200
    assert (first.json()["state"], first.json()["approvals"]) == ("pending", 1)
    again = clients["reviewer"].call("POST", f"{BASE}/{request.pk}/approve/", {})
    assert again.status_code == 403
    second = clients["reviewer2"].call("POST", f"{BASE}/{request.pk}/approve/", {})
    body = second.json()
    assert (body["state"], body["approvals"], body["grant"]["uses_total"]) == ("approved", 2, 2)
    assert [d["reviewer"] for d in body["decisions"]] == ["reviewer", "reviewer2"]
    assert [e["kind"] for e in body["timeline"]] == ["created", "approval", "approval", "approved"]


def test_deny_needs_a_reason_400(clients, open_request):
    request = open_request()
    for payload in ({}, {"reason": ""}, {"reason": "   "}):
        response = clients["reviewer"].call("POST", f"{BASE}/{request.pk}/deny/", payload)
        assert response.status_code == 400
        assert "reason" in response.json()["error"]["fields"]
    assert ApprovalRequest.objects.get(pk=request.pk).state == "pending"
    denied = clients["reviewer"].call("POST", f"{BASE}/{request.pk}/deny/", {"reason": "Ticket?"})
    assert denied.status_code == 200
    assert (denied.json()["state"], denied.json()["deny_reason"]) == ("denied", "Ticket?")
    late = clients["reviewer2"].call("POST", f"{BASE}/{request.pk}/approve/", {})
    assert late.status_code == 400


def test_grant_narrowing_and_limits(clients, open_request, settings):
    request = open_request()
    too_late = (timezone.now() + datetime.timedelta(days=30)).isoformat()
    wide = clients["reviewer"].call(
        "POST", f"{BASE}/{request.pk}/approve/", {"uses": 1000, "expires_at": too_late}
    )
    assert wide.status_code == 400
    assert set(wide.json()["error"]["fields"]) == {"uses", "expires_at"}
    # Within the maxima but above the defaults (1 use, an hour): refused too.
    later = (timezone.now() + datetime.timedelta(hours=2)).isoformat()
    raised = clients["reviewer"].call(
        "POST", f"{BASE}/{request.pk}/approve/", {"uses": 2, "expires_at": later}
    )
    assert raised.status_code == 400
    fields = raised.json()["error"]["fields"]
    assert set(fields) == {"uses", "expires_at"}
    assert "can only be narrowed" in str(fields["uses"])
    assert not Grant.objects.exists()
    settings.WARDEN_APPROVAL_DEFAULT_USES = 5
    soon = timezone.now() + datetime.timedelta(minutes=10)
    ok = clients["reviewer"].call(
        "POST", f"{BASE}/{request.pk}/approve/", {"uses": 3, "expires_at": soon.isoformat()}
    )
    assert ok.status_code == 200
    assert ok.json()["grant"]["uses_left"] == 3


def test_cancel_by_requester_only(clients, open_request):
    request = open_request()
    assert clients["reviewer"].call("POST", f"{BASE}/{request.pk}/cancel/").status_code == 403
    assert clients["none"].call("POST", f"{BASE}/{request.pk}/cancel/").status_code == 404
    done = clients["requester"].call("POST", f"{BASE}/{request.pk}/cancel/")
    assert done.status_code == 200 and done.json()["state"] == "cancelled"
    assert clients["requester"].call("POST", f"{BASE}/{request.pk}/cancel/").status_code == 400


def test_get_on_post_actions_is_405(clients, open_request):
    request = open_request()
    assert clients["reviewer"].call("GET", f"{BASE}/{request.pk}/approve/").status_code == 405


def test_review_settings_api(clients, review_setup):
    url = "/api/v1/review-settings/crm-prod/"
    payload = {"fallback_team": "team-a", "escalate_after_seconds": 120, "webhook_url": ""}
    assert clients["reviewer"].call("PUT", url, payload).status_code == 403
    assert clients["anonymous"].call("PUT", url, payload).status_code == 401
    assert clients["admin"].call("PUT", "/api/v1/review-settings/nope/", payload).status_code == 404
    bad = clients["security"].call("PUT", url, {**payload, "fallback_team": "nope"})
    assert bad.status_code == 400 and "fallback_team" in bad.json()["error"]["fields"]
    assert not ReviewSettings.objects.exists()
    ok = clients["security"].call("PUT", url, payload)
    assert ok.status_code == 200, ok.content
    assert ok.json()["fallback_team"] == "team-a"
    got = clients["reviewer"].call("GET", url).json()
    assert got["escalate_after_seconds"] == 120
    patched = clients["admin"].call("PATCH", url, {"remind_every_seconds": 30})
    assert patched.json()["remind_every_seconds"] == 30
    assert patched.json()["escalate_after_seconds"] == 120


def test_schema_lists_the_approvals_endpoints(clients):
    schema = clients["auditor"].call("GET", "/api/schema/?format=json").json()
    for path in (
        "/api/v1/approvals/",
        "/api/v1/approvals/{id}/",
        "/api/v1/approvals/{id}/approve/",
        "/api/v1/approvals/{id}/deny/",
        "/api/v1/approvals/{id}/cancel/",
        "/api/v1/approvals/{id}/revoke/",
        "/api/v1/review-settings/{datasource}/",
    ):
        assert path in schema["paths"], path


def test_a_nul_in_a_filter_is_a_400_not_a_500(clients):
    # Found by schemathesis: PostgreSQL refuses to compare text holding NUL.
    for name in ("environment", "datasource", "q"):
        answer = clients["reviewer"].call("GET", f"{BASE}/?{name}=a%00b")
        assert answer.status_code == 400, (name, answer.content)
        assert name in answer.json()["error"]["fields"]


def test_the_webhook_url_is_shown_only_to_those_who_set_it(clients, review_setup, settings):
    """A review's finding: the review settings API showed the approval webhook's URL to
    every viewer, where the settings page shows it to admins and security only. An
    incoming-webhook URL is a bearer secret: whoever has it can post approval notices
    into the reviewers' channel."""
    settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS = "0.0.0.0/0"
    url = "/api/v1/review-settings/crm-prod/"
    hook = "https://hooks.example.com/services/T000/B000/secretpart"
    set_ = clients["security"].call("PUT", url, {"webhook_url": hook})
    assert set_.status_code == 200, set_.content
    for role in ("security", "admin"):
        assert clients[role].call("GET", url).json()["webhook_url"] == hook, role
    for role in ("reviewer", "auditor"):
        for path in (url, "/api/v1/review-settings/"):
            shown = clients[role].call("GET", path)
            assert shown.status_code == 200, (role, path)
            assert "secretpart" not in shown.text, (role, path)
        assert clients[role].call("GET", url).json()["webhook_url"] == "(set)"
    # Nor in the change history every viewer role reads (a later review's finding):
    # a digest shows that it changed.
    from audit.models import ChangeRecord

    recorded = json.dumps([[r.before, r.after] for r in ChangeRecord.objects.all()])
    assert "secretpart" not in recorded and "(set, sha256 " in recorded


def test_a_deactivated_reviewer_reads_no_request(clients, review_setup, open_request, admin_user):
    """A review's finding: the inbox's scope followed the reviewer's teams through their
    identity whether or not it was still active; deciding checked, reading did not. A
    reviewer whose identity was deactivated kept reading requests, their values
    included."""
    request = open_request()
    reviewer = clients["reviewer"]
    assert reviewer.call("GET", f"{BASE}/{request.pk}/").status_code == 200
    gov.identity_update(
        actor=admin_user, identity=review_setup.reviewer.identity, data={"is_active": False}
    )
    assert reviewer.call("GET", f"{BASE}/{request.pk}/").status_code == 404
    inbox = reviewer.call("GET", f"{BASE}/?scope=inbox")
    assert inbox.status_code == 200 and inbox.json()["results"] == []
