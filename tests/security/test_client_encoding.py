"""Finding 3: client encodings whose multibyte characters can swallow a backslash.

In SJIS, BIG5, GBK, GB18030 and SHIFT_JIS_2004 the second byte of a character
may be 0x5C, the backslash. A sidecar that reads the text in its previous
encoding sees ``E'<lead>\\'`` as a literal with an escaped quote; the server,
already switched, reads ``<lead>\\`` as ONE character and the quote as the end
of the literal:

    SET client_encoding TO 'SJIS'
    SELECT E'<0x83>\\' , (SELECT string_agg(ssn, chr(44)) FROM public.customers) -- '

The fixed sidecar refuses those encodings under every alias (and at startup),
and keeps working in safe encodings it did not know before (LATIN9, EUC_JP).
"""

from __future__ import annotations

import psycopg
import pytest

from tests.security.conftest import (
    assert_decided_under,
    assert_refused_fields,
    session_state,
    wait_event,
)
from tests.security.wire import SYNC, LoginRefused, RawClient, extended, public_ssns_in, q
from tests.sidecar.proxy.conftest import Sidecar

# Aliases the real server accepts (checked on PostgreSQL 15: clean_encoding_name
# drops case and punctuation).
UNSAFE = [
    "SJIS", "sjis", "Shift_JIS", "S-J-I-S", "ShiftJIS", "WIN932", "Windows932", "MSKANJI",
    "win_932", "BIG5", "big5", "Big-5", "GBK", "gbk", "g_b_k", "WIN936", "Windows936", "UHC",
    "WIN949", "Windows949", "JOHAB", "GB18030", "SHIFT_JIS_2004", "shiftjis2004",
]  # fmt: skip

FORMS = {
    "set-to": "SET client_encoding TO '{}'",
    "set-names": "SET NAMES '{}'",
    "set_config": "SELECT set_config('client_encoding', '{}', false)",
    "set_config-upper": "SELECT pg_catalog.set_config('CLIENT_ENCODING', '{}', false)",
}


def _payload(lead: bytes) -> bytes:
    return (
        b"SELECT E'" + lead + b"\\' , (SELECT string_agg(ssn, chr(44)) FROM public.customers) -- '"
    )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("encoding", UNSAFE)
def test_unsafe_client_encoding_is_refused(sidecar: Sidecar, encoding: str, form: str) -> None:
    """Attack step one: switch the session to an encoding that hides quotes. Refused
    (42501, Warden's) under every alias, and the session's encoding stays UTF8."""
    with RawClient(sidecar) as client:
        reply = client.exchange(q(FORMS[form].format(encoding)))
        assert reply.errors, f"not refused: {reply.tags}"
        assert_refused_fields(reply.errors[0])
        show = client.exchange(q("SHOW client_encoding"))
    assert show.column() == ["UTF8"]


# (starting encoding, target, lead bytes that make <lead>\ one character in the target
# and are valid text in the starting encoding). Each leaks when sent straight to the
# server (checked on PostgreSQL 15).
RACES = [
    ("UTF8", "SJIS", "Ã".encode()),  # C3 83: C3 is one SJIS byte, 83 5C one character
    ("UTF8", "BIG5", "严".encode()),  # E4 B8 A5: E4 B8, then A5 5C
    ("LATIN1", "SJIS", b"\x83"),
    ("WIN1252", "SJIS", b"\x83"),
    ("LATIN1", "BIG5", b"\xa5"),
    ("LATIN1", "GBK", b"\x83"),
    ("LATIN1", "GB18030", b"\x83"),
    ("LATIN1", "SHIFT_JIS_2004", b"\x83"),
]


@pytest.mark.parametrize("form", ["set-to", "set_config"])
@pytest.mark.parametrize(("start", "target", "lead"), RACES)
def test_encoding_switch_and_payload_in_one_write(
    sidecar: Sidecar, start: str, target: str, lead: bytes, form: str
) -> None:
    """Attack: ``Q SET client_encoding TO '<target>'`` and ``Q <payload>`` in ONE write,
    from a session whose encoding the sidecar can read. Would leak: every raw public
    SSN."""
    with RawClient(sidecar, params={"client_encoding": start}) as client:
        reply = client.exchange(q(FORMS[form].format(target)), q(_payload(lead)))
    assert public_ssns_in(reply.raw) == set(), "the payload returned raw public SSNs"
    head = reply.split()[0]
    assert head.warden_refusals(), f"not refused: {head.errors or head.tags}"


@pytest.mark.parametrize(("start", "target", "lead"), RACES[:3])
def test_encoding_switch_and_payload_in_one_extended_pipeline(
    sidecar: Sidecar, start: str, target: str, lead: bytes
) -> None:
    """Attack: the same through Parse/Bind/Execute of both, one Sync, one write."""
    with RawClient(sidecar, params={"client_encoding": start}) as client:
        reply = client.exchange(
            extended(FORMS["set-to"].format(target), sync=False),
            extended(_payload(lead), sync=False),
            SYNC,
        )
    assert public_ssns_in(reply.raw) == set(), "the payload returned raw public SSNs"
    assert reply.warden_refusals(), f"not refused: {reply.errors or reply.tags}"


@pytest.mark.parametrize("encoding", ["SJIS", "sjis", "BIG5", "GBK"])
def test_unsafe_encoding_in_the_startup_packet(sidecar: Sidecar, encoding: str) -> None:
    """Regression: ``client_encoding=SJIS`` in the startup packet. Either the login is
    refused, or no statement is run in that encoding; the payload never leaks."""
    try:
        client = RawClient(sidecar, params={"client_encoding": encoding})
    except LoginRefused as refused:
        assert "Warden" in refused.fields.get("M", ""), refused.fields
        return
    with client:
        probe = client.exchange(q("SELECT 1"))
        reply = client.exchange(q(_payload(b"\x83")))
    assert public_ssns_in(reply.raw) == set(), "the payload returned raw public SSNs"
    assert probe.warden_refusals(), f"a statement ran in {encoding}: {probe.tags}"


def test_latin9_is_allowed_and_applied_before_the_next_statement(sidecar: Sidecar) -> None:
    """Safe encoding the sidecar did not know: LATIN9 (0xA4 is the euro sign). The
    SET and a statement in LATIN9 in ONE write: the second is read as LATIN9."""
    with RawClient(sidecar) as client:
        reply = client.exchange(
            q("SET client_encoding TO 'LATIN9'"), q(b"SELECT '\xa4' AS euro_9a")
        )
    assert not reply.errors, reply.errors
    assert reply.parameters.get("client_encoding") == "LATIN9"
    assert reply.text_rows("iso8859_15") == [("€",)]
    assert session_encoding(sidecar, "euro_9a") == "LATIN9"


def test_latin9_through_psycopg(sidecar: Sidecar) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("SET client_encoding TO 'LATIN9'")
        assert cur.execute("SELECT '€' AS e, 'Œuvre' AS w").fetchone() == ("€", "Œuvre")


def test_euc_jp_is_allowed(sidecar: Sidecar) -> None:
    """Safe multibyte encoding (every byte of a character has the high bit set):
    ``SET client_encoding TO 'EUC_JP'`` then a Japanese literal, in one write."""
    literal = "日本語のテキスト"
    with RawClient(sidecar) as client:
        reply = client.exchange(
            q("SET client_encoding TO 'EUC_JP'"),
            q(f"SELECT '{literal}' AS jp_7c, length('{literal}') AS n", encoding="euc_jp"),
        )
        later = client.exchange(q(f"SELECT '{literal}' AS again", encoding="euc_jp"))
    assert not reply.errors and not later.errors, reply.errors + later.errors
    assert reply.text_rows("euc_jp") == [(literal, str(len(literal)))]
    assert later.text_rows("euc_jp") == [(literal,)]
    assert session_encoding(sidecar, "jp_7c") == "EUC_JP"


def session_encoding(sidecar: Sidecar, tag: str) -> str:
    return str(session_state(wait_event(sidecar, tag)).get("client_encoding"))


def test_decisions_record_the_encoding(sidecar: Sidecar) -> None:
    """The audit event names the encoding a statement was decided under (UTF8 here)."""
    with RawClient(sidecar) as client:
        assert not client.exchange(q("SELECT 1 AS enc_probe_1d")).errors
    event = wait_event(sidecar, "enc_probe_1d")
    assert session_encoding(sidecar, "enc_probe_1d") == "UTF8"
    assert_decided_under(event, "staging")
