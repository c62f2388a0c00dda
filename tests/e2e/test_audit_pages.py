"""The audit pages in a real browser: the explorer (filter, page, open an event and
see its chain proof), the activity overview, and the PII report's drill-down.

Audit events are not removed by the live server's flush (the trail is
append-only), so each test uses identity names of its own.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from playwright.sync_api import expect

from governance import services
from governance.models import Environment
from tests.audit.reporting.trail import event_add

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _datasource(admin_user: Any) -> Any:
    return services.datasource_create(
        actor=admin_user,
        name=f"crm-{uuid.uuid4().hex[:6]}",
        environment=Environment.objects.get(name="production"),
    )


def test_explorer_filter_page_and_proof(
    page: Any, sign_in: Any, admin_user: Any, auditor_user: Any, screenshot: Any
) -> None:
    ds = _datasource(admin_user)
    who = f"ana-{uuid.uuid4().hex[:6]}"
    now = datetime.datetime.now(datetime.UTC)
    for i in range(55):
        event_add(occurred_at=now - datetime.timedelta(seconds=i), identity_name=who,
                  datasource_id=ds.pk, statement=f"SELECT id FROM public.t{i} WHERE id = ?",
                  tables=[f"public.t{i}"])  # fmt: skip
    event_add(occurred_at=now, identity_name=f"other-{who}", datasource_id=ds.pk)
    sign_in(auditor_user, "auditor")
    page.get_by_role("link", name="Explorer").click()
    expect(page.get_by_role("heading", name="Audit explorer")).to_be_visible()
    page.get_by_label("Identity", exact=True).fill(who)
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.audit-events tbody tr")
    expect(rows).to_have_count(50)
    expect(page.locator("table.audit-events")).not_to_contain_text(f"other-{who}")
    screenshot("audit-01-explorer")
    page.get_by_role("link", name="Older →").click()
    expect(rows).to_have_count(5)
    expect(page.get_by_role("link", name="Older →")).to_have_count(0)
    # The oldest event: t54. Open it and see its proof.
    expect(rows.first).to_contain_text("public.t50")
    rows.last.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name="Chain proof")).to_contain_text("OK")
    expect(page.locator("#proof")).to_contain_text("matches")
    expect(page.locator("#proof")).to_contain_text("linked")
    screenshot("audit-02-event-proof")
    page.get_by_role("link", name="next event").click()
    expect(page.locator("#proof")).to_contain_text("matches")


def test_overview_shows_activity_and_health(
    page: Any, sign_in: Any, admin_user: Any, security_user: Any, screenshot: Any
) -> None:
    ds = _datasource(admin_user)
    who = f"bo-{uuid.uuid4().hex[:6]}"
    now = datetime.datetime.now(datetime.UTC)
    event_add(occurred_at=now - datetime.timedelta(days=1), identity_name=who,
              datasource_id=ds.pk, classifications=["pii.email"])  # fmt: skip
    event_add(occurred_at=now - datetime.timedelta(hours=1), identity_name=who,
              datasource_id=ds.pk, action="block", outcome="blocked",
              statement="DROP TABLE public.customers")  # fmt: skip
    sign_in(security_user, "security")
    page.get_by_role("link", name="Activity").click()
    expect(page.get_by_role("heading", name="Activity overview")).to_be_visible()
    expect(page.locator("#activity svg.chart rect").first).to_be_visible()
    expect(page.locator("#top-readers")).to_contain_text(who)
    expect(page.locator("#refused")).to_contain_text("DROP TABLE public.customers")
    expect(page.locator("#chain-status")).to_be_visible()
    screenshot("audit-03-overview")


def test_pii_report_drills_down_in_one_click(
    page: Any, sign_in: Any, admin_user: Any, auditor_user: Any, screenshot: Any
) -> None:
    ds = _datasource(admin_user)
    who = f"cy-{uuid.uuid4().hex[:6]}"
    at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)  # the default 30 days
    for i in range(3):
        event_add(occurred_at=at + datetime.timedelta(minutes=i), identity_name=who,
                  datasource_id=ds.pk, classifications=["pii.ssn"])  # fmt: skip
    event_add(occurred_at=at, identity_name=who, datasource_id=ds.pk,
              classifications=["pii.ssn"], action="block", outcome="blocked")  # fmt: skip
    sign_in(auditor_user, "auditor")
    page.get_by_role("link", name="Who accessed PII").click()
    expect(page.get_by_role("heading", name="Who accessed PII")).to_be_visible()
    row = page.locator("#pii-report tbody tr", has_text=who)
    expect(row).to_contain_text("pii.ssn")
    expect(row.locator('[data-count="statements"]')).to_have_text("3")
    screenshot("audit-04-pii-report")
    row.locator('[data-count="statements"]').get_by_role("link").click()
    expect(page.get_by_role("heading", name="Audit explorer")).to_be_visible()
    events = page.locator("table.audit-events tbody tr")
    expect(events).to_have_count(3)
    for i in range(3):
        expect(events.nth(i)).to_contain_text(who)
        expect(events.nth(i)).to_contain_text("pii.ssn")
    screenshot("audit-05-drilldown")


def test_evidence_pack_progress_updates_in_place(
    page: Any, sign_in: Any, admin_user: Any, auditor_user: Any, screenshot: Any
) -> None:
    from audit.report_models import EvidencePack
    from audit.reporting.evidence import evidence_pack_build

    _datasource(admin_user)
    sign_in(auditor_user, "auditor")
    page.get_by_role("link", name="Evidence packs").click()
    expect(page.get_by_role("heading", name="Evidence packs")).to_be_visible()
    page.get_by_role("button", name="Build evidence pack").click()
    pack = EvidencePack.objects.get(requested_by=auditor_user)
    row = page.locator(f"#pack-{pack.pk}")
    expect(row.locator("progress")).to_be_visible()
    # No worker runs in this test: build it here with the task's own function; the
    # page, which is not reloaded, picks the result up by polling.
    evidence_pack_build(pack_id=pack.pk)
    expect(row.get_by_role("link", name="Download ZIP")).to_be_visible()
    expect(row.locator("progress")).to_have_count(0)
    screenshot("audit-06-evidence")
    with page.expect_download() as download_info:
        row.get_by_role("link", name="Download ZIP").click()
    assert download_info.value.suggested_filename.endswith(".zip")
