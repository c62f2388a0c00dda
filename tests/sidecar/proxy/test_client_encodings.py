"""Every client encoding the sidecar reads works through it as it does directly.

The database is UTF8. A psycopg connection asks for each encoding of
``sidecar.encodings.CODECS`` in its startup packet and sends text with
non-ASCII characters in string literals, by the simple protocol (a Query) and
by the extended one (a Parse), small and above the size judged off the event
loop: the value comes back as sent, and a masked read whose statement the
engine rewrites (so the sidecar encodes the text again) reads it back too.
Text that is not valid in the encoding is refused, as the server refuses it,
with a message naming the encoding and the bytes, and the session goes on.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest

from sidecar.encodings import CODECS
from tests.sidecar.proxy.conftest import (
    SCHEMA_SQL,
    SSNS,
    Sidecar,
    admin_url,
    build_bundle,
    drop_database,
    one_relay,
    start_sidecar,
    with_database,
)

# Characters of each single-byte encoding above 0x9F (all of them that it has).
SINGLE_BYTE = {
    name: "".join(
        ch for ch in bytes(range(0xA0, 0x100)).decode(codec, "ignore") if ch.isprintable()
    )
    for name, codec in CODECS.items()
    if name not in {"SQL_ASCII", "UTF8"} and not name.startswith("EUC_")
}
SAMPLES = {
    **SINGLE_BYTE,
    "UTF8": "héllo € 日本語 Ωμέγα 😀",
    "EUC_JP": "日本語のテキスト、ｶﾀｶﾅ",
    "EUC_CN": "中文文本测试",
    "EUC_KR": "한국어 텍스트",
    "EUC_JIS_2004": "日本語テキスト",
    # psycopg writes str parameters in UTF-8 when the connection is SQL_ASCII; the
    # server takes the bytes as they are, valid in the database's encoding.
    "SQL_ASCII": "café €",
}
assert set(SAMPLES) == set(CODECS)


def _literal(text: str) -> str:
    return "'O''Brien " + text.replace("'", "''") + "'"


def _connect(sidecar: Sidecar, encoding: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(sidecar.dsn(client_encoding=encoding), autocommit=True)
    shown = conn.execute("SHOW client_encoding").fetchone()  # SQL_ASCII: bytes
    assert shown in ((encoding,), (encoding.encode(),)), shown
    return conn


@pytest.mark.parametrize("encoding", sorted(CODECS))
def test_text_in_every_readable_encoding_runs(sidecar: Sidecar, encoding: str) -> None:
    text = SAMPLES[encoding]
    expected = ("O'Brien " + text, len("O'Brien " + text))
    with _connect(sidecar, encoding) as conn:
        if encoding == "SQL_ASCII":
            # Only psycopg's client-side binding can send non-ASCII text here.
            cur = psycopg.ClientCursor(conn)
            row = cur.execute("SELECT %s, length(%s)", ["O'Brien " + text] * 2).fetchone()
            assert row == (expected[0].encode(), expected[1])
            return
        simple = psycopg.ClientCursor(conn)
        query = f"SELECT {_literal(text)} AS t, length({_literal(text)}) AS n"
        assert simple.execute(query).fetchone() == expected
        assert conn.execute(query).fetchone() == expected  # Parse, Bind, Execute
        assert conn.execute(query, prepare=True).fetchone() == expected
        # A read of a masked column: the engine rewrites the text, which is then
        # encoded again in the client's encoding on its way to the server.
        ssn, value = conn.execute(
            f"SELECT ssn, {_literal(text)} FROM customers WHERE id = 1"
        ).fetchone() or (None, None)
        assert value == expected[0]
        assert ssn != SSNS[0] and str(ssn).endswith(SSNS[0][-4:]), ssn


@pytest.mark.parametrize("encoding", ["WIN1251", "EUC_JP", "LATIN9"])
def test_a_large_statement_is_read_in_the_client_encoding(sidecar: Sidecar, encoding: str) -> None:
    """Above 64 KiB the text is judged in a worker thread: decoded the same way."""
    text = SAMPLES[encoding] * (100_000 // len(SAMPLES[encoding]))
    with _connect(sidecar, encoding) as conn:
        query = f"SELECT md5({_literal(text)}), length({_literal(text)})"
        assert len(query.encode(CODECS[encoding])) > 64 * 1024
        want = conn.execute("SELECT md5(%s), length(%s)", ["O'Brien " + text] * 2).fetchone()
        assert psycopg.ClientCursor(conn).execute(query).fetchone() == want
        assert conn.execute(query).fetchone() == want


# (encoding, bytes that are not text in it, the bytes the refusal names and their
# offset in ``bad``)
INVALID = [
    ("UTF8", b"caf\xe9", "0xe9", 3),
    ("UTF8", b"\xff", "0xff", 0),
    ("WIN1251", b"\x98", "0x98", 0),
    ("WIN1252", b"\x81", "0x81", 0),
    ("ISO_8859_8", b"\xbf", "0xbf", 0),
    ("EUC_JP", b"\xa4", "0xa4", 0),
    ("EUC_JP", b"\x8f\xa2\xb7", "0x8f 0xa2 0xb7", 0),  # Python reads it as "~"
    ("EUC_KR", b"\xb0\x41", "0xb0", 0),
    ("EUC_CN", b"\xf8\xa1", "0xf8", 0),
    ("SQL_ASCII", b"caf\xe9", "0xe9", 3),  # not UTF-8, the database's encoding
]


def _statement(bad: bytes) -> bytes:
    return b"SELECT 'before " + bad + b" after' AS bad"


@pytest.mark.parametrize(("encoding", "bad", "named", "offset"), INVALID)
def test_invalid_text_is_refused_naming_the_encoding(
    sidecar: Sidecar, upstream: str, encoding: str, bad: bytes, named: str, offset: int
) -> None:
    # The server refuses it too (22021 or 22P05): the sidecar refuses nothing
    # PostgreSQL would run.
    refused_directly = (
        psycopg.errors.CharacterNotInRepertoire,
        psycopg.errors.UntranslatableCharacter,
    )
    with (
        psycopg.connect(upstream, autocommit=True, client_encoding=encoding) as conn,
        pytest.raises(refused_directly),
    ):
        conn.execute(_statement(bad))
    with _connect(sidecar, encoding) as conn:
        for cursor in (psycopg.ClientCursor(conn), conn.cursor()):  # Query, then Parse
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                cursor.execute(_statement(bad))
            message = refused.value.diag.message_primary or ""
            assert f"not valid in the client encoding {encoding}" in message, message
            assert f"invalid byte sequence {named} at byte {16 + offset}" in message, message
            assert conn.execute("SELECT 42").fetchone() == (42,)  # the session goes on
        # Above 64 KiB, judged off the event loop: the same refusal.
        large = b"SELECT '" + b"x" * 70_000 + b"', '" + bad + b"'"
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            psycopg.ClientCursor(conn).execute(large)
        message = refused.value.diag.message_primary or ""
        assert f"not valid in the client encoding {encoding}" in message, message
        assert f"invalid byte sequence {named} at byte {70013 + offset}" in message, message


def test_every_byte_of_latin9_is_text(sidecar: Sidecar, upstream: str) -> None:
    """A single-byte encoding where every byte is a character: nothing is refused."""
    raw = bytes(b for b in range(0x80, 0x100))
    query = b"SELECT md5(convert_to('" + raw + b"', 'UTF8'))"
    with psycopg.connect(upstream, autocommit=True, client_encoding="LATIN9") as conn:
        want = conn.execute(query).fetchone()
    with _connect(sidecar, "LATIN9") as conn:
        assert psycopg.ClientCursor(conn).execute(query).fetchone() == want


# Byte sequences PostgreSQL reads and Python's own codecs do not, or read as other
# characters: EUC_JP's NEC row 13 and IBM extensions, its wave dash and fullwidth
# signs, EUC_KR's postal mark and a Hangul filler sequence (which Python would read as
# one syllable), EUC_JIS_2004's overline and yen sign.
PG_READINGS = [
    ("EUC_JP", b"\xad\xa1\xad\xb5\x8f\xf4\xa2\x8f\xf4\xb8"),
    ("EUC_JP", b"\xa1\xc1\xa1\xdd\xa1\xf1\x8f\xa2\xc3"),
    ("EUC_KR", b"\xa2\xe8 \xa4\xd4\xa4\xa1\xa4\xbf\xa4\xd4"),
    ("EUC_JIS_2004", b"\xa1\xb1\xa1\xef"),
]


@pytest.mark.parametrize(("encoding", "raw"), PG_READINGS)
def test_characters_only_postgresql_knows_are_read_as_it_reads_them(
    sidecar: Sidecar, upstream: str, encoding: str, raw: bytes
) -> None:
    """The text runs, and a masked read (rewritten, so encoded again by the sidecar)
    gives the server the same characters."""
    query = b"SELECT convert_to('" + raw + b"', 'UTF8') AS utf8"
    masked = b"SELECT convert_to('" + raw + b"', 'UTF8'), ssn FROM customers WHERE id = 1"
    with psycopg.connect(upstream, autocommit=True, client_encoding=encoding) as conn:
        want = conn.execute(query).fetchone()
    assert want is not None
    with _connect(sidecar, encoding) as conn:
        assert psycopg.ClientCursor(conn).execute(query).fetchone() == want
        assert conn.execute(query).fetchone() == want
        row = conn.execute(masked).fetchone()
        assert row is not None and row[0] == want[0] and row[1] != SSNS[0]


@pytest.fixture(scope="module")
def sql_ascii_database(upstream: str) -> Iterator[str]:
    """A SQL_ASCII database beside the UTF8 one: any byte but NUL is text there."""
    name = "warden_proxy_ascii_" + secrets.token_hex(4)
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    dsn = with_database(admin_url(), name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
    yield dsn
    drop_database(name)


def test_sql_ascii_in_a_sql_ascii_database_takes_any_byte(
    sql_ascii_database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    name = urlsplit(sql_ascii_database).path.lstrip("/")
    sidecar = start_sidecar(
        tmp_path_factory.mktemp("ascii"), sql_ascii_database, build_bundle(name)
    )
    try:
        raw = bytes(range(0x80, 0x100)) + b"\xc3("  # not UTF-8: the database does not care
        query = b"SELECT md5('" + raw + b"'), ssn FROM customers WHERE id = 1"
        with psycopg.connect(sql_ascii_database, autocommit=True) as conn:
            want = conn.execute(b"SELECT md5('" + raw + b"')").fetchone()
        with _connect(sidecar, "SQL_ASCII") as conn:
            row = conn.execute(query).fetchone()  # masked: rewritten, encoded again
        assert want is not None and row is not None
        assert row[0] == want[0]
        ssn = row[1]
        assert isinstance(ssn, bytes) and ssn != SSNS[0].encode(), row
        assert ssn.endswith(SSNS[0][-4:].encode()), row
    finally:
        sidecar.stop()


# Not about how messages are relayed (Query and Parse are always read in Python).
relay = one_relay()
