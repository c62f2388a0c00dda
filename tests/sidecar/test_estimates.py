"""The planner's estimate for a held statement, from a real PostgreSQL.

``PlanEstimator`` runs EXPLAIN (never ANALYZE) on a connection of its own; these
tests check what it reports and that it changes nothing, whatever it is given.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sidecar.estimates import PlanEstimator


@pytest.fixture(scope="module")
def dsn() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.skip("DATABASE_URL is not set: the estimates need a real PostgreSQL")
    return url


@pytest.fixture(scope="module")
def orders(dsn: str) -> Iterator[str]:
    """A table of 993 orders, analysed; its name."""
    name = f"orders_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, status text)")
        conn.execute(f"INSERT INTO {name} SELECT g, 'new' FROM generate_series(1, 993) g")
        conn.execute(f"ANALYZE {name}")
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


def estimate(estimator: PlanEstimator, sql: str, params: Any = (), types: Any = ()) -> Any:
    return asyncio.run(estimator.estimate(sql, list(params), list(types), None))


def test_rows_written_per_table_with_literals_or_bound_values(dsn: str, orders: str) -> None:
    estimator = PlanEstimator(dsn)
    try:
        every = estimate(estimator, f"UPDATE {orders} SET status = 'x' WHERE id > 0")
        assert every == {"rows": {orders: 993}, "top": "ModifyTable", "error": ""}
        text = estimate(
            estimator, f"UPDATE {orders} SET status = $1 WHERE id > $2", [(0, b"x"), (0, b"499")]
        )
        binary = estimate(
            estimator,
            f"UPDATE {orders} SET status = $1 WHERE id > $2",
            [(0, b"x"), (1, (499).to_bytes(4, "big"))],
            [25, 23],
        )
        assert text == binary and 400 < text["rows"][orders] < 600, (text, binary)
        # A text that writes counts what it writes, not what it reads first.
        both = estimate(estimator, f"SELECT * FROM {orders}; DELETE FROM {orders} WHERE id <= 10")
        assert both["top"] == "ModifyTable" and both["rows"][orders] < 50, both
        read = estimate(estimator, f"SELECT * FROM {orders} WHERE id < 100")
        assert read["top"] != "ModifyTable" and 50 < read["rows"][orders] < 150, read
    finally:
        estimator.close()
    with psycopg.connect(dsn) as conn:
        statuses = conn.execute(f"SELECT DISTINCT status FROM {orders}").fetchall()
    assert statuses == [("new",)]  # nothing ran


def test_what_cannot_be_planned_says_why_without_quoting_values(dsn: str, orders: str) -> None:
    estimator = PlanEstimator(dsn)
    try:
        assert estimate(estimator, f"DROP TABLE {orders}")["error"] == (
            "EXPLAIN does not plan DROP statements"
        )
        failed = estimate(estimator, f"UPDATE {orders} SET id = 'secret-\"411'")
        assert failed == {
            "rows": {},
            "top": "",
            "error": "EXPLAIN failed: invalid text representation (SQLSTATE 22P02)",
        }
        # The connection is the estimator's own and survives a failure.
        assert estimate(estimator, f"DELETE FROM {orders} WHERE id = 1")["rows"] == {orders: 1}
    finally:
        estimator.close()


def test_a_lost_connection_is_opened_again(dsn: str, orders: str) -> None:
    estimator = PlanEstimator(dsn)
    try:
        assert estimate(estimator, f"DELETE FROM {orders} WHERE id = 1")["error"] == ""
        with psycopg.connect(dsn, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'warden-estimate'"
            ).fetchall()
        assert killed == [(True,)]
        assert estimate(estimator, f"DELETE FROM {orders} WHERE id = 1")["error"] == ""
    finally:
        estimator.close()


def test_an_unreachable_database_gives_an_error_not_an_exception() -> None:
    estimator = PlanEstimator("host=127.0.0.1 port=1 dbname=x user=x connect_timeout=1")
    result = estimate(estimator, "DELETE FROM t WHERE id = 1")
    assert result["rows"] == {} and result["error"].startswith("EXPLAIN failed")


def test_a_flood_of_held_statements_gets_no_queue_of_explains(dsn: str, orders: str) -> None:
    """Beyond a few waiting, a held statement gets no estimate (said so) rather than
    queueing more work on the database and delaying every request."""
    estimator = PlanEstimator(dsn)

    async def flood() -> list[Any]:
        sql = f"SELECT pg_sleep(0.2) FROM {orders} LIMIT 1"
        return await asyncio.gather(*(estimator.estimate(sql, [], [], None) for _ in range(10)))

    try:
        results = asyncio.run(flood())
    finally:
        estimator.close()
    skipped = [r for r in results if r["error"].startswith("estimate skipped")]
    assert len(skipped) == 10 - PlanEstimator.MAX_WAITING
    assert all(r["top"] for r in results if r not in skipped)
