"""Approval pages: who may see and do what (anonymous → sign-in, auditor and none →
403, another team's request → 404, self-approval and the agent's owner refused,
critical risk needs two approvals), and what the pages show and do, with htmx
(card swapped in place, badge out of band) and without (POST-redirect-GET)."""

from __future__ import annotations

import re
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalRequest, Grant
from tests.approvals import scenario

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once", "_scenario_once")]

HTMX = {"HTTP_HX_REQUEST": "true"}


def _state(request: ApprovalRequest) -> str:
    request.refresh_from_db()
    return request.state


def _badge(html: bytes) -> int:
    found = re.search(rb'id="pending-badge"[^>]*data-count="(\d+)"', html)
    assert found, html[:2000]
    return int(found.group(1))


# --- authorisation -------------------------------------------------------------------


def _urls(s: SimpleNamespace) -> dict[str, tuple[str, str]]:
    pk = s.agent_request.pk
    return {
        "inbox": ("get", reverse("approvals:inbox")),
        "badge": ("get", reverse("approvals:pending_badge")),
        "mine": ("get", reverse("approvals:mine")),
        "detail": ("get", reverse("approvals:detail", args=[pk])),
        "approve": ("post", reverse("approvals:approve", args=[pk])),
        "deny": ("post", reverse("approvals:deny", args=[pk])),
        "cancel": ("post", reverse("approvals:cancel", args=[pk])),
    }


def test_anonymous_is_sent_to_sign_in_everywhere(client: Client, s: SimpleNamespace) -> None:
    for name, (method, url) in _urls(s).items():
        response = getattr(client, method)(url, {"reason": "x"} if method == "post" else None)
        assert response.status_code == 302, name
        assert response.url.startswith(reverse("account_login")), name
    assert _state(s.agent_request) == "pending"


def test_anonymous_badge_poll_sends_the_page_to_sign_in(client: Client, s: SimpleNamespace) -> None:
    response = client.get(
        reverse("approvals:pending_badge"), headers={"HX-Request": "true", "HX-Current-URL": "/"}
    )
    assert response.status_code == 200
    assert response["HX-Redirect"].startswith(reverse("account_login"))


@pytest.mark.parametrize("role", ["auditor", "none", "security"])
def test_roles_that_do_not_review_get_403(
    client: Client, personas: dict[str, Any], s: SimpleNamespace, role: str
) -> None:
    client.force_login(personas[role])
    urls = _urls(s)
    for name in ("inbox", "badge", "approve", "deny"):
        method, url = urls[name]
        response = getattr(client, method)(url, {"reason": "no"} if method == "post" else None)
        assert response.status_code == 403, (role, name)
    # The request's page: not theirs and they review nothing → 403 (security owns
    # agent-reports, so its request is theirs: see the requester tests).
    if role != "security":
        assert client.get(urls["detail"][1]).status_code == 403
        # Cancelling what is not yours: as if it did not exist.
        assert client.post(urls["cancel"][1]).status_code == 404
    # "My requests" is for everyone signed in; it lists only their own.
    assert client.get(urls["mine"][1]).status_code == 200
    assert _state(s.agent_request) == "pending"


def test_badge_poll_by_a_non_reviewer_stops_polling(
    client: Client, auditor_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(auditor_user)
    response = client.get(reverse("approvals:pending_badge"), **HTMX)
    assert response.status_code == 286  # htmx: stop polling


def test_another_teams_request_is_404(
    client: Client, reviewer_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(reviewer_user)
    pk = s.other_team_request.pk
    assert client.get(reverse("approvals:detail", args=[pk])).status_code == 404
    assert client.post(reverse("approvals:approve", args=[pk])).status_code == 404
    assert client.post(reverse("approvals:deny", args=[pk]), {"reason": "x"}).status_code == 404
    assert client.post(reverse("approvals:cancel", args=[pk])).status_code == 404
    inbox = client.get(reverse("approvals:inbox"), {"state": "all"})
    assert str(pk) not in inbox.content.decode()
    assert _state(s.other_team_request) == "pending"


def test_unknown_request_is_404(client: Client, reviewer_user: Any, s: SimpleNamespace) -> None:
    client.force_login(reviewer_user)
    missing = "00000000-0000-4000-8000-000000000000"
    assert client.get(reverse("approvals:detail", args=[missing])).status_code == 404
    assert client.post(reverse("approvals:approve", args=[missing])).status_code == 404


def test_actions_are_post_only(client: Client, reviewer_user: Any, s: SimpleNamespace) -> None:
    client.force_login(reviewer_user)
    for name in ("approve", "deny", "cancel"):
        url = reverse(f"approvals:{name}", args=[s.agent_request.pk])
        assert client.get(url).status_code == 405, name
    assert client.post(reverse("approvals:inbox")).status_code == 405


def test_csrf_is_required(reviewer_user: Any, s: SimpleNamespace) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer_user)
    url = reverse("approvals:approve", args=[s.agent_request.pk])
    assert client.post(url).status_code == 403
    assert _state(s.agent_request) == "pending"
    # With the token from the page, the same POST goes through.
    page = client.get(reverse("approvals:inbox"))
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content)
    assert token is not None
    assert client.post(url, {"csrfmiddlewaretoken": token.group(1).decode()}).status_code == 302
    assert _state(s.agent_request) == "approved"


def test_self_approval_is_refused_in_the_ui_and_by_the_action(
    client: Client, s: SimpleNamespace
) -> None:
    client.force_login(s.reviewer2)
    inbox = client.get(reverse("approvals:inbox")).content.decode()
    card = _card_html(inbox, s.own_request.pk)
    assert "Nobody decides their own request" in card
    assert reverse("approvals:approve", args=[s.own_request.pk]) not in card
    response = client.post(reverse("approvals:approve", args=[s.own_request.pk]), **HTMX)
    assert response.status_code == 403
    assert "Nobody decides their own request" in response.content.decode()
    assert _state(s.own_request) == "pending"
    # Plain POST: redirect back with the refusal as a message, nothing decided.
    response = client.post(
        reverse("approvals:deny", args=[s.own_request.pk]), {"reason": "mine"}, follow=True
    )
    assert "Nobody decides their own request" in response.content.decode()
    assert _state(s.own_request) == "pending"


def test_the_agents_owner_may_not_approve_its_request(
    client: Client, reviewer_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(reviewer_user)
    card = _card_html(
        client.get(reverse("approvals:inbox")).content.decode(), s.owned_agent_request.pk
    )
    assert "accountable owner" in card
    response = client.post(reverse("approvals:approve", args=[s.owned_agent_request.pk]), **HTMX)
    assert response.status_code == 403
    assert _state(s.owned_agent_request) == "pending"


def test_critical_risk_needs_two_approvals(client: Client, s: SimpleNamespace) -> None:
    pk = s.critical_request.pk
    client.force_login(s.reviewer)
    first = client.post(reverse("approvals:approve", args=[pk]), **HTMX)
    assert first.status_code == 200
    html = first.content.decode()
    assert "1 of 2" in html
    assert 'data-state="pending"' in html
    assert "it needs another reviewer" in html  # no second vote offered
    assert _state(s.critical_request) == "pending"
    again = client.post(reverse("approvals:approve", args=[pk]), **HTMX)
    assert again.status_code == 403
    assert not Grant.objects.filter(request_id=pk).exists()

    client.force_login(s.reviewer2)
    second = client.post(reverse("approvals:approve", args=[pk]), **HTMX)
    assert second.status_code == 200
    assert 'data-state="approved"' in second.content.decode()
    assert _state(s.critical_request) == "approved"
    assert Grant.objects.get(request_id=pk).uses_total == 1


# --- the inbox ------------------------------------------------------------------------


def _card_html(page: str, pk: Any) -> str:
    start = page.index(f'id="request-{pk}"')
    return page[start : page.index("</article>", start)]


def test_inbox_shows_pending_requests_newest_first_with_what_a_reviewer_needs(
    client: Client, reviewer_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(reviewer_user)
    response = client.get(reverse("approvals:inbox"))
    assert response.status_code == 200
    page = response.content.decode()
    order = [
        page.index(f'id="request-{r.pk}"')
        for r in (s.owned_agent_request, s.own_request, s.critical_request, s.agent_request)
    ]
    assert order == sorted(order)  # newest first
    card = _card_html(page, s.agent_request.pk)
    assert "agent-reports" in card and "crm-prod" in card
    assert "badge-env-production" in card and "badge-kind-agent" in card
    assert '<span class="sql-k">DELETE</span>' in card  # highlighted on the server
    assert "review-agent-writes" in card and "need a human reviewer" in card
    assert "public.customers" in card and "pii.email" in card
    assert "risk 75" in card and "psql" in card
    assert "Other requests by" in card
    assert "critical" in _card_html(page, s.critical_request.pk)
    assert _badge(response.content) == 4


def test_statement_cannot_inject_markup(
    client: Client, reviewer_user: Any, demo_policy: Any, s: SimpleNamespace
) -> None:
    evil = scenario.hold(
        datasource=demo_policy.datasource,
        identity=demo_policy.agent,
        statement="SELECT '<script>alert(1)</script>' FROM t",
        kind="select",
    )
    client.force_login(reviewer_user)
    card = _card_html(client.get(reverse("approvals:inbox")).content.decode(), evil.pk)
    assert "<script>" not in card
    assert "&lt;script&gt;" in card


def test_inbox_filters(
    client: Client, admin_user: Any, reviewer_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(admin_user)  # admins see every datasource's requests

    def shown(**params: str) -> set[str]:
        page = client.get(reverse("approvals:inbox"), params).content.decode()
        return set(re.findall(r'id="request-([0-9a-f-]{36})"', page))

    every = {
        str(r.pk)
        for r in (
            s.agent_request,
            s.critical_request,
            s.own_request,
            s.owned_agent_request,
            s.other_team_request,
        )
    }
    assert shown() == every
    assert shown(datasource="billing-prod") == {str(s.other_team_request.pk)}
    assert shown(environment="staging") == set()
    assert shown(identity_kind="service") == {str(s.critical_request.pk)}
    assert shown(q="orders") == {str(s.own_request.pk)}
    assert shown(state="approved") == set()
    # Admins see everything but decide only where they review (the admin is in no team).
    assert client.post(reverse("approvals:approve", args=[s.agent_request.pk])).status_code == 302
    assert _state(s.agent_request) == "pending"
    reviewer = Client()
    reviewer.force_login(reviewer_user)
    reviewer.post(reverse("approvals:approve", args=[s.agent_request.pk]))
    assert shown(state="approved") == {str(s.agent_request.pk)}
    assert str(s.agent_request.pk) not in shown()
    assert str(s.agent_request.pk) in shown(state="all")


def test_approve_inline_swaps_the_card_and_the_badge(
    client: Client, reviewer_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(reviewer_user)
    before = _badge(client.get(reverse("approvals:inbox")).content)
    response = client.post(reverse("approvals:approve", args=[s.agent_request.pk]), **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith("<article") or html.lstrip().startswith("\n<article")
    assert f'id="request-{s.agent_request.pk}"' in html
    assert 'data-state="approved"' in html
    assert 'hx-swap-oob="true"' in html  # the nav badge, swapped out of band
    assert _badge(response.content) == before - 1
    assert _state(s.agent_request) == "approved"
    grant = Grant.objects.get(request=s.agent_request)
    assert (grant.uses_total, grant.uses_left) == (1, 1)
    assert "Grant: 1 of 1 use left" in html
    badge = client.get(reverse("approvals:pending_badge"), **HTMX)
    assert _badge(badge.content) == before - 1


def test_approve_may_narrow_the_grant_but_not_widen_it(
    client: Client, reviewer_user: Any, settings: Any, s: SimpleNamespace
) -> None:
    client.force_login(reviewer_user)
    url = reverse("approvals:approve", args=[s.agent_request.pk])
    too_many = client.post(url, {"uses": str(settings.WARDEN_APPROVAL_MAX_USES + 1)}, **HTMX)
    assert too_many.status_code == 400
    assert "Uses" in too_many.content.decode()
    assert _state(s.agent_request) == "pending"
    too_long = client.post(url, {"minutes": "999999"}, **HTMX)
    assert too_long.status_code == 400
    assert _state(s.agent_request) == "pending"
    # Above the defaults (one use, an hour) but within the maxima: still a widening.
    raised = client.post(url, {"uses": "2", "minutes": "61"}, **HTMX)
    assert raised.status_code == 400
    assert "can only be narrowed" in raised.content.decode()
    assert _state(s.agent_request) == "pending"

    settings.WARDEN_APPROVAL_DEFAULT_USES = 5
    response = client.post(url, {"uses": "3", "minutes": "10"}, **HTMX)
    assert response.status_code == 200
    grant = Grant.objects.get(request=s.agent_request)
    assert grant.uses_total == 3
    expected = timezone.now() + timedelta(minutes=10)
    assert abs((grant.expires_at - expected).total_seconds()) < 30


def test_deny_needs_a_reason(client: Client, reviewer_user: Any, s: SimpleNamespace) -> None:
    client.force_login(reviewer_user)
    url = reverse("approvals:deny", args=[s.agent_request.pk])
    response = client.post(url, {"reason": "   "}, **HTMX)
    assert response.status_code == 400
    assert "Say why" in response.content.decode()
    assert _state(s.agent_request) == "pending"

    response = client.post(url, {"reason": "Use the archive job instead."}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-state="denied"' in html and "Use the archive job instead." in html
    s.agent_request.refresh_from_db()
    assert s.agent_request.state == "denied"
    assert s.agent_request.deny_reason == "Use the archive job instead."
    assert s.agent_request.denied_by == reviewer_user


def test_without_javascript_decisions_redirect_back_with_a_message(
    client: Client, reviewer_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(reviewer_user)
    back = reverse("approvals:inbox") + "?identity_kind=agent"
    response = client.post(reverse("approvals:approve", args=[s.agent_request.pk]), {"next": back})
    assert response.status_code == 302 and response.url == back
    page = client.get(back).content.decode()
    assert "Approved agent-reports" in page
    # An off-site "next" is ignored: back to the request's page.
    response = client.post(
        reverse("approvals:deny", args=[s.critical_request.pk]),
        {"reason": "no", "next": "https://evil.example/"},
    )
    assert response.url == reverse("approvals:detail", args=[s.critical_request.pk])
    assert _state(s.critical_request) == "denied"


def test_deciding_twice_is_refused(client: Client, reviewer_user: Any, s: SimpleNamespace) -> None:
    client.force_login(reviewer_user)
    client.post(reverse("approvals:deny", args=[s.agent_request.pk]), {"reason": "no"})
    response = client.post(reverse("approvals:approve", args=[s.agent_request.pk]), **HTMX)
    assert response.status_code == 400
    assert "already denied" in response.content.decode()
    assert _state(s.agent_request) == "denied"


# --- the request's page, "My requests", cancel --------------------------------------------


def test_detail_shows_the_timeline(
    client: Client, reviewer_user: Any, settings: Any, s: SimpleNamespace
) -> None:
    settings.WARDEN_APPROVAL_DEFAULT_USES = 2
    client.force_login(reviewer_user)
    url = reverse("approvals:detail", args=[s.agent_request.pk])
    client.post(reverse("approvals:approve", args=[s.agent_request.pk]), {"uses": "2"})
    page = client.get(url).content.decode()
    timeline = page[page.index('id="timeline"') :]
    assert "Created" in timeline
    assert "reviewer" in timeline
    assert "Approved" in timeline
    # Each entry's label is followed by " by <who>": no "Approved by a reviewer by".
    assert "<strong>Approval</strong> by reviewer" in timeline
    assert "a reviewer</strong> by" not in timeline
    assert "Uses left" in page and "2 of 2" in page


def test_requester_sees_and_cancels_their_own_requests(
    client: Client, security_user: Any, s: SimpleNamespace
) -> None:
    # security owns agent-reports and svc-billing: their requests are security's.
    client.force_login(security_user)
    page = client.get(reverse("approvals:mine")).content.decode()
    assert f'id="mine-{s.agent_request.pk}"' in page
    assert f'id="mine-{s.critical_request.pk}"' in page
    assert f'id="mine-{s.own_request.pk}"' not in page
    detail = client.get(reverse("approvals:detail", args=[s.agent_request.pk]))
    assert detail.status_code == 200
    assert "Cancel this request" in detail.content.decode()
    assert reverse("approvals:approve", args=[s.agent_request.pk]) not in detail.content.decode()

    response = client.post(reverse("approvals:cancel", args=[s.agent_request.pk]), **HTMX)
    assert response.status_code == 200
    assert 'data-state="cancelled"' in response.content.decode()
    assert _state(s.agent_request) == "cancelled"
    response = client.post(reverse("approvals:cancel", args=[s.critical_request.pk]))
    assert response.status_code == 302 and response.url == reverse("approvals:mine")
    assert _state(s.critical_request) == "cancelled"
    # Cancelling again is refused, not repeated.
    again = client.post(reverse("approvals:cancel", args=[s.critical_request.pk]), **HTMX)
    assert again.status_code == 400 and "already cancelled" in again.content.decode()


def test_a_reviewer_may_not_cancel_someone_elses_request(
    client: Client, reviewer_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(reviewer_user)
    assert client.post(reverse("approvals:cancel", args=[s.agent_request.pk])).status_code == 404
    assert _state(s.agent_request) == "pending"


def test_denied_request_shows_reason_to_the_requester(
    client: Client, reviewer_user: Any, security_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(reviewer_user)
    client.post(reverse("approvals:deny", args=[s.agent_request.pk]), {"reason": "Too broad."})
    client.force_login(security_user)
    page = client.get(reverse("approvals:mine")).content.decode()
    row = page[page.index(f'id="mine-{s.agent_request.pk}"') :]
    assert "denied" in row[:2000] and "Too broad." in row[:2000]


def test_nav_shows_the_badge_to_reviewers_only(
    client: Client, reviewer_user: Any, auditor_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(reviewer_user)
    assert _badge(client.get(reverse("governance:team_list")).content) == 4
    client.force_login(auditor_user)
    home = client.get(reverse("governance:team_list")).content.decode()
    assert 'id="pending-badge"' not in home
    assert reverse("approvals:mine") in home


def test_history_shows_other_requests_only_from_datasources_the_viewer_reviews(
    client: Client, reviewer_user: Any, admin_user: Any, s: SimpleNamespace
) -> None:
    # agent-reports also has a request on billing-prod (team A's): the team B
    # reviewer must not see it, or its outcome, in the agent's history.
    client.force_login(reviewer_user)
    card = _card_html(client.get(reverse("approvals:inbox")).content.decode(), s.agent_request.pk)
    history = card[card.index("Other requests by") :]
    assert "(0)" in history[:120]
    assert "billing-prod" not in history
    client.force_login(admin_user)
    card = _card_html(client.get(reverse("approvals:inbox")).content.decode(), s.agent_request.pk)
    history = card[card.index("Other requests by") :]
    assert "(1): 1 pending" in history[:200]
    assert "billing-prod" in history


def test_inbox_queries_do_not_grow_with_decisions(
    client: Client, reviewer_user: Any, demo_policy: Any, s: SimpleNamespace
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    another_critical = scenario.hold(
        datasource=demo_policy.datasource,
        identity=demo_policy.service,
        statement="UPDATE public.customers SET phone = $1",
        kind="update",
        risk=90,
    )
    client.force_login(reviewer_user)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(reverse("approvals:inbox")).status_code == 200
        return len(captured)

    before = queries()
    reviewer2 = Client()
    reviewer2.force_login(s.reviewer2)
    for critical in (s.critical_request, another_critical):
        reviewer2.post(reverse("approvals:approve", args=[critical.pk]))
        assert _state(critical) == "pending"  # one approval of two, shown on the card
    # The approving reviewers are fetched in one query, whatever their number.
    assert queries() <= before + 1


def test_a_requester_without_a_role_follows_the_link_they_were_given(
    client: Client, outsider_user: Any, demo_policy: Any, s: SimpleNamespace
) -> None:
    # Role none sees nothing of the policy, but a held statement's error message
    # names the request's page: its requester may open it, follow it and cancel it.
    mine = scenario.hold(datasource=demo_policy.datasource, identity=outsider_user.identity)
    client.force_login(outsider_user)
    page = client.get(reverse("approvals:detail", args=[mine.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Waiting for a reviewer of crm-prod" in html
    assert reverse("approvals:approve", args=[mine.pk]) not in html
    assert 'id="pending-badge"' not in html
    listed = client.get(reverse("approvals:mine")).content.decode()
    assert f'id="mine-{mine.pk}"' in listed and f'id="mine-{s.agent_request.pk}"' not in listed
    assert client.get(reverse("governance:home")).status_code == 403  # still nothing else
    assert client.post(reverse("approvals:cancel", args=[mine.pk])).status_code == 302
    assert _state(mine) == "cancelled"


def test_security_sees_only_its_own_requests_page(
    client: Client, security_user: Any, s: SimpleNamespace
) -> None:
    client.force_login(security_user)
    assert client.get(reverse("approvals:detail", args=[s.agent_request.pk])).status_code == 200
    assert client.get(reverse("approvals:detail", args=[s.own_request.pk])).status_code == 403


def test_timeline_counts_read_as_english() -> None:
    """No "use(s)": one use, two uses, one approval."""
    from approvals.templatetags.approval_tags import timeline_text

    def text(kind: str, **detail: Any) -> str:
        return timeline_text({"kind": kind, "detail": detail})

    assert text("approved", uses=1).startswith("Grant: 1 use until ")
    assert text("approved", uses=3).startswith("Grant: 3 uses until ")
    assert text("grant_used", uses_left=0) == "0 uses left"
    assert text("grant_used", uses_left=1) == "1 use left"
    assert text("created", risk=40, required_approvals=1) == "Risk 40; needs 1 approval"
    assert text("created", risk=90, required_approvals=2) == "Risk 90; needs 2 approvals"
