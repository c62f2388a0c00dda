"""Issue 18, points 2, 3 and 8 in Chromium, in one session: reports that tell the
truth on first open, changes as diffs, and one date-time format shown in the
browser's time zone (emulated here as Asia/Kolkata, UTC+05:30, so a page left in
UTC cannot pass), with wording fixes the eye would catch.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from governance import services
from governance.models import Environment, Sidecar
from tests.audit.reporting.trail import event_add

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

KOLKATA = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
SNAPSHOT = {"tables": [{"schema": "public", "name": "customers", "kind": "table",
                        "columns": [{"name": "id", "type": "integer"}]}]}  # fmt: skip
SNAPSHOT_2 = {"tables": [
    {"schema": "public", "name": "customers", "kind": "table",
     "columns": [{"name": "id", "type": "bigint"}, {"name": "email", "type": "text"}]},
    {"schema": "public", "name": "orders", "kind": "table",
     "columns": [{"name": "id", "type": "integer"}]},
]}  # fmt: skip


def _local(iso: str) -> str:
    at = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return at.astimezone(KOLKATA).strftime("%Y-%m-%d %H:%M")


def test_reports_diffs_and_dates_tell_the_truth(
    page: Any, sign_in: Any, admin_user: Any, security_user: Any, screenshot: Any
) -> None:
    ds = services.datasource_create(
        actor=admin_user, name=f"crm-{uuid.uuid4().hex[:6]}", schema_snapshot=SNAPSHOT,
        environment=Environment.objects.get(name="production"),
    )  # fmt: skip
    services.datasource_update(  # production: the new snapshot changes what views inherit
        actor=admin_user, datasource=ds, data={"schema_snapshot": SNAPSHOT_2}, reason="rescan"
    )
    rule = services.guardrail_create(
        actor=admin_user, name=f"no_drop_{uuid.uuid4().hex[:4]}", action="block", message="No."
    )
    services.guardrail_update(
        actor=admin_user, guardrail=rule, data={"enabled": False}, reason="INC-7: replaced"
    )
    sidecar, _ = services.sidecar_register(actor=admin_user, datasource=ds, name="sc-words")
    Sidecar.objects.filter(pk=sidecar.pk).update(counters={"statements_allow": 5})
    who = f"ra-{uuid.uuid4().hex[:6]}"
    now = datetime.datetime.now(datetime.UTC)
    for i in range(3):  # read raw (exempt), two labels each: three statements, not six
        event_add(occurred_at=now - datetime.timedelta(hours=2, minutes=i), identity_name=who,
                  datasource_id=ds.pk, classifications=["pii.email", "pii.ssn"])  # fmt: skip
    event_add(occurred_at=now - datetime.timedelta(hours=1), identity_name=who,
              datasource_id=ds.pk, classifications=["pii.email"],
              masked_columns=["public.customers.email"])  # fmt: skip
    event_add(occurred_at=now - datetime.timedelta(minutes=30), identity_name=who,
              datasource_id=ds.pk, action="block", outcome="blocked",
              statement="DROP TABLE public.customers")  # fmt: skip

    cdp = page.context.new_cdp_session(page)
    cdp.send("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Kolkata"})
    sign_in(security_user, "security")

    # The overview's 14-day card opens the explorer on those 14 days of statements.
    page.goto("/audit/")
    page.locator("#stat-statements").click()
    query = parse_qs(urlsplit(page.url).query)
    since = (now.date() - datetime.timedelta(days=13)).isoformat()
    assert query == {"type": ["statement"], "since": [f"{since}T00:00:00"]}, page.url
    expect(page.get_by_label("From (UTC)")).to_have_value(f"{since}T00:00")

    # The explorer opens on statements; a read shows what it masked; one badge per outcome.
    page.get_by_role("link", name="Explorer").click()
    expect(page.get_by_label("Event", exact=True)).to_have_value("statement")
    page.get_by_label("Identity", exact=True).fill(who)
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.audit-events tbody tr")
    expect(rows).to_have_count(5)
    expect(rows.filter(has_text="DROP TABLE").locator("td").last).to_have_text("blocked")
    expect(rows.filter(has_text="masked: public.customers.email")).to_have_count(1)
    # Dates: the browser's zone, the exact UTC instant kept, the relative time on hover.
    stamp = rows.first.locator("time[data-when]")
    iso = stamp.get_attribute("datetime")
    assert iso is not None
    expect(stamp).to_have_attribute("data-localised", "")
    assert stamp.inner_text().startswith(_local(iso)) and "UTC" not in stamp.inner_text()
    assert "ago" in (stamp.get_attribute("title") or "")
    # Every event type is offered; a policy change names the object and the field.
    page.get_by_label("Identity", exact=True).fill("")
    page.get_by_label("Event", exact=True).select_option("policy.change")
    page.get_by_role("button", name="Search").click()
    change = rows.filter(has_text=rule.name).first
    expect(change).to_contain_text(f"Changed guardrail rule {rule.name}: enabled")
    screenshot("reports-01-explorer")

    # The PII report: last 30 days, raw apart from masked, statements counted once.
    page.get_by_role("link", name="Who accessed PII").click()
    expect(page.get_by_label("Period", exact=True)).to_have_value("last_30")
    row = page.locator("#pii-report tbody tr", has_text=who)
    expect(row.locator('[data-count="raw"]')).to_have_text("3")
    expect(row.locator('[data-count="masked"]')).to_have_text("1")
    expect(row.locator('[data-count="statements"]')).to_have_text("4")
    screenshot("reports-02-pii")
    row.locator('[data-count="raw"]').get_by_role("link").click()
    expect(rows).to_have_count(3)
    expect(rows.filter(has_text="masked:")).to_have_count(0)

    # Changes as diffs: the schema's tables and columns, a field's before and after.
    page.goto(f"/datasources/{ds.pk}/")
    schema = page.locator("#history ul.schema-changes").first
    added = ["added table public.orders", "added column public.customers.email"]
    expect(schema.locator("li.change-added")).to_contain_text(added)
    expect(schema.locator("li.change-changed")).to_contain_text(
        "public.customers.id integer → bigint"
    )
    expect(page.locator("#history")).not_to_contain_text('"tables"')
    created = page.locator("#history table.diff-create").first
    expect(created.locator("tr", has_text="name").locator("td.after")).to_have_text(ds.name)
    screenshot("reports-03-history")
    page.goto(f"/guardrails/{rule.pk}/")
    update = page.locator("#history table.diff-update").first
    expect(update.locator("tr", has_text="enabled").locator("td.before")).to_have_text("yes")
    expect(update.locator("tr", has_text="enabled").locator("td.after")).to_have_text("no")

    # Sidecar counters in words; underlines drawn below underscores.
    page.goto("/sidecars/")
    expect(page.locator(f"#sidecar-{sidecar.pk} dl.counters")).to_contain_text("Statements allowed")
    link = page.get_by_role("link", name=ds.name).first
    style = link.evaluate(
        "a => [getComputedStyle(a).textDecorationSkipInk, getComputedStyle(a).textUnderlineOffset]"
    )
    assert style[0] == "none" and style[1] not in ("auto", "0px"), style
