"""Moved to ``audit.reporting.evidence``; this path stays for the callers that import it."""

from audit.reporting.evidence import (
    MAX_PERIOD_DAYS,
    REDACTED,
    access_report_csv,
    approvals_snapshot,
    build_archive,
    chain_verification,
    evidence_pack_build,
    evidence_pack_content,
    evidence_pack_get,
    evidence_pack_list,
    evidence_pack_request,
    policy_snapshot,
)

__all__ = [
    "MAX_PERIOD_DAYS",
    "REDACTED",
    "access_report_csv",
    "approvals_snapshot",
    "build_archive",
    "chain_verification",
    "evidence_pack_build",
    "evidence_pack_content",
    "evidence_pack_get",
    "evidence_pack_list",
    "evidence_pack_request",
    "policy_snapshot",
]
