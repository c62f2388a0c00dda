"""The home page per role, its counts leading to the lists they count, and the
sidecar list's state filter ("never connected" is not "stale")."""

from __future__ import annotations

import datetime
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import ChangeRecord
from governance import services
from governance.models import ClassificationStatus, ColumnClassification, Sidecar
from tests.approvals import scenario

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


def _card(html: str, card_id: str) -> tuple[int, str]:
    """(the number on the card, where it links)."""
    match = re.search(
        rf'<a class="stat[^"]*" id="{card_id}" href="([^"]+)"><span class="value">(\d+)<', html
    )
    assert match, f"no card {card_id}"
    return int(match.group(2)), match.group(1).replace("&amp;", "&")


@pytest.fixture
def sidecars(admin_user: Any, demo_policy: Any) -> dict[str, Sidecar]:
    """One sidecar in each state: never heard from, silent, live and privileged, revoked."""
    ds = demo_policy.datasource
    made = {
        name: services.sidecar_register(actor=admin_user, datasource=ds, name=name)[0]
        for name in ("fresh", "silent", "priv", "gone")
    }
    for name in ("silent", "priv"):
        services.sidecar_heartbeat_record(
            sidecar_id=made[name].pk,
            revision="",
            version="1",
            counters={"privileged_upstream": 1} if name == "priv" else {"connections": 3},
            bundle_status={},
        )
    Sidecar.objects.filter(pk=made["silent"].pk).update(
        last_heartbeat_at=timezone.now() - datetime.timedelta(hours=1)
    )
    services.sidecar_revoke(actor=admin_user, sidecar=made["gone"])
    return made


def test_reviewer_lands_on_the_inbox_and_auditor_on_the_audit_overview(
    client: Client, personas: dict[str, Any]
) -> None:
    client.force_login(personas["reviewer"])
    assert client.get("/").url == reverse("approvals:inbox")
    client.force_login(personas["auditor"])
    response = client.get("/", follow=True)
    assert response.redirect_chain == [(reverse("audit:overview"), 302)]
    assert b'id="chain-status"' in response.content  # the last verification's card
    client.force_login(personas["none"])
    assert client.get("/").status_code == 403
    client.logout()
    assert client.get("/").url.startswith(reverse("account_login"))


def test_security_home_counts_lead_to_the_lists_they_count(
    client: Client, personas: dict[str, Any], demo_policy: Any, sidecars: Any
) -> None:
    security = personas["security"]
    ColumnClassification.objects.filter(pk=demo_policy.columns[0].pk).update(
        status=ClassificationStatus.PROPOSED
    )
    first = scenario.hold(datasource=demo_policy.datasource, identity=demo_policy.agent)
    scenario.hold(
        datasource=demo_policy.datasource, identity=demo_policy.service, statement="DELETE FROM x"
    )
    client.force_login(security)
    html = client.get("/").content.decode()

    count, url = _card(html, "card-findings")
    assert url == reverse("governance:review_queue")
    listed = client.get(url).content.decode()
    assert count == 1
    assert re.findall(r'<tr id="review-(\d+)"', listed) == [str(demo_policy.columns[0].pk)]

    # Security watches approvals without reading the inbox: the count of every
    # datasource, leading to the held statements since the oldest pending one.
    count, url = _card(html, "card-approvals")
    assert count == 2
    parts = urlsplit(url)
    assert parts.path == reverse("audit:explorer")
    query = parse_qs(parts.query)
    assert query["outcome"] == ["held"] and query["type"] == ["statement"]
    oldest = datetime.datetime.fromisoformat(query["since"][0]).replace(tzinfo=datetime.UTC)
    assert abs((oldest - first.created_at).total_seconds()) < 1
    assert client.get(url).status_code == 200

    for card, name in [
        ("card-sidecars-never", "fresh"),
        ("card-sidecars-stale", "silent"),
        ("card-sidecars-privileged", "priv"),
    ]:
        count, url = _card(html, card)
        assert count == 1, card
        listed = client.get(url).content.decode()
        rows = re.findall(r'<tr id="sidecar-(\d+)"', listed)
        assert rows == [str(sidecars[name].pk)], card

    count, url = _card(html, "card-changes")
    since = timezone.localdate() - datetime.timedelta(days=7)
    assert url == f"{reverse('governance:change_list')}?since={since:%Y-%m-%d}"
    assert count == ChangeRecord.objects.filter(at__date__gte=since).count() > 0
    # An older change is not counted, and the filtered list leaves it out too.
    old = ChangeRecord.objects.order_by("at").first()
    ChangeRecord.objects.filter(pk=old.pk).update(at=timezone.now() - datetime.timedelta(days=30))
    html = client.get("/").content.decode()
    assert _card(html, "card-changes")[0] == count - 1
    listed = client.get(url)
    assert listed.context["page"].paginator.count == count - 1
    assert "Recent changes" in html and 'id="recent-changes"' in html


def test_admin_pending_approvals_lead_to_the_inbox(
    client: Client, admin_user: Any, demo_policy: Any
) -> None:
    scenario.hold(datasource=demo_policy.datasource, identity=demo_policy.agent)
    client.force_login(admin_user)
    count, url = _card(client.get("/").content.decode(), "card-approvals")
    assert (count, url) == (1, reverse("approvals:inbox"))


def test_sidecar_pages_say_never_connected_not_stale(
    client: Client, personas: dict[str, Any], sidecars: Any
) -> None:
    client.force_login(personas["reviewer"])  # any viewer reads the list and filters it
    html = client.get(reverse("governance:sidecar_list")).content.decode()

    def status(name: str) -> str:
        row = html[html.index(f'id="sidecar-{sidecars[name].pk}"') :]
        return row[: row.index("</tr>")]

    assert "never connected" in status("fresh") and ">stale<" not in status("fresh")
    assert ">stale<" in status("silent") and "never connected" not in status("silent")
    assert "privileged database role" in status("priv") and ">live<" in status("priv")
    assert ">revoked<" in status("gone")
    revoked = client.get(reverse("governance:sidecar_list") + "?state=revoked")
    assert re.findall(r'<tr id="sidecar-(\d+)"', revoked.content.decode()) == [
        str(sidecars["gone"].pk)
    ]
    # An unknown state lists every sidecar rather than failing.
    every = client.get(reverse("governance:sidecar_list") + "?state=nonsense").content.decode()
    assert len(re.findall(r'<tr id="sidecar-', every)) == 4
    client.force_login(personas["auditor"])
    overview = client.get(reverse("audit:overview")).content.decode()
    card = overview[overview.index('id="sidecar-health"') :]
    assert "never connected" in card and ">stale<" in card
