"""A view inherits its source columns' classifications, and the engine then masks reads
through the view like a table, on a real PostgreSQL.

The control plane takes a scan report whose snapshot has a view with ``sources``,
compiles the bundle, and the engine's rewrite of ``SELECT ... FROM the_view`` runs
against a scratch database holding that table and view: no raw e-mail comes back.
Without the inheritance (the view left unclassified) the same statement returns raw
values, which is what makes this test able to fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from governance import services
from governance.bundles import bundle_compile
from governance.models import ColumnClassification
from sidecar.engine import Engine, load_bundle
from tests.conftest import DEMO_SCHEMA

pytestmark = pytest.mark.django_db

EMAILS = ["ann.secret@mail.example.org", "bob.secret@mail.example.org"]
VIEW = {
    "schema": "public",
    "name": "customer_contacts",
    "kind": "view",
    "definition": "SELECT id, full_name, email AS contact FROM customers",
    "columns": [
        {"name": "id", "type": "bigint", "sources": ["public.customers.id"]},
        {"name": "full_name", "type": "text", "sources": ["public.customers.full_name"]},
        {"name": "contact", "type": "text", "sources": ["public.customers.email"]},
    ],
}


@pytest.fixture
def upstream() -> Iterator[psycopg.Connection[Any]]:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.skip("DATABASE_URL is not set: this test needs a real PostgreSQL")
    base = psycopg.conninfo.conninfo_to_dict(url)
    name = f"warden_view_mask_{secrets.token_hex(4)}"
    admin = psycopg.connect(**{**base, "dbname": "postgres"}, autocommit=True)
    admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    conn = psycopg.connect(**{**base, "dbname": name}, autocommit=True)
    conn.execute(
        "CREATE TABLE customers (id bigint PRIMARY KEY, full_name text, email text, phone text,"
        " ssn text, birth_date date)"
    )
    for i, email in enumerate(EMAILS, start=1):
        conn.execute(
            "INSERT INTO customers VALUES (%s, %s, %s, '555-0100', '123-45-6789', '1990-01-01')",
            (i, f"Person {i}", email),
        )
    conn.execute(f"CREATE VIEW customer_contacts AS {VIEW['definition']}")
    try:
        yield conn
    finally:
        conn.close()
        admin.execute(pgsql.SQL("DROP DATABASE {} WITH (FORCE)").format(pgsql.Identifier(name)))
        admin.close()


def _rows(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def test_reads_through_a_view_are_masked_by_inherited_classifications(
    demo_policy: Any, upstream: psycopg.Connection[Any]
) -> None:
    datasource = demo_policy.datasource
    snapshot = {"tables": [*DEMO_SCHEMA["tables"], VIEW]}
    sql = "SELECT id, full_name, contact FROM customer_contacts ORDER BY id"

    # The view arrives unclassified (sources stripped): reads through it are raw.
    bare = {
        "tables": [
            *DEMO_SCHEMA["tables"],
            {**VIEW, "columns": [{"name": c["name"], "type": c["type"]} for c in VIEW["columns"]]},
        ]
    }
    services.sidecar_schema_report(datasource_id=datasource.pk, snapshot=bare, findings=[])
    datasource.refresh_from_db()
    engine = Engine(load_bundle(bundle_compile(datasource=datasource)))
    decision = engine.decide(identity="svc-billing", sql=sql)
    assert decision.action == "allow"
    assert [r[2] for r in _rows(upstream, decision.upstream_sql)] == EMAILS

    # With sources, the view column inherits pii.email from customers.email.
    result = services.sidecar_schema_report(
        datasource_id=datasource.pk, snapshot=snapshot, findings=[]
    )
    assert result["inherited"] == 1
    inherited = ColumnClassification.objects.get(table_name="customer_contacts")
    assert (inherited.column_name, inherited.classification.name, inherited.source) == (
        "contact",
        "pii.email",
        "inherited",
    )
    datasource.refresh_from_db()
    engine = Engine(load_bundle(bundle_compile(datasource=datasource)))
    decision = engine.decide(identity="svc-billing", sql=sql)
    assert decision.action == "allow", decision.reasons
    assert decision.upstream_sql != sql
    rows = _rows(upstream, decision.upstream_sql)
    assert [r[0] for r in rows] == [1, 2] and [r[1] for r in rows] == ["Person 1", "Person 2"]
    contacts = [r[2] for r in rows]
    assert not set(contacts) & set(EMAILS)
    assert contacts == ["***@mail.example.org"] * 2  # the pii.email rule's e-mail mask
    for other in (
        "SELECT * FROM customer_contacts",
        "SELECT upper(contact) FROM customer_contacts",
    ):
        d = engine.decide(identity="svc-billing", sql=other)
        cells = {str(v) for row in _rows(upstream, d.upstream_sql) for v in row}
        assert not {e.lower() for e in EMAILS} & {c.lower() for c in cells}, other
