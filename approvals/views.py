"""HTML views of approvals: the reviewer inbox, a request's page, "My requests".

Thin functions over ``approvals.selectors`` and ``approvals.services`` (the same
services the sidecar API and the REST API call). Reviewers (admin, reviewer)
approve or deny inline with htmx: the request's card is swapped in place and the
nav's pending badge is swapped out of band. Without JavaScript the same forms
POST and redirect back (POST-redirect-GET). Requesters, whatever their role,
see and cancel only their own requests: a held statement's error message
sends them to the request's page, so signing in is enough to follow it. A
grant is revoked from the request's page by its reviewers, an admin or the
requester; admin and security edit a datasource's review settings.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling

from approvals import live, pages, selectors, services
from approvals.forms import ApproveForm, DenyForm, InboxFilters, ReviewSettingsForm
from approvals.models import ApprovalRequest
from governance.models import Datasource
from governance.permissions import Role, require_role

PAGE_SIZE = 20
RECENT_ACTIVITY = 5

reviewer_required = require_role(Role.ADMIN, Role.REVIEWER)
policy_editor_required = require_role(Role.ADMIN, Role.SECURITY)


def _card(
    request: HttpRequest,
    approval: ApprovalRequest,
    *,
    error: str = "",
    approve_form: ApproveForm | None = None,
    deny_form: DenyForm | None = None,
    flash: bool = False,
) -> dict[str, Any]:
    """Everything ``approvals/_request_card.html`` shows for one request."""
    return {
        "r": approval,
        "facts": pages.approval_facts(approval=approval, user=request.user),
        "recent": pages.other_requests(user=request.user, approval=approval, limit=RECENT_ACTIVITY),
        "error": error,
        "approve_form": approve_form or ApproveForm(auto_id=f"id_{approval.pk}_%s"),
        "deny_form": deny_form or DenyForm(auto_id=f"id_{approval.pk}_%s"),
        "flash": flash,
        "next": _next_url(request, reverse("approvals:inbox")),
    }


def _next_url(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, {request.get_host()}, request.is_secure()
    ):
        return target
    return fallback


# --- reviewer pages -------------------------------------------------------------------


@reviewer_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    # Read before the list: a request that commits meanwhile makes the first poll draw.
    version, since = live.approvals_version(), timezone.now()
    filters = InboxFilters(request.GET or None, user=request.user)
    requests = selectors.approvals_inbox(
        user=request.user, **filters.selector_kwargs()
    ).prefetch_related("decisions__reviewer")
    page = Paginator(requests, PAGE_SIZE).get_page(request.GET.get("page"))
    cards = [_card(request, approval) for approval in page.object_list]
    context: dict[str, Any] = {
        "filters": filters,
        "page": page,
        "cards": cards,
        "live_query": live.poll_query(version),
    }
    if page.number == 1:
        # The first page takes new requests as they come (the badge's poll brings them).
        context["cursor"] = live.inbox_cursor(
            shown=list(page.object_list),
            since=since,
            params=request.GET,
            next=request.get_full_path(),
        )
    return render(request, "approvals/inbox.html", context)


@require_GET
def pending_badge(request: HttpRequest) -> HttpResponse:
    """The nav badge alone, polled by htmx every second (``approvals.live``).

    A poll that would draw the same badge answers 204 (htmx swaps nothing).
    From the inbox's first page the poll carries its cursor, and the answer
    brings the new requests' cards too, out of band, above the others.

    A poll from a page whose session has ended sends the whole page to sign-in
    (not the sign-in form into the badge); a viewer who no longer reviews gets
    403, and htmx polling is told to stop.
    """
    if not request.user.is_authenticated:
        return _to_sign_in(request, reverse("approvals:inbox"))
    if not pages.may_review(request.user):
        if request.htmx:
            return HttpResponseStopPolling()
        raise PermissionDenied("Your role does not allow this.")
    version = live.approvals_version()
    if request.htmx and live.unchanged(request.GET, version):
        return HttpResponse(status=204)
    context: dict[str, Any] = {"pending": _pending(request), "live_query": live.poll_query(version)}
    cursor = live.cursor_from(request.GET) if request.htmx else None
    if cursor is not None:
        filters = InboxFilters(request.GET, user=request.user)
        new: list[ApprovalRequest] = []
        if filters.is_valid():  # else the page's filters no longer apply: add nothing
            new, cursor = live.inbox_new_requests(
                user=request.user, cursor=cursor, selector_kwargs=filters.selector_kwargs()
            )
        context["new_cards"] = [_card(request, approval) for approval in new]
        context["cursor"] = cursor
    return render(request, "approvals/_live_badge.html", context)


def _to_sign_in(request: HttpRequest, fallback: str) -> HttpResponse:
    """Signed out: a poll sends the whole page to sign-in, not the form into the page."""
    if request.htmx:
        back = request.htmx.current_url_abs_path or fallback
        return HttpResponseClientRedirect(redirect_to_login(back).url)
    return redirect_to_login(request.get_full_path())


def _pending(request: HttpRequest) -> int:
    return pages.pending_count(user=request.user)


def _decided(
    request: HttpRequest,
    approval_id: UUID,
    *,
    error: str,
    status: int,
    done: str,
    approve_form: ApproveForm | None = None,
    deny_form: DenyForm | None = None,
) -> HttpResponse:
    """The answer to approve/deny: the card (htmx) or a redirect back (plain POST)."""
    approval = selectors.approval_for_reviewer(user=request.user, request_id=approval_id)
    if request.htmx:
        context = _card(
            request,
            approval,
            error=error,
            approve_form=approve_form,
            deny_form=deny_form,
            flash=not error,
        )
        context["live_query"] = live.poll_query(live.approvals_version())
        context["pending"] = _pending(request)
        context["oob_badge"] = True
        return render(request, "approvals/_request_card.html", context, status=status)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, done)
    fallback = reverse("approvals:detail", args=[approval.pk])
    return redirect(_next_url(request, fallback))


def _refusal(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc) or "You may not decide this request."


@reviewer_required
@require_POST
def approve(request: HttpRequest, pk: UUID) -> HttpResponse:
    approval = selectors.approval_for_reviewer(user=request.user, request_id=pk)
    form = ApproveForm(request.POST, auto_id=f"id_{approval.pk}_%s")
    if not form.is_valid():
        error = "Check the grant: " + " ".join(
            f"{form.fields[name].label}: {' '.join(errs)}" for name, errs in form.errors.items()
        )
        return _decided(request, pk, error=error, status=400, done="", approve_form=form)
    try:
        decided = services.approval_decide(
            request_id=approval.pk, user=request.user, approve=True, **form.grant()
        )
    except PermissionDenied as exc:
        return _decided(request, pk, error=_refusal(exc), status=403, done="")
    except ValidationError as exc:
        return _decided(request, pk, error=_refusal(exc), status=400, done="", approve_form=form)
    if decided.state == "approved":
        done = f"Approved {decided.identity.name}'s request on {decided.datasource.name}."
    else:
        done = "Your approval is recorded; the request needs another reviewer's approval too."
    return _decided(request, pk, error="", status=200, done=done)


@reviewer_required
@require_POST
def deny(request: HttpRequest, pk: UUID) -> HttpResponse:
    approval = selectors.approval_for_reviewer(user=request.user, request_id=pk)
    form = DenyForm(request.POST, auto_id=f"id_{approval.pk}_%s")
    if not form.is_valid():
        error = " ".join(form.errors.get("reason", ["Give a reason."]))
        return _decided(request, pk, error=error, status=400, done="", deny_form=form)
    try:
        services.approval_decide(
            request_id=approval.pk,
            user=request.user,
            approve=False,
            reason=form.cleaned_data["reason"],
        )
    except PermissionDenied as exc:
        return _decided(request, pk, error=_refusal(exc), status=403, done="")
    except ValidationError as exc:
        return _decided(request, pk, error=_refusal(exc), status=400, done="", deny_form=form)
    done = f"Denied {approval.identity.name}'s request on {approval.datasource.name}."
    return _decided(request, pk, error="", status=200, done=done)


# --- a request's page (reviewers and the requester) --------------------------------------


def _visible(request: HttpRequest, pk: UUID) -> tuple[ApprovalRequest, bool]:
    """The request and whether the viewer sees it as a reviewer.

    A reviewer of the datasource sees it; so does its requester, whatever their
    role. Anyone else: 404 for a reviewer (another team's request, as if it did
    not exist), 403 for a role that reviews nothing (auditor, none).
    """
    if pages.may_review(request.user):
        try:
            return selectors.approval_for_reviewer(user=request.user, request_id=pk), True
        except Http404:
            pass
        return selectors.approval_for_requester(user=request.user, request_id=pk), False
    try:
        return selectors.approval_for_requester(user=request.user, request_id=pk), False
    except Http404:
        raise PermissionDenied("Only reviewers and the requester see this request.") from None


@login_required
@require_GET
def detail(request: HttpRequest, pk: UUID) -> HttpResponse:
    approval, as_reviewer = _visible(request, pk)
    context = _card(request, approval)
    context.update(
        {
            "as_reviewer": as_reviewer,
            "timeline": selectors.approval_timeline(request=approval),
            **_grant_context(request, approval),
        }
    )
    return render(request, "approvals/detail.html", context)


@login_required
@require_POST
def revoke(request: HttpRequest, pk: UUID) -> HttpResponse:
    """End the request's grant now: its reviewers, an admin, or the requester."""
    approval, _ = _visible(request, pk)
    error, status = "", 200
    try:
        services.grant_revoke(request_id=approval.pk, user=request.user)
    except PermissionDenied as exc:
        error, status = str(exc) or "You may not revoke this grant.", 403
    except ValidationError as exc:
        error, status = " ".join(exc.messages), 400
    if request.htmx:
        approval, _ = _visible(request, pk)
        context = _grant_context(request, approval)
        context.update({"grant_error": error, "flash": not error})
        return render(request, "approvals/_grant.html", context, status=status)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, "Grant revoked: the statement is held for review again.")
    return redirect(_next_url(request, reverse("approvals:detail", args=[approval.pk])))


def _grant_context(request: HttpRequest, approval: ApprovalRequest) -> dict[str, Any]:
    grant = getattr(approval, "grant", None)
    return {
        "r": approval,
        "grant": grant,
        "may_revoke": pages.may_revoke(approval=approval, grant=grant, user=request.user),
    }


# --- review settings (admin and security) -----------------------------------------------


@policy_editor_required
@require_http_methods(["GET", "POST"])
def review_settings(request: HttpRequest, datasource_pk: int) -> HttpResponse:
    """A datasource's review routing, timing, hold time, grant binding and retention."""
    datasource = get_object_or_404(Datasource, pk=datasource_pk)
    row = selectors.review_settings_of(datasource=datasource)
    form = ReviewSettingsForm(request.POST or None, instance=row)
    if request.method == "POST":
        if form.is_valid():
            try:
                services.review_settings_set(
                    actor=request.user, datasource=datasource, data=form.cleaned_data
                )
            except ValidationError as exc:
                for name, errors in exc.message_dict.items():
                    form.add_error(name if name in form.fields else None, errors)
            else:
                messages.success(request, f"Review settings of {datasource.name} saved.")
                return redirect("approvals:review_settings", datasource_pk=datasource.pk)
        status = 400
    else:
        status = 200
    context = {"datasource": datasource, "form": form}
    return render(request, "approvals/review_settings.html", context, status=status)


# --- requesters -------------------------------------------------------------------------


@require_GET
def my_requests(request: HttpRequest) -> HttpResponse:
    """The user's requests; the list polls itself every second (``approvals.live``):
    204 while nothing changed, else the list again with its live states."""
    if not request.user.is_authenticated:
        return _to_sign_in(request, reverse("approvals:mine"))
    version = live.approvals_version()
    polled = bool(request.htmx) and "v" in request.GET
    if polled and live.unchanged(request.GET, version):
        return HttpResponse(status=204)
    requests = selectors.approvals_of_requester(user=request.user)
    page = Paginator(requests, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"page": page, "objects": page.object_list, "live_query": live.poll_query(version)}
    template = "approvals/_mine_list.html" if polled else "approvals/mine.html"
    return render(request, template, context)


@login_required
@require_POST
def cancel(request: HttpRequest, pk: UUID) -> HttpResponse:
    approval = selectors.approval_for_requester(user=request.user, request_id=pk)
    error = ""
    try:
        approval = services.approval_cancel(request_id=approval.pk, user=request.user)
    except PermissionDenied as exc:
        error = str(exc) or "Only the requester may cancel this request."
    except ValidationError as exc:
        error = " ".join(exc.messages)
    if request.htmx:
        if error:
            approval.refresh_from_db()
        context = {
            "a": approval,
            "error": error,
            "flash": not error,
            "next": _next_url(request, reverse("approvals:mine")),
        }
        return render(request, "approvals/_mine_row.html", context, status=400 if error else 200)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, "Request cancelled.")
    return redirect(_next_url(request, reverse("approvals:mine")))
