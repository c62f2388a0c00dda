"""Parser differential against a real server: the engine must see as many statements
as PostgreSQL runs, for every corpus text that PostgreSQL accepts.

Each text is sent with the simple query protocol inside a savepoint (so even
DROP TABLE is rolled back); every statement yields one result, so the number
of results is the server's own count.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from sidecar.engine import Engine
from tests.sidecar.engine.cases import CASES

# Texts that would leave the transaction, need superuser powers, or cannot run
# inside a transaction block are left out.
UNSAFE = re.compile(
    r"\b(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|START|VACUUM|CONCURRENTLY|DATABASE|SYSTEM|"
    r"ROLE|USER|EXTENSION|SERVER|LOAD|COPY|pg_\w+|lo_\w+|dblink\w*|DISCARD|CLUSTER|REINDEX|"
    r"PREPARE|EXECUTE|DEALLOCATE|DECLARE|FETCH|MOVE|CLOSE|LISTEN|NOTIFY|UNLISTEN|CHECKPOINT|"
    r"SECURITY|IMPORT|REASSIGN|DEFAULT PRIVILEGES|EVENT|SET|RESET)\b",
    re.IGNORECASE,
)
TEXTS = sorted({c.sql for c in CASES if c.scs and c.sql.strip() and not UNSAFE.search(c.sql)})


def _server_count(conn: psycopg.Connection[Any], sql: str) -> int | None:
    conn.execute("SAVEPOINT differential")
    # Let DROP TABLE orders and DELETE FROM orders run to the end (rolled back).
    conn.execute("ALTER TABLE payments DROP CONSTRAINT payments_order_id_fkey")
    try:
        with conn.cursor() as cur:
            cur.execute(sql.encode("utf-8"))
            count = 1
            while cur.nextset():
                count += 1
        return count
    except psycopg.Error:
        return None  # rejected or failed part-way: no count to compare
    finally:
        conn.execute("ROLLBACK TO SAVEPOINT differential")


def test_enough_texts() -> None:
    assert len(TEXTS) >= 150


@pytest.mark.parametrize("sql", TEXTS, ids=[t[:70] for t in TEXTS])
def test_engine_splits_like_the_server(
    sql: str, engines: dict[str, Engine], pg: psycopg.Connection[Any]
) -> None:
    d = engines["production"].decide(identity="bob", sql=sql)
    count = _server_count(pg, sql)
    if count is None:
        pytest.skip("the server rejected or could not finish this text")
    parsed = [s for s in d.statements if s.kind != "unparseable"]
    assert len(parsed) == count, [s.kind for s in d.statements]
