"""Provisional findings inside a JSON column, on a real PostgreSQL.

One jsonb column holds a provisional path (the scanner's unreviewed finding) and a
confirmed one. A person reads both masked; a service reads the provisional one as
stored (audited as "would have masked") and the confirmed one masked; with the
datasource's switch on, a service reads both masked.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from sidecar.engine import Engine, compute_revision, load_bundle, vocabulary

DOC = {"profile": {"email": "jane.doe@example.com", "city": "Lyon"}, "card": "4111111111111111"}


def _bundle(*, mask_services: bool = False) -> Any:
    datasource: dict[str, Any] = {
        "name": "paths",
        "engine": "postgresql",
        "dialect": "postgres",
        "environment": "production",
        "criticality": 5,
    }
    if mask_services:
        datasource["mask_services_provisionally"] = True
    names = ["financial.card", "pii.email"]
    data: dict[str, Any] = {
        "format": "warden.bundle/1.1",
        "issued_at": "2026-01-01T00:00:00Z",
        "datasource": datasource,
        "schema": {
            "tables": [
                {
                    "schema": "public",
                    "name": "people_docs",
                    "kind": "table",
                    "columns": [
                        {"name": "id", "type": "integer"},
                        {"name": "doc", "type": "jsonb"},
                    ],
                }
            ]
        },
        "identities": [
            {
                "name": name,
                "kind": kind,
                "teams": [],
                "owner": None,
                "credentials": [],
                "expires_at": None,
            }
            for name, kind in [("hana", "human"), ("svc", "service")]
        ],
        "classifications": [{"name": n, "level": "restricted"} for n in names],
        "column_classifications": [
            {
                "schema": "public",
                "table": "people_docs",
                "column": "doc",
                "classification": "pii.email",
                "path": "profile.email",
                "provisional": True,
            },
            {
                "schema": "public",
                "table": "people_docs",
                "column": "doc",
                "classification": "financial.card",
                "path": "card",
            },
        ],
        "masking_rules": [r for n in names if (r := vocabulary.default_masking_rule(n))],
        "guardrails": [],
        "risk": {"review_at": 101, "block_at": 101, "critical_at": 101},
        "approvals": {"hold_seconds": 30},
    }
    data["revision"] = compute_revision(data)
    return load_bundle(data)


@pytest.fixture()
def docs(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    pg.execute("CREATE TABLE public.people_docs (id integer, doc jsonb)")
    pg.execute("INSERT INTO public.people_docs VALUES (1, %s)", [json.dumps(DOC)])
    return pg


def _read(pg: psycopg.Connection[Any], engine: Engine, identity: str) -> tuple[Any, Any]:
    decision = engine.decide(identity=identity, sql="SELECT doc FROM people_docs")
    assert decision.action == "allow", decision.reasons
    row = pg.execute(decision.upstream_sql).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return decision.statements[0], row[0]


def test_a_person_reads_both_paths_masked(docs: psycopg.Connection[Any]) -> None:
    statement, doc = _read(docs, Engine(_bundle()), "hana")
    assert doc["profile"] == {"email": "***@example.com", "city": "Lyon"}
    assert doc["card"] == "************1111"
    assert statement.provisional_columns == ("public.people_docs.doc",)


def test_a_service_reads_the_provisional_path_as_stored_and_the_confirmed_one_masked(
    docs: psycopg.Connection[Any],
) -> None:
    statement, doc = _read(docs, Engine(_bundle()), "svc")
    assert doc["profile"]["email"] == "jane.doe@example.com"
    assert doc["card"] == "************1111"  # reviewed: masked for every identity
    assert statement.would_have_masked == ("public.people_docs.doc",)


def test_the_switch_masks_the_provisional_path_for_services_too(
    docs: psycopg.Connection[Any],
) -> None:
    _, doc = _read(docs, Engine(_bundle(mask_services=True)), "svc")
    assert doc["profile"]["email"] == "***@example.com" and doc["card"] == "************1111"
