"""Landing on your work, registering a sidecar, and every page of the navigation
on a 390 px phone, in Chromium."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

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


def test_every_page_of_the_navigation_fits_a_phone(
    page: Any, sign_in: Any, demo_policy: Any, admin_user: Any, reviewer_user: Any
) -> None:
    seed_day(demo=demo_policy, admin=admin_user, reviewer=reviewer_user)
    page.set_viewport_size(PHONE)
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
        page.goto(path)
        expect(page.locator("main")).to_be_visible()
        width, viewport = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        if width > viewport:
            title = page.title()
            too_wide.append(f"{path} ({title}): {width} px wide")
    assert not too_wide, "wider than a 390 px phone: " + "; ".join(too_wide)

    # On a wide screen there is no button: the navigation is simply there.
    page.set_viewport_size({"width": 1440, "height": 900})
    expect(toggle).to_be_hidden()
    expect(menu).to_be_visible()
