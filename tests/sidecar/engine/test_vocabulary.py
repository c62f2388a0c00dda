"""The policy vocabulary against what the engine does with it.

``sidecar.engine.vocabulary`` is the one list of statement kinds, categories,
actions, masking strategies and levels that policy authors are offered. These
tests hold both directions: every kind the engine reports is in it, every
name in it is something the engine produces or applies, and the bundle JSON
schema says the same as the vocabulary.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.engine import BundleError, Engine, compute_revision, load_bundle, vocabulary
from sidecar.engine.policy import CATEGORY_RISK, LEVEL_RISK
from tests.sidecar.engine.cases import CASES
from tests.sidecar.engine.conftest import bundle_data

SCHEMA = Path(vocabulary.__file__).with_name("bundle.schema.json")

# One statement per kind the engine reports (staging, svc_app: no floor in the way).
EXAMPLES: dict[str, str] = {
    "select": "SELECT 1",
    "insert": "INSERT INTO orders (id) VALUES (1)",
    "update": "UPDATE orders SET note = 'x' WHERE id = 1",
    "delete": "DELETE FROM orders WHERE id = 1",
    "merge": "MERGE INTO orders o USING products p ON o.id = p.id WHEN MATCHED THEN DO NOTHING",
    "transaction": "BEGIN",
    "set": "SET application_name = 'x'",
    "show": "SHOW search_path",
    "discard": "DISCARD ALL",
    "explain": "EXPLAIN SELECT 1",
    "explain_analyze": "EXPLAIN ANALYZE SELECT 1",
    "copy_to": "COPY orders TO STDOUT",
    "copy_from": "COPY orders FROM STDIN",
    "prepare": "PREPARE p AS SELECT 1",
    "execute": "EXECUTE p",
    "deallocate": "DEALLOCATE p",
    "declare_cursor": "DECLARE c CURSOR FOR SELECT 1",
    "fetch": "FETCH c",
    "close_cursor": "CLOSE c",
    "lock": "LOCK TABLE orders",
    "truncate": "TRUNCATE orders",
    "drop": "DROP TABLE orders",
    "create_table": "CREATE TABLE t (id int)",
    "create_table_as": "CREATE TABLE t AS SELECT 1",
    "create_materialized_view": "CREATE MATERIALIZED VIEW mv AS SELECT 1",
    "select_into": "SELECT 1 INTO t",
    "alter_table": "ALTER TABLE orders ADD COLUMN x int",
    "create_index": "CREATE INDEX i ON orders (id)",
    "create_view": "CREATE VIEW v AS SELECT 1",
    "rename": "ALTER TABLE orders RENAME TO o2",
    "create_schema": "CREATE SCHEMA s",
    "create_sequence": "CREATE SEQUENCE s",
    "alter_sequence": "ALTER SEQUENCE s RESTART",
    "comment": "COMMENT ON TABLE orders IS 'x'",
    "create_type": "CREATE TYPE mood AS ENUM ('a')",
    "alter_type": "ALTER TYPE mood ADD VALUE 'b'",
    "create_domain": "CREATE DOMAIN d AS int",
    "refresh_materialized_view": "REFRESH MATERIALIZED VIEW mv",
    "create_function": "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "create_rule": "CREATE RULE r AS ON INSERT TO orders DO INSTEAD NOTHING",
    "create_trigger": "CREATE TRIGGER t AFTER INSERT ON orders EXECUTE FUNCTION f()",
    "create_policy": "CREATE POLICY p ON orders USING (true)",
    "vacuum": "VACUUM orders",
    "grant": "GRANT SELECT ON orders TO bob",
    "call": "CALL my_proc(1)",
    "unknown": "LISTEN events",
    "unparseable": "SELEC 1",
}


def _decide(sql: str, engine: Engine) -> Any:
    return engine.decide(identity="svc_app", sql=sql).statements[0]


def _with_guardrail(base: str, guardrail: dict[str, Any]) -> Engine:
    data = copy.deepcopy(bundle_data(base))
    data["guardrails"].insert(0, {"position": 0, "enabled": True, **guardrail})
    data["revision"] = compute_revision(data)
    return Engine(load_bundle(data))


def test_call_is_reported_as_call_and_keeps_every_safety_rule(engines: dict[str, Engine]) -> None:
    # CALL runs code the engine cannot see into: its category stays "unknown", so
    # the defaults, the review floor, the masking rule and the barrier all hold.
    d = engines["production"].decide(identity="alice", sql="CALL my_proc(1)")
    (s,) = d.statements
    assert (s.kind, s.category) == ("call", "unknown")
    assert d.action == "block" and d.barrier
    rules = [r.rule for r in d.reasons]
    assert "default.unknown_statement" in rules and "mask.opaque_code" in rules


def test_a_guardrail_on_call_matches_a_call() -> None:
    engine = _with_guardrail(
        "demo-production",
        {
            "name": "no-procedures",
            "action": "block",
            "message": "Procedures are not run through Warden.",
            "conditions": {"statement_kinds": ["call"]},
        },
    )
    d = engine.decide(identity="alice", sql="CALL my_proc(1)")
    assert d.action == "block" and "no-procedures" in [r.rule for r in d.reasons]
    other = engine.decide(identity="alice", sql="LISTEN events")
    assert "no-procedures" not in [r.rule for r in other.reasons]


def test_an_allow_guardrail_on_call_cannot_lift_it_below_review() -> None:
    # The floor for statements the engine does not understand is unchanged by the kind.
    engine = _with_guardrail(
        "demo-staging",
        {
            "name": "allow-calls",
            "action": "allow",
            "message": "",
            "conditions": {"statement_kinds": ["call"]},
        },
    )
    d = engine.decide(identity="alice", sql="CALL my_proc(1)")
    assert d.action == "block"  # mask.opaque_code: alice has masked columns
    assert [r.rule for r in d.reasons] == ["mask.opaque_code", "allow-calls"]


def test_every_kind_in_the_vocabulary_is_produced(engines: dict[str, Engine]) -> None:
    assert set(EXAMPLES) == set(vocabulary.STATEMENT_KINDS)
    produced = {kind: _decide(sql, engines["staging"]) for kind, sql in EXAMPLES.items()}
    assert {kind: s.kind for kind, s in produced.items()} == {kind: kind for kind in EXAMPLES}
    assert {s.category for s in produced.values()} == set(vocabulary.CATEGORIES)


def test_every_kind_the_engine_reports_is_in_the_vocabulary(engines: dict[str, Engine]) -> None:
    seen: set[tuple[str, str]] = set()
    for case in CASES:
        d = engines[case.env].decide(identity=case.identity, sql=case.sql, protocol=case.protocol)
        seen.update((s.kind, s.category) for s in d.statements)
    assert {k for k, _ in seen} <= set(vocabulary.STATEMENT_KINDS)
    assert {c for _, c in seen} <= set(vocabulary.CATEGORIES)
    node_kinds = {kind for kind, _ in vocabulary.NODE_KINDS.values()}
    assert node_kinds <= set(vocabulary.STATEMENT_KINDS)


def test_what_the_control_plane_offers_is_what_the_engine_matches(
    engines: dict[str, Engine],
) -> None:
    offered = vocabulary.GUARDRAIL_STATEMENT_KINDS
    assert len(set(offered)) == len(offered)
    matchable = set(vocabulary.STATEMENT_KINDS) | set(vocabulary.CATEGORIES)
    for name in offered:
        assert set(vocabulary.engine_statement_kinds(name)) <= matchable, name
    assert matchable <= set(offered)
    # Each offered name matches some statement once compiled.
    produced = [_decide(sql, engines["staging"]) for sql in EXAMPLES.values()]
    for name in offered:
        wanted = set(vocabulary.engine_statement_kinds(name))
        assert any(wanted & {s.kind, s.category} for s in produced), name


def test_risk_tables_cover_the_vocabulary() -> None:
    assert set(LEVEL_RISK) == set(vocabulary.LEVELS)
    assert set(CATEGORY_RISK) <= set(vocabulary.CATEGORIES)


# -- the bundle schema says what the vocabulary says ---------------------------------------


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text("utf-8"))


def test_bundle_schema_agrees_with_the_vocabulary() -> None:
    props = _schema()["properties"]
    masking = props["masking_rules"]["items"]["properties"]
    assert masking["strategy"]["enum"] == list(vocabulary.MASKING_STRATEGIES)
    params = {
        p.name: {"type": "integer", "minimum": p.minimum, "maximum": p.maximum}
        for parameters in vocabulary.MASKING_STRATEGIES.values()
        for p in parameters
    }
    assert masking["params"]["properties"] == params
    level = props["classifications"]["items"]["properties"]["level"]
    assert level["enum"] == list(vocabulary.LEVELS)
    action = props["guardrails"]["items"]["properties"]["action"]
    assert action["enum"] == list(vocabulary.ACTIONS)


@pytest.mark.parametrize("parameter", vocabulary.MASKING_PARAMETERS, ids=lambda p: p.name)
def test_masking_parameter_bounds_are_enforced_by_the_loader(
    parameter: vocabulary.IntParameter,
) -> None:
    strategy = next(s for s, ps in vocabulary.MASKING_STRATEGIES.items() if parameter in ps)

    def load(value: int) -> Any:
        data = copy.deepcopy(bundle_data("demo-production"))
        rule = next(r for r in data["masking_rules"] if r["strategy"] == strategy)
        rule["params"] = {parameter.name: value}
        data["revision"] = compute_revision(data)
        return load_bundle(data)

    for value in (parameter.minimum, parameter.maximum):
        load(value)
    for value in (parameter.minimum - 1, parameter.maximum + 1):
        with pytest.raises(BundleError, match=parameter.name):
            load(value)
