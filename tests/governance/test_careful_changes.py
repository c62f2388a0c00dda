"""Careful with production: a reason for the changes that may weaken it, and one reorder.

One rule: a change to a protective field (anything but a name, a message, a
description) of a guardrail, masking rule, column classification, datasource or
environment that protects a production datasource, before or after the change, and
deleting one, is refused without a ``reason`` (400, naming the field) by the API and
the pages alike; so is a reorder or an insertion that changes which guardrail
decides first on a production datasource. The reason is kept in the change record
and its ``policy.change`` event. Elsewhere a click is enough. The security review's
bypasses (narrow first, then disable; change the action; move the datasource out of
production; reclassify; reorder) are each a case here. Each endpoint is also tried
with the wrong role and with an object that is not the one addressed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent, ChangeRecord
from governance import selectors, services
from governance.models import (
    Classification,
    ColumnClassification,
    Environment,
    GuardrailRule,
    MaskingRule,
)
from tests.governance.test_api_access import Api

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


@pytest.fixture
def api(personas: dict[str, Any]) -> dict[str, Api]:
    return {role: Api(user) for role, user in personas.items()}


def _fields(response: Any) -> dict[str, list[str]]:
    return response.json()["error"]["fields"]


def _last_event(change: ChangeRecord) -> dict[str, Any]:
    """The detail of the change's ``policy.change`` event."""
    event = AuditEvent.objects.get(type="policy.change", extra__detail__change_record=change.pk)
    return event.extra["detail"]


def test_what_affects_production(demo_policy: Any, staging_rule: GuardrailRule) -> None:
    block_ddl, review_agents = demo_policy.guardrails
    assert selectors.production_datasources_affected(block_ddl) == ["crm-prod"]
    assert selectors.production_datasources_affected(review_agents) == ["crm-prod"]  # all
    assert selectors.production_datasources_affected(staging_rule) == []
    rule = demo_policy.masking_rules[0]
    assert selectors.production_datasources_affected(rule) == ["crm-prod"]  # every env
    rule.environments = ["sandbox"]
    assert selectors.production_datasources_affected(rule) == []
    assert selectors.production_datasources_affected(demo_policy.columns[0]) == ["crm-prod"]
    production = Environment.objects.get(name="production")
    production.criticality = 4  # no production datasource left
    production.save()
    assert selectors.production_datasources_affected(block_ddl) == []


def test_disable_guardrail_needs_a_reason_kept_in_history_and_event(
    api: dict[str, Api], demo_policy: Any
) -> None:
    rule = demo_policy.guardrails[0]
    url = f"/api/v1/guardrails/{rule.pk}/disable/"
    before = ChangeRecord.objects.count()
    assert api["reviewer"].call("POST", url, {"reason": "x"}).status_code == 403
    assert api["auditor"].call("POST", url, {"reason": "x"}).status_code == 403
    assert api["security"].call("POST", "/api/v1/guardrails/999999/disable/").status_code == 404
    refused = api["security"].call("POST", url, {})
    assert refused.status_code == 400
    assert "crm-prod" in _fields(refused)["reason"][0]
    blank = api["security"].call("POST", url, {"reason": "   "})
    assert blank.status_code == 400 and "reason" in _fields(blank)
    rule.refresh_from_db()
    assert rule.enabled is True and ChangeRecord.objects.count() == before

    done = api["security"].call("POST", url, {"reason": "Migration window, INC-42"})
    assert done.status_code == 200 and done.json()["enabled"] is False
    change = ChangeRecord.objects.get(object_id=str(rule.pk), action="update")
    assert change.reason == "Migration window, INC-42"
    assert _last_event(change)["reason"] == "Migration window, INC-42"
    history = api["auditor"].call("GET", f"/api/v1/guardrails/{rule.pk}/history/").json()
    assert history["results"][0]["reason"] == "Migration window, INC-42"
    # Enabling it again weakens nothing: no reason needed.
    enabled = api["security"].call("POST", f"/api/v1/guardrails/{rule.pk}/enable/")
    assert enabled.status_code == 200 and enabled.json()["enabled"] is True


def test_patch_disabling_and_delete_take_the_reason_in_the_body(
    api: dict[str, Api], demo_policy: Any
) -> None:
    rule = demo_policy.guardrails[1]
    url = f"/api/v1/guardrails/{rule.pk}/"
    assert api["security"].call("PATCH", url, {"enabled": False}).status_code == 400
    # Other changes of a production guardrail stay one call.
    assert api["security"].call("PATCH", url, {"message": "Agents ask first."}).status_code == 200
    patched = api["security"].call("PATCH", url, {"enabled": False, "reason": "noisy"})
    assert patched.status_code == 200 and "reason" not in patched.json()  # write-only
    assert api["reviewer"].call("DELETE", url, {"reason": "x"}).status_code == 403
    refused = api["security"].call("DELETE", url)
    assert refused.status_code == 400 and "reason" in _fields(refused)
    assert api["security"].call("DELETE", url, {"reason": "superseded"}).status_code == 204
    deleted = ChangeRecord.objects.get(object_id=str(rule.pk), action="delete")
    assert deleted.reason == "superseded"
    assert _last_event(deleted)["reason"] == "superseded"

    masking = demo_policy.masking_rules[0]
    murl = f"/api/v1/masking-rules/{masking.pk}/"
    assert api["security"].call("PATCH", murl, {"enabled": False}).status_code == 400
    assert api["security"].call("DELETE", murl).status_code == 400
    # Not a query parameter (proxies and access logs keep those).
    assert api["security"].call("DELETE", murl + "?reason=replaced+by+hash").status_code == 400
    assert api["security"].call("DELETE", murl, {"reason": "replaced by hash"}).status_code == 204
    assert not MaskingRule.objects.filter(pk=masking.pk).exists()
    assert ChangeRecord.objects.get(object_id=str(masking.pk), action="delete").reason == (
        "replaced by hash"
    )


def test_outside_production_one_call_is_enough(
    api: dict[str, Api], demo_policy: Any, staging_rule: GuardrailRule, security_user: Any
) -> None:
    url = f"/api/v1/guardrails/{staging_rule.pk}/"
    assert api["security"].call("POST", url + "disable/").status_code == 200
    assert api["security"].call("DELETE", url).status_code == 204
    rule = services.masking_rule_create(
        actor=security_user,
        name="mask-card-sandbox",
        classification=Classification.objects.get(name="financial.card"),
        strategy="redact",
        environments=["sandbox"],
    )
    assert api["security"].call("DELETE", f"/api/v1/masking-rules/{rule.pk}/").status_code == 204


def test_reject_or_remove_a_production_classification_needs_a_reason(
    api: dict[str, Api], demo_policy: Any, security_user: Any
) -> None:
    email, ssn = demo_policy.columns[0], demo_policy.columns[1]
    decide = f"/api/v1/column-classifications/{email.pk}/decide/"
    assert api["reviewer"].call("POST", decide, {"decision": "reject"}).status_code == 403
    refused = api["security"].call("POST", decide, {"decision": "reject"})
    assert refused.status_code == 400 and "reason" in _fields(refused)
    email.refresh_from_db()
    assert email.status == "confirmed"
    done = api["security"].call(
        "POST", decide, {"decision": "reject", "reason": "a shared mailbox, not a person"}
    )
    assert done.status_code == 200 and done.json()["status"] == "rejected"
    change = ChangeRecord.objects.filter(object_id=str(email.pk), action="update").first()
    assert change is not None and change.reason == "a shared mailbox, not a person"
    # Confirming needs none.
    confirm = api["security"].call("POST", decide, {"decision": "confirm"})
    assert confirm.status_code == 200

    url = f"/api/v1/column-classifications/{ssn.pk}/"
    assert api["security"].call("DELETE", url).status_code == 400
    assert api["security"].call("DELETE", url, {"reason": "dropped column"}).status_code == 204
    assert not ColumnClassification.objects.filter(pk=ssn.pk).exists()


def test_review_page_decisions_and_other_datasource(
    client: Client, demo_policy: Any, security_user: Any, reviewer_user: Any
) -> None:
    email = demo_policy.columns[0]
    other = services.datasource_create(
        actor=security_user,
        name="crm-staging",
        environment=Environment.objects.get(name="staging"),
    )
    url = reverse("governance:review_decide", args=[email.datasource_id, email.pk])
    wrong = reverse("governance:review_decide", args=[other.pk, email.pk])
    client.force_login(reviewer_user)
    assert client.post(url, {"decision": "reject", "reason": "x"}).status_code == 403
    client.force_login(security_user)
    assert client.post(wrong, {"decision": "reject", "reason": "x"}).status_code == 404
    inline = client.post(url, {"decision": "reject"}, HTTP_HX_REQUEST="true")
    assert inline.status_code == 200 and b"give a reason" in inline.content
    email.refresh_from_db()
    assert email.status == "confirmed"
    client.post(url, {"decision": "reject", "reason": "shared inbox"}, HTTP_HX_REQUEST="true")
    email.refresh_from_db()
    assert email.status == "rejected"


def test_delete_page_asks_for_the_reason_only_in_production(
    client: Client, demo_policy: Any, security_user: Any, staging_rule: GuardrailRule
) -> None:
    client.force_login(security_user)
    rule = demo_policy.masking_rules[0]
    url = reverse("governance:masking_rule_delete", args=[rule.pk])
    page = client.get(url).content.decode()
    assert 'name="reason"' in page and "crm-prod" in page
    assert client.post(url).status_code == 400
    assert client.post(url, {"reason": "moving to hash"}).status_code == 302
    assert ChangeRecord.objects.get(object_id=str(rule.pk), action="delete").reason == (
        "moving to hash"
    )
    staging = reverse("governance:guardrail_delete", args=[staging_rule.pk])
    assert 'name="reason"' not in client.get(staging).content.decode()
    assert client.post(staging).status_code == 302


def test_guardrail_edit_form_reason_and_create_position(
    client: Client, demo_policy: Any, security_user: Any
) -> None:
    client.force_login(security_user)
    rule = demo_policy.guardrails[0]
    edit = reverse("governance:guardrail_edit", args=[rule.pk])
    form = client.get(edit).context["form"]
    assert "reason" in form.fields and "position" not in form.fields
    assert "crm-prod" in form.fields["reason"].help_text
    data = {
        "name": rule.name,
        "action": "block",
        "message": rule.message,
        "environments": ["production"],
        "statement_kinds": ["ddl"],
    }  # "enabled" left out: unticked
    refused = client.post(edit, data)
    assert refused.status_code == 400 and refused.context["form"].errors["reason"]
    assert client.post(edit, {**data, "reason": "freeze over"}).status_code == 302
    rule.refresh_from_db()
    assert rule.enabled is False

    create = reverse("governance:guardrail_create")
    assert "position" in client.get(create).context["form"].fields
    response = client.post(
        create,
        {
            "name": "block-copy",
            "action": "block",
            "message": "No COPY.",
            "statement_kinds": ["copy"],
            "enabled": "on",
            "position": "1",
        },
    )
    assert response.status_code == 302
    assert list(GuardrailRule.objects.values_list("name", flat=True)) == [
        "block-copy",
        "block-ddl-in-production",
        "review-agent-writes",
    ]


def test_reorder_is_one_change(
    api: dict[str, Api], client: Client, demo_policy: Any, security_user: Any
) -> None:
    first, second = demo_policy.guardrails
    third = services.guardrail_create(
        actor=security_user,
        name="block-truncate",
        action="block",
        conditions={"statement_kinds": ["truncate"]},
        message="No TRUNCATE.",
    )
    url = "/api/v1/guardrails/order/"
    before = ChangeRecord.objects.count()
    assert api["reviewer"].call("POST", url, {"order": [third.pk]}).status_code == 403
    missing = api["security"].call("POST", url, {"order": [third.pk, first.pk]})
    assert missing.status_code == 400
    assert "review-agent-writes" in _fields(missing)["order"][0]
    unknown = api["security"].call("POST", url, {"order": [third.pk, first.pk, 999999]})
    assert unknown.status_code == 400 and "999999" in _fields(unknown)["order"][0]
    twice = api["security"].call("POST", url, {"order": [third.pk, first.pk, first.pk]})
    assert twice.status_code == 400
    assert ChangeRecord.objects.count() == before

    # All three protect crm-prod: a new order of them needs a reason.
    bare = api["security"].call("POST", url, {"order": [third.pk, first.pk, second.pk]})
    assert bare.status_code == 400 and "crm-prod" in _fields(bare)["reason"][0]
    assert ChangeRecord.objects.count() == before
    done = api["security"].call(
        "POST", url, {"order": [third.pk, first.pk, second.pk], "reason": "truncate first"}
    )
    assert done.status_code == 200
    assert [g["name"] for g in done.json()] == [third.name, first.name, second.name]
    assert [g["position"] for g in done.json()] == [1, 2, 3]
    change = ChangeRecord.objects.get(object_id="order")  # one entry for three moves
    assert ChangeRecord.objects.count() == before + 1
    assert change.before == {"order": [first.name, second.name, third.name]}
    assert change.after == {"order": [third.name, first.name, second.name]}
    assert _last_event(change)["fields"] == ["order"]
    assert change.reason == "truncate first" and _last_event(change)["reason"] == change.reason

    # The page's drag and drop posts the same list; the change list links to the order.
    client.force_login(security_user)
    page = reverse("governance:guardrail_order")
    new_order = {"order": [second.pk, third.pk, first.pk]}
    refused = client.post(page, new_order, HTTP_HX_REQUEST="true")
    assert "give a reason" in refused["HX-Trigger"]
    assert ChangeRecord.objects.filter(object_id="order").count() == 1
    # Without JavaScript, the reason page posts every id of the order again.
    asked = client.post(page, new_order)
    assert asked.status_code == 400
    assert asked.context["fields"] == [("order", str(pk)) for pk in new_order["order"]]
    response = client.post(page, {**new_order, "reason": "x"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and b"data-reorder" in response.content
    assert ChangeRecord.objects.filter(object_id="order").count() == 2
    changes = client.get(reverse("governance:change_list")).content.decode()
    assert 'href="/guardrails/">Guardrail order' in changes
    refused = client.post(page, {"order": ["x"]}, HTTP_HX_REQUEST="true")
    assert "warden:error" in refused["HX-Trigger"]


def test_reorder_page_refuses_other_roles(client: Client, demo_policy: Any, auditor_user: Any):
    client.force_login(auditor_user)
    first, second = demo_policy.guardrails
    url = reverse("governance:guardrail_order")
    assert client.post(url, {"order": [second.pk, first.pk]}).status_code == 403
    first.refresh_from_db()
    assert first.position == 1


# --- the security review's bypasses: each refused without a reason, done with one ----------


def _refused_then_done(api: Api, method: str, url: str, body: dict[str, Any]) -> Any:
    """``body`` is refused without a reason (naming crm-prod, changing nothing), then
    done with one, which is kept on the change record."""
    history_before = ChangeRecord.objects.count()
    refused = api.call(method, url, body)
    assert refused.status_code == 400, refused.content
    assert "crm-prod" in _fields(refused)["reason"][0]
    assert ChangeRecord.objects.count() == history_before
    done = api.call(method, url, {**body, "reason": "CHG-7"})
    assert done.status_code in {200, 201, 204}, done.content
    assert ChangeRecord.objects.latest("pk").reason == "CHG-7"
    return done


@pytest.mark.parametrize(
    "change",
    [
        {"environments": ["sandbox"]},  # then disabling it would need none
        {"strategy": "redact", "params": {}},
        {"params": {"keep_last": 9}},
        {"exempt_teams": ["team-a", "team-b"]},
        {"classification": "general.public"},
    ],
    ids=["narrow", "strategy", "params", "exempt", "classification"],
)
def test_masking_rule_protective_fields_need_a_reason(
    api: dict[str, Api], demo_policy: Any, change: dict[str, Any]
) -> None:
    rule = demo_policy.masking_rules[1]  # mask-ssn: partial, keep_last 4, team-b exempt
    _refused_then_done(api["security"], "PATCH", f"/api/v1/masking-rules/{rule.pk}/", change)


def test_masking_rule_narrowed_with_a_reason_is_then_outside_production(
    api: dict[str, Api], demo_policy: Any
) -> None:
    rule = demo_policy.masking_rules[0]
    url = f"/api/v1/masking-rules/{rule.pk}/"
    assert api["security"].call("PATCH", url, {"name": "mask-email-2"}).status_code == 200
    _refused_then_done(api["security"], "PATCH", url, {"environments": ["sandbox"]})
    # Sandbox only now, before and after: one click, as anywhere outside production.
    assert api["security"].call("PATCH", url, {"enabled": False}).status_code == 200
    # Widening it back into production is a production change too.
    assert api["security"].call("PATCH", url, {"environments": []}).status_code == 400


@pytest.mark.parametrize(
    "change",
    [
        {"action": "review"},
        {"conditions": {"statement_kinds": ["ddl"], "environments": ["sandbox"]}},
        {"conditions": {"statement_kinds": ["ddl"], "teams": ["team-a"]}},
        {"datasource": "crm-staging"},
    ],
    ids=["action", "narrow", "teams", "datasource"],
)
def test_guardrail_protective_fields_need_a_reason(
    api: dict[str, Api], demo_policy: Any, security_user: Any, change: dict[str, Any]
) -> None:
    services.datasource_create(
        actor=security_user, name="crm-staging", environment=Environment.objects.get(name="staging")
    )
    rule = demo_policy.guardrails[0]  # block-ddl-in-production
    if "datasource" in change:  # its environments must include the datasource's
        change = {**change, "conditions": {"statement_kinds": ["ddl"]}}
    _refused_then_done(api["security"], "PATCH", f"/api/v1/guardrails/{rule.pk}/", change)
    # Its name and message stay one call.
    url = f"/api/v1/guardrails/{demo_policy.guardrails[1].pk}/"
    assert (
        api["security"].call("PATCH", url, {"name": "agents", "message": "Ask."}).status_code == 200
    )


def test_enabling_only_a_block_rule_goes_without_a_reason(
    api: dict[str, Api], demo_policy: Any, security_user: Any
) -> None:
    block, review = demo_policy.guardrails
    for rule in (block, review):
        services.guardrail_set_enabled(
            actor=security_user, guardrail=rule, enabled=False, reason="x"
        )
    assert api["security"].call("POST", f"/api/v1/guardrails/{block.pk}/enable/").status_code == 200
    # A review rule switched on may overrule a later block rule.
    _refused_then_done(api["security"], "POST", f"/api/v1/guardrails/{review.pk}/enable/", {})


def test_moving_a_production_datasource_out_needs_a_reason(
    api: dict[str, Api], demo_policy: Any
) -> None:
    url = f"/api/v1/datasources/{demo_policy.datasource.pk}/"
    assert api["reviewer"].call("PATCH", url, {"environment": "staging"}).status_code == 403
    assert api["security"].call("PATCH", url, {"description": "CRM"}).status_code == 200
    _refused_then_done(api["security"], "PATCH", url, {"environment": "staging"})
    # Now in staging: its guardrail no longer protects production, so one click.
    rule = demo_policy.guardrails[0]
    assert api["security"].call("POST", f"/api/v1/guardrails/{rule.pk}/disable/").status_code == 200


def test_deleting_a_production_datasource_needs_a_reason(
    api: dict[str, Api], demo_policy: Any, security_user: Any
) -> None:
    staging = services.datasource_create(
        actor=security_user, name="crm-staging", environment=Environment.objects.get(name="staging")
    )
    assert api["security"].call("DELETE", f"/api/v1/datasources/{staging.pk}/").status_code == 204
    url = f"/api/v1/datasources/{demo_policy.datasource.pk}/"
    assert api["reviewer"].call("DELETE", url, {"reason": "x"}).status_code == 403
    _refused_then_done(api["security"], "DELETE", url, {})
    assert not ColumnClassification.objects.exists()  # they went with it


def test_production_protect_threshold_needs_a_reason(api: dict[str, Api], demo_policy: Any) -> None:
    production = Environment.objects.get(name="production")
    url = f"/api/v1/environments/{production.pk}/"
    _refused_then_done(api["security"], "PATCH", url, {"protect_threshold": None})
    sandbox = Environment.objects.get(name="sandbox")
    sandbox_url = f"/api/v1/environments/{sandbox.pk}/"
    assert api["security"].call("PATCH", sandbox_url, {"protect_threshold": 0.5}).status_code == 200


def test_reclassifying_a_production_column_needs_a_reason(
    api: dict[str, Api], demo_policy: Any
) -> None:
    email, _ssn, card = demo_policy.columns
    url = f"/api/v1/column-classifications/{email.pk}/"
    _refused_then_done(api["security"], "PATCH", url, {"classification": "general.public"})
    # A POST for the same column replaces it: the same rule.
    body = {
        "datasource": "crm-prod",
        "schema_name": "public",
        "table_name": "customers",
        "column_name": "ssn",
        "classification": "general.public",
    }
    _refused_then_done(api["security"], "POST", "/api/v1/column-classifications/", body)
    decide = f"/api/v1/column-classifications/{card.pk}/decide/"
    body = {"decision": "reclassify", "classification": "general.internal"}
    _refused_then_done(api["security"], "POST", decide, body)


def test_reordering_and_inserting_above_production_rules(
    api: dict[str, Api], demo_policy: Any, staging_rule: GuardrailRule
) -> None:
    block, review = demo_policy.guardrails
    staging = staging_rule
    # A guardrail outside production moves freely, however far.
    order = {"order": [staging.pk, block.pk, review.pk]}
    assert api["security"].call("POST", "/api/v1/guardrails/order/", order).status_code == 200
    move = f"/api/v1/guardrails/{review.pk}/move/"
    assert api["reviewer"].call("POST", move, {"position": 1, "reason": "x"}).status_code == 403
    _refused_then_done(api["security"], "POST", move, {"position": 1})
    assert GuardrailRule.objects.values_list("name", flat=True).first() == review.name

    create = {
        "name": "allow-team-a-ddl",
        "action": "allow",
        "conditions": {"teams": ["team-a"], "statement_kinds": ["ddl"]},
        "position": 1,
    }
    _refused_then_done(api["security"], "POST", "/api/v1/guardrails/", create)
    # Appended last, or a block rule anywhere, overrules no production guardrail.
    last = {**create, "name": "allow-last", "position": None}
    del last["position"]
    assert api["security"].call("POST", "/api/v1/guardrails/", last).status_code == 201
    first_block = {**create, "name": "block-first", "action": "block", "message": "No."}
    assert api["security"].call("POST", "/api/v1/guardrails/", first_block).status_code == 201


def test_edit_forms_show_the_services_refusal_on_the_reason(
    client: Client, demo_policy: Any, security_user: Any
) -> None:
    client.force_login(security_user)
    rule = demo_policy.masking_rules[0]
    edit = reverse("governance:masking_rule_edit", args=[rule.pk])
    form = client.get(edit).context["form"]
    assert "do not include personal data" in form.fields["reason"].help_text
    data = {
        "name": rule.name,
        "classification": rule.classification_id,
        "strategy": "email",
        "environments": ["sandbox"],
        "enabled": "on",
    }
    refused = client.post(edit, data)
    assert refused.status_code == 400
    assert "crm-prod" in refused.context["form"].errors["reason"][0]
    assert client.post(edit, {**data, "reason": "sandbox only"}).status_code == 302
    rule.refresh_from_db()
    assert rule.environments == ["sandbox"]

    datasource = demo_policy.datasource
    edit = reverse("governance:datasource_edit", args=[datasource.pk])
    initial = client.get(edit).context["form"].initial
    staging = Environment.objects.get(name="staging")
    data = {
        "name": datasource.name,
        "environment": staging.pk,
        "engine": initial["engine"],
        "dialect": initial["dialect"],
        "schema_snapshot": json.dumps(datasource.schema_snapshot),
        "connect_teams": [demo_policy.team_a.pk],
        "review_teams": [demo_policy.team_b.pk],
    }
    refused = client.post(edit, data)
    assert refused.status_code == 400 and refused.context["form"].errors["reason"]
    assert client.post(edit, {**data, "reason": "decommissioned"}).status_code == 302
    datasource.refresh_from_db()
    assert datasource.environment == staging


def test_move_buttons_ask_for_a_reason_only_between_production_rules(
    client: Client, demo_policy: Any, security_user: Any, staging_rule: GuardrailRule
) -> None:
    block, review = demo_policy.guardrails
    staging = staging_rule
    client.force_login(security_user)
    page = client.get(reverse("governance:guardrail_list")).content.decode()
    down = re.search(rf'<button[^>]*id="down-{block.pk}"[^>]*>', page)
    assert down is not None and "data-reason-prompt" in down.group(0)
    down = re.search(rf'<button[^>]*id="down-{review.pk}"[^>]*>', page)
    assert down is not None and "data-reason-prompt" not in down.group(0)  # past staging
    url = reverse("governance:guardrail_move", args=[block.pk])
    asked = client.post(url, {"direction": "down"})
    assert asked.status_code == 400 and ("direction", "down") in asked.context["fields"]
    assert client.post(url, {"direction": "down", "reason": "x"}).status_code == 302
    assert list(GuardrailRule.objects.values_list("pk", flat=True)) == [
        review.pk,
        block.pk,
        staging.pk,
    ]


def test_rows_swapped_in_by_htmx_send_a_plain_submit_back_to_the_page(
    client: Client, demo_policy: Any, security_user: Any, staging_rule: GuardrailRule
) -> None:
    """CI failed once in Chromium: after a drag (an htmx POST to the order endpoint)
    the rows came back with that endpoint as their forms' ``next``; a move button
    pressed before htmx took over the new row submitted plainly, and the redirect
    sent the browser to GET /guardrails/order/: a 405. The rows' ``next`` is the page
    the browser shows (htmx sends it), wherever the fragment was rendered."""
    block, review = demo_policy.guardrails
    client.force_login(security_user)
    page = reverse("governance:guardrail_list")
    order = [staging_rule.pk, block.pk, review.pk]
    swapped = client.post(
        reverse("governance:guardrail_order"),
        {"order": order, "reason": "incident CHG-7"},
        headers={"HX-Request": "true", "HX-Current-URL": f"http://testserver{page}?q=1"},
    )
    assert swapped.status_code == 200, swapped.content[:300]
    nexts = set(re.findall(r'name="next" value="([^"]*)"', swapped.content.decode()))
    assert nexts == {f"{page}?q=1"}, nexts
    # Plainly submitted from such a row, a move lands back on the page.
    moved = client.post(
        reverse("governance:guardrail_move", args=[staging_rule.pk]),
        {"direction": "down", "reason": "x", "next": f"{page}?q=1"},
    )
    assert moved.status_code == 302 and moved["Location"] == f"{page}?q=1"
