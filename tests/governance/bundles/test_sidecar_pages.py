"""Sidecar pages and management API: who sees what, register/rotate/revoke, token shown once."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from governance import services
from governance.bundles import bundle_publish
from governance.models import Sidecar, token_digest

pytestmark = pytest.mark.django_db


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_list_shows_heartbeat_revision_behind_version_counters_and_stale(
    demo_policy: Any, admin_user: Any, auditor_user: Any
) -> None:
    first = bundle_publish(datasource=demo_policy.datasource)
    live, _ = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="live-1"
    )
    services.sidecar_heartbeat_record(
        sidecar_id=live.pk,
        revision=first.revision,
        version="0.3.1",
        counters={"statements": 42, "blocked": 3},
        bundle_status={"rejected": 1, "last_rejection": {"reason": "signature mismatch"}},
    )
    old, _ = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="old-1"
    )
    services.sidecar_heartbeat_record(
        sidecar_id=old.pk, revision=first.revision, version="0.3.0", counters={}, bundle_status={}
    )
    Sidecar.objects.filter(pk=old.pk).update(
        last_heartbeat_at=timezone.now() - datetime.timedelta(hours=1)
    )
    services.masking_rule_update(
        actor=admin_user,
        rule=demo_policy.masking_rules[0],
        data={"strategy": "redact"},
        reason="stricter",
    )
    bundle_publish(datasource=demo_policy.datasource)  # live-1 is now one behind

    page = _client(auditor_user).get(reverse("governance:sidecar_list"))
    assert page.status_code == 200
    rows = {row["sidecar"].name: row for row in page.context["rows"]}
    assert rows["live-1"]["behind"] == "1 behind" and not rows["live-1"]["stale"]
    assert rows["old-1"]["stale"]
    html = page.content.decode()
    assert "0.3.1" in html and first.revision[:12] in html
    assert '<dt title="statements">Statements</dt><dd>42</dd>' in html  # counters in words
    assert "signature mismatch" in html and "stale" in html
    assert "Register a sidecar" not in html  # auditors read only
    assert "privileged database role" not in html
    services.sidecar_heartbeat_record(
        sidecar_id=old.pk,
        revision=first.revision,
        version="0.3.0",
        counters={"privileged_upstream": 1},
        bundle_status={},
    )
    # A sidecar allowed to run as a privileged role says so in every heartbeat.
    listing = _client(auditor_user).get(reverse("governance:sidecar_list")).content.decode()
    assert "privileged database role" in listing
    services.sidecar_heartbeat_record(
        sidecar_id=live.pk,
        revision=bundle_publish(datasource=demo_policy.datasource).revision,
        version="0.3.1",
        counters={},
        bundle_status={},
    )
    rows = {
        r["sidecar"].name: r
        for r in _client(auditor_user).get(reverse("governance:sidecar_list")).context["rows"]
    }
    assert rows["live-1"]["behind"] == "current"


def test_register_shows_the_token_once_and_stores_only_its_digest(
    demo_policy: Any, security_user: Any
) -> None:
    client = _client(security_user)
    response = client.post(
        reverse("governance:sidecar_list"),
        {"datasource": demo_policy.datasource.pk, "name": "edge-1"},
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    raw = response.context["raw"]
    assert raw.startswith("wds_")
    sidecar = Sidecar.objects.get(name="edge-1")
    assert sidecar.token_digest == token_digest(raw)
    assert raw not in str(Sidecar.objects.filter(pk=sidecar.pk).values().get())
    listing = client.get(reverse("governance:sidecar_list")).content.decode()
    assert raw not in listing and sidecar.token_prefix in listing
    # Same name twice on one datasource: an error on the form, not a 500.
    again = client.post(
        reverse("governance:sidecar_list"),
        {"datasource": demo_policy.datasource.pk, "name": "edge-1"},
    )
    assert again.status_code == 400


def test_rotate_and_revoke_need_an_editor_and_post(
    demo_policy: Any, security_user: Any, reviewer_user: Any, outsider_user: Any
) -> None:
    sidecar, raw = services.sidecar_register(
        actor=security_user, datasource=demo_policy.datasource, name="edge-2"
    )
    rotate = reverse("governance:sidecar_rotate", args=[sidecar.pk])
    revoke = reverse("governance:sidecar_revoke", args=[sidecar.pk])
    assert _client(reviewer_user).post(rotate).status_code == 403
    assert _client(outsider_user).get(reverse("governance:sidecar_list")).status_code == 403
    assert Client().get(reverse("governance:sidecar_list")).status_code == 302
    reviewer_post = _client(reviewer_user).post(
        reverse("governance:sidecar_list"), {"datasource": demo_policy.datasource.pk, "name": "x"}
    )
    assert reviewer_post.status_code == 403
    editor = _client(security_user)
    assert editor.get(rotate).status_code == 200  # a confirmation page; GET changes nothing
    sidecar.refresh_from_db()
    assert sidecar.token_digest == token_digest(raw)
    rotated = editor.post(rotate)
    assert rotated.status_code == 200 and rotated.context["raw"] != raw
    sidecar.refresh_from_db()
    assert sidecar.token_digest == token_digest(rotated.context["raw"])
    assert editor.post(revoke).status_code == 302
    sidecar.refresh_from_db()
    assert sidecar.revoked_at is not None
    assert editor.post(revoke).status_code == 400  # already revoked: said, not crashed
    assert editor.post(rotate).status_code == 400


def test_management_api_registers_rotates_and_revokes(
    demo_policy: Any, security_user: Any, auditor_user: Any
) -> None:
    editor = _client(security_user)
    created = editor.post(
        "/api/v1/sidecars/",
        {"datasource": "crm-prod", "name": "api-1"},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["token"].startswith("wds_") and created["Cache-Control"] == "no-store"
    reader = _client(auditor_user)
    listed = reader.get("/api/v1/sidecars/").json()
    item = next(i for i in listed["results"] if i["id"] == body["id"])
    assert "token" not in item and item["stale"] is True
    denied = reader.post(
        "/api/v1/sidecars/",
        {"datasource": "crm-prod", "name": "x"},
        content_type="application/json",
    )
    assert denied.status_code == 403
    rotated = editor.post(f"/api/v1/sidecars/{body['id']}/rotate/")
    assert rotated.status_code == 200 and rotated.json()["token"] != body["token"]
    revoked = editor.post(f"/api/v1/sidecars/{body['id']}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    bad = editor.post(
        "/api/v1/sidecars/",
        {"datasource": "nope", "name": "Bad Name"},
        content_type="application/json",
    )
    assert bad.status_code == 400
