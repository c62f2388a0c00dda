"""Sample a bounded number of values per table: one read-only query per relation.

Only columns a detector can use are read (``SAMPLED_FAMILIES``), each cast to
text and cut to ``VALUE_MAX`` characters inside the database, so a wide
column never crosses the wire whole. A large table (by row estimate) is read
with ``TABLESAMPLE SYSTEM`` so the rows come from all over it rather than its
first pages; a small one with a plain ``LIMIT``. JSON and array columns come
back as JSON text, bounded (``sidecar.scanner.structured``), for the per-path
walk. Each query runs in its own read-only transaction under ``SET LOCAL statement_timeout`` and
``lock_timeout``, sent as one message, so a relation costs one round trip and
holds its lock only for its own query.

A failed query raises ``SamplingError`` carrying the relation and SQLSTATE
only: the driver's message can quote a value (a failing cast in a view echoes
its input), so it is dropped, and so is the exception chain.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from sidecar.scanner.catalog import Column, Relation
from sidecar.scanner.detectors import ARRAY, JSON, NUMBER, SAMPLED_FAMILIES
from sidecar.scanner.structured import JSON_VALUE_MAX, MAX_ELEMENTS

VALUE_MAX = 512
# Below this estimate a table is read with LIMIT; above, with TABLESAMPLE.
LARGE_TABLE_ROWS = 20_000
# TABLESAMPLE aims at this many times the wanted rows, then LIMIT cuts: SYSTEM
# samples whole pages, and a too-small percentage can hit no page at all.
OVERSAMPLE = 10


class SamplingError(Exception):
    """Sampling one relation failed; the message names it and the SQLSTATE, nothing else."""

    def __init__(self, relation: str, sqlstate: str | None, kind: str) -> None:
        super().__init__(f"sampling {relation} failed: {kind} (SQLSTATE {sqlstate or '?'})")
        self.relation = relation
        self.sqlstate = sqlstate
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses from the scanner's worker process to the sidecar with its fields.
        return (SamplingError, (self.relation, self.sqlstate, self.kind))


def sampled_columns(relation: Relation) -> list[str]:
    if relation.kind == "foreign_table":
        # Its rows live on another server: the scan does not reach out to it.
        return []
    return [c.name for c in relation.columns if c.family in SAMPLED_FAMILIES or _structured(c)]


def _structured(column: Column) -> bool:
    return column.family == JSON or (
        column.family == ARRAY and (column.element in SAMPLED_FAMILIES or column.element == JSON)
    )


def _target(column: Column | None, name: str) -> sql.Composable:
    """A sampled column as text: cut to ``VALUE_MAX``; a JSON value as its JSON text when
    it is at most ``JSON_VALUE_MAX`` bytes (else NULL: not read); an array as the JSON
    array of its first ``MAX_ELEMENTS`` elements (each text one cut to ``VALUE_MAX``)."""
    ident = sql.Identifier(name)
    if column is not None and column.family == JSON:
        return sql.SQL("CASE WHEN octet_length(({0})::text) <= {1} THEN ({0})::text END").format(
            ident, sql.Literal(JSON_VALUE_MAX)
        )
    if column is not None and column.family == ARRAY:
        element = (
            sql.SQL("to_jsonb(e.x)")
            if column.element in (JSON, NUMBER)
            else sql.SQL("to_jsonb(left((e.x)::text, {}))").format(sql.Literal(VALUE_MAX))
        )
        return sql.SQL(
            "(SELECT CASE WHEN octet_length(j::text) <= {0} THEN j::text END FROM "
            "(SELECT jsonb_agg({1}) AS j FROM (SELECT x FROM unnest({2}) AS u(x) LIMIT {3}) "
            "AS e) AS a)"
        ).format(sql.Literal(JSON_VALUE_MAX), element, ident, sql.Literal(MAX_ELEMENTS))
    return sql.SQL("left(({})::text, {})").format(ident, sql.Literal(VALUE_MAX))


def sample_query(relation: Relation, columns: list[str], rows: int) -> sql.Composed:
    by_name = {c.name: c for c in relation.columns}
    target = sql.SQL(", ").join(_target(by_name.get(name), name) for name in columns)
    source = sql.SQL("{}.{}").format(sql.Identifier(relation.schema), sql.Identifier(relation.name))
    estimate = relation.row_estimate or 0
    sampling: sql.Composable = sql.SQL("")
    if not relation.is_view and estimate > max(LARGE_TABLE_ROWS, rows * OVERSAMPLE):
        percent = min(100.0, 100.0 * rows * OVERSAMPLE / estimate)
        sampling = sql.SQL(" TABLESAMPLE SYSTEM ({})").format(sql.Literal(round(percent, 6)))
    return sql.SQL("SELECT {} FROM {}{} LIMIT {}").format(
        target, source, sampling, sql.Literal(rows)
    )


def sample_relation(
    conn: psycopg.Connection[Any], relation: Relation, *, rows: int, timeout_ms: int
) -> dict[str, list[str]]:
    """Non-null sampled values per sampled column (at most ``rows`` each)."""
    columns = sampled_columns(relation)
    if not columns or rows <= 0:
        return {}
    query = sample_query(relation, columns, rows)
    try:
        fetched = _fetch(conn, query, timeout_ms)
        if len(fetched) < rows and "TABLESAMPLE" in query.as_string(conn):
            # The estimate promised more rows than the sampled pages held
            # (stale statistics, or an unlucky draw): read the first ones instead.
            fetched = _fetch(conn, sample_query(_unsized(relation), columns, rows), timeout_ms)
    except psycopg.Error as exc:
        raise SamplingError(relation.key, exc.sqlstate, type(exc).__name__) from None
    values: dict[str, list[str]] = {name: [] for name in columns}
    for row in fetched:
        for name, value in zip(columns, row, strict=True):
            if value is not None:
                values[name].append(value)
    return values


def _unsized(relation: Relation) -> Relation:
    return Relation(relation.schema, relation.name, relation.kind, None, None, relation.columns)


def _fetch(conn: psycopg.Connection[Any], query: sql.Composed, timeout_ms: int) -> list[Any]:
    """One round trip: the transaction, its limits and the query in one simple-query
    message (the scan's cost is mostly round trips, one per relation)."""
    script = (
        "BEGIN READ ONLY; "
        f"SET LOCAL statement_timeout = {int(timeout_ms)}; "
        f"SET LOCAL lock_timeout = {min(int(timeout_ms), 1000)}; "
        f"{query.as_string(conn)}; COMMIT"
    )
    with conn.cursor() as cur:
        try:
            cur.execute(script.encode())
            while cur.description is None and cur.nextset():
                pass
            return cur.fetchall()
        except psycopg.Error:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
            raise
