"""Paths inside JSON and array columns are masked in the database, however the column is read.

A table of JSON, JSONB and array columns is classified at paths (``profile.email``,
``contacts[].phone``, ``[]``, ``[].number``...). Every statement below runs, rewritten
by the engine, against a real PostgreSQL: no raw value at a classified path may come
back in any cell, whatever operator, function, whole-row reference or COPY reached it,
and everything outside the classified paths must come back unchanged.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sidecar.engine import Bundle, Engine, compute_revision, load_bundle
from tests.sidecar.engine.conftest import bundle_data

TABLE = """
CREATE TABLE public.people (
    id integer PRIMARY KEY,
    doc jsonb,
    legacy json,
    tags text[],
    emails character varying(64)[],
    cards jsonb[],
    note text
);
INSERT INTO public.people VALUES
 (1,
  '{"profile": {"email": "ann.secret@example.org", "name": "Ann"},
    "contacts": [{"phone": "+1-555-0101-99", "kind": "home"}, {"kind": "none"}],
    "matrix": [["111-22-3333", "x"], ["444-55-6666"]],
    "secret.key": "tok_supersecret_0001", "plain": "keep-me"}',
  '{"profile": {"email": "legacy.secret@example.net"}, "z": 1, "a": 2}',
  '{123-45-6789,987-65-4321}',
  '{ann.secret@example.org,NULL}',
  ARRAY['{"number": "4111111111111111", "brand": "visa"}'::jsonb, '{"brand": "none"}'],
  'row one'),
 (2, '{"profile": "just a string", "contacts": "none"}', '{}', '{}', '{}', '{}', 'row two'),
 (3, NULL, NULL, NULL, NULL, NULL, 'row three'),
 (4, '{"other": 1}', '[1, 2]', '{NULL}', '{}', ARRAY[NULL::jsonb], 'row four'),
 (5, '"a string at the top"', '"top"', '{555-12-3456}', '{b.secret@example.com}',
  ARRAY['"bare"'::jsonb], 'row five');
"""

RAW = [
    "ann.secret",
    "legacy.secret",
    "b.secret",
    "+1-555-0101-99",
    "111-22-3333",
    "444-55-6666",
    "tok_supersecret_0001",
    "123-45-6789",
    "987-65-4321",
    "555-12-3456",
    "4111111111111111",
]
PATHS = [
    ("doc", "profile.email", "pii.email"),
    ("doc", "contacts[].phone", "pii.phone"),
    ("doc", "matrix[][]", "pii.ssn"),
    ("doc", "secret\\.key", "secret.token"),
    ("legacy", "profile.email", "pii.email"),
    ("tags", "[]", "pii.ssn"),
    ("emails", "[]", "pii.email"),
    ("cards", "[].number", "financial.card"),
]


def paths_bundle() -> dict[str, Any]:
    data = copy.deepcopy(bundle_data("demo-production"))
    data["format"] = "warden.bundle/1.1"
    data["schema"]["tables"].append(
        {
            "schema": "public",
            "name": "people",
            "kind": "table",
            "columns": [
                {"name": "id", "type": "integer"},
                {"name": "doc", "type": "jsonb"},
                {"name": "legacy", "type": "json"},
                {"name": "tags", "type": "text[]"},
                {"name": "emails", "type": "character varying(64)[]"},
                {"name": "cards", "type": "jsonb[]"},
                {"name": "note", "type": "text"},
            ],
        }
    )
    for column, path, classification in PATHS:
        data["column_classifications"].append(
            {
                "schema": "public",
                "table": "people",
                "column": column,
                "path": path,
                "classification": classification,
            }
        )
    # Exempt from the card rule only (finance), not from the e-mail and phone rules (dpo).
    data["identities"].append(
        {
            "name": "frank",
            "kind": "human",
            "teams": ["finance"],
            "owner": None,
            "credentials": [],
            "expires_at": None,
        }
    )
    data["revision"] = compute_revision(data)
    return data


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(paths_bundle())


@pytest.fixture(scope="module")
def engine(bundle: Bundle) -> Engine:
    return Engine(bundle)


@pytest.fixture()
def people(pg: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    pg.execute(TABLE)
    yield pg


def _run(conn: psycopg.Connection[Any], text: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        if text.lstrip().upper().startswith("COPY"):
            with cur.copy(text) as cp:
                data = b"".join(bytes(chunk) for chunk in cp).decode("utf-8")
            return [(line,) for line in data.splitlines()]
        cur.execute(text)
        return cur.fetchall() if cur.description is not None else []


def _masked(engine: Engine, conn: psycopg.Connection[Any], sql: str, who: str = "alice") -> Any:
    decision = engine.decide(identity=who, sql=sql)
    assert decision.action in ("allow", "review"), decision.reasons
    assert decision.upstream_sql != sql
    return _run(conn, decision.upstream_sql)


def _text(rows: list[tuple[Any, ...]]) -> str:
    return json.dumps(rows, default=str)


READS = [
    "SELECT doc FROM people",
    "SELECT doc -> 'profile' ->> 'email' FROM people",
    "SELECT doc #>> '{profile,email}' FROM people",
    "SELECT doc -> 'contacts' -> 0 ->> 'phone' FROM people",
    "SELECT jsonb_path_query(doc, '$.contacts[*].phone') FROM people",
    "SELECT jsonb_path_query(doc, '$.**') FROM people",
    "SELECT doc::text, legacy::text FROM people",
    "SELECT legacy -> 'profile' ->> 'email' FROM people",
    "SELECT row_to_json(p) FROM people p",
    "SELECT to_jsonb(p) FROM people AS p",
    "SELECT * FROM people",
    "SELECT p FROM people p",
    "SELECT tags[1], array_to_string(tags, ','), emails[1] FROM people",
    "SELECT unnest(tags), unnest(emails) FROM people",
    "SELECT c ->> 'number' FROM people, unnest(cards) AS c",
    "SELECT e.value FROM people, "
    "jsonb_each_text(CASE jsonb_typeof(doc) WHEN 'object' THEN doc END) AS e",
    "SELECT json_agg(people) FROM people",
    "SELECT x FROM people, jsonb_array_elements(doc -> 'matrix') AS x",
    "WITH d AS (SELECT doc FROM people) SELECT doc ->> 'secret.key' FROM d",
    "COPY people TO STDOUT",
    "COPY people (doc, tags) TO STDOUT",
]


@pytest.mark.parametrize("sql", READS)
def test_no_raw_value_at_a_classified_path_comes_back(
    sql: str, engine: Engine, people: psycopg.Connection[Any]
) -> None:
    people.execute("SAVEPOINT s")
    raw_rows = _run(people, sql)
    people.execute("ROLLBACK TO SAVEPOINT s")
    # Not vacuous: the statement does reach raw values when it is not rewritten.
    assert any(value in _text(raw_rows) for value in RAW), sql
    rows = _masked(engine, people, sql)
    leaked = [value for value in RAW if value in _text(rows)]
    assert not leaked, (sql, leaked)
    assert len(rows) == len(raw_rows)


def test_paths_are_masked_by_their_own_rules_and_the_rest_is_kept(
    engine: Engine, people: psycopg.Connection[Any]
) -> None:
    rows = _masked(engine, people, "SELECT id, doc, legacy, tags, emails, cards, note FROM people")
    by_id = {row[0]: row[1:] for row in rows}
    doc, legacy, tags, emails, cards, note = by_id[1]
    assert doc["profile"] == {"email": "***@example.org", "name": "Ann"}  # email rule
    phone = doc["contacts"][0]["phone"]  # hash rule: a stable hex digest
    assert len(phone) == 64 and set(phone) <= set("0123456789abcdef")
    assert doc["contacts"][0]["kind"] == "home"
    assert doc["contacts"][1] == {"kind": "none"}  # a path absent from an element
    assert doc["matrix"] == [["*******3333", "*"], ["*******6666"]]  # nested arrays, partial
    assert doc["secret.key"] is None  # null rule; a key with a dot in it
    assert doc["plain"] == "keep-me"
    assert legacy == {"profile": {"email": "***@example.net"}, "z": 1, "a": 2}
    assert tags == ["*******6789", "*******4321"]
    assert emails == ["***@example.org", None]
    assert cards == [{"number": "************1111", "brand": "visa"}, {"brand": "none"}]
    assert note == "row one"
    # Values without the path, of another JSON type than the path expects, NULLs,
    # empty arrays: unchanged, no error.
    assert by_id[2][:5] == ({"profile": "just a string", "contacts": "none"}, {}, [], [], [])
    assert by_id[3] == (None, None, None, None, None, "row three")
    assert by_id[4][:5] == ({"other": 1}, [1, 2], [None], [], [None])
    assert by_id[5][:5] == (
        "a string at the top",
        "top",
        ["*******3456"],
        ["***@example.com"],
        ["bare"],
    )


def test_types_are_kept(engine: Engine, people: psycopg.Connection[Any]) -> None:
    rows = _masked(
        engine,
        people,
        "SELECT pg_typeof(doc)::text, pg_typeof(legacy)::text, pg_typeof(tags)::text, "
        "pg_typeof(emails)::text, pg_typeof(cards)::text FROM people WHERE id = 1",
    )
    assert rows == [("jsonb", "json", "text[]", "character varying[]", "jsonb[]")]


def test_predicates_compare_the_masked_value(
    engine: Engine, people: psycopg.Connection[Any]
) -> None:
    # As for a whole masked column: no oracle on the raw value...
    assert not _masked(
        engine,
        people,
        "SELECT id FROM people WHERE doc -> 'profile' ->> 'email' = 'ann.secret@example.org'",
    )
    assert not _masked(engine, people, "SELECT id FROM people WHERE '123-45-6789' = ANY(tags)")
    assert not _masked(
        engine,
        people,
        'SELECT id FROM people WHERE doc @> \'{"secret.key": "tok_supersecret_0001"}\'',
    )
    # ...and what the mask keeps still filters.
    assert _masked(
        engine, people, "SELECT id FROM people WHERE doc #>> '{profile,email}' LIKE '%@example.org'"
    ) == [(1,)]
    assert _masked(engine, people, "SELECT id FROM people WHERE doc ->> 'plain' = 'keep-me'") == [
        (1,)
    ]


def test_exemption_is_per_path(engine: Engine, people: psycopg.Connection[Any]) -> None:
    # bob (dpo, finance) is exempt from every rule here but secret.token's (no exemption).
    rows = _masked(engine, people, "SELECT doc, cards FROM people WHERE id = 1", who="bob")
    doc, cards = rows[0]
    assert doc["profile"]["email"] == "ann.secret@example.org"
    assert doc["secret.key"] is None
    assert cards[0]["number"] == "4111111111111111"
    # frank (finance) reads the card numbers, not the e-mail addresses.
    rows = _masked(engine, people, "SELECT doc, cards FROM people WHERE id = 1", who="frank")
    doc, cards = rows[0]
    assert doc["profile"]["email"] == "***@example.org"
    assert cards[0]["number"] == "4111111111111111"


def test_a_column_classified_inside_is_a_masked_column(engine: Engine) -> None:
    d = engine.decide(identity="alice", sql="SELECT doc FROM people WHERE id = 1")
    statement = d.statements[0]
    assert statement.masked_columns == ("public.people.doc",)
    assert {"pii.email", "pii.phone", "pii.ssn", "secret.token"} <= set(statement.classifications)
    # Writing it back from itself would be an oracle, as for any masked column.
    d = engine.decide(identity="alice", sql="UPDATE people SET note = doc ->> 'plain' WHERE id = 1")
    assert d.action == "block"
    assert "mask.write_oracle" in {r.rule for r in d.reasons}


def test_unmasked_columns_of_the_table_read_as_before(
    engine: Engine, people: psycopg.Connection[Any]
) -> None:
    assert _masked(engine, people, "SELECT id, note FROM people ORDER BY id") == _run(
        people, "SELECT id, note FROM people ORDER BY id"
    )
