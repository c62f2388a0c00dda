"""What a sidecar reports: heartbeats (its status and counters) and schema reports (scans).

Small sync views that validate their JSON strictly, refuse oversized bodies
with 413 and store nothing unless all of it is valid.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, JsonResponse

from gateway.auth import sidecar_json_call
from gateway.http import check_keys, error_response, sidecar_call
from governance.bundles import bundle_current
from governance.models import validate_schema_snapshot
from governance.services import (
    access_tokens_used,
    scan_requested_for,
    sidecar_heartbeat_record,
    sidecar_schema_report,
)
from sidecar.engine.paths import PathError, name_key, parse_path

HEARTBEAT_MAX_BYTES = 16 * 1024
SCHEMA_MAX_BYTES = 2 * 1024 * 1024
_REVISION_RE = re.compile(r"^[0-9a-f]{64}$")


@sidecar_call("POST")
def heartbeat_view(request: HttpRequest) -> JsonResponse:
    """Body: {revision, version, counters: {name: int}, status: {...}, logins?:
    {"tok-<id>": POSIX seconds}} (when access tokens last signed in)."""
    call = sidecar_json_call(
        request, HEARTBEAT_MAX_BYTES, {"revision", "version", "counters"}, {"status", "logins"}
    )
    if isinstance(call, JsonResponse):
        return call
    principal, data = call
    revision, version, counters = data["revision"], data["version"], data["counters"]
    status = data.get("status", {})
    fields: dict[str, str] = {}
    if not isinstance(revision, str) or not (revision == "" or _REVISION_RE.match(revision)):
        fields["revision"] = "A 64-character lower-case hex revision, or empty."
    if not isinstance(version, str) or len(version) > 64:
        fields["version"] = "A string of at most 64 characters."
    if not isinstance(counters, dict) or not all(
        isinstance(k, str)
        and len(k) <= 64
        and isinstance(v, int)
        and not isinstance(v, bool)
        and 0 <= v < 2**63
        for k, v in counters.items()
    ):
        fields["counters"] = "An object of names to non-negative integers."
    if not isinstance(status, dict):
        fields["status"] = "An object."
    logins = data.get("logins", {})
    if not isinstance(logins, dict) or not all(
        isinstance(k, str)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and 0 <= v < 2**33
        for k, v in logins.items()
    ):
        fields["logins"] = "An object of credential ids to POSIX times."
    if fields:
        return error_response(400, "The heartbeat is not valid.", fields)
    try:
        # First: a malformed credential id refuses the heartbeat before anything is stored.
        access_tokens_used(datasource_id=principal.datasource_id, logins=logins)
        sidecar_heartbeat_record(
            sidecar_id=principal.sidecar_id,
            revision=revision,
            version=version,
            counters=counters,
            bundle_status=status,
        )
    except ValidationError as exc:
        return error_response(400, "The heartbeat is not valid.", exc.message_dict)
    current = bundle_current(datasource_id=principal.datasource_id)
    reply: dict[str, Any] = {"current_revision": current[0] if current else None}
    requested = scan_requested_for(datasource_id=principal.datasource_id)
    if requested:
        reply["scan_requested"] = requested
    return JsonResponse(reply)


_FINDING_KEYS = {"schema", "table", "column", "classification", "confidence"}
_FINDING_OPTIONAL = {"share", "detector", "path"}
_SCAN_KEYS = {"id", "trigger"}
_SCAN_OPTIONAL = {
    "started_at",
    "finished_at",
    "tables",
    "columns",
    "sampled_columns",
    "duration_ms",
}
_SCAN_TRIGGERS = {"start", "schedule", "request"}
MAX_FINDINGS = 10_000


def _fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _finding_valid(f: Any) -> bool:
    return (
        isinstance(f, dict)
        and _FINDING_KEYS <= set(f) <= _FINDING_KEYS | _FINDING_OPTIONAL
        and all(
            isinstance(f[k], str) and 0 < len(f[k]) <= 100 for k in _FINDING_KEYS - {"confidence"}
        )
        and _fraction(f["confidence"])
        and ("share" not in f or _fraction(f["share"]))
        and ("detector" not in f or (isinstance(f["detector"], str) and len(f["detector"]) <= 100))
        and ("path" not in f or _path_valid(f["path"]))
    )


def _path_valid(path: Any) -> bool:
    """A path inside a JSON or array column, in the engine's syntax (docs/scanner.md)."""
    if not isinstance(path, str) or not path:
        return False
    try:
        parse_path(path)
    except PathError:
        return False
    return True


def _names_only(finding: dict[str, Any]) -> bool:
    """A finding whose path, if any, goes through keys that name fields only. Another
    (from a sidecar older than the rule: its scanner took map keys for names) is left
    out, not stored: paths are shown, recorded in the change history and signed into
    bundles, and such a key may be an address or an SSN. The rest of the report is
    kept."""
    path = finding.get("path")
    return not path or all(step.each or name_key(step.key or "") for step in parse_path(path))


def _scan_problems(scan: Any) -> dict[str, str]:
    """Field problems of the optional ``scan`` summary (empty when valid)."""
    from django.utils.dateparse import parse_datetime

    message = check_keys(scan, _SCAN_KEYS, _SCAN_OPTIONAL)
    if message:
        return {"scan": message}
    fields: dict[str, str] = {}
    if not isinstance(scan["id"], str) or not 0 < len(scan["id"]) <= 64:
        fields["scan.id"] = "A string of 1-64 characters."
    if scan["trigger"] not in _SCAN_TRIGGERS:
        fields["scan.trigger"] = "One of start, schedule, request."
    for key in ("started_at", "finished_at"):
        value = scan.get(key)
        if value is None:
            continue
        try:
            parsed = parse_datetime(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            fields[f"scan.{key}"] = "An ISO 8601 time with a time zone."
    for key in ("tables", "columns", "sampled_columns"):
        value = scan.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
            fields[f"scan.{key}"] = "A non-negative integer."
    duration = scan.get("duration_ms", 0)
    if (
        not isinstance(duration, int | float)
        or isinstance(duration, bool)
        or not 0 <= duration < 10**9
    ):
        fields["scan.duration_ms"] = "A non-negative number of milliseconds."
    return fields


@sidecar_call("POST")
def schema_view(request: HttpRequest) -> JsonResponse:
    """Body: {snapshot: {tables: [...]}, findings: [{schema, table, column, classification,
    confidence, share?, detector?, path?}], scan?: {id, trigger, started_at, finished_at, tables,
    columns, sampled_columns, duration_ms}}; findings name a classification, never a
    value. Anything malformed is refused whole (400) and nothing is stored."""
    call = sidecar_json_call(request, SCHEMA_MAX_BYTES, {"snapshot", "findings"}, {"scan"})
    if isinstance(call, JsonResponse):
        return call
    principal, data = call
    try:
        validate_schema_snapshot(data["snapshot"])
    except ValidationError as exc:
        return error_response(400, "The snapshot is not valid.", {"snapshot": exc.messages})
    findings = data["findings"]
    if (
        not isinstance(findings, list)
        or len(findings) > MAX_FINDINGS
        or not all(_finding_valid(f) for f in findings)
    ):
        return error_response(
            400,
            "findings: a list of {schema, table, column, classification, confidence, "
            "share?, detector?, path?}.",
        )
    scan = data.get("scan")
    if scan is not None:
        fields = _scan_problems(scan)
        if fields:
            return error_response(400, "The scan summary is not valid.", fields)
    try:
        result = sidecar_schema_report(
            datasource_id=principal.datasource_id,
            snapshot=data["snapshot"],
            findings=[f for f in findings if _names_only(f)],
            scan=scan,
            sidecar_id=principal.sidecar_id,
        )
    except ValidationError as exc:
        return error_response(400, "The report is not valid.", {"findings": exc.messages})
    return JsonResponse(result, status=202)
