"""The policy simulator: service, ``POST /api/v1/simulate`` and the ``/simulate/`` page.

Everything runs for real: the demo policy is built through the services in
PostgreSQL, compiled by the real bundle compiler and judged by the real engine.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.urls import reverse

from audit.models import ChangeRecord
from governance import services
from governance.bundles import bundle_compile
from governance.models import Classification, GuardrailRule
from governance.simulator import policy_simulate
from sidecar.engine import Engine, load_bundle
from tests.governance.test_api_access import Api

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


def _simulate(user: Any, demo: Any, identity: str, sql: str, **kw: Any) -> dict[str, Any]:
    return policy_simulate(
        user=user, datasource=demo.datasource, identity_name=identity, sql=sql, **kw
    )


# --- service -------------------------------------------------------------------------------


def test_masked_select_shows_rewrite_and_lineage(demo_policy: Any, security_user: Any) -> None:
    result = _simulate(security_user, demo_policy, "security", "SELECT email FROM customers")
    d = result["decision"]
    assert d["action"] == "allow"
    assert result["notes"] == []
    [statement] = d["statements"]
    assert statement["masked_columns"] == ["public.customers.email"]
    assert statement["classifications"] == ["pii.email"]
    assert "***@" in d["upstream_sql"] and d["upstream_sql"] != "SELECT email FROM customers"
    [column] = statement["lineage"]
    assert column["output"] == "email"
    assert column["sources"] == ["public.customers.email"]
    assert column["classifications"] == ["pii.email"]


def test_drop_is_blocked_by_the_named_guardrail(demo_policy: Any, reviewer_user: Any) -> None:
    d = _simulate(reviewer_user, demo_policy, "security", "DROP TABLE customers")["decision"]
    assert d["action"] == "block"
    assert d["reasons"][0]["rule"] == "block-ddl-in-production"
    assert "migrations" in d["message"]


def test_unknown_and_unconnected_identities_are_explained(
    demo_policy: Any, auditor_user: Any
) -> None:
    nobody = _simulate(auditor_user, demo_policy, "nobody", "SELECT 1")
    assert nobody["decision"]["action"] == "block"
    assert [r["rule"] for r in nobody["decision"]["reasons"]] == ["default.unknown_identity"]
    assert "no identity named 'nobody'" in nobody["notes"][0]
    # "auditor" exists, but is in no team allowed to connect to crm-prod.
    outside = _simulate(auditor_user, demo_policy, "auditor", "SELECT 1")
    assert outside["decision"]["action"] == "block"
    assert "none of the teams allowed to connect to crm-prod" in outside["notes"][0]


def test_a_disabled_guardrail_can_be_tried_without_enabling_it(
    demo_policy: Any, admin_user: Any, security_user: Any
) -> None:
    rule = services.guardrail_create(
        actor=admin_user,
        name="block-orders",
        action="block",
        conditions={"tables": ["orders"]},
        message="Orders are off limits.",
        enabled=False,
    )
    sql = "SELECT id FROM orders WHERE id = 7"
    changes = ChangeRecord.objects.count()
    before = _simulate(security_user, demo_policy, "security", sql)
    assert before["decision"]["action"] == "allow"
    tried = _simulate(
        security_user, demo_policy, "security", sql, include_disabled_guardrail=rule.pk
    )
    assert tried["tried"] == ["block-orders"]
    assert tried["decision"]["action"] == "block"
    assert tried["decision"]["reasons"][0]["rule"] == "block-orders"
    rule.refresh_from_db()
    assert rule.enabled is False
    assert ChangeRecord.objects.count() == changes  # nothing written, SQL nowhere stored


def test_guardrail_of_another_datasource_is_refused(
    demo_policy: Any, admin_user: Any, security_user: Any
) -> None:
    other = services.datasource_create(
        actor=admin_user,
        name="other",
        environment=demo_policy.datasource.environment,
        schema_snapshot={"tables": []},
    )
    rule = services.guardrail_create(
        actor=admin_user,
        name="elsewhere",
        action="allow",
        datasource=other,
        enabled=False,
        conditions={"statement_kinds": ["select"]},
    )
    with pytest.raises(ValidationError) as err:
        _simulate(
            security_user, demo_policy, "security", "SELECT 1", include_disabled_guardrail=rule.pk
        )
    assert "include_disabled_guardrail" in err.value.message_dict


def test_draft_guardrail_is_validated_like_a_real_one(demo_policy: Any, security_user: Any) -> None:
    draft = {
        "name": "review-customers",
        "action": "review",
        "conditions": {"tables": ["customers"]},
        "message": "Customers need a second pair of eyes.",
    }
    result = _simulate(
        security_user,
        demo_policy,
        "security",
        "SELECT id FROM customers LIMIT 1",
        draft_guardrail=draft,
    )
    assert result["decision"]["action"] == "review"
    assert result["decision"]["reasons"][0]["rule"] == "review-customers"
    assert not GuardrailRule.objects.filter(name="review-customers").exists()
    with pytest.raises(ValidationError) as err:
        _simulate(
            security_user,
            demo_policy,
            "security",
            "SELECT 1",
            draft_guardrail={**draft, "message": ""},
        )
    assert "message" in err.value.message_dict["draft_guardrail"][0]
    with pytest.raises(ValidationError):
        _simulate(
            security_user,
            demo_policy,
            "security",
            "SELECT 1",
            draft_guardrail={**draft, "conditions": {"tables": "customers"}},
        )


def test_hash_mask_calls_the_database_function(
    demo_policy: Any, admin_user: Any, security_user: Any
) -> None:
    services.masking_rule_create(
        actor=admin_user,
        name="hash-cards",
        classification=Classification.objects.get(name="financial.card"),
        strategy="hash",
    )
    sql = "SELECT card_number FROM orders"
    raw = Engine(load_bundle(bundle_compile(datasource=demo_policy.datasource))).decide(
        identity="security", sql=sql, explain=True
    )
    # The hash is keyed inside the protected database: the text names the function only.
    assert "warden_masking.hmac(" in raw.upstream_sql
    result = _simulate(security_user, demo_policy, "security", sql)
    assert "warden_masking.hmac(" in result["decision"]["upstream_sql"]


def test_role_none_may_not_simulate(demo_policy: Any, outsider_user: Any) -> None:
    with pytest.raises(PermissionDenied):
        _simulate(outsider_user, demo_policy, "security", "SELECT 1")


# --- API -----------------------------------------------------------------------------------

URL = "/api/v1/simulate"


@pytest.fixture
def api(personas: dict[str, Any]) -> dict[str, Api]:
    clients = {role: Api(user) for role, user in personas.items()}
    clients["anonymous"] = Api()
    return clients


def test_api_access_and_errors(demo_policy: Any, api: dict[str, Api]) -> None:
    body = {"datasource": "crm-prod", "identity": "security", "sql": "DROP TABLE customers"}
    assert api["anonymous"].call("POST", URL, body).status_code == 401
    refused = api["none"].call("POST", URL, body)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    for role in ("admin", "security", "reviewer", "auditor"):
        ok = api[role].call("POST", URL, body)
        assert ok.status_code == 200, (role, ok.content)
        assert ok.json()["decision"]["action"] == "block"
        assert ok.json()["decision"]["reasons"][0]["rule"] == "block-ddl-in-production"
    assert api["security"].call("GET", URL).status_code == 405


def test_api_invalid_payloads(demo_policy: Any, api: dict[str, Api]) -> None:
    bad = api["security"].call("POST", URL, {"datasource": "crm-prod"})
    assert bad.status_code == 400
    assert set(bad.json()["error"]["fields"]) == {"identity", "sql"}
    unknown = api["security"].call(
        "POST", URL, {"datasource": "nope", "identity": "x", "sql": "SELECT 1"}
    )
    assert unknown.status_code == 400
    assert "Unknown datasource" in unknown.json()["error"]["fields"]["datasource"][0]
    draft = api["security"].call(
        "POST",
        URL,
        {
            "datasource": "crm-prod",
            "identity": "security",
            "sql": "SELECT 1",
            "draft_guardrail": {"name": "d", "action": "block", "conditions": {}},
        },
    )
    assert draft.status_code == 400
    assert "draft_guardrail" in draft.json()["error"]["fields"]


def test_api_tries_a_disabled_guardrail_by_name(
    demo_policy: Any, admin_user: Any, api: dict[str, Api]
) -> None:
    services.guardrail_set_enabled(
        actor=admin_user, guardrail=demo_policy.guardrails[0], enabled=False, reason="trying"
    )
    body = {"datasource": "crm-prod", "identity": "security", "sql": "DROP TABLE customers"}
    off = api["auditor"].call("POST", URL, body).json()
    assert off["decision"]["reasons"][0]["rule"] != "block-ddl-in-production"
    on = (
        api["auditor"]
        .call("POST", URL, {**body, "include_disabled_guardrail": "block-ddl-in-production"})
        .json()
    )
    assert on["tried"] == ["block-ddl-in-production"]
    assert on["decision"]["reasons"][0]["rule"] == "block-ddl-in-production"


# --- page ----------------------------------------------------------------------------------


def _client(user: Any = None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def test_page_access(demo_policy: Any, personas: dict[str, Any]) -> None:
    url = reverse("governance:simulate")
    anonymous = _client().get(url)
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert _client(personas["none"]).get(url).status_code == 403
    assert _client(personas["none"]).post(url, {}).status_code == 403
    page = _client(personas["reviewer"]).get(url)
    assert page.status_code == 200
    assert b"crm-prod" in page.content and b"Decision" not in page.content
    assert _client(personas["reviewer"]).put(url).status_code == 405


def test_page_invalid_post_shows_inline_errors(demo_policy: Any, security_user: Any) -> None:
    response = _client(security_user).post(
        reverse("governance:simulate"), {"datasource": demo_policy.datasource.pk, "identity": ""}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_identity_error"' in html and 'id="id_sql_error"' in html


def test_page_simulates_and_htmx_gets_the_panel(demo_policy: Any, security_user: Any) -> None:
    client = _client(security_user)
    data = {
        "datasource": demo_policy.datasource.pk,
        "identity": "security",
        "sql": "SELECT email FROM customers",
    }
    full = client.post(reverse("governance:simulate"), data)
    assert full.status_code == 200
    html = full.content.decode()
    assert "<html" in html and "badge-action-allow" in html and "***@" in html
    assert "public.customers.email" in html  # lineage and masked columns
    panel = client.post(reverse("governance:simulate"), data, HTTP_HX_REQUEST="true")
    assert panel.status_code == 200
    assert "<html" not in panel.content.decode()
    assert 'id="simulator"' in panel.content.decode()


def test_sql_is_not_logged(demo_policy: Any, security_user: Any, caplog: Any) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    literal = "4111-simulated-secret"
    for sql in (
        f"SELECT email FROM customers WHERE full_name = '{literal}'",
        f"DO $$ BEGIN PERFORM '{literal}'; END $$",  # sqlglot's Command fallback warns
        f"SELECT FROM WHERE '{literal}",  # unparseable
    ):
        _simulate(security_user, demo_policy, "security", sql)
    assert literal not in caplog.text


@pytest.mark.parametrize("pk", [999_999, "abc"])
def test_unknown_guardrail_to_try_is_a_field_error(
    demo_policy: Any, security_user: Any, pk: Any
) -> None:
    with pytest.raises(ValidationError) as err:
        _simulate(security_user, demo_policy, "security", "SELECT 1", include_disabled_guardrail=pk)
    assert err.value.message_dict == {"include_disabled_guardrail": ["No such guardrail."]}


def test_page_unknown_datasource_is_an_inline_error(demo_policy: Any, auditor_user: Any) -> None:
    response = _client(auditor_user).post(
        reverse("governance:simulate"),
        {"datasource": 999_999, "identity": "security", "sql": "SELECT 1"},
    )
    assert response.status_code == 400
    assert 'id="id_datasource_error"' in response.content.decode()


def test_page_tries_a_draft_guardrail(demo_policy: Any, security_user: Any) -> None:
    client = _client(security_user)
    data = {
        "datasource": demo_policy.datasource.pk,
        "identity": "security",
        "sql": "SELECT id FROM customers LIMIT 1",
        "draft_guardrail": json.dumps(
            {
                "name": "review-customers",
                "action": "review",
                "conditions": {"tables": ["customers"]},
                "message": "Second pair of eyes.",
            }
        ),
    }
    ok = client.post(reverse("governance:simulate"), data)
    assert ok.status_code == 200
    assert "badge-action-review" in ok.content.decode()
    assert "review-customers" in ok.content.decode()
    assert not GuardrailRule.objects.filter(name="review-customers").exists()
    bad = client.post(
        reverse("governance:simulate"),
        {**data, "draft_guardrail": '{"name": "x", "action": "block"}'},
    )
    assert bad.status_code == 400
    assert 'id="id_draft_guardrail_error"' in bad.content.decode()
    assert "needs a message" in bad.content.decode()
