"""Configuration history: one row per create, update or delete of a policy object.

Rows are written by services inside the same transaction as the change, so a
change that rolls back leaves no history and a change that commits always
does. ``actor_name`` is a snapshot: the record still says who it was after the
account is deleted.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q


class ChangeAction(models.TextChoices):
    CREATE = "create", "Created"
    UPDATE = "update", "Updated"
    DELETE = "delete", "Deleted"


class ChangeRecord(models.Model):
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=8, choices=ChangeAction.choices)
    content_type = models.ForeignKey(ContentType, on_delete=models.PROTECT, related_name="+")
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    # Why, in the actor's words: required for changes that weaken production
    # protection (governance.services.policy), optional elsewhere.
    reason = models.TextField(blank=True, max_length=2000)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["content_type", "object_id", "-at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(action__in=ChangeAction.values), name="changerecord_action_valid"
            ),
            # The shape follows the action: nothing before a create, nothing after a delete.
            models.CheckConstraint(
                condition=(
                    Q(action="create", before__isnull=True, after__isnull=False)
                    | Q(action="update", before__isnull=False, after__isnull=False)
                    | Q(action="delete", before__isnull=False, after__isnull=True)
                ),
                name="changerecord_shape_matches_action",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name} {self.action} {self.object_repr}"

    @property
    def changes(self) -> list[tuple[str, object, object]]:
        """(field, before, after) for every field that differs, for display."""
        before = self.before or {}
        after = self.after or {}
        keys = sorted(set(before) | set(after))
        return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


# --- the audit trail -----------------------------------------------------------------
#
# The trail's tables are made by migration 0002 with raw SQL (a partitioned table,
# a trigger, a function Django cannot express), so these models only map them.


class EventSource(models.TextChoices):
    SIDECAR = "sidecar", "Sidecar"
    CONTROL_PLANE = "control_plane", "Control plane"


CONTROL_PLANE_CHAIN = "control-plane"


def datasource_chain(datasource_id: int) -> str:
    return f"datasource:{datasource_id}"


def sidecar_chain(datasource_id: int, sidecar_id: int) -> str:
    """A sidecar's own chain, named under its datasource's: its batches never wait
    for another sidecar's, and its head is anchored into ``datasource_chain``."""
    return f"{datasource_chain(datasource_id)}/sidecar:{sidecar_id}"


# Every sidecar chain, as a LIKE pattern.
SIDECAR_CHAINS_LIKE = "datasource:%/sidecar:%"


class AuditEvent(models.Model):
    """One thing that happened: a statement a sidecar saw, or a control-plane decision.

    Append-only (a trigger refuses UPDATE and DELETE); ``seq``/``prev_hash``/``hash``
    chain the events of one ``chain`` (a sidecar, a datasource, or the control plane), see
    ``audit.chain``. ``id`` is unique (an identity column) though the database's
    key is ``(occurred_at, id, environment)``, as partitioning requires.
    """

    id = models.BigIntegerField(primary_key=True)
    event_id = models.TextField()
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField()
    chain = models.TextField()
    seq = models.BigIntegerField()
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)
    source = models.TextField(choices=EventSource.choices)
    type = models.TextField()
    actor = models.TextField(blank=True)
    identity_name = models.TextField(blank=True)
    identity_kind = models.TextField(blank=True)
    identity_owner = models.TextField(blank=True)
    datasource_id = models.IntegerField(null=True)
    environment = models.TextField(blank=True)
    sidecar_id = models.TextField(blank=True)
    client_addr = models.TextField(blank=True)
    application_name = models.TextField(blank=True)
    statement_kind = models.TextField(blank=True)
    statement = models.TextField(blank=True)
    fingerprint = models.TextField(blank=True)
    tables = ArrayField(models.TextField(), default=list)
    columns = ArrayField(models.TextField(), default=list)
    classifications = ArrayField(models.TextField(), default=list)
    masked_columns = ArrayField(models.TextField(), default=list)
    action = models.TextField(blank=True)
    outcome = models.TextField(blank=True)
    rows = models.BigIntegerField(null=True)
    duration_ms = models.FloatField(null=True)
    risk = models.IntegerField(null=True)
    extra = models.JSONField(default=dict)

    class Meta:
        managed = False
        db_table = "audit_event"
        ordering = ["-occurred_at", "-id"]

    def __str__(self) -> str:
        who = self.identity_name or self.actor or "-"
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.type} {who}"


class ChainHead(models.Model):
    """The last (seq, hash) of a chain; ingestion locks this row to append in order.

    ``anchored_seq``/``anchored_at``: the last seq of this (sidecar) chain written
    into its datasource's chain as a ``chain.anchored`` event, and when.
    """

    chain = models.TextField(primary_key=True)
    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    anchored_seq = models.BigIntegerField(default=0)
    anchored_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = "audit_chain_head"

    def __str__(self) -> str:
        return f"{self.chain} @ {self.seq}"


class ChainAnchor(models.Model):
    """The last (seq, hash) of a chain that retention dropped: verification resumes there."""

    chain = models.TextField(primary_key=True)
    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    dropped_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "audit_chain_anchor"

    def __str__(self) -> str:
        return f"{self.chain} anchored @ {self.seq}"


class AccessDaily(models.Model):
    """Daily count of allowed statements that read classified data, per identity,
    datasource, the set of classifications read and whether anything was masked.

    Maintained by ingestion in the same transaction as the events (the PII
    report reads it). One statement is one row's count: ``classifications`` is
    the sorted set it read, ``masked`` whether the sidecar masked any column of
    it (else the values came back raw: an identity exempt from masking, or data
    no rule masks). The database key is (day, identity_name, datasource_id,
    classifications, masked, writer), ``writer`` being the sidecar whose batches
    counted the row (0 for a rebuild): read it summed. Django needs one column as
    ``pk``, so ``day`` stands in and this model is for reading only.
    """

    day = models.DateField(primary_key=True)
    identity_name = models.TextField()
    identity_kind = models.TextField()
    datasource_id = models.IntegerField()
    classifications = ArrayField(models.TextField())
    masked = models.BooleanField()
    writer = models.IntegerField(default=0)
    events = models.BigIntegerField()

    class Meta:
        managed = False
        db_table = "audit_access_daily"

    def __str__(self) -> str:
        read = "masked" if self.masked else "raw"
        labels = ",".join(self.classifications)
        return f"{self.day} {self.identity_name} {labels} {read}: {self.events}"


class ActivityDaily(models.Model):
    """Daily count of statement events per environment and outcome (the overview's).

    Maintained by ingestion in the same transaction as the events. The database
    key is (day, environment, outcome, writer) (see ``AccessDaily``: read it
    summed); ``day`` stands in as Django's ``pk``, so this model is for reading only.
    """

    day = models.DateField(primary_key=True)
    environment = models.TextField()
    outcome = models.TextField()
    writer = models.IntegerField(default=0)
    events = models.BigIntegerField()

    class Meta:
        managed = False
        db_table = "audit_activity_daily"

    def __str__(self) -> str:
        return f"{self.day} {self.environment} {self.outcome}: {self.events}"


DEFAULT_RETENTION_DAYS = 400


class AuditRetention(models.Model):
    """How long the trail keeps an environment's events; '' is the control plane's own.

    That the environment exists is checked where a retention is set
    (``audit.sink.retention.audit_retention_set``): this module imports no other app.
    """

    environment = models.CharField(
        max_length=32,
        unique=True,
        blank=True,
        help_text="Environment name; empty for control-plane events without a datasource.",
    )
    days = models.PositiveIntegerField(default=DEFAULT_RETENTION_DAYS)

    class Meta:
        ordering = ["environment"]
        constraints = [
            # A month partition is the unit dropped: under ~a month would drop the current one.
            models.CheckConstraint(condition=Q(days__gte=31), name="auditretention_days_min"),
        ]

    def __str__(self) -> str:
        return f"{self.environment or 'control plane'}: {self.days} days"


class AuditVerification(models.Model):
    """One run of chain verification, for the overview and for alerting."""

    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    ok = models.BooleanField()
    checked = models.BigIntegerField(default=0)
    chains = models.PositiveIntegerField(default=0)
    first_broken = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        get_latest_by = "started_at"

    def __str__(self) -> str:
        return f"{self.started_at:%Y-%m-%d %H:%M} {'OK' if self.ok else 'BROKEN'}"


# The auditor's tools (saved searches, evidence packs) live in their own module.
from audit.report_models import EvidencePack, EvidenceStatus, SavedSearch  # noqa: E402, F401
