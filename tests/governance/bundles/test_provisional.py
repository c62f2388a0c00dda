"""Protection before review: scanner findings at or above an environment's protect
threshold reach the bundle as provisional, with their classification's default mask."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from governance import services
from governance.bundles import bundle_compile
from governance.models import (
    Classification,
    ClassificationStatus,
    ColumnClassification,
    Environment,
)
from sidecar.engine import Engine, load_bundle
from tests.conftest import DEMO_SCHEMA

pytestmark = pytest.mark.django_db


def _finding(table: str, column: str, classification: str, confidence: float) -> dict[str, Any]:
    return {
        "schema": "public",
        "table": table,
        "column": column,
        "classification": classification,
        "confidence": confidence,
        "detector": "name",
    }


FINDINGS = [
    _finding("customers", "phone", "pii.phone", 0.5),  # provisional in production
    _finding("customers", "full_name", "pii.name", 0.2),  # below the protect threshold
    _finding("customers", "birth_date", "pii.dob", 0.95),  # confident: auto-applied
]


def _scan(datasource: Any, findings: list[dict[str, Any]] = FINDINGS) -> None:
    services.sidecar_schema_report(
        datasource_id=datasource.pk, snapshot=DEMO_SCHEMA, findings=findings
    )


def _columns(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{c['table']}.{c['column']}": c for c in bundle["column_classifications"]}


def _rules(bundle: dict[str, Any], classification: str) -> list[dict[str, Any]]:
    return [r for r in bundle["masking_rules"] if r["classification"] == classification]


def test_findings_at_or_above_the_protect_threshold_are_provisional(demo_policy: Any) -> None:
    _scan(demo_policy.datasource)
    bundle = bundle_compile(datasource=demo_policy.datasource)
    columns = _columns(bundle)
    assert columns["customers.phone"]["provisional"] is True
    assert "customers.full_name" not in columns  # 0.2 < 0.3: waits for a person
    # Confirmed and confident classifications are enforced as before, not provisional.
    assert "provisional" not in columns["customers.birth_date"]
    assert "provisional" not in columns["customers.email"]
    loaded = load_bundle(bundle)
    assert loaded.provisional == frozenset({"public.customers.phone"})
    # The default masks of the classifications no rule covers are compiled in.
    assert _rules(bundle, "pii.phone") == [
        {
            "classification": "pii.phone",
            "strategy": "partial",
            "params": {"keep_last": 4},
            "exempt_teams": [],
            "environments": [],
        }
    ]
    assert [r["strategy"] for r in _rules(bundle, "pii.dob")] == ["null"]
    # A rule that exists wins: pii.email keeps its own rule and gets no default.
    assert [r["strategy"] for r in _rules(bundle, "pii.email")] == ["email"]
    assert "mask_services_provisionally" not in bundle["datasource"]


def test_provisional_columns_mask_for_humans_and_agents_and_are_audited_for_services(
    demo_policy: Any, admin_user: Any
) -> None:
    _scan(demo_policy.datasource)
    engine = Engine(load_bundle(bundle_compile(datasource=demo_policy.datasource)))
    agent = engine.decide(identity="agent-reports", sql="SELECT phone FROM customers")
    assert agent.action == "allow"
    assert agent.statements[0].masked_columns == ("public.customers.phone",)
    assert agent.statements[0].provisional_columns == ("public.customers.phone",)
    service = engine.decide(identity="svc-billing", sql="SELECT phone, email FROM customers")
    st = service.statements[0]
    assert st.masked_columns == ("public.customers.email",)  # confirmed: masked
    assert st.would_have_masked == ("public.customers.phone",)
    assert st.provisional_columns == ()

    services.datasource_update(
        actor=admin_user,
        datasource=demo_policy.datasource,
        data={"mask_services_provisionally": True},
        reason="services too",
    )
    demo_policy.datasource.refresh_from_db()
    bundle = bundle_compile(datasource=demo_policy.datasource)
    assert bundle["datasource"]["mask_services_provisionally"] is True
    service = Engine(load_bundle(bundle)).decide(
        identity="svc-billing", sql="SELECT phone FROM customers"
    )
    assert service.statements[0].masked_columns == ("public.customers.phone",)
    assert service.statements[0].would_have_masked == ()


def test_a_sandbox_enforces_only_confirmed_and_confident_findings(
    demo_policy: Any, admin_user: Any, team_a: Any
) -> None:
    sandbox = services.datasource_create(
        actor=admin_user,
        name="crm-sandbox",
        environment=Environment.objects.get(name="sandbox"),
        schema_snapshot=DEMO_SCHEMA,
        connect_teams=[team_a],
    )
    assert sandbox.environment.protect_threshold is None
    _scan(sandbox)
    columns = _columns(bundle_compile(datasource=sandbox))
    assert set(columns) == {"customers.birth_date"}
    assert "provisional" not in columns["customers.birth_date"]


def test_the_protect_threshold_is_the_environments(demo_policy: Any) -> None:
    _scan(demo_policy.datasource)
    Environment.objects.filter(name="production").update(protect_threshold=0.6)
    demo_policy.datasource.refresh_from_db()
    assert "customers.phone" not in _columns(bundle_compile(datasource=demo_policy.datasource))
    Environment.objects.filter(name="production").update(protect_threshold=0.1)
    demo_policy.datasource.refresh_from_db()
    columns = _columns(bundle_compile(datasource=demo_policy.datasource))
    assert columns["customers.phone"]["provisional"] is True
    assert columns["customers.full_name"]["provisional"] is True


def test_an_auto_applied_finding_below_the_confident_threshold_is_provisional(
    demo_policy: Any,
) -> None:
    _scan(demo_policy.datasource)  # birth_date auto-applied at 0.95
    with override_settings(WARDEN_SCAN_AUTO_APPLY_CONFIDENCE=0.99):
        columns = _columns(bundle_compile(datasource=demo_policy.datasource))
    assert columns["customers.birth_date"]["provisional"] is True


def test_a_rejected_provisional_finding_is_unmasked_and_stays_so_after_the_next_scan(
    demo_policy: Any, admin_user: Any
) -> None:
    _scan(demo_policy.datasource)
    phone = ColumnClassification.objects.get(datasource=demo_policy.datasource, column_name="phone")
    assert phone.status == ClassificationStatus.PROPOSED
    services.column_classification_review(
        actor=admin_user,
        column_classification=phone,
        status=ClassificationStatus.REJECTED,
        reason="not a phone number",  # crm-prod is in production
    )
    assert "customers.phone" not in _columns(bundle_compile(datasource=demo_policy.datasource))
    _scan(demo_policy.datasource)  # the same finding again
    phone.refresh_from_db()
    assert phone.status == ClassificationStatus.REJECTED
    bundle = bundle_compile(datasource=demo_policy.datasource)
    assert "customers.phone" not in _columns(bundle)
    assert _rules(bundle, "pii.phone") == []  # no column uses it: no default compiled
    decision = Engine(load_bundle(bundle)).decide(
        identity="agent-reports", sql="SELECT phone FROM customers"
    )
    assert decision.statements[0].masked_columns == ()


def test_a_custom_classification_keeps_its_level_default(demo_policy: Any, admin_user: Any) -> None:
    custom = services.classification_create(
        actor=admin_user, name="acme.loyalty_id", level="restricted", description="Loyalty id."
    )
    _scan(demo_policy.datasource, [_finding("customers", "full_name", custom.name, 0.5)])
    bundle = bundle_compile(datasource=demo_policy.datasource)
    assert _columns(bundle)["customers.full_name"]["provisional"] is True
    assert _rules(bundle, custom.name) == []
    loaded = load_bundle(bundle)
    masking = loaded.masking["public.customers.full_name"]
    assert masking.strategy == "redact"  # the restricted level's default


def test_a_masking_rule_for_another_environment_leaves_the_default(
    demo_policy: Any, admin_user: Any
) -> None:
    _scan(demo_policy.datasource)
    services.masking_rule_create(
        actor=admin_user,
        name="phones-in-staging",
        classification=Classification.objects.get(name="pii.phone"),
        strategy="redact",
        environments=["staging"],
    )
    bundle = bundle_compile(datasource=demo_policy.datasource)
    assert [(r["strategy"], r["environments"]) for r in _rules(bundle, "pii.phone")] == [
        ("redact", ["staging"]),
        ("partial", []),
    ]
    assert load_bundle(bundle).masking["public.customers.phone"].strategy == "partial"


def test_a_view_over_a_provisional_column_is_provisional_too(demo_policy: Any) -> None:
    view = {
        "schema": "public",
        "name": "contacts",
        "kind": "view",
        "columns": [{"name": "tel", "type": "text", "sources": ["public.customers.phone"]}],
    }
    snapshot = {"tables": [*DEMO_SCHEMA["tables"], view]}
    services.sidecar_schema_report(
        datasource_id=demo_policy.datasource.pk, snapshot=snapshot, findings=FINDINGS
    )
    demo_policy.datasource.refresh_from_db()
    columns = _columns(bundle_compile(datasource=demo_policy.datasource))
    assert columns["contacts.tel"]["classification"] == "pii.phone"
    assert columns["contacts.tel"]["provisional"] is True
