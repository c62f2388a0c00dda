"""The explorer's search: every filter, and keyset pagination that neither repeats
nor skips events (also when many share one timestamp), against real PostgreSQL."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.reporting.selectors import AuditFilters, audit_events_iter, audit_events_search
from tests.audit.reporting.trail import event_add

pytestmark = pytest.mark.django_db


def _ids(events: list[Any]) -> list[int]:
    return [e.id for e in events]


def test_each_filter_narrows_to_the_matching_events(auditor_user, crm, lab, now) -> None:
    t = now - datetime.timedelta(hours=1)
    a = event_add(occurred_at=t, identity_name="alice", datasource_id=crm.pk,
                  tables=["public.customers"], classifications=["pii.email"],
                  statement="SELECT email FROM public.customers WHERE id = ?")  # fmt: skip
    b = event_add(occurred_at=t + datetime.timedelta(seconds=1), identity_name="bot",
                  identity_kind="agent", datasource_id=lab.pk, environment="sandbox",
                  action="block", outcome="blocked", tables=["public.orders"],
                  statement="DELETE FROM public.orders")  # fmt: skip
    c = event_add(occurred_at=t + datetime.timedelta(seconds=2), identity_name="svc",
                  identity_kind="service", datasource_id=crm.pk, type="session_start",
                  action="", outcome="", statement="")  # fmt: skip
    old = event_add(occurred_at=now - datetime.timedelta(days=40), identity_name="alice",
                    datasource_id=crm.pk)  # fmt: skip
    # An AI agent through the MCP server: its tool call, and the statement the call ran.
    call = event_add(occurred_at=t + datetime.timedelta(seconds=3), identity_name="bot",
                     identity_kind="agent", datasource_id=crm.pk, type="mcp.call",
                     application_name="mcp:claude-code")  # fmt: skip
    ran = event_add(occurred_at=t + datetime.timedelta(seconds=3), identity_name="bot",
                    identity_kind="agent", datasource_id=crm.pk,
                    application_name="mcp:claude-code")  # fmt: skip

    def search(**kw: Any) -> set[int]:
        events, _ = audit_events_search(user=auditor_user, filters=AuditFilters(**kw), limit=100)
        return set(_ids(events))

    assert search() >= {a, b, c, old, call, ran}
    assert search(identity="alice") == {a, old}
    assert search(identity_kind="agent") == {b, call, ran}
    assert search(channel="mcp") == {call, ran}
    assert search(channel="mcp", type="mcp.call") == {call}
    # Control-plane events (the datasources' creation) carry a datasource too.
    assert search(datasource_id=lab.pk, type="statement") == {b}
    assert search(environment="sandbox", type="statement") == {b}
    assert search(action="block") == {b}
    assert search(outcome="blocked") == {b}
    assert search(type="session_start") == {c}
    assert search(classification="pii.email") == {a}
    assert search(table="public.orders") == {b}
    assert search(q="delete from") == {b}  # case-insensitive, over the redacted text
    assert search(since=t, until=t + datetime.timedelta(seconds=2)) == {a, b}  # until exclusive
    assert search(identity="alice", since=now - datetime.timedelta(days=1)) == {a}
    assert search(identity="nobody") == set()


def test_keyset_pages_cover_everything_once_with_equal_timestamps(auditor_user, crm, now) -> None:
    # 23 events over only 4 distinct instants: page boundaries fall inside a tie.
    instants = [now - datetime.timedelta(minutes=m) for m in (1, 2, 3, 4)]
    expected = [event_add(occurred_at=instants[i % 4], datasource_id=crm.pk, identity_name="tie")
                for i in range(23)]  # fmt: skip
    filters = AuditFilters(identity="tie")
    seen: list[Any] = []
    cursor = None
    pages = 0
    while True:
        events, cursor = audit_events_search(
            user=auditor_user, filters=filters, after=cursor, limit=5
        )
        seen.extend(events)
        pages += 1
        if cursor is None:
            break
    assert pages == 5
    assert len(seen) == 23
    assert sorted(_ids(seen)) == sorted(expected)  # no duplicate, none missing
    # Newest first, ties broken by id, descending.
    keys = [(e.occurred_at, e.id) for e in seen]
    assert keys == sorted(keys, reverse=True)
    # The iterator (exports) walks the same events in the same order.
    assert _ids(list(audit_events_iter(user=auditor_user, filters=filters, batch=4))) == _ids(seen)


def test_last_page_exactly_full_has_no_next_cursor(auditor_user, crm, now) -> None:
    for i in range(6):
        event_add(occurred_at=now - datetime.timedelta(seconds=i), identity_name="six")
    events, cursor = audit_events_search(
        user=auditor_user, filters=AuditFilters(identity="six"), limit=3
    )
    events2, cursor2 = audit_events_search(
        user=auditor_user, filters=AuditFilters(identity="six"), after=cursor, limit=3
    )
    assert len(events) == 3 and len(events2) == 3 and cursor2 is None


def test_pages_use_no_offset_and_no_count(auditor_user, crm, now) -> None:
    for i in range(4):
        event_add(occurred_at=now - datetime.timedelta(seconds=i), identity_name="sql")
    _, cursor = audit_events_search(user=auditor_user, filters=AuditFilters(identity="sql"),
                                    limit=2)  # fmt: skip
    with CaptureQueriesContext(connection) as ctx:
        audit_events_search(
            user=auditor_user, filters=AuditFilters(identity="sql"), after=cursor, limit=2
        )
    sql = " ".join(q["sql"] for q in ctx.captured_queries).upper()
    assert "OFFSET" not in sql and "COUNT(" not in sql
    assert "LIMIT 3" in sql


@pytest.mark.parametrize("cursor", ["nonsense", "1.x", "..", "9" * 60 + ".1"])
def test_a_malformed_cursor_is_refused(auditor_user, cursor: str) -> None:
    with pytest.raises(ValueError):
        audit_events_search(user=auditor_user, filters=AuditFilters(), after=cursor)


@pytest.mark.parametrize("role", ["reviewer", "none"])
def test_other_roles_may_not_search(personas, role: str) -> None:
    with pytest.raises(PermissionDenied):
        audit_events_search(user=personas[role], filters=AuditFilters())
    with pytest.raises(PermissionDenied):
        audit_events_iter(user=personas[role], filters=AuditFilters())
