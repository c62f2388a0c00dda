"""Who may open the audit pages and exports: admin, security and auditor. Anonymous
→ sign-in, reviewer and role none → 403, another person's saved search or
evidence pack → 404, an unknown event → 404, GET on a POST action → 405."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.urls import reverse

from audit.report_models import EvidencePack, SavedSearch
from tests.audit.reporting.trail import event_add

pytestmark = pytest.mark.django_db

READERS = ["admin", "security", "auditor"]
REFUSED = ["reviewer", "none"]


@pytest.fixture
def objects(personas: dict[str, Any], crm: Any, now: datetime.datetime) -> dict[str, Any]:
    event = event_add(occurred_at=now - datetime.timedelta(minutes=1), datasource_id=crm.pk)
    # Owned by the admin: personal objects of someone else for every other reader.
    search = SavedSearch.objects.create(
        owner=personas["admin"], name="admins-search", query="type=statement"
    )
    pack = EvidencePack.objects.create(
        requested_by=personas["admin"],
        period_start=datetime.date(2026, 1, 1),
        period_end=datetime.date(2026, 2, 1),
        status="done",
        content=b"PK",
        progress=100,
    )
    return {"event": event, "search": search, "pack": pack}


def _get_pages(objects: dict[str, Any]) -> list[str]:
    return [
        reverse("audit:overview"),
        reverse("audit:explorer"),
        reverse("audit:event_detail", args=[objects["event"]]),
        reverse("audit:export", args=["csv"]),
        reverse("audit:export", args=["jsonl"]),
        reverse("audit:pii_report"),
        reverse("audit:pii_report") + "?format=csv",
        reverse("audit:evidence_list"),
    ]


def _personal_pages(objects: dict[str, Any]) -> list[str]:
    return [
        reverse("audit:saved_search_open", args=[objects["search"].pk]),
        reverse("audit:evidence_status", args=[objects["pack"].pk]),
        reverse("audit:evidence_download", args=[objects["pack"].pk]),
    ]


def test_anonymous_is_sent_to_sign_in(client, objects) -> None:
    for url in _get_pages(objects) + _personal_pages(objects):
        response = client.get(url)
        assert response.status_code == 302, url
        assert "/accounts/login/" in response["Location"]
    for url in (
        reverse("audit:saved_search_create"),
        reverse("audit:saved_search_delete", args=[objects["search"].pk]),
    ):
        assert client.post(url).status_code == 302


@pytest.mark.parametrize("role", REFUSED)
def test_other_roles_get_403_everywhere(client, personas, objects, role: str) -> None:
    client.force_login(personas[role])
    for url in _get_pages(objects) + _personal_pages(objects):
        assert client.get(url).status_code == 403, url
    assert client.post(reverse("audit:saved_search_create"), {"name": "x"}).status_code == 403
    delete = reverse("audit:saved_search_delete", args=[objects["search"].pk])
    assert client.post(delete).status_code == 403
    assert client.post(reverse("audit:evidence_list"), {}).status_code == 403
    assert SavedSearch.objects.count() == 1 and EvidencePack.objects.count() == 1


@pytest.mark.parametrize("role", READERS)
def test_readers_see_every_page(client, personas, objects, role: str) -> None:
    client.force_login(personas[role])
    for url in _get_pages(objects):
        response = client.get(url)
        assert response.status_code == 200, url


@pytest.mark.parametrize("role", ["security", "auditor"])
def test_another_persons_saved_search_and_pack_are_404(client, personas, objects,
                                                        role: str) -> None:  # fmt: skip
    client.force_login(personas[role])
    for url in _personal_pages(objects):
        assert client.get(url).status_code == 404, url
    delete = reverse("audit:saved_search_delete", args=[objects["search"].pk])
    assert client.post(delete).status_code == 404
    assert SavedSearch.objects.filter(pk=objects["search"].pk).exists()
    # Nor are they listed.
    opened = reverse("audit:saved_search_open", args=[objects["search"].pk])
    assert opened not in client.get(reverse("audit:explorer")).content.decode()
    listed = client.get(reverse("audit:evidence_list")).content.decode()
    assert f'id="pack-{objects["pack"].pk}"' not in listed


def test_owner_and_admin_reach_their_objects(client, personas, objects) -> None:
    client.force_login(personas["admin"])
    for url in _personal_pages(objects):
        assert client.get(url).status_code in (200, 302), url


def test_unknown_event_is_404(client, auditor_user) -> None:
    client.force_login(auditor_user)
    assert client.get(reverse("audit:event_detail", args=[987654321])).status_code == 404


def test_post_actions_refuse_get(client, auditor_user, objects) -> None:
    client.force_login(auditor_user)
    assert client.get(reverse("audit:saved_search_create")).status_code == 405
    delete = reverse("audit:saved_search_delete", args=[objects["search"].pk])
    assert client.get(delete).status_code == 405


def test_forms_need_csrf(auditor_user, objects) -> None:
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(auditor_user)
    create = strict.post(reverse("audit:saved_search_create"), {"name": "n", "query": ""})
    assert create.status_code == 403
    pack = strict.post(
        reverse("audit:evidence_list"),
        {"period_start": "2026-01-01", "period_end": "2026-02-01"},
    )
    assert pack.status_code == 403
    assert SavedSearch.objects.count() == 1 and EvidencePack.objects.count() == 1


def test_audit_nav_only_for_readers(client, personas) -> None:
    client.force_login(personas["reviewer"])
    assert (
        reverse("audit:explorer")
        not in client.get(reverse("governance:team_list")).content.decode()
    )
    client.force_login(personas["auditor"])
    page = client.get(reverse("governance:team_list")).content.decode()
    assert reverse("audit:explorer") in page and reverse("audit:pii_report") in page
