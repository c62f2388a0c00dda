"""The Django admin is no side door: its sign-in is allauth's (password, then TOTP, with
allauth's rate limits), and every policy object in it is view-only, so each change goes
through the services that record history, write the audit trail and recompile bundles."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals import services as approvals
from audit.models import AuditRetention, ChangeRecord
from audit.services import audit_verify_run
from governance import services
from governance.models import GuardrailRule
from tests.approvals.conftest import open_payload
from tests.conftest import persona_password
from tests.governance.test_auth import totp_now

pytestmark = pytest.mark.django_db

POLICY_APPS = {"governance", "approvals", "audit"}


def test_admin_login_with_a_password_alone_is_sent_to_allauth_and_its_totp_step(admin_user):
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": "admin", "password": persona_password("admin"), "next": "/admin/"},
    )
    # No admin session from a password: the admin's sign-in is allauth's page.
    assert "_auth_user_id" not in client.session
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")
    assert client.get("/admin/").status_code == 302
    # allauth's flow asks for the second factor before anything is signed in.
    response = client.post(
        "/accounts/login/?next=/admin/",
        {"login": "admin", "password": persona_password("admin"), "next": "/admin/"},
    )
    assert response.status_code == 302 and response["Location"] == "/accounts/2fa/authenticate/"
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302
    response = client.post(
        "/accounts/2fa/authenticate/", {"code": totp_now(admin_user.totp_secret)}
    )
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_admin_login_page_sends_signed_out_visitors_to_allauth(db):
    response = Client().get("/admin/login/?next=/admin/governance/guardrailrule/")
    assert response.status_code == 302
    assert response["Location"] == (
        "/accounts/login/?next=%2Fadmin%2Fgovernance%2Fguardrailrule%2F"
    )


def _one_of_everything(demo_policy: Any, admin_user: Any, reviewer_user: Any) -> None:
    """At least one row of every model the admin shows, made the way Warden makes them."""
    services.token_issue(actor=admin_user, identity=demo_policy.service, name="ci")
    services.api_token_issue(actor=admin_user, name="automation")
    services.break_glass_create(
        actor=admin_user,
        datasource=demo_policy.datasource,
        identity=demo_policy.service,
        rules=["floor.copy_server_side"],
        reason="INC-1: restore",
        expires_at=timezone.now() + datetime.timedelta(hours=1),
    )
    services.identity_update(
        actor=admin_user, identity=reviewer_user.identity, data={"teams": [demo_policy.team_b]}
    )
    approvals.review_settings_set(
        actor=admin_user, datasource=demo_policy.datasource, data={"escalate_after_seconds": 60}
    )
    request, _, _ = approvals.approval_request_open(
        datasource=demo_policy.datasource, identity=demo_policy.agent, **open_payload()
    )
    approvals.approval_decide(request_id=request.pk, user=reviewer_user, approve=True)
    AuditRetention.objects.create(environment="production", days=400)
    audit_verify_run()


def _policy_models() -> list[type]:
    return sorted(
        (m for m in admin.site._registry if m._meta.app_label in POLICY_APPS),
        key=lambda m: m._meta.label,
    )


def test_every_policy_model_in_the_admin_is_view_only(
    demo_policy, admin_user, reviewer_user
) -> None:
    _one_of_everything(demo_policy, admin_user, reviewer_user)
    client = Client()
    client.force_login(admin_user)
    models = _policy_models()
    assert {m._meta.model_name for m in models} >= {
        "identity",
        "team",
        "membership",
        "datasource",
        "classification",
        "columnclassification",
        "maskingrule",
        "guardrailrule",
        "accesstoken",
        "reviewsettings",
        "approvalrequest",
        "grant",
        "changerecord",
    }
    history = ChangeRecord.objects.count()
    for model in models:
        info = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        obj = model.objects.first()
        assert obj is not None, f"no {model._meta.label} to try the admin on"
        # Viewing still works: the list and each object's (read-only) page.
        assert client.get(reverse(f"{info}_changelist")).status_code == 200, model
        view = client.get(reverse(f"{info}_change", args=[obj.pk]))
        assert view.status_code == 200, model
        assert b'name="_save"' not in view.content, model
        # Adding, changing and deleting do not.
        assert client.get(reverse(f"{info}_add")).status_code == 403, model
        assert client.post(reverse(f"{info}_add"), {}).status_code == 403, model
        assert client.post(reverse(f"{info}_change", args=[obj.pk]), {}).status_code == 403, model
        assert client.get(reverse(f"{info}_delete", args=[obj.pk])).status_code == 403, model
        deleted = client.post(reverse(f"{info}_delete", args=[obj.pk]), {"post": "yes"})
        assert deleted.status_code == 403, model
        # The bulk "delete selected" action is not offered either.
        client.post(
            reverse(f"{info}_changelist"),
            {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"},
        )
        assert model.objects.filter(pk=obj.pk).exists(), model
    assert ChangeRecord.objects.count() == history


def test_a_guardrail_cannot_be_changed_in_the_admin(demo_policy, admin_user) -> None:
    guardrail = demo_policy.guardrails[0]
    client = Client()
    client.force_login(admin_user)
    url = reverse("admin:governance_guardrailrule_change", args=[guardrail.pk])
    form = {
        "name": guardrail.name,
        "position": guardrail.position,
        "action": "allow",
        "conditions": '{"environments": ["production"], "statement_kinds": ["ddl"]}',
        "message": "",
        "enabled": "on",
    }
    assert client.post(url, form).status_code == 403
    assert GuardrailRule.objects.get(pk=guardrail.pk).action == "block"
