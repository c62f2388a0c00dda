"""Datasource services: the databases Warden governs, and what is known of their schema.

Datasources, the custom detectors their scans use, scan schedules and "scan now"
requests, and the scan reports sidecars send: the new schema snapshot, its drift,
the findings turned into column classifications, and a record of each scan.

Every change here can alter a bundle (a datasource's bundle carries its schema and
classifications, the detectors and its pending scan request), so each service
records history and then calls ``bundles_mark_stale``. A scan's own record
(``ScanRun``) is neither history nor part of a bundle.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.models import ChangeAction
from audit.sink.history import change_record_create, object_snapshot
from governance.bundles import bundles_mark_stale
from governance.models import (
    Classification,
    ClassificationRejection,
    ClassificationSource,
    ClassificationStatus,
    ColumnClassification,
    CustomDetector,
    Datasource,
    Environment,
    ScanRun,
    ScanSchedule,
    ScanTrigger,
    Team,
)
from governance.services.history import _create, _delete, _update
from governance.services.policy import (
    _careful,
    _clean_reason,
    _reason_to_delete,
    _require_policy_editor,
    column_classifications_inherit,
)
from governance.sidecar_auth import sidecar_auth_forget_on_commit
from sidecar.engine.paths import PathError, parse_path, path_applies

# --- environments ---------------------------------------------------------------------

# What may be edited of an environment: the rest (name, criticality) is seeded.
ENVIRONMENT_FIELDS = {"protect_threshold"}


@transaction.atomic
def environment_update(
    *, actor: Any, environment: Environment, data: dict[str, Any], reason: str = ""
) -> Environment:
    """Change an environment's protect threshold (None: enforce only confirmed and
    confident findings, as a sandbox does). Every datasource of the environment is
    recompiled, and its views' inherited classifications follow (a provisional
    source protects its views only while it is at or above the threshold). In
    production, with a ``reason``."""
    _require_policy_editor(actor)
    environment = Environment.objects.select_for_update(no_key=True).get(pk=environment.pk)
    reason = _clean_reason(reason)
    with _careful(environment, reason, f"environment {environment.name}"):
        _update(actor, environment, data, allowed=ENVIRONMENT_FIELDS, reason=reason)
    bundles_mark_stale(obj=environment)
    for datasource in Datasource.objects.filter(environment=environment).select_related(
        "environment"
    ):
        column_classifications_inherit(datasource=datasource)
    return environment


# --- datasources ----------------------------------------------------------------------


@transaction.atomic
def datasource_create(
    *,
    actor: Any,
    name: str,
    environment: Environment,
    engine: str = "postgresql",
    dialect: str = "postgres",
    description: str = "",
    schema_snapshot: dict[str, Any] | None = None,
    connect_teams: Iterable[Team] = (),
    review_teams: Iterable[Team] = (),
    mask_services_provisionally: bool = False,
) -> Datasource:
    _require_policy_editor(actor)
    datasource = Datasource(
        name=name,
        environment=environment,
        engine=engine,
        dialect=dialect,
        description=description,
        mask_services_provisionally=mask_services_provisionally,
        schema_snapshot=schema_snapshot if schema_snapshot is not None else {"tables": []},
    )
    _create(actor, datasource, {"connect_teams": connect_teams, "review_teams": review_teams})
    bundles_mark_stale(obj=datasource)
    return datasource


DATASOURCE_FIELDS = {
    "name",
    "environment",
    "engine",
    "dialect",
    "description",
    "schema_snapshot",
    "connect_teams",
    "review_teams",
    "mask_services_provisionally",
}


@transaction.atomic
def datasource_update(
    *, actor: Any, datasource: Datasource, data: dict[str, Any], reason: str = ""
) -> Datasource:
    """Change any of DATASOURCE_FIELDS. Moving environment re-checks its guardrails.

    A production datasource (before or after the change) needs a ``reason`` for
    anything but its name, description and teams: moving it out of production
    takes every production rule off it."""
    _require_policy_editor(actor)
    datasource = Datasource.objects.select_for_update(no_key=True).get(pk=datasource.pk)
    reason = _clean_reason(reason)
    renamed = "name" in data and str(data["name"]) != datasource.name
    pinned = datasource.sidecars.filter(revoked_at__isnull=True).count() if renamed else 0
    if pinned:
        # Each sidecar accepts only bundles naming the datasource it was set up for:
        # renamed, every one of them would refuse every new bundle, and enforce the
        # old policy (no revocation reaching it) until the bundle expired.
        raise ValidationError(
            {
                "name": f"{pinned} sidecar(s) enforce this datasource under its name "
                f"{datasource.name!r} and would refuse every bundle under another: revoke "
                "them (and register them again with the new name) before renaming"
            }
        )
    with _careful(datasource, reason, f"datasource {datasource.name}"):
        _update(actor, datasource, data, allowed=DATASOURCE_FIELDS, reason=reason)
        # Inside: a guardrail the move breaks is the first thing to say.
        for guardrail in datasource.guardrails.all():
            try:
                guardrail.full_clean()
            except ValidationError as exc:
                raise ValidationError(
                    {
                        "environment": f"Guardrail '{guardrail.name}' would become invalid: "
                        + "; ".join(exc.messages)
                    }
                ) from exc
    bundles_mark_stale(obj=datasource)
    return datasource


@transaction.atomic
def datasource_delete(*, actor: Any, datasource: Datasource, reason: str = "") -> None:
    """Delete a datasource with its guardrails and column classifications; a production
    one needs a ``reason``."""
    _require_policy_editor(actor)
    reason = _reason_to_delete(datasource, reason, f"datasource {datasource.name}")
    # Its sidecars go with it (CASCADE): their tokens must stop as a revocation's do,
    # not live on in the gateway's caches.
    digests = list(datasource.sidecars.values_list("token_digest", flat=True))
    _delete(actor, datasource, blocked_by="other objects", reason=reason)
    for digest in digests:
        sidecar_auth_forget_on_commit(digest=digest)
    bundles_mark_stale(obj=datasource)


# --- custom detectors -------------------------------------------------------------------


@transaction.atomic
def custom_detector_create(
    *,
    actor: Any,
    name: str,
    classification: Classification,
    confidence: float = 0.9,
    name_regex: str = "",
    value_regex: str = "",
    enabled: bool = True,
) -> CustomDetector:
    _require_policy_editor(actor)
    detector = CustomDetector(
        name=name,
        classification=classification,
        confidence=confidence,
        name_regex=name_regex or "",
        value_regex=value_regex or "",
        enabled=enabled,
    )
    _create(actor, detector)
    bundles_mark_stale(obj=detector)
    return detector


@transaction.atomic
def custom_detector_update(
    *, actor: Any, detector: CustomDetector, data: dict[str, Any]
) -> CustomDetector:
    _require_policy_editor(actor)
    data = {k: (v or "") if k in {"name_regex", "value_regex"} else v for k, v in data.items()}
    _update(
        actor,
        detector,
        data,
        allowed={"name", "classification", "confidence", "name_regex", "value_regex", "enabled"},
    )
    bundles_mark_stale(obj=detector)
    return detector


@transaction.atomic
def custom_detector_delete(*, actor: Any, detector: CustomDetector) -> None:
    _require_policy_editor(actor)
    _delete(actor, detector, blocked_by="other objects")
    bundles_mark_stale(obj=detector)


# --- scans --------------------------------------------------------------------------------


def scan_schedule_for(*, datasource: Datasource) -> ScanSchedule:
    """The datasource's schedule; one with the defaults is created on first use."""
    schedule, _ = ScanSchedule.objects.get_or_create(datasource=datasource)
    return schedule


@transaction.atomic
def scan_schedule_update(
    *, actor: Any, datasource: Datasource, data: dict[str, Any]
) -> ScanSchedule:
    _require_policy_editor(actor)
    schedule = ScanSchedule.objects.select_for_update(no_key=True).get(
        pk=scan_schedule_for(datasource=datasource).pk
    )
    _update(
        actor,
        schedule,
        data,
        allowed={"interval_seconds", "sample_rows", "statement_timeout_ms"},
    )
    bundles_mark_stale(obj=schedule)
    return schedule


def _scan_request(*, actor: Any, datasource: Datasource, now: Any = None) -> ScanSchedule:
    import uuid

    schedule = ScanSchedule.objects.select_for_update(no_key=True).get(
        pk=scan_schedule_for(datasource=datasource).pk
    )
    before = object_snapshot(schedule)
    schedule.requested = uuid.uuid4().hex
    schedule.requested_at = now or timezone.now()
    schedule.requested_by = actor
    schedule.full_clean()
    schedule.save()
    # Beat (no actor) asks every interval; history would drown in it. The bundle still changes.
    if actor is not None:
        change_record_create(
            actor=actor,
            action=ChangeAction.UPDATE,
            obj=schedule,
            before=before,
            after=object_snapshot(schedule),
        )
    bundles_mark_stale(obj=schedule)
    return schedule


@transaction.atomic
def scan_request(*, actor: Any, datasource: Datasource) -> ScanSchedule:
    """ "Scan now": a new request id that reaches the sidecar through the bundle's
    ``scan.requested`` and the heartbeat reply; the sidecar reports with that id."""
    _require_policy_editor(actor)
    return _scan_request(actor=actor, datasource=datasource)


def scan_pending(*, schedule: ScanSchedule) -> str | None:
    """The requested scan id when no scan with that id was reported yet."""
    if not schedule.requested:
        return None
    done = ScanRun.objects.filter(datasource_id=schedule.datasource_id, scan_id=schedule.requested)
    return None if done.exists() else schedule.requested


@transaction.atomic
def scans_request_due(*, now: Any = None) -> list[int]:
    """Request a scan of every datasource with no scan reported within its interval and
    no request of its own younger than the interval (a silent sidecar is asked once per
    interval, not every minute). Returns the datasource ids asked."""
    now = now or timezone.now()
    asked = []
    for datasource in Datasource.objects.select_for_update(skip_locked=True).order_by("pk"):
        schedule = scan_schedule_for(datasource=datasource)
        if schedule.interval_seconds == 0:
            continue
        since = now - datetime.timedelta(seconds=schedule.interval_seconds)
        recent_scan = ScanRun.objects.filter(datasource=datasource, received_at__gt=since).exists()
        recent_request = schedule.requested_at is not None and schedule.requested_at > since
        if recent_scan or recent_request:
            continue
        _scan_request(actor=None, datasource=datasource, now=now)
        asked.append(datasource.pk)
    return asked


def scan_requested_for(*, datasource_id: int) -> str | None:
    """The scan request a sidecar has not answered yet (for the heartbeat reply)."""
    schedule = ScanSchedule.objects.filter(datasource_id=datasource_id).first()
    return scan_pending(schedule=schedule) if schedule is not None else None


# --- scan reports -----------------------------------------------------------------------


@transaction.atomic
def sidecar_schema_report(
    *,
    datasource_id: int,
    snapshot: dict[str, Any],
    findings: list[dict[str, Any]],
    scan: dict[str, Any] | None = None,
    sidecar_id: int | None = None,
) -> dict[str, Any]:
    """Take a sidecar's scan: record the drift from the previous snapshot, store the new
    one, turn findings into classifications and views' sources into inherited ones,
    and keep the scan's counts. Recorded in history with the actor "system".

    A finding at or above ``WARDEN_SCAN_AUTO_APPLY_CONFIDENCE`` is applied at once
    (``auto_applied``: masked, awaiting confirmation); one below is ``proposed``. A
    scanner never overrides a person, and a rejected (column, classification) is
    never proposed again.
    """
    from governance.scans import snapshot_drift

    datasource = Datasource.objects.select_for_update(no_key=True).get(pk=datasource_id)
    previous = datasource.schema_snapshot or {}
    drift = snapshot_drift(previous, snapshot) if previous.get("tables") else {}
    changed = previous != snapshot
    if changed:
        before = object_snapshot(datasource)
        datasource.schema_snapshot = snapshot
        datasource.full_clean()
        datasource.save(update_fields=["schema_snapshot", "updated_at"])
        change_record_create(
            actor=None,
            action=ChangeAction.UPDATE,
            obj=datasource,
            before=before,
            after=object_snapshot(datasource),
            datasource=datasource,
        )
        bundles_mark_stale(obj=datasource)
    counts = _findings_apply(datasource=datasource, findings=findings)
    counts["inherited"] = column_classifications_inherit(datasource=datasource)
    run = _scan_run_record(
        datasource=datasource,
        sidecar_id=sidecar_id,
        scan=scan,
        findings=len(findings),
        counts=counts,
        drift=drift,
    )
    return {
        "snapshot_changed": changed,
        **counts,
        "scan": run.scan_id,
        "drift": run.drift_count,
    }


# Contract names the scanner may emit for built-ins Warden already has under another name.
FINDING_CLASSIFICATION_ALIASES = {"pii.ip_address": "network.ip", "pii.birth_date": "pii.dob"}


def _findings_apply(*, datasource: Datasource, findings: list[dict[str, Any]]) -> dict[str, int]:
    from django.conf import settings

    threshold = settings.WARDEN_SCAN_AUTO_APPLY_CONFIDENCE
    classifications = {c.name: c for c in Classification.objects.all()}
    # Keyed by (schema, table, column, path): a path inside a JSON or array column
    # ("" = the whole column) is classified, reviewed and rejected on its own.
    existing = {
        (c.schema_name, c.table_name, c.column_name, c.path): c
        for c in ColumnClassification.objects.select_for_update(no_key=True).filter(
            datasource=datasource
        )
    }
    rejected = set(
        ClassificationRejection.objects.filter(datasource=datasource).values_list(
            "schema_name", "table_name", "column_name", "path", "classification__name"
        )
    )
    columns = datasource.snapshot_columns()
    column_types = {
        (t["schema"], t["name"], c["name"]): c["type"]
        for t in (datasource.schema_snapshot or {}).get("tables", [])
        for c in t.get("columns", [])
    }
    proposed = auto_applied = ignored = 0
    # The most confident finding for a column wins.
    for finding in sorted(findings, key=lambda f: -float(f["confidence"])):
        key = (finding["schema"], finding["table"], finding["column"], finding.get("path") or "")
        name = FINDING_CLASSIFICATION_ALIASES.get(
            finding["classification"], finding["classification"]
        )
        classification = classifications.get(name)
        current = existing.get(key)
        if (
            classification is None
            or (*key, name) in rejected
            or key[2] not in columns.get(key[:2], [])
            or (key[3] and not _path_fits(column_types.get(key[:3]), key[3]))
            or (current is not None and current.status != ClassificationStatus.REJECTED)
        ):
            ignored += 1
            continue
        confidence = float(finding["confidence"])
        apply_now = confidence >= threshold
        values = {
            "classification": classification,
            "source": ClassificationSource.AUTO,
            "confidence": confidence,
            "status": ClassificationStatus.AUTO_APPLIED
            if apply_now
            else ClassificationStatus.PROPOSED,
            "confirmed_by": None,
            "confirmed_at": None,
            "detector": str(finding.get("detector") or "")[:100],
            "share": finding.get("share"),
            "inherited_from": "",
        }
        if current is None:
            current = ColumnClassification(
                datasource=datasource,
                schema_name=key[0],
                table_name=key[1],
                column_name=key[2],
                path=key[3],
                **values,
            )
            _create(None, current)
            bundles_mark_stale(obj=current)
        else:  # rejected as another classification: this one is new
            _update(None, current, values, allowed=set(values))
            bundles_mark_stale(obj=current)
        existing[key] = current
        if apply_now:
            auto_applied += 1
        else:
            proposed += 1
    return {"proposed": proposed, "auto_applied": auto_applied, "ignored": ignored}


def _path_fits(column_type: str | None, path: str) -> bool:
    """Whether a finding's path can point into its column as the snapshot types it (a
    path into a column that is not JSON or an array could never be masked)."""
    try:
        return column_type is not None and path_applies(column_type, parse_path(path))
    except PathError:
        return False


def _scan_run_record(
    *,
    datasource: Datasource,
    sidecar_id: int | None,
    scan: dict[str, Any] | None,
    findings: int,
    counts: dict[str, int],
    drift: dict[str, Any],
) -> ScanRun:
    import uuid

    scan = scan or {}
    if scan.get("id"):
        # A report re-sent after a lost reply (or one request heard twice, through the
        # bundle and the heartbeat) is the same scan: keep its first record and drift.
        earlier = ScanRun.objects.filter(datasource=datasource, scan_id=scan["id"]).first()
        if earlier is not None:
            return earlier
    run = ScanRun(
        datasource=datasource,
        sidecar_id=sidecar_id,
        scan_id=scan.get("id") or uuid.uuid4().hex,
        trigger=scan.get("trigger") or ScanTrigger.REPORT,
        started_at=scan.get("started_at"),
        finished_at=scan.get("finished_at"),
        duration_ms=scan.get("duration_ms"),
        tables=scan.get("tables", len((datasource.schema_snapshot or {}).get("tables", []))),
        columns=scan.get("columns", sum(len(c) for c in datasource.snapshot_columns().values())),
        sampled_columns=scan.get("sampled_columns", 0),
        findings=findings,
        proposed=counts["proposed"],
        auto_applied=counts["auto_applied"],
        inherited=counts["inherited"],
        drift=drift,
    )
    run.full_clean()
    run.save()
    return run
