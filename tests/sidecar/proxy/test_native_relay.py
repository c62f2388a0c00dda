"""The native relay does what the Python relay does, message for message.

Two real Sessions (the native relay's and Python's alone) get the same bytes; what
they forward each way, what they keep pending and the audit events they write
must be the same, whole or cut at every byte. The proxy tests and tests/security
run both relays against a real sidecar as well (the ``relay`` fixture); ``make
fuzz`` runs this comparison on an AddressSanitizer build with malformed input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.engine import Engine
from sidecar.proxy import session as sessions
from sidecar.proxy.policy import Verdict
from tests.sidecar.proxy.conftest import build_bundle
from tests.sidecar.proxy.relay_check import Side, compared, differences, pair

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(
    not sessions.NATIVE_RELAY_AVAILABLE,
    reason="the native relay is not built: python -m sidecar.proxy.build_relay",
)


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + (len(payload) + 4).to_bytes(4, "big") + payload


def parse(name: bytes, sql: bytes) -> bytes:
    return frame(b"P", name + b"\x00" + sql + b"\x00\x00\x00")


def bind(portal: bytes, statement: bytes, value: bytes) -> bytes:
    body = portal + b"\x00" + statement + b"\x00" + (0).to_bytes(2, "big")
    body += (1).to_bytes(2, "big") + len(value).to_bytes(4, "big") + value
    return frame(b"B", body + (0).to_bytes(2, "big"))


def execute(portal: bytes = b"") -> bytes:
    return frame(b"E", portal + b"\x00" + (0).to_bytes(4, "big"))


def describe_portal(portal: bytes = b"") -> bytes:
    return frame(b"D", b"P" + portal + b"\x00")


SYNC = frame(b"S")
FLUSH = frame(b"H")
ROW = frame(b"D", (1).to_bytes(2, "big") + (2).to_bytes(4, "big") + b"42")
FIELD = b"id\x00" + bytes(6) + (23).to_bytes(4, "big") + (4).to_bytes(2, "big")
DESCRIPTION = frame(b"T", (1).to_bytes(2, "big") + FIELD + bytes(4) + bytes(2))


def done(tag: bytes, status: bytes = b"I") -> bytes:
    return frame(b"C", tag + b"\x00") + frame(b"Z", status)


@pytest.fixture(scope="module", autouse=True)
def relay() -> str:
    """Both relays in every test here: the conftest's one-relay-per-run is not needed."""
    return "both"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_bundle("relay")


def prepared_exchange(runs: int) -> Iterator[tuple[str, bytes]]:
    yield "client", parse(b"s1", b"SELECT id FROM orders WHERE id = $1") + SYNC
    yield "upstream", frame(b"1") + frame(b"Z", b"I")
    for n in range(runs):
        yield "client", bind(b"", b"s1", str(n).encode()) + execute() + SYNC
        yield "upstream", frame(b"2") + ROW + done(b"SELECT 1")
    # Two executions in one batch, named portals, a pipeline's worth at once.
    yield (
        "client",
        (bind(b"p1", b"s1", b"7") + execute(b"p1") + bind(b"p2", b"s1", b"8") + execute(b"p2"))
        + SYNC,
    )
    yield "upstream", frame(b"2") + ROW + frame(b"C", b"SELECT 1\x00") + frame(b"2") + ROW
    yield "upstream", done(b"SELECT 1")
    yield "client", frame(b"Q", b"SELECT 1\x00")
    yield "upstream", DESCRIPTION + ROW + done(b"SELECT 1")
    # libpq's run of a prepared statement (PQexecPrepared, pgbench -M prepared):
    # Bind, Describe of the portal, Execute, Sync; and a Flush between batches.
    for n in range(runs):
        yield "client", bind(b"", b"s1", str(n).encode()) + describe_portal() + execute() + SYNC
        yield "upstream", frame(b"2") + DESCRIPTION + ROW + done(b"SELECT 1")
    yield "client", bind(b"p3", b"s1", b"5") + describe_portal(b"p3") + FLUSH
    yield "upstream", frame(b"2") + DESCRIPTION
    yield "client", execute(b"p3") + SYNC
    yield "upstream", ROW + done(b"SELECT 1")
    # A transaction: the status byte follows the server's.
    yield "client", frame(b"Q", b"BEGIN\x00")
    yield "upstream", done(b"BEGIN", b"T")
    yield "client", bind(b"", b"s1", b"9") + execute() + SYNC
    yield "upstream", frame(b"2") + ROW + done(b"SELECT 1", b"T")
    yield "client", frame(b"Q", b"COMMIT\x00")
    yield "upstream", done(b"COMMIT")


def relayed() -> dict[str, int]:
    return sessions._relay.stats()  # type: ignore[no-any-return,union-attr]


def test_both_relays_forward_and_record_the_same(document: dict[str, Any]) -> None:
    before = relayed()
    assert differences(document, "alice", prepared_exchange(20)) == []
    after = relayed()
    # Not a comparison of Python with itself: the native side relayed the hot part.
    assert after["client"] - before["client"] >= 20
    assert after["upstream"] - before["upstream"] >= 20


def test_libpq_s_prepared_runs_are_relayed_natively(document: dict[str, Any]) -> None:
    """Describe and Flush are forwarded as they are: a run of a prepared statement
    that carries them (every libpq run does) stays on the native path."""
    side = Side(document, "alice", native=True)
    side.feed("client", parse(b"s1", b"SELECT id FROM orders WHERE id = $1") + SYNC)
    side.feed("upstream", frame(b"1") + frame(b"Z", b"I"))
    before = relayed()
    for n in range(10):
        side.feed(
            "client", bind(b"", b"s1", str(n).encode()) + describe_portal() + execute() + SYNC
        )
        side.feed("upstream", frame(b"2") + DESCRIPTION + ROW + done(b"SELECT 1"))
    after = relayed()
    assert after["client"] - before["client"] == 10
    assert after["upstream"] - before["upstream"] == 10


def query(sql: str) -> bytes:
    return frame(b"Q", sql.encode() + b"\x00")


def simple_exchange() -> Iterator[tuple[str, bytes]]:
    """Simple Queries of every kind of verdict: allowed as sent, masked (rewritten),
    blocked, held for review, one while another is in flight, and last a state
    change (a barrier: its probe's answer never comes here, and the session waits)."""
    for n in range(5):
        yield "client", query(f"SELECT id FROM notes WHERE id = {n}")
        yield "upstream", DESCRIPTION + ROW + done(b"SELECT 1")
    yield "client", query("SELECT email FROM customers WHERE id = 1")
    yield "upstream", DESCRIPTION + ROW + done(b"SELECT 1")
    yield "client", query("DROP TABLE notes")
    yield "upstream", frame(b"E", b"SERROR\x00C42000\x00Mrefused\x00\x00") + frame(b"Z", b"I")
    yield "client", query("DELETE FROM notes")
    yield "upstream", frame(b"E", b"SERROR\x00C42000\x00Mrefused\x00\x00") + frame(b"Z", b"I")
    # Two in one buffer, then one sent before the first's answer came.
    yield "client", query("SELECT id FROM notes WHERE id = 7") + query("SELECT 2")
    yield "upstream", DESCRIPTION + ROW + done(b"SELECT 1") + DESCRIPTION + ROW
    yield "client", query("SELECT id FROM notes WHERE id = 8")
    yield "upstream", done(b"SELECT 1")
    yield "upstream", DESCRIPTION + ROW + done(b"SELECT 1")
    yield "client", query("SELECT 'é' FROM notes WHERE id = 9")
    yield "upstream", DESCRIPTION + ROW + done(b"SELECT 1")
    yield "client", query("SET search_path TO public")
    yield "upstream", done(b"SET")


def run_both(
    document: dict[str, Any],
    exchange: list[tuple[str, bytes]],
    prepare: Callable[[Side], None] = lambda side: None,
) -> tuple[Side, Side]:
    """The exchange through a native and a Python session, each set up by ``prepare``
    first."""
    native, python = pair(document, "alice", prepare=prepare)
    for direction, data in exchange:
        native.feed(direction, data)
        python.feed(direction, data)
    return native, python


def assert_alike(native: Side, python: Side) -> None:
    assert native.session.closed == python.session.closed
    assert native.raised == ""
    assert compared(native, python) == []


def test_simple_queries_the_same_on_both_relays(document: dict[str, Any]) -> None:
    before = relayed()
    native, python = run_both(document, list(simple_exchange()))
    # The whole exchange ran: the last statement's barrier probe is waiting.
    assert not native.session.closed and native.session.hold is not None
    assert relayed()["client"] - before["client"] >= 6
    assert_alike(native, python)


@pytest.mark.parametrize("size", [1, 3, 7])
def test_simple_queries_the_same_when_the_replies_are_cut(
    document: dict[str, Any], size: int
) -> None:
    exchange = []
    for direction, data in simple_exchange():
        pieces = (
            [data]
            if direction == "client"
            else [data[i : i + size] for i in range(0, len(data), size)]
        )
        exchange += [(direction, piece) for piece in pieces]
    before = relayed()
    assert differences(document, "alice", exchange) == []
    assert relayed()["client"] - before["client"] >= 6


def test_a_query_sent_while_another_runs_is_python_s(document: dict[str, Any]) -> None:
    """Text that reads differently if the state changed (non-ASCII here), sent while
    a statement is in flight: the session probes the state before deciding it."""
    exchange = [
        ("client", query("SELECT id FROM notes WHERE id = 1")),
        ("client", query("SELECT 'é' FROM notes WHERE id = 9")),
    ]
    before = relayed()
    native, python = run_both(document, exchange)
    assert relayed()["client"] - before["client"] == 1
    assert b"\xc3\xa9" not in bytes(native.upstream.data)  # held behind the probe
    assert native.session.hold is not None
    assert_alike(native, python)


def test_a_text_longer_than_the_policy_caches_is_python_s(document: dict[str, Any]) -> None:
    """quick_query decides only what the policy caches: when its answer is "not
    quick", client_data's second decision must be a cache hit, not a second run
    of the engine over a long text."""
    values = ", ".join(str(n) for n in range(1200))
    long = query(f"SELECT id FROM notes WHERE id IN ({values})")
    assert len(long) > 4096  # EnginePolicy.CACHE_TEXT_LIMIT
    before = relayed()
    native, python = run_both(document, [("client", long)])
    assert relayed()["client"] == before["client"]
    assert_alike(native, python)


def test_a_spool_that_refuses_is_python_s(document: dict[str, Any]) -> None:
    """A spool that cannot record (full under refuse, or failed): nothing runs."""

    def refusing(side: Side) -> None:
        side.spool.accepting = False

    exchange = [("client", query("SELECT id FROM notes WHERE id = 1"))]
    before = relayed()
    native, python = run_both(document, exchange, refusing)
    assert relayed()["client"] == before["client"]
    assert b"FROM notes" not in bytes(native.upstream.data)
    assert_alike(native, python)


def test_a_stale_sql_prepare_is_python_s(document: dict[str, Any]) -> None:
    """After the rules change, a statement that can run one prepared with SQL PREPARE
    (EXPLAIN ANALYZE here, which is otherwise plain) is refused until the session
    deallocates: the relay never sends it."""

    def prepared_then_new_rules(side: Side) -> None:
        side.feed("client", query("PREPARE p AS SELECT id FROM notes"))
        side.feed("upstream", done(b"PREPARE"))
        side.session.policy.replace(document)  # a new policy generation

    exchange = [("client", query("EXPLAIN ANALYZE SELECT id FROM notes"))]
    before = relayed()
    native, python = run_both(document, exchange, prepared_then_new_rules)
    assert relayed()["client"] == before["client"]
    assert b"EXPLAIN ANALYZE" not in bytes(native.upstream.data)
    assert b"warden refused" in bytes(native.upstream.data)  # its refusal went instead
    assert_alike(native, python)


def test_a_simple_query_allowed_as_sent_is_relayed_natively(document: dict[str, Any]) -> None:
    """Its verdict is Python's (quick_query); the framing, the pending item and the
    write are the relay's. A masked read is rewritten, so Python sends it."""
    side = Side(document, "alice", native=True)
    before = relayed()
    for n in range(10):
        side.feed("client", frame(b"Q", f"SELECT id FROM notes WHERE id = {n}\x00".encode()))
        side.feed("upstream", DESCRIPTION + ROW + done(b"SELECT 1"))
    assert relayed()["client"] - before["client"] == 10
    python = Side(document, "alice", native=False)
    for n in range(10):
        python.feed("client", frame(b"Q", f"SELECT id FROM notes WHERE id = {n}\x00".encode()))
        python.feed("upstream", DESCRIPTION + ROW + done(b"SELECT 1"))
    for each in (side, python):  # each decision timed once: by the relay, or by _decide
        counts, _, decided = each.session.metrics.decisions.snapshot()
        assert decided == 10 and sum(counts) == 10
    before = relayed()
    side.feed("client", frame(b"Q", b"SELECT email FROM customers\x00"))
    assert relayed()["client"] == before["client"]
    assert b"SELECT email FROM customers\x00" not in bytes(side.upstream.data)


def reads_by_id(
    ids: Iterable[int], text: str = "SELECT id FROM notes WHERE id = {}"
) -> list[tuple[str, bytes]]:
    """Texts of one shape (each {} the id), each answered."""
    out = []
    for n in ids:
        out += [
            ("client", query(text.format(n, n))),
            ("upstream", DESCRIPTION + ROW + done(b"SELECT 1")),
        ]
    return out


def by_shape() -> int:
    return relayed()["shapes"]


ORM_READ = (
    'SELECT "notes"."id" FROM "notes" WHERE "notes"."id" = {} AND "notes"."body" <> '
    "'user-{}@example.com' LIMIT 21"
)


@pytest.mark.parametrize("text", ["SELECT id FROM notes WHERE id = {}", ORM_READ])
def test_a_shape_is_given_its_verdict_by_the_relay(document: dict[str, Any], text: str) -> None:
    """Once the policy keeps a shape's verdict (from its second text, which the engine
    serves by template), quick_query keeps it for the session: the relay gives the
    next texts of the shape the same verdict without asking. What goes each way and
    what is recorded is Python's, byte for byte."""
    before = by_shape()
    native, python = run_both(document, reads_by_id(range(1, 11), text))
    assert by_shape() - before == 8
    assert_alike(native, python)
    counts, _, decided = native.session.metrics.decisions.snapshot()
    assert decided == 10 and sum(counts) == 10  # each decision timed once


@pytest.mark.parametrize(
    "text",
    [
        "SELECT id FROM notes WHERE id = 1234567890",  # ten digits: the policy's limit is nine
        "SELECT id FROM notes WHERE id = \u0661",  # a digit, not an ASCII one
        "SELECT id FROM notes WHERE id = ",
        "SELECT id FROM notes WHERE id = 7 ",
        "SELECT id FROM notes WHERE id = 7; DELETE FROM notes",
        "SELECT id FROM notes WHERE id = -7",
        "SELECT id FROM notes WHERE id = 7.5",
        "SELECT id FROM notes WHERE id = 0x1F",
        "SELECT id FROM notes WHERE id = 7e1",
        "SELECT id FROM notes WHERE id = 7--",
        "select id FROM notes WHERE id = 7",
        "SELECT id FROM notes WHERE id = 77 OR true",
        "SELECT id FROM notes WHERE id = 7 AND body = 'x'",
        ORM_READ.format(7, "it''s") + "'",  # another string after it
        ORM_READ.replace("'user", "'\"user").format(7, 7),  # a double quote in it
        ORM_READ.replace("'user", "'\0user").format(7, 7),
        ORM_READ.replace("'user-{}@example.com'", "E'x'").format(7),
        ORM_READ.replace("'user-{}@example.com'", "'x' 'y'").format(7),
        ORM_READ.format(7, 7).replace(" LIMIT 21", ""),
    ],
)
def test_a_text_the_shape_does_not_fit_is_python_s(document: dict[str, Any], text: str) -> None:
    warm = reads_by_id(range(1, 6)) + reads_by_id(range(1, 6), ORM_READ)
    native, python = run_both(document, warm)
    before = by_shape()
    for side in (native, python):
        side.feed("client", query(text))
    assert by_shape() == before
    assert_alike(native, python)


def test_the_relay_s_shape_holds_only_under_its_rules_and_state(document: dict[str, Any]) -> None:
    """The verdict kept for the relay was given under one policy generation and one
    session state: after new rules, or a new state, the next text of the shape is
    Python's to decide, and only Python keeps a verdict for the relay again."""

    def fed(side: Side, ids: Iterable[int]) -> int:
        before = by_shape()
        for direction, data in reads_by_id(ids):
            side.feed(direction, data)
        return by_shape() - before

    side = Side(document, "alice", native=True)
    assert fed(side, range(1, 6)) == 3
    side.session.policy.replace(document)  # a new bundle: a new generation
    assert fed(side, [6]) == 0
    assert fed(side, range(7, 11)) >= 1  # kept again once Python served it by shape
    side.session._set_state(search_path=("public",))  # as a confirmed SET would
    assert fed(side, [11]) == 0
    assert fed(side, range(12, 16)) >= 1
    side.spool.accepting = False  # a spool that refuses: nothing runs
    sent = len(side.upstream.data)
    assert fed(side, [16]) == 0
    assert b"id = 16" not in bytes(side.upstream.data[sent:])


def test_a_session_changed_while_the_relay_looks_it_up_is_read_again(
    document: dict[str, Any],
) -> None:
    """The relay looks up the policy's generation (and, with a spool other than
    AuditSpool, its ``accepting``), which in general may run Python code; here a
    property that drops the kept shapes and fills memory with forged entries. The
    relay reads the shapes after those lookups and holds them while it uses one, so
    it never serves a freed or forged verdict: the text goes to Python, which
    decides it afresh."""
    side = Side(document, "alice", native=True)
    for direction, data in reads_by_id(range(1, 6)):
        side.feed(direction, data)
    session = side.session
    assert session._shapes
    policy, forged = session.policy, []
    fake = Verdict(action="allow", message="FORGED", upstream_sql="", plain=True)

    class Meddling:
        def __getattr__(self, name: str) -> Any:
            return getattr(policy, name)

        @property
        def generation(self) -> int:
            session._shapes = ()
            forged.extend((policy.generation, 0, 0, 0, 0, fake) for _ in range(1000))
            return policy.generation  # type: ignore[no-any-return]

    session.policy = Meddling()
    before = by_shape()
    side.feed("client", query("SELECT id FROM notes WHERE id = 99"))
    assert by_shape() == before
    assert all(getattr(item, "verdict", None) is not fake for item in session.pending)
    assert not side.raised


def what_one_session_does(document: dict[str, Any], native: bool) -> dict[str, Any]:
    """Every exchange of this module through one Session: what it forwarded each way
    and the events it recorded."""
    side = Side(document, "alice", native=native)
    for direction, data in [*prepared_exchange(5), *simple_exchange()]:
        side.feed(direction, data)
    return {
        "client": side.normalised(side.client.data).hex(),
        "upstream": side.normalised(side.upstream.data).hex(),
        "raised": side.raised,
        "events": side.events(),
    }


# A machine where the relay could not be built: its import fails, so the Session is
# a plain object and its pending items the Python _Exec.
_UNBUILT = """
import json, sys
sys.modules["sidecar.proxy._relay"] = None
from sidecar.proxy import session
assert not session.NATIVE_RELAY_AVAILABLE
assert session.Session.__mro__[1] is object and session._Exec is session._PythonExec
from tests.sidecar.proxy.test_native_relay import what_one_session_does
print(json.dumps(what_one_session_does(json.load(sys.stdin), native=False)))
"""


def test_the_python_classes_used_without_the_relay_do_what_the_native_ones_do(
    document: dict[str, Any],
) -> None:
    """With the relay built, the Session's state and its pending items are native
    types whichever relay runs; the pure-Python classes a machine without a compiler
    gets are checked here against them, in a process where the import fails."""
    unbuilt = subprocess.run(
        [sys.executable, "-c", _UNBUILT],
        cwd=ROOT,
        input=json.dumps(document),
        capture_output=True,
        text=True,
        check=True,
    )
    python = json.loads(unbuilt.stdout)
    native = what_one_session_does(document, native=True)
    assert python["events"] and python == native


def test_the_same_when_every_message_arrives_a_byte_at_a_time(document: dict[str, Any]) -> None:
    def bytewise(data: bytes) -> list[bytes]:
        return [data[i : i + 1] for i in range(len(data))]

    assert differences(document, "alice", prepared_exchange(3), bytewise) == []


@pytest.mark.parametrize("size", [2, 3, 5, 7, 11, 64])
def test_the_same_when_messages_are_cut_anywhere(document: dict[str, Any], size: int) -> None:
    def cut(data: bytes) -> list[bytes]:
        return [data[i : i + size] for i in range(0, len(data), size)]

    assert differences(document, "alice", prepared_exchange(4), cut) == []


def test_a_prepared_statement_decided_under_an_older_policy_goes_back_to_python(
    document: dict[str, Any],
) -> None:
    side = Side(document, "alice", native=True)
    side.feed("client", parse(b"s1", b"SELECT id FROM orders WHERE id = $1") + SYNC)
    side.feed("upstream", frame(b"1") + frame(b"Z", b"I"))
    side.session.policy.replace(document)  # a new bundle: a new policy generation
    sent = len(side.upstream.data)
    before = relayed()
    side.feed("client", bind(b"", b"s1", b"1") + execute() + SYNC)
    assert relayed()["client"] == before["client"]
    # Python decided it again under the new generation, then let the Bind go on.
    assert side.session.statements[b"s1"].generation == side.session.policy.generation
    assert bytes(side.upstream.data[sent:]).startswith(b"B")


def test_malformed_lengths_are_python_s_to_refuse(document: dict[str, Any]) -> None:
    bad = b"B" + (3).to_bytes(4, "big")  # shorter than its own length field
    assert differences(document, "alice", [("client", bad)]) == []
    side = Side(document, "alice", native=True)
    side.feed("client", bad)
    assert side.session.closed
    assert b"08P01" in bytes(side.client.data)


def test_native_events_are_valid_statement_events(document: dict[str, Any]) -> None:
    side = Side(document, "alice", native=True)
    for direction, data in prepared_exchange(2):
        side.feed(direction, data)
    side.spool.flush()
    side.spool.close()
    lines = [
        json.loads(line) for path in side.spool.segments() for line in path.read_text().splitlines()
    ]
    statements = [e for e in lines if e["type"] == "statement"]
    assert len(statements) >= 5
    for event in statements:
        assert event["v"] and len(event["id"]) == 36 and event["id"][14] == "7"
        assert isinstance(event["ts"], float) and isinstance(event["duration_ms"], float)


def _relay_one(side: Side, n: int) -> None:
    side.feed("client", query(f"SELECT id FROM notes WHERE id = {n}"))
    side.feed("upstream", DESCRIPTION + ROW + done(b"SELECT 1"))


def test_the_relay_writes_its_events_into_the_spool_s_native_lines(
    document: dict[str, Any],
) -> None:
    """No str and no append_line per event: the relay appends the line to the spool's
    buffer in C, and flushes the spool when its flush_events lines wait."""
    side = Side(document, "alice", native=True, spool={"flush_events": 3})
    lines = side.spool.lines
    assert type(lines) is sessions._relay.SpoolLines  # type: ignore[union-attr]
    assert side.session._spool_lines is lines
    # Seen, not replaced: the spool's own append_line, which the relay would call by
    # name if it did not write the event itself.
    through_python: list[str] = []
    append_line = side.spool.append_line

    def seen(line: str, kind: object = None) -> None:
        through_python.append(line)
        append_line(line, kind)

    side.spool.append_line = seen  # type: ignore[method-assign]
    before, written = relayed()["client"], side.spool.written
    _relay_one(side, 1)
    waiting = len(lines)
    assert waiting >= 1 and side.spool.written == written
    for n in range(2, 2 + 3 - waiting):
        _relay_one(side, n)
    assert relayed()["client"] - before == 3 - waiting + 1
    assert len(lines) == 0 and side.spool.written == written + 3  # flushed at the limit
    side.spool.close()
    events = [
        json.loads(line) for path in side.spool.segments() for line in path.read_text().splitlines()
    ]
    assert [e["outcome"] for e in events if e["type"] == "statement"] == ["allowed"] * (
        3 - waiting + 1
    )
    assert not [line for line in through_python if '"type":"statement"' in line]


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_full_spool_drops_the_relay_s_events_under_drop(
    document: dict[str, Any], native: bool
) -> None:
    """Under ``drop`` a full spool keeps serving and counts what it could not keep: the
    relay leaves each event to append_line, which applies the policy, instead of
    writing it into a buffer nobody may flush."""
    side = Side(document, "alice", native=native, spool={"max_bytes": 1, "full_policy": "drop"})
    _relay_one(side, 1)
    side.spool.flush()  # on disk: the one-byte spool is full from now on
    assert side.spool.full and side.spool.accepting and not side.spool.lines.open
    before, dropped = relayed()["client"], side.spool.dropped
    _relay_one(side, 2)
    _relay_one(side, 3)
    assert relayed()["client"] - before == (2 if native else 0)
    assert side.spool.dropped == dropped + 2 and len(side.spool.lines) == 0
    assert bytes(side.client.data).count(b"SELECT 1") == 3  # all three ran
    side.spool.close()


def test_a_row_count_past_64_bits_is_counted_as_python_counts_it(
    document: dict[str, Any],
) -> None:
    # Found by make fuzz: a count Python parsed into a big int, then added to natively.
    huge = b"SELECT 99999999999999999999"
    exchange = [
        ("client", frame(b"Q", b"SELECT 1; SELECT 2\x00")),
        ("upstream", DESCRIPTION + ROW + frame(b"C", huge + b"\x00")),
        ("upstream", DESCRIPTION + ROW + done(b"SELECT 1")),
        *prepared_exchange(2),
    ]
    assert differences(document, "alice", exchange) == []


def test_strict_durability_the_same_on_both_relays(document: dict[str, Any]) -> None:
    """Production's default: each intent is journaled (by the Session's _exec, which
    the relay calls) and the bytes wait for its fsync."""

    async def run(native: bool) -> Side:
        side = Side(document, "alice", native=native, durability="strict")
        for direction, data in [*prepared_exchange(3), *simple_exchange()]:
            side.feed(direction, data)
            await asyncio.sleep(0)  # the end of the loop's turn: the journal's commit
        return side

    before = relayed()
    native, python = asyncio.run(run(True)), asyncio.run(run(False))
    assert relayed()["client"] - before["client"] >= 10
    assert native.client.data and native.upstream.data
    assert compared(native, python) == []


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_journal_the_disk_refuses_runs_nothing_and_says_why(
    document: dict[str, Any], native: bool
) -> None:
    async def scenario() -> Side:
        side = Side(document, "alice", native=native, durability="strict")
        assert side.spool._journal_file is not None
        full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
        os.dup2(full, side.spool._journal_file.fd)
        os.close(full)
        side.feed("client", frame(b"Q", b"SELECT 1\x00"))
        await asyncio.sleep(0)  # the end of the loop's turn: the journal's commit
        return side

    side = asyncio.run(scenario())
    assert bytes(side.upstream.data) == b"", "a statement ran without its intent on disk"
    assert side.session.closed and b"58030" in bytes(side.client.data)
    side.spool._writer.shutdown(wait=True)


REPLY = DESCRIPTION + ROW + done(b"SELECT 1")
QUERY = frame(b"Q", b"SELECT id FROM notes WHERE id = 1\x00")


class Accepted(asyncio.Protocol):
    """Keeps the transport of each connection the loop accepts."""

    def __init__(self, transports: asyncio.Queue[asyncio.BaseTransport]) -> None:
        self.transports = transports

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transports.put_nowait(transport)


class Wired:
    """A native-relay Session on real uvloop TCP connections, with the plain sockets
    this test plays the client and the upstream server on."""

    side: Side
    client: Any  # uvloop's TCPTransport to the client
    client_side: socket.socket
    server_side: socket.socket


@contextlib.asynccontextmanager
async def wired(document: dict[str, Any]) -> AsyncIterator[Wired]:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    accepted_upstream = loop.create_task(loop.sock_accept(listener))
    upstream, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
    w = Wired()
    w.server_side, _ = await accepted_upstream
    transports: asyncio.Queue[asyncio.BaseTransport] = asyncio.Queue()
    server = await loop.create_server(lambda: Accepted(transports), "127.0.0.1", 0)
    w.client_side = socket.socket()
    w.client_side.setblocking(False)
    await loop.sock_connect(w.client_side, server.sockets[0].getsockname())
    w.client = await transports.get()
    w.side = Side(document, "alice", native=True, transports=(w.client, upstream))
    session = w.side.session
    assert session._client_fd >= 0 and session._upstream_fd >= 0
    w.client.set_protocol(sessions.ClientProtocol(session))
    upstream.set_protocol(sessions.UpstreamProtocol(session))
    try:
        yield w
    finally:
        w.client.close()
        upstream.close()
        server.close()
        for sock in (listener, w.server_side, w.client_side):
            sock.close()
        w.side.spool.close()


async def recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < size:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        assert chunk, "the connection was closed"
        data += chunk
    return bytes(data)


def on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_plain_tcp_is_sent_past_the_transport_and_never_overtakes_it(
    document: dict[str, Any],
) -> None:
    """On uvloop's plain TCP transports the relay sends a hot message to the socket
    itself when the transport holds nothing; while the transport still holds bytes
    (a slow client), the message goes through it, behind them, never ahead."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with wired(document) as w:
            # Both ways past the transports.
            before = relayed()
            await loop.sock_sendall(w.client_side, QUERY)
            assert await recv_exactly(w.server_side, len(QUERY)) == QUERY
            await loop.sock_sendall(w.server_side, REPLY)
            assert await recv_exactly(w.client_side, len(REPLY)) == REPLY
            assert relayed()["direct"] - before["direct"] == 2

            # A slow client: the transport holds what the socket did not take. Then the
            # client reads some, so the socket has room again before the loop's next
            # turn lets the transport send more: the next reply must still come last.
            await loop.sock_sendall(w.client_side, QUERY)
            assert await recv_exactly(w.server_side, len(QUERY)) == QUERY
            backlog = b"x" * (32 * 1024 * 1024)
            w.client.write(backlog)
            assert w.client.get_write_buffer_size() > 0
            drained = bytearray()
            with contextlib.suppress(BlockingIOError):
                while True:  # all the socket has, without a turn of the loop
                    drained += w.client_side.recv(1 << 20)
            assert drained
            before = relayed()
            w.side.session.upstream_entry(REPLY)  # as if read from the upstream now
            assert relayed()["upstream"] - before["upstream"] == 1
            assert relayed()["direct"] == before["direct"], "sent ahead of the held bytes"
            rest = await recv_exactly(w.client_side, len(backlog) + len(REPLY) - len(drained))
            received = bytes(drained) + rest
            assert received[: len(backlog)] == backlog
            assert received[len(backlog) :] == REPLY

    on_uvloop(scenario)


def test_a_closed_connection_s_socket_number_is_never_written_to(document: dict[str, Any]) -> None:
    """Once the transport is closing, its socket is closed and the number can belong
    to another connection at once: the relay never sends to it."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with wired(document) as w:
            await loop.sock_sendall(w.client_side, QUERY)
            assert await recv_exactly(w.server_side, len(QUERY)) == QUERY
            number = w.side.session._client_fd
            w.client.close()
            # Another connection takes the number (the kernel gives out the lowest).
            mine, theirs = socket.socketpair()
            os.dup2(mine.fileno(), number)
            theirs.setblocking(False)
            try:
                before = relayed()
                with contextlib.suppress(RuntimeError):  # the transport's own refusal
                    w.side.session.upstream_entry(REPLY)
                assert relayed()["direct"] == before["direct"]
                with pytest.raises(BlockingIOError):
                    theirs.recv(1 << 16)  # nothing reached the other connection
            finally:
                os.close(number)
                mine.close()
                theirs.close()

    on_uvloop(scenario)


def test_what_the_socket_does_not_take_goes_through_the_transport(document: dict[str, Any]) -> None:
    """A reply bigger than the socket's room, the transport empty: the relay sends
    what fits and hands the rest to the transport, in order."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with wired(document) as w:
            w.client.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await loop.sock_sendall(w.client_side, QUERY)
            assert await recv_exactly(w.server_side, len(QUERY)) == QUERY
            rows = b"".join(
                frame(b"D", (1).to_bytes(2, "big") + (8000).to_bytes(4, "big") + bytes([n]) * 8000)
                for n in range(200)
            )
            reply = DESCRIPTION + rows + done(b"SELECT 200")
            before = relayed()
            w.side.session.upstream_entry(reply)
            assert relayed()["upstream"] - before["upstream"] == 1
            assert w.client.get_write_buffer_size() > 0  # the rest, held by the transport
            assert await recv_exactly(w.client_side, len(reply)) == reply

    on_uvloop(scenario)


def test_other_transports_are_never_written_past(tmp_path: Path) -> None:
    """TLS above all: uvloop's TLS transport answers for the plain socket beneath it,
    so anything short of the exact plain-TCP class (a base class, "it has a socket")
    would send plaintext into an encrypted session. Also asyncio's own loop and a
    test's stand-in: the relay writes through them, always."""
    uvloop = pytest.importorskip("uvloop")
    from tests.sidecar.proxy.relay_check import Recorder
    from tests.sidecar.proxy.test_tls import _self_signed

    assert sessions._direct_fd(Recorder()) == -1
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))

    async def upgraded() -> tuple[int, int, object]:
        """A plain connection upgraded in place, as the sidecar answers SSLRequest."""
        loop = asyncio.get_running_loop()
        accepted: asyncio.Queue[asyncio.BaseTransport] = asyncio.Queue()
        server = await loop.create_server(lambda: Accepted(accepted), "127.0.0.1", 0)
        _reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        plain = await accepted.get()
        tls, _ = await asyncio.gather(
            loop.start_tls(plain, plain.get_protocol(), server_tls, server_side=True),
            writer.start_tls(client_tls, server_hostname="localhost"),
        )
        try:
            assert tls is not None
            return (
                sessions._direct_fd(plain),
                sessions._direct_fd(tls),
                tls.get_extra_info("socket"),
            )
        finally:
            tls.close()
            writer.close()
            server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        before, after, beneath = runner.run(upgraded())
    assert before >= 0  # the plain connection would have been written to directly
    assert after == -1 and beneath is not None  # the TLS one never, socket or not

    async def plain_asyncio() -> int:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        transport, _ = await loop.create_connection(
            asyncio.Protocol, *server.sockets[0].getsockname()
        )
        try:
            return sessions._direct_fd(transport)
        finally:
            transport.close()
            server.close()

    assert asyncio.run(plain_asyncio()) == -1


def test_a_large_query_judged_while_the_rules_change_is_judged_again(
    document: dict[str, Any],
) -> None:
    """A Query over 64 KiB is judged on a worker thread and runs when the answer
    comes back. If a new bundle arrived meanwhile, the answer is the old rules':
    the statement must be judged again under the new ones before it runs. The
    swap is made from inside the worker's judgement (``threading.setprofile``),
    once the engine has answered; the new rules block reading ``notes``."""
    blocking = build_bundle(
        "relay",
        guardrails=[
            {
                "name": "notes-closed",
                "position": 1,
                "enabled": True,
                "action": "block",
                "message": "notes are closed",
                "conditions": {"tables": ["public.notes"]},
            },
            *document["guardrails"],
        ],
    )
    values = ", ".join(str(n) for n in range(14000))
    large = query(f"SELECT id FROM notes WHERE id IN ({values})")
    assert len(large) > 64 * 1024  # session.LARGE_STATEMENT: judged off the loop

    judged = Engine.decide.__code__

    async def exchange() -> Side:
        side = Side(document, "alice", native=True)
        swapped = threading.Event()

        def swap_once(frame: Any, event: str, arg: Any) -> None:
            # Once the engine has answered under the old rules.
            if event == "return" and frame.f_code is judged and not swapped.is_set():
                swapped.set()
                side.session.policy.replace(blocking)

        threading.setprofile(swap_once)  # threads started from now: the worker's
        try:
            side.feed("client", large)
            for _ in range(500):
                if side.session.hold is None:
                    break
                await asyncio.sleep(0.01)
        finally:
            threading.setprofile(None)  # type: ignore[arg-type]
        assert swapped.is_set()
        return side

    side = asyncio.run(exchange())
    sent = bytes(side.upstream.data)
    assert b"FROM notes WHERE id IN" not in sent
    assert b"warden refused" in sent  # its refusal went instead
