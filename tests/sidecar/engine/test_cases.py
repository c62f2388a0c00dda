"""Run the table-driven corpus (cases.py) through the engine and check every expectation."""

from __future__ import annotations

import pytest

from sidecar.engine import Engine, SessionContext
from tests.sidecar.engine.cases import CASES, Case


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 300
    assert {c.action for c in CASES} == {"allow", "review", "block"}


def _id(case: Case) -> str:
    return f"{case.env[:4]}-{case.identity}-{case.protocol[:3]}-{case.sql[:60]!r}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_case(case: Case, engines: dict[str, Engine]) -> None:
    engine = engines[case.env]
    session = SessionContext(standard_conforming_strings=case.scs)
    d = engine.decide(identity=case.identity, sql=case.sql, session=session, protocol=case.protocol)
    rules = [r.rule for r in d.reasons]
    assert d.action == case.action, (rules, d.to_json())
    for rule in case.rules:
        assert rule in rules
    if d.action != "allow":
        assert d.message and d.reasons and d.reasons[0].rule in d.message
    assert 0 <= d.risk <= 100
    if case.rewritten is not None:
        rewritten = any(s.rewritten_sql is not None for s in d.statements)
        assert rewritten == case.rewritten, d.upstream_sql
        if case.rewritten:
            assert d.upstream_sql != case.sql
    if case.kinds is not None:
        assert tuple(s.kind for s in d.statements) == case.kinds
    if case.tables_read is not None:
        assert tuple(sorted({t for s in d.statements for t in s.tables_read})) == case.tables_read
    if case.tables_written is not None:
        written = {t for s in d.statements for t in s.tables_written}
        assert tuple(sorted(written)) == case.tables_written
    if case.classifications is not None:
        touched = {c for s in d.statements for c in s.classifications}
        assert tuple(sorted(touched)) == case.classifications
    if d.action == "block" or not any(s.rewritten_sql for s in d.statements):
        assert d.upstream_sql == case.sql  # byte for byte
    for s in d.statements:
        # The audit form never carries the literals of the original text.
        for literal in ("person1.secret", "/etc/passwd", "101-41-5037"):
            assert literal not in s.redacted_sql
