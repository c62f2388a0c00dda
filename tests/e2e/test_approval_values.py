"""What will run, in headless chromium: the inbox card and the request page show the
statement laid out, its values beside it and at their placeholders (a classified one
redacted, with its label), and the planner's estimate, with the page's own CSS and
no script of its own."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from approvals.models import ApprovalRequest
from governance import services
from tests.approvals import scenario

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def held(demo_policy: Any, admin_user: Any, reviewer_user: Any) -> ApprovalRequest:
    """The agent's UPDATE, held with the values and the estimate a new sidecar sends
    (stored through the ORM: the sidecar that sends them is tested elsewhere)."""
    services.identity_update(
        actor=admin_user, identity=reviewer_user.identity, data={"teams": [demo_policy.team_b]}
    )
    request = scenario.hold(
        datasource=demo_policy.datasource,
        identity=demo_policy.agent,
        statement="UPDATE public.orders SET status = $1 WHERE customer_email = $2 AND total > $3",
        kind="update",
        tables=["public.orders"],
    )
    ApprovalRequest.objects.filter(pk=request.pk).update(
        values=[
            {"statement": 0, "n": 1, "value": "'refunded'"},
            {"statement": 0, "n": 2, "classification": "pii.email"},
            {"statement": 0, "n": 3, "value": "1000"},
        ],
        estimate={"rows": {"orders": 993}, "top": "ModifyTable", "error": ""},
        binding="shape",
    )
    return request


def _shows_what_runs(card: Any) -> None:
    values = card.locator(".values-table")
    expect(values).to_be_visible()
    shown = values.locator("tr.value-shown")
    expect(shown.first.locator("th")).to_have_text("$1")
    expect(shown.first.locator("td")).to_have_text("= 'refunded'")
    redacted = values.locator("tr.value-redacted")
    expect(redacted.locator("th")).to_have_text("$2")
    label = redacted.locator(".badge-redacted")
    expect(label).to_be_visible()
    expect(label).to_have_text("redacted (pii.email)")
    # At the placeholders, in the statement itself, laid out on more than one line.
    statement = card.locator("pre.sql")
    expect(statement.locator(".sql-bound").first).to_contain_text("'refunded'")
    expect(statement.locator(".sql-bound.is-redacted")).to_contain_text("redacted (pii.email)")
    assert statement.inner_text().count("\n") >= 1
    assert "customer_email" in statement.inner_text()
    # Our stylesheet styles them: a redacted value is not plain text.
    background = statement.locator(".sql-bound.is-redacted").evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    assert background not in ("rgba(0, 0, 0, 0)", "transparent")
    expect(card.locator(".estimate")).to_contain_text("≈ 993 rows in orders (estimate)")
    expect(card.locator(".estimate")).to_contain_text("Plan: ModifyTable")
    expect(card.locator(".binding-shape")).to_contain_text(
        "This approval lets the requester run this statement with any values, not only those shown."
    )


def test_reviewer_sees_what_will_run_in_the_inbox_and_on_the_page(
    page: Any, sign_in: Any, reviewer_user: Any, held: ApprovalRequest, screenshot: Any
) -> None:
    sign_in(reviewer_user, "reviewer")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Inbox").click()
    card = page.locator(f"#request-{held.pk}")
    _shows_what_runs(card)
    screenshot("65-approval-values-inbox")

    card.get_by_role("link", name="agent-reports on crm-prod").click()
    page.wait_for_url(f"**/approvals/{held.pk}/")
    _shows_what_runs(page.locator(f"#request-{held.pk}"))
    screenshot("66-approval-values-page")
