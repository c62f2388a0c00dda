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

from django.db import connection
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
    """``last_30`` days (the report's default), ``last_90`` days, ``this_quarter``,
    ``last_quarter``."""
    today = today or timezone.now().date()
    this_q = _quarter_start(today)
    tomorrow = today + datetime.timedelta(days=1)
    if name == "this_quarter":
        return Period(this_q, tomorrow, "This quarter")
    if name == "last_90":
        return Period(today - datetime.timedelta(days=89), tomorrow, "Last 90 days")
    if name == "last_quarter":
        last_q = _quarter_start(this_q - datetime.timedelta(days=1))
        quarter = (last_q.month - 1) // 3 + 1
        return Period(last_q, this_q, f"Last quarter (Q{quarter} {last_q.year})")
    return Period(today - datetime.timedelta(days=29), tomorrow, "Last 30 days")


DEFAULT_PERIOD = "last_30"
PERIODS = ("last_30", "last_90", "this_quarter", "last_quarter")


def sensitive_classifications() -> list[str]:
    """Names the PII report counts: ``pii.*`` and every confidential/restricted label."""
    return list(
        Classification.objects.filter(
            Q(name__startswith="pii.") | Q(level__in=SENSITIVE_LEVELS)
        ).values_list("name", flat=True)
    )


def _is_sensitive(name: str, named: frozenset[str]) -> bool:
    # ``pii.*`` also when the label was deleted since: the trail still names it.
    return name.startswith("pii.") or name in named


@dataclass(frozen=True)
class ClassificationReads:
    """The statements of one identity that read one classification, raw and masked."""

    classification: str
    raw: int
    masked: int
    drilldown: AuditFilters

    @property
    def statements(self) -> int:
        return self.raw + self.masked


@dataclass(frozen=True)
class AccessRow:
    """One identity's allowed statements that read sensitive data in the period.

    ``raw``: the sidecar masked nothing the statement read, so values came back
    as stored (an identity exempt from masking, or data no rule masks);
    ``masked``: it masked what it read (at least one column). Each statement
    counts once, however many classifications it read; ``classifications`` breaks
    them down (a statement reading two counts under both)."""

    identity_name: str
    identity_kind: str
    raw: int
    masked: int
    classifications: list[ClassificationReads]
    drilldown: AuditFilters

    @property
    def statements(self) -> int:
        return self.raw + self.masked


# The period's days through the rollup's primary key (day first); a set counts when
# it holds a sensitive label or any ``pii.*`` one (also a label deleted since): the
# labels joined behind a separator no name holds, so one LIKE finds a ``pii.`` start.
_ACCESS_SQL = """
SELECT identity_name, min(identity_kind), classifications, masked, sum(events)
FROM audit_access_daily
WHERE day >= %s AND day < %s
  AND (classifications && %s::text[]
       OR chr(31) || array_to_string(classifications, chr(31)) LIKE '%%' || chr(31) || 'pii.%%')"""
_ACCESS_GROUP = " GROUP BY identity_name, classifications, masked"


def pii_access_report(
    *, user: Any, period: Period, datasource_id: int | None = None
) -> list[AccessRow]:
    """Identities by their allowed statements that read sensitive data, raw reads
    first, then most statements. Read from the ``audit_access_daily`` rollup: the
    period's days through its primary key, a few rows per identity and day."""
    require_audit_reader(user)
    named = frozenset(sensitive_classifications())
    sql, params = _ACCESS_SQL, [period.start, period.end, sorted(named)]
    if datasource_id is not None:
        sql, params = sql + " AND datasource_id = %s", [*params, datasource_id]
    with connection.cursor() as cursor:
        cursor.execute(sql + _ACCESS_GROUP, params)
        grouped = cursor.fetchall()
    people: dict[str, dict[str, Any]] = {}
    for name, kind, labels, masked, total in grouped:
        person = people.setdefault(name, {"kind": kind, "raw": 0, "masked": 0, "labels": {}})
        n = int(total or 0)
        side = "masked" if masked else "raw"
        person[side] += n
        for label in labels:
            if _is_sensitive(label, named):
                counts = person["labels"].setdefault(label, {"raw": 0, "masked": 0})
                counts[side] += n

    def narrowed(**more: Any) -> AuditFilters:
        return AuditFilters(
            datasource_id=datasource_id,
            type="statement",
            action="allow",
            since=period.since,
            until=period.until,
            **more,
        )

    rows = [
        AccessRow(
            identity_name=name,
            identity_kind=p["kind"],
            raw=p["raw"],
            masked=p["masked"],
            classifications=[
                ClassificationReads(
                    classification=label,
                    raw=c["raw"],
                    masked=c["masked"],
                    drilldown=narrowed(identity=name, classification=label),
                )
                for label, c in sorted(
                    p["labels"].items(), key=lambda item: (-sum(item[1].values()), item[0])
                )
            ],
            drilldown=narrowed(identity=name, reads="classified"),
        )
        for name, p in people.items()
    ]
    rows.sort(key=lambda r: (-r.raw, -r.statements, r.identity_name))
    return rows


# --- overview ---------------------------------------------------------------------------


def days_since(days: int) -> datetime.datetime:
    """Midnight UTC at the start of the last ``days`` UTC days, today included: where
    the overview's "last N days" counts begin (and the explorer links they open)."""
    start = timezone.now().date() - datetime.timedelta(days=days - 1)
    return datetime.datetime.combine(start, datetime.time(), tzinfo=datetime.UTC)


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
    since = days_since(days)
    start = since.date()
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
