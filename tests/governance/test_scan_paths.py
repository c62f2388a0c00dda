"""Findings inside JSON and array columns in the control plane: the scan report's
``path``, its classification per path (reviewed and rejected on its own), the bundle
that carries it (format 1.1 only when a path is compiled), and the pages that show it."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from governance import services
from governance.bundles import bundle_compile
from governance.models import ClassificationRejection, ColumnClassification, Environment
from sidecar.engine import load_bundle
from tests.conftest import DEMO_SCHEMA

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]

STRUCTURED = [{"name": "profile", "type": "jsonb"}, {"name": "tags", "type": "text[]"}]


@pytest.fixture
def sidecar_token(demo_policy: Any, admin_user: Any) -> str:
    _, token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-1"
    )
    return token


def _snapshot(columns: list[dict[str, str]] = STRUCTURED) -> dict[str, Any]:
    snapshot = copy.deepcopy(DEMO_SCHEMA)
    snapshot["tables"][0]["columns"].extend(columns)
    return snapshot


def _finding(column: str, path: str | None, classification: str, confidence: float) -> dict:
    finding = {
        "schema": "public",
        "table": "customers",
        "column": column,
        "classification": classification,
        "confidence": confidence,
        "share": 1.0,
        "detector": "email",
    }
    if path is not None:
        finding["path"] = path
    return finding


def _post(token: str, body: Any) -> tuple[int, dict[str, Any]]:
    response = Client().post(
        "/api/v1/sidecar/schema",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status_code, response.json()


FINDINGS = [
    _finding("profile", "profile.email", "pii.email", 0.95),
    _finding("profile", "contacts[].phone", "pii.phone", 0.5),
    _finding("tags", "[]", "pii.ssn", 0.97),
    _finding("phone", None, "pii.phone", 0.95),
]


def _compiled(datasource: Any) -> dict[str, Any]:
    datasource.refresh_from_db()
    return bundle_compile(datasource=datasource)


def test_path_findings_are_stored_per_path_and_compiled_as_format_1_1(
    demo_policy: Any, sidecar_token: str, settings: Any
) -> None:
    settings.WARDEN_SCAN_AUTO_APPLY_CONFIDENCE = 0.9
    datasource = demo_policy.datasource
    assert _compiled(datasource)["format"] == "warden.bundle/1"  # no path yet
    status, answer = _post(sidecar_token, {"snapshot": _snapshot(), "findings": FINDINGS})
    assert status == 202, answer
    rows = {
        (c.column_name, c.path): (c.classification.name, c.status)
        for c in ColumnClassification.objects.filter(datasource=datasource, source="auto")
    }
    assert rows == {
        ("profile", "profile.email"): ("pii.email", "auto_applied"),
        ("profile", "contacts[].phone"): ("pii.phone", "proposed"),
        ("tags", "[]"): ("pii.ssn", "auto_applied"),
        ("phone", ""): ("pii.phone", "auto_applied"),
    }
    bundle = _compiled(datasource)
    assert bundle["format"] == "warden.bundle/1.1"
    entries = {
        (c["column"], c.get("path")): c["classification"]
        for c in bundle["column_classifications"]
        if c["table"] == "customers"
    }
    assert entries[("profile", "profile.email")] == "pii.email"
    assert entries[("tags", "[]")] == "pii.ssn"
    # A proposal at 0.5 is enforced, provisionally: production's protect threshold is 0.3.
    provisional = {
        (c["column"], c.get("path"))
        for c in bundle["column_classifications"]
        if c.get("provisional")
    }
    assert entries[("profile", "contacts[].phone")] == "pii.phone"
    assert provisional == {("profile", "contacts[].phone")}
    loaded = load_bundle(bundle)
    assert "public.customers.profile" in loaded.masking  # the engine masks the path
    # The column's type changes under the path: the path is left out, not the bundle.
    retyped = {"snapshot": _snapshot([{"name": "profile", "type": "text"}]), "findings": []}
    assert _post(sidecar_token, retyped)[0] == 202
    bundle = _compiled(datasource)
    assert bundle["format"] == "warden.bundle/1"
    assert not any(c.get("path") for c in bundle["column_classifications"])


@pytest.mark.parametrize("path", ["by_email.ann@example\\.org.email", "idx.078-05-1120"])
def test_a_path_through_a_key_that_is_a_value_is_not_stored(
    demo_policy: Any, sidecar_token: str, path: str
) -> None:
    """A key can be a value (an address or an SSN keying a map); a sidecar older than
    the scanner's rule sends such paths. They are left out, the rest of the report
    kept: the snapshot, and a finding through names only."""
    bad = {**_finding("profile", None, "pii.email", 0.95), "path": path}
    good = {**_finding("profile", None, "pii.email", 0.95), "path": "owner.email"}
    status, answer = _post(sidecar_token, {"snapshot": _snapshot(), "findings": [bad, good]})
    assert status == 202, answer
    stored = set(
        ColumnClassification.objects.filter(column_name="profile").values_list("path", flat=True)
    )
    assert stored == {"owner.email"}


@pytest.mark.parametrize("path", ["", "a..b", "a[0]", 7, "x" * 201])
def test_a_bad_path_refuses_the_report(demo_policy: Any, sidecar_token: str, path: Any) -> None:
    finding = {**_finding("profile", None, "pii.email", 0.95), "path": path}
    status, answer = _post(sidecar_token, {"snapshot": _snapshot(), "findings": [finding]})
    assert status == 400, answer
    assert not ColumnClassification.objects.filter(column_name="profile").exists()


def test_a_path_into_a_column_that_cannot_hold_one_is_ignored(
    demo_policy: Any, sidecar_token: str
) -> None:
    findings = [
        _finding("email", "user.email", "pii.email", 0.95),
        _finding("tags", "a", "pii.ssn", 0.95),
    ]
    status, answer = _post(sidecar_token, {"snapshot": _snapshot(), "findings": findings})
    assert status == 202 and answer["ignored"] == 2
    assert not ColumnClassification.objects.exclude(path="").exists()


def test_a_rejected_path_is_remembered_for_that_path_only(
    demo_policy: Any, sidecar_token: str, security_user: Any
) -> None:
    report = {"snapshot": _snapshot(), "findings": FINDINGS}
    _post(sidecar_token, report)
    email_path = ColumnClassification.objects.get(column_name="profile", path="profile.email")
    services.column_classification_review(
        actor=security_user,
        column_classification=email_path,
        status="rejected",
        reason="a test address",
    )
    rejection = ClassificationRejection.objects.get(column_name="profile")
    assert (rejection.path, rejection.classification.name) == ("profile.email", "pii.email")
    more = [*FINDINGS, _finding("profile", "work.email", "pii.email", 0.95)]
    _post(sidecar_token, {**report, "findings": more})
    email_path.refresh_from_db()
    assert email_path.status == "rejected"  # not proposed again
    other = ColumnClassification.objects.get(column_name="profile", path="work.email")
    assert other.status == "auto_applied"  # the same classification elsewhere in the column
    assert not any(
        c.get("path") == "profile.email"
        for c in _compiled(demo_policy.datasource)["column_classifications"]
    )


def test_the_review_queue_and_the_datasource_page_show_the_path(
    client: Client, demo_policy: Any, sidecar_token: str, security_user: Any
) -> None:
    _post(sidecar_token, {"snapshot": _snapshot(), "findings": FINDINGS})
    client.force_login(security_user)
    queue = client.get(reverse("governance:review_queue")).content.decode()
    assert "<code>public.customers.profile</code></a>" in queue
    assert ">contacts[].phone</code>" in queue and ">profile.email</code>" in queue
    assert 'aria-label="Confirm public.customers.profile profile.email as pii.email"' in queue
    page = client.get(
        reverse("governance:datasource_detail", args=[demo_policy.datasource.pk])
    ).content.decode()
    assert page.count('class="path-row"') == 3
    assert '>tags</code> <code class="json-path"' in page


def test_the_pages_with_paths_keep_their_authorisation(
    client: Client, demo_policy: Any, sidecar_token: str, personas: dict, admin_user: Any
) -> None:
    _post(sidecar_token, {"snapshot": _snapshot(), "findings": FINDINGS})
    path_row = ColumnClassification.objects.get(column_name="profile", path="profile.email")
    client.force_login(personas["none"])
    assert client.get(reverse("governance:review_queue")).status_code == 403
    client.force_login(personas["reviewer"])
    decide = reverse("governance:review_decide", args=[path_row.datasource_id, path_row.pk])
    assert client.post(decide, {"decision": "reject"}).status_code == 403
    # Another datasource's review URL for this row is not found.
    other = services.datasource_create(
        actor=admin_user,
        name="other-db",
        environment=Environment.objects.get(name="staging"),
        schema_snapshot=DEMO_SCHEMA,
    )
    client.force_login(personas["security"])
    wrong = reverse("governance:review_decide", args=[other.pk, path_row.pk])
    assert client.post(wrong, {"decision": "reject"}).status_code == 404
    path_row.refresh_from_db()
    assert path_row.status == "auto_applied"
