"""Services: invariants, refusals of contradictory or unsafe policy, permissions, history."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from audit.models import ChangeRecord
from audit.selectors import change_history_for
from governance import selectors, services
from governance.errors import ApplicationError
from governance.models import Classification, Environment, GuardrailRule, token_digest

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


def _fields(exc: pytest.ExceptionInfo) -> dict:
    return exc.value.message_dict


def test_nonhuman_needs_a_human_owner(demo_policy, admin_user):
    with pytest.raises(ValidationError) as exc:
        services.identity_create(actor=admin_user, name="svc-x", kind="service")
    assert "owner" in _fields(exc)
    with pytest.raises(ValidationError) as exc:
        services.identity_create(
            actor=admin_user, name="svc-y", kind="agent", owner=demo_policy.service
        )
    assert _fields(exc)["owner"] == ["The owner must be a human identity."]
    with pytest.raises(ValidationError) as exc:
        services.identity_update(
            actor=admin_user, identity=demo_policy.owner, data={"kind": "service"}
        )
    assert "owner" in _fields(exc) or "kind" in _fields(exc)


def test_owner_cannot_be_deleted_while_owning(demo_policy, admin_user):
    with pytest.raises(ApplicationError) as exc:
        services.identity_delete(actor=admin_user, identity=demo_policy.owner)
    assert "svc-billing" in exc.value.message


@pytest.mark.parametrize(
    ("strategy", "params", "problem"),
    [
        ("partial", {}, "keep_last"),
        ("partial", {"keep_last": 0}, "keep_last"),
        ("partial", {"keep_last": True}, "keep_last"),
        ("hash", {"length": 12}, "not a parameter of hash"),
        ("email", {"keep_last": 4}, "not a parameter of email"),
        ("redact", {"replacement": "***"}, "not a parameter of redact"),
        ("partial", {"keep_last": 4, "mask_char": "#"}, "not a parameter of partial"),
    ],
)
def test_masking_params_are_validated_per_strategy(strategy, params, problem, admin_user):
    with pytest.raises(ValidationError) as exc:
        services.masking_rule_create(
            actor=admin_user,
            name="m",
            classification=Classification.objects.get(name="pii.phone"),
            strategy=strategy,
            params=params,
        )
    assert problem in " ".join(_fields(exc)["params"])


def test_masking_rules_may_not_contradict_but_may_split_environments(demo_policy, admin_user):
    phone = Classification.objects.get(name="pii.phone")
    services.masking_rule_create(
        actor=admin_user,
        name="p1",
        classification=phone,
        strategy="null",
        environments=["production"],
    )
    services.masking_rule_create(
        actor=admin_user,
        name="p2",
        classification=phone,
        strategy="redact",
        environments=["staging"],
    )
    with pytest.raises(ValidationError) as exc:
        services.masking_rule_create(
            actor=admin_user, name="p3", classification=phone, strategy="redact"
        )
    assert "p1" in _fields(exc)["classification"][0]
    with pytest.raises(ValidationError) as exc:
        services.masking_rule_create(
            actor=admin_user,
            name="p4",
            classification=phone,
            strategy="redact",
            environments=["mars"],
        )
    assert _fields(exc)["environments"] == ["Unknown environment: mars."]


@pytest.mark.parametrize(
    ("conditions", "action", "message", "field", "text"),
    [
        ({}, "allow", "", "conditions", "would allow everything in production"),
        ({"environments": ["production"]}, "allow", "", "conditions", "production"),
        (
            {"identity_kinds": ["human"], "unparseable": True},
            "allow",
            "",
            "conditions",
            "cannot parse",
        ),
        ({"statement_kinds": ["ddl"]}, "block", "", "message", "needs a message"),
        ({"statement_kinds": ["dance"]}, "block", "m", "conditions", "dance"),
        ({"classifications": ["pii.shoe"]}, "block", "m", "conditions", "pii.shoe"),
        ({"teams": ["nobody"]}, "block", "m", "conditions", "nobody"),
        ({"tables": ["a b"]}, "block", "m", "conditions", "a b"),
        ({"missing_where": "yes"}, "block", "m", "conditions", "missing_where"),
        ({"color": ["red"]}, "block", "m", "conditions", "color"),
    ],
)
def test_unsafe_or_contradictory_guardrails_are_refused(
    conditions, action, message, field, text, admin_user
):
    with pytest.raises(ValidationError) as exc:
        services.guardrail_create(
            actor=admin_user, name="g", action=action, conditions=conditions, message=message
        )
    assert text in " ".join(_fields(exc)[field])
    assert not GuardrailRule.objects.filter(name="g").exists()


def test_guardrail_scoped_to_datasource_must_match_its_environment(demo_policy, admin_user):
    with pytest.raises(ValidationError) as exc:
        services.guardrail_create(
            actor=admin_user,
            name="g",
            action="block",
            message="m",
            datasource=demo_policy.datasource,
            conditions={"environments": ["staging"]},
        )
    assert "can never apply" in _fields(exc)["conditions"][0]


def test_allow_rule_is_fine_outside_production_and_cannot_move_there(demo_policy, admin_user):
    sandbox = Environment.objects.get(name="sandbox")
    ds = services.datasource_create(actor=admin_user, name="play", environment=sandbox)
    rule = services.guardrail_create(actor=admin_user, name="free", action="allow", datasource=ds)
    production = Environment.objects.get(name="production")
    with pytest.raises(ValidationError) as exc:
        services.datasource_update(
            actor=admin_user, datasource=ds, data={"environment": production}
        )
    assert "free" in _fields(exc)["environment"][0]
    rule.refresh_from_db()
    ds.refresh_from_db()
    assert ds.environment == sandbox


def test_guardrail_move_and_insert_keep_a_dense_order(demo_policy, admin_user):
    first, second = demo_policy.guardrails
    third = services.guardrail_create(
        actor=admin_user, name="g3", action="block", message="m", position=1
    )
    order = list(GuardrailRule.objects.values_list("name", "position"))
    assert order == [("g3", 1), (first.name, 2), (second.name, 3)]
    # All three protect crm-prod: each new order of them comes with a reason.
    services.guardrail_move(actor=admin_user, guardrail=third, direction="down", reason="r")
    services.guardrail_move(actor=admin_user, guardrail=second, position=1, reason="r")
    assert list(GuardrailRule.objects.values_list("name", flat=True)) == [
        second.name,
        first.name,
        "g3",
    ]
    assert list(GuardrailRule.objects.values_list("position", flat=True)) == [1, 2, 3]
    services.guardrail_move(actor=admin_user, guardrail=second, direction="up")  # already first
    assert GuardrailRule.objects.get(pk=second.pk).position == 1


def test_history_records_before_and_after(demo_policy, security_user):
    rule = demo_policy.masking_rules[1]
    services.masking_rule_update(
        actor=security_user,
        rule=rule,
        data={"params": {"keep_last": 2}, "exempt_teams": []},
        reason="nobody is exempt",
    )
    latest = change_history_for(rule).first()
    assert latest.actor_name == "security" and latest.action == "update"
    assert latest.before["params"] == {"keep_last": 4} and latest.after["params"] == {
        "keep_last": 2
    }
    assert latest.before["exempt_teams"] == ["Team B"] and latest.after["exempt_teams"] == []
    count = ChangeRecord.objects.count()
    services.masking_rule_update(actor=security_user, rule=rule, data={"params": {"keep_last": 2}})
    assert ChangeRecord.objects.count() == count  # nothing changed, nothing recorded


def test_failed_change_leaves_no_history(demo_policy, admin_user):
    count = ChangeRecord.objects.count()
    with pytest.raises(ValidationError):
        services.guardrail_update(
            actor=admin_user,
            guardrail=demo_policy.guardrails[0],
            data={"action": "allow", "conditions": {}},
        )
    assert ChangeRecord.objects.count() == count
    assert GuardrailRule.objects.get(pk=demo_policy.guardrails[0].pk).action == "block"


@pytest.mark.parametrize("role", ["reviewer", "auditor", "none"])
def test_only_policy_editors_change_policy(role, personas, demo_policy):
    actor = personas[role]
    with pytest.raises(PermissionDenied):
        services.team_create(actor=actor, name="t")
    with pytest.raises(PermissionDenied):
        services.guardrail_set_enabled(
            actor=actor, guardrail=demo_policy.guardrails[0], enabled=False
        )


def test_builtin_classifications_cannot_be_deleted_or_renamed(admin_user):
    email = Classification.objects.get(name="pii.email")
    with pytest.raises(ApplicationError):
        services.classification_delete(actor=admin_user, classification=email)
    with pytest.raises(ValidationError):
        services.classification_update(
            actor=admin_user, classification=email, data={"name": "pii.mail"}
        )


def test_classification_in_use_cannot_be_deleted(demo_policy, admin_user):
    custom = services.classification_create(
        actor=admin_user, name="pii.passport", level="restricted"
    )
    services.guardrail_create(
        actor=admin_user,
        name="no-passports",
        action="block",
        message="m",
        conditions={"classifications": ["pii.passport"]},
    )
    with pytest.raises(ApplicationError) as exc:
        services.classification_delete(actor=admin_user, classification=custom)
    assert "no-passports" in exc.value.message


def test_scanner_proposal_never_overrides_a_confirmed_manual_classification(
    demo_policy, admin_user
):
    column = demo_policy.columns[0]
    result = services.column_classification_set(
        actor=admin_user,
        datasource=column.datasource,
        schema_name=column.schema_name,
        table_name=column.table_name,
        column_name=column.column_name,
        classification=Classification.objects.get(name="pii.name"),
        source="auto",
        confidence=0.7,
    )
    assert result.classification.name == "pii.email" and result.status == "confirmed"


def _scram_client_proof_ok(verifier: str, password: str) -> bool:
    """Check a verifier the way a SCRAM server does: StoredKey == H(ClientKey(password))."""
    method, rest = verifier.split("$", 1)
    iter_salt, keys = rest.split("$")
    iterations, salt = iter_salt.split(":")
    stored_key, server_key = keys.split(":")
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return (
        method == "SCRAM-SHA-256"
        and base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key
        and (
            base64.b64encode(hmac.new(salted, b"Server Key", hashlib.sha256).digest()).decode()
            == server_key
        )
    )


def test_token_issue_stores_digest_and_scram_verifier(demo_policy, admin_user):
    token, raw = services.token_issue(actor=admin_user, identity=demo_policy.service, name="ci")
    assert token.digest == token_digest(raw) and raw not in token.scram_verifier
    assert token.prefix == raw[:10]
    assert _scram_client_proof_ok(token.scram_verifier, raw)
    assert not _scram_client_proof_ok(token.scram_verifier, raw + "x")
    services.token_revoke(actor=admin_user, token=token)
    assert (
        not selectors.token_list(user=admin_user, filters={"active": "true"})
        .filter(pk=token.pk)
        .exists()
    )
    services.identity_update(
        actor=admin_user, identity=demo_policy.service, data={"is_active": False}
    )
    with pytest.raises(ApplicationError):
        services.token_issue(actor=admin_user, identity=demo_policy.service, name="again")


def test_a_datasource_its_sidecars_enforce_is_not_renamed(demo_policy, admin_user):
    """A review's finding: each sidecar accepts only bundles naming its datasource. A
    rename made every sidecar of it refuse every later bundle, so revocations no
    longer reached them and they enforced the old policy until it expired. A rename
    is refused while a sidecar enforces the datasource, and allowed once none does."""
    datasource = demo_policy.datasource
    sidecar, _ = services.sidecar_register(actor=admin_user, datasource=datasource, name="sc-pin")
    with pytest.raises(ValidationError, match="1 sidecar"):
        services.datasource_update(
            actor=admin_user, datasource=datasource, data={"name": "crm-renamed"}, reason="r"
        )
    datasource.refresh_from_db()
    assert datasource.name != "crm-renamed"
    services.datasource_update(  # its other fields change as before
        actor=admin_user, datasource=datasource, data={"description": "still pinned"}
    )
    services.sidecar_revoke(actor=admin_user, sidecar=sidecar)
    services.datasource_update(
        actor=admin_user, datasource=datasource, data={"name": "crm-renamed"}, reason="r"
    )
    datasource.refresh_from_db()
    assert datasource.name == "crm-renamed"
