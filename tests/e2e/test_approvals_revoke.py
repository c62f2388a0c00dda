"""Revoking a grant in headless chromium: the button on the request's page swaps the
grant card in place (htmx, CSRF token from the form) and the grant is revoked."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from playwright.sync_api import expect

from approvals import services
from approvals.models import Grant
from tests.approvals import scenario

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def s(demo_policy: Any, admin_user: Any, reviewer_user: Any) -> SimpleNamespace:
    return scenario.build(demo=demo_policy, admin=admin_user, reviewer=reviewer_user)


def test_revoke_on_the_request_page_swaps_the_grant(
    page: Any, sign_in: Any, s: SimpleNamespace, screenshot: Any
) -> None:
    request = s.agent_request
    services.approval_decide(request_id=request.pk, user=s.reviewer2, approve=True)
    sign_in(s.reviewer, "reviewer")
    page.goto(f"/approvals/{request.pk}/")
    grant = page.locator("#grant")
    expect(grant).to_have_attribute("data-grant-state", "active")
    page.evaluate("window.__stillHere = true")

    grant.get_by_role("button", name="Revoke the grant of agent-reports's request").click()

    grant = page.locator("#grant")
    expect(grant).to_have_attribute("data-grant-state", "revoked")
    expect(grant).to_contain_text("by reviewer")
    expect(grant.get_by_role("button")).to_have_count(0)
    # The card above says so too, without a reload.
    expect(page.locator(f"#grant-summary-{request.pk}")).to_contain_text("(revoked)")
    assert page.evaluate("window.__stillHere === true"), "the page was reloaded"
    screenshot("64-approval-grant-revoked")
    stored = Grant.objects.get(request=request)
    assert (stored.state, stored.revoked_by_id) == ("revoked", s.reviewer.pk)
