"""What a reviewer reads before deciding: the held statement laid out and highlighted,
the values at its placeholders, the planner's estimate.

The statement is the sidecar's redacted text (literals replaced by ``$1``, ``$2``
..., the statements of a multi-statement text joined by "; ", each numbering its
own placeholders). It is shown token for token as it was sent: PostgreSQL's own
scanner (``sidecar.engine.scanning``, pglast's) cuts it into tokens, and every
token's text is printed exactly as it appears in the text. sqlglot's pretty
printer only lends its line breaks and indentation: it rewrites what it prints
(``now()`` becomes ``CURRENT_TIMESTAMP``, ``x::int`` a ``CAST``), so its output is
aligned with the statement's tokens and a line break is taken where the tokens
match. A text either cannot read is shown as sent. Every piece of text is
HTML-escaped here; nothing of the statement or of a value becomes markup.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlglot

from sidecar.engine import scanning

# sqlglot logs a warning, quoting the text, for every statement it only half
# understands (as sidecar.engine.lineage says too); such a text keeps its own layout.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

# Longer texts are highlighted but keep their own layout: sqlglot takes about 3 ms a
# kilobyte, and a page shows 20 cards.
MAX_FORMAT_CHARS = 8_000
# How far apart (in tokens) the statement and sqlglot's output may drift where sqlglot
# rewrote something ("x::int" against "CAST(x AS INT)") and still be matched up again.
RESYNC_TOKENS = 8
# A value shown at its placeholder inside the statement is cut to this many
# characters; the table beside the statement shows it whole.
INLINE_VALUE_CHARS = 40

# Token names of PostgreSQL's scanner (pglast) -> CSS class (colours in warden.css).
_STRINGS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST"})
_NUMBERS = frozenset({"ICONST", "FCONST"})
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_OPERATORS = frozenset(
    {"Op", "TYPECAST", "DOT_DOT", "COLON_EQUALS", "EQUALS_GREATER"}
    | {"LESS_EQUALS", "GREATER_EQUALS", "NOT_EQUALS", "RIGHT_ARROW"}
)
_OPERATOR_CHARS = frozenset("+-*/<>=~!@#%^&|`?:")
_SEMICOLON = "ASCII_59"
_SPACE = re.compile(r"\s+")
# What a sidecar sends instead of a text PostgreSQL's scanner could not read.
_UNREADABLE = re.compile(r"<unparseable statement: [0-9]+ bytes>")


@dataclass(frozen=True)
class Piece:
    """One token of the statement (or the whitespace before it), as it is shown."""

    text: str
    css: str = ""
    # The placeholder's statement (0-based, in a multi-statement text) and number.
    statement: int = 0
    n: int = 0


@dataclass(frozen=True)
class ShownValue:
    """The value at one placeholder, or the classification that keeps it redacted."""

    statement: int
    n: int
    value: str | None
    classification: str = ""

    @property
    def placeholder(self) -> str:
        return f"${self.n}"

    @property
    def is_redacted(self) -> bool:
        return self.value is None

    @property
    def inline(self) -> str:
        """The value as it is shown inside the statement: cut when long."""
        value = self.value or ""
        if len(value) <= INLINE_VALUE_CHARS:
            return value
        return value[: INLINE_VALUE_CHARS - 1] + "…"


@dataclass(frozen=True)
class ValueGroup:
    statement: int  # 0-based
    values: tuple[ShownValue, ...]

    @property
    def number(self) -> int:
        return self.statement + 1


@dataclass(frozen=True)
class TableEstimate:
    table: str
    rows: int

    @property
    def rows_text(self) -> str:
        return f"{self.rows:,}"


@dataclass(frozen=True)
class Estimate:
    tables: tuple[TableEstimate, ...]
    top: str
    error: str


# --- the statement ----------------------------------------------------------------------


def _css(name: str, kind: str, text: str) -> str:
    if name == "PARAM":
        return "sql-ph"
    if name in _STRINGS:
        return "sql-s"
    if name in _NUMBERS:
        return "sql-m"
    if name in _COMMENTS:
        return "sql-c"
    if kind != "NO_KEYWORD":
        return "sql-k"
    if name in _OPERATORS or (name.startswith("ASCII_") and text in _OPERATOR_CHARS):
        return "sql-o"
    if name.startswith("ASCII_"):
        return "sql-p"
    return ""


def _tokens(text: str) -> list[tuple[int, int, str, str]] | None:
    """(start, end exclusive, scanner name, keyword kind) per token, or None when
    PostgreSQL's scanner rejects the text."""
    try:
        return [(t.start, t.end + 1, t.name, t.kind) for t in scanning.scan(text)]
    except Exception:  # pglast's ParseError, ScanTooCostly: shown as sent
        return None


def _key(text: str, start: int, end: int) -> str:
    return text[start:end].upper()


def _align(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """Pairs (i, j) of equal tokens, in order: where the two streams differ, the
    nearest place within ``RESYNC_TOKENS`` where they agree again on two tokens
    running. Linear in the tokens (sqlglot's rewrites are local); a pair taken
    wrongly only misplaces a line break."""
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            pairs.append((i, j))
            i += 1
            j += 1
            continue
        found = None
        for total in range(1, 2 * RESYNC_TOKENS + 1):
            for di in range(max(0, total - RESYNC_TOKENS), min(total, RESYNC_TOKENS) + 1):
                ii, jj = i + di, j + total - di
                if ii >= len(a) or jj >= len(b) or a[ii] != b[jj]:
                    continue
                if ii + 1 == len(a) or jj + 1 == len(b) or a[ii + 1] == b[jj + 1]:
                    found = (ii, jj)
                    break
            if found:
                break
        if found is None:
            break
        i, j = found
    return pairs


def _pretty_gaps(text: str, tokens: list[tuple[int, int, str, str]]) -> dict[int, str]:
    """For the statement's tokens that sqlglot's pretty output has too, the whitespace
    before them there (token index -> gap). Empty when sqlglot cannot read the text."""
    index = [i for i, t in enumerate(tokens) if t[2] not in _COMMENTS]
    if not index or len(text) > MAX_FORMAT_CHARS:
        return {}
    # sqlglot is given the tokens one space apart: its own tokenizer misreads
    # "($1,$2)" (a dollar quote), and PostgreSQL's has already said where tokens end.
    spaced = " ".join(text[tokens[i][0] : tokens[i][1]] for i in index)
    try:
        statements = sqlglot.transpile(spaced, read="postgres", write="postgres", pretty=True)
    except Exception:  # SqlglotError, RecursionError, a fault of its printer: no layout
        return {}
    pretty = ";\n\n".join(s for s in statements if s.strip())
    pretty_tokens = _tokens(pretty)
    if not pretty_tokens:
        return {}
    pretty_gaps = []
    last = 0
    for start, end, _, _ in pretty_tokens:
        pretty_gaps.append(pretty[last:start])
        last = end
    pairs = _align(
        [_key(text, tokens[i][0], tokens[i][1]) for i in index],
        [_key(pretty, start, end) for start, end, _, _ in pretty_tokens],
    )
    gaps: dict[int, str] = {}
    previous = (-2, -2)
    for a, b in pairs:
        gap = pretty_gaps[b]
        # Between two matched neighbours the spacing too is sqlglot's; after a
        # difference only a line break is ("x::int" against "CAST(x AS INT)").
        if (a - 1, b - 1) == previous or "\n" in gap:
            gaps[index[a]] = gap if not gap or gap.isspace() else " "
        previous = (a, b)
    return gaps


def layout(text: str, *, pretty: bool = True) -> tuple[Piece, ...]:
    """The statement as pieces: its tokens as sent, with sqlglot's line breaks between
    them when ``pretty`` (else the text's own spacing).

    A text PostgreSQL's scanner rejects is one plain piece (as sent).
    """
    text = text.strip()
    if _UNREADABLE.fullmatch(text):
        return (Piece(text, "sql-err"),)
    tokens = _tokens(text)
    if not tokens:
        return (Piece(text),) if text else ()
    gaps = _pretty_gaps(text, tokens) if pretty else {}
    pieces: list[Piece] = []
    statement = 0
    last = 0
    previous = ""
    for i, (start, end, name, kind) in enumerate(tokens):
        sent = text[last:start]
        if i == 0:
            gap = ""
        elif previous == "SQL_COMMENT":
            gap = sent if "\n" in sent else "\n"  # the comment runs to the end of its line
        elif gaps:
            gap = gaps.get(i, " " if sent else "")
        else:
            gap = sent
        if gap:
            pieces.append(Piece(gap))
        word = text[start:end]
        if name == "PARAM":
            pieces.append(Piece(word, "sql-ph", statement=statement, n=int(word[1:])))
        else:
            pieces.append(Piece(word, _css(name, kind, word)))
        if name == _SEMICOLON:
            statement += 1
        previous = name
        last = end
    return tuple(pieces)


def statement_count(pieces: tuple[Piece, ...]) -> int:
    """How many statements the laid-out text holds (each numbers its own placeholders)."""
    semicolons = [i for i, p in enumerate(pieces) if p.text == ";" and p.css == "sql-p"]
    trailing = bool(semicolons) and all(not p.text.strip() for p in pieces[semicolons[-1] + 1 :])
    return max(1, len(semicolons) + 1 - trailing)


def has_placeholders(pieces: tuple[Piece, ...]) -> bool:
    return any(p.n for p in pieces)


def _span(css: str, text: str, title: str = "") -> str:
    title_attr = f' title="{html.escape(title)}"' if title else ""
    return f'<span class="{css}"{title_attr}>{html.escape(text)}</span>'


def _bound(piece: Piece, shown: ShownValue) -> str:
    """The placeholder with its value beside it (or the label that keeps it redacted)."""
    placeholder = _span("sql-ph", piece.text)
    if shown.is_redacted:
        label = f"redacted ({shown.classification})" if shown.classification else "redacted"
        value = _span("sql-redacted", label, f"{piece.text}: value not shown")
        return f'<span class="sql-bound is-redacted">{placeholder}{value}</span>'
    value = _span("sql-val", shown.inline, f"{piece.text} = {shown.value}")
    return f'<span class="sql-bound">{placeholder}{value}</span>'


def highlight(text: Any, values: Iterable[ShownValue] = (), *, pretty: bool = True) -> str:
    """The statement as HTML for inside ``<pre><code>``: escaped, highlighted, laid out
    (``pretty``), and with each given value at its placeholder."""
    return render(layout(str(text or ""), pretty=pretty), values)


def render(pieces: Iterable[Piece], values: Iterable[ShownValue] = ()) -> str:
    """``layout``'s pieces as HTML, each value at its placeholder."""
    at = {(v.statement, v.n): v for v in values}
    out: list[str] = []
    for piece in pieces:
        if piece.n and (piece.statement, piece.n) in at:
            out.append(_bound(piece, at[(piece.statement, piece.n)]))
        elif piece.css:
            out.append(_span(piece.css, piece.text))
        else:
            out.append(html.escape(piece.text))
    return "".join(out)


# --- the values -------------------------------------------------------------------------


def _index(raw: Any) -> int | None:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None


def shown_values(raw: Any) -> tuple[ShownValue, ...]:
    """The request's values as sent, in statement and placeholder order; an item not in
    the contract's shape is left out rather than guessed at."""
    if not isinstance(raw, list):
        return ()
    shown: dict[tuple[int, int], ShownValue] = {}
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        statement = _index(item.get("statement", 0))
        n = _index(item.get("n"))
        if statement is None or not n:
            continue
        value = item.get("value")
        classification = item.get("classification")
        if isinstance(classification, str) and classification:
            shown[(statement, n)] = ShownValue(statement, n, None, classification)
        elif isinstance(value, str):
            shown[(statement, n)] = ShownValue(statement, n, value)
    return tuple(shown[key] for key in sorted(shown))


def value_groups(values: Iterable[ShownValue]) -> tuple[ValueGroup, ...]:
    groups: dict[int, list[ShownValue]] = {}
    for value in values:
        groups.setdefault(value.statement, []).append(value)
    return tuple(ValueGroup(statement, tuple(vs)) for statement, vs in sorted(groups.items()))


# --- the estimate -----------------------------------------------------------------------


def estimate(raw: Any) -> Estimate | None:
    """The planner's estimate as the sidecar sent it; None when none was sent."""
    if not isinstance(raw, Mapping) or not raw:
        return None
    rows = raw.get("rows")
    tables = []
    if isinstance(rows, Mapping):
        for table, count in rows.items():
            if isinstance(count, bool) or not isinstance(count, (int, float)) or count < 0:
                continue
            tables.append(TableEstimate(str(table), round(count)))
    top = raw.get("top")
    error = raw.get("error")
    view = Estimate(
        tables=tuple(sorted(tables, key=lambda t: t.table)),
        top=_SPACE.sub(" ", top).strip() if isinstance(top, str) else "",
        error=error.strip() if isinstance(error, str) else "",
    )
    if not (view.tables or view.top or view.error):
        return None
    return view
