"""A real scan of a real PostgreSQL database: catalog, view sources, sampling bounds,
errors, and the rule that a raw value never leaves the scanner."""

from __future__ import annotations

import json
import logging
import pickle
import traceback

import psycopg
import pytest

from sidecar.scanner import ScanError, ScanSettings, run_scan
from sidecar.scanner.catalog import Column, Relation
from sidecar.scanner.sampling import VALUE_MAX, sample_query
from sidecar.scanner.scan import connect
from tests.sidecar.proxy.conftest import UNREACHABLE_URL

CANARIES = [f"canary{i}.zebra@leak-test.example" for i in range(40)]
CANARY_SSNS = [f"536-90-{4300 + i}" for i in range(40)]


def test_catalog_kinds_estimates_and_view_sources(scratch_url: str) -> None:
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE SCHEMA crm;
            CREATE TABLE crm.people (id int PRIMARY KEY, email text, name text, age int);
            INSERT INTO crm.people SELECT i, 'p' || i || '@example.com', 'Maria Garcia', 30
                FROM generate_series(1, 500) i;
            CREATE TABLE public.orders (id int, person_id int, total numeric(10,2));
            CREATE VIEW public.contacts AS
                SELECT p.id, upper(p.email) AS mail, p.name || ' (' || o.total || ')' AS label,
                       count(*) OVER () AS n
                FROM crm.people p JOIN public.orders o ON o.person_id = p.id;
            CREATE VIEW public.contacts_again AS
                WITH c AS (SELECT mail FROM public.contacts)
                SELECT mail FROM c UNION SELECT email FROM crm.people;
            CREATE MATERIALIZED VIEW public.mails AS SELECT email AS m FROM crm.people;
            CREATE TABLE public.events (id int, at date) PARTITION BY RANGE (at);
            CREATE TABLE public.events_2024 PARTITION OF public.events
                FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
            ANALYZE;
            """
        )
    report = run_scan(scratch_url, settings=ScanSettings())
    snapshot = {(t["schema"], t["name"]): t for t in report.body()["snapshot"]["tables"]}
    assert ("public", "events_2024") not in snapshot  # the parent stands for its partitions
    assert snapshot[("public", "events")]["kind"] == "partitioned_table"
    assert snapshot[("crm", "people")]["kind"] == "table"
    assert snapshot[("crm", "people")]["row_estimate"] == 500
    assert snapshot[("public", "mails")]["kind"] == "materialized_view"
    contacts = snapshot[("public", "contacts")]
    assert contacts["kind"] == "view" and "crm.people" in contacts["definition"]
    sources = {c["name"]: c["sources"] for c in contacts["columns"]}
    assert sources == {
        "id": ["crm.people.id"],
        "mail": ["crm.people.email"],
        "label": ["crm.people.name", "public.orders.total"],
        "n": [],
    }
    again = {c["name"]: c["sources"] for c in snapshot[("public", "contacts_again")]["columns"]}
    assert again == {"mail": ["crm.people.email"]}  # through a view, a CTE and a UNION
    types = {c["name"]: c["type"] for c in snapshot[("public", "orders")]["columns"]}
    assert types["total"] == "numeric(10,2)"
    found = {(f.schema, f.table, f.column): f for f in report.findings}
    assert found[("crm", "people", "email")].classification == "pii.email"
    assert found[("public", "mails", "m")].classification == "pii.email"  # sampled itself
    # The view has no rows (orders is empty), so its column is classified by lineage.
    assert found[("public", "contacts", "mail")].detector == "lineage:email"
    assert ("public", "contacts", "n") not in found


def test_sampling_query_bounds() -> None:
    columns = [Column("email", "text", "text"), Column("n", "integer", "other")]
    small = Relation("public", "t", "table", 1_000, columns=columns)
    large = Relation("public", "t", "table", 50_000_000, columns=columns)
    view = Relation("public", "v", "view", None, "SELECT 1", columns=columns)
    small_sql = sample_query(small, ["email"], 100).as_string(None)
    assert "TABLESAMPLE" not in small_sql and "LIMIT 100" in small_sql
    assert f'left(("email")::text, {VALUE_MAX})' in small_sql
    large_sql = sample_query(large, ["email"], 100).as_string(None)
    assert "TABLESAMPLE SYSTEM (0.002)" in large_sql and "LIMIT 100" in large_sql
    assert "TABLESAMPLE" not in sample_query(view, ["email"], 100).as_string(None)


def test_scanner_connection_is_read_only(scratch_url: str) -> None:
    with connect(scratch_url) as conn, conn.transaction():
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE nope (id int)")


def test_a_failing_relation_is_reported_without_values_and_the_scan_goes_on(
    scratch_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE canaries (id int, contact text, ssn text, note text)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO canaries VALUES (%s, %s, %s, %s)",
                [(i, CANARIES[i], CANARY_SSNS[i], f"zebra note {i}") for i in range(40)],
            )
        # Sampling this view fails, and PostgreSQL's message quotes the value it
        # could not cast: exactly what must not reach a log or an error.
        conn.execute(
            "CREATE VIEW broken AS SELECT (contact::int)::text AS n, contact FROM canaries"
        )
        conn.execute(
            "CREATE VIEW slow AS SELECT pg_sleep(5)::text AS s, contact FROM canaries LIMIT 1"
        )
    caplog.set_level(logging.DEBUG)
    report = run_scan(scratch_url, settings=ScanSettings(statement_timeout_ms=300))
    errors = {e.relation: e for e in report.errors}
    assert errors["public.broken"].sqlstate == "22P02"  # invalid_text_representation
    assert errors["public.slow"].sqlstate == "57014"  # query_canceled by statement_timeout
    found = {(f.table, f.column): f for f in report.findings}
    assert found[("canaries", "contact")].classification == "pii.email"
    assert found[("canaries", "ssn")].classification == "pii.ssn"
    # Lineage still classifies the broken view's column.
    assert found[("broken", "contact")].detector == "lineage:email"

    # The report crosses from the scanner's worker process intact.
    copy = pickle.loads(pickle.dumps(report))  # noqa: S301 (our own bytes)
    assert [(e.relation, e.sqlstate) for e in copy.errors] == [
        (e.relation, e.sqlstate) for e in report.errors
    ]
    assert copy.body() == report.body()

    texts = [json.dumps(report.body()), caplog.text]
    texts += [r.getMessage() for r in caplog.records]
    for error in report.errors:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    everything = "\n".join(texts)
    assert "public.broken" in everything  # the relation is named ...
    for value in [*CANARIES, *CANARY_SSNS, "canary", "zebra"]:
        assert value not in everything, value  # ... its values never are


def test_no_connection_is_a_scan_error_without_the_password() -> None:
    with pytest.raises(ScanError) as info:
        run_scan(UNREACHABLE_URL, password="hunter2-secret", settings=ScanSettings())
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_custom_detectors_and_foreign_tables(scratch_url: str) -> None:
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE staff (id int, emp_id text, badge text, email text);
            INSERT INTO staff SELECT i, 'E' || lpad(i::text, 6, '0'), 'B-' || i,
                                     's' || i || '@example.com'
                FROM generate_series(1, 50) i;
            CREATE FOREIGN DATA WRAPPER nowhere;
            CREATE SERVER elsewhere FOREIGN DATA WRAPPER nowhere;
            CREATE FOREIGN TABLE remote_people (email text) SERVER elsewhere;
            """
        )
    detectors = (
        {
            "name": "employee-id",
            "classification": "pii.national_id",
            "confidence": 0.9,
            "name_regex": "(?i)^emp(loyee)?_?id$",
            "value_regex": r"^E\d{6}$",
        },
        {"name": "bad", "classification": "x", "confidence": 0.5, "name_regex": "[",
         "value_regex": None},
    )  # fmt: skip
    report = run_scan(scratch_url, settings=ScanSettings(detectors=detectors))
    found = {(f.table, f.column): f for f in report.findings}
    assert found[("staff", "emp_id")].detector == "custom:employee-id"
    assert found[("staff", "emp_id")].confidence == 0.9
    assert ("staff", "badge") not in found
    assert found[("staff", "email")].detector == "email"  # built-ins still run
    assert report.detectors_skipped == 1
    # The foreign table is in the snapshot, classified by its name, never sampled
    # (sampling it would fail: its wrapper has no handler).
    assert not report.errors
    assert found[("remote_people", "email")].share == 0
    kinds = {t["name"]: t["kind"] for t in report.body()["snapshot"]["tables"]}
    assert kinds["remote_people"] == "foreign_table"


def test_numbers_odd_types_small_tables_and_free_text(scratch_url: str) -> None:
    """Issue 19: SSNs and cards stored as numbers, IPs in inet and cidr, birth dates as
    text, a table of three e-mail addresses, and notes with phone numbers inside."""
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE people (
                id bigint GENERATED ALWAYS AS IDENTITY, ssn integer, backup_ssn bigint,
                tax_ssn numeric(9,0), card_number numeric(19,0), tracking_no bigint,
                last_ip cidr, login_ip inet, subnet cidr, date_of_birth text, notes text);
            INSERT INTO people (ssn, backup_ssn, tax_ssn, card_number, tracking_no, last_ip,
                                login_ip, subnet, date_of_birth, notes)
            SELECT 536904300 + i * 7, 78151100 + i, 219451200 + i, n.card,
                   (4000000123450 + i) * 10 + (i % 10),
                   ('203.0.113.' || (i % 250 + 1))::cidr, ('198.51.100.' || (i % 250 + 1))::inet,
                   ('10.' || i % 250 || '.0.0/16')::cidr,
                   to_char(date '1950-01-01' + i * 97, 'DD.MM.YYYY'),
                   CASE WHEN i % 5 = 0 THEN 'Call back on (415) 555-' || (2600 + i) || ' today'
                        ELSE 'Delivered to reception, ' || i || ' boxes.' END
            FROM generate_series(1, 80) i,
                 LATERAL (SELECT CASE i % 3 WHEN 0 THEN 4111111111111111
                                            WHEN 1 THEN 5500000000000004
                                            ELSE 4012888888881881 END AS card) n;
            CREATE TABLE few (id int, c1 text);
            INSERT INTO few VALUES (1, 'ana@example.com'), (2, 'bo@example.org'),
                                   (3, 'cy@example.net');
            ANALYZE;
            """
        )
    report = run_scan(scratch_url, settings=ScanSettings())
    found = {(f.table, f.column): f for f in report.findings}

    def classified(table: str, col: str) -> tuple[str, float]:
        finding = found[(table, col)]
        return finding.classification, finding.confidence

    for col in ("ssn", "backup_ssn", "tax_ssn"):
        assert classified("people", col)[0] == "pii.ssn", col
    assert classified("people", "card_number")[0] == "financial.card"
    assert ("people", "tracking_no") not in found  # a sequence with a check digit
    assert ("people", "id") not in found
    assert classified("people", "last_ip")[0] == "pii.ip_address"  # cidr of host addresses
    assert classified("people", "login_ip")[0] == "pii.ip_address"
    assert ("people", "subnet") not in found  # networks
    assert classified("people", "date_of_birth")[0] == "pii.dob"
    cls, confidence = classified("people", "notes")
    assert cls == "pii.free_text" and 0.3 <= confidence < 0.9
    cls, confidence = classified("few", "c1")
    assert cls == "pii.email" and 0.3 < confidence < 0.9
    assert found[("few", "c1")].share == 1.0
