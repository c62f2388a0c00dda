"""Forms of the approval pages: the inbox filters, approve (optionally narrowing the
grant) and deny (with a reason). They only parse input; ``approval_decide``
enforces the limits and refuses anything wider than the default grant."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.utils import timezone

from approvals.models import ReviewSettings
from approvals.services import (
    MIN_VALUES_RETENTION_SECONDS,
    REVIEW_SETTINGS_FIELDS,
    grant_default_seconds,
    grant_default_uses,
)
from governance import selectors as governance_selectors
from governance.models import IdentityKind

STATES = [
    ("pending", "Pending"),
    ("approved", "Approved"),
    ("denied", "Denied"),
    ("expired", "Expired"),
    ("cancelled", "Cancelled"),
    ("all", "Any state"),
]


def max_uses() -> int:
    """A reviewer narrows a grant: at most the default uses, never more."""
    return grant_default_uses()


def max_grant_minutes() -> int:
    """A reviewer narrows a grant: at most the default lifetime, never longer."""
    return max(1, grant_default_seconds() // 60)


class InboxFilters(forms.Form):
    q = forms.CharField(
        required=False,
        label="Search",
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Identity, statement, table"}
        ),
    )
    state = forms.ChoiceField(choices=STATES, required=False, label="State")
    datasource = forms.ChoiceField(required=False, label="Datasource")
    environment = forms.ChoiceField(required=False, label="Environment")
    identity_kind = forms.ChoiceField(
        choices=[("", "Any"), *IdentityKind.choices], required=False, label="Identity kind"
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sources = governance_selectors.datasource_list(user=user)
        self.fields["datasource"].choices = [("", "Any"), *((d.name, d.name) for d in sources)]
        envs = governance_selectors.environment_list(user=user)
        self.fields["environment"].choices = [("", "Any"), *((e.name, e.name) for e in envs)]

    def selector_kwargs(self) -> dict[str, Any]:
        """Arguments for ``approvals_inbox``: pending unless another state is chosen."""
        data = self.cleaned_data if self.is_bound and self.is_valid() else {}
        state = data.get("state") or "pending"
        return {
            "state": None if state == "all" else state,
            "datasource": data.get("datasource") or None,
            "environment": data.get("environment") or None,
            "identity_kind": data.get("identity_kind") or None,
            "q": (data.get("q") or "").strip() or None,
        }


class ApproveForm(forms.Form):
    """Both fields optional: empty means the default grant (one use, one hour)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Built here, not at class level: the limits come from settings.
        uses, minutes = max_uses(), max_grant_minutes()
        self.fields["uses"] = forms.IntegerField(
            required=False,
            min_value=1,
            max_value=uses,
            label="Uses",
            error_messages={
                "max_value": "A grant can only be narrowed: at most "
                f"{uses} use{'' if uses == 1 else 's'}, the default."
            },
        )
        self.fields["minutes"] = forms.IntegerField(
            required=False,
            min_value=1,
            max_value=minutes,
            label="Valid for (minutes)",
            error_messages={
                "max_value": f"A grant can only be narrowed: at most {minutes} minutes, "
                "the default."
            },
        )

    def grant(self, *, now: datetime | None = None) -> dict[str, Any]:
        """``uses`` and ``expires_at`` for ``approval_decide`` (None where not narrowed)."""
        minutes = self.cleaned_data.get("minutes")
        at = now or timezone.now()
        return {
            "uses": self.cleaned_data.get("uses"),
            "expires_at": at + timedelta(minutes=minutes) if minutes else None,
        }


class DenyForm(forms.Form):
    reason = forms.CharField(
        max_length=500,
        label="Reason",
        error_messages={"required": "Say why, so the requester knows what to change."},
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class ReviewSettingsForm(forms.ModelForm):
    """A datasource's review routing and timing; empty durations use the settings'
    defaults. ``review_settings_set`` saves it (and re-checks every limit)."""

    webhook_url = forms.URLField(
        required=False,
        max_length=500,
        assume_scheme="https",
        label="Webhook URL",
        help_text=ReviewSettings._meta.get_field("webhook_url").help_text,
    )

    class Meta:
        model = ReviewSettings
        fields = list(REVIEW_SETTINGS_FIELDS)
        labels = {
            "escalate_after_seconds": "Escalate after (seconds)",
            "remind_every_seconds": "Remind every (seconds)",
            "expire_after_seconds": "Requests expire after (seconds)",
            "hold_seconds": "Hold a statement for (seconds)",
            "grant_binding": "A grant runs",
            "values_retention_seconds": "Keep the values of decided requests for (seconds)",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        most_hold = settings.WARDEN_APPROVAL_MAX_HOLD_SECONDS
        hold_message = (
            f"From 1 to {most_hold} seconds: a sidecar holds a statement at most "
            f"{most_hold} s (WARDEN_APPROVAL_MAX_HOLD_SECONDS)."
        )
        self.fields["hold_seconds"] = forms.IntegerField(
            required=False,
            min_value=1,
            max_value=most_hold,
            label=self.Meta.labels["hold_seconds"],
            help_text=f"How long the client waits for a decision; empty: "
            f"{settings.WARDEN_APPROVAL_HOLD_SECONDS}, at most {most_hold}.",
            error_messages={"min_value": hold_message, "max_value": hold_message},
        )
        least = MIN_VALUES_RETENTION_SECONDS
        self.fields["values_retention_seconds"] = forms.IntegerField(
            required=False,
            min_value=least,
            label=self.Meta.labels["values_retention_seconds"],
            help_text="Then the literal values reviewers saw are deleted; empty: "
            f"{settings.WARDEN_APPROVAL_VALUES_RETENTION_SECONDS}.",
            error_messages={"min_value": f"At least {least} seconds."},
        )
        for name, default in (
            ("escalate_after_seconds", settings.WARDEN_APPROVAL_ESCALATE_SECONDS),
            ("remind_every_seconds", settings.WARDEN_APPROVAL_REMIND_SECONDS),
            ("expire_after_seconds", settings.WARDEN_APPROVAL_EXPIRE_SECONDS),
        ):
            self.fields[name].help_text = f"Empty: {default}."
