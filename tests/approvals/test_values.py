"""Approve exactly what runs: values digests bind grants, recent denials are remembered,
decided requests lose their values after the retention, and the values never reach
the audit trail or a notification. Through the services and the sidecar's API."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from approvals import services
from approvals.models import (
    ApprovalEvent,
    ApprovalRequest,
    Grant,
    GrantState,
    ReviewSettings,
)
from approvals.tasks import approvals_purge_values
from governance import services as gov
from tests.approvals.conftest import open_payload
from tests.fakes.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once", "review_once")]

OPEN = "/api/v1/sidecar/approvals"
DIGEST_A = "a" * 64
DIGEST_B = "b" * 64
CANARY = "'zebra-canary-4417'"
VALUES = [
    {"statement": 0, "n": 1, "value": CANARY},
    {"statement": 0, "n": 2, "classification": "pii.email"},
]
ESTIMATE = {"rows": {"public.customers": 993}, "top": "ModifyTable", "error": ""}


def run(review_setup: Any, identity: Any = None, **overrides: Any) -> Any:
    """What a sidecar's POST does: (request, consumed grant, created)."""
    return services.approval_request_open(
        datasource=review_setup.datasource,
        identity=identity or review_setup.requester.identity,
        **open_payload(**overrides),
    )


def approve(review_setup: Any, request: ApprovalRequest) -> Grant:
    services.approval_decide(request_id=request.pk, user=review_setup.reviewer, approve=True)
    return Grant.objects.get(request=request)


def deny(review_setup: Any, request: ApprovalRequest, reason: str = "Not on a Friday.") -> None:
    services.approval_decide(
        request_id=request.pk, user=review_setup.reviewer, approve=False, reason=reason
    )


# --- what a request stores ---------------------------------------------------------------


def test_values_digest_values_and_estimate_are_stored_on_a_new_request(review_setup):
    request, grant, created = run(
        review_setup, values_digest=DIGEST_A, values=VALUES, estimate=ESTIMATE
    )
    assert created and grant is None
    request.refresh_from_db()
    assert (request.values_digest, request.values, request.estimate) == (
        DIGEST_A,
        VALUES,
        ESTIMATE,
    )
    assert request.binding == "statement"
    # An older sidecar sends none of them.
    old, _, created = run(review_setup, fingerprint="cd" * 16)
    assert created and (old.values_digest, old.values, old.estimate) == ("", [], {})


def test_the_binding_is_the_datasources_setting(review_setup, admin_user):
    services.review_settings_set(
        actor=admin_user, datasource=review_setup.datasource, data={"grant_binding": "shape"}
    )
    request, _, _ = run(review_setup, values_digest=DIGEST_A)
    assert request.binding == "shape"


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("values_digest", "A" * 64),
        ("values_digest", "a" * 63),
        ("values_digest", ""),
        ("values_digest", 7),
        ("values", "x"),
        ("values", [{"statement": 0, "n": 1}]),
        ("values", [{"statement": 0, "n": 0, "value": "1"}]),
        ("values", [{"statement": -1, "n": 1, "value": "1"}]),
        ("values", [{"statement": 0, "n": True, "value": "1"}]),
        ("values", [{"statement": 0, "n": 1, "value": 1}]),
        ("values", [{"statement": 0, "n": 1, "value": "x" * 2001}]),
        ("values", [{"statement": 0, "n": 1, "value": "1", "classification": "pii.email"}]),
        ("values", [{"statement": 0, "n": 1, "classification": ""}]),
        ("values", [{"statement": 0, "n": 1, "value": "1"}] * 501),
        ("values", [{"statement": 0, "n": 1, "value": "a\x00b"}]),
        ("estimate", []),
        ("estimate", {"rows": {}, "top": ""}),
        ("estimate", {"rows": {"t": -1}, "top": "", "error": ""}),
        ("estimate", {"rows": {"t": 1.5}, "top": "", "error": ""}),
        ("estimate", {"rows": [], "top": "", "error": ""}),
        ("estimate", {"rows": {}, "top": "x" * 65, "error": ""}),
        ("estimate", {"rows": {}, "top": "", "error": "EXPLAIN failed: \x00"}),
        ("estimate", {"rows": {}, "top": "", "error": "", "cost": 1}),
    ],
)
def test_a_bad_values_field_is_refused_and_nothing_is_stored(review_setup, field, bad):
    with pytest.raises(ValidationError) as info:
        run(review_setup, **{field: bad})
    assert set(info.value.message_dict) == {field}
    assert not ApprovalRequest.objects.exists()


def test_the_largest_valid_values_are_accepted(review_setup):
    values = [{"statement": 9, "n": 65535, "value": "x" * 2000}] * 500
    estimate = {"rows": {}, "top": "", "error": "EXPLAIN failed: permission denied"}
    _, _, created = run(review_setup, values_digest=DIGEST_A, values=values, estimate=estimate)
    assert created


# --- grants bound to values ---------------------------------------------------------------


def test_a_statement_bound_grant_runs_only_the_approved_values(review_setup):
    request, _, _ = run(review_setup, values_digest=DIGEST_A, values=VALUES)
    grant = approve(review_setup, request)
    assert grant.values_digest == DIGEST_A
    # Other values, or values the sidecar cannot vouch for: a new request, the grant kept.
    other, used, created = run(review_setup, values_digest=DIGEST_B)
    assert used is None and created and other.pk != request.pk
    unknown, used, created = run(review_setup)
    assert used is None and created and unknown.pk not in (request.pk, other.pk)
    grant.refresh_from_db()
    assert (grant.state, grant.uses_left) == (GrantState.ACTIVE, 1)
    same, used, created = run(review_setup, values_digest=DIGEST_A)
    assert (same.pk, used.pk, created) == (request.pk, grant.pk, False)
    assert Grant.objects.get(pk=grant.pk).state == GrantState.USED


def test_a_shape_bound_grant_runs_any_values(review_setup, admin_user):
    services.review_settings_set(
        actor=admin_user, datasource=review_setup.datasource, data={"grant_binding": "shape"}
    )
    request, _, _ = run(review_setup, values_digest=DIGEST_A)
    grant = approve(review_setup, request)
    assert grant.values_digest == ""
    same, used, created = run(review_setup, values_digest=DIGEST_B)
    assert (same.pk, used.pk, created) == (request.pk, grant.pk, False)


def test_an_old_sidecars_grant_keeps_working_by_fingerprint(review_setup):
    request, _, _ = run(review_setup)  # no digest
    assert request.binding == "statement"
    grant = approve(review_setup, request)
    assert grant.values_digest == ""
    same, used, _ = run(review_setup)
    assert (same.pk, used.pk) == (request.pk, grant.pk)


def test_pending_requests_are_shared_per_values(review_setup):
    first, _, created = run(review_setup, values_digest=DIGEST_A)
    assert created
    again, _, created = run(review_setup, values_digest=DIGEST_A)
    assert (again.pk, created) == (first.pk, False)
    other, _, created = run(review_setup, values_digest=DIGEST_B)
    assert created and other.pk != first.pk
    assert ApprovalRequest.objects.filter(state="pending").count() == 2


# --- denial memory ------------------------------------------------------------------------


def test_a_recent_denial_of_the_same_values_answers_at_once(review_setup):
    request, _, _ = run(review_setup, values_digest=DIGEST_A, values=VALUES)
    deny(review_setup, request)
    events = ApprovalEvent.objects.count()
    again, grant, created = run(review_setup, values_digest=DIGEST_A, values=VALUES)
    assert (again.pk, again.state, grant, created) == (request.pk, "denied", None, False)
    assert again.deny_reason == "Not on a Friday."
    assert ApprovalRequest.objects.count() == 1
    assert ApprovalEvent.objects.count() == events  # nothing opened, nobody notified
    # Other values, other text, or no digest at all: reviewed anew.
    _, _, created = run(review_setup, values_digest=DIGEST_B)
    assert created
    _, _, created = run(review_setup, values_digest=DIGEST_A, fingerprint="cd" * 16)
    assert created
    _, _, created = run(review_setup)
    assert created


def test_denial_memory_lasts_an_hour(review_setup):
    request, _, _ = run(review_setup, values_digest=DIGEST_A)
    deny(review_setup, request)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        decided_at=timezone.now() - datetime.timedelta(minutes=61)
    )
    fresh, _, created = run(review_setup, values_digest=DIGEST_A)
    assert created and fresh.pk != request.pk and fresh.state == "pending"


def test_denial_memory_is_per_identity(review_setup):
    request, _, _ = run(review_setup, values_digest=DIGEST_A)
    deny(review_setup, request)
    _, _, created = run(review_setup, identity=review_setup.agent, values_digest=DIGEST_A)
    assert created


# --- the sidecar's API ----------------------------------------------------------------------


@pytest.fixture
def token(review_setup: Any, admin_user: Any) -> str:
    _, raw = gov.sidecar_register(actor=admin_user, datasource=review_setup.datasource, name="sc")
    return raw


def post(client: Any, token: str, **overrides: Any) -> Any:
    body = {"identity": "requester", **open_payload(**overrides)}
    return client.post(
        OPEN,
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def test_the_api_stores_the_values_and_refuses_bad_ones_field_by_field(client, token):
    bad = post(
        client,
        token,
        values_digest="XY",
        values=[{"statement": 0, "n": 1, "value": "a\x00"}],
        estimate={"rows": {}},
    )
    assert bad.status_code == 400
    assert set(bad.json()["error"]["fields"]) == {"values_digest", "values", "estimate"}
    null = post(client, token, values_digest=None)
    assert null.status_code == 400 and set(null.json()["error"]["fields"]) == {"values_digest"}
    assert not ApprovalRequest.objects.exists()
    ok = post(client, token, values_digest=DIGEST_A, values=VALUES, estimate=ESTIMATE)
    assert ok.status_code == 201, ok.content
    stored = ApprovalRequest.objects.get(pk=ok.json()["id"])
    assert (stored.values_digest, stored.values, stored.estimate) == (DIGEST_A, VALUES, ESTIMATE)


def test_the_api_answers_a_remembered_denial_with_its_reason(client, token, review_setup):
    opened = post(client, token, values_digest=DIGEST_A).json()
    services.approval_decide(
        request_id=opened["id"], user=review_setup.reviewer, approve=False, reason="Use a ticket."
    )
    again = post(client, token, values_digest=DIGEST_A)
    assert again.status_code == 200
    assert again.json() == {
        "id": opened["id"],
        "state": "denied",
        "url": opened["url"],
        "reason": "Use a ticket.",
        "denied_by": "reviewer",
    }
    assert ApprovalRequest.objects.count() == 1
    assert post(client, token, values_digest=DIGEST_B).status_code == 201


def test_the_api_consumes_only_a_grant_for_the_same_values(client, token, review_setup):
    opened = post(client, token, values_digest=DIGEST_A).json()
    services.approval_decide(request_id=opened["id"], user=review_setup.reviewer, approve=True)
    other = post(client, token, values_digest=DIGEST_B)
    assert other.status_code == 201 and other.json()["state"] == "pending"
    same = post(client, token, values_digest=DIGEST_A)
    assert same.status_code == 200 and same.json()["grant"]["uses_left"] == 0


# --- values retention ----------------------------------------------------------------------


def test_decided_requests_lose_their_values_after_the_retention(review_setup, admin_user):
    pending, _, _ = run(review_setup, values_digest=DIGEST_A, values=VALUES)
    decided, _, _ = run(review_setup, values_digest=DIGEST_B, values=VALUES)
    deny(review_setup, decided)
    recent, _, _ = run(review_setup, values_digest="c" * 64, values=VALUES)
    services.approval_cancel(request_id=recent.pk, user=review_setup.requester)
    no_values, _, _ = run(review_setup, fingerprint="cd" * 16)
    deny(review_setup, no_values)
    week_ago = timezone.now() - datetime.timedelta(days=7, minutes=1)
    ApprovalRequest.objects.filter(pk__in=[decided.pk, no_values.pk]).update(decided_at=week_ago)
    # Pending requests are never purged, whatever their age.
    ApprovalRequest.objects.filter(pk=pending.pk).update(
        created_at=week_ago, expires_at=timezone.now() + datetime.timedelta(hours=1)
    )

    assert approvals_purge_values() == 1  # the task Celery beat runs
    decided.refresh_from_db()
    assert decided.values == [] and decided.values_purged_at is not None
    # A digest of few values can be reversed by trying them: it goes with them.
    assert decided.values_digest == ""
    event = ApprovalEvent.objects.get(request=decided, kind="values_purged")
    assert event.detail == {"count": 2}
    for kept in (pending, recent):
        kept.refresh_from_db()
        assert kept.values == VALUES and kept.values_purged_at is None
    # No values, nothing to purge: no event either.
    assert not ApprovalEvent.objects.filter(request=no_values, kind="values_purged").exists()
    # Idempotent.
    assert approvals_purge_values() == 0
    assert ApprovalEvent.objects.filter(kind="values_purged").count() == 1

    # The datasource's own retention, shorter than the setting's.
    services.review_settings_set(
        actor=admin_user,
        datasource=review_setup.datasource,
        data={"values_retention_seconds": 60},
    )
    # ... but not before the hour a denial is remembered by its digest.
    ApprovalRequest.objects.filter(pk=recent.pk).update(
        decided_at=timezone.now() - datetime.timedelta(seconds=61)
    )
    assert services.approvals_purge_values() == 0
    ApprovalRequest.objects.filter(pk=recent.pk).update(
        decided_at=timezone.now() - datetime.timedelta(minutes=61)
    )
    assert services.approvals_purge_values() == 1
    recent.refresh_from_db()
    assert recent.values == [] and recent.values_purged_at is not None


def test_a_grant_keeps_its_digest_while_it_can_run(review_setup):
    """A blank digest on a grant means "any values": only an ended grant loses it."""
    active, _, _ = run(review_setup, values_digest=DIGEST_A, values=VALUES)
    used, _, _ = run(review_setup, values_digest=DIGEST_B, values=VALUES)
    for request in (active, used):
        services.approval_decide(request_id=request.pk, user=review_setup.reviewer, approve=True)
    run(review_setup, values_digest=DIGEST_B)  # the one use of the second grant
    long_ago = timezone.now() - datetime.timedelta(days=8)
    ApprovalRequest.objects.filter(pk__in=[active.pk, used.pk]).update(decided_at=long_ago)
    assert services.approvals_purge_values() == 2
    assert Grant.objects.get(request=active).values_digest == DIGEST_A
    assert Grant.objects.get(request=used).values_digest == ""
    # Still only these values on the active one.
    other, grant, _ = run(review_setup, values_digest=DIGEST_B)
    assert grant is None and other.state == "pending"


def test_the_retention_setting_applies_without_review_settings(review_setup, settings):
    settings.WARDEN_APPROVAL_VALUES_RETENTION_SECONDS = 3600
    request, _, _ = run(review_setup, values_digest=DIGEST_A, values=VALUES)
    deny(review_setup, request)
    now = timezone.now()
    assert services.approvals_purge_values(now=now + datetime.timedelta(minutes=59)) == 0
    assert services.approvals_purge_values(now=now + datetime.timedelta(minutes=61)) == 1
    assert not ReviewSettings.objects.exists()


# --- the values stay out of the audit trail and notifications ------------------------------


def _audit_rows_with(text: str) -> int:
    """Audit events whose row, any column, holds ``text``."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_event e WHERE e::text LIKE %s", [f"%{text}%"])
        return int(cursor.fetchone()[0])


def test_values_reach_neither_the_audit_trail_nor_notifications(review_setup, admin_user, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with WebhookReceiver() as hook:
        services.review_settings_set(
            actor=admin_user,
            datasource=review_setup.datasource,
            data={"webhook_url": hook.url("/hook")},
        )
        request, _, _ = run(review_setup, values_digest=DIGEST_A, values=VALUES, estimate=ESTIMATE)
        assert services.approval_notify(request_id=request.pk, kind="created") == 3
        grant = approve(review_setup, request)
        run(review_setup, values_digest=DIGEST_A, values=VALUES)  # the grant used
        denied, _, _ = run(review_setup, values_digest=DIGEST_B, values=VALUES)
        assert services.approval_notify(request_id=denied.pk, kind="created") == 3
        deny(review_setup, denied)
        run(review_setup, values_digest=DIGEST_B, values=VALUES)  # the denial remembered
        third, _, _ = run(review_setup, values_digest="c" * 64, values=VALUES)
        approve(review_setup, third)
        services.grant_revoke(request_id=third.pk, user=review_setup.reviewer)
        ApprovalRequest.objects.update(decided_at=timezone.now() - datetime.timedelta(days=8))
        assert services.approvals_purge_values() == 3
        received = json.dumps([r.body for r in hook.requests])
    assert len(hook.requests) == 2 and len(mail.outbox) == 4
    assert Grant.objects.get(pk=grant.pk).state == GrantState.USED
    # The trail has every step of these requests (opened, approved, used, revoked,
    # purged) ...
    assert _audit_rows_with(str(request.pk)) >= 4 and _audit_rows_with(str(third.pk)) >= 4
    # ... and the value in none of them, nor in any message or timeline entry.
    assert _audit_rows_with("zebra-canary") == 0
    assert "zebra-canary" not in received
    for message in mail.outbox:
        assert "zebra-canary" not in message.subject + message.body
    assert all("zebra-canary" not in json.dumps(e.detail) for e in ApprovalEvent.objects.all())
    # The value was really sent, and kept while it was needed: the test can fail.
    assert CANARY in json.dumps(VALUES)
