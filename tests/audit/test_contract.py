"""The audit event contract (sidecar/events.py) and the intake that derives from it.

A real sidecar's spool holds only declared keys, each of its declared type; the
chain hashes the contract's columns; the intake refuses an unknown major version
and a versioned event that contradicts a declared type, naming the key or the
version and never the value, and keeps and counts the keys it does not know.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from audit.models import AuditEvent, datasource_chain
from audit.sink import chain, intake, trail
from audit.sink.intake import EventRejected, audit_events_ingest
from sidecar import events as contract
from tests.audit.conftest import chain_rows, statement_event
from tests.sidecar.proxy.conftest import (
    build_bundle,
    each_relay_where_used,
    start_sidecar,
    upstream,  # noqa: F401 - the scratch database the sidecar fronts
    wait_for,
)

# A sidecar of each relay writes the events checked here; the tests that need no
# sidecar (the contract itself, the intake) run once.
relay = each_relay_where_used()

# The intake tests each register a sidecar of the demo policy, made once for the module.
pytestmark = pytest.mark.usefixtures("policy_once")

# --- the contract itself ---------------------------------------------------------------


def test_the_chain_hashes_the_contracts_columns_and_they_are_the_models() -> None:
    assert chain.CHAINED_FIELDS is contract.CHAINED_FIELDS
    stored = {f.column for f in AuditEvent._meta.concrete_fields}
    assert set(contract.CHAINED_FIELDS) == stored - {"id", "prev_hash", "hash"}
    assert len(set(contract.CHAINED_FIELDS)) == len(contract.CHAINED_FIELDS)
    assert {f.column for f in contract.FIELDS if f.column} <= set(contract.CHAINED_FIELDS)


def test_the_intake_maps_every_declared_key_and_no_other() -> None:
    declared = {f.name for f in contract.FIELDS}
    assert declared == intake._COLUMN_KEYS | intake._KNOWN_EXTRA
    assert not intake._COLUMN_KEYS & intake._KNOWN_EXTRA
    for key, column in {**intake._TEXT_COLUMNS, **intake._ARRAY_COLUMNS}.items():
        assert contract.FIELDS_BY_NAME[key].column == column
    assert intake._SIDECAR_TYPES == contract.EVENT_TYPES
    assert {"id", "type", "ts"} == contract.REQUIRED_FIELDS


def test_the_version_is_major_dot_minor() -> None:
    assert contract.parse_version(contract.SCHEMA_VERSION) == (1, 2)
    assert (contract.SCHEMA_MAJOR, contract.SCHEMA_MINOR) == (1, 2)
    for bad in ("1", "1.", ".1", "v1.0", "1.0.0", "\uff11.0", 1.0, None):
        with pytest.raises(ValueError):
            contract.parse_version(bad)


# --- what a real sidecar writes --------------------------------------------------------


@pytest.fixture(scope="module")
def spooled(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:  # noqa: F811
    """The events a real sidecar spools for statements of every outcome and a bad login."""
    workdir = tmp_path_factory.mktemp("contract-sidecar")
    sidecar = start_sidecar(workdir, upstream, build_bundle(urlsplit(upstream).path.lstrip("/")))
    try:
        with psycopg.connect(sidecar.dsn(application_name="contract"), autocommit=True) as conn:
            for sql, params in [
                ("SELECT id, email, ssn FROM customers", None),  # masked
                ("SELECT name FROM customers WHERE id = %s", [1]),  # extended protocol
                ("SELECT 1; SELECT 2", None),  # several statements: per-statement facts
                ("SELECT * FROM no_such_table", None),  # an upstream error: its SQLSTATE
                ("DROP TABLE notes", None),  # blocked
                ("DELETE FROM notes", None),  # held for review (no approvals configured)
            ]:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(sql, params)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(sidecar.dsn(token="wdn_alice_" + "00" * 16), connect_timeout=5)

        def enough() -> list[dict[str, Any]]:
            found = sidecar.events()
            types = {e.get("type") for e in found}
            ends = [e for e in found if e.get("type") == "session_end"]
            done = {"login_failed", "session_start", "statement"} <= types and ends
            return found if done else []

        found = wait_for(enough, timeout=20)
        assert found, f"the sidecar spooled too little:\n{sidecar.log()[-2000:]}"
        return list(found)
    finally:
        sidecar.stop()


def test_every_key_a_sidecar_writes_is_declared_with_its_type(
    spooled: list[dict[str, Any]],
) -> None:
    seen: set[str] = set()
    for event in spooled:
        undeclared = set(event) - set(contract.FIELDS_BY_NAME)
        assert not undeclared, f"{event.get('type')} event carries undeclared keys {undeclared}"
        for key, value in event.items():
            field = contract.FIELDS_BY_NAME[key]
            assert field.accepts(value), f"{event.get('type')}.{key}: not {field.value_type}"
        assert event.keys() >= contract.REQUIRED_FIELDS
        assert event.get(contract.VERSION_KEY) == contract.SCHEMA_VERSION
        seen |= event.keys()
    # The run reached the keys that only some events carry.
    assert {"statements", "error_sqlstate", "masked_columns", "session_state"} <= seen


def test_the_intake_takes_a_real_sidecars_events_without_unknown_keys(
    spooled: list[dict[str, Any]],
) -> None:
    unknown: Counter[str] = Counter()
    context = {
        "chain": "datasource:1",
        "datasource_id": 1,
        "environment": "production",
        "sidecar_name": "sc",
    }
    for index, event in enumerate(spooled):
        intake._event_check(index, event)
        row = intake._sidecar_row(event, received_us=10**15, context=context, unknown=unknown)
        assert "invalid_fields" not in row["extra"], (event["type"], row["extra"])
        assert row["type"] == event["type"]
    assert unknown == Counter()


# --- versions and types at the intake --------------------------------------------------


def _ingest(sidecar: Any, events: list[dict[str, Any]]) -> dict[str, Any]:
    return audit_events_ingest(
        sidecar_id=sidecar.obj.pk, datasource_id=sidecar.datasource.pk, events=events
    )


def _sidecar_events(sidecar: Any) -> int:
    return AuditEvent.objects.filter(source="sidecar", datasource_id=sidecar.datasource.pk).count()


@pytest.mark.django_db
def test_a_missing_version_is_major_1_and_a_known_minor_is_taken(sidecar: Any) -> None:
    events = [statement_event(), statement_event(v="1.0"), statement_event(v="1.3")]
    assert _ingest(sidecar, events) == {"accepted": 3, "duplicates": 0}
    stored = AuditEvent.objects.get(event_id=events[1]["id"])
    # The version is checked at intake, not stored: the row is in this control plane's schema.
    assert "v" not in stored.extra and stored.rows == 3


@pytest.mark.django_db
@pytest.mark.parametrize("version", ["2.0", "0.9", "10.1"])
def test_an_unknown_major_version_refuses_the_batch_naming_it(sidecar: Any, version: str) -> None:
    batch = [statement_event(v="1.0"), statement_event(v=version)]
    with pytest.raises(EventRejected) as refused:
        _ingest(sidecar, batch)
    assert refused.value.code == "unsupported_version" and refused.value.status == 400
    assert f"version {version} is not supported" in refused.value.message
    assert "events[1]" in refused.value.message and "major version 1" in refused.value.message
    assert _sidecar_events(sidecar) == 0  # nothing of a refused batch is stored


@pytest.mark.django_db
@pytest.mark.parametrize("version", [1, 1.0, None, "one", "1", "1.0.0", ""])
def test_a_malformed_version_is_refused(sidecar: Any, version: Any) -> None:
    with pytest.raises(EventRejected) as refused:
        _ingest(sidecar, [statement_event(v=version)])
    assert refused.value.code == "invalid_version"
    assert '"v" must be a "major.minor" string' in refused.value.message
    assert _sidecar_events(sidecar) == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("rows", "123-45-6789", "integer or null, not string"),
        ("risk", True, "integer or null, not boolean"),
        ("duration_ms", "slow", "number or null, not string"),
        ("identity", ["123-45-6789"], "string or null, not list"),
        ("statement", {"sql": "SELECT '123-45-6789'"}, "string or null, not object"),
        ("tables", "public.customers", "list of strings or null, not string"),
        ("classifications", ["pii.ssn", 123456789], "a list holding something else"),
        ("reasons", "123-45-6789", "list or null, not string"),
        ("ts", "123456789", "number, not string"),
        ("type", None, "string, not null"),
        # Claims and keys kept in ``extra`` are checked in the same pass as the columns.
        ("sidecar", 123456789, "string or null, not number"),
        ("tables_read", ["public.customers", 123456789], "a list holding something else"),
        ("session_state", "123-45-6789", "object or null, not string"),
        ("error_sqlstate", 123456789, "string or null, not number"),
    ],
)
def test_a_value_contradicting_its_declared_type_is_refused_naming_the_key_only(
    sidecar: Any, key: str, value: Any, expected: str
) -> None:
    with pytest.raises(EventRejected) as refused:
        _ingest(sidecar, [statement_event(), statement_event(v="1.0", **{key: value})])
    message = refused.value.message
    assert refused.value.code == "type_mismatch"
    assert message.startswith(f"events[1]: {key!r} must be ") and expected in message
    assert "123" not in message and "SELECT" not in message and "slow" not in message
    assert _sidecar_events(sidecar) == 0


@pytest.mark.django_db
def test_a_versioned_event_needs_its_required_keys(sidecar: Any) -> None:
    event = statement_event(v="1.0")
    del event["type"]
    with pytest.raises(EventRejected, match=r"events\[0\]: 'type' is required"):
        _ingest(sidecar, [event])


@pytest.mark.django_db
@pytest.mark.parametrize(
    "changes", [{"id": "x" * 65}, {"id": 7}, {"ts": None}, {"type": 7}, {"type": None}]
)
def test_an_event_without_a_usable_id_ts_or_type_is_refused_in_any_version(
    sidecar: Any, changes: dict[str, Any]
) -> None:
    for version in ({}, {"v": "1.0"}):
        with pytest.raises(EventRejected, match=r"^events\[1\]: "):
            _ingest(sidecar, [statement_event(), statement_event(**version, **changes)])
    assert _sidecar_events(sidecar) == 0


@pytest.mark.django_db
def test_unversioned_events_keep_the_lenient_reading(sidecar: Any) -> None:
    """Sidecars deployed before the version: a bad field is stored empty and named,
    never a refused batch (their spool would jam with no one to fix them)."""
    event = statement_event(rows="many")
    assert _ingest(sidecar, [event])["accepted"] == 1
    assert AuditEvent.objects.get(event_id=event["id"]).extra["invalid_fields"] == ["rows"]


@pytest.mark.django_db
def test_unknown_keys_are_kept_counted_and_logged_by_name_only(
    sidecar: Any, caplog: pytest.LogCaptureFixture
) -> None:
    intake._unknown_logged.clear()
    events = [
        statement_event(v="1.4", plan_cost=12.5, plan_nodes=["Seq Scan"]),
        statement_event(v="1.4", plan_cost=3.0),
        statement_event(plan_secret_values="123-45-6789"),  # value-carrying: dropped, counted
    ]
    before = intake.UNKNOWN_KEYS_RECEIVED["plan_cost"]
    with caplog.at_level(logging.WARNING, logger="audit.sink.intake"):
        answer = _ingest(sidecar, events)
        again = _ingest(sidecar, [statement_event(v="1.4", plan_cost=1.0)])
    assert answer == {
        "accepted": 3,
        "duplicates": 0,
        "unknown_keys": {"plan_cost": 2, "plan_nodes": 1, "plan_secret_values": 1},
    }
    assert again["unknown_keys"] == {"plan_cost": 1}
    assert intake.UNKNOWN_KEYS_RECEIVED["plan_cost"] == before + 3
    stored = AuditEvent.objects.get(event_id=events[0]["id"])
    assert stored.extra["plan_cost"] == 12.5 and stored.extra["plan_nodes"] == ["Seq Scan"]
    assert "plan_secret_values" not in AuditEvent.objects.get(event_id=events[2]["id"]).extra
    logged = [r.getMessage() for r in caplog.records if r.name == "audit.sink.intake"]
    assert len(logged) == 1, logged  # once per sidecar and key, not per batch
    assert "sc-audit" in logged[0] and "plan_cost, plan_nodes, plan_secret_values" in logged[0]
    assert "123-45-6789" not in logged[0] and "12.5" not in logged[0]
    assert chain_rows(datasource_chain(sidecar.datasource.pk))


@pytest.mark.django_db
def test_the_sidecar_is_told_over_http_which_version_was_refused(client: Any, sidecar: Any) -> None:
    import json

    answer = client.post(
        "/api/v1/sidecar/audit",
        data=json.dumps({"events": [statement_event(v="2.0")]}),
        content_type="application/json",
        headers={"authorization": f"Bearer {sidecar.token}"},
    )
    assert answer.status_code == 400
    assert "version 2.0 is not supported" in answer.json()["error"]["message"]


def test_event_rejected_is_a_value_error_with_a_status() -> None:
    refused = EventRejected("type_mismatch", "events[0]: 'rows' must be integer or null")
    assert isinstance(refused, ValueError) and refused.status == 400
    assert str(refused) == refused.message


@pytest.mark.django_db
def test_made_up_keys_cannot_grow_a_web_process_without_bound(sidecar: Any) -> None:
    """A review's finding: every unknown key was counted under its full name for the
    life of the process, the log's memory of them grew a whole batch past its cap,
    and the scrub's cache kept 4,096 keys of any length. A holder of a sidecar token
    sending batch after batch of long, made-up keys grew every web process until it
    was killed. Names are now cut and counted up to a bound, and long keys are not
    cached."""
    intake._unknown_logged.clear()
    intake.UNKNOWN_KEYS_RECEIVED.clear()
    trail._judged_keys.cache_clear()
    long_keys = {f"k{i:05d}" + "x" * 5000: 1 for i in range(400)}
    for batch in range(3):
        events = [statement_event(**{f"b{batch}e{e}" + k: v for k, v in long_keys.items()})
                  for e in range(2)]  # fmt: skip
        assert _ingest(sidecar, events)["accepted"] == 2
    received = intake.UNKNOWN_KEYS_RECEIVED
    assert len(received) == intake._UNKNOWN_COUNTED_LIMIT
    assert max(map(len, received)) <= 64
    assert len(intake._unknown_logged) <= intake._UNKNOWN_LOGGED_LIMIT
    assert all(len(k) <= 64 for _, k in intake._unknown_logged)
    assert trail._judged_keys.cache_info().currsize < 100  # the long ones were not kept
