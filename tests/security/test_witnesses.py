"""Positive controls: the witnesses the attack tests rely on do see what reaches the database.

Each attack asserts that something did NOT happen (no raw SSN, no ``ddl_seen``
row, no file). These show that the same thing, sent straight to the database
as the sidecar's own role, does happen, so no attack test passes vacuously.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import pytest

from tests.security.conftest import STAGING_SSNS, Upstream
from tests.security.wire import RawClient, public_ssns_in, q
from tests.sidecar.proxy.conftest import SEC_TOKEN, SSNS, Sidecar

PAYLOAD = r"SELECT 'x\'' , (SELECT string_agg(ssn, chr(44)) FROM public.customers) -- '"


def test_the_app_role_is_unprivileged(upstream: Upstream) -> None:
    with psycopg.connect(upstream.app_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False)
        owned = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles "
            "WHERE rolname = current_user)"
        ).fetchone()
        assert owned == (0,)
        # The database's default search_path: unqualified customers is staging's.
        assert conn.execute("SELECT ssn FROM customers WHERE id = 1").fetchone() == (
            STAGING_SSNS[0],
        )


def test_a_ddl_that_reaches_the_database_is_seen(upstream: Upstream) -> None:
    upstream.clear_ddl_seen()
    name = "pwned_" + secrets.token_hex(4)
    with psycopg.connect(upstream.app_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name}(x int)")
    assert "CREATE TABLE" in upstream.ddl_tags()
    assert upstream.relation_exists(name)
    with upstream.admin() as conn:
        conn.execute(f"DROP TABLE {name}")
    upstream.clear_ddl_seen()


def test_a_program_that_reaches_the_database_runs(upstream: Upstream, witness_file: Path) -> None:
    # As an administrator: the sidecar's own role may not run programs at all.
    with upstream.admin() as conn:
        conn.execute(f"COPY (SELECT 1) TO PROGRAM 'touch {witness_file}'")
    assert witness_file.exists()
    with (
        psycopg.connect(upstream.app_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(f"COPY (SELECT 1) TO PROGRAM 'touch {witness_file}'")


def test_the_lexical_payload_leaks_when_the_server_reads_it_with_backslash_escapes(
    upstream: Upstream,
) -> None:
    with psycopg.connect(upstream.app_dsn, autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("SET standard_conforming_strings = off")
        cur.execute(PAYLOAD)
        assert public_ssns_in(repr(cur.fetchall())) == set(SSNS)


def test_the_exempt_team_sees_raw_values_through_the_sidecar(sidecar: Sidecar) -> None:
    with RawClient(sidecar, user="sec", token=SEC_TOKEN) as client:
        reply = client.exchange(q("SELECT ssn FROM public.customers ORDER BY id"))
    assert reply.column() == SSNS
