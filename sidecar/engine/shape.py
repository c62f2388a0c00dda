"""A statement's shape: its text with the values of its simple literals taken out.

The proxy's busiest traffic is one statement sent again and again with new
values (``WHERE aid = 48213``, an ORM's ``WHERE "email" = 'a@b.c'``). The
engine already serves those from a template once it has judged the first one,
but finding the template costs a full scan by PostgreSQL's lexer. A shape is
found with one regular expression, so a policy can keep the verdicts the
engine gave by template under the shape and skip the engine altogether.

What may vary between two texts of one shape:

- an integer literal of at most nine digits (so PostgreSQL lexes it as an
  ``ICONST`` whatever its value), standing alone: not part of a name (``t1``),
  a parameter (``$1``), a number with a point or exponent (``1.5``, ``1e5``),
  or a longer number;
- a standard string literal, ``'...'`` with ``''`` for a quote.

Everything else is kept verbatim, quoted identifiers included: identifiers,
quoted or not, are never a variable part of a shape.

The expression is not PostgreSQL's lexer, and does not have to be: a shape is
only ever recorded from a text whose every match ``confirmed`` is a whole
token of the kind it stands for in PostgreSQL's own scan. Another text of the
same shape is the same text outside those tokens, so PostgreSQL lexes it the
same way up to each of them; the token there is again of the same kind and
length class, and ends where the expression says, because the character after
it is the same as in the confirmed text. (A digit run is followed by none of
``[\\w.$]``; a string ends at a quote that is not doubled, and the confirmed
text shows PostgreSQL ended it there too.) So two texts of one shape scan to
the same tokens except for those literals' values, which is exactly what the
engine's own templates vary, and the soundness of reusing a verdict across a
shape reduces to the engine's. ``tests/sidecar/engine/test_shape.py`` checks
it decision for decision against a fresh engine.

Only for ``standard_conforming_strings`` on: with it off, a backslash would
escape a quote inside a string, which the expression does not follow.
"""

from __future__ import annotations

import re

from pglast import parser as pg

# Each match adds two items to ``split``'s result: the quoted identifier's text
# (kept verbatim) or None, and "'" (a string's closing quote) or None. So a number
# reads (None, None), a string (None, "'") and a quoted identifier ('name', None),
# and the unmatched text between stays in the list as it is. The expression starts
# with the set of characters a literal can start with, and each branch checks by a
# look-behind which one it was: the regular expression engine then skips ahead to
# the next quote or digit in one tight loop instead of trying every branch at every
# position (pgbench's statement: 1.77 us to 0.6 us). ASCII digits only: a number
# written with other digits stays in the shape.
_LITERALS = re.compile(
    r"""[0-9"'](?:(?<=")([^"]*(?:""[^"]*)*)"|(?<=')[^']*(?:''[^']*)*(')"""
    r"""|(?<=[0-9])(?<![\w$.][0-9])[0-9]{0,8}(?![\w.$]))"""
)
_split = _LITERALS.split

Shape = tuple[str | None, ...]


def shape_of(sql: str) -> Shape:
    """The text's shape; two texts share one when they differ only in the values
    of their simple literals (see the module docstring)."""
    return tuple(_split(sql))


def confirmed(sql: str) -> bool:
    """Whether PostgreSQL's lexer reads every literal and quoted identifier the
    shape expression found in ``sql`` as one whole token of that kind.

    A text that fails here (a comment or dollar quote holding digits, an
    ``E'...'`` string, a string continued on the next line...) still gets its
    verdict from the engine; it is only never kept by shape.
    """
    try:
        tokens = {(t.start, t.end): t.name for t in pg.scan(sql)}
    except Exception:
        return False
    for match in _LITERALS.finditer(sql):
        span = (match.start(), match.end() - 1)  # pglast: character offsets, end inclusive
        if match.group(1) is not None:
            expected = "IDENT"
        elif match.group(2) is not None:
            expected = "SCONST"
        else:
            expected = "ICONST"
        if tokens.get(span) != expected:
            return False
    return True


def number_slot(shape: Shape) -> tuple[str, str] | None:
    """``(head, tail)`` when the shape's one variable part is an integer literal,
    the text around it being ``head`` and ``tail``; else None."""
    if len(shape) == 4 and shape[1] is None and shape[2] is None:
        return shape[0], shape[3]  # type: ignore[return-value]  # split's text parts
    return None


def fits_number_slot(sql: str, head: str, tail: str) -> bool:
    """Whether ``shape_of(sql)`` is the shape ``number_slot`` gave ``(head, tail)``
    for, found without the expression: ``sql`` is ``head``, one to nine ASCII
    digits and ``tail``.

    The expression reads such a text as it read the text the shape came from.
    That text's scan found no literal in ``head``: an attempt there fails the
    same way here, since a quote would need a closing quote after it (digits
    are not quotes, and ``tail`` is the same), and a digit run in ``head`` ends
    inside it (``head`` ends with none of ``[\\w$.]``, or the number's look-behind
    would have failed). The number matches whole, as before: the same character
    precedes it and the same one, none of ``[\\w.$]``, follows it. Nothing in
    ``tail`` matches, as before: attempts there read only ``tail`` (which starts
    with no digit) and look behind only at characters of ``tail`` or at the
    number's last digit, a digit either way. ``test_shape.py`` checks this
    against ``shape_of`` on texts made to break it.
    """
    if not (sql.startswith(head) and sql.endswith(tail)):
        return False
    number = sql[len(head) : len(sql) - len(tail)]  # empty when the two overlap
    return len(number) <= 9 and number.isdigit() and number.isascii()


NUMBER, STRING = "n", "s"


def pieces(shape: Shape) -> tuple[tuple[str, ...], str]:
    """The shape as the texts that do not vary and the kinds of the values between
    them: ``(fixed, kinds)``, ``len(fixed) == len(kinds) + 1``, each kind ``NUMBER``
    or ``STRING``. A quoted identifier is part of the fixed text, quotes and all.
    ``fits_pieces`` (and the native relay's twin) recognise a text of the shape by
    them without the expression."""
    fixed: list[str] = []
    kinds: list[str] = []
    text = str(shape[0])
    for at in range(1, len(shape), 3):
        identifier, quote, after = shape[at], shape[at + 1], str(shape[at + 2])
        if identifier is not None:
            text += f'"{identifier}"{after}'
            continue
        fixed.append(text)
        kinds.append(STRING if quote else NUMBER)
        text = after
    fixed.append(text)
    return tuple(fixed), "".join(kinds)


def fits_pieces(sql: str, fixed: tuple[str, ...], kinds: str) -> bool:
    """Whether ``sql`` is a text of the shape ``pieces`` gave ``(fixed, kinds)`` for,
    found without the expression: the fixed texts, with between them a number of
    one to nine ASCII digits or a string (``'...'``, ``''`` for a quote, no ``"``
    and no NUL), as the kinds say. Those texts have that shape (``shape_of``).

    The fixed texts are the ones the expression found no literal in when it
    read the text the shape came from, and PostgreSQL's scan of that text
    ended without error (``confirmed``). So an unmatched quote in them is
    unmatched because no quote of its kind follows it in that text: a single
    quote is always followed by the opening quote of a string value, if the
    shape has one, so there is none; a double quote (in a comment, say) stays
    unmatched here because a string value holds none. A number value is read
    whole, as ``fits_number_slot`` explains; a string value ends, as the
    expression ends it, at its first quote not doubled, and the fixed text after
    it starts with no quote (or the expression would have read on). So the
    expression finds the same literals at the same places, and only their
    values differ. ``tests/sidecar/engine/test_shape.py`` checks this against
    ``shape_of``, and the relay's twin against this.
    """
    at = 0
    for index, kind in enumerate(kinds):
        head = fixed[index]
        if not sql.startswith(head, at):
            return False
        at += len(head)
        if kind == NUMBER:
            end = at
            while end < len(sql) and "0" <= sql[end] <= "9":
                end += 1
            if not 1 <= end - at <= 9:
                return False
            at = end
            continue
        if not sql.startswith("'", at):
            return False
        at += 1
        while True:
            close = sql.find("'", at)
            if close < 0 or '"' in sql[at:close] or "\0" in sql[at:close]:
                return False
            if sql.startswith("'", close + 1):
                at = close + 2
                continue
            at = close + 1
            break
    return sql.startswith(fixed[-1], at) and at + len(fixed[-1]) == len(sql)
