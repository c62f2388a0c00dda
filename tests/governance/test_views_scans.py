"""Pages and API of classification scans: the review queue (htmx and plain POST), Scan now,
the scan schedule, custom detectors with their try-out, and who may do what: anonymous
→ sign-in, wrong role → 403, another datasource's object → 404."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from governance import services
from governance.models import (
    Classification,
    ClassificationRejection,
    ColumnClassification,
    CustomDetector,
    Environment,
    ScanSchedule,
)
from tests.conftest import DEMO_SCHEMA

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


@pytest.fixture
def proposals(demo_policy: Any) -> dict[str, ColumnClassification]:
    services.sidecar_schema_report(
        datasource_id=demo_policy.datasource.pk,
        snapshot=DEMO_SCHEMA,
        findings=[
            {
                "schema": "public",
                "table": "customers",
                "column": "phone",
                "classification": "pii.phone",
                "confidence": 0.97,
            },
            {
                "schema": "public",
                "table": "customers",
                "column": "full_name",
                "classification": "pii.name",
                "confidence": 0.6,
            },
        ],
    )
    return {
        c.column_name: c
        for c in ColumnClassification.objects.filter(column_name__in=["phone", "full_name"])
    }


@pytest.fixture
def other_datasource(admin_user: Any) -> Any:
    return services.datasource_create(
        actor=admin_user,
        name="other-db",
        environment=Environment.objects.get(name="staging"),
        schema_snapshot=DEMO_SCHEMA,
    )


def _decide(c: ColumnClassification) -> str:
    return reverse("governance:review_decide", args=[c.datasource_id, c.pk])


def test_review_queue_lists_auto_applied_first(
    client: Client, proposals: dict, auditor_user: Any
) -> None:
    client.force_login(auditor_user)
    page = client.get(reverse("governance:review_queue"))
    assert page.status_code == 200
    html = page.content.decode()
    assert html.index("customers.phone") < html.index("customers.full_name")
    assert "needs confirmation" in html
    assert 'name="decision"' not in html  # an auditor reads but does not decide


def test_confirm_with_htmx_swaps_the_row(
    client: Client, proposals: dict, security_user: Any
) -> None:
    client.force_login(security_user)
    phone = proposals["phone"]
    response = client.post(_decide(phone), {"decision": "confirm"}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith("{% load") is False
    assert f'id="review-{phone.pk}"' in response.content.decode()
    phone.refresh_from_db()
    assert (phone.status, phone.confirmed_by) == ("confirmed", security_user)


def test_reject_and_reclassify_without_javascript_redirect_back(
    client: Client, proposals: dict, security_user: Any
) -> None:
    client.force_login(security_user)
    name, phone = proposals["full_name"], proposals["phone"]
    back = reverse("governance:review_queue") + "?datasource=" + str(name.datasource_id)
    # Production: without a reason the decision is refused with a page asking for one.
    asked = client.post(_decide(name), {"decision": "reject", "next": back})
    assert asked.status_code == 400 and b'name="reason"' in asked.content
    name.refresh_from_db()
    assert name.status != "rejected"
    response = client.post(_decide(name), {"decision": "reject", "next": back, "reason": "no"})
    assert (response.status_code, response.url) == (302, back)
    name.refresh_from_db()
    assert name.status == "rejected"
    assert ClassificationRejection.objects.filter(column_name="full_name").exists()
    reclassify = {"decision": "reclassify", "classification": "secret.token"}
    asked = client.post(_decide(phone), reclassify)  # production: a reason first
    assert (
        asked.status_code == 400 and ("classification", "secret.token") in asked.context["fields"]
    )
    response = client.post(_decide(phone), {**reclassify, "reason": "a token"})
    assert response.status_code == 302
    phone.refresh_from_db()
    assert (phone.classification.name, phone.status) == ("secret.token", "confirmed")


def test_a_bad_decision_is_refused_and_changes_nothing(
    client: Client, proposals: dict, security_user: Any
) -> None:
    client.force_login(security_user)
    phone = proposals["phone"]
    for data in ({"decision": "approve"}, {"decision": "reclassify", "classification": "nope"}):
        assert client.post(_decide(phone), data).status_code == 400
        response = client.post(_decide(phone), data, headers={"HX-Request": "true"})
        assert response.status_code == 200 and "HX-Trigger" in response.headers
        assert 'role="alert"' in response.content.decode()
    phone.refresh_from_db()
    assert (phone.classification.name, phone.status) == ("pii.phone", "auto_applied")


def test_review_authorisation(
    client: Client, proposals: dict, personas: dict, other_datasource: Any
) -> None:
    phone = proposals["phone"]
    url = _decide(phone)
    assert client.get(reverse("governance:review_queue")).status_code == 302  # anonymous
    assert client.post(url, {"decision": "confirm"}).status_code == 302
    client.force_login(personas["none"])
    assert client.get(reverse("governance:review_queue")).status_code == 403
    for role in ("reviewer", "auditor"):
        client.force_login(personas[role])
        assert client.post(url, {"decision": "confirm"}).status_code == 403
    client.force_login(personas["security"])
    assert client.get(url).status_code == 405
    wrong = reverse("governance:review_decide", args=[other_datasource.pk, phone.pk])
    assert client.post(wrong, {"decision": "confirm"}).status_code == 404
    phone.refresh_from_db()
    assert phone.status == "auto_applied"


def test_datasource_page_lists_the_columns_protected_only_provisionally(
    client: Client, proposals: dict, personas: dict, other_datasource: Any, demo_policy: Any
) -> None:
    services.sidecar_schema_report(
        datasource_id=other_datasource.pk,
        snapshot=DEMO_SCHEMA,
        findings=[
            {
                "schema": "public",
                "table": "customers",
                "column": "birth_date",
                "classification": "pii.dob",
                "confidence": 0.5,
            }
        ],
    )
    url = reverse("governance:datasource_detail", args=[demo_policy.datasource.pk])
    assert client.get(url).status_code == 302  # anonymous: sign in
    client.force_login(personas["none"])
    assert client.get(url).status_code == 403
    client.force_login(personas["auditor"])
    page = client.get(url)
    listed = [p["path"] for p in page.context["provisional"]]
    # full_name (0.6) waits for review but is masked; phone (0.97) is confident; the
    # other datasource's provisional column is not this one's.
    assert listed == ["public.customers.full_name"]
    html = page.content.decode()
    assert 'id="provisional-columns"' in html and "redact" in html
    assert "read provisionally protected columns unmasked" in html
    queue = client.get(reverse("governance:review_queue")).content.decode()
    assert queue.count(">masked provisionally</span>") == 2  # full_name here, birth_date there
    Environment.objects.filter(name="production").update(protect_threshold=None)
    page = client.get(url)
    assert page.context["provisional"] == []
    assert "has no protect threshold" in page.content.decode()


def test_scan_now_and_schedule(
    client: Client, demo_policy: Any, personas: dict, other_datasource: Any
) -> None:
    datasource = demo_policy.datasource
    scan = reverse("governance:datasource_scan", args=[datasource.pk])
    schedule_url = reverse("governance:datasource_scan_schedule", args=[datasource.pk])
    assert client.post(scan).status_code == 302 and not ScanSchedule.objects.exists()
    for role in ("reviewer", "auditor", "none"):
        client.force_login(personas[role])
        assert client.post(scan).status_code == 403
        assert client.post(schedule_url, {"interval_seconds": 5}).status_code == 403
    assert not ScanSchedule.objects.exists()
    client.force_login(personas["security"])
    assert client.get(scan).status_code == 405
    assert client.post(reverse("governance:datasource_scan", args=[9999])).status_code == 404
    response = client.post(scan)
    assert response.status_code == 302
    schedule = ScanSchedule.objects.get(datasource=datasource)
    assert len(schedule.requested) == 32 and schedule.requested_by == personas["security"]
    page = client.get(reverse("governance:datasource_detail", args=[datasource.pk]))
    assert b'id="scan-pending"' in page.content and b'id="scan-now"' in page.content
    data = {"interval_seconds": 120, "sample_rows": 50, "statement_timeout_ms": 2000}
    assert client.post(schedule_url, data).status_code == 302
    schedule.refresh_from_db()
    assert (schedule.interval_seconds, schedule.sample_rows) == (120, 50)
    bad = {**data, "sample_rows": 0}
    assert client.post(schedule_url, bad).status_code == 400
    schedule.refresh_from_db()
    assert schedule.sample_rows == 50
    # The other datasource is untouched.
    assert not ScanSchedule.objects.filter(datasource=other_datasource).exists()


def test_datasource_page_shows_scans_and_drift(
    client: Client, demo_policy: Any, auditor_user: Any
) -> None:
    datasource = demo_policy.datasource
    services.sidecar_schema_report(datasource_id=datasource.pk, snapshot=DEMO_SCHEMA, findings=[])
    grown = {
        "tables": [
            *DEMO_SCHEMA["tables"],
            {"schema": "public", "name": "leads", "columns": [{"name": "id", "type": "bigint"}]},
        ]
    }
    services.sidecar_schema_report(
        datasource_id=datasource.pk,
        snapshot=grown,
        findings=[],
        scan={"id": "abc", "trigger": "schedule", "tables": 3, "columns": 11},
    )
    client.force_login(auditor_user)
    page = client.get(reverse("governance:datasource_detail", args=[datasource.pk]))
    html = page.content.decode()
    assert 'id="scan-history"' in html and "Sidecar schedule" in html
    assert "new table" in html and "public.leads" in html
    assert 'id="scan-now"' not in html  # auditors cannot request scans


# --- custom detectors ----------------------------------------------------------------------


def _detector_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "name": "employee-id",
        "classification": str(Classification.objects.get(name="pii.national_id").pk),
        "confidence": "0.9",
        "name_regex": r"(?i)^emp(loyee)?_?id$",
        "value_regex": r"^E\d{6}$",
        "enabled": "on",
    }
    data.update(overrides)
    return data


def test_detector_create_validates_patterns(client: Client, security_user: Any) -> None:
    client.force_login(security_user)
    url = reverse("governance:detector_create")
    for bad, field in (
        ({"value_regex": "(["}, "Not a valid regular expression"),
        ({"value_regex": "^(a+)+$"}, "catastrophic backtracking"),
        ({"value_regex": "a" * 201}, "at most 200"),
        ({"name_regex": "", "value_regex": ""}, "Give a name pattern"),
    ):
        response = client.post(url, _detector_form(**bad))
        assert response.status_code == 400, bad
        assert field in response.content.decode(), bad
    assert not CustomDetector.objects.exists()
    response = client.post(url, _detector_form())
    detector = CustomDetector.objects.get(name="employee-id")
    assert response.url == reverse("governance:detector_detail", args=[detector.pk])
    history = client.get(reverse("governance:change_list"), {"model": "customdetector"})
    assert history.status_code == 200 and "employee-id" in history.content.decode()


def test_detector_try_shows_which_samples_match(client: Client, security_user: Any) -> None:
    client.force_login(security_user)
    url = reverse("governance:detector_try")
    data = {
        "name_regex": r"(?i)^emp(loyee)?_?id$",
        "value_regex": r"^E\d{6}$",
        "samples": "employee_id\nE123456\nsomething else",
    }
    response = client.post(url, data, headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("badge-ok") == 2 and 'id="try-results"' in html
    assert not CustomDetector.objects.exists()
    response = client.post(url, {**data, "value_regex": "(x+x+)+y"})
    assert response.status_code == 400  # plain POST: the full page, with the reason
    assert "catastrophic" in response.content.decode()


def test_detector_pages_authorisation(client: Client, personas: dict) -> None:
    pages = [reverse("governance:detector_create"), reverse("governance:detector_try")]
    assert client.get(reverse("governance:detector_list")).status_code == 302
    for role in ("reviewer", "auditor"):
        client.force_login(personas[role])
        assert client.get(reverse("governance:detector_list")).status_code == 200
        for url in pages:
            assert client.post(url, _detector_form()).status_code == 403
    client.force_login(personas["none"])
    assert client.get(reverse("governance:detector_list")).status_code == 403
    assert not CustomDetector.objects.exists()


# --- the management API ---------------------------------------------------------------------


def _api(user: Any) -> Client:
    c = Client(enforce_csrf_checks=False)
    c.force_login(user)
    return c


def test_detector_api_crud_and_validation(personas: dict) -> None:
    security = _api(personas["security"])
    body = {
        "name": "employee-id",
        "classification": "pii.national_id",
        "confidence": 0.9,
        "name_regex": None,
        "value_regex": r"^E\d{6}$",
    }
    bad = security.post(
        "/api/v1/detectors/", {**body, "value_regex": "^(a|a)*$"}, "application/json"
    )
    assert bad.status_code == 400 and "value_regex" in bad.json()["error"]["fields"]
    created = security.post("/api/v1/detectors/", body, "application/json")
    assert created.status_code == 201, created.json()
    assert created.json()["name_regex"] is None
    pk = created.json()["id"]
    assert _api(personas["auditor"]).get(f"/api/v1/detectors/{pk}/").status_code == 200
    refused = _api(personas["reviewer"]).patch(
        f"/api/v1/detectors/{pk}/", {"enabled": False}, "application/json"
    )
    assert refused.status_code == 403
    assert _api(personas["none"]).get("/api/v1/detectors/").status_code == 403
    assert Client().get("/api/v1/detectors/").status_code in (401, 403)
    patched = security.patch(f"/api/v1/detectors/{pk}/", {"enabled": False}, "application/json")
    assert patched.status_code == 200 and patched.json()["enabled"] is False


def test_scan_and_decide_api(
    demo_policy: Any, proposals: dict, personas: dict, other_datasource: Any
) -> None:
    url = f"/api/v1/datasources/{demo_policy.datasource.pk}/scan/"
    assert _api(personas["reviewer"]).post(url).status_code == 403
    response = _api(personas["security"]).post(url)
    assert response.status_code == 202
    assert (
        ScanSchedule.objects.get(datasource=demo_policy.datasource).requested
        == (response.json()["requested"])
    )
    assert _api(personas["auditor"]).get(url.replace("/scan/", "/scans/")).status_code == 200
    assert _api(personas["security"]).post("/api/v1/datasources/9999/scan/").status_code == 404
    phone = proposals["phone"]
    decide = f"/api/v1/column-classifications/{phone.pk}/decide/"
    assert (
        _api(personas["auditor"])
        .post(decide, {"decision": "confirm"}, "application/json")
        .status_code
        == 403
    )
    answer = _api(personas["security"]).post(
        decide,
        {"decision": "reclassify", "classification": "pii.national_id", "reason": "an id"},
        "application/json",
    )
    assert answer.status_code == 200 and answer.json()["status"] == "confirmed"
    assert answer.json()["classification"] == "pii.national_id"


def test_scan_schedule_api(demo_policy: Any, personas: dict, other_datasource: Any) -> None:
    url = f"/api/v1/datasources/{demo_policy.datasource.pk}/scan-schedule/"
    assert _api(personas["auditor"]).get(url).json()["interval_seconds"] == 3600
    assert not ScanSchedule.objects.exists()  # reading does not create it
    change = {"interval_seconds": 300}
    assert _api(personas["reviewer"]).patch(url, change, "application/json").status_code == 403
    assert _api(personas["none"]).get(url).status_code == 403
    bad = _api(personas["security"]).patch(url, {"sample_rows": 0}, "application/json")
    assert bad.status_code == 400 and "sample_rows" in bad.json()["error"]["fields"]
    assert not ScanSchedule.objects.exists()
    ok = _api(personas["security"]).patch(url, change, "application/json")
    assert ok.status_code == 200 and ok.json()["interval_seconds"] == 300
    assert ScanSchedule.objects.get(datasource=demo_policy.datasource).interval_seconds == 300
    assert not ScanSchedule.objects.filter(datasource=other_datasource).exists()
    missing = "/api/v1/datasources/999999/scan-schedule/"
    assert _api(personas["security"]).patch(missing, change, "application/json").status_code == 404


def test_scan_forms_need_the_csrf_token(
    demo_policy: Any, proposals: dict, security_user: Any
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(security_user)
    phone = proposals["phone"]
    posts = [
        (_decide(phone), {"decision": "confirm"}),
        (reverse("governance:datasource_scan", args=[demo_policy.datasource.pk]), {}),
        (reverse("governance:detector_create"), _detector_form()),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
    phone.refresh_from_db()
    assert phone.status == "auto_applied"
    assert not ScanSchedule.objects.exists() and not CustomDetector.objects.exists()
    # The page carries the token for htmx (body hx-headers) and in every form.
    page = client.get(reverse("governance:review_queue"))
    assert b"hx-headers" in page.content and b"csrfmiddlewaretoken" in page.content
