"""What a held statement shows its reviewer, and what its grant is bound to.

The demo production bundle classifies ``customers.email`` (pii.email), ``ssn``
and others; ``orders`` has ``card_number`` (financial.card) among plain columns.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.engine import Bundle, Engine, SessionContext
from sidecar.engine.values import MAX_VALUES, statement_values, values_digest

SESSION = SessionContext(standard_conforming_strings=True, in_transaction=False, search_path=None)


def shown(production: Bundle, sql: str) -> list[tuple[int, int, str]]:
    """(statement, placeholder, value or "<classification>") for ``sql``."""
    decision = Engine(production).decide(
        identity=next(iter(production.identities)), sql=sql, session=SESSION, protocol="simple"
    )
    values = statement_values(production, sql, [s.redacted_sql for s in decision.statements])
    assert values is not None
    out = []
    for index, statement in enumerate(values):
        for item in statement.literals:
            out.append((index, item["n"], item.get("value") or f"<{item['classification']}>"))
    return out


def test_values_of_plain_columns_are_shown_at_their_placeholders(production: Bundle) -> None:
    assert shown(production, "UPDATE orders SET amount = 5 WHERE id > -499") == [
        (0, 1, "5"),
        (0, 2, "-499"),
    ]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # Written into a classified column, by assignment, VALUES slot or upsert.
        (
            "UPDATE customers SET email = 'a@b.c', full_name = 'Bob' WHERE id = 3",
            [(0, 1, "<pii.email>"), (0, 2, "'Bob'"), (0, 3, "3")],
        ),
        (
            "INSERT INTO customers (full_name, ssn) VALUES ('n', '123') "
            "ON CONFLICT (id) DO UPDATE SET email = 'z'",
            [(0, 1, "'n'"), (0, 2, "<pii.ssn>"), (0, 3, "<pii.email>")],
        ),
        # Compared with one, through a function or an operator on the value.
        (
            "SELECT id FROM customers WHERE email = lower('X@Y.Z') AND id > 3 LIMIT 10",
            [(0, 1, "<pii.email>"), (0, 2, "3"), (0, 3, "10")],
        ),
        (
            "SELECT id FROM customers c WHERE c.ssn = '1' || '23'",
            [(0, 1, "<pii.ssn>"), (0, 2, "<pii.ssn>")],
        ),
        # Where the value could reach a classified column by a path not followed:
        # inside a subquery of a statement on a table with classified columns.
        ("SELECT id FROM customers WHERE email = (SELECT 'x')", [(0, 1, "<every>")]),
        # A literal with no column beside it, in a statement touching classified data.
        ("SELECT 'x' FROM customers", [(0, 1, "<every>")]),
        # A row assigned to several columns: each value counts for every column.
        (
            "UPDATE customers SET (email, full_name) = ('a@b.c', 'n') WHERE id = 1",
            [(0, 1, "<pii.email>"), (0, 2, "<pii.email>"), (0, 5, "1")],
        ),
        (
            "UPDATE customers SET (full_name, email) = ('n', 'a@b.c') WHERE id = 1",
            [(0, 1, "<pii.email>"), (0, 2, "<pii.email>"), (0, 5, "1")],
        ),
    ],
)
def test_values_that_meet_classified_columns_stay_redacted(
    production: Bundle, sql: str, expected: list[tuple[int, int, str]]
) -> None:
    every = ", ".join(
        sorted(
            label
            for key, label in production.column_classifications.items()
            if key.startswith("public.customers.")
        )
    )
    want = [(s, n, f"<{every}>" if v == "<every>" else v) for s, n, v in expected]
    assert shown(production, sql) == want


def test_each_statement_of_a_text_numbers_its_own_values(production: Bundle) -> None:
    sql = "DELETE FROM orders WHERE id = 1; UPDATE customers SET full_name = 'é' WHERE email = 'q'"
    assert shown(production, sql) == [(0, 1, "1"), (1, 1, "'é'"), (1, 2, "<pii.email>")]


def test_parameters_are_labelled_for_the_bind(production: Bundle) -> None:
    sql = "UPDATE customers SET full_name = $2 WHERE ssn = $1 AND id = $3"
    decision = Engine(production).decide(
        identity=next(iter(production.identities)), sql=sql, session=SESSION, protocol="extended"
    )
    values = statement_values(production, sql, [s.redacted_sql for s in decision.statements])
    assert values is not None
    assert values[0].param_labels == {1: "pii.ssn", 2: None, 3: None}


def test_a_long_insert_shows_its_first_values_only(production: Bundle) -> None:
    rows = ", ".join(f"({i}, 1, 2)" for i in range(MAX_VALUES))
    found = shown(production, f"INSERT INTO orders (id, customer_id, amount) VALUES {rows}")
    assert len(found) == MAX_VALUES and found[:2] == [(0, 1, "0"), (0, 2, "1")]


def test_the_digest_follows_values_and_ignores_comments_and_spacing() -> None:
    base = values_digest("UPDATE orders SET amount = 5 WHERE id > 499")
    assert values_digest("UPDATE orders  SET amount = 5 /* trace */ WHERE id > 499 -- x") == base
    for other in (
        "UPDATE orders SET amount = 5 WHERE id > 0",
        "UPDATE orders SET amount = 5 WHERE id > -499",
        "UPDATE orders SET amount = '5' WHERE id > 499",
    ):
        assert values_digest(other) != base, other
    params: list[Any] = [(0, b"5"), (0, None)]
    with_params = values_digest("SELECT $1, $2", params)
    assert with_params != values_digest("SELECT $1, $2", [(0, b"5"), (0, b"")])
    assert with_params != values_digest("SELECT $1, $2", [(1, b"5"), (0, None)])


def test_parameters_of_a_text_not_read_value_by_value_stay_redacted(production: Bundle) -> None:
    """``-(-1)`` defeats the placeholders' alignment: then every parameter of a text
    naming a table with classified columns stays redacted."""
    from sidecar.runner import with_values

    sql = "UPDATE customers SET ssn = $1 WHERE id = -(-1)"
    decision = Engine(production).decide(
        identity=next(iter(production.identities)), sql=sql, session=SESSION, protocol="extended"
    )
    assert statement_values(production, sql, [s.redacted_sql for s in decision.statements]) is None
    facts = with_values({}, production, sql, decision, None)
    assert facts["values"] == () and facts["param_labels"][0]
    assert "pii.ssn" in facts["param_labels"][0]


def test_booleans_and_nulls_are_values_too(production: Bundle) -> None:
    assert shown(production, "UPDATE orders SET amount = NULL WHERE id = 2 AND true") == [
        (0, 1, "NULL"),
        (0, 2, "2"),
        (0, 3, "true"),
    ]


def test_the_same_text_on_other_tables_is_another_statement_to_approve() -> None:
    """``orders`` is public.orders under one search_path and archive.orders under
    another: the approval facts name the table each resolved to (never one cached
    from the other), and the digest differs, so a grant for one does not run the
    other."""
    import copy
    import json
    from pathlib import Path

    from sidecar.engine.bundle import compute_revision
    from sidecar.metrics import Metrics
    from sidecar.runner import EnginePolicy
    from tests.sidecar.proxy.relay_check import Source

    path = Path(__file__).resolve().parents[2] / "fixtures" / "bundles" / "demo-production.json"
    document = json.loads(path.read_text("utf-8"))["bundle"]
    orders = next(t for t in document["schema"]["tables"] if t["name"] == "orders")
    document["schema"]["tables"].append({**copy.deepcopy(orders), "schema": "archive"})
    document["revision"] = compute_revision(document)
    policy = EnginePolicy(Source(document), Metrics())

    def approval(search_path: tuple[str, ...]) -> Any:
        verdict = policy.decide(
            identity="alice",
            sql="SELECT pg_sleep(1) FROM orders WHERE id > 499",
            standard_conforming_strings=True,
            search_path=search_path,
            in_transaction=False,
            protocol="simple",
        )
        assert verdict.action == "review"
        return verdict.approval

    public, archive = approval(("public",)), approval(("archive",))
    assert public["tables"] == ("public.orders",) and archive["tables"] == ("archive.orders",)
    assert public["values_digest"] != archive["values_digest"]
