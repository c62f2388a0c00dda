"""Verification of the audit trail: recompute every hash and link, report the first break.

Each chain is walked in seq order (hashes, links, no gap, the head). A sidecar
chain is also held to the latest ``chain.anchored`` event of its datasource's
chain: the event at the anchored seq must still be there with the anchored hash
(or have been dropped by retention, which records its own anchor). Checking the
latest anchor is enough: rewriting the chain from any earlier seq changes the
hash at every later one, and truncating it below that seq removes the event.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditVerification, EventSource
from audit.sink.chain import CHAINED_FIELDS, GENESIS, canonical_event, chain_hash
from audit.sink.lookups import lookups
from audit.sink.trail import ANCHOR_TYPE

logger = logging.getLogger("audit.services")  # the name operators' log routing knows


@dataclass
class VerifyResult:
    """What ``audit_verify`` found: ``first_broken`` is {chain, seq, event_id, reason}."""

    ok: bool
    checked: int
    first_broken: dict[str, Any] | None = None
    chains: int = 0


_VERIFY_PAGE = 5000
_VERIFY_COLUMNS = ", ".join(f'"{c}"' for c in (*CHAINED_FIELDS, "prev_hash", "hash"))


def _row_dict(values: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip((*CHAINED_FIELDS, "prev_hash", "hash"), values, strict=True))
    if isinstance(row["extra"], str):  # Django's psycopg setup leaves jsonb as text
        row["extra"] = json.loads(row["extra"])
    return row


def _verify_chain(
    cursor: Any,
    chain: str,
    head: tuple[int, str] | None,
    anchor: tuple[int, str] | None,
    since: datetime.datetime | None,
) -> tuple[int, dict[str, Any] | None]:
    """Walk one chain in seq order; return (events checked, first broken link or None)."""
    checked = 0
    prev_seq: int | None = None
    prev_hash = ""
    anchor_seq, anchor_hash = anchor if anchor else (0, GENESIS)
    start_seq = 0
    if since is not None:
        cursor.execute(
            "SELECT min(seq) FROM audit_event WHERE chain = %s AND occurred_at >= %s",
            [chain, since],
        )
        first = cursor.fetchone()[0]
        if first is None:
            return 0, None  # nothing since then
        start_seq = first - 1

    def broken(seq: int, event_id: str, reason: str) -> tuple[int, dict[str, Any]]:
        return checked, {"chain": chain, "seq": seq, "event_id": event_id, "reason": reason}

    after = start_seq
    while True:
        cursor.execute(
            f"SELECT {_VERIFY_COLUMNS} FROM audit_event WHERE chain = %s AND seq > %s "
            "ORDER BY seq LIMIT %s",
            [chain, after, _VERIFY_PAGE],
        )
        page = cursor.fetchall()
        if not page:
            break
        for values in page:
            row = _row_dict(values)
            seq, event_id = row["seq"], row["event_id"]
            if chain_hash(row["prev_hash"], canonical_event(row)) != row["hash"]:
                return broken(seq, event_id, "the event does not match its hash (edited)")
            if prev_seq is not None and seq == prev_seq:
                return broken(seq, event_id, "two events hold this seq (reordered or forged)")
            expected_prev = seq - 1
            if prev_seq == expected_prev:
                if row["prev_hash"] != prev_hash:
                    return broken(seq, event_id, "prev_hash is not the previous event's hash")
            elif prev_seq is None and since is not None:
                pass  # starting mid-chain: this event's own link is taken on trust
            elif expected_prev == 0:
                if row["prev_hash"] != GENESIS:
                    return broken(seq, event_id, "the first event does not start from genesis")
            elif expected_prev <= anchor_seq:
                # The missing events were dropped by retention: the anchor vouches.
                if expected_prev == anchor_seq and row["prev_hash"] != anchor_hash:
                    return broken(seq, event_id, "prev_hash is not the retention anchor's hash")
            else:
                missing = (prev_seq or 0) + 1
                return broken(seq, event_id, f"seq {missing} is missing (deleted)")
            prev_seq, prev_hash = seq, row["hash"]
            checked += 1
        after = page[-1][CHAINED_FIELDS.index("seq")]
    if head is None:
        if checked:
            return broken(prev_seq or 0, "", "events exist but the chain has no head")
        return checked, None
    head_seq, head_hash = head
    if prev_seq is None:
        if since is not None or (head_seq <= anchor_seq and head_hash == anchor_hash):
            return checked, None  # nothing since then, or everything was dropped by retention
        if head_seq == 0:
            return checked, None
        return broken(head_seq, "", f"the chain head is at seq {head_seq} but no event is stored")
    if prev_seq == head_seq and prev_hash == head_hash:
        return checked, None
    if prev_seq < head_seq:
        if head_seq == anchor_seq and head_hash == anchor_hash:
            return checked, None  # the tail was dropped by retention
        return broken(
            head_seq,
            "",
            f"the chain head is at seq {head_seq} but the last stored event is seq {prev_seq} "
            "(events deleted at the end)",
        )
    return broken(prev_seq, "", "the last event does not match the chain head")


def _latest_anchors(cursor: Any) -> dict[str, tuple[int, str, str, int]]:
    """Per sidecar chain, its latest anchor: (seq, hash, the anchoring chain, its seq).

    Only control-plane events count (a sidecar's own ``type`` never becomes one:
    intake stores unknown types as ``sidecar.unknown``), and only those naming a
    chain of their own datasource."""
    # An anchor whose seq is not a number (edited: its own chain's walk reports it)
    # is read as NULL rather than failing the query, and sorted last.
    cursor.execute(
        "SELECT DISTINCT ON (extra->>'chain') extra->>'chain', "
        "CASE WHEN extra->>'seq' ~ '^[0-9]{1,18}$' THEN (extra->>'seq')::bigint END AS anchored, "
        "extra->>'hash', chain, seq FROM audit_event WHERE type = %s AND source = %s "
        "ORDER BY extra->>'chain', anchored DESC NULLS LAST, seq DESC",
        [ANCHOR_TYPE, EventSource.CONTROL_PLANE.value],
    )
    return {
        target: (seq, hash_, into, into_seq)
        for target, seq, hash_, into, into_seq in cursor.fetchall()
        if target and seq is not None and target.startswith(into + "/")
    }


def _check_anchor(
    cursor: Any,
    chain: str,
    anchor: tuple[int, str, str, int],
    head: tuple[int, str] | None,
    dropped: tuple[int, str] | None,
) -> dict[str, Any] | None:
    """Whether ``chain`` still holds the event its latest anchor names, as anchored."""
    seq, hash_, into, into_seq = anchor
    where = f"anchored at seq {seq} by {into} seq {into_seq}"

    def broken(reason: str) -> dict[str, Any]:
        return {"chain": chain, "seq": seq, "event_id": "", "reason": reason}

    if head is None or head[0] < seq:
        return broken(f"the chain head is behind its anchor ({where}): events truncated")
    cursor.execute(
        "SELECT event_id, hash FROM audit_event WHERE chain = %s AND seq = %s", [chain, seq]
    )
    found = cursor.fetchone()
    if found is None:
        dropped_seq, dropped_hash = dropped if dropped else (0, GENESIS)
        if seq < dropped_seq or (seq == dropped_seq and hash_ == dropped_hash):
            return None  # dropped by retention
        return broken(f"the anchored event is missing ({where}): events truncated or deleted")
    if found[1] != hash_:
        return {
            "chain": chain,
            "seq": seq,
            "event_id": found[0],
            "reason": f"the event's hash is not the anchored one ({where}): chain rewritten",
        }
    return None


def audit_verify(
    *, chain: str | None = None, since: datetime.datetime | None = None
) -> VerifyResult:
    """Recompute every hash and link of one chain (or all) and report the first break.

    ``chain`` also takes the chains named under it (a datasource's sidecar chains).
    ``since`` starts each chain at its first event at or after that time (its link
    to the event before is taken on trust). Events dropped by retention are
    vouched for by the chain's retention anchor (the last seq and hash dropped).
    A sidecar chain must still hold the event its latest ``chain.anchored``
    names, with that hash, and its head must not be behind it.

    Reads one snapshot (repeatable read) when not inside a caller's transaction,
    so events ingested meanwhile are not taken for a head that moved.
    """
    nested = connection.in_atomic_block  # a caller's (a test's) transaction: its snapshot
    with transaction.atomic(), connection.cursor() as cursor:
        if not nested:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cursor.execute("SELECT chain, seq, hash FROM audit_chain_head")
        heads = {c: (s, h) for c, s, h in cursor.fetchall()}
        cursor.execute("SELECT chain, seq, hash FROM audit_chain_anchor")
        dropped = {c: (s, h) for c, s, h in cursor.fetchall()}
        anchors = _latest_anchors(cursor)
        names = set(heads) | set(anchors)  # a chain whose head was deleted is still named
        if chain is not None:
            names = {n for n in names if n == chain or n.startswith(chain + "/")} | {chain}
        chains = sorted(names)
        total = 0
        for name in chains:
            checked, first_broken = _verify_chain(
                cursor, name, heads.get(name), dropped.get(name), since
            )
            total += checked
            if first_broken is None and name in anchors:
                first_broken = _check_anchor(
                    cursor, name, anchors[name], heads.get(name), dropped.get(name)
                )
            if first_broken is not None:
                return VerifyResult(False, total, first_broken, len(chains))
    return VerifyResult(True, total, None, len(chains))


def audit_verify_run(*, alert_to: list[str] | None = None) -> AuditVerification:
    """Verify every chain, keep the result for the overview, and alert when broken:
    a log line, and a mail to ``alert_to`` (by default every active admin's address)."""
    started = timezone.now()
    result = audit_verify()
    run = AuditVerification.objects.create(
        ok=result.ok,
        checked=result.checked,
        chains=result.chains,
        first_broken=result.first_broken,
        finished_at=timezone.now(),
    )
    # auto_now_add stamped the end; the run began earlier.
    AuditVerification.objects.filter(pk=run.pk).update(started_at=started)
    run.started_at = started
    if not result.ok:
        if alert_to is None:
            alert_to = lookups().admin_emails()
        _alert_broken_chain(result.first_broken or {}, alert_to)
    return run


def _alert_broken_chain(first_broken: dict[str, Any], recipients: list[str]) -> None:
    where = (
        f"chain {first_broken.get('chain')} at seq {first_broken.get('seq')} "
        f"(event {first_broken.get('event_id') or '-'}): {first_broken.get('reason')}"
    )
    logger.error("audit trail verification FAILED: %s", where)
    recipients = sorted(set(recipients))
    if recipients:
        send_mail(
            subject="[Warden] audit trail verification failed",
            message=(
                "The audit trail's hash chain no longer verifies. First broken link: "
                f"{where}.\n\nRun `manage.py audit_verify` for details; treat this as a "
                "possible tampering incident."
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=recipients,
            fail_silently=True,
        )
