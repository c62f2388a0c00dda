"""Ready-made reports over the audit trail: who accessed sensitive data, and the overview.

The PII access report answers "who accessed PII last quarter?" from the
``audit_access_daily`` rollup (one row per day, identity, datasource and
classification, maintained at ingestion), so it costs the same for a trail of
a thousand events or a billion. "PII" means what a user would expect: every
classification named ``pii.*`` and every classification at level confidential
or restricted. Each row links to the matching events in the explorer.

The overview's chart and its blocked/held counts read ``audit_activity_daily``
(statements per day, environment and outcome), likewise kept at ingestion.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, Sum
from django.utils import timezone

from audit.models import AccessDaily, ActivityDaily, AuditEvent, AuditVerification
from audit.reporting.selectors import AuditFilters, require_audit_reader
from governance.models import Classification, Datasource, Level, Sidecar

SENSITIVE_LEVELS = (Level.CONFIDENTIAL, Level.RESTRICTED)


@dataclass(frozen=True)
class Period:
    """A range of whole UTC days: ``start`` inclusive, ``end`` exclusive."""

    start: datetime.date
    end: datetime.date
    label: str

    @property
    def since(self) -> datetime.datetime:
        return datetime.datetime.combine(self.start, datetime.time(), tzinfo=datetime.UTC)

    @property
    def until(self) -> datetime.datetime:
        return datetime.datetime.combine(self.end, datetime.time(), tzinfo=datetime.UTC)


def _quarter_start(day: datetime.date) -> datetime.date:
    return datetime.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


def period_named(name: str, *, today: datetime.date | None = None) -> Period:
    """``last_quarter`` (default), ``this_quarter``, ``last_30``, ``last_90`` days."""
    today = today or timezone.now().date()
    this_q = _quarter_start(today)
    if name == "this_quarter":
        return Period(this_q, today + datetime.timedelta(days=1), "This quarter")
    if name == "last_30":
        return Period(today - datetime.timedelta(days=29), today + datetime.timedelta(days=1),
                      "Last 30 days")  # fmt: skip
    if name == "last_90":
        return Period(today - datetime.timedelta(days=89), today + datetime.timedelta(days=1),
                      "Last 90 days")  # fmt: skip
    last_q = _quarter_start(this_q - datetime.timedelta(days=1))
    quarter = (last_q.month - 1) // 3 + 1
    return Period(last_q, this_q, f"Last quarter (Q{quarter} {last_q.year})")


PERIODS = ("last_quarter", "this_quarter", "last_90", "last_30")


def sensitive_classifications() -> list[str]:
    """Names the PII report counts: ``pii.*`` and every confidential/restricted label."""
    return list(
        Classification.objects.filter(
            Q(name__startswith="pii.") | Q(level__in=SENSITIVE_LEVELS)
        ).values_list("name", flat=True)
    )


def _sensitive_q() -> Q:
    return Q(classification__startswith="pii.") | Q(classification__in=sensitive_classifications())


@dataclass(frozen=True)
class AccessRow:
    identity_name: str
    identity_kind: str
    classification: str
    events: int
    drilldown: AuditFilters


def pii_access_report(
    *, user: Any, period: Period, datasource_id: int | None = None
) -> list[AccessRow]:
    """Identity by classification: the number of allowed statements that read it, most first."""
    require_audit_reader(user)
    qs = AccessDaily.objects.filter(_sensitive_q(), day__gte=period.start, day__lt=period.end)
    if datasource_id is not None:
        qs = qs.filter(datasource_id=datasource_id)
    rows = (
        qs.values("identity_name", "identity_kind", "classification")
        .annotate(total=Sum("events"))
        .order_by("-total", "identity_name", "classification")
    )
    return [
        AccessRow(
            identity_name=r["identity_name"],
            identity_kind=r["identity_kind"],
            classification=r["classification"],
            events=int(r["total"] or 0),
            drilldown=AuditFilters(
                identity=r["identity_name"],
                classification=r["classification"],
                datasource_id=datasource_id,
                type="statement",
                action="allow",
                since=period.since,
                until=period.until,
            ),
        )
        for r in rows
    ]


# --- overview ---------------------------------------------------------------------------


def activity_by_day(*, user: Any, days: int = 14) -> list[dict[str, Any]]:
    """Statements per UTC day and environment over the last ``days`` days, oldest first.

    Read from the rollup. Every day appears, also the quiet ones, so the chart's
    axis is honest.
    """
    require_audit_reader(user)
    today = timezone.now().date()
    start = today - datetime.timedelta(days=days - 1)
    counts = (
        ActivityDaily.objects.filter(day__gte=start)
        .values("day", "environment")
        .annotate(n=Sum("events"))
    )
    by_day: dict[datetime.date, dict[str, int]] = {
        start + datetime.timedelta(days=i): {} for i in range(days)
    }
    for row in counts:
        if row["day"] in by_day:
            by_day[row["day"]][row["environment"] or "unknown"] = row["n"]
    return [{"day": d, "by_env": envs, "total": sum(envs.values())} for d, envs in by_day.items()]


def top_classified_readers(*, user: Any, days: int = 30, limit: int = 8) -> list[dict[str, Any]]:
    """Identities by reads of classified data over the last ``days`` days (from the rollup)."""
    require_audit_reader(user)
    start = timezone.now().date() - datetime.timedelta(days=days - 1)
    rows = (
        AccessDaily.objects.filter(day__gte=start)
        .values("identity_name", "identity_kind")
        .annotate(total=Sum("events"))
        .order_by("-total", "identity_name")[:limit]
    )
    return [dict(r) for r in rows]


REFUSED = ("blocked", "held")


def refused_recent(*, user: Any, days: int = 7, limit: int = 10) -> dict[str, Any]:
    """Blocked and held statements of the last ``days`` UTC days, today included.

    The counts come from the rollup; the latest few from the events."""
    require_audit_reader(user)
    start = timezone.now().date() - datetime.timedelta(days=days - 1)
    since = datetime.datetime.combine(start, datetime.time(), tzinfo=datetime.UTC)
    counts = {
        r["outcome"]: r["n"]
        for r in ActivityDaily.objects.filter(day__gte=start, outcome__in=REFUSED)
        .values("outcome")
        .annotate(n=Sum("events"))
    }
    # Matches the partial index audit_event_refused_idx.
    latest = list(
        AuditEvent.objects.filter(
            type="statement", outcome__in=REFUSED, occurred_at__gte=since
        ).order_by("-occurred_at", "-id")[:limit]
    )
    return {"blocked": counts.get("blocked", 0), "held": counts.get("held", 0), "latest": latest}


def sidecar_health(*, user: Any) -> list[dict[str, Any]]:
    """Every sidecar not revoked, with whether it has gone silent."""
    require_audit_reader(user)
    now = timezone.now()
    sidecars = Sidecar.objects.filter(revoked_at__isnull=True).select_related(
        "datasource__environment"
    )
    return [{"sidecar": s, "stale": s.is_stale(now)} for s in sidecars]


def datasource_names() -> dict[int, str]:
    return dict(Datasource.objects.values_list("pk", "name"))


def last_verification(*, user: Any) -> AuditVerification | None:
    """The latest finished chain verification, or None when none has run yet."""
    require_audit_reader(user)
    finished = AuditVerification.objects.filter(finished_at__isnull=False)
    return finished.order_by("-started_at").first()


def pending_approvals(*, user: Any) -> int:
    """Approval requests waiting for a decision, on every datasource.

    Not ``approvals_pending_count``: that is a reviewer's inbox, empty for the
    security and auditor roles this overview is for.
    """
    from approvals.models import ApprovalRequest, ApprovalState

    require_audit_reader(user)
    return ApprovalRequest.objects.filter(state=ApprovalState.PENDING).count()
