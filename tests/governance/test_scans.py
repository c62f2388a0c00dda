"""Classification scans in the control plane: the sidecar's report (old and new shape,
strictly validated), auto-apply above the threshold, the review decisions and the
rejection memory, schema drift, view inheritance, scan requests and their schedule,
and what of it the compiled bundle carries."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from governance import services
from governance.bundles import bundle_compile
from governance.models import (
    Classification,
    ClassificationRejection,
    ColumnClassification,
    Environment,
    ScanRun,
    ScanSchedule,
)
from tests.conftest import DEMO_SCHEMA

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


@pytest.fixture
def sidecar_token(demo_policy: Any, admin_user: Any) -> str:
    _, token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-1"
    )
    return token


def _post(token: str, body: Any, path: str = "schema") -> tuple[int, dict[str, Any]]:
    response = Client().post(
        f"/api/v1/sidecar/{path}",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status_code, response.json()


def _snapshot(*extra_tables: dict[str, Any], customers_extra: list[dict] | None = None) -> dict:
    snapshot = copy.deepcopy(DEMO_SCHEMA)
    snapshot["tables"][0]["columns"].extend(customers_extra or [])
    snapshot["tables"].extend(extra_tables)
    return snapshot


def _finding(column: str, classification: str, confidence: float, **extra: Any) -> dict:
    return {
        "schema": "public",
        "table": "customers",
        "column": column,
        "classification": classification,
        "confidence": confidence,
        **extra,
    }


def _compiled_columns(datasource: Any) -> dict[str, str]:
    datasource.refresh_from_db()
    bundle = bundle_compile(datasource=datasource)
    return {
        f"{c['schema']}.{c['table']}.{c['column']}": c["classification"]
        for c in bundle["column_classifications"]
    }


# --- the report: shape and validation ----------------------------------------------------


def test_old_shape_is_still_accepted_and_recorded_as_a_scan(
    demo_policy: Any, sidecar_token: str
) -> None:
    status, body = _post(
        sidecar_token,
        {"snapshot": _snapshot(), "findings": [_finding("phone", "pii.phone", 0.5)]},
    )
    assert status == 202, body
    assert (body["proposed"], body["auto_applied"]) == (1, 0)
    run = ScanRun.objects.get(datasource=demo_policy.datasource)
    assert run.trigger == "report" and run.findings == 1 and run.proposed == 1


def test_new_shape_with_share_detector_scan_and_views(demo_policy: Any, sidecar_token: str) -> None:
    view = {
        "schema": "public",
        "name": "customer_contacts",
        "kind": "view",
        "row_estimate": -1,
        "definition": "SELECT id, email FROM customers",
        "columns": [
            {"name": "id", "type": "bigint", "sources": ["public.customers.id"]},
            {"name": "email", "type": "text", "sources": ["public.customers.email"]},
        ],
    }
    scan = {
        "id": "req-1",
        "trigger": "request",
        "started_at": "2026-11-23T10:00:00Z",
        "finished_at": "2026-11-23T10:00:01+00:00",
        "tables": 3,
        "columns": 12,
        "sampled_columns": 10,
        "duration_ms": 812.5,
    }
    findings = [_finding("phone", "pii.phone", 0.97, share=0.98, detector="phone")]
    status, body = _post(
        sidecar_token, {"snapshot": _snapshot(view), "findings": findings, "scan": scan}
    )
    assert status == 202, body
    assert body["auto_applied"] == 1 and body["inherited"] == 1 and body["scan"] == "req-1"
    # Re-sent after a lost reply: still one scan, with its first counts and drift.
    assert (
        _post(sidecar_token, {"snapshot": _snapshot(view), "findings": findings, "scan": scan})[0]
        == 202
    )
    run = ScanRun.objects.get(scan_id="req-1")
    assert (run.trigger, run.tables, run.columns, run.sampled_columns) == ("request", 3, 12, 10)
    assert run.drift["new_tables"] == ["public.customer_contacts"]
    phone = ColumnClassification.objects.get(column_name="phone")
    assert (phone.status, phone.detector, phone.share) == ("auto_applied", "phone", 0.98)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b["findings"][0].update(value="someone@example.com"),
        lambda b: b["findings"][0].update(share=1.5),
        lambda b: b["findings"][0].update(detector=7),
        lambda b: b["findings"][0].pop("confidence"),
        lambda b: b.update(scan={"id": "x", "trigger": "cron"}),
        lambda b: b.update(scan={"id": "", "trigger": "start"}),
        lambda b: b.update(scan={"id": "x", "trigger": "start", "tables": -1}),
        lambda b: b.update(scan={"id": "x", "trigger": "start", "started_at": "yesterday"}),
        lambda b: b.update(scan={"id": "x", "trigger": "start", "rows": [1]}),
        lambda b: b.update(scan="x"),
        lambda b: b.update(extra=1),
        lambda b: b["snapshot"]["tables"][0].update(row_estimate="many"),
        lambda b: b["snapshot"]["tables"][0].update(definition="SELECT 1"),  # not a view
        lambda b: b["snapshot"]["tables"][0]["columns"][0].update(sources="public.t.c"),
        lambda b: b["snapshot"]["tables"][0]["columns"][0].update(sources=["no-dots"]),
    ],
)
def test_a_bad_report_is_refused_whole_and_stores_nothing(
    demo_policy: Any, sidecar_token: str, mutate: Any
) -> None:
    body = {
        "snapshot": _snapshot(customers_extra=[{"name": "mail2", "type": "text"}]),
        "findings": [_finding("mail2", "pii.email", 0.99)],
    }
    mutate(body)
    status, answer = _post(sidecar_token, body)
    assert status == 400, answer
    assert answer["error"]["message"]
    demo_policy.datasource.refresh_from_db()
    assert demo_policy.datasource.schema_snapshot == DEMO_SCHEMA
    assert not ScanRun.objects.exists()
    assert not ColumnClassification.objects.filter(column_name="mail2").exists()


def test_a_report_only_touches_the_tokens_own_datasource(
    demo_policy: Any, admin_user: Any, sidecar_token: str
) -> None:
    other = services.datasource_create(
        actor=admin_user,
        name="other-db",
        environment=Environment.objects.get(name="staging"),
        schema_snapshot=DEMO_SCHEMA,
    )
    _, other_token = services.sidecar_register(actor=admin_user, datasource=other, name="sc-9")
    status, _ = _post(
        other_token, {"snapshot": _snapshot(), "findings": [_finding("phone", "pii.phone", 0.99)]}
    )
    assert status == 202
    assert ColumnClassification.objects.get(datasource=other, column_name="phone")
    assert not demo_policy.datasource.column_classifications.filter(column_name="phone").exists()
    assert not ScanRun.objects.filter(datasource=demo_policy.datasource).exists()
    # No token, or a revoked one, is 401.
    assert (
        Client()
        .post("/api/v1/sidecar/schema", data="{}", content_type="application/json")
        .status_code
        == 401
    )


# --- threshold, bundle, review --------------------------------------------------------------


def test_threshold_decides_what_the_bundle_enforces(
    demo_policy: Any, sidecar_token: str, settings: Any
) -> None:
    settings.WARDEN_SCAN_AUTO_APPLY_CONFIDENCE = 0.9
    findings = [
        _finding("phone", "pii.phone", 0.95),
        _finding("full_name", "pii.name", 0.6),
        _finding("birth_date", "pii.dob", 0.2),
    ]
    assert _post(sidecar_token, {"snapshot": _snapshot(), "findings": findings})[0] == 202
    compiled = _compiled_columns(demo_policy.datasource)
    assert compiled["public.customers.phone"] == "pii.phone"  # auto-applied: masked now
    # Proposed at or above production's protect threshold (0.3): masked provisionally.
    assert compiled["public.customers.full_name"] == "pii.name"
    assert "public.customers.birth_date" not in compiled  # only proposed, below it
    dob = ColumnClassification.objects.get(column_name="birth_date")
    services.column_classification_review(
        actor=demo_policy.owner.user, column_classification=dob, status="confirmed"
    )
    assert _compiled_columns(demo_policy.datasource)["public.customers.birth_date"] == "pii.dob"


def test_rejection_is_remembered_and_reclassify_confirms_another(
    demo_policy: Any, sidecar_token: str, security_user: Any
) -> None:
    report = {"snapshot": _snapshot(), "findings": [_finding("phone", "pii.phone", 0.95)]}
    _post(sidecar_token, report)
    phone = ColumnClassification.objects.get(column_name="phone")
    services.column_classification_review(
        actor=security_user, column_classification=phone, status="rejected", reason="not a phone"
    )
    assert "public.customers.phone" not in _compiled_columns(demo_policy.datasource)
    assert ClassificationRejection.objects.filter(classification__name="pii.phone").exists()
    _post(sidecar_token, report)  # the same finding again: not proposed again
    phone.refresh_from_db()
    assert phone.status == "rejected"
    # Another classification for the same column is new, so it is proposed.
    _post(sidecar_token, {**report, "findings": [_finding("phone", "pii.national_id", 0.5)]})
    phone.refresh_from_db()
    assert (phone.classification.name, phone.status) == ("pii.national_id", "proposed")
    services.column_classification_reclassify(
        actor=security_user,
        column_classification=phone,
        classification=Classification.objects.get(name="secret.token"),
        reason="an API token, not a number",
    )
    phone.refresh_from_db()
    assert (phone.classification.name, phone.status, phone.source) == (
        "secret.token",
        "confirmed",
        "manual",
    )
    assert ClassificationRejection.objects.filter(classification__name="pii.national_id").exists()
    # A person's decision is never overridden by a scan.
    _post(sidecar_token, {**report, "findings": [_finding("phone", "pii.phone", 0.99)]})
    phone.refresh_from_db()
    assert phone.classification.name == "secret.token"


def test_aliases_map_contract_names_to_builtins(demo_policy: Any, sidecar_token: str) -> None:
    findings = [_finding("birth_date", "pii.birth_date", 0.95)]
    _post(sidecar_token, {"snapshot": _snapshot(), "findings": findings})
    assert ColumnClassification.objects.get(column_name="birth_date").classification.name == (
        "pii.dob"
    )


def test_free_text_findings_are_accepted(demo_policy: Any, sidecar_token: str) -> None:
    """pii.free_text (built in since governance/0007) is a classification the report may
    name, like any other: the scanner's free-text detector reports it."""
    snapshot = _snapshot(customers_extra=[{"name": "notes", "type": "text"}])
    findings = [_finding("notes", "pii.free_text", 0.62, share=0.1, detector="free_text")]
    status, body = _post(sidecar_token, {"snapshot": snapshot, "findings": findings})
    assert status == 202 and body["ignored"] == 0, body
    column = ColumnClassification.objects.get(column_name="notes")
    assert (column.classification.name, column.detector, column.share) == (
        "pii.free_text",
        "free_text",
        0.1,
    )


# --- drift ------------------------------------------------------------------------------------


def test_drift_is_recorded_and_a_new_sensitive_column_is_masked_at_once(
    demo_policy: Any, sidecar_token: str
) -> None:
    _post(sidecar_token, {"snapshot": _snapshot(), "findings": []})
    changed = _snapshot(customers_extra=[{"name": "contact_email", "type": "text"}])
    changed["tables"][0]["columns"] = [
        c for c in changed["tables"][0]["columns"] if c["name"] != "phone"
    ]
    for column in changed["tables"][1]["columns"]:
        if column["name"] == "amount":
            column["type"] = "numeric(14,2)"
    findings = [_finding("contact_email", "pii.email", 0.97, share=1.0, detector="email")]
    status, body = _post(sidecar_token, {"snapshot": changed, "findings": findings})
    assert status == 202 and body["drift"] == 3
    run = ScanRun.objects.order_by("-id").first()
    assert run is not None
    assert run.drift["new_columns"] == ["public.customers.contact_email"]
    assert run.drift["dropped_columns"] == ["public.customers.phone"]
    assert run.drift["changed_columns"] == [
        {"column": "public.orders.amount", "from": "numeric(12,2)", "to": "numeric(14,2)"}
    ]
    # Protected at once: in the very next bundle, with no one touching anything.
    assert _compiled_columns(demo_policy.datasource)["public.customers.contact_email"] == (
        "pii.email"
    )


# --- views inherit ----------------------------------------------------------------------------


def test_view_columns_inherit_and_follow_their_source(
    demo_policy: Any, sidecar_token: str, security_user: Any
) -> None:
    view = {
        "schema": "public",
        "name": "contacts",
        "kind": "view",
        "columns": [
            {"name": "id", "type": "bigint", "sources": ["public.customers.id"]},
            {"name": "who", "type": "text", "sources": ["public.customers.email"]},
            {
                "name": "mixed",
                "type": "text",
                "sources": ["public.customers.email", "public.customers.ssn"],
            },
            {"name": "tel", "type": "text", "sources": ["public.customers.phone"]},
        ],
    }
    # Proposed below production's protect threshold (0.3): nothing to inherit.
    findings = [_finding("phone", "pii.phone", 0.2)]
    _post(sidecar_token, {"snapshot": _snapshot(view), "findings": findings})
    compiled = _compiled_columns(demo_policy.datasource)
    assert compiled["public.contacts.who"] == "pii.email"
    assert compiled["public.contacts.mixed"] == "pii.ssn"  # the most sensitive source wins
    assert "public.contacts.tel" not in compiled and "public.contacts.id" not in compiled
    who = ColumnClassification.objects.get(table_name="contacts", column_name="who")
    assert (who.source, who.inherited_from, who.status) == (
        "inherited",
        "public.customers.email",
        "confirmed",
    )
    phone = ColumnClassification.objects.get(column_name="phone")
    services.column_classification_review(
        actor=security_user, column_classification=phone, status="confirmed"
    )
    assert _compiled_columns(demo_policy.datasource)["public.contacts.tel"] == "pii.phone"
    services.column_classification_review(
        actor=security_user, column_classification=phone, status="rejected", reason="not a phone"
    )
    assert "public.contacts.tel" not in _compiled_columns(demo_policy.datasource)


def test_a_view_over_a_view_inherits_in_one_report(demo_policy: Any, sidecar_token: str) -> None:
    inner = {
        "schema": "public",
        "name": "inner_v",
        "kind": "view",
        "columns": [{"name": "e", "type": "text", "sources": ["public.customers.email"]}],
    }
    outer = {
        "schema": "public",
        "name": "outer_v",
        "kind": "view",
        "columns": [{"name": "e2", "type": "text", "sources": ["public.inner_v.e"]}],
    }
    status, body = _post(sidecar_token, {"snapshot": _snapshot(inner, outer), "findings": []})
    assert status == 202 and body["inherited"] == 2
    assert _compiled_columns(demo_policy.datasource)["public.outer_v.e2"] == "pii.email"
    # The source goes away: both inherited ones follow.
    _post(sidecar_token, {"snapshot": _snapshot(inner, outer), "findings": []})
    email = ColumnClassification.objects.get(table_name="customers", column_name="email")
    services.column_classification_delete(
        actor=demo_policy.owner.user, column_classification=email, reason="not personal"
    )
    assert not ColumnClassification.objects.filter(source="inherited").exists()


# --- scan requests --------------------------------------------------------------------------


def test_beat_requests_due_scans_through_bundle_and_heartbeat(
    demo_policy: Any, sidecar_token: str
) -> None:
    datasource = demo_policy.datasource
    ScanSchedule.objects.create(datasource=datasource, interval_seconds=60)
    assert bundle_compile(datasource=datasource)["scan"]["requested"] is None
    asked = services.scans_request_due()
    assert datasource.pk in asked
    requested = ScanSchedule.objects.get(datasource=datasource).requested
    bundle = bundle_compile(datasource=datasource)
    assert bundle["scan"] == {
        "interval_seconds": 0,
        "sample_rows": 100,
        "statement_timeout_ms": 5000,
        "requested": requested,
    }
    heartbeat = {"revision": "", "version": "t", "counters": {}}
    assert _post(sidecar_token, heartbeat, "heartbeat")[1]["scan_requested"] == requested
    assert services.scans_request_due() == []  # asked already within the interval
    scan = {"id": requested, "trigger": "request"}
    _post(sidecar_token, {"snapshot": _snapshot(), "findings": [], "scan": scan})
    assert "scan_requested" not in _post(sidecar_token, heartbeat, "heartbeat")[1]
    later = timezone.now() + datetime.timedelta(seconds=61)
    assert services.scans_request_due(now=later) == [datasource.pk]
    assert services.scans_request_due(now=later) == []


def test_interval_zero_is_never_scheduled(demo_policy: Any) -> None:
    ScanSchedule.objects.create(datasource=demo_policy.datasource, interval_seconds=0)
    assert demo_policy.datasource.pk not in services.scans_request_due()


def test_scan_now_needs_a_policy_editor(demo_policy: Any, reviewer_user: Any) -> None:
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        services.scan_request(actor=reviewer_user, datasource=demo_policy.datasource)


def test_custom_detectors_are_compiled_into_the_bundle(
    demo_policy: Any, security_user: Any
) -> None:
    national_id = Classification.objects.get(name="pii.national_id")
    services.custom_detector_create(
        actor=security_user,
        name="employee-id",
        classification=national_id,
        confidence=0.95,
        value_regex=r"^E\d{6}$",
    )
    services.custom_detector_create(
        actor=security_user,
        name="badge",
        classification=national_id,
        name_regex="(?i)badge",
        enabled=False,
    )
    bundle = bundle_compile(datasource=demo_policy.datasource)  # load_bundle accepted it
    assert bundle["detectors"] == [
        {
            "name": "employee-id",
            "classification": "pii.national_id",
            "confidence": 0.95,
            "name_regex": None,
            "value_regex": r"^E\d{6}$",
        }
    ]


def test_a_catastrophic_detector_is_refused_by_the_service(security_user: Any) -> None:
    from django.core.exceptions import ValidationError

    from governance.models import CustomDetector

    with pytest.raises(ValidationError) as refused:
        services.custom_detector_create(
            actor=security_user,
            name="slow",
            classification=Classification.objects.get(name="pii.email"),
            value_regex="^(a|aa)+$",
        )
    assert "catastrophic" in str(refused.value)
    assert not CustomDetector.objects.exists()
