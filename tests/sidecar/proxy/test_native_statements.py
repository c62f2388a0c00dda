"""Ordinary statements and errors through a production sidecar, as PostgreSQL gives them.

What drivers and ORMs send all day (Django's ``SET CONSTRAINTS``, asyncpg's pool
reset, LISTEN/NOTIFY, pg_restore's ``SET row_security``) runs; a syntax error
gets the server's own error (42601, the parser's message and position) without
a hold, an approval request or the text reaching the server; several statements
in one Parse get the server's answer too. Each error is compared with what
PostgreSQL itself answers to the same text.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.sidecar.proxy.conftest import Sidecar, build_bundle, start_sidecar, wait_for
from tests.sidecar.proxy.test_clients import psql

SYNTAX_ERRORS = [
    "SELEC 1",
    "SELECT * FROM",
    "SELECT 'é' FRM customers",
    "SELECT 'unterminated",
    "SELECT 1; DELET FROM notes",
]


def _server_error(dsn: str, sql: str, prepare: bool = False) -> tuple[str, str, str | None]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql, prepare=prepare)
        # The session stays usable after the error.
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    e = caught.value
    return e.sqlstate or "", e.diag.message_primary or "", e.diag.statement_position


@pytest.mark.parametrize("sql", SYNTAX_ERRORS)
def test_a_syntax_error_is_the_servers_error(sidecar: Sidecar, upstream: str, sql: str) -> None:
    through = _server_error(sidecar.dsn(), sql)
    direct = _server_error(upstream, sql)
    assert through == direct
    assert through[0] == "42601"


def test_a_syntax_error_is_not_held_and_psql_points_at_it(sidecar: Sidecar) -> None:
    result = psql(sidecar, "-c", "SELECT * FRM customers")
    assert 'ERROR:  syntax error at or near "FRM"' in result.stderr
    assert "LINE 1: SELECT * FRM customers" in result.stderr  # psql's caret: a position
    assert "Warden" not in result.stderr
    assert "review" not in result.stderr


def test_a_syntax_error_is_audited_without_its_text(sidecar: Sidecar) -> None:
    dsn = sidecar.dsn(application_name="syntax-audit")
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.SyntaxError),
    ):
        conn.execute("SELECT 'secret-4111' FRM customers")
    events = wait_for(
        lambda: [
            e
            for e in sidecar.events()
            if e.get("application_name") == "syntax-audit" and e.get("type") == "statement"
        ]
    )
    assert events[0]["outcome"] == "blocked"
    assert "default.unparseable" in str(events[0])
    assert "secret-4111" not in str(events)


def test_several_statements_in_one_parse_get_the_servers_answer(
    sidecar: Sidecar, upstream: str
) -> None:
    sql = "SELECT 1; SELECT 2"
    through = _server_error(sidecar.dsn(), sql, prepare=True)
    assert through == _server_error(upstream, sql, prepare=True)
    assert through[:2] == ("42601", "cannot insert multiple commands into a prepared statement")


@pytest.mark.parametrize(
    "sql",
    [
        "SET CONSTRAINTS ALL IMMEDIATE",
        # asyncpg's pool reset, as it sends it
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL",
        "DISCARD ALL",
        "SET row_security = off",
        "UNLISTEN *",
    ],
)
def test_what_changes_nothing_about_reading_runs_in_production(sidecar: Sidecar, sql: str) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute(sql)
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_listen_and_notify_deliver_through_the_sidecar(sidecar: Sidecar) -> None:
    with (
        psycopg.connect(sidecar.dsn(), autocommit=True) as listener,
        psycopg.connect(sidecar.dsn(), autocommit=True) as sender,
    ):
        listener.execute("LISTEN warden_events")
        sender.execute("NOTIFY warden_events, 'hello'")
        received = next(listener.notifies(timeout=10, stop_after=1))
        assert (received.channel, received.payload) == ("warden_events", "hello")


def test_a_code_block_stays_refused_to_an_identity_with_masks(sidecar: Sidecar) -> None:
    # The bundle's last guardrail allows "the rest": it lifts no masking rule.
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            conn.execute("DO $$ BEGIN PERFORM 1; END $$")
        assert "mask.opaque_code" in str(caught.value)


def test_pg_dump_restores_through_the_sidecar(sidecar: Sidecar, upstream: str) -> None:
    """psql -f of a plain pg_dump: its preamble (set_config of search_path,
    row_security, client_min_messages) runs; its DDL is reviewed in production, so
    the dump here holds the data of one table only."""
    dump = subprocess.run(
        ["pg_dump", "--data-only", "--table=notes", "--no-owner", upstream],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "set_config('search_path', '', false)" in dump
    assert "row_security" in dump
    result = psql(sidecar, "-v", "ON_ERROR_STOP=1", stdin=dump)
    assert result.returncode == 0, result.stderr


def test_create_extension_if_not_exists_of_an_installed_one_runs_in_production(
    upstream: str, tmp_path: Path
) -> None:
    """Without a guardrail that allows everything: CREATE EXTENSION is DDL, held for
    review in production, unless the extension is there, when it changes nothing."""
    name = upstream.rsplit("/", 1)[-1].split("?")[0]
    guardrails = [g for g in build_bundle(name)["guardrails"] if g["action"] != "allow"]
    bundle = build_bundle(name, guardrails=guardrails)
    sidecar = start_sidecar(tmp_path / "strict", upstream, bundle)
    try:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            conn.execute("CREATE EXTENSION IF NOT EXISTS plpgsql")  # always installed
            assert any("already exists" in n for n in notices), notices
            for sql in ["CREATE EXTENSION plpgsql", "CREATE EXTENSION IF NOT EXISTS hstore"]:
                with pytest.raises(psycopg.Error) as caught:
                    conn.execute(sql)
                assert "default.ddl_in_production" in str(caught.value), sql
    finally:
        sidecar.stop()
