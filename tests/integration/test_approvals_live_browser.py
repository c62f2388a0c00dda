"""Issue 17: the inbox sees a new request within a second, "My requests" follows its state.

uvicorn serves the control plane, chromium shows the pages, and the requests
are opened and decided through the services in this process (as the sidecar
API and another reviewer would), so the only way the pages learn of them is
their one-second poll (approvals.live). Measured from the moment the service
returned (its transaction committed) to the card or state being on screen:
at most a poll's second plus one answer. Each request here is opened right
after a poll was answered (the page just loaded, or the previous card just
appeared), so the figures printed are close to the worst case.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from playwright.sync_api import expect

from approvals import services as approvals
from governance import services
from tests.approvals.scenario import hold
from tests.integration import test_approvals_browser
from tests.stack import Server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


# Chromium on the control plane: test_approvals_browser's fixture, under this name.
browser_page = test_approvals_browser.reviewer_page

BUDGET = 1.5  # seconds: a one-second poll, plus drawing and swapping the card


def _sign_in(page: Any, user: Any, password: str) -> None:
    # The control plane process uses the production hasher, not the tests' fast one.
    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(password, hasher.salt())
    user.save(update_fields=["password"])
    page.goto("/accounts/login/")
    page.get_by_label("Username or email").fill(user.username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/accounts/" not in url)


def _within(wait: Any, started: float) -> float:
    """Run ``wait`` (a locator's wait_for: checked on every frame, not on expect's
    backing-off retries) and the seconds since ``started``, under the budget."""
    wait()
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET, f"took {elapsed:.2f} s"
    return elapsed


def test_a_new_request_appears_in_the_open_inbox_within_a_second(
    control_plane: Server, demo_policy: Any, admin_user: Any, reviewer_user: Any, browser_page: Any
) -> None:
    services.identity_update(
        actor=admin_user, identity=reviewer_user.identity, data={"teams": [demo_policy.team_b]}
    )
    first = hold(datasource=demo_policy.datasource, identity=demo_policy.agent)
    page = browser_page
    _sign_in(page, reviewer_user, "pw-reviewer-Warden1!")
    page.goto("/approvals/")
    badge = page.locator("#pending-badge")
    expect(badge).to_have_attribute("data-count", "1")
    # A reviewer halfway through a reason: new cards must not redraw this one.
    card = page.locator(f"#request-{first.pk}")
    card.get_by_text("Deny…").click()
    reason = card.get_by_label("Reason for agent-reports")
    reason.fill("Half-typed")

    timings = []
    for n in range(3):
        request = hold(
            datasource=demo_policy.datasource,
            identity=demo_policy.service,
            statement=f"UPDATE public.customers SET email = $1 WHERE id = {n}",
            kind="update",
        )
        started = time.monotonic()
        new_card = page.locator(f"#request-{request.pk}")
        timings.append(
            _within(lambda c=new_card: c.wait_for(state="visible", timeout=BUDGET * 1000), started)
        )
        expect(badge).to_have_attribute("data-count", str(n + 2))
        # Newest first: the new card is the list's first.
        assert page.locator("#approval-list > article").first.get_attribute("id") == (
            f"request-{request.pk}"
        )
    print(f"\nnew cards appeared after {', '.join(f'{t:.2f}' for t in timings)} s")
    expect(reason).to_have_value("Half-typed")
    expect(page.locator("#approval-list > article")).to_have_count(4)
    expect(page.locator("#inbox-news")).to_be_hidden()
    # Each card once, and the new one works: deny it inline.
    fresh = page.locator(f"#request-{request.pk}")
    fresh.get_by_text("Deny…").click()
    fresh.get_by_label("Reason for svc-billing").fill("Not in production.")
    fresh.get_by_role("button", name="Deny", exact=True).click()
    expect(fresh).to_have_attribute("data-state", "denied")
    expect(badge).to_have_attribute("data-count", "3")


def test_an_empty_inbox_shows_the_first_request_within_a_second(
    control_plane: Server, demo_policy: Any, admin_user: Any, reviewer_user: Any, browser_page: Any
) -> None:
    services.identity_update(
        actor=admin_user, identity=reviewer_user.identity, data={"teams": [demo_policy.team_b]}
    )
    page = browser_page
    _sign_in(page, reviewer_user, "pw-reviewer-Warden1!")
    page.goto("/approvals/")
    expect(page.locator("#inbox-empty")).to_be_visible()
    request = hold(datasource=demo_policy.datasource, identity=demo_policy.agent)
    started = time.monotonic()
    card = page.locator(f"#request-{request.pk}")
    elapsed = _within(lambda: card.wait_for(state="visible", timeout=BUDGET * 1000), started)
    print(f"\nthe first card appeared after {elapsed:.2f} s")
    expect(page.locator("#inbox-empty")).to_be_hidden()


def test_my_requests_follow_the_decision_through_the_link(
    control_plane: Server, demo_policy: Any, admin_user: Any, reviewer_user: Any, browser_page: Any
) -> None:
    # Dana's identity existed before her account; an admin linked them. Her agent's
    # requests and her own are hers to follow, and not hers to decide.
    services.identity_update(
        actor=admin_user, identity=reviewer_user.identity, data={"teams": [demo_policy.team_b]}
    )
    dana = services.identity_create(
        actor=admin_user, name="dana", kind="human", teams=[demo_policy.team_b]
    )
    agent = services.identity_create(
        actor=admin_user, name="agent-dana", kind="agent", owner=dana, teams=[demo_policy.team_a]
    )
    account = get_user_model().objects.create_user(username="dana", email="dana@example.com")
    services.membership_set_role(actor=admin_user, user=account, role="reviewer")
    services.identity_link_user(actor=admin_user, identity=dana, user=account)
    own = hold(datasource=demo_policy.datasource, identity=dana)
    agents = hold(datasource=demo_policy.datasource, identity=agent)

    page = browser_page
    _sign_in(page, account, "pw-dana-Warden1!")
    page.goto("/approvals/mine/")
    for request in (own, agents):
        expect(page.locator(f"#mine-{request.pk}")).to_have_attribute("data-state", "pending")
    # In the inbox (she reviews for team B) her own and her agent's say why not.
    page.goto(f"/approvals/{own.pk}/")
    expect(page.locator(f"#request-{own.pk}")).to_contain_text("Nobody decides their own request")
    page.goto(f"/approvals/{agents.pk}/")
    expect(page.locator(f"#request-{agents.pk}")).to_contain_text("accountable owner")

    page.goto("/approvals/mine/")
    row = page.locator(f"#mine-{agents.pk}")
    expect(row).to_have_attribute("data-state", "pending")
    approvals.approval_decide(request_id=agents.pk, user=reviewer_user, approve=True)
    started = time.monotonic()
    approved = page.locator(f'#mine-{agents.pk}[data-state="approved"]')
    elapsed = _within(lambda: approved.wait_for(state="visible", timeout=BUDGET * 1000), started)
    print(f"\nthe approval showed in My requests after {elapsed:.2f} s")
    expect(page.locator(f"#mine-{own.pk}")).to_have_attribute("data-state", "pending")
