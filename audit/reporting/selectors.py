"""Read paths of the audit trail's pages (configuration history's are ``audit.sink.history``'s:
governance reads them)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404

from audit.models import AuditEvent
from governance.permissions import Role, user_role

# --- the audit trail -----------------------------------------------------------------

AUDIT_READERS = frozenset({Role.ADMIN, Role.SECURITY, Role.AUDITOR})


def audit_can_view(user: Any) -> bool:
    """Whether user may read the audit trail (admin, security, auditor)."""
    return user_role(user) in AUDIT_READERS


@dataclass(frozen=True)
class AuditFilters:
    """What the explorer, exports and reports narrow the trail by; empty means any."""

    identity: str = ""
    identity_kind: str = ""
    datasource_id: int | None = None
    environment: str = ""
    action: str = ""
    outcome: str = ""
    type: str = ""
    classification: str = ""
    table: str = ""
    # "classified": statements that read classified data; "raw": of those, the ones
    # where nothing was masked; "masked": the ones where something was.
    reads: str = ""
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    q: str = ""
    # "mcp": only what AI agents did through the sidecar's MCP server (their tool
    # calls and the statements those ran, under application_name mcp:<client>).
    channel: str = ""


MCP_APPLICATION_PREFIX = "mcp:"


READS = {
    "classified": "Read classified data",
    "raw": "Read classified data raw",
    "masked": "Read classified data masked",
}


def _filtered(filters: AuditFilters) -> QuerySet[AuditEvent]:
    qs = AuditEvent.objects.all()
    exact = {
        "identity_name": filters.identity,
        "identity_kind": filters.identity_kind,
        "environment": filters.environment,
        "action": filters.action,
        "outcome": filters.outcome,
        "type": filters.type,
    }
    qs = qs.filter(**{k: v for k, v in exact.items() if v})
    if filters.datasource_id is not None:
        qs = qs.filter(datasource_id=filters.datasource_id)
    if filters.classification:
        qs = qs.filter(classifications__contains=[filters.classification])
    if filters.table:
        qs = qs.filter(tables__contains=[filters.table])
    if filters.reads in READS:
        qs = qs.exclude(classifications=[])
        if filters.reads == "raw":
            qs = qs.filter(masked_columns=[])
        elif filters.reads == "masked":
            qs = qs.exclude(masked_columns=[])
    if filters.since is not None:
        qs = qs.filter(occurred_at__gte=filters.since)
    if filters.until is not None:
        qs = qs.filter(occurred_at__lt=filters.until)
    if filters.q:
        qs = qs.filter(statement__icontains=filters.q)
    if filters.channel == "mcp":
        qs = qs.filter(Q(type="mcp.call") | Q(application_name__startswith=MCP_APPLICATION_PREFIX))
    return qs


def _cursor_encode(event: AuditEvent) -> str:
    micros = int(event.occurred_at.timestamp()) * 1_000_000 + event.occurred_at.microsecond
    return f"{micros}.{event.id}"


def _cursor_decode(cursor: str) -> tuple[datetime.datetime, int]:
    try:
        micros_text, id_text = cursor.split(".", 1)
        micros, event_pk = int(micros_text), int(id_text)
        at = datetime.datetime.fromtimestamp(micros // 1_000_000, datetime.UTC).replace(
            microsecond=micros % 1_000_000
        )
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError("Not a valid page cursor.") from exc
    return at, event_pk


def audit_events_search(
    *, user: Any, filters: AuditFilters, after: str | None = None, limit: int = 50
) -> tuple[list[AuditEvent], str | None]:
    """One page of events, newest first, and the cursor of the next page (None at the end).

    Keyset pagination on (occurred_at, id), so page 1,000 costs what page 1 does.
    ``after`` is a cursor from a previous page; a malformed one raises ValueError.
    Only admin, security and auditor may read the trail (PermissionDenied otherwise).
    """
    if not audit_can_view(user):
        raise PermissionDenied("Your role does not allow reading the audit trail.")
    limit = max(1, min(int(limit), 1000))
    qs = _filtered(filters)
    if after:
        at, event_pk = _cursor_decode(after)
        # ``occurred_at <= at`` bounds the index range scan; the OR alone cannot,
        # and deep pages would then scan every newer row first.
        qs = qs.filter(occurred_at__lte=at).filter(
            Q(occurred_at__lt=at) | Q(occurred_at=at, id__lt=event_pk)
        )
    events = list(qs.order_by("-occurred_at", "-id")[: limit + 1])
    more = len(events) > limit
    events = events[:limit]
    return events, (_cursor_encode(events[-1]) if more and events else None)


# --- the audit trail: what the explorer, exports and reports add ------------------------


def require_audit_reader(user: Any) -> None:
    if not audit_can_view(user):
        raise PermissionDenied("Your role does not allow reading the audit trail.")


def audit_events_iter(
    *, user: Any, filters: AuditFilters, batch: int = 1000
) -> Iterator[AuditEvent]:
    """Every matching event, newest first, fetched in keyset batches (never all at once)."""
    require_audit_reader(user)
    return _events_iter(user=user, filters=filters, batch=batch)


def _events_iter(*, user: Any, filters: AuditFilters, batch: int) -> Iterator[AuditEvent]:
    cursor: str | None = None
    while True:
        events, cursor = audit_events_search(user=user, filters=filters, after=cursor, limit=batch)
        yield from events
        if cursor is None:
            return


def audit_event_get(*, user: Any, pk: Any, at_micros: Any = None) -> AuditEvent:
    """One event by its id, for a reader of the trail; 404 when there is none.

    ``at_micros`` (its ``occurred_at`` in µs since the epoch, as event links carry
    it) narrows the lookup to one partition's primary key; without it every
    partition is searched for the id, which is slow on a large trail.
    """
    require_audit_reader(user)
    from audit.sink.chain import from_micros

    try:
        qs = AuditEvent.objects.filter(id=int(pk))
        if at_micros not in (None, ""):
            qs = qs.filter(occurred_at=from_micros(int(at_micros)))
        event = qs.first()
    except (TypeError, ValueError, OverflowError):
        event = None
    if event is None:
        raise Http404("No such audit event.")
    return event


@dataclass(frozen=True)
class EventProof:
    """Whether one event's place in its chain checks out, and the links to show."""

    event: AuditEvent
    prev: AuditEvent | None
    next: AuditEvent | None
    recomputed_hash: str
    hash_ok: bool  # the stored hash is what the stored content hashes to
    prev_ok: bool | None  # the previous event's hash is this one's prev_hash (None: no previous)
    next_ok: bool | None  # the next event's prev_hash is this one's hash (None: no next yet)

    @property
    def ok(self) -> bool:
        return self.hash_ok and self.prev_ok is not False and self.next_ok is not False


def audit_event_proof(*, event: AuditEvent) -> EventProof:
    """Recompute ``event``'s hash and check the links to its neighbours in its chain.

    A first event (or the first after retention) has no previous row; its
    ``prev_hash`` is then checked by ``audit_verify`` against the genesis or the
    retention anchor, not here.
    """
    from audit.sink.chain import CHAINED_FIELDS, canonical_event, chain_hash

    around = (event.seq - 1, event.seq + 1)
    neighbours = {e.seq: e for e in AuditEvent.objects.filter(chain=event.chain, seq__in=around)}
    prev, nxt = neighbours.get(event.seq - 1), neighbours.get(event.seq + 1)
    row = {name: getattr(event, name) for name in CHAINED_FIELDS}
    recomputed = chain_hash(event.prev_hash, canonical_event(row))
    return EventProof(
        event=event,
        prev=prev,
        next=nxt,
        recomputed_hash=recomputed,
        hash_ok=recomputed == event.hash,
        prev_ok=None if prev is None else prev.hash == event.prev_hash,
        next_ok=None if nxt is None else nxt.prev_hash == event.hash,
    )


# --- event types ----------------------------------------------------------------------

# The distinct stored types other than statements, one index probe per type (a loose
# index scan on the partial index audit_event_type_idx, which holds exactly those
# rows), so it costs a few milliseconds however long the trail.
_STORED_TYPES = """
WITH RECURSIVE found(type) AS (
    (SELECT type FROM audit_event WHERE type <> 'statement' ORDER BY type LIMIT 1)
    UNION ALL
    SELECT (SELECT e.type FROM audit_event e
            WHERE e.type <> 'statement' AND e.type > found.type ORDER BY e.type LIMIT 1)
    FROM found WHERE found.type IS NOT NULL
)
SELECT type FROM found WHERE type IS NOT NULL
"""


def audit_event_types(*, user: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """The explorer's event filter: every type the contract and the control plane
    declare, and any other stored, as (group, [(type, label)])."""
    from django.db import connection

    from audit.sink.kinds import event_label, event_type_groups

    require_audit_reader(user)
    with connection.cursor() as cursor:
        cursor.execute(_STORED_TYPES)
        stored = frozenset(row[0] for row in cursor.fetchall())
    return [
        (group, [(kind, event_label(kind)) for kind in kinds])
        for group, kinds in event_type_groups(stored)
    ]
