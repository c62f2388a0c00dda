"""The Engine API: decisions, analysis details, the JSON form, the cache and bundle swaps."""

from __future__ import annotations

import copy
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.engine import Bundle, Engine, SessionContext, compute_revision, load_bundle
from tests.sidecar.engine.conftest import BUNDLES, bundle_data

ROOT = Path(__file__).resolve().parents[3]


def test_analysis_details(production: Bundle) -> None:
    d = Engine(production).decide(
        identity="alice",
        sql="SELECT c.name, upper(c.email) FROM customers c JOIN orders o ON o.customer_id = c.id "
        "WHERE c.ssn LIKE $1 LIMIT 10",
    )
    (s,) = d.statements
    assert s.kind == "select" and s.category == "read"
    assert s.tables_read == ("public.customers", "public.orders")
    assert set(s.columns_read) == {
        "public.customers.name",
        "public.customers.email",
        "public.customers.ssn",
        "public.customers.id",
        "public.orders.customer_id",
    }
    assert s.functions == ("upper",)
    assert s.classifications == ("pii.email", "pii.ssn")
    assert s.masked_columns == ("public.customers.email", "public.customers.ssn")
    assert s.row_bound == 10
    assert "$1" in s.redacted_sql and len(s.fingerprint) == 64


def test_writes_ctes_copy_and_explain(production: Bundle) -> None:
    engine = Engine(production)
    d = engine.decide(
        identity="svc_app", sql="WITH x AS (DELETE FROM orders RETURNING id) SELECT 1"
    )
    (s,) = d.statements
    assert s.data_modifying_cte and s.tables_written == ("public.orders",)
    assert s.has_effective_where is False and d.action == "review"
    s = engine.decide(
        identity="svc_app", sql="UPDATE orders SET note = 'x' WHERE id = 1"
    ).statements[0]
    assert s.has_effective_where is True and s.tables_written == ("public.orders",)
    s = engine.decide(identity="svc_app", sql="COPY orders (id) TO STDOUT").statements[0]
    assert s.kind == "copy_to" and s.copy == {
        "direction": "to",
        "target": "client",
        "relation": True,
        "columns": ["id"],
    }
    s = engine.decide(identity="svc_app", sql="EXPLAIN ANALYZE DELETE FROM orders").statements[0]
    assert s.explain_analyze and s.kind == "explain_analyze"


def test_session_statements_are_described(production: Bundle) -> None:
    d = Engine(production).decide(identity="alice", sql="BEGIN; SET LOCAL lock_timeout = 5; COMMIT")
    assert [s.session for s in d.statements] == [
        {"transaction": "begin"},
        {"setting": {"kind": "set_value", "name": "lock_timeout", "local": True}},
        {"transaction": "commit"},
    ]


def test_statements_split_like_postgresql(production: Bundle) -> None:
    sql = "SELECT 'a;b'; SELECT $$;$$ /* ; */; -- ;\nSELECT 3"
    d = Engine(production).decide(identity="alice", sql=sql)
    assert [s.kind for s in d.statements] == ["select", "select", "select"]


def test_untouched_text_passes_byte_for_byte(production: Bundle) -> None:
    sql = "  select  id -- keep me\n FROM orders\twhere id = 1 ;  "
    d = Engine(production).decide(identity="alice", sql=sql)
    assert d.action == "allow"
    assert d.upstream_sql == sql


def test_rewrite_keeps_the_rest_of_the_text(production: Bundle) -> None:
    sql = "SELECT 'ünïcode', c.email /* ✓ */ FROM customers c WHERE c.name = 'Zoë'; SELECT 1"
    d = Engine(production).decide(identity="alice", sql=sql)
    head, tail = sql.split(" customers c ")
    assert d.upstream_sql.startswith(head + " (SELECT ")
    assert d.upstream_sql.endswith(") c " + tail)
    assert d.statements[1].rewritten_sql is None


def test_decision_json_is_stable(production: Bundle) -> None:
    d = Engine(production).decide(identity="alice", sql="SELECT phone FROM customers WHERE id = 1")
    data = d.to_json()
    assert list(data) == sorted(data)
    assert list(data["statements"][0]) == sorted(data["statements"][0])
    assert json.loads(json.dumps(data)) == data
    assert data["barrier"] is False


def test_cache_hits_and_replace_bundle_clears(production: Bundle) -> None:
    engine = Engine(production, cache_size=8)
    first = engine.decide(identity="alice", sql="SELECT 1")
    assert engine.decide(identity="alice", sql="SELECT 1") is first
    for i in range(20):
        engine.decide(identity="alice", sql=f"SELECT {i} AS x{i}")
    info = engine.cache_info()
    assert info["exact"] <= 8 and info["normalised"] <= 8
    data = copy.deepcopy(bundle_data("demo-production"))
    data["identities"] = [i for i in data["identities"] if i["name"] != "alice"]
    data["revision"] = compute_revision(data)
    engine.replace_bundle(load_bundle(data))
    assert engine.cache_info() == {"exact": 0, "normalised": 0}
    assert engine.decide(identity="alice", sql="SELECT 1").action == "block"


VARIANTS = [
    ("SELECT email FROM customers WHERE id = {n} LIMIT {m}", "allow"),
    ("SELECT c.id, c.ssn FROM customers c WHERE c.name = '{s}' AND c.id > -{n}", "allow"),
    ("UPDATE orders SET note = '{s}' WHERE id = {n}", "allow"),
    ("DELETE FROM orders WHERE {n} = {m}", "review"),
    ("INSERT INTO orders (id, note) VALUES ({n}, '{s}')", "allow"),
    ("UPDATE customers SET name = '{s}' WHERE ssn = '{s}'", "block"),
    ("SELECT p.card_number FROM payments p WHERE p.amount > {n}.5 LIMIT {m}", "allow"),
    ("SELECT id FROM orders WHERE id = {n} FETCH FIRST {m} ROWS ONLY", "allow"),
]


@pytest.mark.parametrize(
    ("first", "second", "action"),
    [
        ("DELETE FROM orders WHERE id + 1 = id + 1", "DELETE FROM orders WHERE id + 1 = id + 2",
         "allow"),
        ("DELETE FROM orders WHERE note LIKE 'a%'", "DELETE FROM orders WHERE note LIKE '%'",
         "review"),
        ("SELECT set_config('statement_timeout', '1', false)",
         "SELECT set_config('role', 'postgres', false)", "block"),
        ("SET statement_timeout = 5", "SET role = 'postgres'", "block"),
    ],
)  # fmt: skip
def test_literals_that_matter_bypass_the_normalised_cache(
    production: Bundle, first: str, second: str, action: str
) -> None:
    engine = Engine(production)
    engine.decide(identity="alice", sql=first)
    assert engine.decide(identity="alice", sql=second).action == action


@pytest.mark.parametrize(("template", "action"), VARIANTS)
def test_normalised_cache_equals_fresh_decision(
    production: Bundle, template: str, action: str
) -> None:
    warm = Engine(production)
    warm.decide(identity="alice", sql=template.format(n=1, m=2, s="a"))
    for n, m, s in [(7, 300, "it''s"), (12345, 1, "ünï"), (0, 0, ""), (99, 21, "x y z")]:
        sql = template.format(n=n, m=m, s=s)
        cached = warm.decide(identity="alice", sql=sql)
        fresh = Engine(production).decide(identity="alice", sql=sql)
        assert cached.to_json() == fresh.to_json()
        assert cached.action == action
        assert cached.cached or "FETCH" in sql, "served from the normalised cache"
    assert warm.cache_info()["normalised"] >= (0 if "FETCH" in template else 1)


# Literal slots for the property below. Values include literals whose kind
# changes what the statement means: LIMIT bounds that are not plain integers
# (ALL, NULL, a string, a hex integer), E-strings with escapes next to plain
# strings, dollar quotes, and "literals" that are really identifiers (a column
# in place of a number), which must never be served from another text's entry.
_INTS = st.integers(min_value=-(2**70), max_value=2**70).map(str)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
_STRINGS = st.one_of(
    _TEXT.map(lambda t: "'" + t.replace("'", "''") + "'"),
    _TEXT.map(lambda t: "E'" + t.replace("\\", "\\\\").replace("'", "\\'") + "'"),
    _TEXT.filter(lambda t: "$" not in t).map(lambda t: "$$" + t + "$$"),
)
_VALUES = st.one_of(
    _INTS,
    _STRINGS,
    st.sampled_from(["1.5", "-0.0", "1e3", "0x1F", "1_000", "TRUE", "NULL", "id", "ssn"]),
    st.sampled_from(["email", "c.ssn", "(SELECT ssn FROM customers LIMIT 1)"]),
)
_LIMITS = st.one_of(_INTS, st.sampled_from(["ALL", "NULL", "'5'", "0x10", "1_0", "5 OFFSET 2"]))
_SHAPES = [
    "SELECT email FROM customers WHERE id = {a} LIMIT {limit}",
    "SELECT c.id, c.ssn FROM customers c WHERE c.name = {a} AND c.id > {b}",
    "UPDATE orders SET note = {a} WHERE id = {b}",
    "DELETE FROM orders WHERE {a} = {b}",
    "INSERT INTO orders (id, note) VALUES ({a}, {b})",
    "SELECT p.card_number FROM payments p WHERE p.amount > {a} /* {b} */ LIMIT {limit}",
    "SELECT id, note FROM orders WHERE note = {a} ORDER BY {b} LIMIT {limit}",
]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    shape=st.sampled_from(_SHAPES),
    first=st.tuples(_VALUES, _VALUES, _LIMITS),
    second=st.tuples(_VALUES, _VALUES, _LIMITS),
)
def test_normalised_cache_equals_fresh_decision_for_any_literals(
    production: Bundle, shape: str, first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    # The comment slot in one shape is filled with a literal's text on purpose:
    # comments are not structure, so that text must not change the decision.
    def text(values: tuple[str, str, str]) -> str:
        a, b, limit = values
        return shape.format(a=a, b=b.replace("*/", ""), limit=limit)

    warm = Engine(production)
    warm.decide(identity="alice", sql=text(first))
    sql = text(second)
    cached = warm.decide(identity="alice", sql=sql)
    fresh = Engine(production).decide(identity="alice", sql=sql)
    assert cached.to_json() == fresh.to_json()
    assert cached.upstream_sql == fresh.upstream_sql


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    shape=st.sampled_from(_SHAPES),
    ints=st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    strings=st.tuples(_STRINGS, _STRINGS),
)
def test_same_kind_literals_are_served_from_the_normalised_cache(
    production: Bundle, shape: str, ints: tuple[int, int], strings: tuple[str, str]
) -> None:
    # The property above holds trivially if nothing is ever served from the
    # cache; here the literals keep their kind, so the hit must happen.
    def text(n: int, s: str) -> str:
        return shape.format(a=s, b=n, limit=n)

    warm = Engine(production)
    first = warm.decide(identity="alice", sql=text(1, "'x'"))
    sql = text(ints[1], strings[1].replace("*/", ""))
    cached = warm.decide(identity="alice", sql=sql)
    assert cached.to_json() == Engine(production).decide(identity="alice", sql=sql).to_json()
    # Comments are kept in the normalised key, so a new comment is a new entry;
    # ORDER BY <n> names a column by position, so it is never a template.
    uncached = "/*" in shape or "ORDER BY" in shape
    if first.action != "block" and strings[1].startswith("'") and not uncached:
        assert cached.cached, "served from the normalised cache"


def test_unknown_protocol_is_a_programming_error(production: Bundle) -> None:
    with pytest.raises(ValueError):
        Engine(production).decide(identity="alice", sql="SELECT 1", protocol="copy")


def test_expiry_uses_the_given_clock(production: Bundle) -> None:
    data = copy.deepcopy(bundle_data("demo-production"))
    data["identities"][0]["expires_at"] = "2030-01-01T00:00:00Z"
    data["revision"] = compute_revision(data)
    engine = Engine(load_bundle(data))
    assert engine.decide(identity="alice", sql="SELECT 1", now=1.0e9).action == "allow"
    assert engine.decide(identity="alice", sql="SELECT 1", now=2.0e9).action == "block"


def test_session_flag_off_blocks_backslashes(production: Bundle) -> None:
    engine = Engine(production)
    off = SessionContext(standard_conforming_strings=False)
    assert engine.decide(identity="alice", sql="SELECT 'a\\'", session=off).action == "block"
    assert engine.decide(identity="alice", sql="SELECT 'a\\'").action == "allow"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_engine_imports_without_django() -> None:
    code = (
        "import sys; sys.modules['django'] = None\n"
        "import sidecar.engine, sidecar.cli\n"
        "assert not [m for m in sys.modules if m.startswith('django') and sys.modules[m]]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), cwd=ROOT)


def test_cli_check_prints_the_decision() -> None:
    bundle = str(BUNDLES / "demo-production.json")
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--bundle", bundle, "--identity", "alice",
         "--sql", "SELECT email FROM customers WHERE id = 1"],
        capture_output=True, text=True, env=_env(), cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["action"] == "allow"
    assert data["statements"][0]["lineage"][0]["classifications"] == ["pii.email"]
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--bundle", bundle, "--identity", "alice",
         "--sql", "-"],
        input="DROP TABLE orders", capture_output=True, text=True, env=_env(), cwd=ROOT,
        check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert json.loads(out.stdout)["reasons"][0]["rule"] == "no-drop-in-prod"
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--bundle", "/nonexistent.json",
         "--identity", "alice", "--sql", "SELECT 1"],
        capture_output=True, text=True, env=_env(), cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "cannot read bundle" in out.stderr


def test_parse_errors_do_not_echo_literals(production: Bundle) -> None:
    d = Engine(production).decide(identity="alice", sql="SELECT 1 'person1.secret@x.org' FROMM t")
    assert d.action == "block"
    assert "person1" not in json.dumps(d.to_json(audit=True))
    assert "syntax error at character" in d.reasons[0].message


def test_audit_form_carries_no_literals(production: Bundle) -> None:
    sql = "SELECT email FROM customers WHERE ssn = '101-41-5037'"
    d = Engine(production).decide(identity="alice", sql=sql)
    assert "101-41-5037" in json.dumps(d.to_json())
    data = d.to_json(audit=True)
    assert "101-41-5037" not in json.dumps(data)
    assert data["upstream_sql"] is None and data["statements"][0]["rewritten_sql"] is None


def test_replace_bundle_is_atomic_under_concurrent_decisions(production: Bundle) -> None:
    import threading

    data = copy.deepcopy(bundle_data("demo-production"))
    data["masking_rules"][0]["exempt_teams"] = ["dpo", "analysts"]  # alice sees emails
    data["revision"] = compute_revision(data)
    relaxed = load_bundle(data)
    engine = Engine(production)
    sql = "SELECT email, ssn FROM customers WHERE id = 1"
    seen: list[tuple[str, bool]] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            d = engine.decide(identity="alice", sql=sql)
            seen.append((d.revision, 'AS "email"' not in d.upstream_sql))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        engine.replace_bundle(relaxed if i % 2 else production)
    stop.set()
    for t in threads:
        t.join()
    # Each decision is wholly of one bundle: email unmasked exactly under the relaxed one.
    assert seen and all((rev == relaxed.revision) == raw for rev, raw in seen)


def test_an_unlisted_function_needs_a_guardrail_that_names_it_and_applies() -> None:
    # A user function is not a built-in: refused by default. A guardrail naming it
    # allows it only where the guardrail's other conditions hold too (here: reads of
    # orders), and the call becomes a barrier (it may change session state).
    data = copy.deepcopy(bundle_data("demo-production"))
    data["guardrails"].insert(
        0,
        {
            "name": "allow-note-count-on-orders",
            "position": 0,
            "enabled": True,
            "action": "allow",
            "message": "",
            "conditions": {"functions": ["note_count"], "tables": ["orders"]},
        },
    )
    data["revision"] = compute_revision(data)
    engine = Engine(load_bundle(data))
    alone = engine.decide(identity="alice", sql="SELECT note_count()")
    assert alone.action == "block"
    assert alone.reasons[0].rule == "default.function.unlisted"
    named = engine.decide(identity="alice", sql="SELECT note_count() FROM orders")
    assert named.action == "allow" and named.barrier
    schema_qualified = engine.decide(
        identity="alice", sql="SELECT public.lower(status) FROM orders"
    )
    assert schema_qualified.action == "block"
    assert "default.function.unlisted" in [r.rule for r in schema_qualified.reasons]


def _two_customers_tables() -> Bundle:
    # hr.customers shadows public.customers by name: an unqualified name is ambiguous.
    data = copy.deepcopy(bundle_data("demo-production"))
    data["schema"]["tables"].append(
        {
            "schema": "hr",
            "name": "customers",
            "kind": "table",
            "columns": [{"name": "id", "type": "integer"}, {"name": "ssn", "type": "text"}],
        }
    )
    data["revision"] = compute_revision(data)
    return load_bundle(data)


def test_ambiguous_names_are_sent_with_the_schema_they_were_decided_for() -> None:
    # The server may look a name up again later (a portal, PREPARE, COPY, a trigger that
    # changes the search_path): the text sent upstream names the table that was decided.
    engine = Engine(_two_customers_tables())
    under_hr = SessionContext(search_path=("pg_catalog", "hr", "public"))
    d = engine.decide(identity="alice", sql="SELECT ssn FROM customers c", session=under_hr)
    assert d.action == "allow"
    assert d.upstream_sql == 'SELECT ssn FROM "hr".customers c'
    copy_out = engine.decide(
        identity="alice", sql="COPY customers (ssn) TO STDOUT", session=under_hr
    )
    assert copy_out.upstream_sql == 'COPY "hr".customers (ssn) TO STDOUT'
    insert = engine.decide(
        identity="alice", sql="INSERT INTO customers VALUES (1, 'x')", session=under_hr
    )
    assert insert.upstream_sql == "INSERT INTO \"hr\".customers VALUES (1, 'x')"
    # Under public the same text reads the masked public table, through its subquery.
    under_public = SessionContext(search_path=("pg_catalog", "public", "hr"))
    masked = engine.decide(identity="alice", sql="SELECT ssn FROM customers", session=under_public)
    assert 'FROM "public"."customers") AS "customers"' in masked.upstream_sql
    assert masked.statements[0].tables_read == ("public.customers",)
    # A name that exists in one schema only is left as the client wrote it.
    plain = engine.decide(identity="alice", sql="SELECT id FROM orders", session=under_hr)
    assert plain.upstream_sql == "SELECT id FROM orders"


def test_errors_of_statements_on_masked_tables_are_marked_for_redaction(production: Bundle) -> None:
    # A NOT NULL or unique violation's DETAIL quotes the raw row or key.
    engine = Engine(production)
    write = engine.decide(identity="alice", sql="UPDATE customers SET name = NULL WHERE id = 1")
    assert write.redact_errors
    assert not engine.decide(
        identity="alice", sql="UPDATE orders SET status = 'x' WHERE id = 1"
    ).redact_errors


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        # What follows a barrier in the same text would be read before the server
        # confirms the change: the barrier must come last.
        ("SET search_path = public; SELECT ssn FROM customers", "session.barrier_not_last"),
        (
            "SELECT set_config('client_encoding', 'LATIN1', false); SELECT 1",
            "session.barrier_not_last",
        ),
        # A barrier that would run later, out of the proxy's sight.
        (
            "PREPARE p AS SELECT set_config('search_path', 'public', false)",
            "session.deferred_barrier",
        ),
        (
            "DECLARE c CURSOR FOR SELECT set_config('search_path', 'public', false)",
            "session.deferred_barrier",
        ),
        (
            "CREATE VIEW v AS SELECT set_config('search_path', 'public', false)",
            "session.deferred_barrier",
        ),
        # Defaults of the role every identity shares would come back with RESET.
        ("ALTER ROLE CURRENT_USER SET search_path = pg_temp", "floor.role_setting"),
        ("ALTER DATABASE app SET standard_conforming_strings = off", "floor.role_setting"),
        # pg_settings is updatable: an UPDATE of it is set_config by another name.
        (
            "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
            "session.catalog_write",
        ),
    ],
)
def test_session_state_rules(production: Bundle, sql: str, rule: str) -> None:
    d = Engine(production).decide(identity="bob", sql=sql)
    assert d.action == "block", d.to_json()
    assert rule in [r.rule for r in d.reasons]


def test_a_barrier_last_in_its_text_is_allowed_and_marked(production: Bundle) -> None:
    d = Engine(production).decide(identity="bob", sql="SELECT 1; SET search_path = public")
    assert d.action == "allow" and d.barrier
    assert not Engine(production).decide(identity="bob", sql="SET statement_timeout = 5").barrier


def test_redaction_removes_comments_and_utility_literals(production: Bundle) -> None:
    d = Engine(production).decide(
        identity="alice",
        sql="PREPARE p AS SELECT id FROM customers WHERE ssn = '111-22-3333' -- 222-33-4444",
    )
    text = d.statements[0].redacted_sql
    assert "111-22-3333" not in text and "222-33-4444" not in text and "--" not in text
    assert text.startswith("PREPARE p AS SELECT id FROM customers WHERE ssn = $")


def _allow_everything(**extra: Any) -> dict[str, Any]:
    data = copy.deepcopy(bundle_data("demo-production"))
    data["guardrails"].insert(
        0,
        {
            "name": "allow-everything",
            "position": 0,
            "enabled": True,
            "action": "allow",
            "message": "",
            "conditions": {},
        },
    )
    data.update(extra)
    data["revision"] = compute_revision(data)
    return data


FLOOR = [
    ("COPY (SELECT 1) TO PROGRAM 'touch /tmp/x'", "floor.copy_server_side"),
    ("COPY orders FROM '/etc/passwd'", "floor.copy_server_side"),
    ("SELECT pg_read_binary_file('/etc/hostname')", "floor.server_access"),
    ("SELECT lo_import('/etc/hostname')", "floor.server_access"),
    ("SELECT dblink_connect('host=evil')", "floor.remote_server"),
    ("LOAD 'plpython3u'", "floor.server_access"),
    ("ALTER SYSTEM SET log_statement = 'none'", "floor.server_config"),
    ("CREATE SERVER evil FOREIGN DATA WRAPPER postgres_fdw", "floor.remote_server"),
    ("CREATE USER MAPPING FOR CURRENT_USER SERVER evil", "floor.remote_server"),
    ("CREATE SUBSCRIPTION s CONNECTION 'host=evil' PUBLICATION p", "floor.remote_server"),
    ("SET ROLE postgres", "floor.role_switch"),
    ("SET SESSION AUTHORIZATION postgres", "floor.role_switch"),
    ("SELECT set_config('role', 'postgres', false)", "floor.role_switch"),
    ("ALTER ROLE CURRENT_USER SET search_path = pg_temp", "floor.role_setting"),
]


@pytest.mark.parametrize(("sql", "rule"), FLOOR)
def test_the_safety_floor_holds_under_an_allow_everything_guardrail(sql: str, rule: str) -> None:
    d = Engine(load_bundle(_allow_everything())).decide(identity="bob", sql=sql)
    assert d.action == "block", d.to_json()
    assert rule in [r.rule for r in d.reasons]


def test_a_break_glass_grant_lifts_the_floor_rules_it_names_for_its_identity() -> None:
    grant = {
        "id": "bg-1",
        "identity": "bob",
        "rules": ["floor.copy_server_side"],
        "expires_at": "2030-01-01T00:00:00Z",
    }
    engine = Engine(load_bundle(_allow_everything(break_glass=[grant])))
    sql = "COPY orders TO '/tmp/orders.csv'"
    used = engine.decide(identity="bob", sql=sql)
    assert used.action == "allow" and used.break_glass == ("bg-1",)
    assert used.to_json()["break_glass"] == ["bg-1"]
    # Only the rules it names, only for its identity, only until it expires.
    assert engine.decide(identity="bob", sql="SET ROLE postgres").action == "block"
    assert engine.decide(identity="alice", sql=sql).action == "block"
    after = datetime.datetime(2030, 1, 2, tzinfo=datetime.UTC).timestamp()
    assert engine.decide(identity="bob", sql=sql, now=after).action == "block"
