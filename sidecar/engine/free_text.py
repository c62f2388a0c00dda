"""Values in text a client chose that is not a literal: what the audit trail keeps.

A literal is replaced by ``$n`` (``engine._redact``). Other text a client writes is
kept: a quoted identifier (``WHERE email = "ann@example.org"``, MySQL's habit, is a
column name to PostgreSQL), or the session's ``application_name``. Such text is kept
with anything shaped like an e-mail address or a number of six digits or more (with
or without separators) replaced, so that a value typed where a name belongs does
not reach an append-only trail. Names rarely look like either; a name that does
keeps its shape (``[email]``, ``[number]``).
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"[^\s@\"]+@[^\s@\"]+")
LONG_NUMBER = re.compile(r"\d(?:[\s./_,-]?\d){5,}")
_QUOTED = re.compile(r'"(?:[^"]|"")*"')


def scrub(text: str) -> str:
    """``text`` with e-mail addresses and long numbers replaced."""
    return LONG_NUMBER.sub("[number]", EMAIL.sub("[email]", text))


def scrub_quoted(sql: str) -> str:
    """``sql`` (redacted: no literal left) with its quoted identifiers scrubbed: only
    e-mail addresses, and identifiers that are a long number whole (``"001-55-1001"``);
    a name with digits in it (``"t100000"``) is a name."""
    if '"' not in sql:
        return sql
    return _QUOTED.sub(_scrub_identifier, sql)


def _scrub_identifier(match: re.Match[str]) -> str:
    quoted = EMAIL.sub("[email]", match.group(0))
    return '"[number]"' if LONG_NUMBER.fullmatch(quoted[1:-1]) else quoted
