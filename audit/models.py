"""Configuration history: one row per create, update or delete of a policy object.

Rows are written by services inside the same transaction as the change, so a
change that rolls back leaves no history and a change that commits always
does. ``actor_name`` is a snapshot: the record still says who it was after the
account is deleted.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
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
