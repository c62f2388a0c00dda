"""Landing on your work, registering a sidecar, and one walk over every page an
admin reaches, in Chromium: each renders, fits a 390 px phone (the navigation's),
and raises no Content-Security-Policy violation."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import settle, visit
from tests.e2e.seed import seed_day

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}


def _sign_out(page: Any) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/accounts/login/**")


def test_each_role_lands_on_its_work_and_a_sidecar_is_set_up_from_the_page(
    page: Any,
    sign_in: Any,
    demo_policy: Any,
    admin_user: Any,
    reviewer_user: Any,
    auditor_user: Any,
) -> None:
    seed_day(demo=demo_policy, admin=admin_user, reviewer=reviewer_user)
    sign_in(admin_user, "admin", totp_secret=admin_user.totp_secret)
    work = page.locator("#your-work")
    expect(work.locator("#card-findings .value")).to_have_text("1")
    expect(work.locator("#card-sidecars-privileged .value")).to_have_text("1")
    expect(work.locator("#card-sidecars-stale .value")).to_have_text("1")
    expect(work.locator("#card-approvals .value")).to_have_text("5")

    # Register a sidecar; the page ends with its files, its config and how to start it.
    page.get_by_role("link", name="Sidecars").click()
    page.get_by_label("Datasource").select_option(label="crm-prod")
    page.get_by_label("Name").fill("crm-prod-9")
    page.get_by_label("Database it guards (optional)").fill(
        "postgresql://warden_guard@db.internal:5432/crm"
    )
    page.get_by_role("button", name="Register sidecar").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sidecar “crm-prod-9” registered")
    config = page.get_by_label(re.compile("Put this into"))
    expect(config).to_have_value(re.compile(r'upstream_dsn = "postgresql://warden_guard@db'))
    expect(page.get_by_label("Enable and start its unit")).to_have_value(
        "systemctl enable --now warden-sidecar@crm-prod-9"
    )
    page.get_by_text("Without systemd", exact=True).click()
    expect(page.get_by_label("Run without systemd")).to_have_value(
        re.compile(r"warden-sidecar run --config /etc/warden/sidecar/crm-prod-9\.toml$")
    )
    page.get_by_role("link", name="Done, I have copied it").click()

    # Until it connects it says so, on the home page and behind the count's link.
    page.get_by_role("link", name="Overview").click()
    never = page.locator("#card-sidecars-never")
    expect(never.locator(".value")).to_have_text("2")
    never.click()
    rows = page.locator("table.data tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="crm-prod-9")).to_contain_text("never connected")
    expect(page.locator("table.data")).not_to_contain_text("stale")
    _sign_out(page)

    sign_in(reviewer_user, "reviewer")
    expect(page.get_by_role("heading", level=1)).to_have_text("Approval inbox")
    assert page.url.endswith("/approvals/")
    _sign_out(page)

    sign_in(auditor_user, "auditor")
    expect(page.get_by_role("heading", name="Activity overview")).to_be_visible()
    expect(page.locator("#chain-status")).to_be_visible()


def _headings(demo: Any) -> dict[str, str]:
    """What the h1 of these pages says: the page asked for rendered, with the demo policy."""
    return {
        "/identities/": "Identities",
        f"/identities/{demo.service.pk}/": "svc-billing",
        "/teams/": "Teams",
        "/datasources/": "Datasources",
        f"/datasources/{demo.datasource.pk}/": "crm-prod",
        "/classifications/": "Classifications",
        "/columns/": "Column classifications",
        "/masking-rules/": "Masking rules",
        "/guardrails/": "Guardrails",
        "/guardrails/new/": "New guardrail",
        "/account/api-tokens/": "Your API tokens",
    }


def test_every_page_fits_a_phone_renders_and_raises_no_csp_violation(
    page: Any,
    sign_in: Any,
    demo_policy: Any,
    admin_user: Any,
    reviewer_user: Any,
    csp_violations: list[str],
    screenshot: Any,
) -> None:
    """One walk over every page a signed-in admin reaches, each checked once for all
    of: it answers with the full Content-Security-Policy and nothing on it is blocked
    (no inline script, style or handler; htmx without eval or inline styles), it
    renders (its heading, for the main pages), and, for the pages of the navigation,
    it fits a 390 px phone."""
    day = seed_day(demo=demo_policy, admin=admin_user, reviewer=reviewer_user)
    headings = _headings(demo_policy)
    page.set_viewport_size(PHONE)
    visit(page, "/accounts/login/", csp_violations)
    sign_in(admin_user, "admin", totp_secret=admin_user.totp_secret)

    # The navigation is folded behind its button, which the keyboard works.
    toggle = page.get_by_role("button", name="Menu")
    menu = page.locator("#nav-menu")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(menu).to_be_hidden()
    toggle.focus()
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(menu.get_by_role("link", name="Guardrails")).to_be_visible()
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    expect(toggle).to_be_focused()
    page.keyboard.press("Space")
    expect(menu).to_be_visible()

    paths = menu.locator("a[href^='/']").evaluate_all("links => links.map(a => a.pathname)")
    assert len(paths) >= 20, paths
    too_wide = []
    for path in dict.fromkeys(paths):
        visit(page, path, csp_violations)
        expect(page.locator("main")).to_be_visible()
        if path in headings:
            expect(page.get_by_role("heading", level=1)).to_contain_text(headings[path])
            screenshot(f"page{path.replace('/', '-').rstrip('-')}")
        width, viewport = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        if width > viewport:
            title = page.title()
            too_wide.append(f"{path} ({title}): {width} px wide")
    assert not too_wide, "wider than a 390 px phone: " + "; ".join(too_wide)

    # On a wide screen there is no button: the navigation is simply there.
    page.set_viewport_size({"width": 1440, "height": 900})
    expect(toggle).to_be_hidden()
    expect(menu).to_be_visible()

    # The pages outside the navigation: objects, forms, the Django admin, the API docs.
    ds, guardrail = demo_policy.datasource, demo_policy.guardrails[0]
    others = [
        f"/approvals/{day.review.agent_request.pk}/",
        f"/identities/{demo_policy.service.pk}/",
        f"/datasources/{ds.pk}/",
        f"/guardrails/{guardrail.pk}/",
        "/guardrails/new/",
        "/admin/",
        "/admin/governance/guardrailrule/",
        f"/admin/governance/guardrailrule/{guardrail.pk}/change/",
        "/api/docs/",
    ]
    assert not set(others) & set(paths), "walked twice"
    for path in others:
        visit(page, path, csp_violations)
        if path in headings:
            expect(page.get_by_role("heading", level=1)).to_contain_text(headings[path])
            screenshot(f"page{path.replace('/', '-').rstrip('-')}")
    expect(page.locator("#swagger-ui")).to_contain_text("Warden management API")
    assert set(headings) <= set(paths) | set(others), "a main page left out of the walk"
    screenshot("csp-api-docs")

    # An htmx swap: a guardrail switched off and on again in place. (Deciding approvals
    # inline is tests/e2e/test_approvals.py's, under the same watch.)
    visit(page, "/guardrails/", csp_violations)
    switch = page.locator(f"#toggle-{guardrail.pk}")
    switch.click()
    # It protects production: the dialog asks for a reason first.
    page.get_by_role("dialog").get_by_label("Reason").fill("csp check")
    page.get_by_role("dialog").get_by_role("button", name="Disable guardrail").click()
    expect(page.locator(f"#toggle-{guardrail.pk}")).to_have_attribute("aria-checked", "false")
    page.locator(f"#toggle-{guardrail.pk}").click()
    expect(page.locator(f"#toggle-{guardrail.pk}")).to_have_attribute("aria-checked", "true")
    settle(page)
    assert not csp_violations, csp_violations
