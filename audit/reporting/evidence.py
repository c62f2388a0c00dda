"""Evidence packs: one ZIP an auditor can take away for a period.

Contents (every file listed with its SHA-256 in ``manifest.json`` and in
``SHA256SUMS``, the format ``sha256sum -c`` reads):

- ``policy/<datasource>.json``: each datasource's compiled policy bundle as the
  sidecars receive it, minus secrets (the masking key and credential verifiers);
- ``approvals.json``: approval requests opened in the period, with their decisions;
- ``access-report.csv``: who read PII or confidential/restricted data, per
  identity and classification, over the period (the PII access report);
- ``verification.json``: the hash-chain verification result, run for the pack.

``evidence_pack_request`` records the request and enqueues the build after
commit; the Celery task calls ``evidence_pack_build``, which reports its
progress on the row (the page polls it) and stores the archive on the row.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from audit.report_models import EvidencePack, EvidenceStatus
from audit.reporting.reports import Period, pii_access_report
from audit.reporting.selectors import audit_can_view, require_audit_reader
from governance.models import Datasource, Role
from governance.permissions import user_role

logger = logging.getLogger(__name__)

MAX_PERIOD_DAYS = 366
REDACTED = "[redacted]"


# --- reads --------------------------------------------------------------------------------


def evidence_pack_list(*, user: Any) -> QuerySet[EvidencePack]:
    """The packs ``user`` may see: their own; an admin sees everyone's."""
    require_audit_reader(user)
    qs = EvidencePack.objects.select_related("requested_by").defer("content")
    return qs if user_role(user) == Role.ADMIN else qs.filter(requested_by=user)


def evidence_pack_get(*, user: Any, pk: Any) -> EvidencePack:
    try:
        return evidence_pack_list(user=user).get(pk=int(pk))
    except (TypeError, ValueError, EvidencePack.DoesNotExist):
        raise Http404("No such evidence pack.") from None


def evidence_pack_content(*, pack: EvidencePack) -> bytes:
    """The archive of a finished pack (the list leaves it out: it may be large)."""
    content = EvidencePack.objects.values_list("content", flat=True).get(pk=pack.pk)
    return bytes(content) if content is not None else b""


# --- writes -------------------------------------------------------------------------------


def evidence_pack_request(
    *, actor: Any, period_start: datetime.date, period_end: datetime.date
) -> EvidencePack:
    """Record a request for a pack over [period_start, period_end) and build it after commit."""
    require_audit_reader(actor)
    if period_end <= period_start:
        raise ValidationError({"period_end": "The period must end after it starts."})
    if (period_end - period_start).days > MAX_PERIOD_DAYS:
        raise ValidationError({"period_start": f"At most {MAX_PERIOD_DAYS} days per pack."})
    pack = EvidencePack(requested_by=actor, period_start=period_start, period_end=period_end)
    pack.full_clean()
    with transaction.atomic():
        pack.save()
        from audit.tasks import evidence_pack_build_task

        transaction.on_commit(lambda: evidence_pack_build_task.delay(pack_id=pack.pk))
    return pack


def _progress(pack: EvidencePack, percent: int, step: str) -> None:
    # A plain UPDATE, committed at once, so the page polling this row sees it.
    EvidencePack.objects.filter(pk=pack.pk).update(
        status=EvidenceStatus.RUNNING, progress=percent, step=step
    )


def _json_bytes(data: Any) -> bytes:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return (text + "\n").encode()


def policy_snapshot(datasource: Datasource) -> dict[str, Any]:
    """The datasource's compiled bundle with its credential verifiers replaced by
    ``[redacted]`` (no masking key is in a bundle: hashing is keyed in the database)."""
    from governance.bundles import BundleCompileError, bundle_compile

    try:
        bundle = bundle_compile(datasource=datasource)
    except BundleCompileError as exc:
        return {"datasource": datasource.name, "compile_error": str(exc)}
    for identity in bundle.get("identities", []):
        for credential in identity.get("credentials", []):
            for key in list(credential):
                if key not in ("id", "expires_at"):
                    credential[key] = REDACTED
    return bundle


def approvals_snapshot(period: Period) -> list[dict[str, Any]]:
    """Approval requests opened in the period, each with its decisions (statements redacted)."""
    from approvals.models import ApprovalRequest

    requests = (
        ApprovalRequest.objects.filter(created_at__gte=period.since, created_at__lt=period.until)
        .select_related("datasource", "identity", "denied_by")
        .prefetch_related("decisions__reviewer")
        .order_by("created_at", "id")
    )
    return [
        {
            "id": str(r.id),
            "datasource": r.datasource.name,
            "identity": r.identity.name,
            "identity_kind": r.identity.kind,
            "fingerprint": r.fingerprint,
            "statement": r.statement,
            "kind": r.kind,
            "risk": r.risk,
            "reasons": r.reasons,
            "tables": r.tables,
            "classifications": r.classifications,
            "state": r.state,
            "required_approvals": r.required_approvals,
            "created_at": r.created_at,
            "decided_at": r.decided_at,
            "expires_at": r.expires_at,
            "escalated_at": r.escalated_at,
            "deny_reason": r.deny_reason,
            "denied_by": r.denied_by.get_username() if r.denied_by else None,
            "decisions": [
                {
                    "reviewer": d.reviewer.get_username(),
                    "approve": d.approve,
                    "reason": d.reason,
                    "uses": d.uses,
                    "grant_expires_at": d.grant_expires_at,
                    "at": d.at,
                }
                for d in r.decisions.all()
            ],
        }
        for r in requests
    ]


def access_report_csv(*, user: Any, period: Period) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    # One line per identity and classification it read; "statements" counts each
    # statement once per line, so a statement reading two labels is on two lines.
    writer.writerow(["identity", "identity_kind", "classification", "statements", "raw", "masked"])
    for row in pii_access_report(user=user, period=period):
        for c in row.classifications:
            line = [row.identity_name, row.identity_kind, c.classification]
            writer.writerow([*line, c.statements, c.raw, c.masked])
    return out.getvalue().encode()


def chain_verification(period: Period) -> dict[str, Any]:
    from audit.sink.verify import audit_verify

    started = timezone.now()
    result = audit_verify(since=period.since)
    data = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(vars(result))
    return {
        "verified_at": started.isoformat(),
        "since": period.since.isoformat(),
        "result": data,
    }


def build_archive(*, user: Any, period: Period, progress: Callable[[int, str], None]) -> bytes:
    """The ZIP's bytes: every file, then the manifest of their hashes."""
    files: list[tuple[str, bytes]] = []
    progress(5, "Compiling the policy of every datasource")
    for datasource in Datasource.objects.select_related("environment").order_by("name"):
        files.append((f"policy/{datasource.name}.json", _json_bytes(policy_snapshot(datasource))))
    progress(30, "Collecting approvals and their decisions")
    files.append(("approvals.json", _json_bytes(approvals_snapshot(period))))
    progress(45, "Building the access report")
    files.append(("access-report.csv", access_report_csv(user=user, period=period)))
    progress(60, "Verifying the audit chain")
    files.append(("verification.json", _json_bytes(chain_verification(period))))
    progress(90, "Writing the manifest and the archive")
    entries = [
        {"name": name, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
        for name, body in files
    ]
    manifest = {
        "format": "warden.evidence/1",
        "generated_at": timezone.now().isoformat(),
        "period": {"start": period.start.isoformat(), "end_exclusive": period.end.isoformat()},
        "requested_by": user.get_username(),
        "files": entries,
    }
    sums = "".join(f"{e['sha256']}  {e['name']}\n" for e in entries).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, body in files:
            archive.writestr(name, body)
        archive.writestr("manifest.json", _json_bytes(manifest))
        archive.writestr("SHA256SUMS", sums)
    return buffer.getvalue()


def evidence_pack_build(*, pack_id: int) -> EvidencePack | None:
    """Build one pending pack; a failure is recorded on the pack, never half a ZIP.

    A pack deleted (with its requester) before a worker got to it is skipped.
    """
    pack = EvidencePack.objects.select_related("requested_by").filter(pk=pack_id).first()
    if pack is None:
        logger.warning("evidence pack %s no longer exists; nothing built", pack_id)
        return None
    if pack.is_finished:
        return pack
    period = Period(pack.period_start, pack.period_end, "")
    try:
        # The requester's role is checked again: it may have changed since the request.
        if not audit_can_view(pack.requested_by):
            raise PermissionDenied("The requester may no longer read the audit trail.")
        body = build_archive(
            user=pack.requested_by, period=period, progress=lambda p, s: _progress(pack, p, s)
        )
    except Exception as exc:
        logger.exception("evidence pack %s failed", pack.pk)
        EvidencePack.objects.filter(pk=pack.pk).update(
            status=EvidenceStatus.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            finished_at=timezone.now(),
        )
    else:
        EvidencePack.objects.filter(pk=pack.pk).update(
            status=EvidenceStatus.DONE,
            progress=100,
            step="Ready",
            content=body,
            sha256=hashlib.sha256(body).hexdigest(),
            size=len(body),
            finished_at=timezone.now(),
        )
    pack.refresh_from_db()
    return pack
