"""The reviewer inbox in headless chromium against the real server: approving inline
swaps the card and drops the nav badge without a reload, denying asks for a
reason, a request that arrives while the page is open shows up in the badge,
and the same decisions work with JavaScript turned off."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from playwright.sync_api import expect

from approvals.models import ApprovalRequest
from tests.approvals import scenario

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def s(demo_policy: Any, admin_user: Any, reviewer_user: Any) -> SimpleNamespace:
    return scenario.build(demo=demo_policy, admin=admin_user, reviewer=reviewer_user)


def _state(request: ApprovalRequest) -> str:
    request.refresh_from_db()
    return request.state


def _no_reload_marker(page: Any) -> None:
    # A full page load would drop this; an htmx swap keeps it.
    page.evaluate("window.__stillHere = true")


def _assert_not_reloaded(page: Any) -> None:
    assert page.evaluate("window.__stillHere === true"), "the page was reloaded"


def test_approve_inline_swaps_the_card_and_drops_the_badge(
    page: Any, sign_in: Any, s: SimpleNamespace, screenshot: Any
) -> None:
    sign_in(s.reviewer, "reviewer")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Inbox").click()
    badge = page.locator("#pending-badge")
    expect(badge).to_have_attribute("data-count", "4")
    card = page.locator(f"#request-{s.agent_request.pk}")
    expect(card.locator(".sql .sql-k").first).to_have_text("DELETE")
    screenshot("60-approval-inbox")
    _no_reload_marker(page)
    # The card the focus should move to: the next pending one (else the one before).
    following = page.evaluate(
        """id => {
          const cards = [...document.querySelectorAll('.approval[data-state=pending]')];
          const i = cards.findIndex(c => c.id === id);
          return (cards[i + 1] || cards[i - 1]).id;
        }""",
        f"request-{s.agent_request.pk}",
    )

    card.get_by_role("button", name="Approve agent-reports's request").click()

    card = page.locator(f"#request-{s.agent_request.pk}")
    expect(card).to_have_attribute("data-state", "approved")
    expect(page.locator(f"#{following}")).to_be_focused()
    expect(page.locator(f"#{following}")).to_be_in_viewport()
    expect(card.locator(".decision-note")).to_contain_text("Approved by reviewer")
    expect(badge).to_have_attribute("data-count", "3")
    expect(badge).to_contain_text("3")
    _assert_not_reloaded(page)
    screenshot("61-approval-approved-inline")
    assert _state(s.agent_request) == "approved"

    # Critical risk: the first approval shows "1 of 2" and the request stays pending.
    critical = page.locator(f"#request-{s.critical_request.pk}")
    critical.get_by_role("button", name="Approve svc-billing's request").click()
    expect(critical.locator(".approval-progress")).to_contain_text("1 of 2")
    expect(critical).to_have_attribute("data-state", "pending")
    expect(critical.locator(".why-not")).to_contain_text("another reviewer")
    _assert_not_reloaded(page)
    assert _state(s.critical_request) == "pending"


def test_deny_with_a_reason(page: Any, sign_in: Any, s: SimpleNamespace, screenshot: Any) -> None:
    sign_in(s.reviewer, "reviewer")
    page.goto("/approvals/")
    _no_reload_marker(page)
    card = page.locator(f"#request-{s.agent_request.pk}")
    card.get_by_text("Deny…").click()
    reason = card.get_by_label("Reason for agent-reports")
    expect(reason).to_be_visible()
    # The browser itself insists on a reason before anything is sent.
    card.get_by_role("button", name="Deny", exact=True).click()
    assert reason.evaluate("el => el.validity.valueMissing")
    assert _state(s.agent_request) == "pending"
    reason.fill("Deleting customers goes through the retention job.")
    card.get_by_role("button", name="Deny", exact=True).click()

    expect(card).to_have_attribute("data-state", "denied")
    expect(card.locator(".decision-note")).to_contain_text(
        "Denied by reviewer: Deleting customers goes through the retention job."
    )
    expect(page.locator("#pending-badge")).to_have_attribute("data-count", "3")
    _assert_not_reloaded(page)
    screenshot("62-approval-denied-inline")
    s.agent_request.refresh_from_db()
    assert s.agent_request.state == "denied"
    assert s.agent_request.deny_reason == "Deleting customers goes through the retention job."


def test_badge_updates_when_a_request_arrives_while_the_page_is_open(
    page: Any, sign_in: Any, s: SimpleNamespace, demo_policy: Any
) -> None:
    sign_in(s.reviewer, "reviewer")
    page.goto("/guardrails/")  # any page: the badge lives in the nav
    badge = page.locator("#pending-badge")
    expect(badge).to_have_attribute("data-count", "4")
    _no_reload_marker(page)
    scenario.hold(
        datasource=demo_policy.datasource,
        identity=demo_policy.agent,
        statement="UPDATE public.orders SET amount = $1 WHERE id = $2",
        kind="update",
        tables=["public.orders"],
    )
    expect(badge).to_have_attribute("data-count", "5", timeout=8_000)
    expect(badge).to_contain_text("5")
    _assert_not_reloaded(page)


def test_inbox_takes_new_requests_without_redrawing_the_list(
    page: Any, sign_in: Any, s: SimpleNamespace, demo_policy: Any
) -> None:
    sign_in(s.reviewer, "reviewer")
    page.goto("/approvals/")
    news = page.locator("#inbox-news")
    expect(news).to_be_hidden()
    # Deciding one lowers the count; a reason half typed in another card...
    card = page.locator(f"#request-{s.agent_request.pk}")
    card.get_by_role("button", name="Approve agent-reports's request").click()
    expect(page.locator("#pending-badge")).to_have_attribute("data-count", "3")
    other = page.locator(f"#request-{s.critical_request.pk}")
    other.get_by_text("Deny…").click()
    reason = other.get_by_label("Reason for svc-billing")
    reason.fill("Half-typed")
    _no_reload_marker(page)
    arrived = scenario.hold(
        datasource=demo_policy.datasource,
        identity=demo_policy.agent,
        statement="UPDATE public.orders SET amount = $1 WHERE id = $2",
        kind="update",
        tables=["public.orders"],
    )
    # ...survives the new card, which arrives on top by itself (no notice, no reload).
    expect(page.locator(f"#request-{arrived.pk}")).to_be_visible(timeout=3_000)
    assert page.locator("#approval-list > article").first.get_attribute("id") == (
        f"request-{arrived.pk}"
    )
    expect(page.locator("#pending-badge")).to_have_attribute("data-count", "4")
    expect(reason).to_have_value("Half-typed")
    expect(card).to_have_attribute("data-state", "approved")  # not redrawn as pending
    expect(news).to_be_hidden()
    _assert_not_reloaded(page)


def test_decisions_work_without_javascript(
    browser: Any, live_server: Any, s: SimpleNamespace
) -> None:
    from tests.conftest import persona_password

    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        page.goto("/accounts/login/")
        page.get_by_label("Username or email").fill(s.reviewer.username)
        page.get_by_label("Password").fill(persona_password("reviewer"))
        page.get_by_role("button", name="Sign in").click()
        page.goto("/approvals/?identity_kind=agent")
        card = page.locator(f"#request-{s.agent_request.pk}")
        card.get_by_role("button", name="Approve agent-reports's request").click()
        # POST-redirect-GET: back on the filtered inbox, with a message.
        page.wait_for_url("**/approvals/?identity_kind=agent")
        expect(page.locator(".messages")).to_contain_text("Approved agent-reports")
        expect(page.locator("#pending-badge")).to_have_attribute("data-count", "3")
        assert _state(s.agent_request) == "approved"

        page.goto(f"/approvals/{s.critical_request.pk}/")
        card = page.locator(f"#request-{s.critical_request.pk}")
        card.locator("summary", has_text="Deny…").click()
        card.get_by_label("Reason for svc-billing").fill("Not during the audit freeze.")
        card.get_by_role("button", name="Deny", exact=True).click()
        page.wait_for_url(f"**/approvals/{s.critical_request.pk}/")
        expect(page.locator("#request-state")).to_have_text("denied")
        expect(page.locator("#timeline")).to_contain_text("Not during the audit freeze.")
        assert _state(s.critical_request) == "denied"
    finally:
        context.close()


def test_requester_follows_their_requests_and_cancels_one(
    page: Any, sign_in: Any, security_user: Any, s: SimpleNamespace, screenshot: Any
) -> None:
    # security owns agent-reports and svc-billing, so their requests are security's.
    sign_in(security_user, "security")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="My requests").click()
    row = page.locator(f"#mine-{s.agent_request.pk}")
    expect(row).to_contain_text("agent-reports")
    expect(page.locator(f"#mine-{s.critical_request.pk}")).to_contain_text("pending")
    expect(page.locator(f"#mine-{s.own_request.pk}")).to_have_count(0)
    screenshot("63-my-requests")
    _no_reload_marker(page)
    row.get_by_role("button", name="Cancel request").click()
    expect(row).to_have_attribute("data-state", "cancelled")
    _assert_not_reloaded(page)
    assert _state(s.agent_request) == "cancelled"

    page.goto(f"/approvals/{s.critical_request.pk}/")
    expect(page.locator("#request-state")).to_have_text("pending")
    expect(page.locator("#timeline")).to_contain_text("Created")
    expect(page.get_by_role("button", name="Approve svc-billing's request")).to_have_count(0)
    screenshot("64-request-page-requester")
    page.get_by_role("button", name="Cancel this request").click()
    expect(page.locator("#request-state")).to_have_text("cancelled")
    expect(page.locator(".messages")).to_contain_text("Request cancelled")
