"""Pages for sidecars: who enforces policy where, how current each one is, and their tokens.

The list shows every sidecar with its last heartbeat, the revision it runs,
how many revisions behind the datasource's current bundle it is, its version,
counters and bundle status, and flags the stale ones. Admin and security
register sidecars and rotate or revoke their tokens; a new token is shown once
(``Cache-Control: no-store``), only its digest is kept.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from governance import selectors, services
from governance.bundles import bundle_current, bundle_error, bundle_history
from governance.errors import ApplicationError
from governance.models import Datasource, Sidecar, slug_validator
from governance.permissions import POLICY_EDITORS, VIEWERS, can_edit_policy, require_role

viewer_required = require_role(*VIEWERS)
editor_required = require_role(*POLICY_EDITORS)


class SidecarRegisterForm(forms.Form):
    datasource = forms.ModelChoiceField(queryset=Datasource.objects.order_by("name"))
    name = forms.CharField(
        max_length=63,
        validators=[slug_validator],
        help_text="Lower-case letters and digits, e.g. crm-prod-1.",
    )


def _behind(sidecar: Sidecar, current: str | None, history: list[str]) -> str:
    """How many revisions behind the current one, as words for the list."""
    if current is None:
        return "no bundle yet"
    if not sidecar.running_revision:
        return "no bundle"
    if sidecar.running_revision == current:
        return "current"
    if sidecar.running_revision in history:
        return f"{history.index(sidecar.running_revision)} behind"
    return f"more than {len(history)} behind"


class SidecarFilters(forms.Form):
    state = forms.ChoiceField(
        required=False,
        label="State",
        choices=[("", "Any"), *selectors.SIDECAR_STATES.items()],
    )


def _rows(sidecars: Any) -> list[dict[str, Any]]:
    sidecars = list(sidecars)
    state: dict[int, tuple[str | None, list[str], str]] = {}
    for ds_id in {s.datasource_id for s in sidecars}:
        current = bundle_current(datasource_id=ds_id)
        state[ds_id] = (
            current[0] if current else None,
            bundle_history(datasource_id=ds_id),
            bundle_error(datasource_id=ds_id),
        )
    now = timezone.now()
    rows = []
    for sidecar in sidecars:
        current, history, error = state[sidecar.datasource_id]
        rows.append(
            {
                "sidecar": sidecar,
                "current": current,
                "behind": _behind(sidecar, current, history),
                # A sidecar never heard from is not "stale": it has not started yet.
                "never": sidecar.revoked_at is None and sidecar.last_heartbeat_at is None,
                "stale": sidecar.revoked_at is None
                and sidecar.last_heartbeat_at is not None
                and sidecar.is_stale(now),
                "compile_error": error,
                "bundle_status": sidecar.bundle_status or {},
            }
        )
    return rows


def _token_page(request: HttpRequest, sidecar: Sidecar, raw: str, verb: str) -> HttpResponse:
    context = {
        "sidecar": sidecar,
        "raw": raw,
        "token": {"prefix": sidecar.token_prefix},
        "verb": verb,
    }
    # The raw value exists only in this response; it is never stored or logged.
    response = render(request, "governance/sidecars/token.html", context)
    response["Cache-Control"] = "no-store"
    return response


@viewer_required
@require_http_methods(["GET", "POST"])
def sidecar_list(request: HttpRequest) -> HttpResponse:
    form = SidecarRegisterForm(request.POST or None)
    if request.method == "POST":
        if not can_edit_policy(request.user):
            raise PermissionDenied("Only admin and security may register sidecars.")
        if form.is_valid():
            try:
                sidecar, raw = services.sidecar_register(
                    actor=request.user,
                    datasource=form.cleaned_data["datasource"],
                    name=form.cleaned_data["name"],
                )
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                return _token_page(request, sidecar, raw, "registered")
    filters = SidecarFilters(request.GET or None)
    cleaned = filters.cleaned_data if filters.is_bound and filters.is_valid() else {}
    sidecars = selectors.sidecar_list(user=request.user, filters=cleaned)
    context = {
        "rows": _rows(sidecars),
        "filters": filters,
        "filtered": bool(cleaned.get("state")),
        "form": form,
        "can_edit": can_edit_policy(request.user),
    }
    return render(
        request, "governance/sidecars/list.html", context, status=400 if form.errors else 200
    )


@editor_required
@require_http_methods(["GET", "POST"])
def sidecar_rotate(request: HttpRequest, pk: int) -> HttpResponse:
    sidecar = get_object_or_404(Sidecar.objects.select_related("datasource"), pk=pk)
    error = ""
    if request.method == "POST":
        try:
            sidecar, raw = services.sidecar_rotate_token(actor=request.user, sidecar=sidecar)
        except ApplicationError as exc:
            error = exc.message
        else:
            return _token_page(request, sidecar, raw, "rotated")
    context = {"sidecar": sidecar, "error": error, "action": "rotate"}
    return render(
        request, "governance/sidecars/confirm.html", context, status=400 if error else 200
    )


@editor_required
@require_http_methods(["GET", "POST"])
def sidecar_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    sidecar = get_object_or_404(Sidecar.objects.select_related("datasource"), pk=pk)
    error = ""
    if request.method == "POST":
        try:
            services.sidecar_revoke(actor=request.user, sidecar=sidecar)
        except ApplicationError as exc:
            error = exc.message
        else:
            messages.success(request, f"Revoked sidecar {sidecar}.")
            return redirect("governance:sidecar_list")
    context = {"sidecar": sidecar, "error": error, "action": "revoke"}
    return render(
        request, "governance/sidecars/confirm.html", context, status=400 if error else 200
    )
