"""Property-based tests: random and mutated SQL never breaks the engine or slips through.

For any text, ``decide`` returns a Decision (it never raises), never allows
what PostgreSQL's parser rejects, and whatever it sends upstream parses into
the same number of statements as the original.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pg

from sidecar.engine import Engine, SessionContext
from sidecar.engine.engine import _redact, _redact_scanned
from tests.sidecar.engine.cases import CASES

SEEDS = sorted({c.sql for c in CASES})
PIECES = [
    "'", '"', "$$", "$a$", "/*", "*/", "--", "\n", "\r", ";", "(", ")", "\\", "E'", "U&",
    " DROP TABLE orders", " customers", " email", " FROM ", " WHERE ", " OR 1=1", ",", "*",
    " UNION SELECT ssn FROM customers", "ü", "\x00", " LIMIT 1", "::text", "$1",
]  # fmt: skip
SQLISH = st.lists(
    st.sampled_from(list("abcdeflmorstuwxyz_ ;'\"$()*,.=-/\\\n") + PIECES), max_size=40
).map("".join)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(PIECES))
        if op == "insert":
            text = text[:pos] + piece + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 6)) :]
        else:
            text = text[:pos] + piece + text[pos + len(piece) :]
    return text


def _parses(sql: str) -> int | None:
    try:
        return len(pg.split(sql))
    except Exception:
        return None


def _check(engine: Engine, identity: str, sql: str, scs: bool, protocol: str) -> None:
    d = engine.decide(
        identity=identity,
        sql=sql,
        session=SessionContext(standard_conforming_strings=scs),
        protocol=protocol,
    )
    assert d.action in ("allow", "review", "block")
    # The engine fails closed on its own errors; here they must not happen at all.
    internal = {"default.engine_error", "default.analysis_failed"}
    assert not internal & {r.rule for r in d.reasons}, (sql, d.reasons)
    assert 0 <= d.risk <= 100
    count = _parses(sql)
    if count is None:
        assert d.action != "allow", sql
    if d.action != "block" and d.upstream_sql != sql:
        assert _parses(d.upstream_sql) == count
    d.to_json()


# `make fuzz` (WARDEN_FUZZ=1) runs each property five times longer than `make test`.
EXAMPLES = 1000 if os.environ.get("WARDEN_FUZZ") else 200
COMMON = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@COMMON
@given(
    sql=SQLISH,
    identity=st.sampled_from(["alice", "bob", "agent_smith"]),
    scs=st.booleans(),
    protocol=st.sampled_from(["simple", "extended"]),
    env=st.sampled_from(["production", "staging"]),
)
def test_random_text(
    engines: dict[str, Engine], sql: str, identity: str, scs: bool, protocol: str, env: str
) -> None:
    _check(engines[env], identity, sql, scs, protocol)


@COMMON
@given(
    sql=mutated(),
    identity=st.sampled_from(["alice", "bob", "svc_app"]),
    env=st.sampled_from(["production", "staging"]),
)
def test_mutated_corpus(engines: dict[str, Engine], sql: str, identity: str, env: str) -> None:
    _check(engines[env], identity, sql, True, "simple")


# -- the redaction's shortcut -------------------------------------------------------------

_TEXT_PIECES = [
    "SELECT", "INSERT INTO orders (id, note) VALUES", "(1, 'a')", "($1, $2)", ",", " ", "\n",
    "-- c\n", "/* c */", "$$x$$", "$t$y$t$", "E'\\n'", "B'101'", "X'1F'", "U&'d\\0061t'",
    ".5", "1e3", "0x1F", "col1", "\"q'uoted\"", "a$b", "$1", "::text", "LIMIT 21", "(",
    ")", "FROM orders", "WHERE id =", "é", "\"é1\"", "RETURNING \"orders\".\"id\"", ";",
]  # fmt: skip


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(st.lists(st.sampled_from(_TEXT_PIECES), min_size=1, max_size=12))
def test_the_redaction_shortcut_gives_what_the_scan_gives(pieces: list[str]) -> None:

    text = " ".join(pieces)
    try:
        normalized = pg.normalize(text)
    except Exception:
        normalized = text
    assert _redact(text)[0] == _redact_scanned(normalized, text), text


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.sql[:40])
def test_the_redaction_shortcut_on_the_corpus(case: Any) -> None:

    try:
        normalized = pg.normalize(case.sql)
    except Exception:
        normalized = case.sql
    assert _redact(case.sql)[0] == _redact_scanned(normalized, case.sql)
