"""Celery entry points of the audit app (beat). Thin: they call the sink and the reports."""

from __future__ import annotations

from celery import shared_task

from audit.sink import retention, trail, verify


@shared_task(ignore_result=True)
def audit_partitions_prepare() -> int:
    """Create this month's and the next two months' partitions ahead of need."""
    return trail.audit_partitions_prepare(months_ahead=2)


@shared_task(ignore_result=True)
def audit_chains_anchor() -> int:
    """Anchor the sidecar chains whose last events intake could not anchor."""
    return trail.audit_chains_anchor()


@shared_task(ignore_result=True)
def audit_verify_chains() -> bool:
    """Anchor the sidecar chains' heads, then verify every chain; a failure is logged,
    mailed to admins and kept for the overview."""
    trail.audit_chains_anchor()
    return verify.audit_verify_run().ok


@shared_task(ignore_result=True)
def audit_retention_enforce() -> list[str]:
    """Drop the partitions past their environment's retention (chains anchored first)."""
    return retention.audit_retention_enforce()


# --- the auditor's tools ------------------------------------------------------------------


@shared_task(name="audit.evidence_pack_build", ignore_result=True)
def evidence_pack_build_task(*, pack_id: int) -> None:
    """Build an evidence pack requested in the UI (enqueued on commit)."""
    from audit.reporting.evidence import evidence_pack_build

    evidence_pack_build(pack_id=pack_id)
