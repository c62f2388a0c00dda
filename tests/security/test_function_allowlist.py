"""Finding 4: functions are judged by an allowlist, not a denylist.

Today a function is refused only if it is on a list of known-dangerous ones, and
an ``allow`` guardrail that matches everything (``allow-the-rest``) lifts even
that. An attacker calls what the lists forgot: statement-text functions that
show other sessions' (rewritten) SQL, server-file functions, unsafe set_config.

The fixed sidecar refuses statement-text and server-access functions whatever
the guardrails say (even one naming the function), refuses functions that are
on no list (rule ``default.function.unlisted``) unless a guardrail names them,
and still lets psql's catalog queries through.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.conftest import (
    Upstream,
    assert_refused_fields,
    guardrail,
    security_bundle,
    statement_events,
    wait_event,
)
from tests.security.wire import RawClient, q
from tests.sidecar.proxy.conftest import ALICE_TOKEN, SEC_TOKEN, Sidecar, start_sidecar

STATEMENT_TEXT = {
    "pg_prepared_statement": "SELECT * FROM pg_prepared_statement()",
    "pg_cursor": "SELECT * FROM pg_cursor()",
    "pg_stat_get_backend_activity": "SELECT pg_stat_get_backend_activity(1)",
    "pg_stat_get_activity": "SELECT * FROM pg_stat_get_activity(NULL)",
    "current_query": "SELECT current_query()",
}
SERVER_ACCESS = {
    "pg_read_binary_file": "SELECT pg_read_binary_file('/etc/hostname')",
    "lo_import": "SELECT lo_import('/etc/hostname')",
    "pg_read_file": "SELECT pg_catalog.pg_read_file('/etc/hostname')",
    "pg_ls_dir": "SELECT * FROM pg_ls_dir('.')",
}
UNSAFE_SET_CONFIG = {
    "session_replication_role": "SELECT set_config('session_replication_role', 'replica', false)",
    "role": "SELECT set_config('role', 'none', false)",
    "session_authorization": "SELECT set_config('session_authorization', 'postgres', false)",
}
NAMED = [*STATEMENT_TEXT, *SERVER_ACCESS, "note_count", "set_config"]
IDENTITIES = {"alice": ALICE_TOKEN, "sec": SEC_TOKEN}


@pytest.fixture(scope="module")
def named_sidecar(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sidecar]:
    """A sidecar whose first guardrail allows, by name, every function tested here."""
    base = security_bundle(upstream.name)
    rules = [guardrail("allow-named", "allow", 0, functions=NAMED), *base["guardrails"]]
    workdir = tmp_path_factory.mktemp("named")
    proc = start_sidecar(
        workdir, upstream.app_dsn, security_bundle(upstream.name, guardrails=rules)
    )
    try:
        yield proc
    finally:
        proc.stop()


def _pick(which: str, sidecar: Sidecar, named_sidecar: Sidecar) -> Sidecar:
    return named_sidecar if which == "named" else sidecar


def _refused_once(target: Sidecar, identity: str, sql: str) -> None:
    with RawClient(target, user=identity, token=IDENTITIES[identity]) as client:
        reply = client.exchange(q(sql), q("SELECT 1"))
    first, after = reply.split()
    assert first.errors, f"not refused: {first.tags} {first.text_rows()[:3]}"
    assert_refused_fields(first.errors[0])
    assert after.column() == ["1"], "the session is not usable after the refusal"


@pytest.mark.parametrize("which", ["allow-the-rest", "named"])
@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("function", STATEMENT_TEXT)
def test_statement_text_functions_are_refused(
    sidecar: Sidecar, named_sidecar: Sidecar, function: str, identity: str, which: str
) -> None:
    """Attack: read statement text (other sessions', prepared, cursors, this one's)
    through functions no list named; under hash masking the rewritten text carries
    the masking machinery. Refused even when a guardrail names the function, for
    the masking-exempt team too."""
    _refused_once(_pick(which, sidecar, named_sidecar), identity, STATEMENT_TEXT[function])


@pytest.mark.parametrize("which", ["allow-the-rest", "named"])
@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("function", SERVER_ACCESS)
def test_server_access_is_refused_whatever_the_guardrails(
    sidecar: Sidecar, named_sidecar: Sidecar, function: str, identity: str, which: str
) -> None:
    """Attack: read the server's files. The server would refuse the sidecar's role
    too, but with its own 42501: the refusal must be Warden's, before the database."""
    _refused_once(_pick(which, sidecar, named_sidecar), identity, SERVER_ACCESS[function])


@pytest.mark.parametrize("which", ["allow-the-rest", "named"])
@pytest.mark.parametrize("name", UNSAFE_SET_CONFIG)
def test_unsafe_set_config_is_refused(
    sidecar: Sidecar, named_sidecar: Sidecar, name: str, which: str
) -> None:
    """Attack: set_config on a setting that weakens the session (replication role
    skips triggers and FKs, role/session_authorization change identity)."""
    _refused_once(_pick(which, sidecar, named_sidecar), "alice", UNSAFE_SET_CONFIG[name])


def test_unlisted_user_function_is_refused_by_default(sidecar: Sidecar) -> None:
    """Attack: call a function the bundle knows nothing about (it could read any
    table as its owner, or return anything). Refused with default.function.unlisted."""
    tag = "nc_" + secrets.token_hex(3)
    with RawClient(sidecar) as client:
        reply = client.exchange(q(f"SELECT public.note_count() AS {tag}"))
    assert reply.errors, f"not refused: {reply.tags} {reply.text_rows()}"
    assert_refused_fields(reply.errors[0])
    event = wait_event(sidecar, tag)
    assert event["outcome"] == "blocked"
    rules = [r["rule"] for r in event["reasons"]]
    assert "default.function.unlisted" in rules, rules


def test_unlisted_user_function_is_allowed_when_a_guardrail_names_it(
    named_sidecar: Sidecar,
) -> None:
    with RawClient(named_sidecar) as client:
        reply = client.exchange(q("SELECT public.note_count() AS named_nc"))
    assert not reply.errors, reply.errors
    assert reply.column() == ["0"]
    assert not [e for e in statement_events(named_sidecar, "named_nc") if e["outcome"] != "allowed"]


def _psql(sidecar: Sidecar, command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": ALICE_TOKEN, "PGSSLMODE": "disable"}
    return subprocess.run(
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
            command,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (r"\d customers", ['Table "staging.customers"', "ssn", "name"]),
        (r"\d public.customers", ['Table "public.customers"', "email", "ssn"]),
        (r"\dt", ["customers", "notes", "ddl_seen"]),
        (r"\df", ["note_count"]),
        (r"\dn", ["public", "staging"]),
    ],
)
def test_psql_meta_commands_still_work(sidecar: Sidecar, command: str, expected: list[str]) -> None:
    """Not over-blocking: psql's catalog queries (pg_catalog functions) run as alice
    through a production sidecar."""
    result = _psql(sidecar, command)
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout, (word, result.stdout)


def _complete(sidecar: Sidecar, typed: bytes) -> bytes:
    """What psql's tab completion makes of ``typed`` + two TABs, in a real terminal."""
    import pty
    import select
    import time

    env = {**os.environ, "PGPASSWORD": ALICE_TOKEN, "PGSSLMODE": "disable", "TERM": "dumb"}
    main_fd, tty = pty.openpty()
    proc = subprocess.Popen(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(sidecar.port), "-U", "alice", sidecar.database],
        stdin=tty,
        stdout=tty,
        stderr=tty,
        env=env,
        close_fds=True,
    )
    os.close(tty)
    seen = b""

    def read_until(done: bytes, quiet: float, timeout: float = 10.0) -> None:
        # Until ``done`` shows and then nothing more arrives for ``quiet`` seconds.
        nonlocal seen
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 0.05)
            if ready:
                try:
                    seen += os.read(main_fd, 65536)
                except OSError:
                    return
                last = time.monotonic()
            elif done in seen and time.monotonic() - last > quiet:
                return

    try:
        read_until(b"=>", 0.2)
        before = len(seen)
        os.write(main_fd, typed + b"\t\t")
        read_until(typed, 1.0)
        return seen[before:].replace(b"\x07", b"")  # the terminal bell between completions
    finally:
        proc.kill()
        proc.wait()
        os.close(main_fd)


def test_psql_tab_completion_still_works(sidecar: Sidecar) -> None:
    """Not over-blocking: psql's tab completion queries the catalog (quote_ident,
    pg_table_is_visible, ...) through the production sidecar and offers the tables."""
    assert b"SELECT * FROM public.customers" in _complete(sidecar, b"SELECT * FROM public.cu")
    assert b"SELECT * FROM notes" in _complete(sidecar, b"SELECT * FROM no")


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO PROGRAM 'touch {path}'",
        "COPY notes TO '{path}'",
        "SET ROLE postgres",
        "ALTER SYSTEM SET log_statement = 'none'",
        "CREATE SERVER evil FOREIGN DATA WRAPPER postgres_fdw",
    ],
)
def test_the_safety_floor_holds_under_the_allow_guardrail(
    sidecar: Sidecar, witness_file: Path, statement: str
) -> None:
    """Attack: under a datasource whose last guardrail allows everything, reach the
    server's files and programs, switch role or reconfigure the server. The refusal
    must be Warden's, before the database sees it (and the witness file absent)."""
    _refused_once(sidecar, "sec", statement.format(path=witness_file))
    assert not witness_file.exists()
