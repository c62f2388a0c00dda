"""Pages of the audit trail: the overview, the explorer (with saved searches, event
proofs and exports), the PII access report and evidence packs.

Every page needs role admin, security or auditor; the selectors check again,
so a view can never show more than its selector allows. Saved searches and
evidence packs are personal: another person's answers 404.
"""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    QueryDict,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_http_methods, require_POST

from audit.reporting import evidence, reports, saved_searches
from audit.reporting.exports import export_stream
from audit.reporting.selectors import (
    AUDIT_READERS,
    READS,
    AuditFilters,
    audit_event_get,
    audit_event_proof,
    audit_event_types,
    audit_events_search,
)
from governance import selectors as governance_selectors
from governance.models import Classification, IdentityKind
from governance.permissions import require_role
from sidecar.engine.vocabulary import ACTIONS

reader_required = require_role(*AUDIT_READERS)
PAGE_SIZE = 50
# The report page lists the largest readers; the CSV holds every row.
REPORT_ROWS_SHOWN = 200

_ACTIONS = [(action, action) for action in ACTIONS]
_OUTCOMES = [
    (o, o)
    for o in ("allowed", "held", "blocked", "error", "approved", "denied", "refused", "limited")
]
_CHANNELS = [("mcp", "MCP (AI agents)")]
_DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]


def _any(choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("", "Any"), *choices]


class ExplorerForm(forms.Form):
    """The explorer's filters (GET). Times are UTC."""

    identity = forms.CharField(required=False, max_length=200, label="Identity")
    identity_kind = forms.ChoiceField(
        required=False, choices=_any(list(IdentityKind.choices)), label="Identity kind"
    )
    datasource = forms.TypedChoiceField(
        required=False, coerce=int, empty_value=None, label="Datasource"
    )
    environment = forms.ChoiceField(required=False, label="Environment")
    # Choices: every event type (audit_event_types), set per request.
    type = forms.ChoiceField(required=False, label="Event")
    channel = forms.ChoiceField(required=False, choices=_any(_CHANNELS), label="Through")
    action = forms.ChoiceField(required=False, choices=_any(_ACTIONS), label="Action")
    outcome = forms.ChoiceField(required=False, choices=_any(_OUTCOMES), label="Outcome")
    # Free text with suggestions: the trail may name labels deleted since (a report's
    # drill-down must still work for them).
    classification = forms.CharField(
        required=False,
        max_length=100,
        label="Classification",
        widget=forms.TextInput(attrs={"list": "classification-names", "placeholder": "pii.email"}),
    )
    table = forms.CharField(
        required=False,
        max_length=200,
        label="Table",
        widget=forms.TextInput(attrs={"placeholder": "public.customers"}),
    )
    reads = forms.ChoiceField(
        required=False, choices=_any(list(READS.items())), label="Classified data"
    )
    since = forms.DateTimeField(
        required=False,
        input_formats=_DATETIME_FORMATS,
        label="From (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    until = forms.DateTimeField(
        required=False,
        input_formats=_DATETIME_FORMATS,
        label="Until (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    q = forms.CharField(
        required=False,
        max_length=200,
        label="Statement contains",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "e.g. customers"}),
    )

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sources = governance_selectors.datasource_list(user=user)
        self.fields["datasource"].choices = _any([(str(d.pk), d.name) for d in sources])
        envs = governance_selectors.environment_list(user=user)
        self.fields["environment"].choices = _any([(e.name, e.name) for e in envs])
        self.fields["type"].choices = [("", "Any"), *audit_event_types(user=user)]
        self.classification_names = list(
            Classification.objects.order_by("name").values_list("name", flat=True)
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and until <= since:
            raise ValidationError("'Until' must be after 'From'.")
        return data

    def filters(self) -> AuditFilters:
        d = self.cleaned_data
        return AuditFilters(
            identity=d.get("identity") or "",
            identity_kind=d.get("identity_kind") or "",
            datasource_id=d.get("datasource"),
            environment=d.get("environment") or "",
            action=d.get("action") or "",
            outcome=d.get("outcome") or "",
            type=d.get("type") or "",
            classification=d.get("classification") or "",
            table=d.get("table") or "",
            reads=d.get("reads") or "",
            since=d.get("since"),
            until=d.get("until"),
            q=d.get("q") or "",
            channel=d.get("channel") or "",
        )


def filters_query(filters: AuditFilters) -> str:
    """The explorer query string that reproduces ``filters`` (drill-down links, exports)."""
    params: dict[str, str] = {}
    for name, value in (
        ("identity", filters.identity),
        ("identity_kind", filters.identity_kind),
        ("datasource", filters.datasource_id),
        ("environment", filters.environment),
        ("type", filters.type),
        ("action", filters.action),
        ("outcome", filters.outcome),
        ("classification", filters.classification),
        ("table", filters.table),
        ("reads", filters.reads),
        ("q", filters.q),
        ("channel", filters.channel),
    ):
        if value not in (None, ""):
            params[name] = str(value)
    for name, moment in (("since", filters.since), ("until", filters.until)):
        if moment is not None:
            params[name] = moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return urlencode(params)


def _named(events: list[Any]) -> list[Any]:
    """Events with ``datasource_name`` set, for display (one query for all of them)."""
    names = reports.datasource_names()
    for event in events:
        event.datasource_name = names.get(event.datasource_id, "")
    return events


# What the explorer shows when opened without filters: the statements, which is
# what people come for (every other type is one choice away in the form).
DEFAULT_FILTERS = AuditFilters(type="statement")


def _explorer_form(request: HttpRequest) -> ExplorerForm:
    data = request.GET.copy()
    for key in ("after", "saved"):
        data.pop(key, None)
    return ExplorerForm(data or None, user=request.user, initial={"type": DEFAULT_FILTERS.type})


def _explorer_filters(form: ExplorerForm) -> AuditFilters:
    return form.filters() if form.is_bound else DEFAULT_FILTERS


# --- explorer --------------------------------------------------------------------------


@reader_required
@require_http_methods(["GET"])
def explorer(request: HttpRequest) -> HttpResponse:
    form = _explorer_form(request)
    if form.is_bound and not form.is_valid():
        context = {"form": form, "events": [], "saved": _saved(request)}
        return render(request, "audit/explorer.html", context, status=400)
    filters = _explorer_filters(form)
    after = request.GET.get("after") or None
    try:
        events, next_cursor = audit_events_search(
            user=request.user, filters=filters, after=after, limit=PAGE_SIZE
        )
    except ValueError:
        return HttpResponseBadRequest("That page link is not valid; start the search again.")
    query = filters_query(filters)
    context = {
        "form": form,
        "events": _named(events),
        "next_url": f"?{query}&after={next_cursor}" if next_cursor else "",
        "first_url": f"?{query}" if after else "",
        "query": query,
        "saved": _saved(request),
    }
    return render(request, "audit/explorer.html", context)


def _saved(request: HttpRequest) -> Any:
    return saved_searches.saved_search_list(user=request.user)


@reader_required
@require_http_methods(["GET"])
def event_detail(request: HttpRequest, pk: int) -> HttpResponse:
    event = audit_event_get(user=request.user, pk=pk, at_micros=request.GET.get("at"))
    context = {"event": _named([event])[0], "proof": audit_event_proof(event=event)}
    return render(request, "audit/event_detail.html", context)


@reader_required
@require_http_methods(["GET"])
def export(request: HttpRequest, fmt: str) -> HttpResponse:
    if fmt not in ("csv", "jsonl"):
        raise Http404("Exports come as .csv or .jsonl.")
    form = _explorer_form(request)
    if form.is_bound and not form.is_valid():
        return HttpResponseBadRequest("Those filters are not valid: " + form.errors.as_text())
    filters = _explorer_filters(form)
    lines = export_stream(user=request.user, filters=filters, fmt=fmt)
    content_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    response = StreamingHttpResponse(lines, content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="warden-audit-{stamp}.{fmt}"'
    response["Cache-Control"] = "no-store"
    return response


# --- saved searches ---------------------------------------------------------------------


class SavedSearchForm(forms.Form):
    name = forms.CharField(max_length=100, label="Save this search as")
    query = forms.CharField(required=False, max_length=2000, widget=forms.HiddenInput)


@reader_required
@require_POST
def saved_search_create(request: HttpRequest) -> HttpResponse:
    form = SavedSearchForm(request.POST)
    query = request.POST.get("query", "")
    if form.is_valid():
        # Only what the explorer's own form accepts is kept, never a cursor.
        check = ExplorerForm(QueryDict(query), user=request.user)
        if not check.is_valid():
            messages.error(request, "That search has invalid filters; it was not saved.")
            return redirect(reverse("audit:explorer") + f"?{query}")
        try:
            search = saved_searches.saved_search_create(
                actor=request.user,
                name=form.cleaned_data["name"],
                query=filters_query(check.filters()),
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"Saved search “{search.name}”.")
            return redirect(reverse("audit:explorer") + f"?{search.query}")
    else:
        messages.error(request, "Give the search a name (at most 100 characters).")
    return redirect(reverse("audit:explorer") + f"?{query}")


@reader_required
@require_http_methods(["GET"])
def saved_search_open(request: HttpRequest, pk: int) -> HttpResponse:
    search = saved_searches.saved_search_get(user=request.user, pk=pk)
    return redirect(reverse("audit:explorer") + f"?{search.query}")


@reader_required
@require_POST
def saved_search_delete(request: HttpRequest, pk: int) -> HttpResponse:
    search = saved_searches.saved_search_get(user=request.user, pk=pk)
    saved_searches.saved_search_delete(actor=request.user, search=search)
    messages.success(request, f"Deleted saved search “{search.name}”.")
    return redirect("audit:explorer")


# --- PII report --------------------------------------------------------------------------


@reader_required
@require_http_methods(["GET"])
def pii_report(request: HttpRequest) -> HttpResponse:
    name = request.GET.get("period", reports.DEFAULT_PERIOD)
    if name not in reports.PERIODS:
        name = reports.DEFAULT_PERIOD
    period = reports.period_named(name)
    if request.GET.get("format") == "csv":
        response = HttpResponse(
            evidence.access_report_csv(user=request.user, period=period),
            content_type="text/csv; charset=utf-8",
        )
        filename = f"warden-pii-access-{period.start}-{period.end}.csv"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Cache-Control"] = "no-store"
        return response
    rows = reports.pii_access_report(user=request.user, period=period)
    shown = rows[:REPORT_ROWS_SHOWN]
    context = {
        "period": period,
        "period_name": name,
        "periods": [(p, reports.period_named(p).label) for p in reports.PERIODS],
        "rows": _report_links(shown, period),
        "row_count": len(rows),
        "truncated": len(rows) > len(shown),
        "raw": sum(row.raw for row in rows),
        "masked": sum(row.masked for row in rows),
        "total": sum(row.statements for row in rows),
        "classifications": reports.sensitive_classifications(),
    }
    return render(request, "audit/pii_report.html", context)


def _report_links(rows: list[reports.AccessRow], period: reports.Period) -> list[dict[str, Any]]:
    """The report's rows with the explorer links of their counts.

    Each link is the row's ``drilldown`` filters; the part they share (the period,
    allowed statements) is encoded once, which keeps a page of 200 rows cheap."""
    base = filters_query(
        AuditFilters(type="statement", action="allow", since=period.since, until=period.until)
    )
    explorer = f"{reverse('audit:explorer')}?{base}&"
    out = []
    for row in rows:
        who = urlencode({"identity": row.identity_name})
        out.append(
            {
                "row": row,
                "url": f"{explorer}{who}&reads=classified",
                "raw_url": f"{explorer}{who}&reads=raw",
                "masked_url": f"{explorer}{who}&reads=masked",
                "classifications": [
                    (c, f"{explorer}{who}&{urlencode({'classification': c.classification})}")
                    for c in row.classifications
                ],
            }
        )
    return out


# --- overview ----------------------------------------------------------------------------

_ENV_COLOURS = {"production": "#c0392b", "staging": "#d68910", "sandbox": "#1e8449"}


def activity_svg(days: list[dict[str, Any]]) -> SafeString:
    """Statements per day as stacked bars, one colour per environment; inline SVG."""
    width, height, pad = 640, 180, 24
    peak = max((d["total"] for d in days), default=0) or 1
    slot = (width - pad) / max(len(days), 1)
    bar = max(slot * 0.7, 2)
    envs = sorted({env for d in days for env in d["by_env"]})
    rects = []
    for i, d in enumerate(days):
        x = pad + i * slot + (slot - bar) / 2
        y = height - pad
        for env in envs:
            n = d["by_env"].get(env, 0)
            if not n:
                continue
            h = (height - 2 * pad) * n / peak
            y -= h
            colour = _ENV_COLOURS.get(env, "#5d6d7e")
            rects.append((f"{x:.1f}", f"{y:.1f}", f"{bar:.1f}", f"{h:.1f}", colour,
                          f"{d['day']:%Y-%m-%d} {env}: {n}"))  # fmt: skip
    labels = [
        (f"{pad + i * slot + slot / 2:.1f}", f"{height - 6}", f"{d['day']:%m-%d}")
        for i, d in enumerate(days)
        if i % 2 == 0 or len(days) <= 8
    ]
    total = sum(d["total"] for d in days)
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}" '
        'xmlns="http://www.w3.org/2000/svg">'
        '<text x="2" y="14" font-size="11" fill="#5d6d7e">{}</text>{}{}</svg>{}',
        width,
        height,
        f"Statements per day over the last {len(days)} days: {total} in all",
        f"peak {peak}",
        format_html_join(
            "",
            '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
            rects,
        ),
        format_html_join(
            "",
            '<text x="{}" y="{}" font-size="10" text-anchor="middle" fill="#5d6d7e">{}</text>',
            labels,
        ),
        # The legend's colours are classes (static/css/warden.css): the CSP forbids inline styles.
        format_html_join(
            " ",
            '<span class="legend"><span class="swatch swatch-{}"></span>{}</span>',
            [(env if env in _ENV_COLOURS else "other", env) for env in envs],
        ),
    )


@reader_required
@require_http_methods(["GET"])
def overview(request: HttpRequest) -> HttpResponse:
    user = request.user
    days = reports.activity_by_day(user=user, days=14)
    refused = reports.refused_recent(user=user, days=7)
    _named(refused["latest"])
    explorer_url = reverse("audit:explorer")

    def explore(days_back: int, **filters: Any) -> str:
        """The explorer over the same UTC days a card counts (today included)."""
        since = reports.days_since(days_back)
        return f"{explorer_url}?{filters_query(AuditFilters(since=since, **filters))}"

    context = {
        "statements_14d_url": explore(14, type="statement"),
        "blocked_7d_url": explore(7, type="statement", outcome="blocked"),
        "held_7d_url": explore(7, type="statement", outcome="held"),
        "top_readers_since": filters_query(AuditFilters(since=reports.days_since(30))),
        "chart": activity_svg(days),
        "statements_14d": sum(d["total"] for d in days),
        "top_readers": reports.top_classified_readers(user=user),
        "refused": refused,
        "pending_approvals": reports.pending_approvals(user=user),
        "sidecars": reports.sidecar_health(user=user),
        "last_verification": reports.last_verification(user=user),
    }
    return render(request, "audit/overview.html", context)


# --- evidence packs ------------------------------------------------------------------------


class EvidenceRequestForm(forms.Form):
    period_start = forms.DateField(
        label="From (UTC day)", widget=forms.DateInput(attrs={"type": "date"})
    )
    period_end = forms.DateField(
        label="Until (UTC day, exclusive)", widget=forms.DateInput(attrs={"type": "date"})
    )


@reader_required
@require_http_methods(["GET", "POST"])
def evidence_list(request: HttpRequest) -> HttpResponse:
    last_q = reports.period_named("last_quarter")
    form = EvidenceRequestForm(
        request.POST or None, initial={"period_start": last_q.start, "period_end": last_q.end}
    )
    if request.method == "POST" and form.is_valid():
        try:
            pack = evidence.evidence_pack_request(
                actor=request.user,
                period_start=form.cleaned_data["period_start"],
                period_end=form.cleaned_data["period_end"],
            )
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            messages.success(request, "Evidence pack requested; it is being built.")
            return redirect(reverse("audit:evidence_list") + f"#pack-{pack.pk}")
    context = {"form": form, "packs": evidence.evidence_pack_list(user=request.user)[:20]}
    status = 400 if form.errors else 200
    return render(request, "audit/evidence_list.html", context, status=status)


@reader_required
@require_http_methods(["GET"])
def evidence_status(request: HttpRequest, pk: int) -> HttpResponse:
    pack = evidence.evidence_pack_get(user=request.user, pk=pk)
    return render(request, "audit/_evidence_row.html", {"pack": pack})


@reader_required
@require_http_methods(["GET"])
def evidence_download(request: HttpRequest, pk: int) -> HttpResponse:
    pack = evidence.evidence_pack_get(user=request.user, pk=pk)
    if pack.status != "done":
        return HttpResponse("This evidence pack is not ready.", status=409)
    body = evidence.evidence_pack_content(pack=pack)
    response = HttpResponse(body, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{pack.filename}"'
    response["Cache-Control"] = "no-store"
    response["X-Content-SHA256"] = pack.sha256
    return response
