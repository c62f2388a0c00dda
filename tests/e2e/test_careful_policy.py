"""Careful with production, and seeing the mask before saving it, in headless chromium.

A guardrail that protects production asks for confirmation and a reason before it is
switched off (Cancel sends nothing); one that does not stays one click. Dragging a
row reorders the guardrails in one change, and the arrow buttons do the same from
the keyboard. The masking rule form shows the masked samples and follows the form.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from audit.models import ChangeRecord
from governance.models import GuardrailRule

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_production_guardrail_asks_for_a_reason_and_reorders_in_one_change(
    page: Any,
    sign_in: Any,
    security_user: Any,
    demo_policy: Any,
    staging_rule: Any,
    screenshot: Any,
) -> None:
    first, second = demo_policy.guardrails
    staging = staging_rule
    sign_in(security_user, "security")
    page.goto("/guardrails/")
    page.evaluate("window.__noReload = true")

    # Cancel: nothing is sent, focus returns to the switch.
    page.locator(f"#toggle-{first.pk}").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("It protects production: crm-prod")
    expect(dialog.get_by_label("Reason")).to_be_focused()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(page.locator(f"#toggle-{first.pk}")).to_be_focused()
    expect(page.locator(f"#toggle-{first.pk}")).to_have_attribute("aria-checked", "true")

    # Confirm without a reason: the dialog will not close.
    page.locator(f"#toggle-{first.pk}").click()
    dialog.get_by_role("button", name="Disable guardrail").click()
    expect(dialog).to_be_visible()
    dialog.get_by_label("Reason").fill("Schema migration window, CHG-1042")
    screenshot("guardrail-disable-reason")
    dialog.get_by_role("button", name="Disable guardrail").click()
    expect(page.locator(f"#toggle-{first.pk}")).to_have_attribute("aria-checked", "false")
    change = ChangeRecord.objects.filter(object_id=str(first.pk), action="update").first()
    assert change is not None and change.reason == "Schema migration window, CHG-1042"

    # Staging only: one click, no dialog.
    page.locator(f"#toggle-{staging.pk}").click()
    expect(page.locator(f"#toggle-{staging.pk}")).to_have_attribute("aria-checked", "false")
    expect(dialog).to_be_hidden()

    # Drag the last row to the top: one change for the whole order.
    orders = ChangeRecord.objects.filter(object_id="order")
    page.locator(f"#guardrail-{staging.pk}").drag_to(page.locator(f"#guardrail-{first.pk}"))
    rows = page.locator("#guardrail-rows > tr")
    expect(rows.first).to_have_id(f"guardrail-{staging.pk}")
    expect(rows.first.locator("td.num")).to_have_text(re.compile(r"^\D*1$"))
    assert orders.count() == 1
    assert orders.get().after == {"order": [staging.name, first.name, second.name]}

    # The keyboard's way: the arrow button, focus kept on it.
    page.locator(f"#down-{staging.pk}").focus()
    page.keyboard.press("Enter")
    expect(rows.nth(1)).to_have_id(f"guardrail-{staging.pk}")
    expect(page.locator(f"#down-{staging.pk}")).to_be_focused()
    assert orders.count() == 2
    assert page.evaluate("window.__noReload") is True
    names = list(GuardrailRule.objects.values_list("name", flat=True))
    assert names == [first.name, staging.name, second.name]

    # Dragging one production guardrail above another asks for the reason too;
    # cancelled, the rows go back and nothing is sent.
    page.locator(f"#guardrail-{second.pk}").drag_to(page.locator(f"#guardrail-{first.pk}"))
    expect(dialog).to_contain_text("guardrails that protect production")
    dialog.get_by_role("button", name="Cancel").click()
    expect(rows.first).to_have_id(f"guardrail-{first.pk}")
    assert orders.count() == 2
    page.locator(f"#guardrail-{second.pk}").drag_to(page.locator(f"#guardrail-{first.pk}"))
    dialog.get_by_label("Reason").fill("Agents' writes reviewed before the DDL block, CHG-1043")
    dialog.get_by_role("button", name="Save the order").click()
    expect(rows.first).to_have_id(f"guardrail-{second.pk}")
    # Swapped in from the server's answer: the position numbers are the saved ones.
    expect(rows.first.locator("td.num")).to_have_text(re.compile(r"^\D*1$"))
    assert orders.count() == 3
    assert orders.first().reason == "Agents' writes reviewed before the DDL block, CHG-1043"
    names = list(GuardrailRule.objects.values_list("name", flat=True))
    assert names == [second.name, first.name, staging.name]

    # A new guardrail placed second on creation.
    page.get_by_role("link", name="New guardrail").click()
    page.get_by_role("textbox", name="Name", exact=True).fill("block-copy")
    page.get_by_role("combobox", name="Action", exact=True).select_option("block")
    page.get_by_role("textbox", name="Message").fill("No COPY here.")
    page.get_by_role("group", name="Statement kinds").get_by_label("copy", exact=True).check()
    page.get_by_label("Position").fill("2")
    page.get_by_role("button", name="Create guardrail").click()
    expect(page.locator(".messages")).to_contain_text("Created guardrail block-copy")
    assert GuardrailRule.objects.get(name="block-copy").position == 2


def test_masking_rule_form_previews_the_mask(
    page: Any, sign_in: Any, security_user: Any, demo_policy: Any, screenshot: Any
) -> None:
    sign_in(security_user, "security")
    page.goto("/masking-rules/new/")
    preview = page.locator("#mask-preview")
    expect(preview).to_contain_text("Choose a classification and a strategy")
    page.get_by_label("Classification").select_option(label="financial.card")
    page.get_by_label("Strategy").select_option("redact")
    keep_last = page.get_by_label("Characters kept at the end")
    expect(keep_last).to_be_hidden()  # redact takes no parameter
    expect(preview.locator("td.masked").first).to_have_text("***")
    expect(preview).to_contain_text("4111 1111 1111 1111")

    page.get_by_label("Strategy").select_option("partial")
    expect(keep_last).to_be_visible()
    expect(preview).to_contain_text("is required for the partial strategy")
    keep_last.fill("4")
    expect(preview.locator("td.masked").first).to_have_text("***************1111")
    screenshot("masking-preview")

    page.get_by_label("Strategy").select_option("hash")
    expect(preview).to_contain_text("throw-away key")
    expect(preview.locator("td.masked").first).to_have_text(re.compile("^[0-9a-f]{64}$"))
