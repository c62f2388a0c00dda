"""Browser flows of classification scans, in headless chromium against the real server:
working the review queue inline (confirm, reject, reclassify: rows swap without a page
reload), the same decision without JavaScript, and creating a custom detector after
trying it on sample strings."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from audit.models import ChangeRecord
from governance import services
from governance.models import ClassificationRejection, ColumnClassification, CustomDetector
from tests.conftest import DEMO_SCHEMA

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _finding(column: str, classification: str, confidence: float) -> dict[str, Any]:
    return {
        "schema": "public",
        "table": "customers",
        "column": column,
        "classification": classification,
        "confidence": confidence,
    }


@pytest.fixture
def queue(demo_policy: Any) -> dict[str, ColumnClassification]:
    services.sidecar_schema_report(
        datasource_id=demo_policy.datasource.pk,
        snapshot=DEMO_SCHEMA,
        findings=[
            _finding("phone", "pii.phone", 0.97),
            _finding("full_name", "pii.name", 0.6),
            _finding("birth_date", "pii.national_id", 0.5),
        ],
    )
    return {
        c.column_name: c
        for c in ColumnClassification.objects.filter(
            column_name__in=["phone", "full_name", "birth_date"]
        )
    }


def test_security_works_the_review_queue_inline(
    page: Any, sign_in: Any, security_user: Any, queue: dict, screenshot: Any
) -> None:
    sign_in(security_user, "security")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Review queue").click()
    rows = page.locator("#review-table tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("needs confirmation")  # auto-applied come first
    screenshot("review-queue")
    marker = page.evaluate("() => (window.__noReload = Math.random())")

    phone, name, birth = queue["phone"], queue["full_name"], queue["birth_date"]
    page.get_by_role("button", name="Confirm public.customers.phone as pii.phone").click()
    expect(page.locator(f"#review-{phone.pk}")).to_contain_text("confirmed by security")
    # Focus moves on to the next item awaiting a decision.
    expect(page.locator(f"#review-{name.pk}")).to_be_focused()

    # crm-prod is production: rejecting asks for confirmation and a reason first.
    page.get_by_role("button", name="Reject pii.name for public.customers.full_name").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("production datasource crm-prod")
    dialog.get_by_label("Reason").fill("Product names, not people")
    dialog.get_by_role("button", name="Reject").click()
    expect(page.locator(f"#review-{name.pk}")).to_contain_text("rejected by security")
    expect(page.locator(f"#review-{birth.pk}")).to_be_focused()

    page.get_by_label("Reclassify public.customers.birth_date as").select_option("pii.dob")
    page.get_by_role("button", name="Reclassify public.customers.birth_date").click()
    # It changes how a production column is masked: a reason too.
    dialog.get_by_label("Reason").fill("Dates of birth, not national ids")
    dialog.get_by_role("button", name="Reclassify").click()
    expect(page.locator(f"#review-{birth.pk}")).to_contain_text("pii.dob")
    expect(page.locator(f"#review-{birth.pk}")).to_contain_text("confirmed by security")

    assert page.evaluate("() => window.__noReload") == marker  # no full page load happened
    statuses = {
        c.column_name: (c.classification.name, c.status)
        for c in ColumnClassification.objects.filter(pk__in=[phone.pk, name.pk, birth.pk])
    }
    assert statuses == {
        "phone": ("pii.phone", "confirmed"),
        "full_name": ("pii.name", "rejected"),
        "birth_date": ("pii.dob", "confirmed"),
    }
    assert ClassificationRejection.objects.filter(classification__name="pii.name").exists()
    assert ClassificationRejection.objects.filter(classification__name="pii.national_id").exists()
    reasons = set(
        ChangeRecord.objects.filter(object_id__in=[str(name.pk), str(birth.pk)]).values_list(
            "reason", flat=True
        )
    )
    assert {"Product names, not people", "Dates of birth, not national ids"} <= reasons
    page.reload()
    expect(page.locator(".card.empty")).to_contain_text("Nothing awaits review")
    # The datasource page: the scan in the history, and "Scan now" for an editor.
    page.goto(f"/datasources/{phone.datasource_id}/")
    expect(page.locator("#scan-history tbody tr")).to_have_count(1)
    page.get_by_role("button", name="Scan now").click()
    expect(page.locator("#scan-pending")).to_contain_text("requested, not reported yet")
    screenshot("datasource-scans")
    # When the sidecar reports the scan, the page updates itself (polling stops).
    page.evaluate("window.__noReload = 'scan'")
    schedule = services.scan_schedule_for(datasource=phone.datasource)
    services.sidecar_schema_report(
        datasource_id=phone.datasource_id,
        snapshot=DEMO_SCHEMA,
        findings=[_finding("ssn", "pii.ssn", 0.99)],
        scan={"id": schedule.requested, "trigger": "request"},
    )
    expect(page.locator("#scan-history tbody tr")).to_have_count(2, timeout=8000)
    expect(page.locator("#scan-pending")).to_have_count(0)
    expect(page.locator("#scans")).not_to_have_attribute("hx-trigger", "every 2s")
    assert page.evaluate("() => window.__noReload") == "scan"


def test_review_queue_works_without_javascript(
    browser: Any, live_server: Any, security_user: Any, queue: dict
) -> None:
    from tests.conftest import persona_password

    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto("/accounts/login/")
        page.get_by_label("Username or email").fill(security_user.username)
        page.get_by_label("Password").fill(persona_password("security"))
        page.get_by_role("button", name="Sign in").click()
        page.goto("/review/")
        page.get_by_role("button", name="Confirm public.customers.full_name as pii.name").click()
        expect(page.locator(".messages")).to_contain_text("public.customers.full_name: pii.name")
        assert page.url.endswith("/review/")
    finally:
        context.close()
    queue["full_name"].refresh_from_db()
    assert queue["full_name"].status == "confirmed"


def test_security_tries_and_creates_a_custom_detector(
    page: Any, sign_in: Any, security_user: Any, screenshot: Any
) -> None:
    sign_in(security_user, "security")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Custom detectors").click()
    page.get_by_role("link", name="New custom detector").click()
    page.get_by_role("textbox", name="Name", exact=True).fill("employee-id")
    page.get_by_label("Classification").select_option(label="pii.national_id")
    page.get_by_label("Column name pattern").fill(r"(?i)^emp(loyee)?_?id$")
    page.get_by_label("Value pattern").fill(r"^E\d{6}$")
    page.get_by_label("Samples").fill("employee_id\nE123456\nhello")
    page.get_by_role("button", name="Try").click()
    results = page.locator("#try-results tbody tr")
    expect(results).to_have_count(3)
    expect(results.nth(0)).to_contain_text("matches")
    expect(results.nth(1).locator("td").nth(2)).to_contain_text("matches")
    expect(results.nth(2)).not_to_contain_text("matches")
    assert not CustomDetector.objects.exists()  # trying stores nothing
    # A catastrophic pattern is refused in the try-out, with the reason.
    page.get_by_label("Value pattern").fill("^(a+)+$")
    page.get_by_role("button", name="Try").click()
    expect(page.locator("#detector-try")).to_contain_text("catastrophic backtracking")
    page.get_by_label("Value pattern").fill(r"^E\d{6}$")
    screenshot("detector-try")
    page.get_by_role("button", name="Create custom detector").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("employee-id")
    detector = CustomDetector.objects.get(name="employee-id")
    assert (detector.classification.name, detector.value_regex) == ("pii.national_id", r"^E\d{6}$")
