"""HTML views of the security-team UI: thin functions over selectors and services.

Every policy object gets the same five pages (list with filters, detail with
configuration history, create, edit, delete after confirmation), described
once per object by a ``Resource``; guardrails add inline enable/disable and
reordering (htmx, with a plain-POST fallback), identities add access tokens,
and every signed-in person manages their own API tokens. Reading needs a
viewer role, writing needs admin or security (``governance.permissions``);
services re-check, so a view can never do more than its service allows.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.forms.models import model_to_dict
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from audit.sink import history as audit_history
from audit.sink.history import change_history_for
from governance import selectors, services
from governance.errors import ApplicationError
from governance.forms import (
    REASON_HELP,
    ApiTokenIssueForm,
    BreakGlassForm,
    ClassificationForm,
    ColumnClassificationForm,
    CustomDetectorForm,
    DatasourceForm,
    DetectorTryForm,
    GuardrailForm,
    IdentityForm,
    IdentityLinkForm,
    MaskingRuleForm,
    ReclassifyForm,
    ScanScheduleForm,
    ServiceForm,
    SimulateForm,
    TeamForm,
    TokenIssueForm,
)
from governance.masking_preview import masking_preview as mask_preview
from governance.models import (
    BREAK_GLASS_LIVE_STATES,
    PROVISIONAL,
    BreakGlassState,
    ClassificationSource,
    ClassificationStatus,
    GuardrailAction,
    IdentityKind,
    Level,
    MaskingStrategy,
    validate_strategy_params,
)
from governance.permissions import (
    POLICY_EDITORS,
    VIEWERS,
    Role,
    can_edit_policy,
    can_manage_all_tokens,
    require_role,
    user_role,
)
from sidecar.engine import vocabulary
from sidecar.engine.bundle import DEFAULT_STRATEGY_BY_LEVEL

PAGE_SIZE = 25

viewer_required = require_role(*VIEWERS)
editor_required = require_role(*POLICY_EDITORS)
admin_required = require_role(Role.ADMIN)


# --- filters --------------------------------------------------------------------------


def _choice(choices: Any, label: str) -> forms.ChoiceField:
    return forms.ChoiceField(choices=[("", "Any"), *choices], required=False, label=label)


_YES_NO = [("true", "Yes"), ("false", "No")]


class SearchForm(forms.Form):
    """The filters of a list page; subclasses may use ``user`` to scope their choices."""

    q = forms.CharField(
        required=False,
        label="Search",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Name or description"}),
    )

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)


class IdentityFilters(SearchForm):
    kind = _choice(IdentityKind.choices, "Kind")
    team = forms.ChoiceField(required=False, label="Team")
    is_active = _choice(_YES_NO, "Active")

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        teams = selectors.team_list(user=user)
        self.fields["team"].choices = [("", "Any"), *((t.slug, t.name) for t in teams)]


class DatasourceFilters(SearchForm):
    environment = forms.ChoiceField(required=False, label="Environment")

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        envs = selectors.environment_list(user=user)
        self.fields["environment"].choices = [("", "Any"), *((e.name, e.name) for e in envs)]


class ClassificationFilters(SearchForm):
    level = _choice(Level.choices, "Level")
    is_builtin = _choice(_YES_NO, "Built in")


class ColumnFilters(SearchForm):
    datasource = forms.ChoiceField(required=False, label="Datasource")
    status = _choice(ClassificationStatus.choices, "Status")
    source = _choice(ClassificationSource.choices, "Source")

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sources = selectors.datasource_list(user=user)
        self.fields["datasource"].choices = [("", "Any"), *((str(d.pk), d.name) for d in sources)]
        self.fields["q"].widget.attrs["placeholder"] = "schema, table or column"


class MaskingFilters(SearchForm):
    strategy = _choice(MaskingStrategy.choices, "Strategy")
    enabled = _choice(_YES_NO, "Enabled")


class GuardrailFilters(SearchForm):
    action = _choice(GuardrailAction.choices, "Action")
    enabled = _choice(_YES_NO, "Enabled")


# --- resources ------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """How one policy object is listed, shown, edited and deleted."""

    key: str  # URL-name prefix and template stem: "team" → team_list, governance/team_*.html
    singular: str
    plural: str
    list_selector: Callable[..., Any]
    get_selector: Callable[..., Any]
    form_class: type[ServiceForm]
    delete_service: Callable[..., None]
    delete_kwarg: str
    filter_form: type[SearchForm] = SearchForm
    lede: str = ""
    form_takes_instance: bool = False
    # Changing or deleting one that protects production needs a reason (services.policy).
    takes_reason: bool = False

    def url(self, action: str, pk: Any = None) -> str:
        name = f"governance:{self.key}_{action}"
        return reverse(name, args=[pk]) if pk is not None else reverse(name)

    def template(self, page: str) -> str:
        return f"governance/{self.key}_{page}.html"


RESOURCES: dict[str, Resource] = {
    r.key: r
    for r in (
        Resource(
            key="team",
            singular="team",
            plural="Teams",
            list_selector=selectors.team_list,
            get_selector=selectors.team_get,
            form_class=TeamForm,
            delete_service=services.team_delete,
            delete_kwarg="team",
            lede="Groups of identities. Teams may connect to datasources, review, or be exempt "
            "from masking.",
        ),
        Resource(
            key="identity",
            singular="identity",
            plural="Identities",
            list_selector=selectors.identity_list,
            get_selector=selectors.identity_get,
            form_class=IdentityForm,
            delete_service=services.identity_delete,
            delete_kwarg="identity",
            filter_form=IdentityFilters,
            form_takes_instance=True,
            lede="People, service accounts and AI agents that connect through the sidecar.",
        ),
        Resource(
            key="datasource",
            singular="datasource",
            plural="Datasources",
            list_selector=selectors.datasource_list,
            get_selector=selectors.datasource_get,
            form_class=DatasourceForm,
            delete_service=services.datasource_delete,
            delete_kwarg="datasource",
            filter_form=DatasourceFilters,
            takes_reason=True,
            lede="Protected databases, each behind its own sidecar.",
        ),
        Resource(
            key="classification",
            singular="classification",
            plural="Classifications",
            list_selector=selectors.classification_list,
            get_selector=selectors.classification_get,
            form_class=ClassificationForm,
            delete_service=services.classification_delete,
            delete_kwarg="classification",
            filter_form=ClassificationFilters,
            lede="Sensitivity labels, from public to restricted.",
        ),
        Resource(
            key="column",
            singular="column classification",
            plural="Column classifications",
            list_selector=selectors.column_classification_list,
            get_selector=selectors.column_classification_get,
            form_class=ColumnClassificationForm,
            delete_service=services.column_classification_delete,
            delete_kwarg="column_classification",
            filter_form=ColumnFilters,
            form_takes_instance=True,
            takes_reason=True,
            lede="Which columns hold which kind of data. Set by hand or proposed by the scanner.",
        ),
        Resource(
            key="detector",
            singular="custom detector",
            plural="Custom detectors",
            list_selector=selectors.custom_detector_list,
            get_selector=selectors.custom_detector_get,
            form_class=CustomDetectorForm,
            delete_service=services.custom_detector_delete,
            delete_kwarg="detector",
            lede="Patterns the sidecar's scanner runs next to its built-in detectors.",
        ),
        Resource(
            key="masking_rule",
            singular="masking rule",
            plural="Masking rules",
            list_selector=selectors.masking_rule_list,
            get_selector=selectors.masking_rule_get,
            form_class=MaskingRuleForm,
            delete_service=services.masking_rule_delete,
            delete_kwarg="rule",
            filter_form=MaskingFilters,
            takes_reason=True,
            lede="How classified values are masked, inside the database, for everyone not exempt.",
        ),
        Resource(
            key="guardrail",
            singular="guardrail",
            plural="Guardrails",
            list_selector=selectors.guardrail_list,
            get_selector=selectors.guardrail_get,
            form_class=GuardrailForm,
            delete_service=services.guardrail_delete,
            delete_kwarg="guardrail",
            filter_form=GuardrailFilters,
            takes_reason=True,
            lede="Evaluated top to bottom; the first enabled rule that matches decides.",
        ),
    )
}


def _form(res: Resource, *args: Any, instance: Any = None, **kwargs: Any) -> ServiceForm:
    if res.form_takes_instance:
        kwargs["instance"] = instance
    return res.form_class(*args, editing=instance is not None, **kwargs)


def _production_note(res: Resource, obj: Any) -> list[str]:
    """The production datasources ``obj`` protects, when changing it may need a reason."""
    return selectors.production_datasources_affected(obj) if res.takes_reason else []


def _paginate(request: HttpRequest, queryset: Any) -> Any:
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))


# --- generic pages --------------------------------------------------------------------


# How far back the home page counts policy changes.
RECENT_CHANGES_DAYS = 7


@viewer_required
@require_http_methods(["GET"])
def home(request: HttpRequest) -> HttpResponse:
    """Each role lands on its work: a reviewer on the approvals inbox, an auditor on
    the audit overview (with the last chain verification); admin and security on
    what waits for them (findings to confirm, pending approvals, sidecars that need
    someone, recent changes), then the policy at a glance. Every count links to
    the list it counts."""
    user = request.user
    role = user_role(user)
    if role == Role.REVIEWER:
        return redirect("approvals:inbox")
    if role == Role.AUDITOR:
        return redirect("audit:overview")
    since = timezone.localdate() - datetime.timedelta(days=RECENT_CHANGES_DAYS)
    recent = audit_history.change_list(filters={"since": since})
    context = {
        "counts": [
            (res, res.list_selector(user=user).count())
            for res in RESOURCES.values()
            if res.key != "column"
        ],
        "guardrails": selectors.guardrail_list(user=user)[:8],
        "datasources": selectors.datasource_list(user=user)[:8],
        "proposed": selectors.review_queue(user=user).count(),
        "sidecars": selectors.sidecar_attention(user=user),
        "changes": _with_change_links(list(recent[:6])),
        "changes_count": recent.count(),
        "changes_since": since,
        "changes_days": RECENT_CHANGES_DAYS,
    }
    return render(request, "governance/home.html", context)


@viewer_required
@require_http_methods(["GET"])
def object_list(request: HttpRequest, *, res: Resource) -> HttpResponse:
    filters = res.filter_form(request.GET or None, user=request.user)
    cleaned = filters.cleaned_data if filters.is_bound and filters.is_valid() else {}
    page = _paginate(request, res.list_selector(user=request.user, filters=cleaned))
    context = {"res": res, "filters": filters, "page": page, "objects": page.object_list}
    return render(request, res.template("list"), context)


@viewer_required
@require_http_methods(["GET"])
def object_detail(request: HttpRequest, pk: int, *, res: Resource) -> HttpResponse:
    obj = res.get_selector(user=request.user, pk=pk)
    context: dict[str, Any] = {"res": res, "object": obj, "history": change_history_for(obj)}
    extra = DETAIL_CONTEXT.get(res.key)
    if extra is not None:
        context.update(extra(request, obj))
    return render(request, res.template("detail"), context)


def _form_status(request: HttpRequest) -> int:
    # A POST that reaches the form page again was refused: say so with 400 (as the
    # API does), while the page still shows the errors inline.
    return 400 if request.method == "POST" else 200


@editor_required
@require_http_methods(["GET", "POST"])
def object_create(request: HttpRequest, *, res: Resource) -> HttpResponse:
    form = _form(res, request.POST or None, initial=request.GET.dict() or None)
    if request.method == "POST":
        obj = form.save(actor=request.user)
        if obj is not None:
            messages.success(request, f"Created {res.singular} {obj}.")
            return redirect(res.url("detail", obj.pk))
    context = {"res": res, "form": form}
    return render(request, "governance/object_form.html", context, status=_form_status(request))


@editor_required
@require_http_methods(["GET", "POST"])
def object_edit(request: HttpRequest, pk: int, *, res: Resource) -> HttpResponse:
    obj = res.get_selector(user=request.user, pk=pk)
    initial = res.form_class.initial_from(obj)
    form = _form(res, request.POST or None, initial=initial, instance=obj)
    production = _production_note(res, obj)
    if production and "reason" in form.fields:
        form.fields["reason"].help_text = (
            f"It protects production ({', '.join(production)}): required for any change "
            f"but its name or description. {REASON_HELP.split('. ', 1)[1]}"
        )
    if request.method == "POST":
        saved = form.save(actor=request.user, obj=obj)
        if saved is not None:
            messages.success(request, f"Saved {res.singular} {saved}.")
            return redirect(res.url("detail", saved.pk))
    context = {"res": res, "form": form, "object": obj}
    return render(request, "governance/object_form.html", context, status=_form_status(request))


@editor_required
@require_http_methods(["GET", "POST"])
def object_delete(request: HttpRequest, pk: int, *, res: Resource) -> HttpResponse:
    obj = res.get_selector(user=request.user, pk=pk)
    error = ""
    production = _production_note(res, obj)
    reason = request.POST.get("reason", "")
    if request.method == "POST":
        extra = {"reason": reason} if res.takes_reason else {}
        try:
            res.delete_service(actor=request.user, **{res.delete_kwarg: obj}, **extra)
        except ApplicationError as exc:
            error = exc.message
        except ValidationError as exc:
            error = " ".join(exc.messages)
        else:
            messages.success(request, f"Deleted {res.singular} {obj}.")
            return redirect(res.url("list"))
    context = {
        "res": res,
        "object": obj,
        "error": error,
        "production": production,
        "reason": reason,
    }
    return render(
        request, "governance/object_confirm_delete.html", context, status=400 if error else 200
    )


class ChangeFilters(SearchForm):
    model = forms.ChoiceField(required=False, label="Object type")
    actor = forms.CharField(required=False, label="Changed by")
    since = forms.DateField(
        required=False, label="Since", widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, user=user, **kwargs)
        del self.fields["q"]
        self.fields["model"].choices = [("", "Any"), *CHANGE_MODELS.items()]


# content-type model name → label, for the policy objects the UI shows.
CHANGE_MODELS = {
    "team": "Team",
    "identity": "Identity",
    "accesstoken": "Access token",
    "datasource": "Datasource",
    "classification": "Classification",
    "columnclassification": "Column classification",
    "maskingrule": "Masking rule",
    "guardrailrule": "Guardrail",
    "customdetector": "Custom detector",
    "scanschedule": "Scan schedule",
    "breakglassgrant": "Break-glass grant",
}
# content-type model name → Resource key, to link a change to its object's page.
_CHANGE_LINKS = {
    "team": "team",
    "identity": "identity",
    "datasource": "datasource",
    "classification": "classification",
    "columnclassification": "column",
    "maskingrule": "masking_rule",
    "guardrailrule": "guardrail",
    "customdetector": "detector",
}


@viewer_required
@require_http_methods(["GET"])
def change_list(request: HttpRequest) -> HttpResponse:
    """Every configuration change, newest first: who changed what, when, from what to what."""
    filters = ChangeFilters(request.GET or None, user=request.user)
    cleaned = filters.cleaned_data if filters.is_bound and filters.is_valid() else {}
    records = audit_history.change_list(filters={k: v for k, v in cleaned.items() if v})
    page = _paginate(request, records)
    _with_change_links(page.object_list)
    return render(
        request, "governance/change_list.html", {"filters": filters, "page": page, "objects": page}
    )


def _with_change_links(records: Any) -> Any:
    """Set each record's ``link`` (its object's page, unless deleted) and ``kind``."""
    for record in records:
        key = _CHANGE_LINKS.get(record.content_type.model)
        if not record.object_id.isdigit():  # not one row: the order of all guardrails
            record.link = reverse("governance:guardrail_list") if key == "guardrail" else ""
        elif key and record.action != "delete":
            record.link = reverse(f"governance:{key}_detail", args=[record.object_id])
        else:
            record.link = ""
        record.kind = CHANGE_MODELS.get(record.content_type.model, record.content_type.model)
    return records


# --- per-object detail context --------------------------------------------------------


def _identity_detail(request: HttpRequest, identity: Any) -> dict[str, Any]:
    tokens = selectors.token_list(user=request.user, filters={"identity": str(identity.pk)})
    may_link = identity.kind == IdentityKind.HUMAN and user_role(request.user) == Role.ADMIN
    return {
        "tokens": tokens,
        "may_manage_tokens": _may_manage_tokens_of(request.user, identity),
        "owned": selectors.identity_list(user=request.user, filters={"owner": identity.name}),
        "may_link": may_link,
        "link_form": IdentityLinkForm(identity=identity) if may_link else None,
        "link_problem": selectors.identity_link_problem(identity),
    }


def _may_manage_tokens_of(user: Any, identity: Any) -> bool:
    # Only decides whether to show the buttons; token_issue/token_revoke re-check.
    if can_manage_all_tokens(user):
        return True
    if user_role(user) != Role.REVIEWER:
        return False
    owner_user = identity.owner.user_id if identity.owner_id else None
    return user.pk in {identity.user_id, owner_user}


def default_mask_for(classification: Any) -> str:
    """The strategy a classified column gets when no masking rule covers it: a built-in
    classification's default mask (``vocabulary.DEFAULT_MASKS``), else its level's;
    "" when it is not masked."""
    if classification.is_builtin and classification.name in vocabulary.DEFAULT_MASKS:
        default = vocabulary.DEFAULT_MASKS[classification.name]
        return default[0] if default is not None else ""
    return DEFAULT_STRATEGY_BY_LEVEL.get(classification.level) or ""


def _datasource_detail(request: HttpRequest, datasource: Any) -> dict[str, Any]:
    rules = selectors.masking_rule_list(
        user=request.user, filters={"environment": datasource.environment.name, "enabled": True}
    )
    by_classification = {rule.classification_id: rule for rule in rules}
    tables = selectors.datasource_schema(datasource=datasource)
    threshold = datasource.environment.protect_threshold
    provisional = []
    for table in tables:
        for column in table["columns"]:
            found = column["classification"]
            rule = by_classification.get(found.classification_id) if found is not None else None
            column["masking_rule"] = rule
            # What the bundle does with the column: enforced, provisional or nothing.
            column["enforcement"] = found.enforcement(threshold) if found is not None else None
            column["default_mask"] = (
                default_mask_for(found.classification)
                if found is not None and rule is None and column["enforcement"]
                else None
            )
            if column["enforcement"] == PROVISIONAL:
                provisional.append(
                    {
                        "path": f"{table['schema']}.{table['name']}.{column['name']}",
                        "cc": found,
                        "mask": rule.strategy if rule else column["default_mask"],
                    }
                )
            paths = []
            for cc in column["paths"]:
                path_rule = by_classification.get(cc.classification_id)
                paths.append({"cc": cc, "masking_rule": path_rule})
                if cc.enforcement(threshold) == PROVISIONAL:
                    provisional.append(
                        {
                            "path": f"{table['schema']}.{table['name']}.{column['name']} {cc.path}",
                            "cc": cc,
                            "mask": path_rule.strategy
                            if path_rule
                            else default_mask_for(cc.classification),
                        }
                    )
            column["paths"] = paths
    guardrails = selectors.guardrail_list(
        user=request.user, filters={"datasource": str(datasource.pk)}
    )
    schedule = selectors.scan_schedule_get(datasource=datasource)
    scans = list(selectors.scan_run_list(user=request.user, datasource=datasource)[:10])
    return {
        "tables": tables,
        "provisional": provisional,
        "protect_threshold": threshold,
        "guardrails": guardrails,
        "schedule": schedule,
        "schedule_form": ScanScheduleForm(initial=model_to_dict(schedule)),
        "scan_pending": services.scan_pending(schedule=schedule),
        "scans": scans,
        "drift": next((run for run in scans if run.drift_count), None),
        "awaiting_review": selectors.review_queue(
            user=request.user, filters={"datasource": str(datasource.pk)}
        ).count(),
        "break_glass_live": selectors.break_glass_list(
            user=request.user, filters={"datasource": str(datasource.pk)}
        )
        .filter(state__in=BREAK_GLASS_LIVE_STATES, expires_at__gt=timezone.now())
        .count(),
    }


def _classification_detail(request: HttpRequest, classification: Any) -> dict[str, Any]:
    return {
        "rules": selectors.masking_rule_list(
            user=request.user, filters={"classification": classification.name}
        ),
        "columns": selectors.column_classification_list(
            user=request.user, filters={"classification": classification.name}
        )[:50],
    }


DETAIL_CONTEXT: dict[str, Callable[[HttpRequest, Any], dict[str, Any]]] = {
    "identity": _identity_detail,
    "datasource": _datasource_detail,
    "classification": _classification_detail,
}


# --- guardrails: inline actions -------------------------------------------------------


def _back(request: HttpRequest, fallback: str, status: int = 302) -> HttpResponse:
    """Redirect to the page the form was on (same host only), else to ``fallback``.

    A refused action answers 400 with the message and a link instead of redirecting.
    """
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        target = fallback
    if status != 302:
        return render(request, "governance/refused.html", {"back": target}, status=status)
    return redirect(target)


def _reason_page(
    request: HttpRequest, exc: ValidationError, *, title: str, confirm: str, back: str
) -> HttpResponse | None:
    """Without JavaScript (not htmx), a change refused for want of a reason asks for it
    on its own page, which posts the same fields again with the reason (400: nothing
    was changed). None for any other refusal, and for htmx (its row says why)."""
    if request.htmx or not (hasattr(exc, "error_dict") and "reason" in exc.error_dict):
        return None
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        target = back
    fields = [
        (name, value)
        for name, values in request.POST.lists()
        if name not in {"csrfmiddlewaretoken", "reason"}
        for value in values
    ]
    context = {
        "title": title,
        "confirm": confirm,
        "message": " ".join(exc.message_dict["reason"]),
        "fields": fields,
        "back": target,
    }
    return render(request, "governance/confirm_reason.html", context, status=400)


def _guardrail_rows(request: HttpRequest, status: int = 200) -> HttpResponse:
    """The whole tbody: a move changes two rows' positions, so both are redrawn."""
    guardrails = selectors.guardrail_list(user=request.user)
    may_edit = can_edit_policy(request.user)
    context = {"objects": guardrails, "may_edit": may_edit, "reorderable": may_edit}
    return render(request, "governance/_guardrail_rows.html", context, status=status)


@editor_required
@require_POST
def guardrail_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    guardrail = selectors.guardrail_get(user=request.user, pk=pk)
    enabled = not guardrail.enabled
    error = ""
    try:
        guardrail = services.guardrail_set_enabled(
            actor=request.user,
            guardrail=guardrail,
            enabled=enabled,
            reason=request.POST.get("reason", ""),
        )
    except ValidationError as exc:
        # Enabling can be refused (an allow-all rule in production), and switching one
        # that protects production wants a reason: say why, inline.
        verb = "Enable" if enabled else "Disable"
        page = _reason_page(
            request,
            exc,
            title=f"{verb} guardrail {guardrail.name}?",
            confirm=f"{verb} guardrail",
            back=reverse("governance:guardrail_list"),
        )
        if page is not None:
            return page
        error = " ".join(exc.messages)
    except ApplicationError as exc:
        error = exc.message
    if request.htmx:
        # reorderable: the row keeps its drag handle and order input (drag and drop
        # only acts inside a tbody that allows it, so a filtered list is unaffected).
        context = {
            "g": guardrail,
            "may_edit": True,
            "error": error,
            "flash": not error,
            "reorderable": True,
        }
        response = render(request, "governance/_guardrail_row.html", context)
        if error:
            return trigger_client_event(response, "warden:error", {"message": error})
        return response
    if error:
        messages.error(request, f"{guardrail.name}: {error}")
    else:
        state = "enabled" if enabled else "disabled"
        messages.success(request, f"Guardrail {guardrail.name} {state}.")
    return _back(request, reverse("governance:guardrail_list"))


@editor_required
@require_POST
def guardrail_move(request: HttpRequest, pk: int) -> HttpResponse:
    guardrail = selectors.guardrail_get(user=request.user, pk=pk)
    direction = request.POST.get("direction", "")
    if direction not in {"up", "down"}:
        if request.htmx:
            return _guardrail_rows(request, status=400)
        messages.error(request, "Choose up or down.")
        return _back(request, reverse("governance:guardrail_list"))
    try:
        services.guardrail_move(
            actor=request.user,
            guardrail=guardrail,
            direction=direction,
            reason=request.POST.get("reason", ""),
        )
    except ValidationError as exc:
        page = _reason_page(
            request,
            exc,
            title=f"Move guardrail {guardrail.name} {direction}?",
            confirm="Move guardrail",
            back=reverse("governance:guardrail_list"),
        )
        if page is not None:
            return page
        return _guardrail_order_refused(request, " ".join(exc.messages))
    if request.htmx:
        return _guardrail_rows(request)
    messages.success(request, f"Moved {guardrail.name} {direction}.")
    return _back(request, reverse("governance:guardrail_list"))


def _guardrail_order_refused(request: HttpRequest, error: str) -> HttpResponse:
    if request.htmx:
        # The rows as they are (the order did not change), and the reason said aloud.
        response = _guardrail_rows(request)
        return trigger_client_event(response, "warden:error", {"message": error})
    messages.error(request, error)
    return _back(request, reverse("governance:guardrail_list"), status=400)


@editor_required
@require_POST
def guardrail_order(request: HttpRequest) -> HttpResponse:
    """The whole order at once (drag and drop posts every row's id): one change."""
    try:
        order = [int(pk) for pk in request.POST.getlist("order")]
        services.guardrail_reorder(
            actor=request.user, order=order, reason=request.POST.get("reason", "")
        )
    except ValueError:
        return _guardrail_order_refused(request, "The order must list guardrail ids.")
    except ValidationError as exc:
        page = _reason_page(
            request,
            exc,
            title="Change the order of the guardrails?",
            confirm="Save the order",
            back=reverse("governance:guardrail_list"),
        )
        if page is not None:
            return page
        return _guardrail_order_refused(request, " ".join(exc.messages))
    if request.htmx:
        return _guardrail_rows(request)
    messages.success(request, "Guardrail order saved.")
    return _back(request, reverse("governance:guardrail_list"))


# --- masking rules: preview -----------------------------------------------------------


@editor_required
@require_POST
def masking_preview(request: HttpRequest) -> HttpResponse:
    """The masking rule form's preview (htmx, as the form changes): sample values of the
    chosen classification through the engine's expression (governance.masking_preview)."""
    form = MaskingRuleForm(request.POST)
    form.is_valid()  # only the classification, strategy and parameters matter here
    data = form.cleaned_data
    context: dict[str, Any] = {"preview": None, "problems": []}
    if not data.get("classification") or not data.get("strategy"):
        context["problems"] = ["Choose a classification and a strategy to see the mask."]
    else:
        params = form.params()
        problems = [
            *(
                f"{form.fields[name].label}: {' '.join(errors)}"
                for name, errors in form.errors.items()
                if name.startswith("param_")
            ),
            *validate_strategy_params(data["strategy"], params),
        ]
        if problems:
            context["problems"] = problems
        else:
            context["preview"] = mask_preview(
                classification=data["classification"].name,
                strategy=data["strategy"],
                params=params,
                owner=str(request.user.pk),
            )
    return render(request, "governance/_masking_preview_body.html", context)


# --- column classifications: review of scanner proposals -------------------------------


@editor_required
@require_POST
def column_review(request: HttpRequest, pk: int) -> HttpResponse:
    column = selectors.column_classification_get(user=request.user, pk=pk)
    status = request.POST.get("status", "")
    try:
        services.column_classification_review(
            actor=request.user,
            column_classification=column,
            status=status,
            reason=request.POST.get("reason", ""),
        )
    except ValidationError as exc:
        page = _reason_page(
            request,
            exc,
            title=f"Reject {column.classification.name} for {column.column_and_path}?",
            confirm="Reject",
            back=reverse("governance:column_detail", args=[pk]),
        )
        if page is not None:
            return page
        messages.error(request, " ".join(exc.messages))
        return _back(request, reverse("governance:column_detail", args=[pk]), status=400)
    messages.success(request, f"{column.column_path}: {status}.")
    return _back(request, reverse("governance:column_detail", args=[pk]))


# --- classification scans: review queue, scan now, schedule, detector try-out ---------


@viewer_required
@require_http_methods(["GET"])
def review_queue(request: HttpRequest) -> HttpResponse:
    """Classifications awaiting a person: auto-applied ones (already masking) and proposals."""
    filters = ColumnFilters(request.GET or None, user=request.user)
    cleaned = filters.cleaned_data if filters.is_bound and filters.is_valid() else {}
    cleaned = {k: v for k, v in cleaned.items() if k in {"q", "datasource"}}
    page = _paginate(request, selectors.review_queue(user=request.user, filters=cleaned))
    context = {
        "filters": filters,
        "page": page,
        "objects": page.object_list,
        "classifications": selectors.classification_list(user=request.user),
        "may_edit": can_edit_policy(request.user),
    }
    return render(request, "governance/review_queue.html", context)


@editor_required
@require_POST
def review_decide(request: HttpRequest, datasource_pk: int, pk: int) -> HttpResponse:
    """Confirm, reject or reclassify one item; htmx swaps its row, plain POST redirects."""
    column = selectors.review_item_get(user=request.user, datasource_pk=datasource_pk, pk=pk)
    decision = request.POST.get("decision", "")
    error = ""
    try:
        if decision in {"confirm", "reject"}:
            status = "confirmed" if decision == "confirm" else "rejected"
            column = services.column_classification_review(
                actor=request.user,
                column_classification=column,
                status=status,
                reason=request.POST.get("reason", ""),
            )
        elif decision == "reclassify":
            form = ReclassifyForm(request.POST)
            if not form.is_valid():
                raise ValidationError("Choose a known classification.")
            column = services.column_classification_reclassify(
                actor=request.user,
                column_classification=column,
                classification=form.cleaned_data["classification"],
                reason=form.cleaned_data["reason"],
            )
        else:
            raise ValidationError("Choose confirm, reject or reclassify.")
    except ValidationError as exc:
        verb = "Reclassify" if decision == "reclassify" else "Reject"
        page = _reason_page(
            request,
            exc,
            title=f"{verb} {column.classification.name} for {column.column_and_path}?",
            confirm=verb,
            back=reverse("governance:review_queue"),
        )
        if page is not None:
            return page
        error = " ".join(exc.messages)
    if request.htmx:
        context = {
            "c": column,
            "may_edit": True,
            "error": error,
            "classifications": selectors.classification_list(user=request.user),
        }
        # 200 even when refused: htmx swaps only 2xx, and the row shows why inline.
        response = render(request, "governance/_review_row.html", context)
        if error:
            return trigger_client_event(response, "warden:error", {"message": error})
        return response
    if error:
        messages.error(request, error)
        return _back(request, reverse("governance:review_queue"), status=400)
    messages.success(
        request, f"{column.column_path}: {column.classification.name} {column.status}."
    )
    return _back(request, reverse("governance:review_queue"))


@editor_required
@require_POST
def datasource_scan(request: HttpRequest, pk: int) -> HttpResponse:
    """ "Scan now": the sidecar hears of it through its bundle and its heartbeat reply."""
    datasource = selectors.datasource_get(user=request.user, pk=pk)
    schedule = services.scan_request(actor=request.user, datasource=datasource)
    messages.success(
        request, f"Scan {schedule.requested[:8]} requested; the sidecar starts it within seconds."
    )
    return _back(request, reverse("governance:datasource_detail", args=[pk]) + "#scans")


@editor_required
@require_POST
def datasource_scan_schedule(request: HttpRequest, pk: int) -> HttpResponse:
    datasource = selectors.datasource_get(user=request.user, pk=pk)
    form = ScanScheduleForm(request.POST)
    if form.is_valid():
        try:
            services.scan_schedule_update(
                actor=request.user, datasource=datasource, data=form.cleaned_data
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return _back(request, reverse("governance:datasource_detail", args=[pk]), status=400)
        messages.success(request, "Scan schedule saved.")
        return _back(request, reverse("governance:datasource_detail", args=[pk]) + "#scans")
    problems = "; ".join(f"{form.fields[k].label}: {' '.join(v)}" for k, v in form.errors.items())
    messages.error(request, problems)
    return _back(request, reverse("governance:datasource_detail", args=[pk]), status=400)


@editor_required
@require_POST
def detector_try(request: HttpRequest) -> HttpResponse:
    """Run the form's patterns on sample strings (in a child process with a timeout)."""
    from governance.detectors import PatternTimeout, detector_try

    form = DetectorTryForm(request.POST)
    results = None
    error = ""
    if form.is_valid():
        try:
            results = detector_try(
                name_regex=form.cleaned_data["name_regex"],
                value_regex=form.cleaned_data["value_regex"],
                samples=form.sample_lines(),
            )
        except PatternTimeout:
            error = "The patterns took too long on these samples."
    else:
        error = " ".join(m for errors in form.errors.values() for m in errors)
    context = {"try_form": form, "results": results, "try_error": error}
    if request.htmx:  # htmx swaps only 2xx; the panel shows why
        return render(request, "governance/_detector_try.html", context)
    return render(request, "governance/detector_try.html", context, status=400 if error else 200)


# --- identity access tokens -----------------------------------------------------------


@viewer_required
@require_http_methods(["GET", "POST"])
def token_issue(request: HttpRequest, pk: int) -> HttpResponse:
    identity = selectors.identity_get(user=request.user, pk=pk)
    if not _may_manage_tokens_of(request.user, identity):
        # Don't show a form whose submission the service would refuse.
        raise PermissionDenied("You may not issue tokens for this identity.")
    form = TokenIssueForm(request.POST or None, identity=identity)
    if request.method == "POST":
        token = form.save(actor=request.user)
        if token is not None:
            # The raw value exists only in this response; it is never stored or logged.
            context = {"token": token, "raw": form.raw_token, "identity": identity}
            response = render(request, "governance/token_issued.html", context)
            response["Cache-Control"] = "no-store"
            return response
    context = {"form": form, "identity": identity}
    return render(request, "governance/token_issue.html", context, status=_form_status(request))


@viewer_required
@require_http_methods(["GET", "POST"])
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = selectors.token_get(user=request.user, pk=pk)
    if not _may_manage_tokens_of(request.user, token.identity):
        raise PermissionDenied("You may not revoke tokens of this identity.")
    error = ""
    if request.method == "POST":
        try:
            services.token_revoke(actor=request.user, token=token)
        except ApplicationError as exc:
            error = exc.message
        else:
            messages.success(request, f"Revoked token {token.name} ({token.prefix}…).")
            return redirect("governance:identity_detail", token.identity_id)
    context = {"token": token, "error": error}
    return render(request, "governance/token_revoke.html", context, status=400 if error else 200)


# --- sign-in accounts of human identities (admins) --------------------------------------


@admin_required
@require_POST
def identity_link(request: HttpRequest, pk: int) -> HttpResponse:
    """Link a sign-in account to a human identity by hand (docs/accounts.md)."""
    identity = selectors.identity_get(user=request.user, pk=pk)
    form = IdentityLinkForm(request.POST, identity=identity)
    if form.save(actor=request.user) is not None:
        account = form.cleaned_data["username"].get_username()
        messages.success(request, f"Linked {identity.name} to the account {account}.")
        return redirect("governance:identity_detail", identity.pk)
    res = RESOURCES["identity"]
    context: dict[str, Any] = {
        "res": res,
        "object": identity,
        "history": change_history_for(identity),
        **_identity_detail(request, identity),
        "link_form": form,
    }
    return render(request, res.template("detail"), context, status=400)


@admin_required
@require_POST
def identity_unlink(request: HttpRequest, pk: int) -> HttpResponse:
    identity = selectors.identity_get(user=request.user, pk=pk)
    try:
        services.identity_unlink_user(actor=request.user, identity=identity)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Unlinked {identity.name} from its sign-in account.")
    return redirect("governance:identity_detail", identity.pk)


# --- personal API tokens --------------------------------------------------------------


# API tokens act as their user, so every signed-in person may hold some, even
# with role none (the API then refuses them the same way): sign-in is enough.


@login_required
@require_http_methods(["GET", "POST"])
def api_token_list(request: HttpRequest) -> HttpResponse:
    form = ApiTokenIssueForm(request.POST or None)
    if request.method == "POST":
        token = form.save(actor=request.user)
        if token is not None:
            context = {"token": token, "raw": form.raw_token}
            response = render(request, "governance/api_token_issued.html", context)
            response["Cache-Control"] = "no-store"
            return response
    tokens = selectors.api_token_list(user=request.user).filter(user=request.user)
    context = {"form": form, "tokens": tokens}
    return render(request, "governance/api_token_list.html", context, status=_form_status(request))


@login_required
@require_http_methods(["GET", "POST"])
def api_token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = selectors.api_token_get(user=request.user, pk=pk)
    error = ""
    if request.method == "POST":
        try:
            services.api_token_revoke(actor=request.user, token=token)
        except ApplicationError as exc:
            error = exc.message
        else:
            messages.success(request, f"Revoked API token {token.name} ({token.prefix}…).")
            return redirect("governance:api_token_list")
    context = {"token": token, "error": error}
    return render(
        request, "governance/api_token_revoke.html", context, status=400 if error else 200
    )


# --- break-glass grants ---------------------------------------------------------------

_ONE_HOUR = datetime.timedelta(hours=1)


def _break_glass_page(
    request: HttpRequest, datasource: Any, form: BreakGlassForm | None, status: int = 200
) -> HttpResponse:
    grants = selectors.break_glass_list(
        user=request.user, filters={"datasource": str(datasource.pk)}
    )
    page = _paginate(request, grants)
    context = {
        "datasource": datasource,
        "form": form,
        "page": page,
        "objects": page.object_list,
        "may_manage": user_role(request.user) == Role.ADMIN,
    }
    return render(request, "governance/break_glass_list.html", context, status=status)


@viewer_required
@require_http_methods(["GET", "POST"])
def break_glass_list(request: HttpRequest, pk: int) -> HttpResponse:
    """A datasource's break-glass grants; admins make new ones here (POST)."""
    datasource = selectors.datasource_get(user=request.user, pk=pk)
    if user_role(request.user) != Role.ADMIN:
        if request.method == "POST":
            raise PermissionDenied("Only admins may make break-glass grants.")
        return _break_glass_page(request, datasource, None)
    initial = {"expires_at": timezone.now().replace(second=0, microsecond=0) + _ONE_HOUR}
    form = BreakGlassForm(request.POST or None, initial=initial, datasource=datasource)
    if request.method == "POST":
        grant = form.save(actor=request.user)
        if grant is not None:
            state = (
                "in force"
                if grant.state == BreakGlassState.ACTIVE
                else "waiting for a second admin's approval"
            )
            messages.success(request, f"Break-glass grant for {grant.identity.name} {state}.")
            return redirect("governance:break_glass_list", datasource.pk)
    return _break_glass_page(request, datasource, form, status=_form_status(request))


_BREAK_GLASS_ACTIONS: dict[str, tuple[Callable[..., Any], str]] = {
    "approve": (services.break_glass_approve, "approved"),
    "deny": (services.break_glass_deny, "denied"),
    "revoke": (services.break_glass_revoke, "revoked"),
}


@admin_required
@require_POST
def break_glass_action(
    request: HttpRequest, datasource_pk: int, pk: int, *, action: str
) -> HttpResponse:
    """Approve, deny or revoke one grant of this datasource; htmx swaps its row."""
    grant = selectors.break_glass_item_get(user=request.user, datasource_pk=datasource_pk, pk=pk)
    service, done = _BREAK_GLASS_ACTIONS[action]
    error = ""
    try:
        grant = service(actor=request.user, grant=grant)
    except ApplicationError as exc:
        error = exc.message
    back = reverse("governance:break_glass_list", args=[datasource_pk])
    if request.htmx:
        context = {"g": grant, "may_manage": True, "error": error, "flash": not error}
        # 200 even when refused: htmx swaps only 2xx, and the row shows why inline.
        response = render(request, "governance/_break_glass_row.html", context)
        if error:
            return trigger_client_event(response, "warden:error", {"message": error})
        return response
    if error:
        messages.error(request, error)
        return _back(request, back, status=400)
    messages.success(request, f"Break-glass grant #{grant.pk} for {grant.identity.name} {done}.")
    return _back(request, back)


# --- simulator ------------------------------------------------------------------------


@viewer_required
@require_http_methods(["GET", "POST"])
def simulate(request: HttpRequest) -> HttpResponse:
    """Try a statement against a datasource's current policy; nothing is stored.

    POST, not GET: the SQL must not end up in URLs, browser history or access
    logs. With htmx only the simulator panel (form + result) is swapped.
    """
    form = SimulateForm(request.POST or None, user=request.user)
    result = form.simulate() if request.method == "POST" else None
    status = 400 if request.method == "POST" and result is None else 200
    context = {
        "form": form,
        "result": result,
        "identities": selectors.identity_list(user=request.user).values_list("name", flat=True),
    }
    template = "governance/_simulator.html" if request.htmx else "governance/simulate.html"
    return render(request, template, context, status=status)
