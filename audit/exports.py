"""Moved to ``audit.reporting.exports``; this path stays for the callers that import it."""

from audit.reporting.exports import (
    COLUMNS,
    csv_rows,
    event_record,
    export_stream,
    jsonl_rows,
)

__all__ = [
    "COLUMNS",
    "csv_rows",
    "event_record",
    "export_stream",
    "jsonl_rows",
]
