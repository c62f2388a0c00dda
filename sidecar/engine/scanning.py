"""PostgreSQL's scanner (pglast's) in time linear in the text, whatever its characters.

``pglast.parser.scan`` gives each token's position as a character index, which
it finds by walking a list with one entry per byte of every multibyte
character in the text (its ``Displacements``). A text with non-ASCII
characters therefore costs its tokens times those bytes, all of it with the
interpreter lock held: an INSERT of 118 KB with one accented letter per row
took 2.8 s to scan against 32 ms in ASCII, and 8 MiB (``max_statement_bytes``)
would take hours. ``scan`` gives the same tokens in linear time.

It scans an ASCII stand-in of the text instead: the text's UTF-8 bytes, each
lead byte of a multibyte character replaced by ``q`` and each continuation
byte by ``0``. Offsets in the stand-in are the text's byte offsets, turned
into character indices with one count of continuation bytes per token. To
PostgreSQL's scanner every byte from 0x80 is an identifier character (it may
start a name and continue one); so is ``q``, and so is ``0`` where it stands,
always right after a ``q`` or another ``0`` of the same character. ``q``
starts no literal (``b``, ``e``, ``n``, ``u`` and ``x`` do) and no number, and a
stand-in holds a digit, which no keyword does: a name with a multibyte
character is never a keyword, and its stand-in is not one either.

The scanner compares bytes rather than classes in one place only: a dollar
quote ends at the first repeat of its opening tag, and ``$é$`` and ``$ü$`` have
the same stand-in. The tokens are used only when every dollar-quoted string's
opening and closing tags are the same bytes in the text. Otherwise pglast scans
the text itself, while that costs less than ``_FALLBACK_WORK`` steps of its
walk; beyond it ``scan`` raises ``ScanTooCostly`` (the callers treat a text they
cannot scan as they treat one PostgreSQL's scanner rejects).

``tests/sidecar/engine/test_scanning.py`` compares ``scan`` with pglast's on
generated texts.
"""

from __future__ import annotations

from typing import Any

from pglast import parser as pg

# Lead bytes of multibyte characters (0xC0-0xFF) -> "q", continuation bytes
# (0x80-0xBF) -> "0"; ASCII stays.
_STAND_IN = bytes(range(0x80)) + b"0" * 0x40 + b"q" * 0x40
# Continuation bytes -> 0x01, everything else -> 0x00: counted per token.
_CONTINUATION = bytes(0x80) + b"\x01" * 0x40 + bytes(0x40)
# pglast's own walk costs about 10 ns a step (tokens x multibyte bytes).
_FALLBACK_WORK = 10_000_000

_new = tuple.__new__
_Token: Any = pg.Token


class ScanTooCostly(ValueError):
    """The text needs pglast's own scan (a dollar quote whose tags differ only in
    non-ASCII characters) and is too long for it."""


def scan(sql: str) -> list[Any]:
    """The tokens of ``pglast.parser.scan(sql)``, equal to them, in linear time:
    character indices, ``end`` inclusive.

    Raises what pglast's scan raises for a text PostgreSQL's scanner rejects (the
    error's position is a character index; its message may show ``q0`` for a
    multibyte character), and ``ScanTooCostly`` as the module says.
    """
    if sql.isascii():
        return pg.scan(sql)  # without multibyte characters pglast's walk is empty
    found = _stand_in_scan(sql)
    if found is None:
        return _fallback(sql)
    tokens, continuation = found
    out: list[Any] = []
    append = out.append
    count = continuation.count
    seen = 0  # continuation bytes before byte ``done``
    done = 0
    for start, end, name, kind in tokens:
        seen += count(1, done, start)
        first = start - seen
        done = end + 1  # exclusive: a character boundary
        seen += count(1, start, done)
        append(_new(_Token, (first, done - seen - 1, name, kind)))
    return out


def scan_bytes(sql: str) -> list[Any]:
    """``scan``'s tokens with UTF-8 byte offsets instead of character indices (``end``
    inclusive): the positions the parser's tree and a splice into the bytes use."""
    if sql.isascii():
        return pg.scan(sql)
    found = _stand_in_scan(sql)
    if found is not None:
        return found[0]
    out: list[Any] = []
    position = 0  # a character index, and ``offset`` its byte offset
    offset = 0
    for start, end, name, kind in _fallback(sql):
        offset += len(sql[position:start].encode("utf-8"))
        first = offset
        position = end + 1
        offset += len(sql[start:position].encode("utf-8"))
        out.append(_new(_Token, (first, offset - 1, name, kind)))
    return out


def _stand_in_scan(sql: str) -> tuple[list[Any], bytes] | None:
    """The stand-in's tokens (byte offsets) and the text's continuation-byte marks,
    or None when they may not be the text's: a dollar quote's tags differ in the
    text, or the stand-in of a text with a dollar sign does not scan (or the text
    cannot be encoded)."""
    try:
        utf8 = sql.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only pglast knows what it does
        return None
    stand_in = utf8.translate(_STAND_IN).decode("ascii")
    continuation = utf8.translate(_CONTINUATION)
    try:
        tokens = pg.scan(stand_in)
    except pg.ParseError as exc:
        if "$" in sql:
            return None  # a dollar quote the stand-in ends elsewhere may be why
        at = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(at, int):
            at -= continuation.count(1, 0, at)
        raise pg.ParseError(exc.args[0], at) from None
    for start, end, name, _ in tokens:
        if name == "SCONST" and stand_in[start] == "$" and not _same_tags(utf8, start, end):
            return None
    return tokens, continuation


def _same_tags(utf8: bytes, start: int, end: int) -> bool:
    """Whether the dollar-quoted string at bytes ``start``..``end`` (inclusive) opens
    and closes with the same tag in the text, as it does in the stand-in."""
    close = utf8.index(b"$", start + 1) + 1
    size = close - start
    return utf8[start:close] == utf8[end + 1 - size : end + 1]


def _fallback(sql: str) -> list[Any]:
    """pglast's own scan, when its walk stays under ``_FALLBACK_WORK`` steps."""
    # Its walk has about one entry per byte of a multibyte character, and there are
    # at most as many tokens as characters: a bound that needs no scan.
    extra = len(sql.encode("utf-8", "surrogatepass")) - len(sql)
    if len(sql) * extra > _FALLBACK_WORK:
        raise ScanTooCostly(
            "a dollar quote with non-ASCII characters in its tag, in a text too long to "
            "scan with pglast's own scanner"
        )
    return pg.scan(sql)
