"""Exports of a filtered search for auditors: CSV and JSON Lines, streamed.

Rows are produced from keyset batches (``audit_events_iter``), so an export of
millions of events holds one batch in memory at a time and the first bytes
leave before the last row is read. Statements are already redacted at
ingestion; nothing else in an event holds a literal.
"""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.conf import settings

from audit.models import AuditEvent
from audit.reporting.selectors import AuditFilters, audit_events_iter, require_audit_reader
from audit.sink.chain import CHAINED_FIELDS

# The chained fields in their order, with the row id first and the chain's own
# links after ``seq``: one list of what an event holds (audit.chain), not two.
COLUMNS = ("id", *CHAINED_FIELDS[:5], "hash", "prev_hash", *CHAINED_FIELDS[5:])


def _plain(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def event_record(event: AuditEvent) -> dict[str, Any]:
    """One event as a JSON-ready dict with the export's columns, in order."""
    return {column: _plain(getattr(event, column, None)) for column in COLUMNS}


class _Echo:
    """A file-like object whose write returns what it was given, for csv.writer."""

    def write(self, value: str) -> str:
        return value


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = str(value)
    # A cell starting with = + - @ is a formula to a spreadsheet; statements may start so.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def csv_rows(events: Iterable[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for event in events:
        record = event_record(event)
        yield writer.writerow([_csv_cell(record[c]) for c in COLUMNS])


def jsonl_rows(events: Iterable[AuditEvent]) -> Iterator[str]:
    for event in events:
        yield json.dumps(event_record(event), ensure_ascii=False, sort_keys=False) + "\n"


def export_stream(*, user: Any, filters: AuditFilters, fmt: str) -> Iterator[str]:
    """The lines of an export in ``fmt`` (``csv`` or ``jsonl``); ValueError on another."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"Unknown export format {fmt!r}: use csv or jsonl.")
    # Checked now, not at the first row: a refused export must fail before a 200 goes out.
    require_audit_reader(user)
    events = audit_events_iter(user=user, filters=filters, batch=settings.WARDEN_AUDIT_EXPORT_BATCH)
    return csv_rows(events) if fmt == "csv" else jsonl_rows(events)
