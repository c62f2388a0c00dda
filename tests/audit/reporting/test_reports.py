"""The PII access report (from the daily rollup), its periods and its drill-down."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied

from audit.reporting.reports import (
    Period,
    period_named,
    pii_access_report,
    sensitive_classifications,
)
from audit.reporting.selectors import audit_events_search
from tests.audit.reporting.trail import event_add

pytestmark = pytest.mark.django_db


def test_period_names() -> None:
    today = datetime.date(2026, 11, 23)
    last = period_named("last_quarter", today=today)
    assert (last.start, last.end) == (datetime.date(2026, 7, 1), datetime.date(2026, 10, 1))
    assert "Q3 2026" in last.label
    jan = period_named("last_quarter", today=datetime.date(2026, 1, 5))
    assert (jan.start, jan.end) == (datetime.date(2025, 10, 1), datetime.date(2026, 1, 1))
    this = period_named("this_quarter", today=today)
    assert (this.start, this.end) == (datetime.date(2026, 10, 1), datetime.date(2026, 11, 24))
    last_30 = period_named("last_30", today=today)
    assert (last_30.start, last_30.end) == (
        datetime.date(2026, 10, 25),
        datetime.date(2026, 11, 24),
    )
    assert period_named("bogus", today=today) == last_30  # the default


def test_sensitive_means_pii_and_confidential_or_restricted() -> None:
    names = set(sensitive_classifications())
    assert "pii.email" in names
    assert "financial.card" in names  # restricted, though not named pii.*
    assert not any(n.startswith("public") for n in names)


def test_report_counts_statements_raw_and_masked_and_drills_down(auditor_user, crm, lab,
                                                                 now) -> None:  # fmt: skip
    day = now - datetime.timedelta(days=2)
    period = Period(
        (now - datetime.timedelta(days=10)).date(), (now + datetime.timedelta(days=1)).date(), "t"
    )
    # alice: three statements reading two labels each, read raw (she is exempt)…
    for i in range(3):
        event_add(occurred_at=day + datetime.timedelta(minutes=i), identity_name="alice",
                  datasource_id=crm.pk, classifications=["pii.email", "pii.ssn"])  # fmt: skip
    # … and one through masks, on another datasource.
    event_add(occurred_at=day, identity_name="alice", datasource_id=lab.pk, environment="sandbox",
              classifications=["pii.email"], masked_columns=["public.c.email"])  # fmt: skip
    event_add(occurred_at=day, identity_name="bob", identity_kind="service", datasource_id=crm.pk,
              classifications=["financial.card", "internal.metrics"],
              masked_columns=["public.c.card"])  # fmt: skip
    # Not counted: refused, not classified as sensitive, outside the period.
    event_add(occurred_at=day, identity_name="eve", datasource_id=crm.pk, action="block",
              outcome="blocked", classifications=["pii.email"])  # fmt: skip
    event_add(occurred_at=day, identity_name="carol", datasource_id=crm.pk,
              classifications=["internal.metrics"])  # fmt: skip
    event_add(occurred_at=now - datetime.timedelta(days=30), identity_name="alice",
              datasource_id=crm.pk, classifications=["pii.email"])  # fmt: skip

    rows = pii_access_report(user=auditor_user, period=period)
    table = {r.identity_name: (r.raw, r.masked, r.statements) for r in rows}
    # Statements, not classification rows: alice's 3 two-label reads count 3, not 6.
    assert table == {"alice": (3, 1, 4), "bob": (0, 1, 1)}
    alice = rows[0]
    assert [(c.classification, c.raw, c.masked) for c in alice.classifications] == [
        ("pii.email", 3, 1),
        ("pii.ssn", 3, 0),
    ]
    # Only sensitive labels are listed (internal.metrics is not).
    assert [c.classification for c in rows[1].classifications] == ["financial.card"]
    # The drill-downs find exactly the statements that were counted.
    events, _ = audit_events_search(user=auditor_user, filters=alice.drilldown, limit=100)
    assert len(events) == alice.statements
    raw = dataclasses.replace(alice.drilldown, reads="raw")
    events, _ = audit_events_search(user=auditor_user, filters=raw, limit=100)
    assert len(events) == alice.raw and not any(e.masked_columns for e in events)
    email = alice.classifications[0]
    events, _ = audit_events_search(user=auditor_user, filters=email.drilldown, limit=100)
    assert len(events) == email.statements
    assert all("pii.email" in e.classifications and e.identity_name == "alice" for e in events)
    only_lab = pii_access_report(user=auditor_user, period=period, datasource_id=lab.pk)
    assert [(r.identity_name, r.raw, r.masked) for r in only_lab] == [("alice", 0, 1)]


def test_report_needs_an_audit_role(reviewer_user) -> None:
    with pytest.raises(PermissionDenied):
        pii_access_report(user=reviewer_user, period=period_named("last_quarter"))


def test_report_page_lists_the_largest_and_the_csv_holds_all(client, auditor_user, crm, now,
                                                             monkeypatch) -> None:  # fmt: skip
    import audit.views

    monkeypatch.setattr(audit.views, "REPORT_ROWS_SHOWN", 2)
    day = now - datetime.timedelta(days=1)
    for i, name in enumerate(["ann", "ben", "cat"]):
        for _ in range(i + 1):
            event_add(occurred_at=day, identity_name=name, datasource_id=crm.pk,
                      classifications=["pii.email"])  # fmt: skip
    client.force_login(auditor_user)
    page = client.get("/audit/reports/pii/")  # the last 30 days by default
    assert page.context["period_name"] == "last_30"
    assert [r["row"].identity_name for r in page.context["rows"]] == ["cat", "ben"]
    assert page.context["truncated"] and page.context["total"] == 6
    csv_response = client.get("/audit/reports/pii/", {"period": "last_30", "format": "csv"})
    assert csv_response["Content-Type"].startswith("text/csv")
    lines = csv_response.content.decode().splitlines()
    assert lines[0] == "identity,identity_kind,classification,statements,raw,masked"
    assert sorted(lines[1:]) == ["ann,human,pii.email,1,1,0", "ben,human,pii.email,2,2,0",
                                 "cat,human,pii.email,3,3,0"]  # fmt: skip


def test_overview_counts_come_from_the_activity_rollup(auditor_user, crm, lab, now) -> None:
    from audit.reporting.reports import activity_by_day, refused_recent

    today = now.date()
    # Noon today: "a few minutes ago" must not fall on yesterday just after midnight.
    now = datetime.datetime.combine(today, datetime.time(12), tzinfo=datetime.UTC)
    event_add(occurred_at=now, datasource_id=crm.pk)
    event_add(occurred_at=now, datasource_id=crm.pk)
    event_add(occurred_at=now, datasource_id=lab.pk, environment="sandbox")
    event_add(occurred_at=now - datetime.timedelta(days=3), datasource_id=crm.pk)
    event_add(occurred_at=now - datetime.timedelta(days=20), datasource_id=crm.pk)  # too old
    event_add(occurred_at=now, datasource_id=crm.pk, type="session_start")  # not a statement
    blocked = event_add(occurred_at=now - datetime.timedelta(minutes=5), datasource_id=crm.pk,
                        action="block", outcome="blocked", statement="DROP TABLE t")  # fmt: skip
    held = event_add(occurred_at=now - datetime.timedelta(minutes=1), datasource_id=crm.pk,
                     action="review", outcome="held")  # fmt: skip
    event_add(
        occurred_at=now - datetime.timedelta(days=9),
        datasource_id=crm.pk,
        action="block",
        outcome="blocked",
    )  # fmt: skip  (outside the 7 days)

    days = activity_by_day(user=auditor_user, days=14)
    assert len(days) == 14 and days[-1]["day"] == today
    assert days[-1]["by_env"] == {"production": 4, "sandbox": 1}
    assert days[-4]["total"] == 1
    assert sum(d["total"] for d in days) == 7  # the 9-day-old block is in the chart

    refused = refused_recent(user=auditor_user)
    assert (refused["blocked"], refused["held"]) == (1, 1)
    assert [e.pk for e in refused["latest"]] == [held, blocked]


def test_overview_needs_an_audit_reader(outsider_user) -> None:
    from audit.reporting.reports import activity_by_day, refused_recent

    with pytest.raises(PermissionDenied):
        activity_by_day(user=outsider_user)
    with pytest.raises(PermissionDenied):
        refused_recent(user=outsider_user)


def test_rollups_rebuild_recounts_from_a_day_on(auditor_user, crm, now) -> None:
    from django.core.management import CommandError, call_command
    from django.db import connection

    from audit.reporting.reports import activity_by_day

    old = now - datetime.timedelta(days=5)
    event_add(occurred_at=old, datasource_id=crm.pk, classifications=["pii.email"])
    event_add(occurred_at=now, datasource_id=crm.pk, classifications=["pii.email"])
    event_add(occurred_at=now, datasource_id=crm.pk, action="block", outcome="blocked")

    def counts() -> tuple[list[Any], list[Any]]:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT day, classifications, masked, events FROM audit_access_daily ORDER BY 1"
            )
            access = cur.fetchall()
            cur.execute("SELECT day, outcome, events FROM audit_activity_daily ORDER BY 1, 2")
            return access, cur.fetchall()

    right = counts()
    with connection.cursor() as cur:  # what a deployment's old processes leave: nothing
        cur.execute("DELETE FROM audit_access_daily")
        cur.execute("DELETE FROM audit_activity_daily")
    call_command("audit_rollups_rebuild", since=now.date().isoformat())
    access, activity = counts()
    assert access == [r for r in right[0] if r[0] >= now.date()]
    assert activity == [r for r in right[1] if r[0] >= now.date()]
    assert activity_by_day(user=auditor_user)[-1]["total"] == 2

    call_command("audit_rollups_rebuild", since=old.date().isoformat())
    call_command("audit_rollups_rebuild", since=old.date().isoformat())  # idempotent
    assert counts() == right
    for bad in ("yesterday", "2026-02-30"):
        with pytest.raises(CommandError):
            call_command("audit_rollups_rebuild", since=bad)
