"""Tamper evidence: audit_verify finds an edited, deleted or reordered event.

The attacker is a database superuser who disables the append-only trigger first,
as they could; every test runs in a transaction that is rolled back.
"""

from __future__ import annotations

import datetime
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEvent, sidecar_chain
from audit.services import audit_events_ingest, audit_verify
from tests.audit.conftest import statement_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def chain(sidecar: Any) -> str:
    audit_events_ingest(
        sidecar_id=sidecar.obj.pk,
        datasource_id=sidecar.datasource.pk,
        events=[statement_event(rows=i) for i in range(20)],
    )
    return sidecar_chain(sidecar.datasource.pk, sidecar.obj.pk)


def _as_attacker(sql: str, params: list[Any]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only")


def _seq_of(chain: str, n: int) -> AuditEvent:
    return AuditEvent.objects.get(chain=chain, seq=n)


def test_untouched_chain_verifies(chain: str) -> None:
    result = audit_verify(chain=chain)
    assert result.ok and result.first_broken is None and result.checked >= 20
    out = StringIO()
    call_command("audit_verify", "--datasource", "crm-prod", stdout=out)
    assert out.getvalue().startswith("OK:")


def test_update_and_delete_are_refused_by_the_database(chain: str) -> None:
    for sql in (
        "UPDATE audit_event SET statement = 'x' WHERE chain = %s",
        "DELETE FROM audit_event WHERE chain = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [chain])
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("TRUNCATE audit_event")
    # Each partition too: PostgreSQL gives partitions the parent's row triggers only,
    # and TRUNCATE of one month, or of one environment's leaf, emptied it (a review's
    # finding). Both the partitions made with the schema and one made on demand.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT tableoid::regclass::text FROM audit_event WHERE chain = %s", [chain]
        )
        leaves = [r[0] for r in cursor.fetchall()]
        cursor.execute("SELECT audit_partition_ensure('2031-07-04', 'production')")
        cursor.execute("SELECT relid::text FROM pg_partition_tree('audit_event') WHERE level > 0")
        partitions = [r[0] for r in cursor.fetchall()]
    assert leaves and "audit_event_y2031m07_production" in partitions
    for table in {*leaves, *partitions}:
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(f'TRUNCATE "{table}"')
    assert AuditEvent.objects.filter(chain=chain).count() >= 20


def test_edited_row_is_found(chain: str) -> None:
    victim = _seq_of(chain, 7)
    _as_attacker(
        "UPDATE audit_event SET identity_name = 'someone-else' WHERE chain = %s AND seq = 7",
        [chain],
    )
    result = audit_verify(chain=chain)
    assert not result.ok
    assert result.first_broken == {
        "chain": chain,
        "seq": 7,
        "event_id": victim.event_id,
        "reason": "the event does not match its hash (edited)",
    }
    with pytest.raises(CommandError, match=r"BROKEN: chain .* at seq 7") as info:
        call_command("audit_verify", "--datasource", "crm-prod")
    assert info.value.returncode == 1


def test_edited_row_with_recomputed_hash_breaks_the_next_link(chain: str) -> None:
    """A careful attacker fixes the edited row's own hash; the next event gives it away."""
    from audit.chain import canonical_event, chain_hash
    from audit.services import _row_dict

    _as_attacker("UPDATE audit_event SET outcome = 'blocked' WHERE chain = %s AND seq = 7", [chain])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT event_id, occurred_at, received_at, chain, seq, source, type, actor, "
            "identity_name, identity_kind, identity_owner, datasource_id, environment, "
            "sidecar_id, client_addr, application_name, statement_kind, statement, fingerprint, "
            'tables, columns, classifications, masked_columns, action, outcome, "rows", '
            "duration_ms, risk, extra, prev_hash, hash FROM audit_event "
            "WHERE chain = %s AND seq = 7",
            [chain],
        )
        row = _row_dict(cursor.fetchone())
    forged = chain_hash(row["prev_hash"], canonical_event(row))
    _as_attacker("UPDATE audit_event SET hash = %s WHERE chain = %s AND seq = 7", [forged, chain])
    result = audit_verify(chain=chain)
    assert not result.ok and result.first_broken is not None
    assert result.first_broken["seq"] == 8
    assert "previous event" in result.first_broken["reason"]


def test_deleted_row_is_found(chain: str) -> None:
    _as_attacker("DELETE FROM audit_event WHERE chain = %s AND seq = 5", [chain])
    result = audit_verify(chain=chain)
    assert not result.ok and result.first_broken is not None
    assert result.first_broken["seq"] == 6
    assert result.first_broken["reason"] == "seq 5 is missing (deleted)"


def test_deleted_tail_is_found(chain: str) -> None:
    last = AuditEvent.objects.filter(chain=chain).order_by("-seq").first()
    assert last is not None
    _as_attacker("DELETE FROM audit_event WHERE chain = %s AND seq = %s", [chain, last.seq])
    result = audit_verify(chain=chain)
    assert not result.ok and result.first_broken is not None
    assert "deleted at the end" in result.first_broken["reason"]


def test_swapped_rows_are_found(chain: str) -> None:
    _as_attacker(
        "UPDATE audit_event SET seq = CASE seq WHEN 10 THEN 11 ELSE 10 END "
        "WHERE chain = %s AND seq IN (10, 11)",
        [chain],
    )
    result = audit_verify(chain=chain)
    assert not result.ok and result.first_broken is not None
    assert result.first_broken["seq"] == 10
    assert "edited" in result.first_broken["reason"]


def test_since_starts_mid_chain(chain: str) -> None:
    _as_attacker("DELETE FROM audit_event WHERE chain = %s AND seq = 2", [chain])
    tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    assert audit_verify(chain=chain, since=tomorrow).ok  # nothing that recent
    assert not audit_verify(chain=chain).ok
    out = StringIO()
    call_command("audit_verify", "--since", tomorrow.date().isoformat(), stdout=out)
    assert "OK" in out.getvalue()


def test_unknown_datasource_is_a_clear_error() -> None:
    with pytest.raises(CommandError, match="No datasource named 'nope'"):
        call_command("audit_verify", "--datasource", "nope")
    with pytest.raises(CommandError, match="not a date"):
        call_command("audit_verify", "--since", "yesterday")


def test_periodic_verification_records_and_alerts(
    chain: str, admin_user: Any, caplog: pytest.LogCaptureFixture, mailoutbox: list[Any]
) -> None:
    from audit.models import AuditVerification
    from audit.tasks import audit_verify_chains

    assert audit_verify_chains() is True
    run = AuditVerification.objects.latest()
    assert run.ok and run.finished_at is not None and run.checked >= 20 and run.chains >= 1
    assert mailoutbox == []

    _as_attacker("UPDATE audit_event SET rows = 999 WHERE chain = %s AND seq = 4", [chain])
    with caplog.at_level("ERROR", logger="audit.services"):
        assert audit_verify_chains() is False
    run = AuditVerification.objects.latest()
    assert not run.ok and run.first_broken is not None and run.first_broken["seq"] == 4
    assert any("verification FAILED" in r.getMessage() for r in caplog.records)
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == [admin_user.email]
    assert "seq 4" in mailoutbox[0].body
