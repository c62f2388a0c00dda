"""Security review of the "judge under the confirmed session state" commit: new findings.

Each test runs one attack against the real sidecar (module fixtures of
``tests/security/conftest.py``: production, alice masked, allow-the-rest, database
search_path ``staging, public`` where unqualified ``customers`` is the unclassified
``staging.customers``). A **FINDING** worked against the reviewed commit and is
fixed since (the fixes: ambiguous names sent schema-qualified, statements acting by
name or changing state bound only to the unnamed portal, error details withheld on
masked tables, a probe before state-sensitive text while statements run, portals
and cursors refused after a rule change, large statements judged off the event
loop); a **REGRESSION** test is a defence that held. All must pass.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from sidecar.proxy import messages as m
from tests.security.conftest import (
    PUBLIC_MASKED,
    STAGING_SSNS,
    Upstream,
    publish,
    security_bundle,
)
from tests.security.wire import (
    SYNC,
    RawClient,
    Reply,
    bind,
    describe,
    execute,
    parse,
    public_ssns_in,
    q,
)
from tests.sidecar.proxy.conftest import EMAILS, Sidecar, start_sidecar

SET_PUBLIC = "SELECT set_config('search_path', 'public', false)"


def _tag() -> str:
    return "t" + secrets.token_hex(4)


def named_bind(statement: str, portal: str) -> bytes:
    body = portal.encode() + b"\x00" + statement.encode() + b"\x00"
    return m.frame(b"B", body + struct.pack("!hhh", 0, 0, 0))


def recv_until(client: RawClient, kinds: bytes, timeout: float) -> Reply:
    """Messages until one whose type is in ``kinds`` (inclusive), or until ``timeout``
    passes with nothing more coming (then the Reply ends with a ``!`` marker)."""
    out: list[tuple[bytes, bytes]] = []
    client.sock.settimeout(timeout)
    try:
        while True:
            try:
                kind, body = client._recv()
            except TimeoutError:
                out.append((b"!", b"timeout"))
                break
            except (ConnectionError, OSError) as exc:
                out.append((b"!", str(exc).encode()))
                break
            out.append((kind, body))
            if kind in kinds:
                break
    finally:
        client.sock.settimeout(15.0)
    return Reply(out)


def copy_rows(reply: Reply) -> list[str]:
    return [body.decode("utf-8", "replace").rstrip("\n") for k, body in reply.messages if k == b"d"]


# ---- 1. portals bound before a state change, executed after it ----------------------


def test_copy_portal_bound_before_search_path_change(sidecar: Sidecar) -> None:
    """FINDING (critical). Attack: a named portal for ``COPY customers (ssn) TO STDOUT``
    is bound while the path is ``staging, public`` (decided: staging.customers,
    unclassified, nothing to mask), then set_config switches the path to public, then
    the portal is executed, all in one extended batch (one implicit transaction, so the
    named portal is still there). COPY resolves its table name when it *executes*, so
    the server copies public.customers: every raw SSN. The sidecar re-decides at Bind
    when the state changed, never at Execute."""
    with RawClient(sidecar) as client:
        reply = client.exchange(
            parse("COPY customers (ssn) TO STDOUT", "cp"),
            named_bind("cp", "P"),
            parse(SET_PUBLIC, "sc"),
            bind("sc"),
            execute(),
            execute("P"),
            SYNC,
        )
    rows = copy_rows(reply)
    assert public_ssns_in(reply.raw) == set(), (
        f"raw public SSNs came back through the COPY portal: {rows[:3]}..."
    )


def test_copy_portal_across_a_transaction(sidecar: Sidecar) -> None:
    """FINDING (critical), the same with a stock-looking sequence of round trips: BEGIN;
    bind the COPY portal (Sync); ``SET search_path = public`` (the sidecar probes and
    confirms public); Execute the portal. Nothing is pipelined: the sidecar knows the new
    state before the Execute arrives and still lets the portal run."""
    with RawClient(sidecar) as client:
        assert not client.exchange(q("BEGIN")).errors
        bound = client.exchange(
            parse("COPY customers (ssn) TO STDOUT", "cp2"), named_bind("cp2", "P2"), SYNC
        )
        assert not bound.errors, bound.errors
        assert not client.exchange(q("SET search_path = public")).errors
        reply = client.exchange(execute("P2"), SYNC)
        client.exchange(q("ROLLBACK"))
    assert public_ssns_in(reply.raw) == set(), (
        f"raw public SSNs came back through the COPY portal: {copy_rows(reply)[:3]}..."
    )


def test_sql_execute_portal_bound_before_search_path_change(sidecar: Sidecar) -> None:
    """FINDING (critical). Attack on the SQL-PREPARE staleness rule: ``PREPARE p AS
    SELECT ssn FROM customers`` under staging (allowed, unmasked), then in ONE batch a
    portal for ``EXECUTE p`` is bound (decided under the same state: not stale), the
    path is switched to public and the portal executed. The server re-analyses p under
    the new search_path when EXECUTE runs it: raw public SSNs."""
    tag = _tag()
    with RawClient(sidecar) as client:
        made = client.exchange(
            q(f"PREPARE {tag} AS SELECT ssn AS {tag} FROM customers ORDER BY id")
        )
        assert not made.errors, made.errors
        reply = client.exchange(
            parse(f"EXECUTE {tag}", "ex"),
            named_bind("ex", "PX"),
            parse(SET_PUBLIC, "sc"),
            bind("sc"),
            execute(),
            describe("PX"),
            execute("PX"),
            SYNC,
        )
    assert public_ssns_in(reply.raw) == set(), (
        f"raw public SSNs came back through EXECUTE: {reply.errors or reply.column()[:3]}"
    )


def test_plain_select_portal_bound_before_change_stays_as_decided(sidecar: Sidecar) -> None:
    """REGRESSION (passes). The control for the portal findings: a portal for a plain
    SELECT is planned at Bind, so executing it after the path change still reads
    staging (what was decided). Only portals of statements that resolve names when they
    run (COPY, EXECUTE, PREPARE...) are affected."""
    tag = _tag()
    with RawClient(sidecar) as client:
        reply = client.exchange(
            parse(f"SELECT ssn AS {tag} FROM customers ORDER BY id", "sel"),
            named_bind("sel", "PS"),
            parse(SET_PUBLIC, "sc"),
            bind("sc"),
            execute(),
            execute("PS"),
            SYNC,
        )
    assert public_ssns_in(reply.raw) == set()
    assert [r[0] for r in reply.text_rows() if r and r[0] and r[0].startswith("STAGING")] == (
        STAGING_SSNS
    )


def test_prepare_portal_replaces_a_protocol_statement_the_sidecar_thinks_current(
    sidecar: Sidecar,
) -> None:
    """FINDING (critical). Prepared-statement bookkeeping happens when a statement is
    *decided*, not when the server *runs* it. In a transaction:

    1. ``Parse("s1", "SELECT 1")``; portals for ``DEALLOCATE s1`` and ``PREPARE s1 AS
       SELECT ssn FROM customers`` are bound (decided under staging: unmasked; deciding
       them marks s1 for re-preparation, once).
    2. ``SET search_path = public``; Bind s1 (re-decided and re-prepared as "SELECT 1":
       the sidecar now holds s1 as current).
    3. Execute the two portals: the server drops s1 and prepares it again as
       ``SELECT ssn FROM customers``, analysed under public.
    4. Bind s1: current in the sidecar's book, so the Bind goes through; the server runs
       the SQL-prepared text. Would leak: every raw public SSN.

    Fixed: a statement that acts on prepared statements or cursors by name may only be
    bound to the unnamed portal (it runs when decided); the named Binds are refused."""
    tag = _tag()
    with RawClient(sidecar) as client:
        assert not client.exchange(q("BEGIN")).errors
        setup = client.exchange(
            parse("SELECT 1 AS x", "s1"),
            parse("DEALLOCATE s1", "dp"),
            named_bind("dp", "PD"),
            parse(f"PREPARE s1 AS SELECT ssn AS {tag} FROM customers ORDER BY id", "pp"),
            named_bind("pp", "PP"),
            SYNC,
        )
        assert _refused_named_portal(setup), setup.messages
        client.exchange(q("ROLLBACK"))
        replies = [client.exchange(q("BEGIN"))]
        replies.append(client.exchange(q("SET search_path = public")))
        replies.append(client.exchange(bind("s1"), execute(), SYNC))
        replies.append(client.exchange(execute("PD"), execute("PP"), SYNC))
        replies.append(client.exchange(bind("s1"), describe(), execute(), SYNC))
        client.exchange(q("ROLLBACK"))
    for reply in replies:
        assert public_ssns_in(reply.raw) == set(), reply.column()[:3]


def test_deallocate_all_bookkeeping_forgets_a_later_prepare(sidecar: Sidecar) -> None:
    """FINDING (critical). The rule "statements prepared with SQL PREPARE are refused
    after the state changes" is switched off when a ``DEALLOCATE ALL`` completes and no
    PREPARE was *decided* since it was *decided*. A PREPARE decided before it but *run*
    after it survives unseen: bind portals for ``PREPARE p AS SELECT ssn FROM customers``
    (staging: unmasked) and for ``DEALLOCATE ALL``; execute DEALLOCATE ALL, then PREPARE;
    ``SET search_path = public``; ``EXECUTE p``: the sidecar believes no SQL-prepared
    statement exists, the server re-analyses p under public. Would leak: every raw
    public SSN.

    Fixed: such statements may not be bound to a named portal, and names that exist
    in several schemas are sent qualified with the schema they were decided for."""
    tag = _tag()
    with RawClient(sidecar) as client:
        assert not client.exchange(q("BEGIN")).errors
        setup = client.exchange(
            parse(f"PREPARE {tag} AS SELECT ssn AS {tag} FROM customers ORDER BY id", "pp"),
            named_bind("pp", "PP"),
            parse("DEALLOCATE ALL", "da"),
            named_bind("da", "PDA"),
            SYNC,
        )
        assert _refused_named_portal(setup), setup.messages
        client.exchange(q("ROLLBACK"))
        replies = [client.exchange(q("BEGIN"))]
        replies.append(client.exchange(execute("PDA"), execute("PP"), SYNC))
        replies.append(client.exchange(q("SET search_path = public")))
        replies.append(client.exchange(q(f"EXECUTE {tag}")))
        client.exchange(q("ROLLBACK"))
    for reply in replies:
        assert public_ssns_in(reply.raw) == set(), reply.errors or reply.column()[:3]


def _refused_named_portal(reply: Reply) -> bool:
    return any(e.get("C") == "42501" and "unnamed portal" in e.get("M", "") for e in reply.errors)


@pytest.mark.parametrize("run", ["FETCH ALL FROM", "MOVE ALL IN"])
def test_sql_fetch_runs_a_barrier_portal_without_a_probe(sidecar: Sidecar, run: str) -> None:
    """FINDING (critical). The probe that follows a barrier is attached to the protocol
    Execute of its portal. SQL ``FETCH``/``MOVE`` run a protocol portal too, and are
    not barriers. Attack: BEGIN; Parse+Bind ``SELECT set_config('search_path', 'public',
    false)`` into the named portal "PB" (allowed, a barrier, not executed); Sync; then
    ``FETCH ALL FROM "PB"`` as a simple Query (no probe); then ``SELECT ssn FROM
    customers``: decided under staging (unmasked), read by the server from
    public.customers. Would leak: every raw public SSN.

    Fixed: a statement that may change session state may only be bound to the unnamed
    portal, which SQL cannot name."""
    tag = _tag()
    with RawClient(sidecar) as client:
        assert not client.exchange(q("BEGIN")).errors
        bound = client.exchange(parse(SET_PUBLIC, "sb"), named_bind("sb", "PB"), SYNC)
        assert _refused_named_portal(bound), bound.messages
        client.exchange(q("ROLLBACK"))
        replies = [client.exchange(q("BEGIN")), client.exchange(q(f'{run} "PB"'))]
        replies.append(client.exchange(q(f"SELECT ssn AS {tag} FROM customers ORDER BY id")))
        client.exchange(q("ROLLBACK"))
    for reply in replies:
        assert public_ssns_in(reply.raw) == set(), reply.column()[:3]


@pytest.mark.parametrize(
    "run", ["EXECUTE sbx", "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE sbx"]
)
def test_sql_execute_runs_a_protocol_barrier_without_a_probe(sidecar: Sidecar, run: str) -> None:
    """FINDING (critical). ``Parse("sbx", "SELECT set_config('search_path', 'public',
    false)")`` (allowed, a barrier; never bound), then the simple Query ``EXECUTE sbx``:
    the engine judges the text "EXECUTE sbx", which is no barrier, and
    ``_protocol_execute_rule`` only checks that sbx is current. The server runs
    set_config, no probe follows, and ``SELECT ssn FROM customers`` is decided under
    staging while the server reads public. Would leak: every raw public SSN. (SQL
    ``PREPARE`` of a barrier is refused as session.deferred_barrier; a protocol Parse of
    one is not, and SQL EXECUTE runs it.)"""
    tag = _tag()
    with RawClient(sidecar) as client:
        made = client.exchange(parse(SET_PUBLIC, "sbx"), SYNC)
        assert not made.errors, made.errors
        ran = client.exchange(q(run))
        assert not ran.errors, ran.errors
        reply = client.exchange(q(f"SELECT ssn AS {tag} FROM customers ORDER BY id"))
    assert public_ssns_in(reply.raw) == set(), (
        f"raw public SSNs after {run!r}: {reply.column()[:3]}"
    )


@pytest.mark.parametrize("how", ["portal", "cursor"])
def test_portal_or_cursor_opened_before_masking_is_read_after(
    exempt_then_masked: tuple[Sidecar, dict[str, Any]], how: str
) -> None:
    """FINDING (medium: needs a rule change while the attacker's transaction is open).
    Prepared statements are decided again after a bundle change; portals and cursors are
    not, though their rows are read only when they are executed/fetched. While exempt,
    alice opens a transaction and binds a portal (or DECLAREs a cursor) for ``SELECT ssn
    FROM public.customers``; the bundle now masks her; she executes (fetches) it and
    reads raw SSNs the current rules mask."""
    sidecar, masked = exempt_then_masked
    with RawClient(sidecar) as client:
        assert not client.exchange(q("BEGIN")).errors
        if how == "portal":
            opened = client.exchange(
                parse("SELECT ssn FROM public.customers ORDER BY id", "ps"),
                named_bind("ps", "PR"),
                SYNC,
            )
        else:
            opened = client.exchange(
                q("DECLARE cr CURSOR FOR SELECT ssn FROM public.customers ORDER BY id")
            )
        assert not opened.errors, opened.errors
        publish(sidecar, masked)
        assert client.exchange(q("SELECT ssn FROM public.customers WHERE id = 1")).column() == [
            PUBLIC_MASKED[0]
        ], "control: the new bundle masks alice"
        if how == "portal":
            reply = client.exchange(execute("PR"), SYNC)
        else:
            reply = client.exchange(q("FETCH ALL FROM cr"))
        client.exchange(q("ROLLBACK"))
    assert public_ssns_in(reply.raw) == set(), (
        f"rows read after the rule change came back raw: {reply.column()[:3]}"
    )


# ---- 2. raw values in the server's error details --------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE public.customers SET name = NULL WHERE id = 1",
        "INSERT INTO public.customers (id, name, email, ssn) VALUES (1, 'n', 'e', 's') "
        "ON CONFLICT (id) DO UPDATE SET name = NULL",
    ],
    ids=["update", "upsert"],
)
def test_not_null_violation_detail_carries_the_raw_row(sidecar: Sidecar, statement: str) -> None:
    """FINDING (critical). Attack: ``UPDATE public.customers SET name = NULL WHERE id = 1``
    (or an upsert whose DO UPDATE sets name to NULL) reads no classified column (no write
    oracle, nothing to mask) and is allowed; PostgreSQL rejects it with a not-null
    violation whose DETAIL is "Failing row contains (1, null, user1@example.com,
    001-55-1001)": the raw email and SSN of any row alice may update, one error each,
    nothing written. Error fields from the server (DETAIL "Failing row contains", "Key
    (...)=(...)") are forwarded untouched. Would leak: every classified value."""
    with (
        psycopg.connect(sidecar.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.Error) as info,
    ):
        conn.execute(statement)
    error = info.value
    text = f"{error} {error.diag.message_detail} {error.diag.context}"
    assert public_ssns_in(text) == set() and EMAILS[0] not in text, (
        f"the error detail carries raw classified values: {error.diag.message_detail}"
    )


# ---- 3. state changed by code a statement fires, not by the statement ---------------------


@pytest.fixture(scope="module")
def path_trigger(upstream: Upstream) -> str:
    """A table whose insert trigger calls set_config('search_path', 'public', false): code
    already in the database (a migration, an extension, or another identity with DDL
    rights), not in the statement alice sends."""
    with upstream.admin() as conn:
        conn.execute(
            """
            CREATE TABLE public.inbox (body text);
            CREATE FUNCTION public.inbox_touch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM set_config('search_path', 'public', false); RETURN NEW; END $$;
            CREATE TRIGGER inbox_touch BEFORE INSERT ON public.inbox
                FOR EACH ROW EXECUTE FUNCTION public.inbox_touch();
            """
        )
        conn.execute(f"GRANT SELECT, INSERT ON public.inbox TO {upstream.role}")
    return "public.inbox"


def test_trigger_changes_search_path_without_a_barrier(sidecar: Sidecar, path_trigger: str) -> None:
    """FINDING (high). Attack: ``INSERT INTO public.inbox VALUES ('x')`` (an ordinary
    allowed write, no barrier) fires a trigger that sets search_path to public; then,
    in a later round trip, ``SELECT ssn FROM customers``. search_path is not reported by
    ParameterStatus on PostgreSQL 15, and the INSERT is not a barrier, so the sidecar
    never probes: it decides the read under staging (unclassified, unmasked) while the
    server reads public.customers. Would leak: every raw public SSN. Barriers are
    recognised only in the statement text; code the statement runs (triggers, rules,
    defaults, domain checks, functions called by views) is invisible."""
    tag = _tag()
    with RawClient(sidecar) as client:
        wrote = client.exchange(q(f"INSERT INTO {path_trigger} VALUES ('x')"))
        assert not wrote.errors, wrote.errors
        reply = client.exchange(q(f"SELECT ssn AS {tag} FROM customers ORDER BY id"))
    assert public_ssns_in(reply.raw) == set(), (
        f"raw public SSNs after a trigger switched the path: {reply.column()[:3]}"
    )


@pytest.fixture(scope="module")
def scs_trigger(upstream: Upstream) -> str:
    """A table whose insert trigger turns standard_conforming_strings off."""
    with upstream.admin() as conn:
        conn.execute(
            """
            CREATE TABLE public.legacy_inbox (body text);
            CREATE FUNCTION public.legacy_touch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM set_config('standard_conforming_strings', 'off', false);
            RETURN NEW; END $$;
            CREATE TRIGGER legacy_touch BEFORE INSERT ON public.legacy_inbox
                FOR EACH ROW EXECUTE FUNCTION public.legacy_touch();
            """
        )
        conn.execute(f"GRANT SELECT, INSERT ON public.legacy_inbox TO {upstream.role}")
    return "public.legacy_inbox"


def test_trigger_turns_scs_off_under_a_pipelined_payload(
    sidecar: Sidecar, scs_trigger: str
) -> None:
    """FINDING (high, same class as the search_path trigger): the original lexical attack
    through code the statement fires. ``Q INSERT INTO public.legacy_inbox ...`` and
    ``Q <payload>`` in ONE write; the trigger turns standard_conforming_strings off. The
    ParameterStatus that reports it arrives after the payload was decided as one string
    literal; the server reads the backslash as an escape and runs the subquery. Would
    leak: every raw public SSN."""
    payload = r"SELECT 'x\'' , (SELECT string_agg(ssn, chr(44)) FROM public.customers) -- '"
    with RawClient(sidecar) as client:
        reply = client.exchange(q(f"INSERT INTO {scs_trigger} VALUES ('x')"), q(payload))
    assert public_ssns_in(reply.raw) == set(), "raw public SSNs through the lexical payload"


def test_trigger_planted_through_warden_by_an_exempt_identity(sidecar: Sidecar) -> None:
    """FINDING (high; needs CREATE on a schema, which the fixture's role has). The same
    class, with nothing done outside Warden: ``sec`` (masking-exempt, allowed DDL by the
    allow-the-rest guardrail) creates a table, a plpgsql function whose *body* calls
    set_config (function bodies are not analysed) and a trigger (its function is not a
    call the engine sees). All identities share the database role, so alice may insert
    into that table; her INSERT switches her search_path to public unseen, and her next
    ``SELECT ssn FROM customers`` returns raw public SSNs."""
    from tests.sidecar.proxy.conftest import SEC_TOKEN

    name = "drop_" + secrets.token_hex(3)
    with RawClient(sidecar, user="sec", token=SEC_TOKEN) as sec:
        made = sec.exchange(
            q(f"CREATE TABLE public.{name} (body text)"),
            q(
                f"CREATE FUNCTION public.{name}_f() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN PERFORM set_config('search_path', 'public', false); RETURN NEW; END $$"
            ),
            q(
                f"CREATE TRIGGER {name}_t BEFORE INSERT ON public.{name} "
                f"FOR EACH ROW EXECUTE FUNCTION public.{name}_f()"
            ),
        )
    assert not made.errors, f"sec could not plant the trigger: {made.errors}"
    tag = _tag()
    with RawClient(sidecar) as client:
        wrote = client.exchange(q(f"INSERT INTO public.{name} VALUES ('x')"))
        assert not wrote.errors, wrote.errors
        reply = client.exchange(q(f"SELECT ssn AS {tag} FROM customers ORDER BY id"))
    assert public_ssns_in(reply.raw) == set(), (
        f"raw public SSNs after sec's trigger switched alice's path: {reply.column()[:3]}"
    )


# ---- 4. the probe wedged ------------------------------------------------------------------


def test_copy_from_stdin_while_dirty_keeps_the_session(sidecar: Sidecar) -> None:
    """FINDING (medium, availability: any ``COPY ... FROM STDIN`` / psql ``\\copy`` inside a
    transaction that changed a tracked setting kills the session). BEGIN; SET
    search_path = public (the transaction is now "dirty": every Query is followed by the
    sidecar's probe Query, sent right behind it); ``COPY public.notes (body) FROM
    STDIN``. The server is in COPY-in mode when the probe's Query arrives: "unexpected
    message type 0x51 during COPY from stdin", then FATAL "protocol synchronization was
    lost"; the client's COPY fails and its connection is gone. (The same COPY in the
    extended protocol dies the same way on the probe's Parse, and so does any COPY FROM
    STDIN that is itself a barrier, e.g. with ``WHERE set_config(...)``.) The probe must
    not be sent into a COPY."""
    with RawClient(sidecar) as client:
        assert not client.exchange(q("BEGIN"), q("SET search_path = public")).errors
        client.send(q("COPY public.notes (body) FROM STDIN"))
        started = recv_until(client, b"GZE", timeout=5)
        if started.messages[-1][0] == b"G":
            client.send(m.frame(b"d", b"copied-while-dirty\n"), m.frame(b"c", b""))
        first = recv_until(client, b"Z", timeout=5)
        with contextlib.suppress(OSError):
            client.send(q("SELECT 'alive'"))
        after = recv_until(client, b"Z", timeout=5)
    assert not started.errors and not first.errors, (
        f"COPY FROM STDIN failed in a dirty transaction: {(started.errors + first.errors)[:2]}"
    )
    assert after.column() == ["alive"], f"the session did not survive: {after.messages[-2:]}"


def test_unseen_portal_execute_in_a_failed_dirty_batch(sidecar: Sidecar) -> None:
    """FINDING (low: the client's own session hangs for good). In a dirty transaction a
    batch fails (``SELECT 1/0``, no Sync yet; the client reads the error). Then the client
    sends Execute of a portal name the sidecar never saw bound, and the Sync. The sidecar
    treats the portal as a cursor ("unseen portal": allowed) and, dirty, appends its
    extended probe and holds the client's Sync behind it. The server is skipping to the
    Sync, so it never answers the probe, and the sidecar never sends the Sync: neither
    side moves again. (Sent in ONE write the same messages pass, by re-entrancy of the
    error handler.)"""
    with RawClient(sidecar) as client:
        assert not client.exchange(q("BEGIN"), q("SET search_path = public")).errors
        client.send(parse("SELECT 1/0"), bind(), execute())
        failed = recv_until(client, b"E", timeout=5)
        assert "22012" in failed.sqlstates, failed.messages
        client.send(execute("never_bound"), SYNC)
        reply = recv_until(client, b"Z", timeout=5)
    assert reply.messages and reply.messages[-1][0] == b"Z", (
        f"no ReadyForQuery for the Sync: the session hangs ({reply.messages})"
    )


# ---- 5. approval holds --------------------------------------------------------------------


class ApprovingControlPlane:
    """A control plane that approves every request after ``delay`` seconds (a reviewer
    who approved, or a grant with uses left), and records what it was asked."""

    def __init__(self, delay: float = 0.6) -> None:
        plane = self
        self.delay = delay
        self.answer = "approved"  # what every request gets; a test may switch it
        self.requests: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                time.sleep(plane.delay)
                ident = f"req-{len(plane.requests)}"
                body = json.dumps(
                    {
                        "id": ident,
                        "state": plane.answer,
                        "url": f"http://plane/{ident}",
                        "reason": "review test",
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                plane.requests.append(json.loads(self.rfile.read(length) or b"{}"))
                self._answer()

            def do_GET(self) -> None:
                self._answer()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def approving_sidecar(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Sidecar, ApprovingControlPlane]]:
    plane = ApprovingControlPlane()
    bundle = security_bundle(upstream.name, approvals={"hold_seconds": 10})
    proc = start_sidecar(
        tmp_path_factory.mktemp("approving"),
        upstream.app_dsn,
        bundle,
        approvals_url=f"http://127.0.0.1:{plane.port}/api/v1/sidecar/approvals",
    )
    try:
        yield proc, plane
    finally:
        proc.stop()
        plane.close()


def test_approved_parse_in_a_failed_batch_runs_the_old_statement(
    approving_sidecar: tuple[Sidecar, ApprovingControlPlane],
) -> None:
    """FINDING (high; needs one approval, or a grant with uses left, for any reviewed
    statement). Attack:

    1. ``Parse("s1", "SELECT ssn FROM customers")`` under staging (allowed: unclassified).
    2. ``SET search_path = public`` (confirmed by the probe).
    3. One batch: ``SELECT 1/0`` (the server now skips to Sync), then
       ``Parse("s1", "DELETE FROM public.notes WHERE id = -1")``, which the
       delete-needs-review guardrail holds. While it is held the server's error arrives
       (the sidecar invalidates its statements); then the approval arrives and
       ``_hold_approved`` records s1 as the approved DELETE, current, and forwards the
       Parse, which the server skips: the server still holds the old SELECT under s1.
    4. ``Bind("s1")``: the sidecar sees its approved statement and forwards the Bind; the
       server binds the old SELECT, re-analysed under search_path public.

    Would leak: every raw public SSN, for a reviewer who approved a harmless DELETE."""
    sidecar, _plane = approving_sidecar
    tag = _tag()
    with RawClient(sidecar) as client:
        made = client.exchange(parse(f"SELECT ssn AS {tag} FROM customers ORDER BY id", "s1"), SYNC)
        assert not made.errors, made.errors
        assert not client.exchange(q("SET search_path = public")).errors
        held = client.exchange(
            parse("SELECT 1/0", "e"),
            bind("e"),
            execute(),
            parse("DELETE FROM public.notes WHERE id = -1", "s1"),
            SYNC,
        )
        assert "22012" in held.sqlstates, held.messages
        reply = client.exchange(bind("s1"), describe(), execute(), SYNC)
    # Since a later review, a Parse of a name the session holds is refused by Warden
    # itself, as the server refuses it (42P05): the DELETE is never held. Either way
    # the old statement must not run under the new name's verdict.
    assert public_ssns_in(reply.raw) == set(), (
        f"Bind of the approved name ran the old statement: {reply.column()[:3]}"
    )


def test_approval_survives_a_search_path_change_to_another_table(
    approving_sidecar: tuple[Sidecar, ApprovingControlPlane], upstream: Upstream
) -> None:
    """FINDING (medium-high: an approval is spent on a statement the reviewer never saw).
    Attack: ``Parse("d", "DELETE FROM customers WHERE id = 1000")`` under staging is held
    and approved (the request names staging.customers). Before binding it, alice runs
    ``SET search_path = public``; the Bind is decided again (now public.customers), still
    "review", and ``_redecide`` carries the old approval over ("the approval stands"), so
    the DELETE runs against public.customers with no new request. The reviewer approved a
    write to an unclassified staging table; a classified production table was written.
    (From the second request on, the control plane here denies everything.)"""
    sidecar, plane = approving_sidecar
    with upstream.admin() as conn:
        conn.execute(
            "INSERT INTO public.customers VALUES (1000, 'Victim', 'victim@example.com', "
            "'999-55-9999') ON CONFLICT DO NOTHING"
        )
    before = len(plane.requests)
    try:
        with RawClient(sidecar) as client:
            made = client.exchange(parse("DELETE FROM customers WHERE id = 1000", "d"), SYNC)
            assert not made.errors, made.errors
            plane.answer = "denied"
            assert not client.exchange(q("SET search_path = public")).errors
            reply = client.exchange(bind("d"), execute(), SYNC)
        with upstream.admin() as conn:
            row = conn.execute("SELECT count(*) FROM public.customers WHERE id = 1000").fetchone()
    finally:
        plane.answer = "approved"
        with upstream.admin() as conn:
            conn.execute("DELETE FROM public.customers WHERE id = 1000")
    asked = plane.requests[before:]
    # Since issue 17 the Parse only prepares it: the request is made at the Bind, for
    # the table it would write then (and denied here).
    assert [a.get("tables") for a in asked] == [["public.customers"]], asked
    assert row == (1,), (
        f"public.customers row 1000 was deleted under an approval for {asked[0].get('tables')} "
        f"({len(asked)} request(s) made; reply {reply.tags or reply.errors})"
    )


def test_query_ignored_while_skipping_to_sync_desynchronises_the_replies(sidecar: Sidecar) -> None:
    """FINDING (low: the client's own session hangs; its replies are shifted first). A
    batch fails (``SELECT 1/0``, no Sync). The client then sends a simple Query and the
    Sync: the server ignores the Query (it skips everything up to Sync), but the sidecar
    counted it, so from now on it expects one ReadyForQuery more than will come. The next
    barrier (``SET search_path = public``) is followed by the probe; the probe's answer is
    taken as the SET's, forwarded to the client (a second result set and ReadyForQuery),
    and the sidecar then waits for a probe answer that already went by, holding the
    client's next statement forever."""
    with RawClient(sidecar) as client:
        client.send(parse("SELECT 1/0"), bind(), execute())
        failed = recv_until(client, b"E", timeout=5)
        assert "22012" in failed.sqlstates, failed.messages
        client.send(q("SELECT 'ignored'"), SYNC)
        synced = recv_until(client, b"Z", timeout=5)
        client.send(q("SET search_path = public"))
        first = recv_until(client, b"Z", timeout=5)
        client.send(q("SELECT 'next'"))
        after = recv_until(client, b"Z", timeout=5)
    assert after.column() == ["next"], (
        f"replies are shifted ({synced.messages[-1:]}, {first.messages}) and the session "
        f"hangs: {after.messages}"
    )


# ---- 6. other sessions ----------------------------------------------------------------------


def test_one_large_statement_stalls_every_session(sidecar: Sidecar) -> None:
    """FINDING (high, availability of every session on the sidecar). Any logged-in
    identity sends ONE Query of ~200 KB (``SELECT 1,1,1,...``; the sidecar accepts
    messages up to 256 MB). The policy engine parses, analyses and redacts it
    synchronously on the event loop that every session shares, in time and memory far
    above linear cost per byte. Meanwhile another identity's ``SELECT 1`` gets no
    answer. Measured while writing this test: 2 MB stalled every other session for ~50 s
    (the server itself refuses the statement in milliseconds: "target lists can have at
    most 1664 entries"); tens of MB exhaust memory and take the process down."""
    big = "SELECT " + ",".join(["1"] * 100_000)
    with RawClient(sidecar) as other, RawClient(sidecar) as attacker:
        attacker.send(q(big))
        time.sleep(0.2)  # the sidecar is now judging it
        started = time.monotonic()
        other.send(q("SELECT 'other session'"))
        reply = recv_until(other, b"Z", timeout=60)
        waited = time.monotonic() - started
        recv_until(attacker, b"Z", timeout=60)
    assert reply.column() == ["other session"], reply.messages
    assert waited < 1.0, f"another session's trivial query waited {waited:.1f} s"


def test_an_oversized_statement_is_refused_and_the_session_kept(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """REGRESSION. A statement above max_statement_bytes gets an ErrorResponse naming
    the limit, not a dropped connection; the next statement on the session works, in
    the simple and the extended protocol."""
    workdir = tmp_path_factory.mktemp("small-limit")
    small = start_sidecar(
        workdir, upstream.app_dsn, security_bundle(upstream.name), max_statement_bytes=100_000
    )
    big = "SELECT " + ",".join(["1"] * 60_000)
    try:
        with RawClient(small) as client:
            refused = client.exchange(q(big))
            assert any("max_statement_bytes" in e.get("M", "") for e in refused.errors)
            assert client.exchange(q("SELECT 'still here'")).column() == ["still here"]
            refused = client.exchange(parse(big, "big"), SYNC)
            assert any("max_statement_bytes" in e.get("M", "") for e in refused.errors)
            assert client.exchange(q("SELECT 'and here'")).column() == ["and here"]
    finally:
        small.stop()


# ---- 7. checked and held (regression tests) -------------------------------------------------


@pytest.mark.parametrize("key", ["CLIENT_ENCODING", "Client_Encoding"])
def test_startup_client_encoding_in_another_case(sidecar: Sidecar, key: str) -> None:
    """REGRESSION (passes, but only by the fail-closed fallback). The startup check reads
    ``params.get("client_encoding")`` (exact key) while the forwarding keeps every key
    whose lower case is allowed, and PostgreSQL matches setting names without regard to
    case: ``CLIENT_ENCODING=SJIS`` skips the check and reaches the server. The session
    then starts in SJIS; the sidecar has no codec for it and refuses every statement, so
    the lexical payload cannot run. (Fix the check to be case-insensitive anyway.)"""
    payload = "SELECT '\x95\\' , (SELECT string_agg(ssn, chr(44)) FROM public.customers) -- '"
    try:
        client = RawClient(sidecar, params={key: "SJIS"})
    except Exception as exc:  # refused at login: fine
        assert "SJIS" in str(exc) or "encoding" in str(exc).lower(), exc
        return
    with client:
        reply = client.exchange(q(payload.encode("latin-1")))
        show = client.exchange(q("SELECT 1"))
    assert public_ssns_in(reply.raw) == set()
    assert reply.warden_refusals() and show.warden_refusals(), (reply.errors, show.messages)


@pytest.mark.parametrize(
    "change",
    [
        "SELECT set_config(setting_name => 'search_path', new_value => 'shadow', "
        "is_local => false)",
        "SELECT set_config(new_value => 'public', setting_name => 'search_path', "
        "is_local => false)",
        "WITH s AS (UPDATE pg_settings SET setting = 'shadow' WHERE name = 'search_path' "
        "RETURNING 1) SELECT * FROM s",
        "SELECT set_config(x, 'shadow', false) FROM (VALUES ('search_path')) AS v(x)",
    ],
)
def test_setting_changes_by_indirect_spellings_are_refused(sidecar: Sidecar, change: str) -> None:
    """REGRESSION (passes). set_config with named arguments (the engine reads positional
    constants only, so it sees a computed name and refuses), an UPDATE of pg_settings in
    a data-modifying CTE, a setting name from a VALUES list: all refused by Warden, the
    path unchanged."""
    with RawClient(sidecar) as client:
        reply = client.exchange(q(change))
        after = client.exchange(q("SELECT pg_catalog.current_schemas(false)::text"))
    assert reply.warden_refusals(), f"not refused by Warden: {reply.errors or reply.tags}"
    assert after.column() == ["{staging,public}"]


@pytest.mark.parametrize(
    "change",
    [
        "ALTER ROLE CURRENT_USER SET search_path = shadow",
        "ALTER ROLE CURRENT_USER IN DATABASE {db} SET standard_conforming_strings = off",
        "ALTER DATABASE {db} SET search_path = shadow",
        "ALTER FUNCTION public.note_count() SET search_path = shadow",
    ],
)
def test_role_and_database_settings_do_not_run(
    sidecar: Sidecar, upstream: Upstream, change: str
) -> None:
    """REGRESSION (passes). ALTER ROLE/DATABASE/FUNCTION ... SET would change the
    settings of every later session of the shared database role (every identity): they
    are "unknown" statements, held for review, and without an approval they never reach
    the database. (With an approvals service a reviewer could approve one; the settings
    allowlist does not apply to them. Consider refusing them outright.)"""
    with RawClient(sidecar) as client:
        reply = client.exchange(q(change.format(db=f'"{upstream.name}"')))
    assert reply.errors and reply.errors[0].get("C") in ("42501", "WR001"), reply.errors
    with upstream.admin() as conn:
        rows = conn.execute(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = %s",
            (upstream.role,),
        ).fetchone()
        config = conn.execute(
            "SELECT proconfig FROM pg_proc WHERE proname = 'note_count'"
        ).fetchone()
    assert rows == (0,) and config == (None,)


def test_a_reviewed_statement_that_acts_by_name_is_refused_in_a_named_portal(
    approving_sidecar: tuple[Sidecar, ApprovingControlPlane],
) -> None:
    """FINDING (medium; needs one approval). A statement that changes the session
    state (a barrier) may only be bound to the unnamed portal: in a named one it could
    run later, by an Execute, after the sidecar has settled what state it judges
    under. The Bind of a reviewed statement was held before that check, and once
    approved bound into the named portal all the same. Attack: ``Parse`` a reviewed
    DELETE that also sets ``search_path``, ``Bind`` it into portal ``p1``. It must be
    refused at the Bind, before a reviewer is asked, like any such statement."""
    sidecar, plane = approving_sidecar
    before = len(plane.requests)
    sql = (
        "DELETE FROM public.notes WHERE id = -1 "
        "RETURNING set_config('search_path', 'staging', false)"
    )
    with RawClient(sidecar) as client:
        reply = client.exchange(parse(sql, "sb"), bind("sb", "p1"), execute("p1"), SYNC)
        assert [e.get("M", "") for e in reply.warden_refusals()] == [
            "Warden: a statement that changes session settings, or acts on prepared "
            "statements or cursors by name, may only be bound to the unnamed portal"
        ], reply.errors
        assert client.exchange(q("SHOW search_path")).column() != ["staging"]
    assert plane.requests[before:] == []
