"""Ingestion through the real sidecar API into PostgreSQL: batches, idempotency, partitions."""

from __future__ import annotations

import datetime
import json
import threading
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.models import AuditEvent, AuditRetention, sidecar_chain
from audit.services import audit_events_ingest, audit_verify
from tests.audit.conftest import chain_rows, statement_event

pytestmark = pytest.mark.django_db


def _post(client: Client, token: str, events: list[dict[str, Any]]) -> Any:
    return client.post(
        "/api/v1/sidecar/audit",
        data=json.dumps({"events": events}),
        content_type="application/json",
        headers={"authorization": f"Bearer {token}"},
    )


def test_batch_is_stored_chained_and_idempotent(client: Client, sidecar: Any) -> None:
    events = [statement_event() for _ in range(50)]
    answer = _post(client, sidecar.token, events)
    assert answer.status_code == 202, answer.content
    assert answer.json() == {"accepted": 50, "duplicates": 0}

    # Re-sent after a lost reply, plus two new ones: only the new ones land.
    again = _post(client, sidecar.token, [*events[:10], *(statement_event() for _ in range(2))])
    assert again.json() == {"accepted": 2, "duplicates": 10}

    chain = sidecar_chain(sidecar.datasource.pk, sidecar.obj.pk)  # the sidecar's own
    rows = chain_rows(chain)
    assert [r[0] for r in rows] == list(range(1, 53))
    assert [r[1] for r in rows[:50]] == [e["id"] for e in events]
    assert all(rows[i][2] == rows[i - 1][3] for i in range(1, len(rows)))
    assert AuditEvent.objects.filter(chain=chain, source="sidecar").count() == 52
    assert audit_verify(chain=chain).ok


def test_datasource_comes_from_the_token_and_columns_are_mapped(
    client: Client, sidecar: Any
) -> None:
    event = statement_event(unexpected_flag=True)
    forged = statement_event(type="policy.change")
    _post(client, sidecar.token, [event, forged])
    impostor = AuditEvent.objects.get(event_id=forged["id"])
    assert impostor.type == "sidecar.unknown" and impostor.source == "sidecar"
    assert impostor.extra["claimed_type"] == "policy.change"
    stored = AuditEvent.objects.get(event_id=event["id"])
    assert stored.datasource_id == sidecar.datasource.pk
    assert stored.environment == "production"
    assert stored.sidecar_id == "sc-audit"
    assert stored.chain == f"datasource:{sidecar.datasource.pk}/sidecar:{sidecar.obj.pk}"
    assert stored.identity_name == "svc-billing" and stored.identity_owner == "admin"
    assert stored.statement_kind == "select" and stored.tables == ["public.customers"]
    assert stored.columns == ["public.customers.id", "public.customers.ssn"]
    assert stored.classifications == ["pii.ssn"]
    assert stored.rows == 3 and stored.duration_ms == 1.25 and stored.risk == 40
    assert stored.extra["revision"] == "r" * 64
    assert stored.extra["unexpected_flag"] is True
    assert "datasource" not in stored.extra and "sidecar" not in stored.extra
    assert abs(stored.occurred_at.timestamp() - event["ts"]) < 1e-5


def test_an_mcp_tool_call_is_stored_with_its_tool_in_the_same_chain(
    client: Client, sidecar: Any
) -> None:
    from sidecar.events import SCHEMA_VERSION

    ran = statement_event(application_name="mcp:claude-code", v=SCHEMA_VERSION)
    call = statement_event(
        type="mcp.call", tool="query", application_name="mcp:claude-code", v=SCHEMA_VERSION
    )
    answer = _post(client, sidecar.token, [ran, call])
    assert answer.status_code == 202, answer.content
    assert "unknown_keys" not in answer.json()
    stored = AuditEvent.objects.get(event_id=call["id"])
    assert stored.type == "mcp.call" and stored.extra["tool"] == "query"
    assert stored.chain == AuditEvent.objects.get(event_id=ran["id"]).chain
    assert audit_verify(chain=stored.chain).ok


def test_the_error_sqlstate_is_kept_and_nothing_else_in_its_place(
    client: Client, sidecar: Any
) -> None:
    failed = statement_event(error_sqlstate="42P01", outcome="error")
    smuggled = statement_event(error_sqlstate="SELECT '123-45-6789'")
    _post(client, sidecar.token, [failed, smuggled])
    assert AuditEvent.objects.get(event_id=failed["id"]).extra["error_sqlstate"] == "42P01"
    stored = AuditEvent.objects.get(event_id=smuggled["id"])
    assert "error_sqlstate" not in stored.extra
    assert stored.extra["invalid_fields"] == ["error_sqlstate"]
    assert audit_verify(chain=stored.chain).ok


def test_value_carrying_keys_are_dropped_at_any_depth(client: Client, sidecar: Any) -> None:
    event = statement_event(
        upstream_sql="SELECT '123-45-6789'",
        params=["123-45-6789"],
        values={"ssn": "123-45-6789"},
        note={"bind_values": ["123-45-6789"], "ok": 1},
        reasons=[{"code": "x", "literal": "123-45-6789"}],
    )
    _post(client, sidecar.token, [event])
    stored = AuditEvent.objects.get(event_id=event["id"])
    assert "123-45-6789" not in json.dumps(stored.extra)
    assert stored.extra["note"] == {"ok": 1}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM audit_event WHERE audit_event::text LIKE '%%123-45-6789%%'"
        )
        assert cursor.fetchone()[0] == 0


def test_malformed_fields_are_kept_as_well_as_possible(client: Client, sidecar: Any) -> None:
    event = statement_event(
        rows="many", risk=True, tables="public.customers", statement="SELECT 1\x00", ts=1.0
    )
    odd = statement_event(id="nul\x00-id", duration_ms=10**400, rows=2**70, identity=["x"])
    answer = _post(client, sidecar.token, [event, odd])
    assert answer.json() == {"accepted": 2, "duplicates": 0}
    odd_stored = AuditEvent.objects.get(event_id="nul\ufffd-id")
    assert odd_stored.duration_ms is None and odd_stored.rows is None
    assert odd_stored.identity_name == ""
    assert odd_stored.extra["invalid_fields"] == ["duration_ms", "identity", "rows"]
    stored = AuditEvent.objects.get(event_id=event["id"])
    assert stored.rows is None and stored.risk is None and stored.tables == []
    assert stored.extra["invalid_fields"] == ["risk", "rows", "tables"]
    assert stored.statement == "SELECT 1\ufffd"
    assert stored.extra["claimed_ts"] == 1.0  # a broken clock: stored at arrival
    assert audit_verify(chain=stored.chain).ok


def test_lone_surrogates_in_extra_are_replaced_not_a_failed_batch(
    client: Client, sidecar: Any
) -> None:
    # orjson refuses a lone surrogate escape; the standard parser reads it, and the
    # event must still land (a failed batch would jam the sidecar's spool).
    good, odd = statement_event(), statement_event(reasons=[{"code": "x"}])
    body = json.dumps({"events": [good, odd]}).replace('"code": "x"', '"\\udc00": "caf\\ud800"')
    answer = client.post(
        "/api/v1/sidecar/audit",
        data=body,
        content_type="application/json",
        headers={"authorization": f"Bearer {sidecar.token}"},
    )
    assert answer.status_code == 202 and answer.json()["accepted"] == 2, answer.content
    stored = AuditEvent.objects.get(event_id=odd["id"])
    assert stored.extra["reasons"] == [{"\ufffd": "caf\ufffd"}]
    assert audit_verify(chain=stored.chain).ok


def test_a_risk_beyond_the_integer_column_is_invalid_not_a_failed_batch(
    client: Client, sidecar: Any
) -> None:
    event = statement_event(risk=2**40)
    assert _post(client, sidecar.token, [event, statement_event()]).json()["accepted"] == 2
    stored = AuditEvent.objects.get(event_id=event["id"])
    assert stored.risk is None and stored.extra["invalid_fields"] == ["risk"]


def test_awkward_text_survives_the_copy_and_the_chain(client: Client, sidecar: Any) -> None:
    awkward = 'tab\there\nnew "quoted" back\\slash \\N \\. {braces},commas ünïcödé 🚀'
    event = statement_event(
        statement=awkward,
        application_name=awkward,
        tables=[awkward, "plain", ""],
        classifications=['pii."odd"'],
        reasons=[{"code": awkward, "n": 1.0, "big": 1e16, "small": 1.5e-7}],
    )
    assert _post(client, sidecar.token, [event]).json()["accepted"] == 1
    stored = AuditEvent.objects.get(event_id=event["id"])
    assert stored.statement == awkward and stored.application_name == awkward
    assert stored.tables == [awkward, "plain", ""]
    assert stored.classifications == ['pii."odd"']
    assert stored.extra["reasons"] == [{"code": awkward, "n": 1, "big": 10**16, "small": 1.5e-7}]
    assert audit_verify(chain=stored.chain).ok


def test_old_month_event_gets_its_partition(client: Client, sidecar: Any) -> None:
    AuditRetention.objects.create(environment="production", days=4000)  # 2024 is kept
    old = datetime.datetime(2024, 3, 15, 12, 0, tzinfo=datetime.UTC)
    event = statement_event(ts=old.timestamp())
    assert _post(client, sidecar.token, [event]).json()["accepted"] == 1
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM audit_event WHERE event_id = %s", [event["id"]]
        )
        assert cursor.fetchone()[0] == "audit_event_y2024m03_production"
        # A partition made on demand has the parent's indexes: who, when, datasource,
        # action, classification and table for the explorer, the chain for
        # verification. Exactly these: each one costs every ingested event.
        cursor.execute(
            "SELECT regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', '') "
            "FROM pg_index WHERE indrelid = 'audit_event_y2024m03_production'::regclass"
        )
        assert sorted(r[0] for r in cursor.fetchall()) == [
            "btree (action, occurred_at)",
            "btree (chain, seq)",
            "btree (datasource_id, occurred_at)",
            "btree (identity_name, occurred_at)",
            "btree (occurred_at, id) WHERE ((type = 'statement'::text) "
            "AND (outcome = ANY (ARRAY['blocked'::text, 'held'::text])))",
            "btree (occurred_at, id, environment)",
            "btree (type, occurred_at) WHERE (type <> 'statement'::text)",
            "gin (classifications)",
            "gin (tables)",
        ]


def test_rollup_counts_allowed_classified_statements(client: Client, sidecar: Any) -> None:
    # One row per set of classifications read and masked or not; a statement counts once.
    events = [
        statement_event(classifications=["pii.ssn", "pii.email"], masked_columns=[]),
        statement_event(classifications=["pii.email", "pii.ssn", "pii.ssn"], masked_columns=[]),
        statement_event(classifications=["pii.ssn"], masked_columns=[]),
        statement_event(classifications=["pii.ssn"], masked_columns=["public.c.ssn"]),
        statement_event(classifications=["pii.ssn"], action="block", outcome="blocked"),
        statement_event(type="session_start", classifications=[]),
    ]
    _post(client, sidecar.token, events)
    _post(client, sidecar.token, events)  # duplicates are not counted again
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT classifications, masked, identity_kind, sum(events) FROM audit_access_daily "
            "WHERE datasource_id = %s GROUP BY 1, 2, 3 ORDER BY 1, 2",
            [sidecar.datasource.pk],
        )
        assert cursor.fetchall() == [
            (["pii.email", "pii.ssn"], False, "service", 2),
            (["pii.ssn"], False, "service", 1),
            (["pii.ssn"], True, "service", 1),
        ]


def test_rollup_counts_statements_per_day_environment_and_outcome(
    client: Client, sidecar: Any
) -> None:
    yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    events = [
        statement_event(),
        statement_event(),
        statement_event(ts=yesterday.timestamp()),
        statement_event(action="block", outcome="blocked"),
        statement_event(action="review", outcome="held"),
        statement_event(type="session_start"),  # not a statement: not counted
    ]
    _post(client, sidecar.token, events)
    _post(client, sidecar.token, events)  # duplicates are not counted again
    today = datetime.datetime.now(datetime.UTC).date()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT day, environment, outcome, events FROM audit_activity_daily ORDER BY 1, 3"
        )
        assert cursor.fetchall() == [
            (yesterday.date(), "production", "allowed", 1),
            (today, "production", "allowed", 2),
            (today, "production", "blocked", 1),
            (today, "production", "held", 1),
        ]


def test_wrong_token_is_refused(client: Client, sidecar: Any) -> None:
    answer = _post(client, "not-a-token", [statement_event()])
    assert answer.status_code == 401 and "Bearer" in answer["WWW-Authenticate"]


def test_bad_bodies_are_refused_clearly(client: Client, sidecar: Any) -> None:
    auth = {"authorization": f"Bearer {sidecar.token}"}
    wrong_type = client.post(
        "/api/v1/sidecar/audit", data="x", content_type="text/plain", headers=auth
    )
    assert wrong_type.status_code == 415
    huge = json.dumps({"events": [statement_event(statement="x" * 5_000_000)]})
    too_big = client.post(
        "/api/v1/sidecar/audit", data=huge, content_type="application/json", headers=auth
    )
    assert too_big.status_code == 413
    too_many = _post(client, sidecar.token, [statement_event() for _ in range(1001)])
    assert too_many.status_code == 400 and "at most 1000" in too_many.json()["error"]["message"]
    assert client.get("/api/v1/sidecar/audit", headers=auth).status_code == 405
    assert not AuditEvent.objects.filter(
        source="sidecar", datasource_id=sidecar.datasource.pk
    ).exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_resend_stores_each_event_once(sidecar: Any) -> None:
    """Two deliveries of the same batch race (a retry while the first is in flight)."""
    events = [statement_event() for _ in range(200)]
    results: list[dict[str, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def deliver() -> None:
        from django.db import connections

        try:
            barrier.wait()
            results.append(
                audit_events_ingest(
                    sidecar_id=sidecar.obj.pk,
                    datasource_id=sidecar.datasource.pk,
                    events=events,
                )
            )
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(r["accepted"] for r in results) == [0, 0, 200]
    assert all(r["duplicates"] == 200 - r["accepted"] for r in results)
    chain = sidecar_chain(sidecar.datasource.pk, sidecar.obj.pk)
    seqs = [r[0] for r in chain_rows(chain)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert AuditEvent.objects.filter(chain=chain, source="sidecar").count() == 200
    assert audit_verify(chain=chain).ok


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))
    )
)
def test_array_literal_reads_back_as_the_list(items: list[str]) -> None:
    from audit.services import _array_literal

    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text[]", [_array_literal(items)])
        assert cursor.fetchone()[0] == items
