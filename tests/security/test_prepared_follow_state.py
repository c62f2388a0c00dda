"""Finding 8: prepared statements follow the confirmed session state.

PostgreSQL re-analyses a prepared statement when the search_path it was planned
under changes: ``SELECT ssn FROM customers`` prepared under ``staging, public``
reads staging.customers; bound again after ``SET search_path = public`` it reads
public.customers. The sidecar decided (and rewrote) it once, for staging, where
nothing is classified. An attacker prepares under the default path, switches,
and binds again. Would leak: every raw public SSN. The fixed sidecar decides the
statement again under the new state.
"""

from __future__ import annotations

import secrets

import psycopg

from tests.security.conftest import (
    PUBLIC_MASKED,
    STAGING_SSNS,
    assert_decided_under,
    statement_events,
)
from tests.security.wire import RawClient, bind_execute, extended, public_ssns_in, q
from tests.sidecar.proxy.conftest import Sidecar, wait_for


def _read(tag: str) -> str:
    return f"SELECT ssn AS {tag} FROM customers ORDER BY id"


def test_psycopg_prepared_statement_after_set_search_path(sidecar: Sidecar) -> None:
    """Attack: psycopg ``prepare=True`` under staging, SET search_path = public, the
    same prepared statement again (Bind only)."""
    tag = "pp" + secrets.token_hex(3)
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        first = [r[0] for r in conn.execute(_read(tag), prepare=True).fetchall()]
        assert first == STAGING_SSNS
        psycopg.ClientCursor(conn).execute("SET search_path = public")
        again = [r[0] for r in conn.execute(_read(tag), prepare=True).fetchall()]
    assert public_ssns_in(repr(again)) == set(), "the re-bound statement returned raw SSNs"
    assert again == PUBLIC_MASKED


def test_raw_named_statement_after_set_search_path(sidecar: Sidecar) -> None:
    """Attack: Parse("s1") under staging; later ``Q SET search_path = public`` and
    Bind("s1")/Execute/Sync in ONE write."""
    tag = "rn" + secrets.token_hex(3)
    with RawClient(sidecar) as client:
        made = client.exchange(extended(_read(tag), name="s1"))
        assert made.column() == STAGING_SSNS, made.errors
        reply = client.exchange(q("SET search_path = public"), bind_execute("s1"))
    assert public_ssns_in(reply.raw) == set(), "the re-bound statement returned raw SSNs"
    assert reply.split()[1].column() == PUBLIC_MASKED
    events = wait_for(lambda: len(statement_events(sidecar, tag)) >= 2, timeout=8)
    assert events, "no audit event for the second run"
    assert_decided_under(statement_events(sidecar, tag)[-1], "public")


def test_raw_named_statement_after_reset(sidecar: Sidecar) -> None:
    """The reverse: prepared under public (masked), RESET, bound again: staging's rows."""
    tag = "rr" + secrets.token_hex(3)
    with RawClient(sidecar) as client:
        assert not client.exchange(q("SET search_path = public")).errors
        made = client.exchange(extended(_read(tag), name="s2"))
        assert public_ssns_in(made.raw) == set(), "raw public SSNs came back"
        assert made.column() == PUBLIC_MASKED
        reply = client.exchange(q("RESET search_path"), bind_execute("s2"))
    assert reply.split()[1].column() == STAGING_SSNS
    # Two events name the tag (the run under public, then this one): wait for both,
    # or a busy machine's spool flush hands over the first alone.
    events = wait_for(lambda: len(statement_events(sidecar, tag)) >= 2, timeout=8)
    assert events, "no audit event for the second run"
    assert_decided_under(statement_events(sidecar, tag)[-1], "staging")
