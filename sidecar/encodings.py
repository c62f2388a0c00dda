"""Client encodings the sidecar can read exactly as the server does.

The engine judges statement text after the sidecar decodes it, so the sidecar
and PostgreSQL must agree on where every quote, backslash and semicolon is.
In the encodings listed in ``CODECS`` every byte of a multibyte character is
0x80 or above, so the ASCII bytes that carry SQL's structure mean the same in
all of them. The client-only encodings (SJIS, BIG5, GBK, UHC, JOHAB, GB18030,
SHIFT_JIS_2004) have multibyte characters whose second byte can be a
backslash or a quote; PostgreSQL refuses them as server encodings for that
reason, and Warden refuses them as client encodings, at startup and later.

Names follow PostgreSQL's: the server reports canonical names in
ParameterStatus, while ``SET client_encoding`` and the startup packet accept
aliases that ``canonical`` resolves the way the server's ``pg_char_to_encoding``
does (case and punctuation ignored).

Python's codecs read most of these exactly as PostgreSQL does (checked against
the server byte sequence by byte sequence: tests/sidecar/test_encodings.py).
Where they do not, this module registers codecs of its own that do: EUC_JP's
NEC and IBM extension characters and EUC_KR's two KS X 1001:2002 additions,
which PostgreSQL knows and Python does not; the EUC_JP and EUC_JIS_2004
characters PostgreSQL maps to other code points than Python (JIS X 0208's wave
dash 0xA1C1 is U+FF5E to the server, U+301C to Python); and EUC_KR's Hangul
filler 0xA4D4, which Python reads with the next six bytes as one syllable and
the server as a character of its own. The engine then sees the names and
literals the server will see.

SQL_ASCII is no conversion at all: the server takes the bytes as they are,
checked against the database's own encoding, so that is the encoding the text
is read in (``codec_for``).
"""

from __future__ import annotations

import codecs
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

# PostgreSQL canonical encoding name -> Python codec. Encodings with no Python
# codec (EUC_TW, MULE_INTERNAL) are absent: their text cannot be judged.
CODECS: dict[str, str] = {
    "SQL_ASCII": "ascii",
    "UTF8": "utf-8",
    "EUC_JP": "warden_euc_jp",
    "EUC_CN": "gb2312",
    "EUC_KR": "warden_euc_kr",
    "EUC_JIS_2004": "warden_euc_jis_2004",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859_2",
    "LATIN3": "iso8859_3",
    "LATIN4": "iso8859_4",
    "LATIN5": "iso8859_9",
    "LATIN6": "iso8859_10",
    "LATIN7": "iso8859_13",
    "LATIN8": "iso8859_14",
    "LATIN9": "iso8859_15",
    "LATIN10": "iso8859_16",
    "ISO_8859_5": "iso8859_5",
    "ISO_8859_6": "iso8859_6",
    "ISO_8859_7": "iso8859_7",
    "ISO_8859_8": "iso8859_8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8_r",
    "KOI8U": "koi8_u",
}

# Multibyte characters in these can hide a backslash or a quote: refused.
CLIENT_ONLY = frozenset({"SJIS", "BIG5", "GBK", "UHC", "JOHAB", "GB18030", "SHIFT_JIS_2004"})

# PostgreSQL's alias table (encnames.c), keyed by the cleaned name.
_ALIASES: dict[str, str] = {
    "abc": "WIN1258", "alt": "WIN866", "big5": "BIG5", "euccn": "EUC_CN",
    "eucjis2004": "EUC_JIS_2004", "eucjp": "EUC_JP", "euckr": "EUC_KR", "euctw": "EUC_TW",
    "gb18030": "GB18030", "gbk": "GBK", "iso88591": "LATIN1", "iso885910": "LATIN6",
    "iso885913": "LATIN7", "iso885914": "LATIN8", "iso885915": "LATIN9",
    "iso885916": "LATIN10", "iso88592": "LATIN2", "iso88593": "LATIN3",
    "iso88594": "LATIN4", "iso88595": "ISO_8859_5", "iso88596": "ISO_8859_6",
    "iso88597": "ISO_8859_7", "iso88598": "ISO_8859_8", "iso88599": "LATIN5",
    "johab": "JOHAB", "koi8": "KOI8R", "koi8r": "KOI8R", "koi8u": "KOI8U",
    "latin1": "LATIN1", "latin10": "LATIN10", "latin2": "LATIN2", "latin3": "LATIN3",
    "latin4": "LATIN4", "latin5": "LATIN5", "latin6": "LATIN6", "latin7": "LATIN7",
    "latin8": "LATIN8", "latin9": "LATIN9", "mskanji": "SJIS",
    "muleinternal": "MULE_INTERNAL", "shiftjis": "SJIS", "shiftjis2004": "SHIFT_JIS_2004",
    "sjis": "SJIS", "sqlascii": "SQL_ASCII", "tcvn": "WIN1258", "tcvn5712": "WIN1258",
    "uhc": "UHC", "unicode": "UTF8", "utf8": "UTF8", "vscii": "WIN1258", "win": "WIN1251",
    "win1250": "WIN1250", "win1251": "WIN1251", "win1252": "WIN1252", "win1253": "WIN1253",
    "win1254": "WIN1254", "win1255": "WIN1255", "win1256": "WIN1256", "win1257": "WIN1257",
    "win1258": "WIN1258", "win866": "WIN866", "win874": "WIN874", "win932": "SJIS",
    "win936": "GBK", "win949": "UHC", "win950": "BIG5",
}  # fmt: skip


def canonical(name: str) -> str | None:
    """PostgreSQL's canonical name for an encoding name or alias, or None if unknown."""
    cleaned = "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum())
    return _ALIASES.get(cleaned)


def codec_for(name: str, server_encoding: str = "UTF8") -> str | None:
    """The Python codec for a client encoding the sidecar can judge, else None.

    ``server_encoding`` is the database's: a SQL_ASCII client's bytes reach the
    server unconverted and are checked as text in it, so they are read in it
    (in a SQL_ASCII database any byte goes, read one byte one character)."""
    encoding = name if name in CODECS else canonical(name)
    if encoding == "SQL_ASCII":
        server = server_encoding if server_encoding in CODECS else canonical(server_encoding)
        if server == "SQL_ASCII":
            return "latin-1"
        # A database in an encoding without a codec: ASCII, which every one reads alike.
        return CODECS.get(server or "", "ascii")
    return CODECS.get(encoding) if encoding is not None else None


def refusal(name: str) -> str | None:
    """Why ``name`` cannot be the client encoding, or None when it can."""
    encoding = name if name in CODECS or name in CLIENT_ONLY else canonical(name)
    if encoding is None:
        return f"{name!r} is not an encoding PostgreSQL knows"
    if encoding in CLIENT_ONLY:
        return (
            f"the client encoding {encoding} can hide a quote or backslash inside a "
            "multibyte character, so its text cannot be judged safely"
        )
    if encoding not in CODECS:
        return f"Warden cannot read statement text in the client encoding {encoding}"
    return None


# Python's codecs for these multibyte encodings can read a multibyte character as
# an ASCII one (EUC_JP's 0x8F 0xA2 0xB7 decodes to "~"; the server refuses it), so
# text in them is judged only when its ASCII characters are exactly its ASCII
# bytes: the characters that carry SQL's structure are then the server's.
_STRUCTURE_CHECKED = frozenset({"warden_euc_jp", "gb2312", "warden_euc_kr", "warden_euc_jis_2004"})
_HIGH_BYTES = bytes(range(0x80, 0x100))


def decode(raw: bytes, codec: str) -> str | None:
    """``raw`` as text in ``codec``, or None when it is invalid or would be misread."""
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        return None
    if codec in _STRUCTURE_CHECKED and text.encode("ascii", "ignore") != raw.translate(
        None, _HIGH_BYTES
    ):
        return None
    return text


def describe_invalid(raw: bytes, codec: str) -> str:
    """Where ``raw`` stops being text in ``codec``: the first bad byte sequence and its
    offset (for the refusal's message)."""
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        start, end = exc.start, min(exc.end, exc.start + 4)
    else:
        # Decoded, but a multibyte character read as an ASCII one: the bytes between
        # the last ASCII byte both agree on and the next.
        ascii_at = [i for i, byte in enumerate(raw) if byte < 0x80]
        seen, kept = text.encode("ascii", "ignore"), raw.translate(None, _HIGH_BYTES)
        n = 0
        while n < min(len(seen), len(kept)) and seen[n] == kept[n]:
            n += 1
        start = ascii_at[n - 1] + 1 if n > 0 else 0
        end = ascii_at[n] if n < len(ascii_at) else len(raw)
        end = min(max(end, start + 1), start + 4, len(raw))
    shown = " ".join(f"0x{b:02x}" for b in raw[start:end])
    return f"invalid byte sequence {shown} at byte {start + 1}"


# -- PostgreSQL's reading of the EUC encodings ---------------------------------------


def _row(lead: bytes, first: int, chars: str) -> dict[bytes, str]:
    """Characters of one row of a table: ``chars`` from trail byte ``first`` on,
    NUL where the row has none."""
    return {lead + bytes([first + i]): ch for i, ch in enumerate(chars) if ch != "\0"}


# Byte sequences PostgreSQL 15's conversions to UTF-8 map and Python's codecs
# refuse, keyed by the Python codec the registered codec reads the rest with.
_EXTRA: dict[str, dict[bytes, str]] = {
    # NEC row 13 and the IBM extensions (as in eucJP-ms and Windows' CP51932).
    "euc_jp": {
        **_row(
            b"\xad",
            0xA1,
            "①②③④⑤⑥⑦⑧⑨⑩⑪⑫⑬⑭⑮⑯⑰⑱⑲⑳ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩ\0㍉㌔㌢㍍㌘㌧㌃㌶㍑㍗㌍㌦㌣㌫㍊㌻㎜㎝㎞㎎㎏㏄㎡\0\0\0"
            "\0\0\0\0\0㍻〝〟№㏍℡㊤㊥㊦㊧㊨㈱㈲㈹㍾㍽㍼≒≡∫∮∑√⊥∠∟⊿∵∩\u222a",
        ),
        **_row(
            b"\x8f\xf3",
            0xF3,
            "ⅰⅱⅲⅳⅴⅵⅶⅷⅸⅹⅠⅡ",
        ),
        **_row(
            b"\x8f\xf4",
            0xA1,
            "ⅢⅣⅤⅥⅦⅧⅨⅩ\uff07\uff02㈱№℡炻仼僴凬匇匤﨎咊坙﨏\ufa10增寬峵嵓﨑德悅愠敎昻晥\ufa12\uf929栁﨓﨔橫櫢淸淲瀨"
            "\ufa15\ufa16甁皂皞\ufa17礰\ufa18\ufa19\ufa1a\ufa1b竧\ufa1c\ufa1d綠緖"
            "\ufa1e荢﨟薰\ufa20﨡蠇\ufa22譿賴赶﨣﨤\ufa25郞\ufa26鄕﨧﨨閒\uf9dc﨩霻靍靑\ufa2a"
            "\ufa2b\ufa2c馞髙魲\ufa2d黑",
        ),
    },
    # KS X 1001:2002's postal code mark, and the Hangul filler on its own.
    "euc_kr": {b"\xa2\xe8": "㉾", b"\xa4\xd4": "\u3164"},
}
# Characters Python's codec gives where PostgreSQL's conversion gives another.
_PG_CHARACTER: dict[str, dict[str, str]] = {
    "euc_jp": {
        "\u301c": "\uff5e",  # 0xA1C1 WAVE DASH -> FULLWIDTH TILDE
        "\u2016": "\u2225",  # 0xA1C2 DOUBLE VERTICAL LINE -> PARALLEL TO
        "\u2212": "\uff0d",  # 0xA1DD MINUS SIGN -> FULLWIDTH HYPHEN-MINUS
        "\u00a2": "\uffe0",  # 0xA1F1 CENT SIGN -> FULLWIDTH CENT SIGN
        "\u00a3": "\uffe1",  # 0xA1F2 POUND SIGN -> FULLWIDTH POUND SIGN
        "\u00ac": "\uffe2",  # 0xA2CC NOT SIGN -> FULLWIDTH NOT SIGN
        "\u00a6": "\uffe4",  # 0x8FA2C3 BROKEN BAR -> FULLWIDTH BROKEN BAR
    },
    "euc_jis_2004": {
        "\uffe3": "\u203e",  # 0xA1B1 FULLWIDTH MACRON -> OVERLINE
        "\u2015": "\u2014",  # 0xA1BD HORIZONTAL BAR -> EM DASH
        "\uffe5": "\u00a5",  # 0xA1EF FULLWIDTH YEN SIGN -> YEN SIGN
        "\u2985": "\uff5f",  # 0xA2D6 LEFT WHITE PARENTHESIS -> FULLWIDTH ...
        "\u2986": "\uff60",  # 0xA2D7 RIGHT WHITE PARENTHESIS -> FULLWIDTH ...
    },
}
# Never an ASCII character: what the server reads as SQL's structure stays the same.
assert all(ord(c) >= 0x80 for table in _EXTRA.values() for c in table.values())
assert all(
    ord(c) >= 0x80 for table in _PG_CHARACTER.values() for pair in table.items() for c in pair
)
# Written back (a rewritten statement) as the first sequence of the table that has
# it: EUC_JP's Roman numerals are both in NEC row 13 and among the IBM extensions.
_FROM_BYTES = {codec: {v: k for k, v in reversed(table.items())} for codec, table in _EXTRA.items()}
_TO_PG = {codec: str.maketrans(table) for codec, table in _PG_CHARACTER.items()}
_FROM_PG = {
    codec: str.maketrans({v: k for k, v in table.items()}) for codec, table in _PG_CHARACTER.items()
}
_HANDLER = "warden.pg_extra"


def _extra_characters(exc: UnicodeError) -> tuple[str | bytes, int]:
    """The codec error handler behind the registered codecs: the characters of
    ``_EXTRA`` one way and the other; anything else stays an error."""
    if isinstance(exc, UnicodeDecodeError):
        table = _EXTRA.get(exc.encoding, {})
        raw = exc.object
        size = 3 if raw[exc.start] == 0x8F else 2
        found = table.get(bytes(raw[exc.start : exc.start + size]))
        if found is not None:
            return found, exc.start + size
    elif isinstance(exc, UnicodeEncodeError):
        reverse = _FROM_BYTES.get(exc.encoding, {})
        parts = [reverse.get(ch) for ch in exc.object[exc.start : exc.end]]
        if all(part is not None for part in parts):
            return b"".join(p for p in parts if p is not None), exc.end
    raise exc


codecs.register_error(_HANDLER, _extra_characters)

# An aligned Hangul filler: the characters before it (ASCII, or two bytes from
# 0xA1-0xFE) and 0xA4 0xD4. Python's euc_kr would read it with the next six bytes
# as one syllable (KS X 1001 Annex 3), PostgreSQL reads four characters.
_EUC_KR_FILLER = re.compile(rb"(?:[\x00-\x7f]|[\xa1-\xfe][\xa1-\xfe])*?\xa4\xd4")


def _euc_kr_decode(raw: bytes) -> str:
    if b"\xa4\xd4" not in raw:
        return raw.decode("euc_kr", _HANDLER)
    parts = []
    position = 0
    while (found := _EUC_KR_FILLER.match(raw, position)) is not None:
        parts.append(raw[position : found.end() - 2].decode("euc_kr", _HANDLER))
        parts.append("\u3164")
        position = found.end()
    parts.append(raw[position:].decode("euc_kr", _HANDLER))
    return "".join(parts)


def _codec_info(name: str, base: str) -> codecs.CodecInfo:
    to_pg = _TO_PG.get(base)
    from_pg = _FROM_PG.get(base)

    def decode(data: ReadableBuffer, errors: str = "strict") -> tuple[str, int]:
        if errors != "strict":
            raise ValueError(f"{name} supports strict errors only")
        raw = bytes(data)
        text = _euc_kr_decode(raw) if base == "euc_kr" else raw.decode(base, _HANDLER)
        return (text.translate(to_pg) if to_pg else text), len(raw)

    def encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
        if errors != "strict":
            raise ValueError(f"{name} supports strict errors only")
        source = text.translate(from_pg) if from_pg else text
        return source.encode(base, _HANDLER), len(text)

    return codecs.CodecInfo(encode, decode, name=name)


_REGISTERED = {
    name: _codec_info(name, base)
    for name, base in (
        ("warden_euc_jp", "euc_jp"),
        ("warden_euc_kr", "euc_kr"),
        ("warden_euc_jis_2004", "euc_jis_2004"),
    )
}
codecs.register(_REGISTERED.get)
