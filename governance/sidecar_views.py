"""Pages for sidecars: who enforces policy where, how current each one is, and their tokens.

The list shows every sidecar with its last heartbeat, the revision it runs,
how many revisions behind the datasource's current bundle it is, its version,
counters and bundle status, and flags the stale ones. Admin and security
register sidecars and rotate or revoke their tokens; a new token is shown once
(``Cache-Control: no-store``), only its digest is kept.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

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
from governance.sidecar_setup import sidecar_setup

viewer_required = require_role(*VIEWERS)
editor_required = require_role(*POLICY_EDITORS)

# libpq connection parameters that carry a password or point at one: never on this page.
PASSWORD_PARAMETERS = frozenset({"password", "sslpassword", "passfile"})


class SidecarRegisterForm(forms.Form):
    datasource = forms.ModelChoiceField(queryset=Datasource.objects.order_by("name"))
    name = forms.CharField(
        max_length=63,
        validators=[slug_validator],
        help_text="Lower-case letters and digits, e.g. crm-prod-1.",
    )
    # Not stored: only written into the config file shown after registering.
    upstream_dsn = forms.CharField(
        required=False,
        max_length=500,
        label="Database it guards (optional)",
        help_text="postgresql://role@host:5432/dbname, without the password: it goes in a "
        "file. Only used to fill in the config file shown next; Warden does not keep it.",
        widget=forms.TextInput(
            attrs={"placeholder": "postgresql://warden_sidecar@db.internal:5432/crm"}
        ),
    )

    def clean_upstream_dsn(self) -> str:
        dsn = self.cleaned_data["upstream_dsn"].strip()
        if not dsn:
            return ""
        try:
            parts = urlsplit(dsn)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValidationError("Not a valid postgresql:// address.") from exc
        if parts.scheme not in {"postgresql", "postgres"} or not parts.hostname:
            raise ValidationError("Give a postgresql://role@host:5432/dbname address.")
        # libpq also takes a password (or a file of them) as a query parameter.
        named = {unquote(pair.partition("=")[0]).lower() for pair in parts.query.split("&")}
        if parts.password is not None or named & PASSWORD_PARAMETERS:
            raise ValidationError(
                "Leave the password out: the sidecar reads it from a file, not from this page."
            )
        return dsn


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


def _token_page(
    request: HttpRequest, sidecar: Sidecar, raw: str, verb: str, upstream_dsn: str = ""
) -> HttpResponse:
    context = {
        "sidecar": sidecar,
        "raw": raw,
        "token": {"prefix": sidecar.token_prefix},
        "verb": verb,
        "setup": sidecar_setup(sidecar=sidecar, upstream_dsn=upstream_dsn),
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
                upstream = form.cleaned_data["upstream_dsn"]
                return _token_page(request, sidecar, raw, "registered", upstream)
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
