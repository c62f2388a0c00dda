"""The approval state machine and who may decide, through the services."""

from __future__ import annotations

import datetime

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals import selectors, services
from approvals.models import (
    TRANSITIONS,
    ApprovalEvent,
    ApprovalRequest,
    ApprovalState,
    Grant,
    GrantState,
    ReviewSettings,
)
from tests.approvals.conftest import open_payload

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once", "review_once")]


def test_open_creates_one_pending_request_and_dedupes(review_setup, open_request):
    first = open_request()
    assert first.state == ApprovalState.PENDING
    assert first.required_approvals == 1
    again, grant, created = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(),
    )
    assert (again.pk, grant, created) == (first.pk, None, False)
    assert ApprovalRequest.objects.count() == 1
    assert [e["kind"] for e in selectors.approval_timeline(request=first)] == ["created"]


def test_bad_payload_is_refused_field_by_field_and_stores_nothing(review_setup):
    with pytest.raises(ValidationError) as info:
        services.approval_request_open(
            datasource=review_setup.datasource,
            identity=review_setup.requester.identity,
            **open_payload(fingerprint="XYZ", risk=101, reasons=[{"x": 1}], tables="t"),
        )
    assert set(info.value.message_dict) == {"fingerprint", "risk", "reasons", "tables"}
    assert ApprovalRequest.objects.count() == 0


def test_a_text_of_several_statements_has_one_kind_each(review_setup):
    """The sidecar sends ``kind`` as a list for a text of several statements (before,
    "prepare,execute" was refused and such a text could never be approved)."""
    request, _, created = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(kind=["update", "delete"]),
    )
    assert created and request.kind == "update, delete"
    for bad in ([], ["update", "DROP"], ["delete"] * 11, "prepare,execute", [1]):
        with pytest.raises(ValidationError) as info:
            services.approval_request_open(
                datasource=review_setup.datasource,
                identity=review_setup.requester.identity,
                **open_payload(kind=bad, fingerprint="cd" * 16),
            )
        assert set(info.value.message_dict) == {"kind"}, bad
    assert ApprovalRequest.objects.count() == 1


def test_database_refuses_a_second_pending_request_for_the_same_statement(open_request):
    first = open_request()
    duplicate = ApprovalRequest(
        datasource=first.datasource,
        identity=first.identity,
        fingerprint=first.fingerprint,
        statement="x",
        kind="delete",
        risk=1,
        expires_at=first.expires_at,
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()


def test_database_refuses_a_denial_without_reason_and_decided_without_time(open_request):
    request = open_request()
    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalRequest.objects.filter(pk=request.pk).update(
            state="denied", decided_at=timezone.now()
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalRequest.objects.filter(pk=request.pk).update(state="approved")


def test_approve_yields_a_grant_consumed_by_the_next_open(review_setup, open_request):
    request = open_request()
    decided = services.approval_decide(
        request_id=request.pk, user=review_setup.reviewer, approve=True
    )
    assert decided.state == ApprovalState.APPROVED and decided.decided_at is not None
    grant = Grant.objects.get(request=request)
    assert (grant.uses_total, grant.uses_left, grant.state) == (1, 1, GrantState.ACTIVE)
    assert abs((grant.expires_at - decided.decided_at) - datetime.timedelta(hours=1)) < (
        datetime.timedelta(seconds=5)
    )
    same, used, created = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(),
    )
    assert (same.pk, used.pk, created) == (request.pk, grant.pk, False)
    grant.refresh_from_db()
    assert (grant.uses_left, grant.state) == (0, GrantState.USED)
    # Used up: the next run needs a new request.
    fresh, none, created = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(),
    )
    assert created and none is None and fresh.pk != request.pk
    kinds = [e["kind"] for e in selectors.approval_timeline(request=request)]
    assert kinds == ["created", "approval", "approved", "grant_used"]


def test_approver_may_narrow_but_never_widen(review_setup, open_request, settings):
    settings.WARDEN_APPROVAL_DEFAULT_USES = 5
    request = open_request()
    reviewer = review_setup.reviewer
    for uses, hours in ((settings.WARDEN_APPROVAL_MAX_USES + 1, 24 * 30), (6, 2)):
        # Beyond the maxima, and also only beyond the defaults (5 uses, an hour):
        # a reviewer narrows a grant, never widens it.
        with pytest.raises(ValidationError) as info:
            services.approval_decide(
                request_id=request.pk,
                user=reviewer,
                approve=True,
                uses=uses,
                expires_at=timezone.now() + datetime.timedelta(hours=hours),
            )
        assert set(info.value.message_dict) == {"uses", "expires_at"}
        assert "can only be narrowed" in info.value.message_dict["uses"][0]
        assert "can only be narrowed" in info.value.message_dict["expires_at"][0]
    assert not ApprovalEvent.objects.filter(request=request, kind="approval").exists()
    soon = timezone.now() + datetime.timedelta(minutes=5)
    services.approval_decide(
        request_id=request.pk, user=reviewer, approve=True, uses=3, expires_at=soon
    )
    grant = Grant.objects.get(request=request)
    assert (grant.uses_total, grant.uses_left, grant.expires_at) == (3, 3, soon)


def test_deny_needs_a_reason_and_ends_the_request(review_setup, open_request):
    request = open_request()
    with pytest.raises(ValidationError):
        services.approval_decide(
            request_id=request.pk, user=review_setup.reviewer, approve=False, reason="  "
        )
    denied = services.approval_decide(
        request_id=request.pk, user=review_setup.reviewer, approve=False, reason="Use a ticket."
    )
    assert (denied.state, denied.deny_reason, denied.denied_by) == (
        "denied",
        "Use a ticket.",
        review_setup.reviewer,
    )
    assert not Grant.objects.exists()
    with pytest.raises(ValidationError):
        services.approval_decide(request_id=request.pk, user=review_setup.reviewer2, approve=True)


def test_nobody_decides_their_own_request(review_setup, open_request):
    request = open_request()  # the requester is in the review team too
    with pytest.raises(PermissionDenied, match="own request"):
        services.approval_decide(request_id=request.pk, user=review_setup.requester, approve=True)
    assert ApprovalRequest.objects.get(pk=request.pk).state == ApprovalState.PENDING


def test_agent_owner_may_not_approve_its_agent(review_setup, open_request, admin_user):
    from governance import services as gov

    owner_user = review_setup.owner.user  # the security persona
    # Give the owner every other qualification: reviewer role, in the review team.
    owner_user.membership.role = "reviewer"
    owner_user.membership.save()
    gov.identity_update(
        actor=admin_user, identity=review_setup.owner, data={"teams": [review_setup.team_b]}
    )
    request = open_request(identity=review_setup.agent)
    with pytest.raises(PermissionDenied, match="accountable owner"):
        services.approval_decide(request_id=request.pk, user=owner_user, approve=True)
    services.approval_decide(request_id=request.pk, user=review_setup.reviewer, approve=True)
    service_request = open_request(identity=review_setup.service, fingerprint="cd" * 16)
    with pytest.raises(PermissionDenied, match="accountable owner"):
        services.approval_decide(request_id=service_request.pk, user=owner_user, approve=True)


def test_only_reviewers_of_the_datasource_decide(review_setup, open_request, personas):
    request = open_request()
    # Admin outside the review team, security, auditor, outsider: none of them.
    for user in personas.values():
        if user == review_setup.reviewer:
            continue
        with pytest.raises(PermissionDenied):
            services.approval_decide(request_id=request.pk, user=user, approve=True)


def test_critical_risk_needs_two_distinct_approvals(review_setup, open_request, settings):
    settings.WARDEN_APPROVAL_DEFAULT_USES = 3
    request = open_request(risk=85)
    assert request.required_approvals == 2
    first = services.approval_decide(
        request_id=request.pk, user=review_setup.reviewer, approve=True, uses=2
    )
    assert first.state == ApprovalState.PENDING
    with pytest.raises(PermissionDenied, match="already approved"):
        services.approval_decide(request_id=request.pk, user=review_setup.reviewer, approve=True)
    second = services.approval_decide(
        request_id=request.pk, user=review_setup.reviewer2, approve=True
    )
    assert second.state == ApprovalState.APPROVED
    assert Grant.objects.get(request=request).uses_total == 2  # the narrowest asked
    assert open_request(risk=84, fingerprint="ef" * 16).required_approvals == 1


def test_cancel_only_by_the_requester_or_owner(review_setup, open_request):
    request = open_request()
    with pytest.raises(PermissionDenied):
        services.approval_cancel(request_id=request.pk, user=review_setup.reviewer)
    cancelled = services.approval_cancel(request_id=request.pk, user=review_setup.requester)
    assert cancelled.state == ApprovalState.CANCELLED
    with pytest.raises(ValidationError):
        services.approval_cancel(request_id=request.pk, user=review_setup.requester)
    agent_request = open_request(identity=review_setup.agent)
    owner_user = review_setup.owner.user
    assert services.approval_cancel(request_id=agent_request.pk, user=owner_user).state == (
        "cancelled"
    )


def test_state_machine_has_no_way_out_of_a_final_state():
    for state in ApprovalState.values:
        if state != ApprovalState.PENDING:
            assert TRANSITIONS[state] == frozenset()
    assert TRANSITIONS[ApprovalState.PENDING] == {
        "approved",
        "denied",
        "expired",
        "cancelled",
    }


def test_expire_stale_requests_and_grants(review_setup, open_request):
    stale = open_request()
    kept = open_request(fingerprint="cd" * 16)
    approved = open_request(fingerprint="ef" * 16)
    services.approval_decide(request_id=approved.pk, user=review_setup.reviewer, approve=True)
    later = stale.expires_at + datetime.timedelta(seconds=1)
    ApprovalRequest.objects.filter(pk=kept.pk).update(expires_at=later + datetime.timedelta(1))
    Grant.objects.filter(request=approved).update(expires_at=later - datetime.timedelta(1))
    assert services.approvals_expire_stale(now=later) == 2  # one request, one grant
    assert ApprovalRequest.objects.get(pk=stale.pk).state == ApprovalState.EXPIRED
    assert ApprovalRequest.objects.get(pk=kept.pk).state == ApprovalState.PENDING
    assert Grant.objects.get(request=approved).state == GrantState.EXPIRED
    assert services.approvals_expire_stale(now=later) == 0
    with pytest.raises(ValidationError):
        services.approval_decide(request_id=stale.pk, user=review_setup.reviewer, approve=True)


def test_an_expired_pending_request_is_replaced_on_open(review_setup, open_request):
    request = open_request()
    ApprovalRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now())
    fresh, _, created = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(),
    )
    assert created and fresh.pk != request.pk
    assert ApprovalRequest.objects.get(pk=request.pk).state == ApprovalState.EXPIRED


def test_escalation_lets_the_fallback_team_decide(review_setup, open_request, admin_user, team_a):
    from governance import services as gov

    fallback_team = gov.team_create(actor=admin_user, name="Oncall", slug="oncall")
    oncall = review_setup.reviewer2
    gov.identity_update(actor=admin_user, identity=oncall.identity, data={"teams": [fallback_team]})
    services.review_settings_set(
        actor=admin_user,
        datasource=review_setup.datasource,
        data={"fallback_team": fallback_team, "escalate_after_seconds": 60},
    )
    request = open_request()
    with pytest.raises(PermissionDenied):
        services.approval_decide(request_id=request.pk, user=oncall, approve=True)
    assert services.approvals_escalate_due(now=request.created_at) == 0
    later = request.created_at + datetime.timedelta(seconds=61)
    assert services.approvals_escalate_due(now=later) == 1
    assert services.approvals_escalate_due(now=later) == 0
    assert request in selectors.approvals_inbox(user=oncall)
    assert services.approval_decide(request_id=request.pk, user=oncall, approve=True).state == (
        "approved"
    )


def test_reminders_are_spaced_and_numbered(review_setup, open_request, admin_user):
    services.review_settings_set(
        actor=admin_user, datasource=review_setup.datasource, data={"remind_every_seconds": 60}
    )
    request = open_request()
    t1 = request.created_at + datetime.timedelta(seconds=61)
    assert services.approvals_remind_due(now=t1) == 1
    assert services.approvals_remind_due(now=t1 + datetime.timedelta(seconds=30)) == 0
    assert services.approvals_remind_due(now=t1 + datetime.timedelta(seconds=61)) == 1
    keys = list(
        ApprovalEvent.objects.filter(request=request, kind="reminded").values_list("key", flat=True)
    )
    assert keys == ["1", "2"]


def test_review_settings_only_by_policy_editors(review_setup, admin_user):
    with pytest.raises(PermissionDenied):
        services.review_settings_set(
            actor=review_setup.reviewer,
            datasource=review_setup.datasource,
            data={"expire_after_seconds": 5},
        )
    with pytest.raises(ValidationError):
        services.review_settings_set(
            actor=admin_user, datasource=review_setup.datasource, data={"webhook_url": "nope"}
        )
    with pytest.raises(ValidationError):
        services.review_settings_set(
            actor=admin_user,
            datasource=review_setup.datasource,
            data={"webhook_url": "ftp://example.com/hook"},
        )
    assert not ReviewSettings.objects.exists()


def test_notify_is_idempotent_and_skips_the_requester(
    review_setup, open_request, settings, admin_user
):
    from django.core import mail

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    request = open_request()
    mail.outbox = []
    assert services.approval_notify(request_id=request.pk, kind="created") == 2
    assert services.approval_notify(request_id=request.pk, kind="created") == 0
    recipients = sorted(m.to[0] for m in mail.outbox)
    assert recipients == ["reviewer2@example.com", "reviewer@example.com"]
    assert str(request.pk) in mail.outbox[0].body
    assert "requester@example.com" not in recipients
    # A reviewer whose identity is no longer in force is told nothing more.
    from governance import services as gov

    gov.identity_update(
        actor=admin_user, identity=review_setup.reviewer2.identity, data={"is_active": False}
    )
    mail.outbox = []
    assert services.approval_notify(request_id=request.pk, kind="reminder-1") == 1
    assert [m.to[0] for m in mail.outbox] == ["reviewer@example.com"]


def test_selectors_scope_inbox_and_requester(review_setup, open_request, personas):
    request = open_request()
    assert list(selectors.approvals_inbox(user=review_setup.reviewer)) == [request]
    assert list(selectors.approvals_inbox(user=personas["admin"])) == [request]
    for role in ("security", "auditor", "none"):
        assert not selectors.approvals_inbox(user=personas[role]).exists()
    assert selectors.approvals_pending_count(user=review_setup.reviewer) == 1
    assert list(selectors.approvals_of_requester(user=review_setup.requester)) == [request]
    assert not selectors.approvals_of_requester(user=review_setup.reviewer).exists()
    from django.http import Http404

    with pytest.raises(Http404):
        selectors.approval_for_reviewer(user=personas["security"], request_id=request.pk)
    with pytest.raises(Http404):
        selectors.approval_for_requester(user=review_setup.reviewer, request_id=request.pk)
    with pytest.raises(Http404):
        selectors.approval_for_reviewer(user=review_setup.reviewer, request_id="not-a-uuid")
    assert (
        selectors.approval_for_requester(user=review_setup.requester, request_id=request.pk)
        == request
    )


def test_recent_activity_is_scoped_to_the_viewer(review_setup, open_request, personas):
    first = open_request(identity=review_setup.agent)
    second = open_request(identity=review_setup.agent, fingerprint="cd" * 16)
    everything = selectors.identity_recent_activity(identity=review_setup.agent)
    assert everything == [second, first]
    assert selectors.identity_recent_activity(
        identity=review_setup.agent, user=review_setup.reviewer, limit=1
    ) == [second]
    assert (
        selectors.identity_recent_activity(identity=review_setup.agent, user=personas["none"]) == []
    )


def test_the_owner_of_a_persons_identity_may_neither_hold_its_tokens_nor_decide_for_it(
    review_setup, open_request, admin_user
):
    """A review's finding: a human identity could have an owner, and ownership lent
    its powers: a reviewer who owned a person's identity issued a token for it, signed
    in as that person, and approved the request that opened. A person has no owner
    now; one already set (from before) gives no say in its approvals either."""
    from django.core.exceptions import ValidationError

    from governance import services as gov
    from governance.models import Identity

    reviewer = review_setup.reviewer
    person = review_setup.requester.identity
    with pytest.raises(ValidationError, match="answers for themselves"):
        gov.identity_update(actor=admin_user, identity=person, data={"owner": reviewer.identity})
    # As data from before the rule would have it.
    Identity.objects.filter(pk=person.pk).update(owner=reviewer.identity)
    with pytest.raises(PermissionDenied):
        gov.token_issue(actor=reviewer, identity=person, name="as-them")
    request = open_request()
    with pytest.raises(PermissionDenied, match="accountable owner"):
        services.approval_decide(request_id=request.pk, user=reviewer, approve=True)
    assert ApprovalRequest.objects.get(pk=request.pk).state == ApprovalState.PENDING
