"""The compiler against the engine's contract: what goes into a datasource's bundle."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from django.utils import timezone

from governance import services
from governance.bundles import BundleCompileError, bundle_compile, content_digest
from governance.models import Classification
from sidecar.engine import Engine, compute_revision, load_bundle

pytestmark = pytest.mark.django_db


def _identity(bundle: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((i for i in bundle["identities"] if i["name"] == name), None)


def test_demo_policy_compiles_to_a_bundle_the_engine_loads(demo_policy: Any) -> None:
    bundle = bundle_compile(datasource=demo_policy.datasource)
    loaded = load_bundle(bundle)
    assert bundle["revision"] == compute_revision(bundle)
    assert loaded.revision == bundle["revision"]
    assert bundle["datasource"]["environment"] == "production"
    assert bundle["datasource"]["criticality"] == 5
    cc = {(c["table"], c["column"]): c["classification"] for c in bundle["column_classifications"]}
    assert cc == {
        ("customers", "email"): "pii.email",
        ("customers", "ssn"): "pii.ssn",
        ("orders", "card_number"): "financial.card",
    }
    ssn = next(r for r in bundle["masking_rules"] if r["classification"] == "pii.ssn")
    assert ssn == {
        "classification": "pii.ssn",
        "strategy": "partial",
        "params": {"keep_last": 4},
        "exempt_teams": ["team-b"],
        "environments": [],
    }
    # The control plane's coarse "ddl" survives as the engine's category name.
    ddl = next(g for g in bundle["guardrails"] if g["name"] == "block-ddl-in-production")
    assert ddl["conditions"]["statement_kinds"] == ["ddl"]
    # And the engine enforces it: the masking key never shows, the email is masked.
    decision = Engine(loaded).decide(identity="svc-billing", sql="SELECT email FROM customers")
    assert decision.action == "allow"
    assert (
        "email" in decision.upstream_sql and decision.upstream_sql != "SELECT email FROM customers"
    )


def test_identities_are_the_connect_teams_live_members_with_live_tokens(
    demo_policy: Any, admin_user: Any, team_b: Any
) -> None:
    services.identity_create(actor=admin_user, name="bob", kind="human", teams=[team_b])
    live, raw = services.token_issue(actor=admin_user, identity=demo_policy.service, name="live")
    human = services.identity_create(
        actor=admin_user, name="hana", kind="human", teams=demo_policy.service.teams.all()
    )
    _, human_raw = services.token_issue(actor=admin_user, identity=human, name="hana's")
    revoked, _ = services.token_issue(actor=admin_user, identity=demo_policy.service, name="old")
    services.token_revoke(actor=admin_user, token=revoked)
    expired, _ = services.token_issue(
        actor=admin_user,
        identity=demo_policy.service,
        name="short",
        expires_at=timezone.now() + datetime.timedelta(seconds=30),
    )
    type(expired).objects.filter(pk=expired.pk).update(
        expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    services.identity_update(
        actor=admin_user, identity=demo_policy.agent, data={"is_active": False}
    )
    bundle = bundle_compile(datasource=demo_policy.datasource)
    names = {i["name"] for i in bundle["identities"]}
    assert "bob" not in names  # team-b may not connect
    assert "agent-reports" not in names  # inactive
    service = _identity(bundle, "svc-billing")
    assert service is not None
    assert service["owner"] == "security" and service["kind"] == "service"
    assert [c["id"] for c in service["credentials"]] == [f"tok-{live.pk}"]
    assert service["credentials"][0]["scram_sha_256"] == live.scram_verifier
    # A service's (or an agent's) credential carries the token's prefix, which the
    # control plane shows anyway: the sidecar's MCP server finds a bearer token's
    # identity by it (format 1.2). A human's does not: humans use the proxy.
    assert service["credentials"][0]["prefix"] == live.prefix == raw[:10]
    assert bundle["format"] == "warden.bundle/1.2"
    hana = _identity(bundle, "hana")
    assert hana is not None and "prefix" not in hana["credentials"][0]
    assert raw not in json.dumps(bundle) and human_raw not in json.dumps(bundle)
    assert human_raw[:10] not in json.dumps(bundle)


def test_content_digest_ignores_only_the_time(demo_policy: Any, admin_user: Any) -> None:
    first = bundle_compile(datasource=demo_policy.datasource)
    again = bundle_compile(
        datasource=demo_policy.datasource, issued_at=timezone.now() + datetime.timedelta(hours=1)
    )
    assert first["revision"] != again["revision"]
    assert content_digest(first) == content_digest(again)
    services.masking_rule_update(
        actor=admin_user,
        rule=demo_policy.masking_rules[0],
        data={"strategy": "redact"},
        reason="stricter",
    )
    changed = bundle_compile(datasource=demo_policy.datasource)
    assert content_digest(changed) != content_digest(first)


def test_family_conditions_and_coarse_kinds_map_to_engine_names(
    demo_policy: Any, admin_user: Any
) -> None:
    services.guardrail_create(
        actor=admin_user,
        name="review-pii-copies",
        action="review",
        conditions={"classifications": ["pii.*"], "statement_kinds": ["copy", "explain"]},
        message="Copying personal data needs review.",
    )
    bundle = bundle_compile(datasource=demo_policy.datasource)
    rule = next(g for g in bundle["guardrails"] if g["name"] == "review-pii-copies")
    pii = sorted(c.name for c in Classification.objects.filter(name__startswith="pii."))
    assert len(pii) > 1 and rule["conditions"]["classifications"] == pii
    assert rule["conditions"]["statement_kinds"] == [
        "copy_to",
        "copy_from",
        "explain",
        "explain_analyze",
    ]
    decision = Engine(load_bundle(bundle)).decide(
        identity="svc-billing", sql="COPY customers TO STDOUT"
    )
    assert decision.action == "review"


def test_a_column_type_the_engine_cannot_cast_to_is_a_compile_error(
    demo_policy: Any, admin_user: Any
) -> None:
    schema = {
        "tables": [
            {
                "schema": "public",
                "name": "t",
                "kind": "table",
                "columns": [{"name": "x", "type": "text); DROP TABLE t; --"}],
            }
        ]
    }
    services.datasource_update(
        actor=admin_user,
        datasource=demo_policy.datasource,
        data={"schema_snapshot": schema},
        reason="hostile snapshot",
    )
    demo_policy.datasource.refresh_from_db()
    with pytest.raises(BundleCompileError, match="crm-prod"):
        bundle_compile(datasource=demo_policy.datasource)


def test_classifications_of_columns_missing_from_the_snapshot_are_left_out(
    demo_policy: Any, admin_user: Any
) -> None:
    snapshot = dict(demo_policy.datasource.schema_snapshot)
    snapshot["tables"] = [t for t in snapshot["tables"] if t["name"] != "orders"]
    services.datasource_update(
        actor=admin_user,
        datasource=demo_policy.datasource,
        data={"schema_snapshot": snapshot},
        reason="orders dropped",
    )
    demo_policy.datasource.refresh_from_db()
    bundle = bundle_compile(datasource=demo_policy.datasource)
    assert {c["table"] for c in bundle["column_classifications"]} == {"customers"}
    assert Classification.objects.filter(name="financial.card").exists()
