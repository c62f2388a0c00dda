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
"""

from __future__ import annotations

# PostgreSQL canonical encoding name -> Python codec. Encodings with no Python
# codec (EUC_TW, MULE_INTERNAL) are absent: their text cannot be judged.
CODECS: dict[str, str] = {
    "SQL_ASCII": "ascii",
    "UTF8": "utf-8",
    "EUC_JP": "euc_jp",
    "EUC_CN": "gb2312",
    "EUC_KR": "euc_kr",
    "EUC_JIS_2004": "euc_jis_2004",
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


def codec_for(name: str) -> str | None:
    """The Python codec for a client encoding the sidecar can judge, else None."""
    encoding = name if name in CODECS else canonical(name)
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


# Python's codecs for these multibyte encodings do not always give back the bytes
# they read (EUC_JP's 0x8F 0xA2 0xB7 decodes to an ASCII "~"), so text in them is
# judged only when it survives the round trip.
_ROUND_TRIP_CHECKED = frozenset({"euc_jp", "gb2312", "euc_kr", "euc_jis_2004"})


def decode(raw: bytes, codec: str) -> str | None:
    """``raw`` as text in ``codec``, or None when it is invalid or would be misread."""
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        return None
    if codec in _ROUND_TRIP_CHECKED and text.encode(codec) != raw:
        return None
    return text
