"""The issue's browser flows, in headless chromium against the real server:
creating a guardrail, editing a masking rule and seeing that change in its
history, toggling and reordering guardrails inline without a page reload, the
same without JavaScript, and issuing a token that is shown once."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from audit.models import ChangeRecord
from governance.models import GuardrailRule, MaskingRule

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_admin_creates_a_guardrail(
    page: Any, sign_in: Any, admin_user: Any, demo_policy: Any, screenshot: Any
) -> None:
    sign_in(admin_user, "admin", totp_secret=admin_user.totp_secret)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Guardrails").click()
    page.get_by_role("link", name="New guardrail").click()
    page.get_by_role("textbox", name="Name", exact=True).fill("block-unfiltered-deletes")
    page.get_by_role("combobox", name="Action", exact=True).select_option("block")
    page.get_by_label("Message").fill("DELETE without WHERE is not allowed in production.")
    page.get_by_role("group", name="Environments").get_by_label("production").check()
    page.get_by_role("group", name="Statement kinds").get_by_label("delete", exact=True).check()
    page.get_by_label("UPDATE/DELETE without WHERE").select_option("true")
    page.get_by_role("button", name="Create guardrail").click()

    expect(page.get_by_role("heading", level=1)).to_contain_text("block-unfiltered-deletes")
    expect(page.locator(".messages")).to_contain_text("Created guardrail")
    expect(page.locator("#history")).to_contain_text("admin")
    screenshot("20-guardrail-created")
    rule = GuardrailRule.objects.get(name="block-unfiltered-deletes")
    assert rule.action == "block"
    assert rule.conditions["environments"] == ["production"]
    assert rule.conditions["statement_kinds"] == ["delete"]
    assert rule.conditions["missing_where"] is True
    assert rule.position == 3


def test_unsafe_guardrail_is_refused_with_a_clear_message(
    page: Any, sign_in: Any, security_user: Any, demo_policy: Any, screenshot: Any
) -> None:
    sign_in(security_user, "security")
    page.goto("/guardrails/new/")
    page.get_by_role("textbox", name="Name", exact=True).fill("allow-everything")
    page.get_by_role("combobox", name="Action", exact=True).select_option("allow")
    page.get_by_role("button", name="Create guardrail").click()
    expect(page.locator(".form-errors")).to_contain_text("would allow everything in production")
    # The form keeps what was typed, so the user can fix it.
    expect(page.get_by_role("textbox", name="Name", exact=True)).to_have_value("allow-everything")
    screenshot("21-guardrail-refused")
    assert not GuardrailRule.objects.filter(name="allow-everything").exists()


def test_edit_masking_rule_and_see_it_in_history(
    page: Any, sign_in: Any, security_user: Any, demo_policy: Any, screenshot: Any
) -> None:
    rule = demo_policy.masking_rules[1]  # mask-ssn: partial, keep_last 4
    sign_in(security_user, "security")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Masking rules").click()
    page.get_by_role("link", name="mask-ssn").click()
    page.get_by_role("link", name="Edit").click()
    page.get_by_label("Characters kept at the end").fill("2")
    page.get_by_role("group", name="Environments").get_by_label("production").check()
    # mask-ssn protects production: the change needs a reason.
    page.get_by_label("Reason for the change").fill("SSNs shown on fewer digits")
    page.get_by_role("button", name="Save changes").click()

    expect(page.locator(".messages")).to_contain_text("Saved masking rule mask-ssn")
    change = page.locator("#history li.action-update").first
    expect(change).to_contain_text("security")
    expect(change).to_contain_text("updated this")
    expect(change.locator(".change-reason")).to_contain_text("SSNs shown on fewer digits")
    keep_last = change.locator("tr", has_text="params.keep_last")
    expect(keep_last.locator("td.before")).to_have_text("4")
    expect(keep_last.locator("td.after")).to_have_text("2")
    envs = change.locator("tr", has_text="environments")
    expect(envs.locator("td.after")).to_have_text("production")
    screenshot("22-masking-history")
    rule.refresh_from_db()
    assert rule.params == {"keep_last": 2}


def test_invalid_masking_params_shown_inline(
    page: Any, sign_in: Any, security_user: Any, demo_policy: Any
) -> None:
    rule = demo_policy.masking_rules[1]
    sign_in(security_user, "security")
    page.goto(f"/masking-rules/{rule.pk}/edit/")
    keep_last = page.get_by_label("Characters kept at the end")
    expect(keep_last).to_have_attribute("max", "16")  # a typed field with its bounds
    keep_last.fill("99")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#field-param_keep_last .errorlist")).to_contain_text("16")
    expect(page.get_by_label("Characters kept at the end")).to_have_attribute(
        "aria-invalid", "true"
    )
    rule.refresh_from_db()
    assert rule.params == {"keep_last": 4}


def test_toggle_and_reorder_guardrails_inline_without_reload(
    page: Any, sign_in: Any, security_user: Any, demo_policy: Any, screenshot: Any
) -> None:
    first, second = demo_policy.guardrails
    sign_in(security_user, "security")
    page.goto("/guardrails/")
    # A marker on window survives htmx swaps but not a page load.
    page.evaluate("window.__noReload = true")

    switch = page.locator(f"#toggle-{second.pk}")
    expect(switch).to_have_attribute("aria-checked", "true")
    switch.click()
    # It applies everywhere, production included: a reason first.
    page.get_by_role("dialog").get_by_label("Reason").fill("too noisy")
    page.get_by_role("dialog").get_by_role("button", name="Disable guardrail").click()
    expect(page.locator(f"#toggle-{second.pk}")).to_have_attribute("aria-checked", "false")
    expect(page.locator(f"#guardrail-{second.pk}")).to_have_class("is-disabled flash")
    second.refresh_from_db()
    assert second.enabled is False

    # Above the block rule, it decides first on production: a reason again.
    page.get_by_role("button", name=f"Move {second.name} up").click()
    page.get_by_role("dialog").get_by_label("Reason").fill("review before the DDL block")
    page.get_by_role("dialog").get_by_role("button", name="Move guardrail").click()
    rows = page.locator("#guardrail-rows tr")
    expect(rows.first).to_have_id(f"guardrail-{second.pk}")
    expect(rows.nth(1)).to_have_id(f"guardrail-{first.pk}")
    # Focus stays on the control that was used, for keyboard users.
    expect(page.locator(f"#up-{second.pk}")).to_be_focused()
    assert page.evaluate("window.__noReload") is True
    screenshot("23-guardrails-reordered")
    first.refresh_from_db()
    second.refresh_from_db()
    assert (second.position, first.position) == (1, 2)

    # And by keyboard alone: Tab to the switch, Space to flip it back on, the reason
    # typed into the dialog and confirmed.
    page.locator(f"#toggle-{second.pk}").focus()
    page.keyboard.press("Space")
    expect(page.get_by_role("dialog").get_by_label("Reason")).to_be_focused()
    page.keyboard.type("noise fixed")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator(f"#toggle-{second.pk}")).to_have_attribute("aria-checked", "true")
    assert page.evaluate("window.__noReload") is True


def test_guardrails_work_without_javascript(
    browser: Any, live_server: Any, security_user: Any, demo_policy: Any
) -> None:
    from tests.conftest import persona_password

    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto("/accounts/login/")
        page.get_by_label("Username or email").fill(security_user.username)
        page.get_by_label("Password").fill(persona_password("security"))
        page.get_by_role("button", name="Sign in").click()
        page.goto("/guardrails/?action=block")
        first = demo_policy.guardrails[0]
        page.locator(f"#toggle-{first.pk}").click()
        # It protects production: a page asks for the reason, then a redirect back
        # to the filtered list.
        page.get_by_label("Reason").fill("migration window")
        page.get_by_role("button", name="Disable guardrail").click()
        page.wait_for_url("**/guardrails/?action=block")
        expect(page.locator(".messages")).to_contain_text(f"Guardrail {first.name} disabled")
        expect(page.locator(f"#toggle-{first.pk}")).to_have_attribute("aria-checked", "false")
        page.goto("/guardrails/")
        page.get_by_role("button", name=f"Move {first.name} down").click()
        # The order on production changes: the reason page again, back to the list.
        page.get_by_label("Reason").fill("review first")
        page.get_by_role("button", name="Move guardrail").click()
        page.wait_for_url("**/guardrails/")
        expect(page.locator("#guardrail-rows tr").nth(1)).to_have_id(f"guardrail-{first.pk}")
    finally:
        context.close()
    first.refresh_from_db()
    assert (first.enabled, first.position) == (False, 2)
    # Both reasons reached the history, neither lost on the way through the page.
    assert {"migration window", "review first"} <= set(
        ChangeRecord.objects.values_list("reason", flat=True)
    )


def test_issue_token_shown_once_with_copy_button(
    page: Any, sign_in: Any, security_user: Any, demo_policy: Any, screenshot: Any
) -> None:
    sign_in(security_user, "security")
    page.goto(f"/identities/{demo_policy.service.pk}/")
    page.get_by_role("link", name="Issue token").click()
    page.get_by_role("textbox", name="Name", exact=True).fill("ci-deploy")
    page.get_by_role("button", name="Issue token").click()
    expect(page.get_by_role("alert")).to_contain_text("will not be shown again")
    raw = page.get_by_label("Token").input_value()
    assert raw.startswith("wdn_")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied ✓")).to_be_visible()
    screenshot("24-token-issued")
    page.get_by_role("link", name="Done, I have copied it").click()
    expect(page.locator("#tokens")).to_contain_text("ci-deploy")
    assert raw not in page.content()
    assert MaskingRule.objects.count() == 2  # nothing else changed on the way
