"""Management commands: seed_demo is idempotent and valid; mint_api_token prints a token once."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from audit.models import ChangeRecord
from governance import services
from governance.models import (
    ApiToken,
    ColumnClassification,
    Datasource,
    GuardrailRule,
    Identity,
    MaskingRule,
    token_digest,
)

pytestmark = pytest.mark.django_db


def _counts() -> tuple[int, ...]:
    return tuple(
        m.objects.count()
        for m in (
            Identity,
            Datasource,
            ColumnClassification,
            MaskingRule,
            GuardrailRule,
            ChangeRecord,
        )
    )


def test_seed_demo_is_idempotent_and_every_object_is_valid(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    first = _counts()
    creds = (tmp_path / "demo-credentials.json").read_text()
    call_command("seed_demo", stdout=io.StringIO())
    assert _counts() == first
    assert (tmp_path / "demo-credentials.json").read_text() == creds
    kinds = set(Identity.objects.values_list("kind", flat=True))
    assert kinds == {"human", "service", "agent"}
    assert all(i.owner and i.owner.kind == "human" for i in Identity.objects.exclude(kind="human"))
    assert set(Datasource.objects.values_list("environment__name", flat=True)) >= {
        "production",
        "staging",
    }
    for model in (Identity, Datasource, ColumnClassification, MaskingRule, GuardrailRule):
        for obj in model.objects.all():
            obj.full_clean()
    client = Client()
    password = json.loads(creds)["security"]
    response = client.post("/accounts/login/", {"login": "security", "password": password})
    assert response.status_code == 302 and "_auth_user_id" in client.session


def test_mint_api_token_prints_a_working_token_once(security_user):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "mint_api_token", "security", "--name", "ci", "--days", "3", stdout=out, stderr=err
    )
    raw = out.getvalue().strip()
    token = ApiToken.objects.get(digest=token_digest(raw))
    assert token.name == "ci" and token.expires_at is not None
    assert raw not in err.getvalue() and token.prefix in err.getvalue()
    response = Client(HTTP_AUTHORIZATION=f"Token {raw}").get("/api/v1/guardrails/")
    assert response.status_code == 200


def test_mint_api_token_refuses_unknown_user_and_bad_days(security_user):
    with pytest.raises(CommandError, match="No user"):
        call_command("mint_api_token", "ghost")
    with pytest.raises(CommandError, match="--days"):
        call_command("mint_api_token", "security", "--days", "0")


def test_demo_policy_holds_writes_to_hash_masked_tables_in_production(settings, tmp_path):
    # Hash masking is deterministic: a guess written into customers could be compared
    # with the others' masked names, so the demo holds such writes for a reviewer.
    from governance.bundles import bundle_compile
    from sidecar.engine import Engine, load_bundle

    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    datasource = Datasource.objects.get(name="crm-prod")
    engine = Engine(load_bundle(bundle_compile(datasource=datasource)))
    write = engine.decide(
        identity="alice",
        sql="INSERT INTO customers (id, full_name) VALUES (9001, 'Guess Name')",
    )
    assert write.action == "review"
    assert write.reasons[0].rule == "review-writes-to-hashed-tables-in-production"
    read = engine.decide(identity="alice", sql="SELECT full_name FROM customers WHERE id = 1")
    assert read.action == "allow" and "warden_masking.hmac(" in read.upstream_sql


def test_set_role_goes_through_the_service_and_is_recorded(admin_user, auditor_user):
    from governance.models import Membership

    out = io.StringIO()
    call_command("set_role", "auditor", "security", "--by", "admin", stdout=out)
    assert out.getvalue().strip() == "auditor: security"
    assert Membership.objects.get(user=auditor_user).role == "security"
    record = ChangeRecord.objects.filter(content_type__model="membership").latest("at")
    assert record.actor == admin_user and record.after["role"] == "security"
    # Only an admin may hand out roles.
    with pytest.raises(CommandError, match="Only admins"):
        call_command("set_role", "admin", "none", "--by", "auditor")


def test_audit_retention_is_set_by_an_admin_and_recorded(admin_user, security_user):
    from audit.models import AuditRetention

    out = io.StringIO()
    call_command("audit_retention", "production", "90", "--by", "admin", stdout=out)
    assert AuditRetention.objects.get(environment="production").days == 90
    record = ChangeRecord.objects.filter(content_type__model="auditretention").latest("at")
    assert record.actor == admin_user and record.action == "create"
    with pytest.raises(CommandError, match="31"):
        call_command("audit_retention", "production", "7", "--by", "admin")
    with pytest.raises(CommandError, match="Only admins"):
        call_command("audit_retention", "production", "400", "--by", "security")
    call_command("audit_retention", "production", "default", "--by", "admin")
    assert not AuditRetention.objects.exists()
    out = io.StringIO()
    call_command("audit_retention", stdout=out)
    assert out.getvalue().splitlines() == ["default: 400 days"]


def test_seed_demo_gives_alice_a_sign_in_linked_to_her_identity(settings, tmp_path):
    # A var/ from before alice had a sign-in: the others keep their passwords.
    settings.VAR_DIR = tmp_path
    old = {"admin": "a", "security": "s", "reviewer": "r", "auditor": "u"}
    (tmp_path / "demo-credentials.json").write_text(json.dumps(old))
    call_command("seed_demo", stdout=io.StringIO())
    creds = json.loads((tmp_path / "demo-credentials.json").read_text())
    assert {k: creds[k] for k in old} == old and creds["alice"]
    assert (tmp_path / "demo-credentials.json").stat().st_mode & 0o077 == 0
    alice = Identity.objects.get(name="alice")
    assert alice.user is not None and alice.user.username == "alice"
    client = Client()
    response = client.post("/accounts/login/", {"login": "alice", "password": creds["alice"]})
    assert response.status_code == 302 and "_auth_user_id" in client.session
    assert client.get("/approvals/mine/").status_code == 200
    assert client.get("/approvals/").status_code == 403  # no role: her own requests only
    # A database seeded before alice had a sign-in: her identity gets linked.
    admin = get_user_model().objects.get(username="admin")
    services.identity_unlink_user(actor=admin, identity=alice)
    services.identity_update(actor=admin, identity=alice, data={"email": ""})
    call_command("seed_demo", stdout=io.StringIO())
    alice.refresh_from_db()
    assert alice.user is not None and alice.user.username == "alice" and alice.email
