"""A bundle change reaches statements prepared before it, on the same connection.

Each test prepares a statement through the real sidecar (psycopg ``prepare=True``
or its auto-prepare threshold), replaces the bundle file the sidecar watches,
waits until the sidecar reports the new revision, and runs the same prepared
statement again. Before the fix the upstream kept the statement prepared with
the old rewritten SQL, so the old policy applied for the session's lifetime.
"""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import pq

from tests.sidecar.proxy.conftest import (
    SSNS,
    Sidecar,
    build_bundle,
    start_sidecar,
    wait_for,
)

SSN_QUERY = "SELECT ssn FROM customers WHERE id = %s"
NAME_QUERY = "SELECT name FROM customers WHERE id = %s"


def _partial(value: str, keep: int) -> str:
    return "*" * (len(value) - keep) + value[-keep:]


class Bundles:
    """The running sidecar's bundle file: publish a changed bundle and wait for it."""

    def __init__(self, sidecar: Sidecar, path: Path, first: dict[str, Any]) -> None:
        self.sidecar = sidecar
        self.path = path
        self.current = first

    def publish(self, **overrides: Any) -> None:
        from sidecar.engine import compute_revision

        bundle = {**self.current, **copy.deepcopy(overrides), "revision": ""}
        bundle["revision"] = compute_revision(bundle)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(bundle))
        tmp.replace(self.path)
        revision = f'revision="{bundle["revision"]}"'
        assert wait_for(lambda: revision in self.sidecar.metrics(), timeout=10)
        self.current = bundle

    def set_ssn_strategy(self, strategy: str, **params: Any) -> None:
        rules = copy.deepcopy(self.current["masking_rules"])
        for rule in rules:
            if rule["classification"] == "pii.ssn":
                rule["strategy"] = strategy
                rule["params"] = params
        self.publish(masking_rules=rules)


@pytest.fixture
def bundles(sidecar: Sidecar, upstream: str) -> Bundles:
    """The module's sidecar, serving the module's first bundle again (an earlier test
    changed it; its sessions, and the statements they prepared, are gone)."""
    first = build_bundle(urlsplit(upstream).path.lstrip("/"))
    bundles = Bundles(sidecar, sidecar.config_path.parent / "bundle.json", first)
    bundles.publish()
    return bundles


def _ssn(conn: psycopg.Connection, customer: int, **kw: Any) -> str:
    row = conn.execute(SSN_QUERY, (customer,), **kw).fetchone()
    assert row is not None
    return str(row[0])


def test_explicitly_prepared_select_gets_the_new_mask(bundles: Bundles) -> None:
    with psycopg.connect(bundles.sidecar.dsn(), autocommit=True) as conn:
        assert _ssn(conn, 1, prepare=True) == _partial(SSNS[0], 4)
        assert _ssn(conn, 2, prepare=True) == _partial(SSNS[1], 4)

        bundles.set_ssn_strategy("partial", keep_last=2)
        assert _ssn(conn, 3, prepare=True) == _partial(SSNS[2], 2)
        assert _ssn(conn, 4, prepare=True) == _partial(SSNS[3], 2)

        bundles.set_ssn_strategy("redact")
        assert _ssn(conn, 5, prepare=True) == "***"
        # Re-deciding a statement whose SQL did not change keeps it as it is.
        bundles.publish(issued_at="2026-11-23T13:00:00Z")
        assert _ssn(conn, 6, prepare=True) == "***"
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_auto_prepared_select_gets_the_new_mask(bundles: Bundles) -> None:
    with psycopg.connect(bundles.sidecar.dsn(), autocommit=True) as conn:
        assert conn.prepare_threshold == 5
        for i in range(1, 11):  # past psycopg's threshold: now a named statement
            assert _ssn(conn, i) == _partial(SSNS[i - 1], 4)
        bundles.set_ssn_strategy("partial", keep_last=1)
        for i in range(11, 14):
            assert _ssn(conn, i) == _partial(SSNS[i - 1], 1)


def test_a_column_classified_after_the_prepare_is_masked(bundles: Bundles) -> None:
    with psycopg.connect(bundles.sidecar.dsn(), autocommit=True) as conn:
        name = conn.execute(NAME_QUERY, (7,), prepare=True).fetchone()
        assert name == ("Customer 7",)

        classified = [
            *bundles.current["column_classifications"],
            {
                "schema": "public",
                "table": "customers",
                "column": "name",
                "classification": "pii.ssn",
            },
        ]
        bundles.publish(column_classifications=classified)
        assert conn.execute(NAME_QUERY, (8,), prepare=True).fetchone() == ("******er 8",)


def _pg_notes(upstream: str) -> list[tuple[int, str]]:
    with psycopg.connect(upstream, autocommit=True) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, body FROM notes ORDER BY id")]


def test_a_guardrail_that_now_blocks_refuses_the_prepared_statement(
    bundles: Bundles, upstream: str
) -> None:
    with psycopg.connect(upstream, autocommit=True) as admin:
        admin.execute("TRUNCATE notes RESTART IDENTITY")
        admin.execute("INSERT INTO notes (body) VALUES ('one'), ('two'), ('three')")
    update = "UPDATE notes SET body = %s WHERE id = %s"
    seen = {e["id"] for e in bundles.sidecar.events()}  # the module's sidecar: earlier tests'
    with psycopg.connect(bundles.sidecar.dsn(), autocommit=True) as conn:
        assert conn.execute(update, ("ONE", 1), prepare=True).rowcount == 1

        freeze = {
            "name": "freeze-notes",
            "position": 0,
            "enabled": True,
            "action": "block",
            "message": "Notes are frozen for the audit",
            "conditions": {"statement_kinds": ["update"]},
        }
        bundles.publish(guardrails=[freeze, *bundles.current["guardrails"]])

        for _ in range(2):  # every later run is refused, not only the first
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                conn.execute(update, ("TWO", 2), prepare=True)
            assert "Notes are frozen for the audit" in str(refused.value)
            assert refused.value.sqlstate == "42501"
        # The connection is still usable, and the old statement never ran.
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (3,)
        assert _pg_notes(upstream) == [(1, "ONE"), (2, "two"), (3, "three")]

        def refusals() -> list[dict[str, Any]]:
            events = bundles.sidecar.events()
            return [
                e
                for e in events
                if e.get("outcome") == "blocked" and e["kind"] == "update" and e["id"] not in seen
            ]

        # Each refusal is in the audit trail, redacted (never the literal).
        assert len(wait_for(lambda: len(refusals()) >= 2 and refusals(), timeout=10) or []) == 2
        assert all("TWO" not in json.dumps(e) for e in refusals())

        # Lifting the guardrail lets the same prepared statement run again.
        bundles.publish(
            guardrails=[g for g in bundles.current["guardrails"] if g["name"] != "freeze-notes"]
        )
        assert conn.execute(update, ("TWO", 2), prepare=True).rowcount == 1
        assert _pg_notes(upstream) == [(1, "ONE"), (2, "TWO"), (3, "three")]


def test_pipeline_and_binary_results_across_a_re_prepare(bundles: Bundles) -> None:
    with psycopg.connect(bundles.sidecar.dsn(), autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        assert cur.execute(SSN_QUERY, (1,), prepare=True).fetchone() == (_partial(SSNS[0], 4),)

        bundles.set_ssn_strategy("partial", keep_last=3)
        with conn.pipeline() as pipeline:
            cursors = []
            for i in range(1, 6):
                c = conn.cursor(binary=True)
                c.execute(SSN_QUERY, (i,), prepare=True)
                cursors.append(c)
                if i == 3:
                    pipeline.sync()
            plain = conn.execute("SELECT 41 + 1")
        assert [c.fetchone() for c in cursors] == [(_partial(SSNS[i], 3),) for i in range(5)]
        assert plain.fetchone() == (42,)

        # An error ahead of the re-prepare in the same pipeline segment makes the
        # server skip it; the next segment must still not see the old mask.
        bundles.set_ssn_strategy("redact")
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline() as pipeline:
            conn.execute("SELECT 1 / 0")
            conn.execute(SSN_QUERY, (1,), prepare=True)
            pipeline.sync()
        assert _ssn(conn, 2, prepare=True, binary=True) == "***"
        assert _ssn(conn, 3, prepare=True) == "***"


def test_unnamed_statement_bound_again_after_a_change(bundles: Bundles) -> None:
    """A client that binds the unnamed statement twice, across a bundle change."""
    with psycopg.connect(bundles.sidecar.dsn(), autocommit=True) as conn:
        pgconn = conn.pgconn
        pgconn.prepare(b"", b"SELECT ssn FROM customers WHERE id = $1")
        first = pgconn.exec_prepared(b"", [b"1"])
        assert first.get_value(0, 0) == _partial(SSNS[0], 4).encode()

        bundles.set_ssn_strategy("partial", keep_last=2)
        again = pgconn.exec_prepared(b"", [b"9"])
        assert again.error_message == b""
        assert again.get_value(0, 0) == _partial(SSNS[8], 2).encode()


def test_sql_prepare_is_refused_to_run_after_a_change_until_deallocated(bundles: Bundles) -> None:
    """SQL-level PREPARE/EXECUTE: the sidecar cannot re-prepare what it cannot name,
    so after a bundle change it refuses to run those statements (fail closed)."""
    with psycopg.connect(bundles.sidecar.dsn(), autocommit=True) as conn:
        conn.execute("PREPARE leak(int) AS SELECT ssn FROM customers WHERE id = $1")
        assert conn.execute("EXECUTE leak(1)").fetchone() == (_partial(SSNS[0], 4),)

        bundles.set_ssn_strategy("redact")
        for run in ("EXECUTE leak(1)", "EXPLAIN ANALYZE EXECUTE leak(1)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="DEALLOCATE ALL"):
                conn.execute(run)
        assert conn.execute("SELECT 1").fetchone() == (1,)

        conn.execute("DEALLOCATE ALL")
        conn.execute("PREPARE leak(int) AS SELECT ssn FROM customers WHERE id = $1")
        assert conn.execute("EXECUTE leak(2)").fetchone() == ("***",)


def test_a_prepared_statement_that_now_needs_review_is_held(upstream: str, tmp_path: Path) -> None:
    """Review after the change: the Bind is held for approval like any reviewed
    statement; with the control plane down the hold fails closed (WR001)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = build_bundle(urlsplit(upstream).path.lstrip("/"), approvals={"hold_seconds": 5})
    sidecar = start_sidecar(
        tmp_path, upstream, first, approvals_url=f"http://127.0.0.1:{port}/approvals"
    )
    bundles = Bundles(sidecar, tmp_path / "bundle.json", first)
    with psycopg.connect(upstream, autocommit=True) as admin:
        admin.execute("TRUNCATE notes RESTART IDENTITY")
        admin.execute("INSERT INTO notes (body) VALUES ('one'), ('two')")
    update = "UPDATE notes SET body = %s WHERE id = %s"
    try:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            assert conn.execute(update, ("ONE", 1), prepare=True).rowcount == 1
            review = {
                "name": "review-notes",
                "position": 0,
                "enabled": True,
                "action": "review",
                "message": "Note edits need a reviewer",
                "conditions": {"statement_kinds": ["update"]},
            }
            bundles.publish(guardrails=[review, *bundles.current["guardrails"]])
            with pytest.raises(psycopg.Error, match="approval could not be requested") as held:
                conn.execute(update, ("TWO", 2), prepare=True)
            assert held.value.sqlstate == "WR001"
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert _pg_notes(upstream) == [(1, "ONE"), (2, "two")]
    finally:
        sidecar.stop()


def test_client_close_and_parse_pipelined_around_a_re_prepare(bundles: Bundles) -> None:
    """libpq pipeline: the client's own Close and Parse replies, before and after the
    sidecar's Close + Parse, reach the client one for one and in order."""
    with psycopg.connect(bundles.sidecar.dsn(), autocommit=True) as conn:
        pgconn = conn.pgconn
        sql = b"SELECT ssn FROM customers WHERE id = $1"
        for name in (b"s", b"gone"):
            assert pgconn.prepare(name, sql).status == pq.ExecStatus.COMMAND_OK
        bundles.set_ssn_strategy("partial", keep_last=2)

        pgconn.enter_pipeline_mode()
        pgconn.send_close_prepared(b"gone")
        pgconn.send_prepare(b"fresh", b"SELECT name FROM customers WHERE id = $1")
        pgconn.send_query_prepared(b"s", [b"4"])
        pgconn.send_close_prepared(b"fresh")
        pgconn.send_query_prepared(b"s", [b"5"])
        pgconn.pipeline_sync()
        pgconn.send_query_prepared(b"s", [b"6"])
        pgconn.pipeline_sync()
        results = []
        syncs = 0
        while syncs < 2:
            while pgconn.is_busy():
                pgconn.consume_input()
            res = pgconn.get_result()
            if res is None:
                continue
            if res.status == pq.ExecStatus.PIPELINE_SYNC:
                syncs += 1
                continue
            results.append(res)
        pgconn.exit_pipeline_mode()

        ok, tuples = pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK
        assert [r.status for r in results] == [ok, ok, tuples, ok, tuples, tuples]
        values = [r.get_value(0, 0) for r in results if r.status == tuples]
        assert values == [_partial(SSNS[i], 2).encode() for i in (3, 4, 5)]
        assert conn.execute("SELECT 1").fetchone() == (1,)
