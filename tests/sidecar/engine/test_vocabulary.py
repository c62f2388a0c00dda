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
    "do": "DO $$ BEGIN PERFORM 1; END $$",
    "set_constraints": "SET CONSTRAINTS ALL IMMEDIATE",
    "listen": "LISTEN events",
    "unlisten": "UNLISTEN *",
    "notify": "NOTIFY events",
    "checkpoint": "CHECKPOINT",
    "cluster": "CLUSTER orders",
    "reindex": "REINDEX TABLE orders",
    "alter_system": "ALTER SYSTEM SET work_mem = '1MB'",
    "load": "LOAD 'plugin'",
    "create_role": "CREATE ROLE r",
    "alter_role": "ALTER ROLE r NOLOGIN",
    "alter_role_set": "ALTER ROLE r SET work_mem = '1MB'",
    "drop_role": "DROP ROLE r",
    "grant_role": "GRANT r TO bob",
    "reassign_owned": "REASSIGN OWNED BY r TO bob",
    "drop_owned": "DROP OWNED BY r",
    "alter_collation": "ALTER COLLATION c REFRESH VERSION",
    "alter_database": "ALTER DATABASE d CONNECTION LIMIT 5",
    "alter_database_set": "ALTER DATABASE d SET work_mem = '1MB'",
    "alter_default_privileges": "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob",
    "alter_domain": "ALTER DOMAIN d SET NOT NULL",
    "alter_event_trigger": "ALTER EVENT TRIGGER et DISABLE",
    "alter_extension": "ALTER EXTENSION hstore UPDATE",
    "alter_foreign_data_wrapper": "ALTER FOREIGN DATA WRAPPER w OPTIONS (ADD a '1')",
    "alter_server": "ALTER SERVER s OPTIONS (ADD a '1')",
    "alter_function": "ALTER FUNCTION f() IMMUTABLE",
    "alter_object_depends": "ALTER FUNCTION f() DEPENDS ON EXTENSION hstore",
    "alter_object_schema": "ALTER TABLE orders SET SCHEMA s",
    "alter_operator_family": "ALTER OPERATOR FAMILY f USING btree ADD OPERATOR 1 < (int4, int4)",
    "alter_operator": "ALTER OPERATOR + (int4, int4) SET (RESTRICT = NONE)",
    "alter_owner": "ALTER SCHEMA s OWNER TO bob",
    "alter_policy": "ALTER POLICY p ON orders USING (true)",
    "alter_publication": "ALTER PUBLICATION p ADD TABLE orders",
    "alter_statistics": "ALTER STATISTICS st SET STATISTICS 10",
    "alter_subscription": "ALTER SUBSCRIPTION s DISABLE",
    "alter_text_search": "ALTER TEXT SEARCH DICTIONARY d (a = 1)",
    "alter_tablespace": "ALTER TABLESPACE t SET (seq_page_cost = 1)",
    "alter_user_mapping": "ALTER USER MAPPING FOR bob SERVER s OPTIONS (ADD a '1')",
    "create_access_method": "CREATE ACCESS METHOD am TYPE INDEX HANDLER h",
    "create_cast": "CREATE CAST (int4 AS text) WITH INOUT",
    "create_conversion": "CREATE CONVERSION c FOR 'LATIN1' TO 'UTF8' FROM f",
    "create_event_trigger": "CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION f()",
    "create_extension": "CREATE EXTENSION hstore",
    "create_foreign_data_wrapper": "CREATE FOREIGN DATA WRAPPER w",
    "create_server": "CREATE SERVER s FOREIGN DATA WRAPPER w",
    "create_foreign_table": "CREATE FOREIGN TABLE ft (id int) SERVER s",
    "create_operator_class": "CREATE OPERATOR CLASS c FOR TYPE int4 USING btree AS OPERATOR 1 <",
    "create_operator_family": "CREATE OPERATOR FAMILY f USING btree",
    "create_language": "CREATE LANGUAGE plsample HANDLER h",
    "create_publication": "CREATE PUBLICATION p FOR TABLE orders",
    "create_statistics": "CREATE STATISTICS st ON id, total FROM orders",
    "create_subscription": "CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p",
    "create_tablespace": "CREATE TABLESPACE t LOCATION '/tmp/t'",
    "create_transform": "CREATE TRANSFORM FOR int LANGUAGE sql (FROM SQL WITH FUNCTION f(x))",
    "create_user_mapping": "CREATE USER MAPPING FOR bob SERVER s",
    "create_database": "CREATE DATABASE d",
    "define": "CREATE COLLATION c (provider = icu, locale = 'und')",
    "drop_subscription": "DROP SUBSCRIPTION s",
    "drop_tablespace": "DROP TABLESPACE t",
    "drop_user_mapping": "DROP USER MAPPING FOR bob SERVER s",
    "drop_database": "DROP DATABASE d",
    "import_foreign_schema": "IMPORT FOREIGN SCHEMA r FROM SERVER s INTO public",
    "security_label": "SECURITY LABEL ON TABLE orders IS 'x'",
    "unparseable": "SELEC 1",
}


def _decide(sql: str, engine: Engine) -> Any:
    return engine.decide(identity="svc_app", sql=sql).statements[0]


def _with_guardrail(base: str, guardrail: dict[str, Any]) -> Engine:
    data = copy.deepcopy(bundle_data(base))
    data["guardrails"].insert(0, {"position": 0, "enabled": True, **guardrail})
    data["revision"] = compute_revision(data)
    return Engine(load_bundle(data))


def test_call_is_reported_as_code_and_keeps_every_safety_rule(engines: dict[str, Engine]) -> None:
    # CALL runs code the engine cannot see into: blocked in production, refused to
    # identities with masks, a barrier, and a procedure a guardrail must name.
    d = engines["production"].decide(identity="alice", sql="CALL my_proc(1)")
    (s,) = d.statements
    assert (s.kind, s.category) == ("call", "code")
    assert d.action == "block" and d.barrier
    rules = [r.rule for r in d.reasons]
    assert "default.code_statement" in rules and "mask.opaque_code" in rules


def test_every_statement_postgresql_has_is_a_known_kind() -> None:
    import inspect

    import pglast.ast

    # Nodes that never stand alone as a statement: inside PL/pgSQL, SQL function
    # bodies, ALTER TABLE, set operations, and the parser's wrapper.
    not_statements = {
        "PLAssignStmt", "ReturnStmt", "ReplicaIdentityStmt", "SetOperationStmt", "RawStmt",
    }  # fmt: skip
    statements = {
        name
        for name, node in vars(pglast.ast).items()
        if inspect.isclass(node) and name.endswith("Stmt") and name not in not_statements
    }
    assert statements - set(vocabulary.NODE_KINDS) == set()


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


def test_an_allow_guardrail_on_call_lifts_no_safety_rule() -> None:
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
    # "unknown" is what an analysis that fails on a tree it did not foresee reports:
    # every statement PostgreSQL has is a kind, so no text is unknown by design.
    assert set(EXAMPLES) == set(vocabulary.STATEMENT_KINDS) - {vocabulary.UNKNOWN}
    produced = {kind: _decide(sql, engines["staging"]) for kind, sql in EXAMPLES.items()}
    assert {kind: s.kind for kind, s in produced.items()} == {kind: kind for kind in EXAMPLES}
    assert {s.category for s in produced.values()} == set(vocabulary.CATEGORIES) - {
        vocabulary.UNKNOWN
    }


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
        if name == vocabulary.UNKNOWN:
            continue  # a failed analysis: see test_every_kind_in_the_vocabulary_is_produced
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


def _sandbox(environment: str = "sandbox", masked: bool = False) -> Engine:
    """demo-staging as a sandbox: an allow-everything guardrail; without ``masked``,
    no column classified, so nothing is masked for anyone."""
    data = copy.deepcopy(bundle_data("demo-staging"))
    data["datasource"]["environment"] = environment
    if not masked:
        data["column_classifications"] = []
        data["masking_rules"] = []
    data["guardrails"] = [
        {
            "position": 0,
            "enabled": True,
            "name": "allow-sandbox",
            "action": "allow",
            "message": "",
            "conditions": {},
        }
    ]
    data["revision"] = compute_revision(data)
    return Engine(load_bundle(data))


def test_a_sandbox_allow_covers_unlisted_functions_for_an_identity_without_masks() -> None:
    engine = _sandbox()
    d = engine.decide(identity="bob", sql="SELECT similarity(name, 'x') FROM customers")
    assert d.action == "allow" and d.barrier  # the server confirms the state after it
    # Masking still guards an identity with masked columns: the function could read them.
    d = _sandbox(masked=True).decide(identity="alice", sql="SELECT similarity('a', 'b')")
    assert d.action == "block" and "default.function.unlisted" in [r.rule for r in d.reasons]
    # So does the safety floor, whoever asks.
    d = engine.decide(identity="bob", sql="SELECT pg_read_file('/etc/passwd')")
    assert d.action == "block"
    # In production an allow guardrail lifts no unlisted function: it must name it.
    d = _sandbox("production").decide(identity="bob", sql="SELECT similarity('a', 'b')")
    assert d.action == "block" and "default.function.unlisted" in [r.rule for r in d.reasons]


def test_what_pg_dump_and_pg_restore_set_is_allowed() -> None:
    engine = _sandbox()
    for sql in [
        "SET synchronize_seqscans TO off",
        "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
        "WHERE name = 'restrict_nonsystem_relation_kind'",
        "SET default_tablespace = ''",
        "SET default_table_access_method = heap",
        "SET row_security = off",
        "SELECT pg_catalog.set_config('search_path', '', false)",
        "SELECT pg_notify('events', 'x')",
    ]:
        d = engine.decide(identity="alice", sql=sql)
        assert d.action == "allow", (sql, [r.rule for r in d.reasons])
    # The pg_settings form names the setting it changes: one not on the list stays refused.
    d = engine.decide(
        identity="alice",
        sql="SELECT set_config(name, 'replica', false) FROM pg_settings "
        "WHERE name = 'session_replication_role'",
    )
    assert d.action == "block" and "session.setting" in [r.rule for r in d.reasons]
    d = engine.decide(
        identity="alice",
        sql="SELECT set_config(name, 'x', false) FROM pg_settings WHERE name LIKE 'search%'",
    )
    assert d.action == "block"
