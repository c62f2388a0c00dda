"""Retention drops whole expired partitions, anchors the chains, and verification still passes."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.db import connection

from audit.models import AuditEvent, AuditRetention, ChainAnchor, sidecar_chain
from audit.services import (
    audit_events_ingest,
    audit_partitions_prepare,
    audit_retention_enforce,
    audit_verify,
)
from tests.audit.conftest import statement_event

pytestmark = pytest.mark.django_db

OLD = datetime.datetime(2024, 3, 15, tzinfo=datetime.UTC)
LESS_OLD = datetime.datetime(2024, 4, 15, tzinfo=datetime.UTC)


def _tables() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname FROM pg_class WHERE relname ~ '^audit_event_y2024'")
        return {r[0] for r in cursor.fetchall()}


def _ingest(sidecar: Any, *events: dict[str, Any]) -> None:
    audit_events_ingest(
        sidecar_id=sidecar.obj.pk, datasource_id=sidecar.datasource.pk, events=list(events)
    )


def test_expired_month_is_dropped_and_the_chain_still_verifies(sidecar: Any) -> None:
    chain = sidecar_chain(sidecar.datasource.pk, sidecar.obj.pk)
    # Kept long enough for 2024's events to be stored in their months at all.
    retention = AuditRetention.objects.create(environment="production", days=4000)
    old = [statement_event(ts=OLD.timestamp() + i) for i in range(5)]
    _ingest(sidecar, *old)
    _ingest(sidecar, statement_event(ts=LESS_OLD.timestamp()))
    _ingest(sidecar, *(statement_event() for _ in range(3)))
    # A late arrival from the old month, after newer events: its seq is above theirs.
    _ingest(sidecar, statement_event(ts=OLD.timestamp() + 99))
    _ingest(sidecar, statement_event())
    assert {"audit_event_y2024m03_production", "audit_event_y2024m04_production"} <= _tables()
    last_old = AuditEvent.objects.filter(chain=chain, occurred_at__lt=LESS_OLD).order_by("-seq")[0]

    # Production keeps 400 days; 2024-03 ended long before, 2024-04 too, so make
    # the cut-off fall between them by pretending it is now a later day.
    retention.days = 400
    retention.save()
    now = datetime.datetime(2025, 5, 10, tzinfo=datetime.UTC)
    dropped = audit_retention_enforce(now=now)
    assert "audit_event_y2024m03_production" in dropped
    assert "audit_event_y2024m04_production" not in dropped
    assert "audit_event_y2024m03_production" not in _tables()
    assert not AuditEvent.objects.filter(chain=chain, occurred_at__lt=LESS_OLD).exists()

    with connection.cursor() as cursor:  # the rollup of 2024-03 went with it
        cursor.execute(
            "SELECT min(day) FROM audit_access_daily WHERE datasource_id = %s",
            [sidecar.datasource.pk],
        )
        assert cursor.fetchone()[0] == LESS_OLD.date()
        cursor.execute("SELECT min(day) FROM audit_activity_daily")
        assert cursor.fetchone()[0] == LESS_OLD.date()
    anchor = ChainAnchor.objects.get(chain=chain)
    assert (anchor.seq, anchor.hash) == (last_old.seq, last_old.hash)
    result = audit_verify(chain=chain)
    assert result.ok, result.first_broken

    # Deleting a retained event is still found, above the anchor as below it.
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only")
        cursor.execute(
            "DELETE FROM audit_event WHERE chain = %s AND seq = %s", [chain, anchor.seq + 1]
        )
        cursor.execute("ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only")
    assert not audit_verify(chain=chain).ok


def test_short_retention_drops_only_that_environment(sidecar: Any, admin_user: Any) -> None:
    from audit.services import audit_control_event
    from governance.models import Environment

    AuditRetention.objects.create(environment="production", days=4000)
    _ingest(sidecar, statement_event(ts=OLD.timestamp()))
    staging = Environment.objects.get(name="staging")
    with connection.cursor() as cursor:
        cursor.execute("SELECT audit_partition_ensure(%s, %s)", [OLD, staging.name])
    audit_control_event(action="auth.sign_in", actor=admin_user)  # control-plane chain
    AuditRetention.objects.create(environment="staging", days=31)
    dropped = audit_retention_enforce()
    assert "audit_event_y2024m03_staging" in dropped
    assert "audit_event_y2024m03_production" not in dropped
    assert "audit_event_y2024m03_default" not in dropped  # waits for the longest retention
    assert audit_verify().ok


def test_partitions_are_prepared_ahead() -> None:
    now = datetime.datetime(2031, 12, 20, tzinfo=datetime.UTC)
    audit_partitions_prepare(months_ahead=2, now=now)
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname FROM pg_class WHERE relname ~ '^audit_event_y203[12]m'")
        names = {r[0] for r in cursor.fetchall()}
    for month in ("y2031m12", "y2032m01", "y2032m02"):
        assert f"audit_event_{month}_production" in names
        assert f"audit_event_{month}_default" in names
    assert "audit_event_y2032m03" not in names


def test_an_event_dated_before_retention_is_stored_when_received(sidecar: Any) -> None:
    """A review's finding: an event's own ``ts`` chose its month. Dated before its
    environment's retention (a broken clock, or a sidecar token's holder), it went into
    a month that retention drops at its next run, unseen; and one batch naming some
    300 past months made ~900 tables, each under a lock every audit read and write
    waits for. Now it is stored at the time it was received, its claim kept."""
    AuditRetention.objects.create(environment="production", days=31)
    before = _tables()
    now = datetime.datetime.now(datetime.UTC)
    months = [datetime.datetime(2001 + i // 12, i % 12 + 1, 15, tzinfo=datetime.UTC)
              for i in range(0, 300, 7)]  # fmt: skip
    backdated = [statement_event(ts=m.timestamp()) for m in months]
    recent = statement_event(ts=(now - datetime.timedelta(days=20)).timestamp())
    # Older than the 31 days, in the month retention still keeps (it drops a month
    # once the month ended 31 days ago): its own time.
    cut = now - datetime.timedelta(days=31)
    kept_month = cut.replace(day=1, hour=1, minute=0, second=0, microsecond=0)
    oldest_kept = statement_event(ts=kept_month.timestamp())
    _ingest(sidecar, *backdated, recent, oldest_kept)
    assert _tables() == before  # no month of 2024 made for them
    with connection.cursor() as cursor:  # nor of any earlier year
        cursor.execute("SELECT count(*) FROM pg_class WHERE relname ~ '^audit_event_y20(0|1)'")
        assert cursor.fetchone()[0] == 0
    for event, month in zip(backdated, months, strict=True):
        stored = AuditEvent.objects.get(event_id=event["id"])
        assert abs((stored.occurred_at - now).total_seconds()) < 60
        assert stored.extra["claimed_ts"] == month.timestamp()
    kept = AuditEvent.objects.get(event_id=recent["id"])
    assert abs((kept.occurred_at - now).total_seconds() - -20 * 86400) < 60  # its own ts
    assert "claimed_ts" not in kept.extra
    oldest = AuditEvent.objects.get(event_id=oldest_kept["id"])
    assert oldest.occurred_at == kept_month and "claimed_ts" not in oldest.extra
    audit_retention_enforce()  # the next run keeps them: none is in an expired month
    assert all(AuditEvent.objects.filter(event_id=e["id"]).exists() for e in backdated)
    assert audit_verify().ok
