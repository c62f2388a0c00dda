"""Finding 6: a statement prepared with SQL PREPARE, run by a protocol Bind after
the rules changed.

The sidecar re-decides protocol-prepared statements (Parse) when the bundle
changes, and refuses SQL ``EXECUTE`` of SQL-prepared ones. But SQL PREPARE and
protocol Parse share one namespace on the server: a statement made by
``PREPARE px AS ...`` can be run with ``Bind(statement="px")``, which the
sidecar does not know and forwards. An attacker prepares while exempt from
masking, waits for the policy to mask them, then Binds. Would leak: the raw SSN
the new policy masks. (And the mirror image: Parse "px" with the protocol, then
SQL ``EXECUTE px`` after the change.)
"""

from __future__ import annotations

import struct
import time
from typing import Any

from sidecar.proxy import messages as m
from tests.security.conftest import (
    assert_refused_fields,
    exempt,
    publish,
)
from tests.security.wire import (
    SYNC,
    RawClient,
    bind,
    bind_execute,
    execute,
    parse,
    public_ssns_in,
    q,
)
from tests.sidecar.proxy.conftest import SSNS, Sidecar


def test_sql_prepare_then_protocol_bind_after_the_change(
    exempt_then_masked: tuple[Sidecar, dict[str, Any]],
) -> None:
    """Attack: ``PREPARE px`` (simple Query) while exempt; the bundle now masks alice;
    ``Bind(statement "px")``/Execute/Sync on the same connection. Must be refused
    (42501 or 26000) and never return the raw SSN. SQL ``EXECUTE px`` too."""
    sidecar, masked = exempt_then_masked
    with RawClient(sidecar) as client:
        prepared = client.exchange(q("PREPARE px AS SELECT ssn FROM public.customers WHERE id = 1"))
        assert not prepared.errors, prepared.errors
        # Positive control: exempt, the statement returns the raw value.
        assert client.exchange(q("EXECUTE px")).column() == [SSNS[0]]

        publish(sidecar, masked)

        reply = client.exchange(bind_execute("px"))
        assert public_ssns_in(reply.raw) == set(), "Bind of the SQL-prepared statement leaked"
        assert reply.errors, f"not refused: {reply.tags}"
        assert reply.errors[0].get("C") in ("42501", "26000"), reply.errors

        again = client.exchange(q("EXECUTE px"))
        assert public_ssns_in(again.raw) == set()
        assert again.errors, f"not refused: {again.tags}"
        assert_refused_fields(again.errors[0])
        assert client.exchange(q("SELECT 1")).column() == ["1"]


def test_protocol_parse_then_sql_execute_after_the_change(
    exempt_then_masked: tuple[Sidecar, dict[str, Any]],
) -> None:
    """Mirror image: ``Parse("px2")`` while exempt; after the change, SQL
    ``EXECUTE px2`` (and ``EXPLAIN ANALYZE EXECUTE``, ``CREATE TABLE AS EXECUTE``)
    must not run the statement decided under the old rules."""
    sidecar, masked = exempt_then_masked
    with RawClient(sidecar) as client:
        made = client.exchange(
            parse("SELECT ssn FROM public.customers WHERE id = 1", name="px2"),
            bind_execute("px2", sync=False),
            SYNC,
        )
        assert made.column() == [SSNS[0]], made.errors

        publish(sidecar, masked)

        for run in ("EXECUTE px2", "CREATE TEMP TABLE px2_copy AS EXECUTE px2"):
            reply = client.exchange(q(run))
            assert public_ssns_in(reply.raw) == set(), f"{run} leaked the raw SSN"
        copied = client.exchange(q("SELECT * FROM px2_copy"))
        assert public_ssns_in(copied.raw) == set(), "CREATE TABLE AS EXECUTE copied the raw SSN"
        assert client.exchange(q("SELECT 1")).column() == ["1"]


def test_a_bind_behind_an_unconfirmed_reprepare_runs_the_current_rules(
    _exempt_sidecar: tuple[Sidecar, dict[str, Any]],
) -> None:
    """Attack: ``Parse("pm")`` while alice is masked (the server holds the masked
    rewrite). The rules exempt her: ``Bind``/``Execute`` with no Sync, so the sidecar
    re-prepares the raw text and the server keeps its ParseComplete (it answers at the
    Sync). The rules mask her again: ``Bind``/``Execute``/``Sync``. The new verdict's SQL
    is the masked rewrite the server last *confirmed*, so a sidecar that compares with
    that sees nothing to re-prepare, while the server holds the raw text of the
    re-prepare still unconfirmed: the second run returned the raw SSN under the rules
    that mask it. The first run is exempt, its raw value is allowed."""
    sidecar, loose = _exempt_sidecar
    masked = exempt(loose, ["security"])
    publish(sidecar, masked)
    try:
        with RawClient(sidecar) as client:
            made = client.exchange(
                parse("SELECT ssn FROM public.customers WHERE id = 1", name="pm"),
                bind_execute("pm", sync=False),
                SYNC,
            )
            assert made.rows and public_ssns_in(made.raw) == set(), made.errors  # masked

            publish(sidecar, loose)
            client.send(bind("pm"), execute())  # no Sync: the re-prepare stays unconfirmed
            publish(sidecar, masked)
            reply = client.exchange(bind("pm"), execute(), SYNC)
            assert not reply.errors, reply.errors
            exempt_run, masked_run = reply.rows
            assert public_ssns_in(b"".join(v or b"" for v in exempt_run)) == {SSNS[0]}
            assert public_ssns_in(b"".join(v or b"" for v in masked_run)) == set(), (
                "the run under the masking rules returned the raw SSN"
            )
            assert client.exchange(q("SELECT 1")).column() == ["1"]
    finally:
        publish(sidecar, loose)


def test_an_older_reprepare_confirmed_behind_a_newer_one_is_not_taken_for_it(
    _exempt_sidecar: tuple[Sidecar, dict[str, Any]],
) -> None:
    """Attack: ``Parse("pq")`` while alice is exempt. Masked: ``Bind``/``Execute``
    (the sidecar re-prepares the masked rewrite), exempt: ``Bind``/``Execute`` (it
    re-prepares the raw text), no Sync. Each run returns 24 MB, and the client reads
    nothing, so the sidecar sees the first re-prepare confirmed while the second's
    confirmation waits behind the first run's rows. Masked again: ``Bind``/``Execute``/
    ``Sync``. Taking the first confirmation for the statement's state, the sidecar
    saw the masked rewrite in place and sent the Bind as it was, and the server ran
    the raw text of the second re-prepare under the rules that mask."""
    sidecar, loose = _exempt_sidecar
    masked = exempt(loose, ["security"])
    sql = "SELECT ssn, repeat('x', 24000000) AS pad FROM public.customers WHERE id = 1"
    publish(sidecar, loose)
    try:
        with RawClient(sidecar, timeout=60) as client:
            made = client.exchange(parse(sql, name="pq"), SYNC)
            assert not made.errors, made.errors

            publish(sidecar, masked)
            client.send(bind("pq"), execute())
            publish(sidecar, loose)
            client.send(bind("pq"), execute())
            # The sidecar has read the first confirmation, and stopped reading the
            # server while 24 MB wait for the client.
            time.sleep(1.0)
            publish(sidecar, masked)
            client.send(bind("pq"), execute(), SYNC)
            reply = client.read(1)
            assert not reply.errors, reply.errors
            ssns = [public_ssns_in(row[0] or b"") for row in reply.rows]
            assert ssns == [set(), {SSNS[0]}, set()], (
                "the last run, under the masking rules, returned the raw SSN" if ssns[2] else ssns
            )
            assert client.exchange(q("SELECT 1")).column() == ["1"]
    finally:
        publish(sidecar, loose)


def test_an_sql_cursor_executed_by_the_protocol_after_the_change(
    exempt_then_masked: tuple[Sidecar, dict[str, Any]],
) -> None:
    """Attack (a review's finding): a cursor declared with SQL while exempt, the bundle
    now masks alice, then a protocol Execute of the cursor's name. SQL FETCH of it was
    refused; the protocol Execute of a portal the sidecar never bound was allowed,
    and returned raw SSNs."""
    sidecar, masked = exempt_then_masked
    with RawClient(sidecar) as client:
        declared = client.exchange(
            q("DECLARE c1 CURSOR WITH HOLD FOR SELECT ssn FROM public.customers ORDER BY id")
        )
        assert not declared.errors, declared.errors
        # Positive control: exempt, declared now, the Execute runs and is raw (one
        # row of it: the rest stays for the attack).
        one_row = m.frame(b"E", b"c1\x00" + struct.pack("!i", 1))
        control = client.exchange(one_row, SYNC)
        assert public_ssns_in(control.raw), control.tags

        publish(sidecar, masked)

        reply = client.exchange(execute("c1"), SYNC)
        assert public_ssns_in(reply.raw) == set(), "protocol Execute of the cursor leaked"
        assert reply.errors, f"not refused: {reply.tags}"
        assert client.exchange(q("CLOSE c1")).errors == []
        assert client.exchange(q("SELECT 1")).column() == ["1"]


def test_a_parse_skipped_after_a_refusal_is_not_booked(sidecar: Sidecar) -> None:
    """Attack (a review's finding): the unnamed statement prepared as an UPDATE, then in
    one write a Bind Warden refuses (the server then skips the rest of the batch), a
    Parse of the unnamed statement as ``SELECT 1`` (skipped), Sync, and a Bind and
    Execute of the unnamed statement. The session booked ``SELECT 1`` when it sent the
    Parse; the server ran the UPDATE, and its not-null violation, matched to
    ``SELECT 1``, came back with the failing row unredacted: a raw SSN."""
    update = "UPDATE public.customers SET name = NULL WHERE id = 7"
    with RawClient(sidecar) as client:
        assert not client.exchange(parse(update), SYNC).errors
        reply = client.exchange(bind("nope"), parse("SELECT 1"), SYNC, bind(), execute(), SYNC)
    assert public_ssns_in(reply.raw) == set(), f"leaked: {reply.errors}"
    assert not any("null value" in e.get("M", "") for e in reply.errors), reply.errors


UPDATE_7 = "UPDATE public.customers SET name = NULL WHERE id = 7"


def test_a_parse_the_server_refuses_is_not_booked(sidecar: Sidecar) -> None:
    """Attack (a review's finding): ``u`` prepared as an UPDATE; then in one write a
    Parse of ``u`` as ``SELECT 1`` (the server refuses it: the name is held), Sync,
    and a Bind and Execute of ``u``. The session booked ``SELECT 1``; the server ran
    the UPDATE, and its failing row came back unredacted. Warden now refuses the
    Parse itself, as the server does, and keeps its books."""
    with RawClient(sidecar) as client:
        assert not client.exchange(parse(UPDATE_7, "u"), SYNC).errors
        reply = client.exchange(parse("SELECT 1", "u"), SYNC, bind("u"), execute(), SYNC)
    assert public_ssns_in(reply.raw) == set(), f"leaked: {reply.errors}"
    assert any("already exists" in e.get("M", "") for e in reply.errors), reply.errors


def test_a_close_the_server_skipped_leaves_the_name_uncertain(sidecar: Sidecar) -> None:
    """Attack (the same review): a failing statement, then Close of ``u`` and a Parse of
    ``u`` as ``SELECT 1`` in the same batch (both skipped by the server), then Bind
    and Execute of ``u`` in the next batch. Warden now books such a Parse uncertain
    (its Close unconfirmed), so the Bind prepares ``u`` again first."""
    close_u = m.frame(b"C", b"Su\x00")
    with RawClient(sidecar) as client:
        assert not client.exchange(parse(UPDATE_7, "u"), SYNC).errors
        reply = client.exchange(
            parse("SELECT 1/0"), bind(), execute(), close_u, parse("SELECT 1", "u"), SYNC,
            bind("u"), execute(), SYNC,
        )  # fmt: skip
    assert public_ssns_in(reply.raw) == set(), f"leaked: {reply.errors}"
    assert not any("null value" in e.get("M", "") for e in reply.errors), reply.errors


def test_a_parse_behind_a_failing_execute_is_not_booked(sidecar: Sidecar) -> None:
    """Attack (the same review): the unnamed statement prepared as an UPDATE; then in
    one write a failing Execute, a Parse of the unnamed statement as ``SELECT 1``
    (skipped by the server), Sync, and a Bind and Execute of the unnamed statement.
    A Parse behind an Execute in its batch is now booked uncertain, so that Bind
    prepares the statement again first."""
    with RawClient(sidecar) as client:
        assert not client.exchange(parse(UPDATE_7), SYNC).errors
        reply = client.exchange(
            parse("SELECT 1/0", "e"), bind("e"), execute(), parse("SELECT 1"), SYNC,
            bind(), execute(), SYNC,
        )  # fmt: skip
    assert public_ssns_in(reply.raw) == set(), f"leaked: {reply.errors}"
    assert not any("null value" in e.get("M", "") for e in reply.errors), reply.errors
