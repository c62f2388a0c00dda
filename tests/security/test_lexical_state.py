"""Finding 1 (critical): the lexical state raced by pipelining.

The sidecar judges statement text with the session's ``standard_conforming_strings``
as the server last reported it. An attacker turns it off and, in the same
write, sends a statement that reads as one harmless string literal while the
setting is on, but as ``'x'''`` followed by real SQL once the server applies
the change first:

    SELECT 'x\\'' , (SELECT string_agg(ssn, chr(44)) FROM public.customers) -- '

The fixed sidecar refuses every way of turning the setting off (so nothing is
left to race), and ``SHOW standard_conforming_strings`` stays ``on``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.security.conftest import Upstream, assert_refused_fields, assert_warden_refused
from tests.security.wire import SYNC, RawClient, extended, public_ssns_in, q
from tests.sidecar.proxy.conftest import Sidecar

PAYLOAD = r"SELECT 'x\'' , (SELECT string_agg(ssn, chr(44)) FROM public.customers) -- '"

# Every spelling turns standard_conforming_strings off on the real server.
SCS_OFF = {
    "set_config": "SELECT set_config('standard_conforming_strings','off',false)",
    "pg_catalog": "SELECT pg_catalog.set_config('standard_conforming_strings','off',false)",
    "upper-case": "SELECT SET_CONFIG('STANDARD_CONFORMING_STRINGS','OFF',FALSE)",
    "computed-name": "SELECT set_config('standard_' || 'conforming_strings','off',false)",
    "computed-value": "SELECT set_config('standard_conforming_strings','of' || 'f',false)",
    "value-false": "SELECT set_config('standard_conforming_strings','fAlSe',false)",
    "value-zero": "SELECT set_config('standard_conforming_strings','0',false)",
    "in-cte": "WITH s AS (SELECT set_config('standard_conforming_strings','off',false)) "
    "SELECT * FROM s",
    "set": "SET standard_conforming_strings = off",
    "set-session-of": "SET SESSION standard_conforming_strings TO 'of'",
    "update-pg_settings": "UPDATE pg_settings SET setting = 'off' "
    "WHERE name = 'standard_conforming_strings'",
}


def _show_scs_psycopg(conn: psycopg.Connection) -> str:
    row = psycopg.ClientCursor(conn).execute("SHOW standard_conforming_strings").fetchone()
    assert row is not None
    return str(row[0])


def _show_scs_raw(client: RawClient) -> str:
    reply = client.exchange(q("SHOW standard_conforming_strings"))
    assert not reply.errors, reply.errors
    return str(reply.column()[0])


def _psycopg_route(sidecar: Sidecar, send: Callable[[psycopg.Connection], str]) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        leaked = send(conn)
        assert public_ssns_in(leaked) == set(), "raw public SSNs came back"
        assert _show_scs_psycopg(conn) == "on"


def _simple(sql: str) -> Callable[[psycopg.Connection], str]:
    def run(conn: psycopg.Connection) -> str:
        with pytest.raises(psycopg.Error) as info:
            psycopg.ClientCursor(conn).execute(sql)
        assert_warden_refused(info.value)
        return str(info.value)

    return run


def _extended(sql: str) -> Callable[[psycopg.Connection], str]:
    def run(conn: psycopg.Connection) -> str:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql, prepare=False)
        assert_warden_refused(info.value)
        return str(info.value)

    return run


def _pipeline(sql: str) -> Callable[[psycopg.Connection], str]:
    def run(conn: psycopg.Connection) -> str:
        first = conn.cursor()
        second = conn.cursor()
        error: psycopg.Error | None = None
        try:
            with conn.pipeline():
                first.execute(sql)
                second.execute(PAYLOAD)
        except psycopg.Error as exc:
            error = exc
        seen = ""
        with contextlib.suppress(psycopg.Error):
            seen = repr(second.fetchall())
        assert public_ssns_in(seen) == set(), "the pipelined payload returned raw public SSNs"
        assert error is not None, "the setting change was not refused"
        assert_warden_refused(error)
        return seen + str(error)

    return run


@pytest.mark.parametrize("spelling", SCS_OFF)
@pytest.mark.parametrize("route", ["simple", "extended", "psycopg-pipeline"])
def test_scs_off_is_refused_through_psycopg(sidecar: Sidecar, spelling: str, route: str) -> None:
    """Attack: turn standard_conforming_strings off (any spelling) through libpq, alone
    or pipelined with the payload, so a later statement means something else to the
    server than to the sidecar. Would leak: every raw public SSN."""
    make = {"simple": _simple, "extended": _extended, "psycopg-pipeline": _pipeline}[route]
    _psycopg_route(sidecar, make(SCS_OFF[spelling]))


@pytest.mark.parametrize("spelling", SCS_OFF)
def test_scs_off_and_payload_as_two_queries_in_one_write(sidecar: Sidecar, spelling: str) -> None:
    """Attack: ``Q <turn it off>`` and ``Q <payload>`` in ONE write, so the sidecar
    judges the payload before the server's ParameterStatus for the first comes back.
    Would leak: every raw public SSN in the payload's row."""
    with RawClient(sidecar) as client:
        reply = client.exchange(q(SCS_OFF[spelling]), q(PAYLOAD))
        assert public_ssns_in(reply.raw) == set(), "the payload returned raw public SSNs"
        first = reply.split()[0]
        assert first.warden_refusals(), f"not refused: {first.errors or first.tags}"
        assert _show_scs_raw(client) == "on"


@pytest.mark.parametrize("spelling", SCS_OFF)
def test_scs_off_and_payload_in_one_extended_pipeline(sidecar: Sidecar, spelling: str) -> None:
    """Attack: Parse/Bind/Execute of the change, then Parse/Bind/Execute of the payload,
    then one Sync, in ONE write: the server executes the change before it parses the
    payload. Would leak: every raw public SSN."""
    with RawClient(sidecar) as client:
        reply = client.exchange(
            extended(SCS_OFF[spelling], sync=False), extended(PAYLOAD, sync=False), SYNC
        )
        assert public_ssns_in(reply.raw) == set(), "the payload returned raw public SSNs"
        assert reply.warden_refusals(), f"not refused: {reply.errors or reply.tags}"
        assert_refused_fields(reply.errors[0])
        assert _show_scs_raw(client) == "on"


HIDDEN_SPELLINGS = ["set_config", "computed-value", "upper-case", "set", "update-pg_settings"]


def _hidden_ddl(table: str, _: Path) -> str:
    return rf"SELECT 'x\''; CREATE TABLE {table}(x int) -- '"


def _hidden_program(_: str, path: Path) -> str:
    return rf"SELECT 'x\''; COPY (SELECT 1) TO PROGRAM $$touch {path}$$ -- '"


@pytest.mark.parametrize("hidden", [_hidden_ddl, _hidden_program], ids=["ddl", "program"])
@pytest.mark.parametrize("route", ["two-queries", "extended-then-query"])
@pytest.mark.parametrize("spelling", HIDDEN_SPELLINGS)
def test_hidden_statements_never_reach_the_database(
    sidecar: Sidecar,
    upstream: Upstream,
    witness_file: Path,
    spelling: str,
    route: str,
    hidden: Callable[[str, Path], str],
) -> None:
    """Attack: the same race, with a payload that, read with backslash escapes, ends the
    literal and runs ``CREATE TABLE pwned`` or ``COPY ... TO PROGRAM 'touch f'``.
    Would reach the database: a table the event trigger records, a program the
    server runs as its OS user."""
    upstream.clear_ddl_seen()
    table = "pwned_" + secrets.token_hex(4)
    change = SCS_OFF[spelling]
    first = q(change) if route == "two-queries" else extended(change)
    try:
        with RawClient(sidecar) as client:
            reply = client.exchange(first, q(hidden(table, witness_file)))
            scs = _show_scs_raw(client)
        assert not witness_file.exists(), "COPY TO PROGRAM ran on the server"
        assert not upstream.relation_exists(table), "CREATE TABLE reached the database"
        assert "CREATE TABLE" not in upstream.ddl_tags()
        head = reply.split()[0]
        assert head.warden_refusals(), f"not refused: {head.errors or head.tags}"
        assert scs == "on"
    finally:
        with upstream.admin() as conn:
            conn.execute(f"DROP TABLE IF EXISTS staging.{table}, public.{table}")
        upstream.clear_ddl_seen()
