"""The policy simulator in a real browser: a security engineer tries statements
against the demo policy and reads the decision, with and without JavaScript."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _fill(page: Any, sql: str) -> None:
    page.get_by_label("Datasource").select_option(label="crm-prod")
    page.get_by_label("Identity").fill("security")
    page.get_by_label("SQL").fill(sql)
    page.get_by_role("button", name="Simulate").click()


def test_security_user_simulates_mask_then_block(
    page: Any, sign_in: Any, demo_policy: Any, screenshot: Any
) -> None:
    sign_in(demo_policy.owner.user, "security")
    page.get_by_role("link", name="Simulator").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Policy simulator")
    # A marker on window survives only if htmx swaps the panel instead of reloading.
    page.evaluate("window.__stayed = true")

    _fill(page, "SELECT email FROM customers")
    result = page.locator("#simulation-result")
    expect(result.locator(".badge-action-allow")).to_have_text("allow")
    # The result takes focus, and is on screen, where the eyes go next.
    expect(result).to_be_focused()
    expect(result).to_be_in_viewport()
    upstream = result.locator(".upstream-sql")
    expect(upstream).to_contain_text("***@")
    expect(upstream).not_to_have_text("SELECT email FROM customers")
    expect(result.locator("table.lineage")).to_contain_text("public.customers.email")
    expect(result.locator("table.lineage")).to_contain_text("pii.email")
    screenshot("20-simulator-masked")

    page.evaluate("window.scrollTo(0, 0)")
    _fill(page, "DROP TABLE customers")
    expect(result.locator(".badge-action-block")).to_have_text("block")
    expect(result).to_be_focused()
    expect(result).to_be_in_viewport()
    expect(result.locator(".reasons")).to_contain_text("block-ddl-in-production")
    expect(result.locator(".client-message")).to_contain_text("migrations")
    screenshot("21-simulator-blocked")

    # A refused form (400) still shows its errors inline through htmx.
    page.get_by_label("SQL").fill("")
    page.get_by_role("button", name="Simulate").click()
    expect(page.locator("#id_sql_error")).to_be_visible()
    expect(page.locator("#simulation-result")).to_have_count(0)
    assert page.evaluate("window.__stayed === true")


def test_simulator_works_without_javascript(
    browser: Any, live_server: Any, demo_policy: Any
) -> None:
    from tests.conftest import persona_password

    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        page.goto("/accounts/login/")
        page.get_by_label("Username or email").fill("security")
        page.get_by_label("Password").fill(persona_password("security"))
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/accounts/" not in url)
        page.goto("/simulate/")
        _fill(page, "DROP TABLE customers")
        result = page.locator("#simulation-result")
        expect(result.locator(".badge-action-block")).to_have_text("block")
        expect(result.locator(".reasons")).to_contain_text("block-ddl-in-production")
    finally:
        context.close()
