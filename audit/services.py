"""Moved to ``audit.sink``; this path stays for the callers that import it.

``audit.sink.history`` (``change_record_create``, ``object_snapshot``),
``audit.sink.trail`` (``audit_control_event``, partitions, rollups),
``audit.sink.intake`` (``audit_events_ingest``), ``audit.sink.verify`` and
``audit.sink.retention``. New code imports those.
"""

from audit.sink.history import change_history_for, change_record_create, object_snapshot
from audit.sink.intake import EventRejected, _sidecar_row, audit_events_ingest
from audit.sink.retention import (
    MIN_RETENTION_DAYS,
    audit_retention_enforce,
    audit_retention_set,
)
from audit.sink.trail import (
    _array_literal,
    _chain_append,
    _seal,
    audit_control_event,
    audit_partition_ensure,
    audit_partitions_prepare,
    audit_rollups_rebuild,
)
from audit.sink.verify import VerifyResult, _row_dict, audit_verify, audit_verify_run

__all__ = [
    "MIN_RETENTION_DAYS",
    "EventRejected",
    "VerifyResult",
    "_array_literal",
    "_chain_append",
    "_row_dict",
    "_seal",
    "_sidecar_row",
    "audit_control_event",
    "audit_events_ingest",
    "audit_partition_ensure",
    "audit_partitions_prepare",
    "audit_retention_enforce",
    "audit_retention_set",
    "audit_rollups_rebuild",
    "audit_verify",
    "audit_verify_run",
    "change_history_for",
    "change_record_create",
    "object_snapshot",
]
