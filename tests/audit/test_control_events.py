"""Control-plane decisions land in the trail: sign-ins, policy changes, tokens, sidecars."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from django.db import OperationalError, connection, transaction
from django.test import Client

from audit.models import CONTROL_PLANE_CHAIN, AuditEvent, datasource_chain
from audit.services import audit_control_event, audit_verify
from governance import services
from tests.conftest import persona_password
from tests.dsn import database_url

pytestmark = pytest.mark.django_db


def _latest(**filters: Any) -> AuditEvent:
    event = AuditEvent.objects.filter(**filters).order_by("-chain", "-seq").first()
    assert event is not None, filters
    return event


def test_sign_in_success_and_failure(security_user: Any) -> None:
    client = Client(REMOTE_ADDR="10.1.2.3")
    wrong = "Wrong-Secret-4711!"
    client.post("/accounts/login/", {"login": "security", "password": wrong})
    failed = _latest(type="auth.sign_in_failed")
    assert failed.chain == CONTROL_PLANE_CHAIN and failed.source == "control_plane"
    assert failed.extra["detail"] == {"username": "security"}
    assert failed.outcome == "failed" and failed.client_addr == "10.1.2.3"

    client.post("/accounts/login/", {"login": "security", "password": persona_password("security")})
    ok = _latest(type="auth.sign_in")
    assert ok.actor == "security" and ok.client_addr == "10.1.2.3"

    everything = json.dumps(
        list(AuditEvent.objects.filter(chain=CONTROL_PLANE_CHAIN).values()), default=str
    )
    assert wrong not in everything and persona_password("security") not in everything
    assert audit_verify(chain=CONTROL_PLANE_CHAIN).ok


def test_policy_change_emits_an_event_in_the_datasource_chain(
    demo_policy: Any, admin_user: Any
) -> None:
    rule = demo_policy.masking_rules[0]
    services.masking_rule_update(
        actor=admin_user, rule=rule, data={"enabled": False}, reason="replaced"
    )
    ds = demo_policy.datasource
    services.datasource_update(actor=admin_user, datasource=ds, data={"description": "new words"})
    change = _latest(type="policy.change", chain=datasource_chain(ds.pk))
    assert change.actor == "admin" and change.outcome == "update"
    assert change.extra["detail"]["fields"] == ["description"]
    assert "new words" not in json.dumps(change.extra)  # names of fields, never values
    masking = _latest(type="policy.change", extra__detail__model="maskingrule")
    assert masking.chain == CONTROL_PLANE_CHAIN


def test_token_issue_and_revoke(demo_policy: Any, admin_user: Any) -> None:
    token, raw = services.token_issue(actor=admin_user, identity=demo_policy.service, name="ci")
    issued = _latest(type="token.issued")
    assert issued.actor == "admin" and issued.extra["detail"]["kind"] == "accesstoken"
    services.token_revoke(actor=admin_user, token=token)
    assert _latest(type="token.revoked").extra["target"].startswith(f"accesstoken:{token.pk}")
    api_token, api_raw = services.api_token_issue(actor=admin_user, name="laptop")
    services.api_token_revoke(actor=admin_user, token=api_token)
    assert _latest(type="token.revoked").extra["detail"]["kind"] == "apitoken"
    trail = json.dumps(list(AuditEvent.objects.values()), default=str)
    assert raw not in trail and api_raw not in trail


def test_sidecar_lifecycle_in_its_datasource_chain(demo_policy: Any, admin_user: Any) -> None:
    ds = demo_policy.datasource
    sidecar, raw = services.sidecar_register(actor=admin_user, datasource=ds, name="sc-x")
    _, raw2 = services.sidecar_rotate_token(actor=admin_user, sidecar=sidecar)
    services.sidecar_revoke(actor=admin_user, sidecar=sidecar)
    types = list(
        AuditEvent.objects.filter(chain=datasource_chain(ds.pk), type__startswith="sidecar.")
        .order_by("seq")
        .values_list("type", flat=True)
    )
    assert types == ["sidecar.registered", "sidecar.token_rotated", "sidecar.revoked"]
    trail = json.dumps(list(AuditEvent.objects.values()), default=str)
    assert raw not in trail and raw2 not in trail
    assert audit_verify(chain=datasource_chain(ds.pk)).ok


def test_approval_decision_and_rollback(demo_policy: Any, reviewer_user: Any) -> None:
    from django.db import transaction

    audit_control_event(
        action="approval.approved",
        actor=reviewer_user,
        datasource=demo_policy.datasource,
        target="approval:17",
        outcome="approved",
        detail={"request": 17, "params": ["123-45-6789"]},
    )
    approved = _latest(type="approval.approved")
    assert approved.environment == "production" and approved.actor == "reviewer"
    assert approved.extra["detail"] == {"request": 17}

    # A decision whose transaction rolls back leaves no event.
    before = AuditEvent.objects.filter(type="approval.denied").count()
    with pytest.raises(RuntimeError), transaction.atomic():
        audit_control_event(action="approval.denied", actor=reviewer_user)
        raise RuntimeError("rolled back")
    assert AuditEvent.objects.filter(type="approval.denied").count() == before
    assert audit_verify().ok


def test_a_lone_surrogate_in_a_detail_is_replaced_and_the_event_kept() -> None:
    # A sign-in attempt records the username tried, whatever its bytes.
    audit_control_event(action="auth.sign_in_failed", detail={"username": "x\ud800"})
    event = _latest(type="auth.sign_in_failed")
    assert event.extra["detail"] == {"username": "x\ufffd"}
    assert audit_verify(chain=CONTROL_PLANE_CHAIN).ok


@pytest.mark.django_db(transaction=True)
def test_a_database_error_while_appending_is_djangos_to_catch() -> None:
    # The chain append runs on a raw psycopg cursor; callers catch Django's errors.
    audit_control_event(action="auth.sign_in")
    with psycopg.connect(database_url(), autocommit=False) as other:
        other.execute(
            "SELECT 1 FROM audit_chain_head WHERE chain = %s FOR UPDATE", [CONTROL_PLANE_CHAIN]
        )
        with pytest.raises(OperationalError), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '100ms'")
            audit_control_event(action="auth.sign_in_failed")
