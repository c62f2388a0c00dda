"""Held statements without a working control plane: the real sidecar fails closed.

Two control planes that cannot help: one that is down (nothing listens on its
port) and one that hangs (accepts the connection, never answers), so a held
statement stays held for a while and the wait itself can be observed: later
messages of that session queue behind it in order, other sessions carry on, a
CancelRequest or a disconnect ends the wait. The approved and denied paths run
against the real control plane in tests/integration/test_sidecar_approvals.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from sidecar.proxy import messages as m
from tests.sidecar.proxy.conftest import (
    BOB_TOKEN,
    Sidecar,
    build_bundle,
    one_relay,
    start_sidecar,
    wait_for,
)
from tests.sidecar.proxy.test_garbage import login, recv_message

LITERAL = "do-not-log-7f3a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HungControlPlane:
    """A TCP listener that accepts and never answers: a control plane that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def _bundle(upstream: str) -> dict[str, Any]:
    return build_bundle(urlsplit(upstream).path.lstrip("/"), approvals={"hold_seconds": 20})


@pytest.fixture(scope="module")
def down_sidecar(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    url = f"http://127.0.0.1:{_free_port()}/api/v1/sidecar/approvals"
    proc = start_sidecar(
        tmp_path_factory.mktemp("down"), upstream, _bundle(upstream), approvals_url=url
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def hung_sidecar(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    plane = HungControlPlane()
    proc = start_sidecar(
        tmp_path_factory.mktemp("hung"),
        upstream,
        _bundle(upstream),
        approvals_url=f"http://127.0.0.1:{plane.port}/api/v1/sidecar/approvals",
        approvals_timeout=4,
    )
    yield proc
    proc.stop()
    plane.close()


def _events_of(sidecar: Sidecar, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in sidecar.events()
        if e.get("type") == "statement"
        and e.get("kind") == kind
        and all(e.get(k) == v for k, v in match.items())
    ]


def _note(sidecar: Sidecar, body: str) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO notes (body) VALUES (%s)", (body,))


def _count(sidecar: Sidecar, body: str) -> int:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM notes WHERE body = %s", (body,)).fetchone()
        assert row is not None
        return int(row[0])


def test_control_plane_down_refuses_the_held_statement(down_sidecar: Sidecar) -> None:
    _note(down_sidecar, LITERAL)
    with psycopg.connect(down_sidecar.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"DELETE FROM notes WHERE body = '{LITERAL}'")
        assert info.value.sqlstate == "WR001"
        message = str(info.value)
        assert "approval could not be requested" in message
        assert "delete-needs-review" in message
        assert "did not run" in message
        # The session stays usable, and nothing was deleted.
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)
        # Extended protocol (parameters): the held Parse fails the same way.
        with pytest.raises(psycopg.Error) as info:
            conn.execute("DELETE FROM notes WHERE body = %s", (LITERAL,))
        assert info.value.sqlstate == "WR001"
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _count(down_sidecar, LITERAL) == 1
    events = wait_for(
        lambda: [
            e
            for e in [_events_of(down_sidecar, "delete", outcome="held")]
            if len([x for x in e if "body" in x["statement"]]) >= 2
        ]
    )
    assert events, "two held events expected"
    events = [x for x in events[0] if "body" in x["statement"]]
    assert len(events) == 2
    assert {e["action"] for e in events} == {"review"}
    assert {e["error_sqlstate"] for e in events} == {"WR001"}
    spool = "".join(p.read_text() for p in (down_sidecar.state_dir / "spool").glob("*.jsonl"))
    assert LITERAL not in spool
    assert LITERAL not in down_sidecar.log()
    assert "could not be requested" in down_sidecar.log()


def test_sql_execute_of_a_statement_that_needs_approval_is_refused(
    down_sidecar: Sidecar, upstream: str
) -> None:
    """A statement that needs review is prepared at once and held at its Bind: SQL
    EXECUTE of it, with no Bind to hold, must not run it (nor EXPLAIN ANALYZE or
    CREATE TABLE AS of it)."""
    with psycopg.connect(upstream) as conn:
        before = conn.execute("SELECT count(*) FROM notes").fetchone()
    sock = login(down_sidecar)
    sock.sendall(m.frame(b"P", b"s1\x00DELETE FROM notes\x00\x00\x00") + m.frame(b"S", b""))
    kinds = []
    while b"Z" not in kinds:
        kinds.append(recv_message(sock)[0])
    assert kinds == [b"1", b"Z"]  # prepared: that runs nothing
    for sql in (
        b"EXECUTE s1",
        b"EXPLAIN ANALYZE EXECUTE s1",
        b"CREATE TABLE copied AS EXECUTE s1",
    ):
        sock.sendall(m.query(sql))
        errors = []
        while True:
            kind, body = recv_message(sock)
            if kind == b"E":
                errors.append(m.error_fields(body))
            if kind == b"Z":
                break
        assert len(errors) == 1, (sql, errors)
        assert errors[0]["C"] in {"42501", "WR001"} and "s1" in errors[0]["M"], errors
    sock.close()
    with psycopg.connect(upstream) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == before
        assert conn.execute("SELECT to_regclass('copied')").fetchone() == (None,)


def test_held_parse_in_a_pipeline_refuses_its_batch_then_the_next_runs(
    down_sidecar: Sidecar,
) -> None:
    sock = login(down_sidecar)
    held = m.frame(b"P", b"\x00DELETE FROM notes\x00\x00\x00")
    bind = m.frame(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00")
    execute = m.frame(b"E", b"\x00\x00\x00\x00\x00")
    sync = m.frame(b"S", b"")
    ok = m.frame(b"P", b"\x00SELECT 'next batch'\x00\x00\x00")
    sock.sendall(held + bind + execute + sync + ok + bind + execute + sync)
    kinds = []
    errors = []
    while kinds.count(b"Z") < 2:
        kind, body = recv_message(sock)
        kinds.append(kind)
        if kind == b"E":
            errors.append(m.error_fields(body))
    # Prepared, then held at its Bind: one error, the batch discarded up to its Sync;
    # then the next batch runs.
    assert kinds == [b"1", b"E", b"Z", b"1", b"2", b"D", b"C", b"Z"]
    assert errors[0]["C"] == "WR001"
    assert "approval could not be requested" in errors[0]["M"]
    sock.close()


def test_hung_control_plane_queues_the_session_and_spares_the_others(
    hung_sidecar: Sidecar,
) -> None:
    sock = login(hung_sidecar)
    started = time.monotonic()
    sock.sendall(
        m.query(b"DELETE FROM notes WHERE body = 'queued-1'") + m.query(b"SELECT 'after hold'")
    )
    # Held: nothing comes back for this session meanwhile...
    sock.settimeout(1.0)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    # ...while another session (another identity) runs normally.
    with psycopg.connect(hung_sidecar.dsn("bob", BOB_TOKEN), autocommit=True) as other:
        t0 = time.monotonic()
        assert other.execute("SELECT 'meanwhile'").fetchone() == ("meanwhile",)
        assert time.monotonic() - t0 < 1.0
    sock.settimeout(15)
    messages = []
    while len([k for k, _ in messages if k == b"Z"]) < 2:
        messages.append(recv_message(sock))
    elapsed = time.monotonic() - started
    kinds = [k for k, _ in messages]
    # The held statement's error first, then the query that waited behind it.
    assert kinds == [b"E", b"Z", b"T", b"D", b"C", b"Z"]
    error = m.error_fields(messages[0][1])
    assert error["C"] == "WR001"
    assert "approval could not be requested" in error["M"]
    assert b"after hold" in messages[2 + 1][1]
    assert 3.0 < elapsed < 12.0  # the approvals call timed out (4 s), not the bundle's 20 s
    sock.close()


def test_cancel_request_ends_the_wait(hung_sidecar: Sidecar) -> None:
    with psycopg.connect(hung_sidecar.dsn(), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            conn.execute("DELETE FROM notes WHERE body = 'cancel-me'")
        assert time.monotonic() - started < 3.0  # before the 4 s approvals timeout
        assert "waiting for approval" in str(info.value)
        assert conn.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)
    events = wait_for(lambda: _events_of(hung_sidecar, "delete", error_sqlstate="57014"))
    assert events and events[0]["outcome"] == "held"


def test_disconnect_ends_the_wait(hung_sidecar: Sidecar) -> None:
    sock = login(hung_sidecar)
    sock.sendall(m.query(b"DELETE FROM notes WHERE body = 'gone'"))
    time.sleep(0.3)
    sock.close()
    started = time.monotonic()
    events = wait_for(
        lambda: _events_of(hung_sidecar, "delete", error_sqlstate="connection_closed"), 3.0
    )
    assert events, "the held statement was not recorded when its client went away"
    assert events[0]["outcome"] == "held"
    assert time.monotonic() - started < 3.0


def test_fingerprint_ignores_identity_and_literals() -> None:
    from sidecar.engine import Engine, SessionContext, load_bundle
    from sidecar.runner import approval_facts

    engine = Engine(load_bundle(build_bundle("fp")))

    def facts(who: str, sql: str) -> dict[str, Any]:
        decision = engine.decide(identity=who, sql=sql, session=SessionContext())
        assert decision.action == "review", decision
        return approval_facts(decision)

    a = facts("alice", "DELETE FROM notes WHERE id = 1 AND body = 'secret'")
    b = facts("bob", "DELETE FROM notes WHERE id = 42 AND body = 'other'")
    c = facts("alice", "DELETE FROM notes WHERE id = 1")
    assert a["fingerprint"] == b["fingerprint"]
    assert a["fingerprint"] != c["fingerprint"]
    assert "secret" not in a["statement"] and "1" not in a["statement"].replace("$1", "")
    assert a["kind"] == ["delete"] and a["tables"] == ["public.notes"]
    assert a["reasons"][0]["rule"] == "delete-needs-review"
    multi = facts("alice", "DELETE FROM notes WHERE id = 1; SELECT 2")
    again = facts("bob", "DELETE FROM notes WHERE id = 7; SELECT 3")
    other = facts("alice", "SELECT 2; DELETE FROM notes WHERE id = 1")
    assert multi["fingerprint"] == again["fingerprint"] != other["fingerprint"]
    assert len(multi["fingerprint"]) == 64
    assert multi["kind"] == ["delete", "select"]  # one per statement


def test_sidecar_config_accepts_the_approvals_keys(tmp_path: Path) -> None:
    from sidecar.config import load_config

    config = load_config(
        None,
        env={
            "WARDEN_SIDECAR_UPSTREAM_DSN": "postgresql://u@h/db",
            "WARDEN_SIDECAR_STATE_DIR": str(tmp_path),
            "WARDEN_SIDECAR_DATASOURCE": "db",
            "WARDEN_SIDECAR_BUNDLE_FILE": str(tmp_path / "b.json"),
            "WARDEN_SIDECAR_APPROVALS_URL": "https://cp/api/v1/sidecar/approvals",
            "WARDEN_SIDECAR_APPROVALS_TIMEOUT": "3",
        },
    )
    assert config.approvals_url == "https://cp/api/v1/sidecar/approvals"
    assert config.approvals_timeout == 3


def test_a_shared_review_verdict_is_read_only_and_still_asks_as_json(tmp_path: Path) -> None:
    """The verdict a policy caches is shared by every session sending the same text:
    nothing in it can be changed, and the approval request built from it is the JSON
    the control plane takes, sent by the sidecar's HTTP client with its token."""
    import asyncio
    import json

    from sidecar.metrics import Metrics
    from sidecar.proxy.approvals import HttpApprovalGate
    from sidecar.proxy.hold import Hold, approval_request, first_rule
    from sidecar.runner import EnginePolicy, FileBundleSource

    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(build_bundle("ro")))
    policy = EnginePolicy(FileBundleSource(path), Metrics())

    def decide() -> Any:
        return policy.decide(
            identity="alice",
            sql="DELETE FROM notes WHERE id = 1",
            standard_conforming_strings=True,
            search_path=None,
            in_transaction=False,
            protocol="simple",
        )

    verdict = decide()
    assert verdict.action == "review" and decide() is verdict  # cached, so shared
    approval = verdict.approval
    assert approval is not None
    with pytest.raises(TypeError):
        approval["risk"] = 0  # type: ignore[index]
    with pytest.raises(TypeError):
        approval["reasons"][0]["rule"] = "other"
    assert approval["tables"] == ("public.notes",)
    assert first_rule(verdict) == "delete-needs-review"

    seen: dict[str, Any] = {}

    async def control_plane(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
        seen["head"], seen["body"] = head, json.loads(await reader.readexactly(length))
        reply = json.dumps({"id": "r1", "state": "pending", "url": "http://cp/r1"}).encode()
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % len(reply) + reply)
        await writer.drain()
        writer.close()

    async def scenario() -> Any:
        server = await asyncio.start_server(control_plane, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        gate = HttpApprovalGate(url=f"http://127.0.0.1:{port}/api/v1/sidecar/approvals", token="t")
        async with server:
            request = approval_request("alice", Hold(verdict), {"client_addr": "1.2.3.4"})
            return await gate.open(request)

    state = asyncio.run(scenario())
    assert (state.id, state.state, state.url) == ("r1", "pending", "http://cp/r1")
    assert seen["head"].startswith("POST /api/v1/sidecar/approvals HTTP/1.1\r\n")
    assert "Authorization: Bearer t\r\n" in seen["head"]
    body = seen["body"]
    assert body["identity"] == "alice" and body["client_addr"] == "1.2.3.4"
    assert body["tables"] == ["public.notes"]
    assert body["reasons"][0]["rule"] == "delete-needs-review"
    # Bound to these values, and showing them; the parameters' labels stay here.
    assert body["values"] == [{"statement": 0, "n": 1, "value": "1"}]
    assert len(body["values_digest"]) == 64 and "param_labels" not in body


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()


def test_a_bind_s_parameters_are_shown_by_type_and_bound_into_the_digest(tmp_path: Path) -> None:
    """What a reviewer reads of each parameter: text as sent, binary numbers, booleans
    and text decoded by the type the Parse gave, anything else in hex; and the digest
    changes with any of them."""
    import json

    from sidecar.metrics import Metrics
    from sidecar.proxy.hold import Hold, approval_request
    from sidecar.runner import EnginePolicy, FileBundleSource

    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(build_bundle("ro")))
    policy = EnginePolicy(FileBundleSource(path), Metrics())
    verdict = policy.decide(
        identity="alice",
        sql="DELETE FROM notes WHERE id = $1 AND body = $2 OR $3 OR $4 > $5 OR $6 = $7",
        standard_conforming_strings=True,
        search_path=None,
        in_transaction=False,
        protocol="extended",
    )
    assert verdict.action == "review"
    params = [
        (0, b"it's"),
        (1, (-7).to_bytes(4, "big", signed=True)),
        (1, b"\x01"),
        (1, b"\x3f\xf8\x00\x00\x00\x00\x00\x00"),
        (1, b"\xde\xad"),
        (1, "né".encode()),
        (0, None),
    ]
    types = [25, 23, 16, 701, 17, 25, 0]

    def request(given: list[Any]) -> dict[str, Any]:
        return approval_request("alice", Hold(verdict, b"", b"B"), {}, "utf-8", given, types)

    body = request(params)
    assert [v["value"] for v in body["values"]] == [
        "'it''s'",
        "-7",
        "true",
        "1.5",
        "\\xdead (binary)",
        "'né'",
        "NULL",
    ]
    assert "param_labels" not in body and len(body["values_digest"]) == 64
    for position, other in ((0, (0, b"its")), (1, (0, b"-7")), (6, (0, b""))):
        changed = list(params)
        changed[position] = other
        assert request(changed)["values_digest"] != body["values_digest"], position
    # The same bytes declared as another type are another value: another digest.
    retyped = approval_request(
        "alice", Hold(verdict, b"", b"B"), {}, "utf-8", params, [25, 23, 16, 700, 17, 25, 0]
    )
    assert retyped["values_digest"] != body["values_digest"]
