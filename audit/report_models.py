"""Models of the auditor's tools: saved explorer searches and evidence packs.

Kept apart from the trail's own tables (``audit.models``), which ingestion
owns; ``audit.models`` imports this module so Django registers them there.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class SavedSearch(models.Model):
    """An explorer query string kept under a name; personal to its owner."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="saved_audit_searches"
    )
    name = models.CharField(max_length=100)
    # The explorer's GET parameters, re-validated by its form whenever used.
    query = models.CharField(max_length=2000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "audit"
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="savedsearch_name_unique"),
            models.CheckConstraint(condition=~Q(name=""), name="savedsearch_name_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name


class EvidenceStatus(models.TextChoices):
    PENDING = "pending", "Waiting for a worker"
    RUNNING = "running", "Being built"
    DONE = "done", "Ready"
    FAILED = "failed", "Failed"


class EvidencePack(models.Model):
    """A ZIP for auditors over one period, built by a Celery task; personal to its requester.

    The archive is kept in the database so any web node can serve it.
    """

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="evidence_packs"
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    period_start = models.DateField()
    period_end = models.DateField()  # exclusive
    status = models.CharField(
        max_length=8, choices=EvidenceStatus.choices, default=EvidenceStatus.PENDING
    )
    progress = models.PositiveSmallIntegerField(default=0)
    step = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    content = models.BinaryField(null=True, blank=True, editable=False)
    sha256 = models.CharField(max_length=64, blank=True)
    size = models.BigIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "audit"
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=EvidenceStatus.values), name="evidencepack_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(progress__gte=0) & Q(progress__lte=100),
                name="evidencepack_progress_0_100",
            ),
            models.CheckConstraint(
                condition=Q(period_end__gt=models.F("period_start")),
                name="evidencepack_period_not_empty",
            ),
            # A pack is ready exactly when it has content.
            models.CheckConstraint(
                condition=Q(status="done", content__isnull=False)
                | (~Q(status="done") & Q(content__isnull=True)),
                name="evidencepack_content_iff_done",
            ),
        ]

    def __str__(self) -> str:
        return f"evidence {self.period_start}..{self.period_end}"

    @property
    def filename(self) -> str:
        return f"warden-evidence-{self.period_start}-{self.period_end}-{self.pk}.zip"

    @property
    def is_finished(self) -> bool:
        return self.status in (EvidenceStatus.DONE, EvidenceStatus.FAILED)
