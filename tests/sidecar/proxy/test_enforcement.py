"""On every protocol path, masked columns never leave unmasked and a DROP never reaches the DB.

The positive controls matter: the ``security`` team is exempt from masking and
does see the raw values through the same sidecar, and a DROP run directly on
the database is seen by the event trigger, so neither check can pass vacuously.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import psycopg
import pytest

from tests.sidecar.proxy.conftest import ALICE_TOKEN, EMAILS, SEC_TOKEN, SSNS, Sidecar

Fetch = Callable[[psycopg.Connection], list]


def _simple(conn: psycopg.Connection) -> list:
    # psycopg sends a parameterless statement with the extended protocol; a
    # ClientCursor with no parameters uses the simple Query message.
    cur = psycopg.ClientCursor(conn)
    cur.execute("SELECT * FROM customers ORDER BY id")
    return cur.fetchall()


def _extended_text(conn: psycopg.Connection) -> list:
    return conn.execute("SELECT email, ssn FROM customers WHERE id <= %s", (50,)).fetchall()


def _extended_binary(conn: psycopg.Connection) -> list:
    cur = conn.cursor(binary=True)
    return cur.execute("SELECT email, ssn FROM customers WHERE id <= %s", (50,)).fetchall()


def _prepared(conn: psycopg.Connection) -> list:
    rows = []
    for i in range(1, 51):  # well past psycopg's auto-prepare threshold
        rows += conn.execute("SELECT ssn, email FROM customers WHERE id = %s", (i,)).fetchall()
    return rows


def _pipeline(conn: psycopg.Connection) -> list:
    with conn.pipeline():
        cursors = [
            conn.execute("SELECT ssn, email FROM customers WHERE id = %s", (i,))
            for i in range(1, 51)
        ]
    return [row for c in cursors for row in c.fetchall()]


def _copy_table(conn: psycopg.Connection) -> list:
    with conn.cursor().copy("COPY customers TO STDOUT") as copy:
        return [bytes(block) for block in copy]


def _copy_query(conn: psycopg.Connection) -> list:
    with conn.cursor().copy("COPY (SELECT ssn, email FROM customers) TO STDOUT (FORMAT csv)") as c:
        return [bytes(block) for block in c]


def _server_cursor(conn: psycopg.Connection) -> list:
    with conn.transaction(), conn.cursor(name="c1") as cur:
        cur.itersize = 9
        cur.execute("SELECT ssn, email FROM customers")
        return list(cur)


def _declare_fetch(conn: psycopg.Connection) -> list:
    with conn.transaction():
        conn.execute("DECLARE walk CURSOR FOR SELECT * FROM customers")
        return conn.execute("FETCH ALL FROM walk").fetchall()


def _whole_row(conn: psycopg.Connection) -> list:
    return conn.execute("SELECT row_to_json(c)::text, c::text FROM customers c").fetchall()


def _functions_and_casts(conn: psycopg.Connection) -> list:
    return conn.execute(
        "SELECT upper(email), ssn || '', string_agg(ssn, ',') OVER () FROM customers"
    ).fetchall()


PATHS = [
    _simple,
    _extended_text,
    _extended_binary,
    _prepared,
    _pipeline,
    _copy_table,
    _copy_query,
    _server_cursor,
    _declare_fetch,
    _whole_row,
    _functions_and_casts,
]


def _leaks(rows: list) -> set[str]:
    text = repr(rows).upper() + repr(rows)
    return {v for v in SSNS + EMAILS if v in text or v.upper() in text}


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.__name__.lstrip("_"))
def test_masked_columns_never_leave_unmasked(sidecar: Sidecar, path: Fetch) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        rows = path(conn)
    assert rows, "the path returned nothing, so it proved nothing"
    assert _leaks(rows) == set()
    # Positive control: the exempt team sees the real values on the same path.
    with psycopg.connect(sidecar.dsn(user="sec", token=SEC_TOKEN), autocommit=True) as conn:
        assert _leaks(path(conn))


def test_predicates_see_only_masked_values(sidecar: Sidecar) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        probe = "SELECT count(*) FROM customers WHERE ssn = %s"
        assert conn.execute(probe, (SSNS[0],)).fetchone() == (0,)
        # An error message cannot echo a raw value either.
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT ssn::int FROM customers WHERE id = 1")
        assert SSNS[0] not in str(info.value)


def _ddl_seen(upstream: str) -> list[str]:
    with psycopg.connect(upstream, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT tag FROM ddl_seen WHERE tag LIKE 'DROP%'")]


DROPS = {
    "simple": lambda c: psycopg.ClientCursor(c).execute("DROP TABLE notes"),
    "extended": lambda c: c.execute("DROP TABLE notes", prepare=False),
    "prepared": lambda c: c.execute("DROP TABLE notes", prepare=True),
    "multi-statement": lambda c: psycopg.ClientCursor(c).execute("SELECT 1; DROP TABLE notes"),
    "comment-hidden": lambda c: c.execute("/* harmless */ DROP /* x */ TABLE notes"),
    "in-transaction": lambda c: c.execute("BEGIN; DROP TABLE notes; COMMIT"),
    "pipeline": lambda c: _pipelined_drop(c),
    "truncate": lambda c: c.execute("TRUNCATE notes"),
}


def _pipelined_drop(conn: psycopg.Connection) -> None:
    with conn.pipeline():
        conn.execute("SELECT 1")
        conn.execute("DROP TABLE notes")


def test_detector_sees_a_drop_that_reaches_the_database(upstream: str) -> None:
    with psycopg.connect(upstream, autocommit=True) as conn:
        conn.execute("CREATE TABLE canary (x int)")
        conn.execute("DROP TABLE canary")
    assert "DROP TABLE" in _ddl_seen(upstream)
    with psycopg.connect(upstream, autocommit=True) as conn:
        conn.execute("DELETE FROM ddl_seen")


@pytest.mark.parametrize("name", DROPS)
def test_destructive_statement_never_reaches_the_database(
    sidecar: Sidecar, upstream: str, name: str
) -> None:
    with psycopg.connect(upstream, autocommit=True) as conn:
        conn.execute("DELETE FROM ddl_seen")
        conn.execute("INSERT INTO notes(body) VALUES ('survivor')")
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            DROPS[name](conn)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _ddl_seen(upstream) == []
    with psycopg.connect(upstream, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM notes WHERE body='survivor'").fetchone()[0] >= 1


def test_psql_sees_masking_and_the_blocked_drop(sidecar: Sidecar, upstream: str) -> None:
    env = {**os.environ, "PGPASSWORD": ALICE_TOKEN, "PGSSLMODE": "disable"}
    result = subprocess.run(
        [
            "psql",
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            str(sidecar.port),
            "-U",
            "alice",
            "-d",
            sidecar.database,
            "-c",
            "SELECT email, ssn FROM customers WHERE id = 1",
            "-c",
            "DROP TABLE customers",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert "***@example.com" in result.stdout and "*******1001" in result.stdout
    assert SSNS[0] not in result.stdout and EMAILS[0] not in result.stdout
    assert "no-drop" in result.stderr
    assert _ddl_seen(upstream) == []


def test_standard_conforming_strings_cannot_be_turned_off(sidecar: Sidecar) -> None:
    # With standard_conforming_strings off the backslash escapes the quote, so
    # the text would mean something else than with it on; no route turns it off.
    text = r"SELECT 'x\'; DROP TABLE notes; --'"
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        for attempt in (
            "SET standard_conforming_strings = off",
            "SET LOCAL standard_conforming_strings TO false",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"session\.setting"):
                cur.execute(attempt)
        cur.execute("SHOW standard_conforming_strings")
        assert cur.fetchone() == ("on",)
        cur.execute("SET standard_conforming_strings = on")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-drop"):
            cur.execute(text)
