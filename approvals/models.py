"""Approval requests for held statements, reviewers' decisions, the grants they yield.

A request moves once, from ``pending`` to one of ``approved``, ``denied``,
``expired`` or ``cancelled``; nothing leaves those. The transition table below
is the one place that says so, and the database backs it: a pending request has
no ``decided_at``, a decided one has; a denial carries its reason; at most one
request per (datasource, identity, fingerprint) is pending at a time, so two
sidecars holding the same statement share one request. A grant is the right to
run one fingerprint a number of times before an expiry; it ends ``used`` or
``expired``.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, URLValidator
from django.db import models
from django.db.models import F, Q

from config.egress import url_refusal


class ApprovalState(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    DENIED = "denied", "Denied"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


# The state machine: from a state, where a request may go.
TRANSITIONS: dict[str, frozenset[str]] = {
    ApprovalState.PENDING: frozenset(
        {
            ApprovalState.APPROVED,
            ApprovalState.DENIED,
            ApprovalState.EXPIRED,
            ApprovalState.CANCELLED,
        }
    ),
    ApprovalState.APPROVED: frozenset(),
    ApprovalState.DENIED: frozenset(),
    ApprovalState.EXPIRED: frozenset(),
    ApprovalState.CANCELLED: frozenset(),
}


def can_transition(source: str, target: str) -> bool:
    return target in TRANSITIONS.get(source, frozenset())


class GrantBinding(models.TextChoices):
    """What a grant lets run again: exactly the approved statement, or its shape."""

    STATEMENT = "statement", "The statement with these values"
    SHAPE = "shape", "Same shape, any values"


class ApprovalRequest(models.Model):
    """A statement a sidecar held for review, and where its review stands."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    datasource = models.ForeignKey(
        "governance.Datasource", on_delete=models.CASCADE, related_name="approval_requests"
    )
    identity = models.ForeignKey(
        "governance.Identity", on_delete=models.CASCADE, related_name="approval_requests"
    )
    sidecar = models.ForeignKey(
        "governance.Sidecar",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="approval_requests",
    )
    fingerprint = models.CharField(max_length=128)
    statement = models.TextField(help_text="Redacted: literals replaced, never the raw text.")
    # The statement kind, or the kinds of a text of several statements, joined by ", ".
    kind = models.CharField(max_length=400)
    risk = models.PositiveSmallIntegerField(validators=[MaxValueValidator(100)])
    reasons = models.JSONField(default=list, blank=True)
    tables = models.JSONField(default=list, blank=True)
    classifications = models.JSONField(default=list, blank=True)
    client_addr = models.CharField(max_length=64, blank=True)
    application_name = models.CharField(max_length=128, blank=True)
    state = models.CharField(
        max_length=16, choices=ApprovalState.choices, default=ApprovalState.PENDING
    )
    required_approvals = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(2)]
    )
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(help_text="A pending request expires at this time.")
    escalated_at = models.DateTimeField(null=True, blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True)
    # What the grant is bound to (``GrantBinding``): by default the values too.
    binding = models.CharField(max_length=16, default="statement")
    # A keyed digest of the statement's literal and parameter values: a grant for
    # one set of values does not run another. Blank once purged (and for a request
    # whose values were never sent).
    values_digest = models.CharField(max_length=64, blank=True)
    # The values a reviewer sees, in placeholder order: {"n": 1, "value": "'refunded'"}
    # or, for a value compared with or written into a classified column,
    # {"n": 1, "classification": "pii.email"}. Kept while pending; replaced by []
    # (``values_purged_at`` set) once the request has been decided for the review
    # settings' retention. Never in the audit trail.
    values = models.JSONField(default=list, blank=True)
    values_purged_at = models.DateTimeField(null=True, blank=True)
    # The planner's estimate, from EXPLAIN (FORMAT JSON) the sidecar ran before asking:
    # {"rows": {"orders": 993}, "top": "ModifyTable", "error": ""}; {} when none was sent.
    estimate = models.JSONField(default=dict, blank=True)
    deny_reason = models.TextField(blank=True)
    denied_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state", "datasource"], name="approval_state_ds"),
            models.Index(fields=["datasource", "identity", "fingerprint"], name="approval_lookup"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=ApprovalState.values), name="approval_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(required_approvals__gte=1) & Q(required_approvals__lte=2),
                name="approval_required_1_2",
            ),
            models.CheckConstraint(
                condition=Q(risk__gte=0) & Q(risk__lte=100), name="approval_risk_0_100"
            ),
            # Decided exactly when no longer pending.
            models.CheckConstraint(
                condition=(Q(state=ApprovalState.PENDING) & Q(decided_at__isnull=True))
                | (~Q(state=ApprovalState.PENDING) & Q(decided_at__isnull=False)),
                name="approval_decided_at_iff_decided",
            ),
            # The requester is told why.
            models.CheckConstraint(
                condition=~Q(state=ApprovalState.DENIED) | ~Q(deny_reason=""),
                name="approval_denial_has_reason",
            ),
            # Two sidecars holding the same statement, with the same values, share one
            # pending request.
            models.UniqueConstraint(
                fields=["datasource", "identity", "fingerprint", "values_digest"],
                condition=Q(state=ApprovalState.PENDING),
                name="approval_one_pending_per_statement",
            ),
            models.CheckConstraint(
                condition=Q(reasons__jsonb_typeof="array")
                & Q(tables__jsonb_typeof="array")
                & Q(classifications__jsonb_typeof="array")
                & Q(values__jsonb_typeof="array"),
                name="approval_lists_are_arrays",
            ),
            models.CheckConstraint(
                condition=Q(estimate__jsonb_typeof="object"), name="approval_estimate_is_object"
            ),
            models.CheckConstraint(
                condition=Q(binding__in=GrantBinding.values), name="approval_binding_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.identity} on {self.datasource}: {self.kind} ({self.state})"

    @property
    def is_pending(self) -> bool:
        return self.state == ApprovalState.PENDING

    def clean(self) -> None:
        if self.state == ApprovalState.DENIED and not self.deny_reason.strip():
            raise ValidationError({"deny_reason": "A denial needs a reason."})


class ApprovalDecision(models.Model):
    """One reviewer's verdict; a critical request needs two distinct approving reviewers."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approval_decisions"
    )
    approve = models.BooleanField()
    reason = models.TextField(blank=True)
    # What this reviewer narrowed the grant to (None: the default).
    uses = models.PositiveSmallIntegerField(null=True, blank=True)
    grant_expires_at = models.DateTimeField(null=True, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "reviewer"], name="approvaldecision_one_per_reviewer"
            ),
            models.CheckConstraint(
                condition=Q(approve=True) | ~Q(reason=""), name="approvaldecision_denial_reason"
            ),
        ]

    def __str__(self) -> str:
        verdict = "approved" if self.approve else "denied"
        return f"{self.reviewer} {verdict} {self.request_id}"


class GrantState(models.TextChoices):
    ACTIVE = "active", "Active"
    USED = "used", "Used up"
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"


class Grant(models.Model):
    """The right an approval yields: run this fingerprint, as this identity, N more times."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    request = models.OneToOneField(ApprovalRequest, on_delete=models.CASCADE, related_name="grant")
    datasource = models.ForeignKey(
        "governance.Datasource", on_delete=models.CASCADE, related_name="grants"
    )
    identity = models.ForeignKey(
        "governance.Identity", on_delete=models.CASCADE, related_name="grants"
    )
    fingerprint = models.CharField(max_length=128)
    # The request's values digest: a run with other values needs a new approval.
    # Blank: any values (the datasource binds grants to the shape only).
    values_digest = models.CharField(max_length=64, blank=True)
    uses_total = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    uses_left = models.PositiveSmallIntegerField()
    expires_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=GrantState.choices, default=GrantState.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["datasource", "identity", "fingerprint"],
                condition=Q(state=GrantState.ACTIVE),
                name="grant_active_lookup",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=GrantState.values), name="grant_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(uses_total__gte=1), name="grant_uses_total_positive"
            ),
            models.CheckConstraint(
                condition=Q(uses_left__gte=0) & Q(uses_left__lte=F("uses_total")),
                name="grant_uses_left_in_range",
            ),
            # An active grant has a use left; a used one has none.
            models.CheckConstraint(
                condition=~Q(state=GrantState.ACTIVE) | Q(uses_left__gt=0),
                name="grant_active_has_uses",
            ),
            models.CheckConstraint(
                condition=~Q(state=GrantState.USED) | Q(uses_left=0),
                name="grant_used_has_none_left",
            ),
            # Revoked exactly when it says when.
            models.CheckConstraint(
                condition=(Q(state=GrantState.REVOKED) & Q(revoked_at__isnull=False))
                | (~Q(state=GrantState.REVOKED) & Q(revoked_at__isnull=True)),
                name="grant_revoked_at_iff_revoked",
            ),
        ]

    def __str__(self) -> str:
        return f"grant {self.id} ({self.uses_left}/{self.uses_total}, {self.state})"


class ApprovalEventKind(models.TextChoices):
    CREATED = "created", "Created"
    NOTIFIED = "notified", "Notified"
    ESCALATED = "escalated", "Escalated"
    REMINDED = "reminded", "Reminded"
    APPROVAL = "approval", "Approval"
    APPROVED = "approved", "Approved"
    DENIED = "denied", "Denied"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"
    GRANT_USED = "grant_used", "Grant used"
    GRANT_EXPIRED = "grant_expired", "Grant expired"
    GRANT_REVOKED = "grant_revoked", "Grant revoked"
    VALUES_PURGED = "values_purged", "Values removed"


class ApprovalEvent(models.Model):
    """The request's timeline. ``key`` makes a notification idempotent: a task that
    runs twice finds the row it wrote the first time and sends nothing."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=ApprovalEventKind.choices)
    key = models.CharField(max_length=300, blank=True, default="")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField(auto_now_add=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "kind", "key"], name="approvalevent_unique_key"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=ApprovalEventKind.values), name="approvalevent_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.kind} {self.key}".strip()


def validate_webhook_url(value: str) -> None:
    """Refuse a webhook to this machine or an internal address, as far as the URL alone
    shows (a literal address, localhost); host names are checked when it is sent. What
    is not an http(s) URL at all is URLValidator's to report."""
    try:
        if urlsplit(value).scheme not in {"http", "https"}:
            return
    except ValueError:
        return
    refusal = url_refusal(value, settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS)
    if refusal is not None:
        raise ValidationError(
            "Webhooks may not go to internal addresses: %(why)s. An on-premise receiver's "
            "network can be allowed with WARDEN_WEBHOOK_ALLOWED_NETWORKS.",
            code="webhook_address",
            params={"why": refusal},
        )


class ReviewSettings(models.Model):
    """How one datasource's approvals are routed and timed; without a row, the settings'
    defaults apply (``WARDEN_APPROVAL_*``)."""

    datasource = models.OneToOneField(
        "governance.Datasource", on_delete=models.CASCADE, related_name="review_settings"
    )
    fallback_team = models.ForeignKey(
        "governance.Team",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Notified, and may decide, once a request is escalated.",
    )
    escalate_after_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    remind_every_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    expire_after_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    # How long a sidecar holds a statement waiting for a decision (None: the
    # setting WARDEN_APPROVAL_HOLD_SECONDS), at most WARDEN_APPROVAL_MAX_HOLD_SECONDS.
    hold_seconds = models.PositiveIntegerField(null=True, blank=True)
    grant_binding = models.CharField(
        max_length=16,
        choices=GrantBinding.choices,
        default=GrantBinding.STATEMENT,
        help_text="What a grant lets run: exactly the approved statement, or any values of "
        "its shape (a reviewer then approves values they have not seen).",
    )
    # How long a decided request keeps the values it showed (None: the setting
    # WARDEN_APPROVAL_VALUES_RETENTION_SECONDS, 7 days).
    values_retention_seconds = models.PositiveIntegerField(null=True, blank=True)
    webhook_url = models.URLField(
        blank=True,
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"]), validate_webhook_url],
        help_text="Slack-compatible incoming webhook (POST {text}); http or https, not to an "
        "internal address.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "review settings"
        constraints = [
            models.CheckConstraint(
                condition=Q(escalate_after_seconds__isnull=True) | Q(escalate_after_seconds__gte=1),
                name="reviewsettings_escalate_positive",
            ),
            models.CheckConstraint(
                condition=Q(remind_every_seconds__isnull=True) | Q(remind_every_seconds__gte=1),
                name="reviewsettings_remind_positive",
            ),
            models.CheckConstraint(
                condition=Q(expire_after_seconds__isnull=True) | Q(expire_after_seconds__gte=1),
                name="reviewsettings_expire_positive",
            ),
            models.CheckConstraint(
                condition=Q(hold_seconds__isnull=True) | Q(hold_seconds__gte=1),
                name="reviewsettings_hold_positive",
            ),
            models.CheckConstraint(
                condition=Q(grant_binding__in=GrantBinding.values),
                name="reviewsettings_binding_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"review settings of {self.datasource}"
