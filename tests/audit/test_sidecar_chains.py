"""One chain per sidecar, anchored into its datasource's chain.

Sidecars of one datasource append to chains of their own, so one's batch never
waits for another's; each sidecar chain's head is written into the datasource's
chain as a ``chain.anchored`` event, so truncating or rewriting a sidecar chain
below its latest anchor is caught by the real ``audit_verify`` even when the
attacker (a database superuser, trigger disabled) also rewinds the head row.
"""

from __future__ import annotations

import json
import threading
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.utils import timezone

from audit.chain import canonical_event, chain_hash, micros
from audit.models import AuditEvent, datasource_chain, sidecar_chain
from audit.services import _chain_append, _row_dict, _sidecar_row, audit_events_ingest, audit_verify
from audit.sink.trail import ANCHOR_TYPE, audit_chains_anchor
from governance import services
from tests.audit.conftest import statement_event

pytestmark = pytest.mark.django_db

_ROW_COLUMNS = (
    "event_id, occurred_at, received_at, chain, seq, source, type, actor, "
    "identity_name, identity_kind, identity_owner, datasource_id, environment, "
    "sidecar_id, client_addr, application_name, statement_kind, statement, fingerprint, "
    'tables, columns, classifications, masked_columns, action, outcome, "rows", '
    "duration_ms, risk, extra, prev_hash, hash"
)


@pytest.fixture
def two_sidecars(sidecar: Any, admin_user: Any) -> tuple[Any, Any]:
    """``sidecar`` and a second sidecar of the same datasource, with its token."""
    other, token = services.sidecar_register(
        actor=admin_user, datasource=sidecar.datasource, name="sc-audit-2"
    )
    second = type(sidecar)(obj=other, token=token, datasource=sidecar.datasource)
    return sidecar, second


def _ingest(sidecar: Any, count: int, **fields: Any) -> dict[str, Any]:
    return audit_events_ingest(
        sidecar_id=sidecar.obj.pk,
        datasource_id=sidecar.datasource.pk,
        events=[statement_event(**fields) for _ in range(count)],
    )


def _chain_of(sidecar: Any) -> str:
    return sidecar_chain(sidecar.datasource.pk, sidecar.obj.pk)


def _anchors(datasource_id: int) -> list[dict[str, Any]]:
    return [
        e.extra
        for e in AuditEvent.objects.filter(
            chain=datasource_chain(datasource_id), type=ANCHOR_TYPE
        ).order_by("seq")
    ]


def _as_attacker(*statements: tuple[str, list[Any]]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only")
        for sql, params in statements:
            cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only")


def _broken(chain: str) -> dict[str, Any]:
    result = audit_verify(chain=chain)
    assert not result.ok and result.first_broken is not None
    return result.first_broken


@pytest.mark.django_db
def test_each_sidecar_has_its_own_chain_anchored_into_the_datasources(
    two_sidecars: tuple[Any, Any],
) -> None:
    first, second = two_sidecars
    _ingest(first, 20)
    _ingest(second, 5)
    assert AuditEvent.objects.filter(chain=_chain_of(first), source="sidecar").count() == 20
    assert AuditEvent.objects.filter(chain=_chain_of(second), source="sidecar").count() == 5
    # Each sidecar chain counts its own seq from 1, and its head went into the
    # datasource's chain with the batch.
    last = AuditEvent.objects.get(chain=_chain_of(second), seq=5)
    assert {"chain": _chain_of(second), "seq": 5, "hash": last.hash} in _anchors(
        first.datasource.pk
    )
    anchor = AuditEvent.objects.get(
        chain=datasource_chain(first.datasource.pk),
        type=ANCHOR_TYPE,
        extra__chain=_chain_of(second),
    )
    assert anchor.source == "control_plane" and anchor.environment == "production"

    result = audit_verify(chain=datasource_chain(first.datasource.pk))
    assert result.ok, result.first_broken
    assert result.chains == 3 and result.checked >= 25
    out = StringIO()
    call_command("audit_verify", "--datasource", "crm-prod", stdout=out)
    assert out.getvalue().startswith("OK:") and "in 3 chain(s)" in out.getvalue()


@pytest.mark.django_db
def test_a_sidecar_cannot_forge_an_anchor(sidecar: Any) -> None:
    _ingest(sidecar, 1, type=ANCHOR_TYPE)
    forged = AuditEvent.objects.get(chain=_chain_of(sidecar), seq=1)
    assert forged.type == "sidecar.unknown" and forged.extra["claimed_type"] == ANCHOR_TYPE


@pytest.mark.django_db(transaction=True)
def test_sidecars_of_one_datasource_commit_in_parallel(two_sidecars: tuple[Any, Any]) -> None:
    """The first sidecar's batch stays uncommitted (its chain head locked) while the
    second's is stored and committed, with a lock timeout that would fail it had
    it waited. A second batch of the first sidecar does wait: one chain, one order."""
    first, second = two_sidecars
    _ingest(first, 1)  # both chains exist and are anchored once
    _ingest(second, 1)
    in_flight, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_batch() -> None:
        try:
            with transaction.atomic():
                _ingest(first, 50)
                in_flight.set()
                release.wait(30)
        except BaseException as exc:
            errors.append(exc)
            in_flight.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=slow_batch)
    thread.start()
    try:
        assert in_flight.wait(30)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")
            assert _ingest(second, 50)["accepted"] == 50
        with pytest.raises(Exception, match="lock timeout"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
            _ingest(first, 1)
    finally:
        release.set()
        thread.join(30)
    assert not errors, errors
    assert AuditEvent.objects.filter(chain=_chain_of(first)).count() == 51
    assert audit_verify().ok


@pytest.mark.django_db(transaction=True)
def test_an_anchor_is_skipped_not_waited_for_when_the_datasource_head_is_busy(
    sidecar: Any,
) -> None:
    """The datasource's head, locked by another transaction, would make sidecars
    queue again: intake stores the batch unanchored and the beat task anchors it."""
    _ingest(sidecar, 3)
    anchors_before = len(_anchors(sidecar.datasource.pk))
    connection.cursor().execute(
        "UPDATE audit_chain_head SET anchored_at = now() - interval '1 hour' WHERE chain = %s",
        [_chain_of(sidecar)],
    )  # an anchor is due
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(
                "SELECT 1 FROM audit_chain_head WHERE chain = %s FOR UPDATE",
                [datasource_chain(sidecar.datasource.pk)],
            )
            with transaction.atomic():
                with connection.cursor() as mine:
                    mine.execute("SET LOCAL lock_timeout = '1s'")
                assert _ingest(sidecar, 4)["accepted"] == 4
            cursor.execute("ROLLBACK")
    finally:
        other.close()
    assert len(_anchors(sidecar.datasource.pk)) == anchors_before
    assert audit_chains_anchor() == 1
    assert _anchors(sidecar.datasource.pk)[-1]["seq"] == 7
    assert audit_chains_anchor() == 0  # nothing moved since
    assert audit_verify().ok


@pytest.mark.django_db
def test_events_stored_before_sidecar_chains_still_verify(sidecar: Any) -> None:
    """An existing trail: sidecar events in the datasource's chain, as intake wrote
    them before migration 0007; new events then go to the sidecar's chain."""
    legacy = datasource_chain(sidecar.datasource.pk)
    context = {
        "chain": legacy,
        "datasource_id": sidecar.datasource.pk,
        "environment": "production",
        "sidecar_name": "sc-audit",
    }
    now = micros(timezone.now())
    rows = [_sidecar_row(statement_event(), received_us=now, context=context) for _ in range(10)]
    with transaction.atomic():
        _chain_append(legacy, rows)  # without anchor_into: the old write path
    _ingest(sidecar, 10)
    assert AuditEvent.objects.filter(chain=legacy, source="sidecar").count() == 10
    result = audit_verify(chain=legacy)
    assert result.ok and result.chains == 2, result.first_broken


# --- tampering, through the real audit_verify --------------------------------------------


@pytest.fixture
def anchored(two_sidecars: tuple[Any, Any]) -> str:
    """The first sidecar's chain: 20 events, anchored at 20, then 10 more unanchored
    (intake anchors at most every ANCHOR_INTERVAL), then anchored by the beat task."""
    first, second = two_sidecars
    _ingest(first, 20)
    _ingest(second, 3)
    _ingest(first, 10)
    chain = _chain_of(first)
    assert [a["seq"] for a in _anchors(first.datasource.pk) if a["chain"] == chain] == [20]
    assert audit_chains_anchor() == 1
    assert audit_verify().ok
    return chain


def test_tamper_edit_is_found(anchored: str) -> None:
    _as_attacker(
        ("UPDATE audit_event SET rows = 999 WHERE chain = %s AND seq = 12", [anchored]),
    )
    broken = _broken(anchored)
    assert (broken["chain"], broken["seq"]) == (anchored, 12) and "edited" in broken["reason"]
    with pytest.raises(CommandError, match=r"BROKEN: chain datasource:\d+/sidecar:\d+ at seq 12"):
        call_command("audit_verify", "--datasource", "crm-prod")


def test_tamper_delete_is_found(anchored: str) -> None:
    _as_attacker(("DELETE FROM audit_event WHERE chain = %s AND seq = 9", [anchored]))
    broken = _broken(anchored)
    assert broken["seq"] == 10 and broken["reason"] == "seq 9 is missing (deleted)"


def test_tamper_reorder_is_found(anchored: str) -> None:
    _as_attacker(
        (
            "UPDATE audit_event SET seq = CASE seq WHEN 4 THEN 5 ELSE 4 END "
            "WHERE chain = %s AND seq IN (4, 5)",
            [anchored],
        )
    )
    broken = _broken(anchored)
    assert broken["seq"] == 4 and "edited" in broken["reason"]


def test_tamper_truncated_tail_with_the_head_rewound_is_found(anchored: str) -> None:
    """The attack the head row alone cannot catch: delete the last events and move
    the head back to the new last one. The anchor names seq 30."""
    last_kept = AuditEvent.objects.get(chain=anchored, seq=25)
    _as_attacker(
        ("DELETE FROM audit_event WHERE chain = %s AND seq > 25", [anchored]),
        (
            "UPDATE audit_chain_head SET seq = 25, hash = %s, anchored_seq = 25 WHERE chain = %s",
            [last_kept.hash, anchored],
        ),
    )
    broken = _broken(anchored)
    assert broken["seq"] == 30 and "truncated" in broken["reason"]


def test_tamper_rewritten_chain_is_found(anchored: str) -> None:
    """A careful attacker edits seq 15 and recomputes every later hash and the head:
    every link checks out, but seq 30 no longer has the hash its anchor holds."""
    _as_attacker(
        ("UPDATE audit_event SET outcome = 'blocked' WHERE chain = %s AND seq = 15", [anchored])
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {_ROW_COLUMNS} FROM audit_event WHERE chain = %s AND seq >= 15 ORDER BY seq",
            [anchored],
        )
        rows = [_row_dict(values) for values in cursor.fetchall()]
    prev = rows[0]["prev_hash"]
    for row in rows:
        row["prev_hash"], row["hash"] = prev, chain_hash(prev, canonical_event(row))
        prev = row["hash"]
        _as_attacker(
            (
                "UPDATE audit_event SET prev_hash = %s, hash = %s WHERE chain = %s AND seq = %s",
                [row["prev_hash"], row["hash"], anchored, row["seq"]],
            )
        )
    connection.cursor().execute(
        "UPDATE audit_chain_head SET hash = %s WHERE chain = %s", [prev, anchored]
    )
    broken = _broken(anchored)
    assert broken["seq"] == 30 and "rewritten" in broken["reason"]


def test_tamper_whole_chain_and_head_deleted_is_found(anchored: str) -> None:
    _as_attacker(
        ("DELETE FROM audit_event WHERE chain = %s", [anchored]),
        ("DELETE FROM audit_chain_head WHERE chain = %s", [anchored]),
    )
    result = audit_verify()
    assert not result.ok and result.first_broken is not None
    assert result.first_broken["chain"] == anchored and "truncated" in result.first_broken["reason"]


def test_tamper_deleted_anchor_breaks_the_datasource_chain(anchored: str) -> None:
    datasource = anchored.rsplit("/", 1)[0]
    anchor = AuditEvent.objects.filter(chain=datasource, type=ANCHOR_TYPE).order_by("-seq")[0]
    _as_attacker(
        ("DELETE FROM audit_event WHERE chain = %s AND seq = %s", [datasource, anchor.seq])
    )
    broken = _broken(datasource)
    assert broken["chain"] == datasource


def test_tamper_edited_anchor_is_reported_not_a_crash(anchored: str) -> None:
    datasource = anchored.rsplit("/", 1)[0]
    anchor = AuditEvent.objects.filter(chain=datasource, type=ANCHOR_TYPE).order_by("-seq")[0]
    _as_attacker(
        (
            "UPDATE audit_event SET extra = %s::jsonb WHERE chain = %s AND seq = %s",
            [json.dumps({"chain": anchored, "seq": "many"}), datasource, anchor.seq],
        )
    )
    broken = _broken(datasource)
    assert (broken["chain"], broken["seq"]) == (datasource, anchor.seq)
    assert "edited" in broken["reason"]
