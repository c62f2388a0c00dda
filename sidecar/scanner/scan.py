"""One classification scan: catalog, samples, detectors, and the report the control plane takes.

``run_scan`` opens its own read-only connection with the sidecar's upstream
credential, reads the catalog, samples each relation (one query each), and
classifies every column: by its own values, and for a view column also through
its ``sources`` (a view column carrying a classified base column, with the same
type family, is classified like it). The report body is the contract's
``{"snapshot", "findings", "scan"}``. Values stay inside this function's frames:
the report, the log lines and the errors carry names, figures and SQLSTATEs only.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sidecar.proxy.upstream import libpq_defaults
from sidecar.scanner.catalog import Catalog, Relation, read_catalog
from sidecar.scanner.detectors import (
    STRUCTURED_FAMILIES,
    ColumnSample,
    Detector,
    Finding,
    Verdict,
    classify,
    custom_detectors,
    preferred,
)
from sidecar.scanner.regex_worker import (
    DETECTOR_BUDGET_MS,
    DETECTOR_TIMEOUT_MS,
    CustomDetectorRunner,
)
from sidecar.scanner.sampling import SamplingError, sample_relation, sampled_columns
from sidecar.scanner.structured import path_samples

log = logging.getLogger("warden.sidecar.scanner")

# A view column inherits its source's classification at a slight discount:
# lineage is evidence about the column, not a look at its values.
LINEAGE_DISCOUNT = 0.95
# The contract's defaults when the bundle carries no ``scan`` settings.
DEFAULT_SAMPLE_ROWS = 100
DEFAULT_TIMEOUT_MS = 5000
DEFAULT_INTERVAL = 3600
MAX_REPORTED_FINDINGS = 10_000


class ScanError(Exception):
    """The scan as a whole failed (no connection, no catalog); no value in the message."""


@dataclass(frozen=True, slots=True)
class ScanSettings:
    sample_rows: int = DEFAULT_SAMPLE_ROWS
    statement_timeout_ms: int = DEFAULT_TIMEOUT_MS
    interval_seconds: int = DEFAULT_INTERVAL
    requested: str | None = None
    detectors: tuple[Any, ...] = ()
    # Limits on the custom detectors' regexes (not bundle settings: the sidecar's own).
    detector_timeout_ms: int = DETECTOR_TIMEOUT_MS
    detector_budget_ms: int = DETECTOR_BUDGET_MS

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any]) -> ScanSettings:
        """The bundle's ``scan`` and ``detectors`` keys; defaults when absent."""
        scan = bundle.get("scan")
        if not isinstance(scan, dict):
            scan = {}
        detectors = bundle.get("detectors")
        requested = scan.get("requested")
        try:
            return cls(
                sample_rows=int(scan.get("sample_rows", DEFAULT_SAMPLE_ROWS)),
                statement_timeout_ms=int(scan.get("statement_timeout_ms", DEFAULT_TIMEOUT_MS)),
                interval_seconds=int(scan.get("interval_seconds", DEFAULT_INTERVAL)),
                requested=str(requested) if requested else None,
                detectors=tuple(detectors) if isinstance(detectors, list) else (),
            )
        except (TypeError, ValueError):
            # The bundle schema rules this out; a scan with defaults beats no scan.
            log.warning("bundle scan settings unusable; using the defaults")
            return cls()


@dataclass(slots=True)
class ScanReport:
    catalog: Catalog
    findings: list[Finding]
    summary: dict[str, Any]
    errors: list[SamplingError] = field(default_factory=list)
    detectors_skipped: int = 0
    # Custom detectors stopped during the scan (their regex ran out of time).
    detectors_timed_out: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        """What ``POST /api/v1/sidecar/schema`` takes (at most ``MAX_REPORTED_FINDINGS``
        findings, the most confident first, which is what the control plane accepts)."""
        findings = self.findings
        if len(findings) > MAX_REPORTED_FINDINGS:
            findings = sorted(findings, key=lambda f: -f.confidence)[:MAX_REPORTED_FINDINGS]
        return {
            "snapshot": self.catalog.snapshot(),
            "findings": [f.to_json() for f in findings],
            "scan": self.summary,
        }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def connect_kwargs(dsn: str, *, password: str | None = None) -> dict[str, Any]:
    """What ``connect`` passes to psycopg besides the DSN.

    libpq already honours the DSN's ``sslmode``, ``sslrootcert``, ``sslcert``,
    ``sslkey`` and ``require_auth``. A DSN without them gets the sidecar proxy's
    defaults (``sidecar.proxy.upstream.libpq_defaults``: ``require`` for a host that
    is not loopback instead of libpq's ``prefer``, and neither a cleartext password nor
    an MD5 answer where the connection does not authenticate the server), so the
    scanner never falls back to plain text or gives its password away where the proxy
    would refuse to, and ``PGSSLMODE`` does not apply either.
    """
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "application_name": "warden-scanner",
        "options": "-c default_transaction_read_only=on",
        "connect_timeout": 10,
    }
    if password is not None:
        kwargs["password"] = password
    kwargs.update(libpq_defaults(dsn))
    return kwargs


def connect(dsn: str, *, password: str | None = None) -> psycopg.Connection[Any]:
    """A read-only connection as the sidecar's upstream role."""
    try:
        conn = psycopg.connect(dsn, **connect_kwargs(dsn, password=password))
    except psycopg.Error as exc:
        raise ScanError(f"cannot connect to the upstream database: {type(exc).__name__}") from None
    conn.read_only = True
    return conn


def run_scan(
    dsn: str,
    *,
    password: str | None = None,
    settings: ScanSettings,
    scan_id: str | None = None,
    trigger: str = "start",
) -> ScanReport:
    with connect(dsn, password=password) as conn:
        return scan_connection(conn, settings=settings, scan_id=scan_id, trigger=trigger)


def scan_connection(
    conn: psycopg.Connection[Any],
    *,
    settings: ScanSettings,
    scan_id: str | None = None,
    trigger: str = "start",
    classify_column: Callable[[ColumnSample, list[Detector]], Verdict | None] = classify,
) -> ScanReport:
    """Scan on ``conn``. ``classify_column`` judges each column with the built-in
    detectors; the bundle's custom detectors run in a child process under a deadline
    (``regex_worker``), and the better verdict wins."""
    started_at, started = _now(), time.perf_counter()
    custom, skipped = custom_detectors(settings.detectors)
    if skipped:
        log.warning("%d custom detector(s) skipped: they do not compile", skipped)
    try:
        catalog = read_catalog(conn)
    except psycopg.Error as exc:
        raise ScanError(
            f"reading the catalog failed: {type(exc).__name__} (SQLSTATE {exc.sqlstate or '?'})"
        ) from None
    findings: list[Finding] = []
    errors: list[SamplingError] = []
    by_column: dict[str, Finding] = {}
    columns = sampled = 0
    runner = CustomDetectorRunner(
        custom, timeout_ms=settings.detector_timeout_ms, budget_ms=settings.detector_budget_ms
    )
    with runner:
        for relation in catalog.relations:
            columns += len(relation.columns)
            try:
                values = sample_relation(
                    conn,
                    relation,
                    rows=settings.sample_rows,
                    timeout_ms=settings.statement_timeout_ms,
                )
            except SamplingError as exc:
                log.warning("%s", exc)  # names the relation and SQLSTATE only
                errors.append(exc)
                if conn.closed or conn.broken:
                    raise ScanError(f"the upstream connection was lost during {exc}") from None
                values = {}
            sampled += sum(1 for name in sampled_columns(relation) if name in values)
            for column in relation.columns:
                column_values = values.get(column.name, ())
                if column.family in STRUCTURED_FAMILIES:
                    findings.extend(
                        _path_findings(
                            relation, column.name, column_values, runner, classify_column
                        )
                    )
                    column_values = ()  # the whole value is not judged: its paths are
                sample = ColumnSample(column.name, column.type, column.family, column_values)
                verdict = classify_column(sample, [])
                for candidate in runner.verdicts(sample, f"{relation.key}.{column.name}"):
                    verdict = preferred(verdict, candidate)
                if verdict is not None:
                    finding = _finding(relation, column.name, verdict)
                    findings.append(finding)
                    by_column[f"{relation.key}.{column.name}"] = finding
    if runner.unavailable:
        skipped += len(custom)
    findings = _with_lineage(catalog, findings, by_column)
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    summary = {
        "id": scan_id or str(uuid.uuid4()),
        "trigger": trigger,
        "started_at": started_at,
        "finished_at": _now(),
        "tables": len(catalog.relations),
        "columns": columns,
        "sampled_columns": sampled,
        "duration_ms": duration_ms,
    }
    log.info(
        "scan %s (%s): %d relations, %d columns, %d sampled, %d findings, %d errors, %.0f ms",
        summary["id"],
        trigger,
        summary["tables"],
        columns,
        sampled,
        len(findings),
        len(errors),
        duration_ms,
    )
    if runner.timed_out:
        log.warning(
            "scan %s: custom detector(s) timed out: %s",
            summary["id"],
            ", ".join(runner.timed_out),
        )
    return ScanReport(catalog, findings, summary, errors, skipped, list(runner.timed_out))


def _finding(relation: Relation, column: str, verdict: Verdict, path: str = "") -> Finding:
    return Finding(
        schema=relation.schema,
        table=relation.name,
        column=column,
        classification=verdict.classification,
        confidence=verdict.confidence,
        share=verdict.share,
        detector=verdict.detector,
        path=path,
    )


def _path_findings(
    relation: Relation,
    column: str,
    values: Any,
    runner: CustomDetectorRunner,
    classify_column: Callable[[ColumnSample, list[Detector]], Verdict | None],
) -> list[Finding]:
    """Findings inside a JSON or array column: each path's leaves judged like a column
    named after the path's last key (bounded: ``sidecar.scanner.structured``)."""
    found = []
    for leaves in path_samples(column, values):
        sample = ColumnSample(leaves.name, leaves.family, leaves.family, leaves.values)
        verdict = classify_column(sample, [])
        where = f"{relation.key}.{column} {leaves.path}"
        for candidate in runner.verdicts(sample, where):
            verdict = preferred(verdict, candidate)
        if verdict is not None:
            found.append(_finding(relation, column, verdict, leaves.path))
    return found


def _with_lineage(
    catalog: Catalog, findings: list[Finding], by_column: dict[str, Finding]
) -> list[Finding]:
    """Add or strengthen view-column findings from their sources' findings."""
    families = {f"{r.key}.{c.name}": c.family for r in catalog.relations for c in r.columns}
    result = {(f.schema, f.table, f.column, f.path): f for f in findings}
    for relation in catalog.relations:
        for column in relation.columns:
            if not column.sources:
                continue
            own_family = column.family
            inherited = [
                by_column[s]
                for s in column.sources
                if s in by_column and families.get(s) == own_family
            ]
            if not inherited:
                continue
            best = max(inherited, key=lambda f: f.confidence)
            key = (relation.schema, relation.name, column.name, "")
            confidence = round(best.confidence * LINEAGE_DISCOUNT, 3)
            current = result.get(key)
            if current is None or current.confidence < confidence:
                result[key] = Finding(
                    schema=relation.schema,
                    table=relation.name,
                    column=column.name,
                    classification=best.classification,
                    confidence=confidence,
                    share=current.share if current else 0.0,
                    detector=f"lineage:{best.detector}",
                )
    return list(result.values())
