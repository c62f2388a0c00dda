"""The sidecar reads client text exactly as PostgreSQL does, byte sequence by sequence.

For every encoding of ``sidecar.encodings.CODECS``, every byte sequence a
character can be (one byte from 0x80; two bytes from 0x80 each; three bytes
0x8F then two from 0xA1), as text of a UTF8 database would be converted by
the server (``convert_from``, the conversion a client's text goes through):
whatever the server reads, the sidecar reads as the same characters, and
whatever the sidecar reads has the ASCII characters of the bytes and no
other (the characters that carry SQL's structure). What the server refuses
the sidecar may read or refuse: the server refuses the whole text anyway.
Against the real server of ``DATABASE_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

from sidecar import encodings
from sidecar.encodings import CODECS

HIGH = range(0x80, 0x100)


def _sequences(encoding: str) -> list[bytes]:
    out = [bytes([a]) for a in HIGH]
    if encoding == "UTF8" or encoding.startswith("EUC_"):
        out += [bytes([a, b]) for a in HIGH for b in HIGH]
        out += [bytes([0x8F, a, b]) for a in range(0xA1, 0xFF) for b in range(0xA1, 0xFF)]
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SHOW server_encoding").fetchone() != ("UTF8",):
            pytest.skip("needs a UTF8 database")
        conn.execute(
            "CREATE FUNCTION pg_temp.read(b bytea, enc text) RETURNS text LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN convert_from(b, enc); "
            "EXCEPTION WHEN others THEN RETURN NULL; END $$"
        )
        yield conn


@pytest.mark.parametrize("encoding", sorted(set(CODECS) - {"SQL_ASCII"}))
def test_the_sidecar_reads_what_the_server_reads(
    server: psycopg.Connection[tuple[object, ...]], encoding: str
) -> None:
    codec = encodings.codec_for(encoding)
    assert codec is not None
    sequences = _sequences(encoding)
    read = server.execute(
        "SELECT pg_temp.read(s, %s) FROM unnest(%s::bytea[]) AS s", [encoding, sequences]
    ).fetchall()
    differ = []
    for raw, (theirs,) in zip(sequences, read, strict=True):
        ours = encodings.decode(raw, codec)
        if theirs is not None and ours != theirs:
            differ.append((raw.hex(), ours, theirs))
        if ours is not None:
            assert not any(ord(c) < 0x80 for c in ours), (raw.hex(), ours)
    assert not differ, f"{len(differ)} sequences read otherwise than the server: {differ[:10]}"


def test_an_ascii_character_is_never_made_of_multibyte_bytes() -> None:
    """Python's euc_jp reads 0x8F 0xA2 0xB7 as "~" (the server refuses it): refused."""
    assert b"\x8f\xa2\xb7".decode("euc_jp") == "~"
    codec = encodings.codec_for("EUC_JP")
    assert codec is not None
    assert encodings.decode(b"SELECT '\x8f\xa2\xb7'", codec) is None
    assert encodings.describe_invalid(b"SELECT '\x8f\xa2\xb7'", codec) == (
        "invalid byte sequence 0x8f 0xa2 0xb7 at byte 9"
    )


def test_a_hangul_filler_sequence_is_four_characters() -> None:
    """Python's euc_kr reads 0xA4D4 and the next six bytes as one syllable (KS X 1001
    Annex 3); the server reads four characters, and so does the sidecar."""
    raw = b"\xa4\xd4\xa4\xa1\xa4\xbf\xa4\xd4"
    assert len(raw.decode("euc_kr")) == 1
    codec = encodings.codec_for("EUC_KR")
    assert codec is not None
    text = encodings.decode(raw, codec)
    assert text == "\u3164\u3131\u314f\u3164"
    assert text.encode(codec) == raw


def test_rewritten_text_is_written_back_in_the_bytes_it_was_read_from() -> None:
    codec = encodings.codec_for("EUC_JP")
    assert codec is not None
    raw = b"\xad\xa1\xa1\xc1\x8f\xf4\xb8 \xa4\xa2"  # NEC 1, wave dash, IBM ideograph
    text = encodings.decode(raw, codec)
    assert text == "\u2460\uff5e\ufa10 \u3042"
    assert text.encode(codec) == raw


@pytest.mark.parametrize(
    ("server_encoding", "codec"),
    [("UTF8", "utf-8"), ("SQL_ASCII", "latin-1"), ("LATIN1", "latin-1"), ("EUC_TW", "ascii")],
)
def test_sql_ascii_is_read_in_the_database_encoding(server_encoding: str, codec: str) -> None:
    assert encodings.codec_for("SQL_ASCII", server_encoding) == codec
    assert encodings.codec_for("sql-ascii", server_encoding) == codec
