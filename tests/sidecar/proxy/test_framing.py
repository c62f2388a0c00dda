"""However TCP splits the byte stream, the session forwards exactly the same bytes.

The session is driven in-process with the real engine and a real bundle; only
the two sockets are replaced by byte recorders, so arbitrary chunkings can be
replayed quickly (hypothesis picks the split points).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.metrics import Metrics
from sidecar.proxy import messages as m
from sidecar.proxy.session import Session
from sidecar.runner import EnginePolicy, FileBundleSource
from tests.sidecar.proxy.conftest import build_bundle
from tests.sidecar.proxy.relay_check import Recorder


class Spool:
    """Collects the audit lines; batched durability (no intent journal)."""

    accepting = True
    strict = False
    durable = 0

    def __init__(self) -> None:
        self.lines: list[str] = []

    def append(self, event: dict[str, Any]) -> None:
        self.lines.append(json.dumps(event))

    def append_line(self, line: str, kind: object = None) -> None:
        self.lines.append(line)


_POLICY: EnginePolicy | None = None


def _policy(tmp: Path) -> EnginePolicy:
    global _POLICY
    if _POLICY is None:
        path = tmp / "bundle.json"
        path.write_text(json.dumps(build_bundle("framing")))
        _POLICY = EnginePolicy(FileBundleSource(path), Metrics())
    return _POLICY


def _session(tmp: Path) -> tuple[Session, Recorder, Recorder, Spool]:
    client, upstream, spool = Recorder(), Recorder(), Spool()
    policy = _policy(tmp)
    identity = policy.identity("alice")
    assert identity is not None
    session = Session(
        client=client,  # type: ignore[arg-type]
        upstream=upstream,  # type: ignore[arg-type]
        identity=identity,
        policy=policy,
        audit=spool,
        metrics=Metrics(),
        parameters={"standard_conforming_strings": "on", "client_encoding": "UTF8"},
        status=b"I",
        base_event={"identity": "alice"},
        max_message=1 << 24,
        on_close=lambda s: None,
    )
    return session, client, upstream, spool


CLIENT_STREAM = b"".join(
    [
        m.query(b"SELECT email FROM customers WHERE id = 1"),
        m.query(b"DROP TABLE customers"),
        m.build_parse(b"s1", b"SELECT ssn FROM customers WHERE id = $1", b"\x00\x00"),
        m.frame(b"B", b"p1\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x013\x00\x00"),
        m.frame(b"D", b"Pp1\x00"),
        m.frame(b"E", b"p1\x00\x00\x00\x00\x00"),
        m.frame(b"S", b""),
        m.query(b"COPY customers (id) FROM STDIN"),
        m.frame(b"d", b"7\n" * 300),
        m.frame(b"c", b""),
        m.frame(b"C", b"Ss1\x00"),
    ]
)

UPSTREAM_STREAM = b"".join(
    [
        m.frame(b"T", b"\x00\x01email\x00" + b"\x00" * 18),
        m.frame(b"D", b"\x00\x01\x00\x00\x10\x00" + b"x" * 4096),
        m.frame(b"C", b"SELECT 1\x00"),
        m.ready_for_query(b"I"),
        m.parameter_status("application_name", "probe"),
        m.error_response(sqlstate="22012", message="division by zero"),
        m.ready_for_query(b"E"),
        m.frame(b"d", b"y" * 9000),
        m.frame(b"C", b"COPY 1\x00"),
        m.ready_for_query(b"I"),
    ]
)


def _chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=40))
def test_client_stream_split_anywhere(tmp_path_factory: Any, cuts: list[int]) -> None:
    tmp = tmp_path_factory.getbasetemp()
    whole, _, up_whole, _ = _session(tmp)
    whole.client_data(CLIENT_STREAM)
    split, _, up_split, _ = _session(tmp)
    for chunk in _chunks(CLIENT_STREAM, cuts):
        split.client_data(chunk)
    expected = bytes(up_whole.data)
    got = bytes(up_split.data)
    # The refusal marker carries a per-session nonce; compare with it normalised.
    assert got.replace(split._marker, b"M") == expected.replace(whole._marker, b"M")
    assert b"DROP" not in got and b"warden refused" in got
    assert b"'***@' OPERATOR(pg_catalog.||)" in got, "the masked rewrite was sent, not the original"


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=40))
def test_upstream_stream_split_anywhere(tmp_path_factory: Any, cuts: list[int]) -> None:
    tmp = tmp_path_factory.getbasetemp()
    session, client, _, spool = _session(tmp)
    session.client_data(m.query(b"SELECT 1"))
    session.client_data(m.query(b"SELECT 1/0"))
    session.client_data(m.query(b"COPY (SELECT 1) TO STDOUT"))
    for chunk in _chunks(UPSTREAM_STREAM, cuts):
        session.upstream_data(chunk)
    assert bytes(client.data) == UPSTREAM_STREAM
    assert session.status == b"I" and not session.pending
    outcomes = [json.loads(line)["outcome"] for line in spool.lines]
    assert outcomes == ["allowed", "error", "allowed"]
    assert json.loads(spool.lines[0])["rows"] == 1


def test_refusal_error_is_swapped_for_wardens(tmp_path: Path) -> None:
    session, client, upstream, _ = _session(tmp_path)
    session.client_data(m.query(b"DROP TABLE customers"))
    marker_sql = bytes(upstream.data)[5:-1]
    upstream_error = m.error_response(
        sqlstate="42703", message=f"column {marker_sql.decode()[7:]} does not exist"
    )
    session.upstream_data(upstream_error + m.ready_for_query(b"I"))
    kind, body = bytes(client.data[:1]), bytes(client.data[5:])
    fields = m.error_fields(body)
    assert kind == b"E" and fields["C"] == "42501" and "no-drop" in fields["M"]
    assert client.data.endswith(m.ready_for_query(b"I"))
