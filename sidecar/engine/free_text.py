"""Values in text a client chose that is not a literal: what the audit trail keeps.

A literal is replaced by ``$n`` (``engine._redact``). Other text a client writes is
kept: a quoted identifier (``WHERE email = "ann@example.org"``, MySQL's habit, is a
column name to PostgreSQL), the names of relations and functions, or the session's
``application_name``. So that a value typed where a name belongs does not reach an
append-only trail, ``application_name`` is kept with anything shaped like an e-mail
address or a number of six digits or more (with or without separators) replaced
(``scrub``); a name with e-mail addresses replaced, and any part of it that is such a
number whole (``scrub_name``: a partition ``events_2024_12`` keeps its name).
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"[^\s@\"]+@[^\s@\"]+")
LONG_NUMBER = re.compile(r"\d(?:[\s./_,-]?\d){5,}")
_QUOTED = re.compile(r'"(?:[^"]|"")*"')


def scrub(text: str) -> str:
    """``text`` with e-mail addresses and long numbers replaced."""
    return LONG_NUMBER.sub("[number]", EMAIL.sub("[email]", text))


def scrub_name(name: str) -> str:
    """A name (``schema.table``, a function's) as the trail keeps it: e-mail addresses
    replaced, and any part that is a long number whole (``"001-55-1001"``); a name with
    digits in it (``t100000``, ``events_2024_12``) is a name."""
    if "@" not in name and not any(ch.isdigit() for ch in name):
        return name
    name = EMAIL.sub("[email]", name)
    if LONG_NUMBER.fullmatch(name):  # "1234.5678" quoted: one number, not two parts
        return "[number]"
    parts = name.split(".")
    return ".".join("[number]" if LONG_NUMBER.fullmatch(part) else part for part in parts)


def scrub_quoted(sql: str) -> str:
    """``sql`` (redacted: no literal left) with its quoted identifiers scrubbed as
    names (``scrub_name``)."""
    if '"' not in sql:
        return sql
    return _QUOTED.sub(lambda match: '"' + scrub_name(match.group(0)[1:-1]) + '"', sql)
