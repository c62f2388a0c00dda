"""Moved to ``audit.reporting.reports``; this path stays for the callers that import it."""

from audit.reporting.reports import (
    PERIODS,
    REFUSED,
    SENSITIVE_LEVELS,
    AccessRow,
    Period,
    activity_by_day,
    datasource_names,
    last_verification,
    pending_approvals,
    period_named,
    pii_access_report,
    refused_recent,
    sensitive_classifications,
    sidecar_health,
    top_classified_readers,
)

__all__ = [
    "PERIODS",
    "REFUSED",
    "SENSITIVE_LEVELS",
    "AccessRow",
    "Period",
    "activity_by_day",
    "datasource_names",
    "last_verification",
    "pending_approvals",
    "period_named",
    "pii_access_report",
    "refused_recent",
    "sensitive_classifications",
    "sidecar_health",
    "top_classified_readers",
]
