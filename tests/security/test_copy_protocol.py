"""COPY FROM STDIN and the messages a client sends while the server copies.

While it copies in, the server ignores a Sync or a Flush, and answers any other
message but CopyData, CopyDone and CopyFail with an error. A sidecar that counted
such a Sync as one waiting for its ReadyForQuery put every later reply down to the
item before the one it belonged to (a review's finding), until it believed the
server was skipping to a Sync while the server was idle: it then sent a Query as
the client wrote it, unmasked, and recorded it as skipped.
"""

from __future__ import annotations

from sidecar.proxy import messages as m
from tests.security.wire import SYNC, RawClient, bind, execute, parse, public_ssns_in, q
from tests.sidecar.proxy.conftest import Sidecar

COPY_DONE = m.frame(b"c", b"")
FLUSH = m.frame(b"H", b"")


def copy_data(text: str) -> bytes:
    return m.frame(b"d", text.encode())


def copy_in(client: RawClient, *messages: bytes) -> None:
    """Send ``messages`` (a COPY FROM STDIN) and read up to the CopyInResponse."""
    client.send(*messages)
    while True:
        kind, body = client._recv()
        assert kind not in (b"E", b"Z"), m.error_fields(body) if kind == b"E" else kind
        if kind == b"G":
            return


def _still_in_step(client: RawClient) -> None:
    """The rest of the review's sequence: an extended batch without a Sync, a Query,
    a failing Query, then a read of a masked column, which must come back masked
    (a sidecar a reply behind believed the server was skipping to a Sync here)."""
    client.send(parse("SELECT 1"), bind(), execute(), FLUSH)
    assert client.exchange(q("SELECT 2")).column() == ["1", "2"]  # the batch's row first
    failing = client.exchange(q("SELECT 1/0"))
    assert failing.sqlstates == ["22012"], failing.messages
    read = client.exchange(q("SELECT ssn FROM public.customers ORDER BY id"))
    assert read.rows, read.messages
    assert public_ssns_in(read.raw) == set(), "the masked column came back raw"
    client.send(SYNC)
    assert client.read(1).errors == []


def test_a_sync_sent_while_the_server_copies_is_not_waited_for(sidecar: Sidecar) -> None:
    """The review's sequence: a Sync during a simple-protocol COPY IN, CopyDone."""
    with RawClient(sidecar) as client:
        copy_in(client, q("COPY public.notes(body) FROM STDIN"))
        client.send(SYNC)  # ignored by the server: it is copying
        client.send(copy_data("copied in\n"), COPY_DONE)
        done = client.read(1)
        assert done.tags == ["COPY 1"], done.messages
        _still_in_step(client)


def test_a_client_copies_in_with_the_extended_protocol_as_libpq_does(sidecar: Sidecar) -> None:
    """libpq runs COPY through the extended protocol as Parse, Bind, Execute, Sync,
    the data, CopyDone, Sync: the first Sync arrives while the server copies and is
    ignored."""
    with RawClient(sidecar) as client:
        copy_in(client, parse("COPY public.notes(body) FROM STDIN"), bind(), execute(), SYNC)
        client.send(copy_data("via extended\n"), COPY_DONE, SYNC)
        reply = client.read(1)
        assert reply.tags == ["COPY 1"] and not reply.errors, reply.messages
        _still_in_step(client)


def test_anything_but_copy_messages_while_copying_ends_the_session(sidecar: Sidecar) -> None:
    """A Query in the middle of COPY IN is an error to the server, which would leave
    the copy and the sidecar's count behind it: the sidecar ends the session."""
    with RawClient(sidecar) as client:
        copy_in(client, q("COPY public.notes(body) FROM STDIN"))
        client.send(copy_data("half\n"), q("SELECT ssn FROM public.customers"))
        reply = client.read(1)
        assert any(kind == b"E" for kind, _ in reply.messages), reply.messages
        assert public_ssns_in(reply.raw) == set()


def test_an_earlier_statements_error_does_not_end_the_wait_for_the_copy(
    sidecar: Sidecar,
) -> None:
    """The review of the fix: a failing statement, then the COPY, then a Sync, in one
    write. The first statement's error must not end the wait for the COPY's answer:
    the Sync would be counted, while the server, copying by then, ignores it."""
    with RawClient(sidecar) as client:
        client.send(q("SELECT 1/0"), q("COPY public.notes(body) FROM STDIN"), SYNC)
        kinds = []
        while not kinds or kinds[-1] != b"G":
            kind, _ = client._recv()
            kinds.append(kind)
        assert kinds[0] == b"E" and kinds[-1] == b"G", kinds
        client.send(copy_data("after an error\n"), COPY_DONE)
        done = client.read(1)
        assert done.tags == ["COPY 1"], done.messages
        _still_in_step(client)


def test_a_copy_the_server_skips_after_an_earlier_error_does_not_hang(sidecar: Sidecar) -> None:
    """The second review of the fix: in one extended batch, a failing statement, then
    the COPY, then a Sync. The server skips the COPY to the Sync; the session must not
    wait for the COPY's answer, which never comes."""
    with RawClient(sidecar, timeout=5) as client:
        reply = client.exchange(
            parse("SELECT 1/0"), bind(), execute(),
            parse("COPY public.notes(body) FROM STDIN"), bind(), execute(),
            SYNC,
        )  # fmt: skip
        assert reply.sqlstates == ["22012"], reply.messages
        _still_in_step(client)
