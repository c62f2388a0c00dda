"""HTML forms of the security-team UI. Each form only parses and shapes input;
``create``/``update`` hand it to the matching service, and the service's
``ValidationError`` is mapped back onto the form so every problem shows inline
next to its field. No policy rule is checked here that the service would not
check itself, so the UI and the API cannot disagree."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models
from django.forms.models import model_to_dict

from governance import selectors, services, simulator
from governance.errors import ApplicationError
from governance.models import (
    BREAK_GLASS_MAX_HOURS,
    DETECTOR_REGEX_MAX_LENGTH,
    FLAG_CONDITIONS,
    STATEMENT_KINDS,
    AccessToken,
    ApiToken,
    BreakGlassGrant,
    Classification,
    ColumnClassification,
    CustomDetector,
    Datasource,
    Environment,
    FloorRule,
    GuardrailRule,
    Identity,
    IdentityKind,
    MaskingRule,
    ScanSchedule,
    Team,
    identities_allowed_on,
)
from sidecar.engine import vocabulary


def model_field(model: type[models.Model], name: str, **kwargs: Any) -> forms.Field:
    """The form field Django would build for ``model.name`` (labels, help, validators)."""
    field = model._meta.get_field(name).formfield(**kwargs)
    assert field is not None
    return field


def apply_service_error(form: forms.Form, exc: ValidationError | ApplicationError) -> None:
    """Put a service's errors on the form: by field where the form has it, else on top."""
    if isinstance(exc, ApplicationError):
        form.add_error(None, exc.message)
        return
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for name, errors in exc.error_dict.items():
        target = form.error_target(name) if isinstance(form, ServiceForm) else None
        if target is None and name != NON_FIELD_ERRORS:
            label = name.replace("_", " ").capitalize()
            errors = [ValidationError(f"{label}: {m}") for e in errors for m in e.messages]
        form.add_error(target, errors)


class ServiceForm(forms.Form):
    """A form whose ``save`` calls a service; subclasses say which.

    ``editing``: the form edits an existing object, so fields only a new one has
    (``create_only``) are left out, and those only an edit has (``edit_only``) kept.
    """

    # Service error keys that belong to a differently named form field.
    error_fields: dict[str, str] = {}
    create_only: tuple[str, ...] = ()
    edit_only: tuple[str, ...] = ()

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in self.create_only if editing else self.edit_only:
            self.fields.pop(name, None)

    def error_target(self, name: str) -> str | None:
        name = self.error_fields.get(name, name)
        return name if name in self.fields else None

    def data_for_service(self) -> dict[str, Any]:
        return dict(self.cleaned_data)

    @classmethod
    def initial_from(cls, obj: models.Model) -> dict[str, Any]:
        return model_to_dict(obj, fields=list(cls.base_fields))

    def create(self, *, actor: Any) -> models.Model:
        raise NotImplementedError

    def update(self, *, actor: Any, obj: Any) -> models.Model:
        raise NotImplementedError

    def save(self, *, actor: Any, obj: models.Model | None = None) -> models.Model | None:
        """Run the service; on refusal put its errors on the form and return None."""
        if not self.is_valid():
            return None
        try:
            if obj is None:
                return self.create(actor=actor)
            return self.update(actor=actor, obj=obj)
        except (ValidationError, ApplicationError) as exc:
            apply_service_error(self, exc)
            return None


def _checkboxes(choices: Iterable[tuple[str, str]], label: str, help_text: str = "") -> Any:
    return forms.MultipleChoiceField(
        choices=list(choices),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label=label,
        help_text=help_text,
    )


def _team_choices() -> forms.ModelMultipleChoiceField:
    return forms.ModelMultipleChoiceField(
        queryset=Team.objects.all(), required=False, widget=forms.CheckboxSelectMultiple
    )


# --- teams ----------------------------------------------------------------------------


class TeamForm(ServiceForm):
    name = model_field(Team, "name")
    slug = model_field(Team, "slug", required=False)
    description = model_field(Team, "description", widget=forms.Textarea(attrs={"rows": 3}))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields[
            "slug"
        ].help_text = (
            "Used in guardrail conditions and SSO group mapping. Left empty: made from the name."
        )

    def create(self, *, actor: Any) -> Team:
        return services.team_create(actor=actor, **self.cleaned_data)

    def update(self, *, actor: Any, obj: Any) -> Team:
        data = self.data_for_service()
        if not data["slug"]:
            data.pop("slug")
        return services.team_update(actor=actor, team=obj, data=data)


# --- identities -----------------------------------------------------------------------


class IdentityForm(ServiceForm):
    name = model_field(Identity, "name")
    kind = model_field(Identity, "kind")
    display_name = model_field(Identity, "display_name")
    email = model_field(Identity, "email")
    owner = forms.ModelChoiceField(
        queryset=Identity.objects.none(),
        required=False,
        help_text="The accountable human; required for service accounts and AI agents.",
    )
    teams = _team_choices()
    is_active = model_field(Identity, "is_active", required=False)
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Optional, UTC. After this, the identity cannot connect.",
    )

    def __init__(self, *args: Any, instance: Identity | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        owners = Identity.objects.filter(kind=IdentityKind.HUMAN, is_active=True)
        if instance is not None:
            owners = owners.exclude(pk=instance.pk)
        self.fields["owner"].queryset = owners

    def create(self, *, actor: Any) -> Identity:
        return services.identity_create(actor=actor, **self.cleaned_data)

    def update(self, *, actor: Any, obj: Any) -> Identity:
        return services.identity_update(actor=actor, identity=obj, data=self.data_for_service())


class IdentityLinkForm(ServiceForm):
    """An admin links a sign-in account to a human identity by hand."""

    username = forms.CharField(
        max_length=150,
        label="Account",
        help_text="The user name of the sign-in account to link.",
    )
    error_fields = {"user": "username"}

    def __init__(self, *args: Any, identity: Identity, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.identity = identity

    def clean_username(self) -> Any:
        name = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=name).first()
        if user is None:
            raise forms.ValidationError("No account has this user name.")
        return user

    def create(self, *, actor: Any) -> Identity:
        return services.identity_link_user(
            actor=actor, identity=self.identity, user=self.cleaned_data["username"]
        )


class TokenIssueForm(ServiceForm):
    name = model_field(AccessToken, "name")
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Optional, UTC. Leave empty for a token that lasts until revoked.",
    )

    def __init__(self, *args: Any, identity: Identity | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.identity = identity
        self.raw_token: str | None = None
        self.fields["name"].help_text = "Where it will be used, e.g. 'laptop' or 'ci-deploy'."

    def create(self, *, actor: Any) -> AccessToken:
        assert self.identity is not None
        token, self.raw_token = services.token_issue(
            actor=actor, identity=self.identity, **self.cleaned_data
        )
        return token


class ApiTokenIssueForm(ServiceForm):
    name = model_field(ApiToken, "name")
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Optional, UTC.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw_token: str | None = None
        self.fields["name"].help_text = "What the automation is, e.g. 'terraform'."

    def create(self, *, actor: Any) -> ApiToken:
        token, self.raw_token = services.api_token_issue(actor=actor, **self.cleaned_data)
        return token


# --- datasources ----------------------------------------------------------------------


class JSONTextField(forms.CharField):
    """A JSON value typed in a textarea; a parse error is a field error, not a 500."""

    widget = forms.Textarea(attrs={"rows": 6, "spellcheck": "false"})

    def __init__(self, *, empty: Any, **kwargs: Any) -> None:
        self.empty = empty
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict | list):
            return json.dumps(value, indent=2, ensure_ascii=False)
        return value

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value)
        if not text.strip():
            return self.empty
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
            ) from exc


# The reason's help text; object_edit says when the object protects production.
REASON_HELP = (
    "Required when the change touches the protection of a production datasource. Kept "
    "for good in the configuration history and the audit trail: do not include personal data."
)


def _reason_field() -> forms.CharField:
    """Why, kept in history and the audit trail; the service says when it is required."""
    return forms.CharField(
        required=False,
        max_length=2000,
        label="Reason for the change",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=REASON_HELP,
    )


class DatasourceForm(ServiceForm):
    edit_only = ("reason",)

    name = model_field(Datasource, "name")
    environment = model_field(Datasource, "environment")
    engine = model_field(Datasource, "engine")
    dialect = model_field(Datasource, "dialect")
    description = model_field(Datasource, "description", widget=forms.Textarea(attrs={"rows": 3}))
    connect_teams = _team_choices()
    review_teams = _team_choices()
    mask_services_provisionally = model_field(Datasource, "mask_services_provisionally")
    schema_snapshot = JSONTextField(
        empty={},
        help_text='Usually sent by the sidecar\'s scanner. Shape: {"tables": [{"schema": '
        '"public", "name": "customers", "kind": "table", "columns": [{"name": "email", '
        '"type": "text"}]}]}',
    )
    reason = _reason_field()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["connect_teams"].label = "Teams that may connect"
        self.fields["review_teams"].label = "Teams that review"

    def data_for_service(self) -> dict[str, Any]:
        return {k: v for k, v in self.cleaned_data.items() if k != "reason"}

    def create(self, *, actor: Any) -> Datasource:
        return services.datasource_create(actor=actor, **self.data_for_service())

    def update(self, *, actor: Any, obj: Any) -> Datasource:
        return services.datasource_update(
            actor=actor,
            datasource=obj,
            data=self.data_for_service(),
            reason=self.cleaned_data.get("reason", ""),
        )


# --- classifications ------------------------------------------------------------------


class ClassificationForm(ServiceForm):
    name = model_field(Classification, "name")
    level = model_field(Classification, "level")
    description = model_field(
        Classification, "description", widget=forms.Textarea(attrs={"rows": 3})
    )

    def create(self, *, actor: Any) -> Classification:
        return services.classification_create(actor=actor, **self.cleaned_data)

    def update(self, *, actor: Any, obj: Any) -> Classification:
        return services.classification_update(
            actor=actor, classification=obj, data=self.data_for_service()
        )


class ColumnClassificationForm(ServiceForm):
    datasource = forms.ModelChoiceField(queryset=Datasource.objects.all())
    schema_name = model_field(ColumnClassification, "schema_name", initial="public")
    table_name = model_field(ColumnClassification, "table_name")
    column_name = model_field(ColumnClassification, "column_name")
    classification = forms.ModelChoiceField(queryset=Classification.objects.all())
    reason = _reason_field()  # on a create too: it replaces the column's classification

    def __init__(self, *args: Any, instance: ColumnClassification | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if instance is not None:
            # The column is the object's identity; editing changes only its label.
            for name in ("datasource", "schema_name", "table_name", "column_name"):
                self.fields[name].disabled = True

    def create(self, *, actor: Any) -> ColumnClassification:
        return services.column_classification_set(actor=actor, **self.cleaned_data)

    def update(self, *, actor: Any, obj: Any) -> ColumnClassification:
        return services.column_classification_set(
            actor=actor,
            datasource=obj.datasource,
            schema_name=obj.schema_name,
            table_name=obj.table_name,
            column_name=obj.column_name,
            classification=self.cleaned_data["classification"],
            reason=self.cleaned_data.get("reason", ""),
        )


# --- masking rules --------------------------------------------------------------------


def _environment_choices() -> list[tuple[str, str]]:
    return [(e.name, f"{e.name} (criticality {e.criticality})") for e in Environment.objects.all()]


def _param_field(name: str) -> str:
    return f"param_{name}"


# What each strategy parameter is, in words (vocabulary.MASKING_STRATEGIES gives the bounds).
_PARAM_LABELS = {
    "keep_last": ("Characters kept at the end", "How many of the last characters stay visible."),
}


class MaskingRuleForm(ServiceForm):
    """The strategy's parameters are one typed field each (``param_<name>``), shown for
    the strategies that take them; the service gets them as the ``params`` object."""

    edit_only = ("reason",)

    name = model_field(MaskingRule, "name")
    classification = forms.ModelChoiceField(queryset=Classification.objects.all())
    strategy = model_field(MaskingRule, "strategy")
    environments = _checkboxes([], "Environments", "None ticked: every environment.")
    exempt_teams = _team_choices()
    enabled = model_field(MaskingRule, "enabled", required=False)
    reason = _reason_field()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["environments"].choices = _environment_choices()
        self.fields["exempt_teams"].help_text = "Members of these teams see real values."
        for parameter in vocabulary.MASKING_PARAMETERS:
            label, help_text = _PARAM_LABELS.get(
                parameter.name, (parameter.name.replace("_", " ").capitalize(), "")
            )
            used_by = [s for s, ps in vocabulary.MASKING_STRATEGIES.items() if parameter in ps]
            field = forms.IntegerField(
                required=False,
                min_value=parameter.minimum,
                max_value=parameter.maximum,
                label=label,
                help_text=f"{help_text} {parameter.minimum} to {parameter.maximum}; "
                f"for {', '.join(used_by)} (default {parameter.default}).".strip(),
            )
            # Which strategies show it (warden.js hides it for the others).
            field.widget.attrs["data-strategies"] = " ".join(used_by)
            self.fields[_param_field(parameter.name)] = field

    @classmethod
    def initial_from(cls, obj: models.Model) -> dict[str, Any]:
        assert isinstance(obj, MaskingRule)
        fields = ["name", "classification", "strategy", "environments", "exempt_teams", "enabled"]
        initial = model_to_dict(obj, fields=fields)
        for name, value in (obj.params or {}).items():
            initial[_param_field(name)] = value
        return initial

    def params(self) -> dict[str, Any]:
        """The chosen strategy's parameters that were filled in (the others are ignored)."""
        cd = self.cleaned_data
        taken = vocabulary.MASKING_STRATEGIES.get(cd.get("strategy") or "", ())
        return {
            p.name: cd[_param_field(p.name)]
            for p in taken
            if cd.get(_param_field(p.name)) is not None
        }

    def data_for_service(self) -> dict[str, Any]:
        data = {
            k: v
            for k, v in self.cleaned_data.items()
            if k != "reason" and not k.startswith("param_")
        }
        data["environments"] = list(data["environments"])
        data["params"] = self.params()
        return data

    def error_target(self, name: str) -> str | None:
        if name == "params":
            taken = vocabulary.MASKING_STRATEGIES.get(self.cleaned_data.get("strategy") or "", ())
            return _param_field(taken[0].name) if taken else None
        return super().error_target(name)

    def create(self, *, actor: Any) -> MaskingRule:
        return services.masking_rule_create(actor=actor, **self.data_for_service())

    def update(self, *, actor: Any, obj: Any) -> MaskingRule:
        return services.masking_rule_update(
            actor=actor,
            rule=obj,
            data=self.data_for_service(),
            reason=self.cleaned_data.get("reason", ""),
        )


# --- guardrails -----------------------------------------------------------------------


_FLAG_CHOICES = [("", "Either"), ("true", "Yes"), ("false", "No")]
_FLAG_LABELS = {
    "missing_where": "UPDATE/DELETE without WHERE",
    "unbounded_classified_read": "Unbounded read of classified data",
    "multi_statement": "Several statements in one query",
    "unparseable": "Statement Warden cannot parse",
}


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


class GuardrailForm(ServiceForm):
    """The conditions object is edited as one field per condition."""

    create_only = ("position",)  # the reason is on both: an insertion can need one

    name = model_field(GuardrailRule, "name")
    action = model_field(GuardrailRule, "action")
    message = model_field(GuardrailRule, "message")
    datasource = forms.ModelChoiceField(
        queryset=Datasource.objects.all(),
        required=False,
        empty_label="Every datasource",
        help_text="Limit the rule to one datasource.",
    )
    enabled = model_field(GuardrailRule, "enabled", required=False)
    environments = _checkboxes([], "Environments", "None ticked: any environment.")
    identity_kinds = _checkboxes(IdentityKind.choices, "Identity kinds", "None ticked: any kind.")
    teams = _checkboxes([], "Teams", "None ticked: any team.")
    statement_kinds = _checkboxes(
        [(k, k) for k in STATEMENT_KINDS], "Statement kinds", "None ticked: any statement."
    )
    classifications = _checkboxes([], "Classifications touched", "None ticked: any data.")
    tables = forms.CharField(
        required=False,
        help_text="Comma-separated: 'orders', 'public.orders' or 'billing.*'. Empty: any table.",
    )
    functions = forms.CharField(
        required=False,
        help_text="Comma-separated function names, e.g. 'pg_read_file, dblink'. Empty: any.",
    )
    position = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        help_text="1 = evaluated first. Empty: after every other guardrail.",
    )
    reason = _reason_field()
    missing_where = forms.ChoiceField(choices=_FLAG_CHOICES, required=False)
    unbounded_classified_read = forms.ChoiceField(choices=_FLAG_CHOICES, required=False)
    multi_statement = forms.ChoiceField(choices=_FLAG_CHOICES, required=False)
    unparseable = forms.ChoiceField(choices=_FLAG_CHOICES, required=False)

    condition_fields = (
        "environments",
        "identity_kinds",
        "teams",
        "statement_kinds",
        "classifications",
        "tables",
        "functions",
        *FLAG_CONDITIONS,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["environments"].choices = _environment_choices()
        self.fields["teams"].choices = [(t.slug, t.name) for t in Team.objects.all()]
        names = list(Classification.objects.values_list("name", flat=True))
        families = sorted({n.split(".")[0] + ".*" for n in names})
        self.fields["classifications"].choices = [(n, n) for n in families + names]
        for flag, label in _FLAG_LABELS.items():
            self.fields[flag].label = label
        self.fields["message"].widget = forms.TextInput(
            attrs={"placeholder": "Shown to the client, e.g. 'DELETE without WHERE is blocked.'"}
        )

    @classmethod
    def initial_from(cls, obj: models.Model) -> dict[str, Any]:
        assert isinstance(obj, GuardrailRule)
        initial = model_to_dict(obj, fields=["name", "action", "message", "datasource", "enabled"])
        cond = obj.normalised_conditions()
        for key in (
            "environments",
            "identity_kinds",
            "teams",
            "statement_kinds",
            "classifications",
        ):
            initial[key] = cond[key]
        initial["tables"] = ", ".join(cond["tables"])
        initial["functions"] = ", ".join(cond["functions"])
        for flag in FLAG_CONDITIONS:
            initial[flag] = "" if cond[flag] is None else ("true" if cond[flag] else "false")
        return initial

    def data_for_service(self) -> dict[str, Any]:
        data = {
            k: v
            for k, v in self.cleaned_data.items()
            if k not in self.condition_fields and k not in {"position", "reason"}
        }
        cd = self.cleaned_data
        conditions: dict[str, Any] = {
            key: list(cd[key])
            for key in (
                "environments",
                "identity_kinds",
                "teams",
                "statement_kinds",
                "classifications",
            )
        }
        conditions["tables"] = _names(cd["tables"])
        conditions["functions"] = _names(cd["functions"])
        for flag in FLAG_CONDITIONS:
            conditions[flag] = {"": None, "true": True, "false": False}[cd[flag] or ""]
        data["conditions"] = conditions
        return data

    def error_target(self, name: str) -> str | None:
        # Condition problems are about the combination, so they go on top.
        return None if name == "conditions" else super().error_target(name)

    def create(self, *, actor: Any) -> GuardrailRule:
        return services.guardrail_create(
            actor=actor,
            position=self.cleaned_data.get("position"),
            reason=self.cleaned_data.get("reason", ""),
            **self.data_for_service(),
        )

    def update(self, *, actor: Any, obj: Any) -> GuardrailRule:
        return services.guardrail_update(
            actor=actor,
            guardrail=obj,
            data=self.data_for_service(),
            reason=self.cleaned_data.get("reason", ""),
        )


class _OptionalJSONField(forms.JSONField):
    """A JSON field that shows an empty box, not ``null``, when nothing was given."""

    def prepare_value(self, value: Any) -> Any:
        return "" if value is None else super().prepare_value(value)


class SimulateForm(ServiceForm):
    """The simulator's input; ``simulate`` runs ``policy_simulate`` (nothing is saved)."""

    datasource = forms.ModelChoiceField(queryset=Datasource.objects.none())
    identity = forms.CharField(
        max_length=150,
        help_text="Any identity; one not allowed on the datasource is refused, as it would be.",
        widget=forms.TextInput(attrs={"list": "simulate-identities", "autocomplete": "off"}),
    )
    sql = forms.CharField(
        label="SQL",
        strip=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false", "class": "mono"}),
        help_text="Neither stored nor logged.",
    )
    include_disabled_guardrail = forms.ModelChoiceField(
        label="Try a disabled guardrail",
        queryset=GuardrailRule.objects.none(),
        required=False,
        empty_label="(none: the policy as it is)",
        help_text="Simulate as if this guardrail were enabled.",
    )
    draft_guardrail = _OptionalJSONField(
        label="Try a draft guardrail (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono"}),
        help_text='Not saved; evaluated after the others, e.g. {"name": "review-customers", '
        '"action": "review", "conditions": {"tables": ["customers"]}, "message": "..."}',
    )

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["datasource"].queryset = selectors.datasource_list(user=user)
        self.fields["include_disabled_guardrail"].queryset = selectors.guardrail_list(
            user=user, filters={"enabled": "false"}
        )
        self.fields["sql"].max_length = simulator.MAX_SQL_LENGTH

    def clean_draft_guardrail(self) -> dict[str, Any] | None:
        value = self.cleaned_data["draft_guardrail"]
        if value in (None, "", {}):
            return None
        if not isinstance(value, dict):
            raise ValidationError("A JSON object: name, action, conditions, message.")
        return value

    def simulate(self) -> dict[str, Any] | None:
        """The simulation, or None with the problems on the form."""
        if not self.is_valid():
            return None
        guardrail = self.cleaned_data["include_disabled_guardrail"]
        try:
            return simulator.policy_simulate(
                user=self.user,
                datasource=self.cleaned_data["datasource"],
                identity_name=self.cleaned_data["identity"],
                sql=self.cleaned_data["sql"],
                include_disabled_guardrail=guardrail.pk if guardrail is not None else None,
                draft_guardrail=self.cleaned_data["draft_guardrail"],
            )
        except (ValidationError, ApplicationError) as exc:
            apply_service_error(self, exc)
            return None


# --- classification scans -----------------------------------------------------------------


class CustomDetectorForm(ServiceForm):
    name = model_field(CustomDetector, "name")
    classification = forms.ModelChoiceField(queryset=Classification.objects.all())
    confidence = model_field(CustomDetector, "confidence")
    name_regex = model_field(
        CustomDetector,
        "name_regex",
        required=False,
        label="Column name pattern",
        help_text="Python regular expression matched against column names, e.g. "
        "(?i)^emp(loyee)?_?id$. Optional if a value pattern is given.",
    )
    value_regex = model_field(
        CustomDetector,
        "value_regex",
        required=False,
        label="Value pattern",
        help_text="Matched against sampled values inside the sidecar, e.g. ^E\\d{6}$.",
    )
    enabled = model_field(CustomDetector, "enabled", required=False)

    def create(self, *, actor: Any) -> CustomDetector:
        return services.custom_detector_create(actor=actor, **self.cleaned_data)

    def update(self, *, actor: Any, obj: Any) -> CustomDetector:
        return services.custom_detector_update(actor=actor, detector=obj, data=self.cleaned_data)


class DetectorTryForm(forms.Form):
    """The detector form's patterns plus sample strings; nothing is saved."""

    name_regex = forms.CharField(required=False, max_length=DETECTOR_REGEX_MAX_LENGTH)
    value_regex = forms.CharField(required=False, max_length=DETECTOR_REGEX_MAX_LENGTH)
    samples = forms.CharField(
        required=False,
        label="Samples",
        help_text="One per line: column names and/or values. Up to 20; nothing is stored.",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
    )

    def clean(self) -> dict[str, Any]:
        from governance.detectors import pattern_problems

        data = super().clean()
        if not data.get("name_regex") and not data.get("value_regex"):
            raise ValidationError("Give a name pattern, a value pattern, or both.")
        for field in ("name_regex", "value_regex"):
            if data.get(field):
                for problem in pattern_problems(data[field]):
                    self.add_error(field, problem)
        return data

    def sample_lines(self) -> list[str]:
        return [line for line in self.cleaned_data.get("samples", "").splitlines() if line][:20]


class ScanScheduleForm(forms.Form):
    interval_seconds = model_field(ScanSchedule, "interval_seconds", label="Scan every (seconds)")
    sample_rows = model_field(ScanSchedule, "sample_rows", label="Rows sampled per table")
    statement_timeout_ms = model_field(
        ScanSchedule, "statement_timeout_ms", label="Sampling timeout (ms)"
    )


class ReclassifyForm(forms.Form):
    classification = forms.ModelChoiceField(
        queryset=Classification.objects.all(), to_field_name="name"
    )
    reason = _reason_field()


# --- break-glass grants ---------------------------------------------------------------


class BreakGlassForm(ServiceForm):
    """Make a break-glass grant on one datasource (``services.break_glass_create``)."""

    identity = forms.ModelChoiceField(
        queryset=Identity.objects.none(),
        to_field_name="name",
        help_text="Only identities that may connect to this datasource.",
    )
    rules = forms.MultipleChoiceField(
        choices=[(value, f"{value}: {label}") for value, label in FloorRule.choices],
        widget=forms.CheckboxSelectMultiple,
        label="Safety-floor rules to lift",
    )
    reason = model_field(BreakGlassGrant, "reason", widget=forms.Textarea(attrs={"rows": 3}))
    expires_at = forms.DateTimeField(
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        label="Expires at",
        help_text=f"UTC, at most {BREAK_GLASS_MAX_HOURS} hours from now.",
    )

    def __init__(self, *args: Any, datasource: Datasource, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.datasource = datasource
        self.fields["identity"].queryset = identities_allowed_on(datasource).order_by("name")

    def create(self, *, actor: Any) -> BreakGlassGrant:
        return services.break_glass_create(
            actor=actor, datasource=self.datasource, **self.cleaned_data
        )
