"""The explorer pages through the real views: filters, pages, the event proof,
saved searches and the streamed exports."""

from __future__ import annotations

import csv
import datetime
import io
import json
from typing import Any

import pytest
from django.http import StreamingHttpResponse
from django.urls import reverse

from audit.report_models import SavedSearch
from tests.audit.reporting.trail import event_add

pytestmark = pytest.mark.django_db


def test_explorer_filters_and_pages_without_repeats(client, auditor_user, crm, now) -> None:
    t = now - datetime.timedelta(minutes=5)
    ids = [event_add(occurred_at=t, identity_name="paged", datasource_id=crm.pk) for _ in range(60)]
    event_add(occurred_at=t, identity_name="other", datasource_id=crm.pk)
    client.force_login(auditor_user)
    first = client.get(reverse("audit:explorer"), {"identity": "paged"})
    assert first.status_code == 200
    page1 = [e.id for e in first.context["events"]]
    assert len(page1) == 50
    next_url = first.context["next_url"]
    assert "after=" in next_url and "identity=paged" in next_url
    second = client.get(reverse("audit:explorer") + next_url)
    page2 = [e.id for e in second.context["events"]]
    assert second.context["next_url"] == ""
    assert sorted(page1 + page2) == sorted(ids)
    assert b"crm-prod" in first.content


def test_explorer_rejects_bad_input_clearly(client, auditor_user) -> None:
    client.force_login(auditor_user)
    bad_range = client.get(
        reverse("audit:explorer"), {"since": "2026-02-01T00:00", "until": "2026-01-01T00:00"}
    )
    assert bad_range.status_code == 400
    assert b"must be after" in bad_range.content
    assert client.get(reverse("audit:explorer"), {"action": "nuke"}).status_code == 400
    assert client.get(reverse("audit:explorer"), {"after": "garbage"}).status_code == 400
    assert client.get(reverse("audit:explorer"), {"identity": "a\x00b"}).status_code == 400
    too_long = client.get(reverse("audit:explorer"), {"classification": "x" * 101})
    assert too_long.status_code == 400


def test_drilldown_works_for_a_label_no_longer_defined(client, auditor_user, crm, now) -> None:
    gone = event_add(occurred_at=now - datetime.timedelta(minutes=1), datasource_id=crm.pk,
                     classifications=["legacy.tax_id"])  # fmt: skip
    client.force_login(auditor_user)
    response = client.get(reverse("audit:explorer"), {"classification": "legacy.tax_id"})
    assert response.status_code == 200
    assert [e.id for e in response.context["events"]] == [gone]
    assert b'<datalist id="classification-names">' in response.content


def test_event_detail_shows_a_valid_proof(client, auditor_user, crm, now) -> None:
    t = now - datetime.timedelta(minutes=3)
    first = event_add(occurred_at=t, datasource_id=crm.pk)
    middle = event_add(occurred_at=t + datetime.timedelta(seconds=1), datasource_id=crm.pk,
                       statement="SELECT ssn FROM public.customers")  # fmt: skip
    last = event_add(occurred_at=t + datetime.timedelta(seconds=2), datasource_id=crm.pk)
    client.force_login(auditor_user)
    response = client.get(reverse("audit:event_detail", args=[middle]))
    proof = response.context["proof"]
    assert proof.ok and proof.hash_ok and proof.prev_ok and proof.next_ok
    assert proof.prev.id == first and proof.next.id == last
    assert proof.recomputed_hash == proof.event.hash
    body = response.content.decode()
    assert "Chain proof" in body and proof.recomputed_hash in body
    assert reverse("audit:event_detail", args=[first]) + "?at=" in body
    assert reverse("audit:event_detail", args=[last]) + "?at=" in body


def test_event_links_carry_the_time_and_a_wrong_time_is_404(client, auditor_user, crm,
                                                            now) -> None:  # fmt: skip
    from audit.chain import micros

    at = now - datetime.timedelta(minutes=2)
    event = event_add(occurred_at=at, datasource_id=crm.pk, identity_name="linked")
    client.force_login(auditor_user)
    page = client.get(reverse("audit:explorer"), {"identity": "linked"}).content.decode()
    url = f"{reverse('audit:event_detail', args=[event])}?at={micros(at)}"
    assert url in page
    assert client.get(url).status_code == 200
    wrong = f"{reverse('audit:event_detail', args=[event])}?at={micros(at) + 1}"
    assert client.get(wrong).status_code == 404
    bad = f"{reverse('audit:event_detail', args=[event])}?at=soon"
    assert client.get(bad).status_code == 404


def test_event_detail_shows_a_tampered_event_as_broken(client, auditor_user, crm, now) -> None:
    t = now - datetime.timedelta(minutes=3)
    event_add(occurred_at=t, datasource_id=crm.pk)
    forged = event_add(occurred_at=t + datetime.timedelta(seconds=1), datasource_id=crm.pk,
                       stored_hash="f" * 64)  # fmt: skip
    after = event_add(occurred_at=t + datetime.timedelta(seconds=2), datasource_id=crm.pk)
    client.force_login(auditor_user)
    proof = client.get(reverse("audit:event_detail", args=[forged])).context["proof"]
    assert not proof.ok and not proof.hash_ok
    assert proof.next_ok  # the next event links to the forged hash it saw
    # The following event is intact itself, yet its link points at a forged hash.
    proof_after = client.get(reverse("audit:event_detail", args=[after])).context["proof"]
    assert proof_after.hash_ok and proof_after.prev_ok


def test_saved_search_round_trip(client, auditor_user, security_user) -> None:
    client.force_login(auditor_user)
    query = "identity=alice&action=block&after=123.4"
    response = client.post(
        reverse("audit:saved_search_create"), {"name": " Alice blocked ", "query": query}
    )
    search = SavedSearch.objects.get(owner=auditor_user)
    assert search.name == "Alice blocked"
    assert "after" not in search.query  # never a cursor
    assert response.status_code == 302 and "identity=alice" in response["Location"]
    opened = client.get(reverse("audit:saved_search_open", args=[search.pk]))
    assert opened.status_code == 302 and "action=block" in opened["Location"]
    # Same name again: refused with a clear message, nothing lost.
    again = client.post(
        reverse("audit:saved_search_create"), {"name": "Alice blocked", "query": ""}, follow=True
    )
    assert "already have a saved search" in again.content.decode()
    # Invalid filters are not saved.
    client.post(reverse("audit:saved_search_create"), {"name": "bad", "query": "action=nuke"})
    assert SavedSearch.objects.filter(owner=auditor_user).count() == 1
    client.post(reverse("audit:saved_search_delete", args=[search.pk]))
    assert not SavedSearch.objects.filter(pk=search.pk).exists()


def _body(response: Any) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content).decode()


def test_exports_are_streamed_and_complete(client, auditor_user, crm, now, settings) -> None:
    settings.WARDEN_AUDIT_EXPORT_BATCH = 100
    t = now - datetime.timedelta(minutes=10)
    ids = [
        event_add(
            occurred_at=t + datetime.timedelta(seconds=i % 3),
            identity_name="exp",
            datasource_id=crm.pk,
            classifications=["pii.email"],
            extra={"reasons": []},
            statement="=cmd|' /C calc'!A0" if i == 0 else "SELECT 1",
        )
        for i in range(250)
    ]
    event_add(occurred_at=t, identity_name="not-exported", datasource_id=crm.pk)
    client.force_login(auditor_user)
    response = client.get(reverse("audit:export", args=["csv"]), {"identity": "exp"})
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(_body(response))))
    assert sorted(int(r["id"]) for r in rows) == sorted(ids)  # 3 keyset batches, none lost
    assert {r["identity_name"] for r in rows} == {"exp"}
    assert rows[0]["classifications"] == "pii.email"
    formula = [r for r in rows if "calc" in r["statement"]]
    assert formula[0]["statement"].startswith("'=")  # not a spreadsheet formula
    jsonl = client.get(reverse("audit:export", args=["jsonl"]), {"identity": "exp"})
    assert jsonl.streaming and jsonl["Content-Type"] == "application/x-ndjson"
    records = [json.loads(line) for line in _body(jsonl).splitlines()]
    assert sorted(r["id"] for r in records) == sorted(ids)
    assert records[0]["classifications"] == ["pii.email"]
    assert records[0]["extra"] == {"reasons": []}
    assert datetime.datetime.fromisoformat(records[0]["occurred_at"]).tzinfo is not None


def test_export_refuses_unknown_format_and_bad_filters(client, auditor_user) -> None:
    client.force_login(auditor_user)
    assert client.get(reverse("audit:export", args=["xml"])).status_code == 404
    assert client.get(reverse("audit:export", args=["csv"]), {"action": "x"}).status_code == 400
