"""The function allowlist (sidecar.engine.functions) against real PostgreSQL 15 and 16.

Every listed name must exist in pg_catalog on both majors (names in SINCE_VERSION only from
their version on), every callable built-in must be listed or deliberately left out, and every
function that psql's \\d family, psycopg's type introspection and Django's introspection call
must be inert. One server is DATABASE_URL's; the other major is found at 127.0.0.1:5432 (15)
or started from the pgserver wheel in a temporary directory (16). A major that cannot be
reached is skipped with the reason.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pglast import parser as pg_parser
from psycopg import sql as pgsql

from sidecar.engine import functions
from sidecar.engine.functions import (
    CATALOG,
    DYNAMIC_SQL,
    FUNCTIONS,
    INERT_CATEGORIES,
    PURE,
    REFUSED_CATEGORIES,
    SERVER_ACCESS,
    SESSION_INFO,
    SESSION_STATE,
    SINCE_VERSION,
    STATEMENT_TEXT,
    category,
)

# The default server, and where a PostgreSQL 15 is looked for beside an embedded 16.
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MAJORS = (15, 16)
# pgserver's import asks platformdirs for a runtime directory, which warns without one.
pytestmark = pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR is not set")

# Callable built-ins deliberately not in the table (so refused), and why.
LEFT_OUT = {
    # Validators and catalog checks that only make sense inside DDL or for developers.
    "amvalidate": "validates an operator class",
    "fmgr_c_validator": "CREATE FUNCTION validator",
    "fmgr_internal_validator": "CREATE FUNCTION validator",
    "fmgr_sql_validator": "CREATE FUNCTION validator",
    "postgresql_fdw_validator": "foreign-data wrapper option validator",
    "xmlvalidate": "not implemented, always raises",
    # They change index state: maintenance, not reads.
    "brin_desummarize_range": "index maintenance",
    "brin_summarize_new_values": "index maintenance",
    "brin_summarize_range": "index maintenance",
    "gin_clean_pending_list": "index maintenance",
    # Reads a table's tuple versions by name (ODBC helper), beside the rewrite.
    "currtid2": "reads a table by name",
    # Only meaningful inside event triggers or extension scripts.
    "pg_event_trigger_ddl_commands": "event triggers only",
    "pg_event_trigger_dropped_objects": "event triggers only",
    "pg_event_trigger_table_rewrite_oid": "event triggers only",
    "pg_event_trigger_table_rewrite_reason": "event triggers only",
    "pg_extension_config_dump": "extension scripts only; changes pg_extension",
    # Type I/O and obsolete aggregate support.
    "enum_send": "binary output of enums",
    "int8_sum": "obsolete aggregate support",
    # pg_upgrade support present only in some 15.x minors.
    "binary_upgrade_set_next_attribute_versions": "pg_upgrade only",
}

# Callable functions in pg_catalog that are not support routines of a type, an index access
# method, an aggregate or an operator's estimators, and not an extension's.
CALLABLE_BUILTINS = """
WITH support AS (
    SELECT amproc AS oid FROM pg_amproc
    UNION SELECT unnest(ARRAY[aggtransfn, aggfinalfn, aggcombinefn, aggserialfn, aggdeserialfn,
                              aggmtransfn, aggminvtransfn, aggmfinalfn]::oid[]) FROM pg_aggregate
    UNION SELECT unnest(ARRAY[typinput, typoutput, typreceive, typsend, typmodin, typmodout,
                              typanalyze, typsubscript]::oid[]) FROM pg_type
    UNION SELECT unnest(ARRAY[oprrest, oprjoin]::oid[]) FROM pg_operator
)
SELECT DISTINCT p.proname
FROM pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace
  AND p.oid NOT IN (SELECT oid FROM support)
  AND NOT EXISTS (
      SELECT 1 FROM unnest(p.proargtypes::oid[] || p.prorettype) AS t(oid)
      WHERE t.oid IN ('internal'::regtype, 'cstring'::regtype, 'trigger'::regtype,
                      'event_trigger'::regtype, 'language_handler'::regtype,
                      'fdw_handler'::regtype, 'index_am_handler'::regtype,
                      'table_am_handler'::regtype, 'tsm_handler'::regtype)
  )
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  )
"""

# Objects for psql's \d family to describe: a table with defaults, checks, an expression
# index, a trigger, a policy and comments; identity and generated columns, statistics, a
# rule, a view, a materialized view, a partitioned table, a sequence, types and functions.
SCRATCH_SQL = """
CREATE TABLE customers (
    id serial PRIMARY KEY, email text NOT NULL UNIQUE, name varchar(80) DEFAULT 'x',
    created timestamptz DEFAULT now(), CHECK (length(email) > 3));
COMMENT ON TABLE customers IS 'people';
COMMENT ON COLUMN customers.email IS 'mail';
CREATE INDEX customers_lower_email ON customers (lower(email)) WHERE name IS NOT NULL;
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id int REFERENCES customers(id),
    total numeric(10, 2), total2 numeric GENERATED ALWAYS AS (total * 2) STORED);
CREATE STATISTICS orders_stats (dependencies) ON customer_id, total FROM orders;
CREATE VIEW customer_emails AS SELECT id, email FROM customers;
CREATE MATERIALIZED VIEW customer_count AS SELECT count(*) FROM customers;
CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE SEQUENCE counter;
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE FUNCTION add_one(i int) RETURNS int LANGUAGE sql AS 'SELECT i + 1';
CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER customers_trg BEFORE INSERT ON customers FOR EACH ROW EXECUTE FUNCTION trg();
CREATE RULE orders_rule AS ON UPDATE TO orders WHERE false DO INSTEAD NOTHING;
ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone ON customers USING (true);
SET client_min_messages = error;
CREATE PUBLICATION pub FOR TABLE customers;
CREATE SCHEMA app;
GRANT SELECT ON customers TO PUBLIC;
"""

PSQL_COMMANDS = r"""
\d customers
\d+ customers
\d orders
\d+ orders
\dt
\dt+
\di
\di+
\dv
\dv+
\dm+
\ds
\ds+
\df
\df+
\dn
\dn+
\du
\dg
\l
\l+
\dx
\dx+
\dT
\dT+
\dD
\d+ customer_emails
\d+ customer_count
\d+ events
\d+ events_2024
\d counter
\d+ customers_lower_email
\dp
\ddp
\dC
\dc
\do
\dy
\db+
\des
\dew
\det
\deu
\dF
\dFd
\dFp
\dFt
\dL
\dRp+
\dRs
\dX
\dconfig
\drds
\dA
\dAc
\dAf
\dAo
\dAp
\dO
\sf add_one
\sv customer_emails
"""
QUERY_BLOCK = re.compile(r"^\*{9} QUERY \*{10}\n(.*?)\n\*{26}$", re.S | re.M)

# Functions that drivers, ORMs and admin tools call outside what is captured here:
# pgjdbc and npgsql metadata, asyncpg and SQLAlchemy reflection, Rails' schema statements
# and advisory-locked migrations, pgAdmin's dashboard.
DRIVER_FUNCTIONS = (
    "pg_catalog.format_type", "pg_catalog.pg_get_expr", "pg_catalog.pg_get_indexdef",
    "pg_catalog.pg_get_constraintdef", "pg_catalog.pg_get_serial_sequence",
    "pg_catalog.pg_get_keywords", "pg_catalog.pg_get_function_result",
    "pg_catalog.pg_get_function_arguments", "pg_catalog.pg_get_function_identity_arguments",
    "pg_catalog.obj_description", "pg_catalog.col_description", "pg_catalog.generate_series",
    "pg_catalog.generate_subscripts", "pg_catalog.array_upper", "pg_catalog.array_position",
    "pg_catalog.pg_encoding_to_char", "pg_catalog.pg_table_is_visible",
    "pg_catalog.pg_type_is_visible", "pg_catalog.has_table_privilege",
    "pg_catalog.has_schema_privilege", "pg_catalog.pg_has_role", "pg_catalog.to_regclass",
    "pg_catalog.to_regtype", "pg_catalog.pg_relation_size", "pg_catalog.pg_total_relation_size",
    "pg_catalog.pg_size_pretty", "current_schema", "current_schemas", "current_database",
    "current_setting", "version", "pg_backend_pid", "pg_is_in_recovery",
    "pg_postmaster_start_time", "txid_current", "pg_current_xact_id", "array_agg", "unnest",
    "string_agg", "array_to_string", "pg_advisory_lock", "pg_try_advisory_lock",
    "pg_advisory_unlock", "pg_advisory_xact_lock", "nextval", "setval", "currval", "lastval",
    "now", "gen_random_uuid",
)  # fmt: skip

# The functions PostgreSQL's grammar emits for SQL syntax (COERCE_SQL_SYNTAX).
SYNTAX_SQL = """
SELECT EXTRACT(year FROM x), TRIM(x), TRIM(LEADING 'a' FROM x), TRIM(TRAILING FROM x),
    POSITION('a' IN x), SUBSTRING(x FROM 2 FOR 3), SUBSTRING(x SIMILAR 'a' ESCAPE '#'),
    x AT TIME ZONE 'UTC', x AT LOCAL, COLLATION FOR (x), OVERLAY(x PLACING 'a' FROM 1 FOR 2),
    x SIMILAR TO 'a', x NOT SIMILAR TO 'a' ESCAPE 'b', x LIKE 'a' ESCAPE 'b',
    x ILIKE 'a' ESCAPE 'b', NORMALIZE(x), NORMALIZE(x, NFD), x IS NORMALIZED,
    x IS NOT NFKC NORMALIZED, (a, b) OVERLAPS (c, d), XMLEXISTS('//a' PASSING x), SYSTEM_USER,
    TREAT(x AS int4)
"""


def _funcnames(sql: str) -> list[str]:
    """The dotted names of every FuncCall in ``sql``, as the engine's analysis writes them."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            call = node.get("FuncCall")
            if isinstance(call, dict):
                out.append(".".join(p["String"]["sval"] for p in call["funcname"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(pg_parser.parse_sql_json(sql)))
    return out


def _not_inert(names: list[str]) -> list[tuple[str, str | None]]:
    return sorted({(n, category(n)) for n in names if category(n) not in INERT_CATEGORIES})


def _major(url: str) -> int | None:
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            return conn.info.server_version // 10000
    except psycopg.OperationalError:
        return None


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, str]]:
    """Major version -> URL of a maintenance database on a server of that major."""
    found: dict[int, str] = {}
    url = os.environ.get("DATABASE_URL") or LOCAL_URL
    major = _major(url)
    if major is not None:
        found[major] = url
    if 15 not in found and (local := _major(LOCAL_URL)) is not None:
        found.setdefault(local, LOCAL_URL)
    embedded = None
    try:
        if 16 not in found:
            import pgserver  # the wheel's PostgreSQL 16, in a directory of our own

            directory = tmp_path_factory.mktemp("pg16")
            embedded = pgserver.get_server(str(directory), cleanup_mode="delete")
            uri = embedded.get_uri()
            if (version := _major(uri)) is not None:
                found.setdefault(version, uri)
        yield found
    finally:
        if embedded is not None:
            embedded.cleanup()


@pytest.fixture(params=MAJORS, ids=[f"pg{m}" for m in MAJORS])
def server(request: pytest.FixtureRequest, servers: dict[int, str]) -> tuple[int, str]:
    major: int = request.param
    if major not in servers:
        where = "at 127.0.0.1:5432" if major == 15 else "from the pgserver wheel"
        pytest.skip(f"no PostgreSQL {major} reachable ({where}); found {sorted(servers)}")
    return major, servers[major]


@pytest.fixture()
def scratch(server: tuple[int, str]) -> Iterator[str]:
    """A throw-away database with objects to describe on ``server``; its conninfo."""
    name = f"warden_fncat_{secrets.token_hex(4)}"
    dsn = psycopg.conninfo.make_conninfo(server[1], dbname=name)
    with psycopg.connect(server[1], autocommit=True) as admin:
        admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(SCRATCH_SQL)
            yield dsn
        finally:
            admin.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )


def _psql_binaries() -> list[str]:
    """pgserver's psql (16) and the system's psql, when that is another version."""
    from pgserver._commands import POSTGRES_BIN_PATH

    binaries = [str(POSTGRES_BIN_PATH / "psql")]
    system = shutil.which("psql")
    if system:
        versions = {
            subprocess.run([b, "--version"], capture_output=True, text=True, check=True).stdout
            for b in (binaries[0], system)
        }
        if len(versions) == 2:
            binaries.append(system)
    return binaries


# --- the table against the servers ------------------------------------------------------


def test_every_listed_name_exists(server: tuple[int, str]) -> None:
    major, url = server
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace"
        ).fetchall()
    present = {row[0] for row in rows}
    missing = sorted(n for n in FUNCTIONS if SINCE_VERSION.get(n, 0) <= major and n not in present)
    assert not missing, f"listed but not in pg_catalog on PostgreSQL {major}: {missing}"
    early = sorted(n for n, v in SINCE_VERSION.items() if v > major and n in present)
    assert not early, f"SINCE_VERSION is later than PostgreSQL {major}, which has: {early}"


def test_every_callable_builtin_is_classified(server: tuple[int, str]) -> None:
    major, url = server
    with psycopg.connect(url, autocommit=True) as conn:
        names = {row[0] for row in conn.execute(CALLABLE_BUILTINS).fetchall()}
    unclassified = sorted(names - FUNCTIONS.keys() - LEFT_OUT.keys())
    assert not unclassified, f"PostgreSQL {major} functions missing from the table: {unclassified}"


def test_psql_describe_queries_call_only_inert_functions(scratch: str) -> None:
    captured: list[str] = []
    for psql in _psql_binaries():
        result = subprocess.run(
            [psql, "-X", "-E", "-q", "-d", scratch, "-f", "-"],
            input=PSQL_COMMANDS,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5", "PAGER": "", "PGCLIENTENCODING": "UTF8"},
            check=False,
        )
        queries = QUERY_BLOCK.findall(result.stdout)
        assert len(queries) > 100, (psql, result.stderr[-2000:])
        captured += queries
    names = [name for query in captured for name in _funcnames(query)]
    assert len(set(names)) > 30
    assert not _not_inert(names)


def test_psycopg_type_introspection_calls_only_inert_functions(servers: dict[int, str]) -> None:
    from psycopg.types.composite import CompositeInfo
    from psycopg.types.enum import EnumInfo
    from psycopg.types.multirange import MultirangeInfo
    from psycopg.types.range import RangeInfo

    if not servers:
        pytest.skip("no PostgreSQL reachable")
    names: list[str] = []
    with psycopg.connect(next(iter(servers.values()))) as conn:
        for info in (psycopg.types.TypeInfo, CompositeInfo, EnumInfo, RangeInfo, MultirangeInfo):
            query = info._get_info_query(conn)
            if isinstance(query, bytes):
                query = query.decode()
            text = query if isinstance(query, str) else query.as_string(conn)
            names += _funcnames(text.replace("%(name)s", "'mood'"))
    assert "to_regtype" in names
    assert not _not_inert(names)


def test_django_introspection_calls_only_inert_functions() -> None:
    import django.db.backends.postgresql.introspection as introspection

    tree = ast.parse(Path(introspection.__file__).read_text("utf-8"))
    queries = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.search(r"\bSELECT\b", node.value)
    ]
    assert len(queries) >= 5
    names: list[str] = []
    for query in queries:
        # %s stands for a value, or (in "SELECT * FROM %s") for a table name.
        try:
            names += _funcnames(query.replace("%s", "$1"))
        except pg_parser.ParseError:
            names += _funcnames(query.replace("%s", "t"))
    assert {"pg_get_indexdef", "pg_catalog.pg_table_is_visible"} <= set(names)
    assert not _not_inert(names)


def test_driver_and_orm_functions_are_inert() -> None:
    assert not _not_inert(list(DRIVER_FUNCTIONS))


def test_sql_syntax_functions_are_listed() -> None:
    names = _funcnames(SYNTAX_SQL)
    assert {"pg_catalog.extract", "pg_catalog.timezone", "pg_catalog.like_escape"} <= set(names)
    assert not _not_inert(names)
    assert category("pg_catalog.system_user") == SESSION_INFO
    assert {category(n) for n in names} <= {PURE, SESSION_INFO}


# --- the table's own shape --------------------------------------------------------------


def test_category_of_written_names() -> None:
    assert category("lower") == PURE
    assert category("pg_catalog.lower") == PURE
    assert category("public.lower") is None
    assert category("mydb.pg_catalog.lower") is None
    assert category("my_func") is None
    assert category("pg_read_file") == SERVER_ACCESS
    assert category("pg_catalog.lo_import") == SERVER_ACCESS
    assert category("pg_prepared_statement") == STATEMENT_TEXT
    assert category("pg_stat_get_backend_activity") == STATEMENT_TEXT
    assert category("set_config") == SESSION_STATE
    assert category("query_to_xml") == DYNAMIC_SQL
    assert category("ts_rewrite") == DYNAMIC_SQL
    assert category("format_type") == CATALOG
    assert category("pg_show_all_settings") == SESSION_INFO


def test_categories_partition() -> None:
    assert not INERT_CATEGORIES & REFUSED_CATEGORIES
    assert set(FUNCTIONS.values()) == INERT_CATEGORIES | REFUSED_CATEGORIES
    assert set(SINCE_VERSION) <= set(FUNCTIONS)
    assert all(name == name.lower() and "." not in name for name in FUNCTIONS)


def test_each_name_in_one_sorted_category() -> None:
    """The source lists each category once, sorted, and no name twice (a dict merge hides it)."""
    tree = ast.parse(Path(functions.__file__).read_text("utf-8"))
    groups: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "fromkeys"
            and isinstance(node.args[0], ast.Tuple)
            and isinstance(node.args[1], ast.Name)
        ):
            names = [ast.literal_eval(element) for element in node.args[0].elts]
            assert node.args[1].id not in groups, f"{node.args[1].id} is listed twice"
            assert names == sorted(set(names)), f"{node.args[1].id}: not sorted or repeated"
            groups[node.args[1].id] = names
    seen: dict[str, str] = {}
    for group, names in groups.items():
        for name in names:
            assert name not in seen, f"{name} is in {seen[name]} and {group}"
            seen[name] = group
    assert len(seen) == len(FUNCTIONS)
