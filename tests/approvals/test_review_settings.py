"""A datasource's hold time, grant binding and values retention: validated in the
service, the API and the page (the hold time at most WARDEN_APPROVAL_MAX_HOLD_SECONDS),
and the hold time carried to the sidecar in the datasource's policy bundle."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from approvals import services
from approvals.models import ReviewSettings
from config.celery import app as celery_app
from governance.bundles import bundle_compile, bundle_current
from tests.governance.test_api_access import Api

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once", "review_once")]

URL = "/api/v1/review-settings/crm-prod/"


def test_the_service_refuses_a_hold_time_above_the_maximum(review_setup, admin_user, settings):
    for bad in (0, settings.WARDEN_APPROVAL_MAX_HOLD_SECONDS + 1):
        with pytest.raises(ValidationError) as info:
            services.review_settings_set(
                actor=admin_user, datasource=review_setup.datasource, data={"hold_seconds": bad}
            )
        assert set(info.value.message_dict) == {"hold_seconds"}
        assert "300" in info.value.message_dict["hold_seconds"][0]
    with pytest.raises(ValidationError) as info:
        services.review_settings_set(
            actor=admin_user,
            datasource=review_setup.datasource,
            data={"values_retention_seconds": 59, "grant_binding": "any"},
        )
    assert set(info.value.message_dict) == {"values_retention_seconds"}
    assert not ReviewSettings.objects.exists()


def test_the_api_edits_hold_binding_and_retention(review_setup, personas):
    security, reviewer = Api(personas["security"]), Api(personas["reviewer"])
    payload = {"hold_seconds": 45, "grant_binding": "shape", "values_retention_seconds": 3600}
    assert reviewer.call("PATCH", URL, payload).status_code == 403
    for bad, field in (
        ({"hold_seconds": 301}, "hold_seconds"),
        ({"hold_seconds": 0}, "hold_seconds"),
        ({"grant_binding": "values"}, "grant_binding"),
        ({"values_retention_seconds": 5}, "values_retention_seconds"),
    ):
        answer = security.call("PATCH", URL, bad)
        assert answer.status_code == 400, bad
        assert set(answer.json()["error"]["fields"]) == {field}
    message = security.call("PATCH", URL, {"hold_seconds": 301}).json()["error"]["fields"]
    assert "at most 300 s" in message["hold_seconds"][0]
    assert not ReviewSettings.objects.exists()
    ok = security.call("PATCH", URL, payload)
    assert ok.status_code == 200, ok.content
    assert {k: ok.json()[k] for k in payload} == payload
    got = reviewer.call("GET", URL).json()
    assert {k: got[k] for k in payload} == payload
    cleared = security.call("PATCH", URL, {"hold_seconds": None})
    assert cleared.status_code == 200 and cleared.json()["hold_seconds"] is None


def test_the_bundle_carries_the_datasources_hold_time(review_setup, admin_user, settings):
    datasource = review_setup.datasource
    assert bundle_compile(datasource=datasource)["approvals"] == {"hold_seconds": 20}
    settings.WARDEN_APPROVAL_HOLD_SECONDS = 25
    assert bundle_compile(datasource=datasource)["approvals"] == {"hold_seconds": 25}
    services.review_settings_set(
        actor=admin_user, datasource=datasource, data={"hold_seconds": 300}
    )
    # bundle_compile proves the bundle with the engine's own loader (its JSON schema).
    assert bundle_compile(datasource=datasource)["approvals"] == {"hold_seconds": 300}


def test_a_review_settings_change_republishes_the_bundle(
    review_setup, admin_user, django_capture_on_commit_callbacks
):
    datasource = review_setup.datasource
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True  # the recompile runs here, on commit
    try:
        with django_capture_on_commit_callbacks(execute=True):
            services.review_settings_set(
                actor=admin_user, datasource=datasource, data={"hold_seconds": 90}
            )
    finally:
        celery_app.conf.task_always_eager = eager
    current = bundle_current(datasource_id=datasource.pk)
    assert current is not None
    envelope = json.loads(current[1])
    assert envelope["bundle"]["approvals"] == {"hold_seconds": 90}


# --- the page --------------------------------------------------------------------------------


def _page(review_setup: Any) -> str:
    return reverse("approvals:review_settings", args=[review_setup.datasource.pk])


def test_only_admin_and_security_open_the_page(client, review_setup, personas):
    url = _page(review_setup)
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    for role in ("reviewer", "auditor", "none"):
        client.force_login(personas[role])
        assert client.get(url).status_code == 403, role
        assert client.post(url, {"hold_seconds": "30"}).status_code == 403, role
    assert not ReviewSettings.objects.exists()
    for role in ("admin", "security"):
        client.force_login(personas[role])
        page = client.get(url)
        assert page.status_code == 200
        assert "Hold a statement for (seconds)" in page.content.decode()
    assert client.get(reverse("approvals:review_settings", args=[999999])).status_code == 404


def test_the_page_saves_and_refuses_a_hold_time_above_the_maximum(client, review_setup, personas):
    url = _page(review_setup)
    client.force_login(personas["security"])
    too_long = client.post(url, {"hold_seconds": "301", "grant_binding": "statement"})
    assert too_long.status_code == 400
    assert "at most 300 s" in too_long.content.decode()
    assert not ReviewSettings.objects.exists()
    saved = client.post(
        url,
        {"hold_seconds": "45", "grant_binding": "shape", "values_retention_seconds": "600"},
    )
    assert saved.status_code == 302
    row = ReviewSettings.objects.get(datasource=review_setup.datasource)
    assert (row.hold_seconds, row.grant_binding, row.values_retention_seconds) == (
        45,
        "shape",
        600,
    )
    # The datasource page links here for those who may edit.
    detail = client.get(reverse("governance:datasource_detail", args=[review_setup.datasource.pk]))
    assert url in detail.content.decode()


def test_the_page_needs_csrf(review_setup, personas):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(personas["admin"])
    answer = strict.post(_page(review_setup), {"hold_seconds": "30", "grant_binding": "shape"})
    assert answer.status_code == 403
    assert not ReviewSettings.objects.exists()
