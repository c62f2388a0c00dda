"""Finding 7: audit fidelity. The trail keeps redacted statements, never literals.

A statement's ``statement`` in the audit event is the engine's redacted text
(literals replaced by ``$n``). Today statements that wrap a query (PREPARE,
CREATE TABLE AS) are recorded verbatim, so a value a user typed, such as the
SSN they looked up, lands in the audit spool and in the control plane. Would
leak: the literal, to everyone who can read the audit trail.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.security.conftest import Upstream
from tests.security.wire import SYNC, RawClient, extended, q
from tests.sidecar.proxy.conftest import (
    SCHEMA_SQL,
    Sidecar,
    admin_url,
    build_bundle,
    create_database,
    drop_database,
    start_sidecar,
    wait_for,
    with_database,
)

# Each case: (name, literal, messages). The literal is an SSN-shaped value.
CASES: dict[str, Callable[[str, str], list[bytes]]] = {
    "prepare": lambda t, v: [
        q(f"PREPARE px2_{t} AS SELECT id FROM customers WHERE ssn = '{v}'"),
        q(f"DEALLOCATE px2_{t}"),
    ],
    "prepare-extended": lambda t, v: [
        extended(f"PREPARE pe_{t} AS SELECT id FROM customers WHERE ssn = '{v}'", sync=False),
        SYNC,
    ],
    "create-table-as": lambda t, v: [
        q(f"CREATE TABLE t_{t} AS SELECT id FROM customers WHERE ssn = '{v}'")
    ],
    "create-table-as-masked": lambda t, v: [
        q(f"CREATE TABLE tm_{t} AS SELECT id FROM public.customers WHERE ssn = '{v}'")
    ],
    "explain": lambda t, v: [q(f"EXPLAIN SELECT id FROM customers WHERE ssn = '{v}'")],
    "explain-analyze": lambda t, v: [
        q(f"EXPLAIN ANALYZE SELECT id FROM public.customers WHERE ssn = '{v}'")
    ],
    "declare": lambda t, v: [
        q("BEGIN"),
        q(f"DECLARE c_{t} CURSOR FOR SELECT id FROM customers WHERE ssn = '{v}'"),
        q("COMMIT"),
    ],
    "copy": lambda t, v: [q(f"COPY (SELECT id FROM customers WHERE ssn = '{v}') TO STDOUT")],
    "escape-string": lambda t, v: [q(f"SELECT id FROM customers WHERE ssn = E'{v}'")],
    "dollar-quoted": lambda t, v: [q(f"SELECT id FROM customers WHERE ssn = $q${v}$q$")],
    "do-block": lambda t, v: [q(f"DO $$BEGIN PERFORM 1 WHERE '{v}' = '{v}'; END$$")],
    "create-view": lambda t, v: [
        q(f"CREATE VIEW v_{t} AS SELECT id FROM public.customers WHERE ssn = '{v}'")
    ],
}


def _events_for(sidecar: Sidecar, application: str) -> list[dict[str, Any]]:
    return [
        e
        for e in sidecar.events()
        if e.get("type") == "statement" and e.get("application_name") == application
    ]


@pytest.mark.parametrize("case", CASES)
def test_literals_never_reach_the_audit_trail(
    sidecar: Sidecar, upstream: Upstream, case: str
) -> None:
    """Attack (on the trail's readers' behalf): a user's literal, an SSN they searched
    for, written into the audit event's ``statement`` and the spool."""
    tag = secrets.token_hex(3)
    literal = f"9{secrets.randbelow(100):02d}-{secrets.randbelow(100):02d}-3333"
    # Letters only: the trail keeps no run of six digits of an application name.
    application = f"audit_{case}_{tag.translate(str.maketrans('0123456789', 'ghijklmnop'))}"
    messages = CASES[case](tag, literal)
    try:
        with RawClient(sidecar, params={"application_name": application}) as client:
            client.exchange(*messages)
        events = wait_for(lambda: _events_for(sidecar, application), timeout=8)
        assert events, "no audit event for the statement"
        statements = [str(e.get("statement")) for e in events]
        assert not [s for s in statements if literal in s], statements
        spool = sidecar.state_dir / "spool"
        lines = [
            line
            for path in sorted(spool.glob("*.jsonl"))
            for line in path.read_text().splitlines()
            if literal in line
        ]
        assert lines == [], "the literal is in the audit spool"
    finally:
        with upstream.admin() as conn:
            for name in (f"t_{tag}", f"tm_{tag}"):
                conn.execute(f"DROP TABLE IF EXISTS staging.{name}, public.{name}")
            conn.execute(f"DROP VIEW IF EXISTS staging.v_{tag}, public.v_{tag}")


@pytest.fixture(scope="module")
def legacy_strings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """A sidecar in front of a database whose sessions start with
    standard_conforming_strings off (a legacy application's database default)."""
    name = create_database("warden_legacy_")
    try:
        with psycopg.connect(with_database(admin_url(), name), autocommit=True) as conn:
            conn.execute(SCHEMA_SQL)
            conn.execute(f'ALTER DATABASE "{name}" SET standard_conforming_strings = off')
        proc = start_sidecar(
            tmp_path_factory.mktemp("legacy"),
            with_database(admin_url(), name),
            build_bundle(name),
        )
        try:
            yield proc
        finally:
            proc.stop()
    finally:
        drop_database(name)


def test_a_statement_with_legacy_escapes_keeps_nothing_in_the_trail(
    legacy_strings: Sidecar,
) -> None:
    """A review's finding: where standard_conforming_strings is off, ``'a\\'b'`` is
    one literal. The engine refuses such text (it does not lex the legacy escapes),
    but recorded it redacted as if the setting were on, which ends the literal at
    the backslash: the name and SSN in a refused UPDATE reached the trail."""
    secret = "Jane Doe, SSN 001-55-1001"
    statement = f"UPDATE notes SET body = 'Called \\'{secret}\\'' WHERE id = 7"
    with (
        psycopg.connect(legacy_strings.dsn(application_name="legacy"), autocommit=True) as conn,
        pytest.raises(psycopg.Error),  # refused, as text the sidecar cannot lex
    ):
        conn.execute(statement)
    assert wait_for(lambda: _events_for(legacy_strings, "legacy"), timeout=10)
    recorded = " ".join(str(e) for e in _events_for(legacy_strings, "legacy"))
    assert "Jane" not in recorded and "001-55-1001" not in recorded, recorded
    assert "backslash escapes" in recorded


def test_application_name_carries_no_address_or_number_into_the_trail(sidecar: Sidecar) -> None:
    """A review's finding: application_name is the client's free text, set at start or
    by SET, and repeated in every event of its session, where literal redaction never
    looks. An address set at start, and an SSN set later, reached every event."""
    address, ssn = "ann.lee@example.org", "001-55-1001"
    dsn = sidecar.dsn(application_name=f"report for {address}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        conn.execute(f"SET application_name = 'case {ssn} review'")
        conn.execute("SELECT 2")
    assert wait_for(
        lambda: any(e.get("application_name") == "case [number] review" for e in sidecar.events()),
        timeout=10,
    )
    recorded = " ".join(str(e) for e in sidecar.events())
    assert address not in recorded and ssn not in recorded
    assert "report for [email]" in recorded


def test_a_token_typed_as_the_user_name_is_not_kept(sidecar: Sidecar) -> None:
    """A review's finding: a failed sign-in's event keeps the name the client gave (64
    characters), and a token pasted into the user name (47) was kept whole, in a
    trail that cannot forget it, and in the log."""
    token = "wdn_" + secrets.token_hex(21)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(sidecar.dsn(user=token, token=token))
    assert wait_for(
        lambda: any(e.get("type") == "login_failed" for e in sidecar.events()), timeout=10
    )
    recorded = " ".join(str(e) for e in sidecar.events()) + sidecar.log()
    assert token not in recorded and token[10:30] not in recorded
    assert f"{token[:10]}… (a token, not a name)" in recorded


def test_a_value_in_double_quotes_is_not_kept(sidecar: Sidecar) -> None:
    """A review's finding: MySQL's habit, a string in double quotes, is an identifier
    to PostgreSQL, and the redaction of literals left it in the trail, in the
    statement and in its tables."""
    address = "ann.lee@example.org"
    with psycopg.connect(sidecar.dsn(application_name="quoted"), autocommit=True) as conn:
        for statement in (
            f'SELECT id FROM public.customers WHERE email = "{address}"',
            f'SELECT * FROM "{address}"',
        ):
            with pytest.raises(psycopg.Error):
                conn.execute(statement)
    assert wait_for(lambda: len(_events_for(sidecar, "quoted")) >= 2, timeout=10)
    recorded = " ".join(str(e) for e in _events_for(sidecar, "quoted"))
    assert address not in recorded and '"[email]"' in recorded, recorded


def test_a_name_with_digits_keeps_its_name_and_a_number_for_a_name_does_not(
    sidecar: Sidecar,
) -> None:
    """A partition (``events_2024_12``) is named in the trail as it is; a relation
    named by a number in double quotes (an SSN typed where a name belongs) is not."""
    ssn = "001-55-1001"
    with psycopg.connect(sidecar.dsn(application_name="named"), autocommit=True) as conn:
        for statement in ("SELECT * FROM events_2024_12", f'SELECT * FROM public."{ssn}"'):
            with pytest.raises(psycopg.Error):
                conn.execute(statement)
    assert wait_for(lambda: len(_events_for(sidecar, "named")) >= 2, timeout=10)
    tables = [t for e in _events_for(sidecar, "named") for t in e.get("tables", [])]
    recorded = " ".join(str(e) for e in _events_for(sidecar, "named"))
    assert ssn not in recorded, recorded
    assert any(t.endswith("events_2024_12") for t in tables), tables
    assert any(t.endswith(".[number]") for t in tables), tables
