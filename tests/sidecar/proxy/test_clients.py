"""Real clients through the real sidecar: psql, pgbench and psycopg on every protocol path."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg import sql

from tests.sidecar.proxy.conftest import ALICE_TOKEN, Sidecar, wait_for


def psql(
    sidecar: Sidecar,
    *args: str,
    token: str = ALICE_TOKEN,
    user: str = "alice",
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "5"}
    return subprocess.run(
        [
            "psql",
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            str(sidecar.port),
            "-U",
            user,
            "-d",
            sidecar.database,
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_psql_runs_queries_and_shows_a_refusal_cleanly(sidecar: Sidecar) -> None:
    result = psql(
        sidecar,
        "-c",
        "SELECT count(*) FROM customers",
        "-c",
        "DROP TABLE notes",
        "-c",
        "SELECT 41 + 1 AS answer",
    )
    assert "50" in result.stdout
    assert "42" in result.stdout, "the session must stay usable after a refusal"
    assert "ERROR:  Warden blocked this statement" in result.stderr
    assert "no-drop" in result.stderr


def test_psql_transaction_block_fails_after_a_refusal_like_postgres(sidecar: Sidecar) -> None:
    script = "\n".join(
        [
            "BEGIN;",
            "INSERT INTO notes(body) VALUES ('in-tx');",
            "DROP TABLE notes;",
            "SELECT 1;",
            "ROLLBACK;",
            "SELECT count(*) AS kept FROM notes WHERE body = 'in-tx';",
        ]
    )
    result = psql(sidecar, "-v", "ON_ERROR_STOP=0", stdin=script)
    assert "current transaction is aborted" in result.stderr
    assert "kept \n------\n    0" in result.stdout


def test_psql_copy_in_and_out(sidecar: Sidecar) -> None:
    result = psql(
        sidecar,
        stdin="COPY notes(body) FROM STDIN;\ncopied-1\ncopied-2\n\\.\n"
        "SELECT count(*) FROM notes WHERE body LIKE 'copied-%';\n",
    )
    assert result.returncode == 0, result.stderr
    assert " 2\n" in result.stdout
    out = psql(
        sidecar,
        "-c",
        "COPY (SELECT body FROM notes WHERE body LIKE 'copied-%' ORDER BY 1) TO STDOUT",
    )
    assert out.stdout.splitlines() == ["copied-1", "copied-2"]


def test_wrong_token_and_unknown_identity_are_refused_alike(sidecar: Sidecar) -> None:
    wrong = psql(sidecar, "-c", "SELECT 1", token="not-the-token")
    unknown = psql(sidecar, "-c", "SELECT 1", user="mallory")
    assert 'password authentication failed for user "alice"' in wrong.stderr
    assert 'password authentication failed for user "mallory"' in unknown.stderr


def test_startup_is_sanitised(sidecar: Sidecar) -> None:
    with pytest.raises(psycopg.OperationalError, match="options"):
        psycopg.connect(sidecar.dsn(options="-c search_path=evil"))
    # Warden's own settings only: not a server setting beside one, and the address an
    # MCP agent came from only on the sidecar's private listener.
    for options in (
        "-c warden.hold_wait=0 -c search_path=evil",
        "-c warden.client_addr=10.0.0.1",
        "--warden.client_addr=10.0.0.1",
        "-c",
    ):
        with pytest.raises(psycopg.OperationalError, match="options"):
            psycopg.connect(sidecar.dsn(options=options))
    with pytest.raises(psycopg.OperationalError, match="whole seconds"):
        psycopg.connect(sidecar.dsn(options="-c warden.hold_wait=-1"))
    with psycopg.connect(sidecar.dsn(options="-c warden.hold_wait=0")) as conn:
        # Not forwarded: the server never hears of it.
        assert conn.execute("SELECT current_setting('warden.hold_wait', true)").fetchone() == (
            None,
        )
    with pytest.raises(psycopg.OperationalError, match="replication"):
        psycopg.connect(sidecar.dsn(replication="database"))
    with pytest.raises(psycopg.OperationalError, match="is not served here"):
        psycopg.connect(sidecar.dsn(dbname="postgres"))


def test_psycopg_text_binary_and_prepared_beyond_threshold(sidecar: Sidecar) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.prepare_threshold = 2
        with conn.cursor() as cur:
            for i in range(6):  # past the auto-prepare threshold: named statements
                cur.execute("SELECT id, name FROM customers WHERE id = %s", (i + 1,))
                assert cur.fetchone() == (i + 1, f"Customer {i + 1}")
            cur.execute(
                "SELECT id, name, 2.5::float8 FROM customers WHERE id = %s", (7,), binary=True
            )
            assert cur.fetchone() == (7, "Customer 7", 2.5)
            cur.execute("SELECT %s::int + 1", (1,), prepare=True)
            assert cur.fetchone() == (2,)
            cur.execute("SELECT %s::bytea", (b"\x00\xff",), binary=True)
            assert cur.fetchone() == (b"\x00\xff",)


def test_psycopg_pipeline_mode(sidecar: Sidecar) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn, conn.pipeline():
        cursors = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(20)]
        conn.execute("INSERT INTO notes(body) VALUES (%s)", ("pipelined",))
        values = [c.fetchone() for c in cursors]
    assert values == [(i * 2,) for i in range(20)]


def test_refusal_inside_a_pipeline_rolls_back_like_postgres(sidecar: Sidecar) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute("INSERT INTO notes(body) VALUES (%s)", ("pipe-rollback",))
            conn.execute("DROP TABLE notes")
            conn.execute("SELECT 1")
        # Same implicit transaction as the refused statement: rolled back.
        count = conn.execute("SELECT count(*) FROM notes WHERE body = 'pipe-rollback'")
        assert count.fetchone() == (0,)
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)


def test_psycopg_copy_from_and_to(sidecar: Sidecar) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        with conn.cursor().copy("COPY notes (body) FROM STDIN") as copy:
            for i in range(500):
                copy.write_row((f"bulk-{i}",))
        with conn.cursor().copy(
            "COPY (SELECT body FROM notes WHERE body LIKE 'bulk-%') TO STDOUT"
        ) as copy:
            rows = list(copy.rows())
        assert len(rows) == 500
        with conn.cursor().copy("COPY (SELECT id FROM customers) TO STDOUT (FORMAT binary)") as cp:
            cp.set_types(["int4"])
            assert len(list(cp.rows())) == 50


def test_server_side_cursor_with_portal_suspended(sidecar: Sidecar) -> None:
    with psycopg.connect(sidecar.dsn()) as conn, conn.cursor(name="walk") as cur:
        cur.itersize = 7  # Execute with max_rows: the portal is suspended 7 times
        cur.execute("SELECT id FROM customers ORDER BY id")
        assert [r[0] for r in cur] == list(range(1, 51))


def test_held_statement_is_refused_with_the_warden_sqlstate(sidecar: Sidecar) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        # Its own row: the table starts empty, and other tests may run first or not.
        conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("DELETE FROM notes")
        assert info.value.sqlstate == "WR001"
        assert "delete-needs-review" in str(info.value)
        assert "needs approval" in str(info.value)
        assert conn.execute("SELECT count(*) > 0 FROM notes").fetchone() == (True,)


def test_cancel_reaches_the_right_backend(sidecar: Sidecar) -> None:
    with (
        psycopg.connect(sidecar.dsn(), autocommit=True) as conn,
        psycopg.connect(sidecar.dsn(), autocommit=True) as other,
    ):
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 5
        assert conn.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)
        assert other.execute("SELECT 'untouched'").fetchone() == ("untouched",)


def test_function_call_message_is_refused(sidecar: Sidecar) -> None:
    from tests.sidecar.proxy.test_garbage import login, recv_message

    sock = login(sidecar)
    try:
        # FunctionCall for pg_backend_pid() (oid 2026): no SQL text for policy to judge.
        body = (2026).to_bytes(4, "big") + b"\x00\x00" + b"\x00\x00" + b"\x00\x00"
        sock.sendall(b"F" + (len(body) + 4).to_bytes(4, "big") + body)
        kind, error = recv_message(sock)
        assert kind == b"E" and b"42501" in error and b"FunctionCall" in error
        assert recv_message(sock) == (b"Z", b"I")
        sock.sendall(b"Q" + (13).to_bytes(4, "big") + b"SELECT 1\x00")
        assert recv_message(sock)[0] == b"T", "the session stays usable"
    finally:
        sock.close()


def test_pgbench_select_only_and_tpcb_through_the_sidecar(sidecar: Sidecar, upstream: str) -> None:
    init = subprocess.run(
        ["pgbench", "-i", "-q", "-s", "1", "-I", "dtgp", upstream],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    env = {**os.environ, "PGPASSWORD": ALICE_TOKEN, "PGSSLMODE": "disable"}
    base = [
        "pgbench",
        "-n",
        "-h",
        "127.0.0.1",
        "-p",
        str(sidecar.port),
        "-U",
        "alice",
        sidecar.database,
    ]
    for extra in (
        ["-S", "-t", "200", "-c", "2"],
        ["-t", "50", "-c", "2"],
        ["-S", "-M", "prepared", "-t", "200"],
        ["-M", "extended", "-t", "50"],
    ):
        run = subprocess.run(
            [*base, *extra], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        assert run.returncode == 0, run.stderr
        assert "number of failed transactions: 0" in run.stdout


def test_audit_events_for_statements_and_sessions(sidecar: Sidecar) -> None:
    marker = "audit-probe-4242"
    with psycopg.connect(sidecar.dsn(application_name="audit-test"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("SELECT {} AS probe, ssn FROM customers WHERE id = 3").format(
                sql.Literal(marker)
            )
        )
        with pytest.raises(psycopg.Error):
            conn.execute("DROP TABLE customers")

    def mine() -> list[dict]:
        return [e for e in sidecar.events() if e.get("application_name") == "audit-test"]

    events = wait_for(lambda: len(mine()) >= 4 and mine())
    kinds = [e["type"] for e in events]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end"
    select = next(e for e in events if e.get("kind") == "select")
    assert select["outcome"] == "allowed" and select["rows"] == 1
    assert select["identity"] == "alice" and select["masked_columns"]
    drop = next(e for e in events if e.get("kind") == "drop")
    assert drop["outcome"] == "blocked" and drop["action"] == "block"
    assert len({e["id"] for e in events}) == len(events)
    # Literals never reach the trail.
    for event in sidecar.events():
        text = str(event)
        assert marker not in text and "003-55-1003" not in text


def _statements_counted(text: str) -> dict[str, int]:
    prefix = 'warden_sidecar_statements_total{action="'
    return {
        line[len(prefix) :].split('"')[0]: int(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_metrics_count_the_statements_the_audit_trail_records(sidecar: Sidecar) -> None:
    """The counters (the heartbeat's too) count executions: a prepared statement is
    decided once and run ten times here, and counts ten, like its ten events."""
    before = _statements_counted(sidecar.metrics())
    with psycopg.connect(sidecar.dsn(application_name="metrics-test"), autocommit=True) as conn:
        for i in range(10):
            conn.execute("SELECT id FROM customers WHERE id = %s", (i,), prepare=True)
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.Error):
            conn.execute("DROP TABLE customers")

    def recorded() -> dict[str, int]:
        actions: dict[str, int] = {}
        for event in sidecar.events():
            if event["type"] == "statement" and event.get("application_name") == "metrics-test":
                actions[event["action"]] = actions.get(event["action"], 0) + 1
        return actions

    assert wait_for(lambda: recorded() == {"allow": 11, "block": 1}), recorded()
    text = sidecar.metrics()
    after = _statements_counted(text)
    counted = {a: n - before.get(a, 0) for a, n in after.items() if n != before.get(a, 0)}
    assert counted == recorded()
    for name in ("decision_seconds_bucket", "connections_total", "audit_spool_depth"):
        assert f"warden_sidecar_{name}" in text
    assert "warden_sidecar_bundle_age_seconds" in text


def test_large_rows_and_copy_stream_through(sidecar: Sidecar) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT repeat('x', 3000000), 7").fetchone()
        assert row is not None and len(row[0]) == 3_000_000 and row[1] == 7
        big = "y" * 2_000_000
        with conn.cursor().copy("COPY notes (body) FROM STDIN") as copy:
            copy.write_row((big,))
        got = conn.execute("SELECT length(body) FROM notes WHERE body LIKE 'yyy%'").fetchone()
        assert got == (2_000_000,)
