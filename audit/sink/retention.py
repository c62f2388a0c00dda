"""How long the audit trail keeps events: retention settings and their enforcement.

Expired environment-month partitions are dropped whole, each chain anchored
first (its last dropped seq and hash), so verification still passes.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from collections.abc import Collection
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from audit.models import DEFAULT_RETENTION_DAYS, AuditRetention, ChangeAction
from audit.sink.history import change_record_create, object_snapshot
from audit.sink.lookups import lookups

logger = logging.getLogger("audit.services")  # the name operators' log routing knows


def _retention_days() -> tuple[dict[str, int], int]:
    days = dict(AuditRetention.objects.values_list("environment", "days"))
    default = days.get("", DEFAULT_RETENTION_DAYS)
    return days, default


def retention_horizon(environment: str, now: datetime.datetime) -> datetime.datetime:
    """The earliest time an event of ``environment`` may be stored at: the start of
    the oldest month retention keeps (a month goes once it ended more than the
    retention ago); anything earlier is in a month it drops at its next run."""
    days, default = _retention_days()
    cut = (now - datetime.timedelta(days=days.get(environment, default))).astimezone(datetime.UTC)
    return cut.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


MIN_RETENTION_DAYS = 31


@transaction.atomic
def audit_retention_set(
    *,
    actor: Any,
    environment: str,
    days: int | None,
    actor_is_admin: bool | None = None,
    environments: Collection[str] | None = None,
) -> AuditRetention | None:
    """Keep ``environment``'s events (``""``: the control plane's own) for ``days``; ``None``
    goes back to the default. Admins only, and recorded in history and in the trail: a
    shorter retention deletes events at the next hourly run, so it is never a silent edit.

    ``actor_is_admin`` and ``environments`` (every environment's name) are looked
    up in governance unless the caller passes them.
    """
    if actor_is_admin is None:
        actor_is_admin = lookups().is_admin(actor)
    if not actor_is_admin:
        raise PermissionDenied("Only admins may change how long the audit trail is kept.")
    if days is not None and days < MIN_RETENTION_DAYS:
        # A month partition is the unit dropped: less would drop the current month.
        raise ValidationError({"days": f"Keep events at least {MIN_RETENTION_DAYS} days."})
    row = AuditRetention.objects.select_for_update().filter(environment=environment).first()
    before = object_snapshot(row) if row is not None else None
    if days is None:
        if row is not None:
            pk = row.pk
            row.delete()
            change_record_create(
                actor=actor,
                action=ChangeAction.DELETE,
                obj=row,
                before=before,
                after=None,
                object_id=pk,
            )
        return None
    if environments is None:
        environments = lookups().environments()
    if environment and environment not in environments:
        raise ValidationError({"environment": f"Unknown environment: {environment}."})
    if row is None:
        row = AuditRetention(environment=environment)
    row.days = days
    row.full_clean()
    row.save()
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE if before is not None else ChangeAction.CREATE,
        obj=row,
        before=before,
        after=object_snapshot(row),
    )
    return row


def audit_retention_enforce(*, now: datetime.datetime | None = None) -> list[str]:
    """Drop every expired environment-month partition; anchor the chains first.

    A leaf (one environment's month) expires when its month ended more than that
    environment's retention ago; a month's DEFAULT leaf (control-plane events and
    any environment without a leaf) waits for the longest retention configured.
    Returns the names of the tables dropped.
    """
    now = now or timezone.now()
    days, default = _retention_days()
    longest = max([default, *days.values()])
    dropped: list[str] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT month.relname, leaf.relname, pg_get_expr(leaf.relpartbound, leaf.oid) "
            "FROM pg_inherits top "
            "JOIN pg_class month ON month.oid = top.inhrelid "
            "JOIN pg_inherits sub ON sub.inhparent = month.oid "
            "JOIN pg_class leaf ON leaf.oid = sub.inhrelid "
            "WHERE top.inhparent = 'audit_event'::regclass AND month.relname ~ '^audit_event_y' "
            "ORDER BY 1, 2"
        )
        leaves: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for month_name, leaf_name, bound in cursor.fetchall():
            leaves[month_name].append((leaf_name, bound))
        for month_name, month_leaves in sorted(leaves.items()):
            year, month = int(month_name[13:17]), int(month_name[18:20])
            month_end = datetime.datetime(
                year + month // 12, month % 12 + 1, 1, tzinfo=datetime.UTC
            )
            kept = 0
            for leaf_name, bound in month_leaves:
                if bound == "DEFAULT":
                    keep_days = longest
                else:
                    env = leaf_name[len(month_name) + 1 :]
                    keep_days = days.get(env, default)
                if month_end > now - datetime.timedelta(days=keep_days):
                    kept += 1
                    continue
                _anchor_and_drop(cursor, leaf_name, now)
                dropped.append(leaf_name)
            if kept == 0:
                cursor.execute(f'DROP TABLE "{month_name}"')
                dropped.append(month_name)
        # The rollup outlives no event it counts: kept as long as the longest retention.
        for rollup in ("audit_access_daily", "audit_activity_daily"):
            cursor.execute(
                f"DELETE FROM {rollup} WHERE day < %s",
                [(now - datetime.timedelta(days=longest)).date()],
            )
    if dropped:
        logger.info("audit retention dropped %s", ", ".join(dropped))
    return dropped


def _anchor_and_drop(cursor: Any, table: str, now: datetime.datetime) -> None:
    """Record the last (seq, hash) of each chain in ``table``, then drop it whole."""
    cursor.execute(
        "INSERT INTO audit_chain_anchor (chain, seq, hash, dropped_at) "
        f'SELECT DISTINCT ON (chain) chain, seq, hash, %s FROM "{table}" '
        "ORDER BY chain, seq DESC "
        "ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, "
        "dropped_at = EXCLUDED.dropped_at WHERE audit_chain_anchor.seq < EXCLUDED.seq",
        [now],
    )
    cursor.execute(f'DROP TABLE "{table}"')
