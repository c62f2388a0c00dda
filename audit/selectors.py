"""Moved to ``audit.reporting.selectors``; this path stays for the callers that import it."""

from audit.reporting.selectors import (
    AUDIT_READERS,
    AuditFilters,
    EventProof,
    audit_can_view,
    audit_event_get,
    audit_event_proof,
    audit_events_iter,
    audit_events_search,
    change_list,
    require_audit_reader,
)
from audit.sink.history import change_history_for

__all__ = [
    "AUDIT_READERS",
    "AuditFilters",
    "EventProof",
    "audit_can_view",
    "audit_event_get",
    "audit_event_proof",
    "audit_events_iter",
    "audit_events_search",
    "change_history_for",
    "change_list",
    "require_audit_reader",
]
