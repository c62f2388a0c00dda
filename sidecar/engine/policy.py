"""Built-in policy: the safe defaults, the function and setting rules, and the risk score.

Rule ids name their layer. ``floor.*``: reaching the server's files,
processes or configuration; ``mask.*``: a non-exempt identity may not move
classified data beyond the reach of the rewrite, nor read statement text or
sampled values; ``session.*``: the session state statements are read under
(``sidecar.engine.state``). No guardrail lifts those. ``default.*`` are the
rules that hold with zero configuration (``sidecar.engine.rules``); guardrails
from the bundle (``sidecar.engine.guardrails``) are evaluated before them, and
an unlisted function (``default.function.unlisted``) is allowed only by a
guardrail that names it. See ``Engine`` for the order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.engine import functions, state
from sidecar.engine.analysis import OPAQUE_CODE, VALUE_BLIND_DDL, Analysis
from sidecar.engine.bundle import Bundle, Identity, Masking
from sidecar.engine.decision import Reason
from sidecar.engine.masking import RESERVED_SCHEMA

# Settings a client may change freely; the tracked ones (client_encoding,
# standard_conforming_strings, search_path) only to the values
# ``sidecar.engine.state`` allows. Anything else (role, session_authorization,
# session_replication_role, ...) weakens the session's safety, so it is refused
# whatever the guardrails say.
SAFE_SETTINGS = frozenset(
    {
        "application_name", "client_min_messages", "datestyle",
        "intervalstyle", "timezone", "extra_float_digits", "bytea_output", "statement_timeout",
        "lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout",
        "transaction_timeout", "work_mem", "maintenance_work_mem", "temp_buffers",
        "default_transaction_isolation", "default_transaction_read_only",
        "default_transaction_deferrable", "transaction_isolation", "transaction_read_only",
        "transaction_deferrable", "transaction", "session characteristics", "jit",
        "random_page_cost", "seq_page_cost", "cpu_tuple_cost", "cpu_index_tuple_cost",
        "cpu_operator_cost", "effective_cache_size", "join_collapse_limit",
        "from_collapse_limit", "plan_cache_mode", "max_parallel_workers_per_gather",
        "lc_monetary", "lc_numeric", "lc_time", "xmloption", "synchronous_commit",
        "default_text_search_config", "cursor_tuple_fraction", "geqo", "constraint_exclusion",
        "enable_seqscan", "enable_indexscan", "enable_bitmapscan", "enable_hashjoin",
        "enable_mergejoin", "enable_nestloop", "enable_sort", "enable_hashagg",
        "enable_material", "enable_partitionwise_join", "enable_partitionwise_aggregate",
        "enable_indexonlyscan", "enable_parallel_hash", "enable_memoize",
        "enable_incremental_sort", "enable_partition_pruning", "enable_tidscan",
        "enable_gathermerge", "enable_parallel_append", "enable_async_append",
        "enable_presorted_aggregate", "array_nulls", "escape_string_warning",
        "default_with_oids", "check_function_bodies", "gin_fuzzy_search_limit",
        "quote_all_identifiers",
        # Off, a query that a row security policy would filter fails instead of
        # reading more (pg_dump and pg_restore set it): it can only narrow reads.
        "row_security",
        # Set by pg_dump, pg_restore and psql -f of a dump: where new objects go
        # and how they are stored, the order of a scan, a restriction on which
        # relations a query may use. None changes what a statement reads.
        "synchronize_seqscans", "default_tablespace", "default_table_access_method",
        "restrict_nonsystem_relation_kind",
    }
)  # fmt: skip
# Table functions whose rows come only from their arguments.
SAFE_TABLE_FUNCTIONS = frozenset(
    {
        "generate_series", "generate_subscripts", "unnest", "json_each", "json_each_text",
        "jsonb_each", "jsonb_each_text", "json_array_elements", "json_array_elements_text",
        "jsonb_array_elements", "jsonb_array_elements_text", "json_to_record",
        "json_to_recordset", "jsonb_to_record", "jsonb_to_recordset", "json_object_keys",
        "jsonb_object_keys", "json_populate_record", "json_populate_recordset",
        "jsonb_populate_record", "jsonb_populate_recordset", "jsonb_path_query",
        "regexp_matches", "regexp_split_to_table", "string_to_table", "pg_get_keywords",
        "pg_options_to_table",
    }
)  # fmt: skip
# Catalog relations that expose sampled values or other sessions' statement text.
VALUE_CATALOGS = frozenset(
    {
        "pg_statistic", "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic_ext_data",
        "pg_stat_statements", "pg_stat_activity", "pg_prepared_statements", "pg_cursors",
        "pg_largeobject",
    }
)  # fmt: skip
LEVEL_RISK = {"public": 0, "internal": 8, "confidential": 20, "restricted": 30}
IDENTITY_RISK = {"human": 0, "service": 5, "agent": 15}
CATEGORY_RISK = {
    "write": 15, "ddl": 30, "maintenance": 20, "role": 40, "code": 50, "unknown": 50,
    "unparseable": 50,
}  # fmt: skip


def function_base(name: str) -> str:
    return name.rsplit(".", 1)[-1]


_ROLE_DEFAULTS = (
    "floor.role_setting",
    # Defaults of the role every identity shares: RESET would bring them back.
    "changing a role's or a database's default settings is not allowed through Warden",
)
# Statements that reach beyond the database's data: the safety floor. No guardrail
# lifts them; only a break-glass grant naming the rule does, for one identity.
FLOOR_STATEMENTS: dict[str, tuple[str, str]] = {
    "AlterRoleSetStmt": _ROLE_DEFAULTS,
    "AlterDatabaseSetStmt": _ROLE_DEFAULTS,
    "AlterSystemStmt": ("floor.server_config", "ALTER SYSTEM changes the server's configuration"),
    "LoadStmt": ("floor.server_access", "LOAD loads a library into the server process"),
    "CreateTableSpaceStmt": (
        "floor.server_access",
        "CREATE TABLESPACE places data in a directory of the server's file system",
    ),
    **dict.fromkeys(
        (
            "CreateForeignServerStmt",
            "AlterForeignServerStmt",
            "CreateUserMappingStmt",
            "AlterUserMappingStmt",
            "DropUserMappingStmt",
            "CreateFdwStmt",
            "AlterFdwStmt",
            "ImportForeignSchemaStmt",
            "CreateSubscriptionStmt",
            "AlterSubscriptionStmt",
            "DropSubscriptionStmt",
        ),
        (
            "floor.remote_server",
            "foreign servers, user mappings and subscriptions connect the database to "
            "other servers",
        ),
    ),
}
# Settings whose change is role switching: the floor, not the settings allowlist.
# (RESET ROLE and SET ... TO DEFAULT go back to the login's own role: allowed.)
ROLE_SETTINGS = frozenset({"role", "session_authorization"})
_ROLE_SWITCH = (
    "floor.role_switch",
    "switching roles (SET ROLE, SESSION AUTHORIZATION) would act with another role's rights",
)


@dataclass(slots=True)
class StatementRules:
    """What the function, setting and reserved-schema rules found in one statement."""

    hard: list[Reason] = field(default_factory=list)  # no guardrail lifts these
    unlisted: list[str] = field(default_factory=list)  # functions a guardrail must name
    barrier: bool = False  # may change the session state later statements are read under
    dangerous: bool = False  # reaches for the server: weighs in the risk score


def statement_rules(a: Analysis, bundle: Bundle) -> StatementRules:
    """Functions by category, settings by allowlist, the reserved schema, barriers."""
    out = StatementRules()
    if a.reserved_schema:
        out.hard.append(
            Reason(
                "mask.reserved_schema",
                f"the schema {RESERVED_SCHEMA} belongs to Warden's masking and may not be used",
            )
        )
    for name in dict.fromkeys(a.functions):
        category = functions.category(name)
        base = function_base(name)
        if category in functions.INERT_CATEGORIES:
            continue
        if base.startswith("dblink"):  # the extension's connect and query functions
            out.dangerous = True
            out.hard.append(Reason("floor.remote_server", f"{base}() connects to another server"))
            continue
        if category == functions.STATEMENT_TEXT:
            out.hard.append(
                Reason(
                    "mask.statement_text",
                    f"{base}() reads statement text or sampled values, which can carry "
                    "other sessions' literals and classified data",
                )
            )
        elif category == functions.DYNAMIC_SQL:
            out.hard.append(
                Reason(
                    "mask.dynamic_sql",
                    f"{base}() runs SQL given as text, which masking cannot see into",
                )
            )
        elif category == functions.SERVER_ACCESS or (
            category == functions.SESSION_STATE and base != "set_config"
        ):
            out.dangerous = True
            out.hard.append(
                Reason(
                    "floor.server_access",
                    f"{base}() reaches the server's files, processes, configuration or "
                    "other sessions",
                )
            )
        elif category is None:
            out.unlisted.append(name)
    refusal: str | None
    for given, value in a.set_config_calls:
        setting = (given or "").lower()
        if given is None:
            refusal = "set_config() with a computed setting name"
        elif setting in state.TRACKED_SETTINGS:
            refusal = state.set_config_refusal(value, setting, bundle)
            out.barrier = True
        elif setting in SAFE_SETTINGS:
            refusal = None
        elif setting in ROLE_SETTINGS:
            out.dangerous = True
            out.hard.append(Reason(*_ROLE_SWITCH))
            continue
        else:
            refusal = f"changing the setting {setting!r} is not allowed"
        if refusal is not None:
            out.dangerous = True
            out.hard.append(Reason("session.setting", refusal))
    if a.setting is not None:
        if a.setting.get("name") in ROLE_SETTINGS and a.setting.get("kind") not in (
            "VAR_RESET",
            "VAR_SET_DEFAULT",
        ):
            out.dangerous = True
            out.hard.append(Reason(*_ROLE_SWITCH))
        else:
            refusal = _setting_refusal(a.setting, bundle, out)
            if refusal is not None:
                out.hard.append(Reason("session.setting", refusal))
    if a.node_type in ("DiscardStmt", "DoStmt", "CallStmt"):
        out.barrier = True
    floor = FLOOR_STATEMENTS.get(a.node_type)
    if floor is not None:
        out.dangerous = True
        out.hard.append(Reason(*floor))
    if a.copy is not None and a.copy["target"] != "client":
        out.dangerous = True
        out.hard.append(
            Reason(
                "floor.copy_server_side",
                f"COPY {a.copy['direction'].upper()} a server {a.copy['target']} reaches "
                "the server's files or processes",
            )
        )
    for ref in a.ranges:
        # pg_settings is updatable: an UPDATE of it is set_config by another name.
        # No other catalog relation is writable by an unprivileged role either.
        if ref.role == "write" and (
            ref.schema in ("pg_catalog", "information_schema")
            or (ref.schema is None and ref.table is None and ref.relname.startswith("pg_"))
        ):
            out.hard.append(
                Reason(
                    "session.catalog_write",
                    f"writing to the system catalog relation {ref.relname} is not allowed "
                    "(pg_settings would change settings)",
                )
            )
            break
    return out


def _setting_refusal(setting: dict[str, Any], bundle: Bundle, out: StatementRules) -> str | None:
    kind, name = setting.get("kind"), setting.get("name", "")
    if kind == "VAR_RESET_ALL":
        out.barrier = True
        return None
    if kind == "VAR_SET_MULTI":  # SET TRANSACTION / SESSION CHARACTERISTICS
        return None
    if name in state.TRACKED_SETTINGS:
        out.barrier = True
        if kind == "VAR_SET_VALUE":
            return state.setting_refusal(name, list(setting.get("values", [])), bundle)
        return None  # RESET, DEFAULT, FROM CURRENT: a value the session already had
    if kind in ("VAR_RESET", "VAR_SET_DEFAULT") or name in SAFE_SETTINGS:
        return None  # back to the login's own defaults (RESET ROLE included) is safe
    return f"changing the setting {name or kind!r} is not allowed"


def statement_risk(
    a: Analysis,
    bundle: Bundle,
    identity: Identity,
    unmasked_levels: Sequence[str],
    masked_levels: Sequence[str],
    missing_where: bool,
    unbounded: bool,
    dangerous: bool,
) -> int:
    """Risk 0..100 from criticality, statement kind, data touched, identity and scope."""
    risk = bundle.criticality * 6
    risk += CATEGORY_RISK.get(a.category, 0)
    if a.kind in ("drop", "truncate"):
        risk += 15
    if missing_where:
        risk += 20
    # Masked data leaves the database masked: it weighs half.
    risk += max(
        [LEVEL_RISK[level] for level in unmasked_levels]
        + [LEVEL_RISK[level] // 2 for level in masked_levels]
        + [0]
    )
    risk += IDENTITY_RISK.get(identity.kind, 0)
    if unbounded:
        risk += 10
    if dangerous:
        risk += 40
    return max(0, min(100, risk))


def masking_violations(
    a: Analysis, masked_tables: Mapping[str, Mapping[str, Masking]], identity_masks_anything: bool
) -> list[tuple[str, str]]:
    """(rule, message) for statements that would let classified data escape the rewrite.

    ``masked_tables``: table key -> its columns masked for the identity, for every
    table of ``a`` that has any (``StatementFacts.masked``)."""
    out: list[tuple[str, str]] = []
    for write in a.writes:
        table = write.target.table
        if table is None:
            continue
        masked = masked_tables.get(table.key)
        if not masked:
            continue
        names = {
            write.target.alias or write.target.relname,
            write.target.relname,
            *write.returning_aliases,
        }
        if write.returns_whole_row:
            out.append(
                (
                    "mask.write_returning",
                    f"RETURNING the whole row of {table.key} would return classified values",
                )
            )
        for parts in write.oracle_refs:
            column = parts[-1]
            qualifier = parts[-2] if len(parts) >= 2 else None
            whole_row = (len(parts) == 1 and column in names) or (
                column == "*" and (qualifier is None or qualifier in names)
            )
            if whole_row or (column in masked and (qualifier is None or qualifier in names)):
                out.append(
                    (
                        "mask.write_oracle",
                        f"this {write.kind} reads classified data of {table.key}, the table "
                        "it writes, which masking cannot cover",
                    )
                )
                break
    if a.node_type in OPAQUE_CODE and identity_masks_anything:
        touched = [r for r in a.ranges if r.table and r.table.key in masked_tables]
        if touched or a.node_type != "ViewStmt":
            out.append(
                (
                    "mask.opaque_definition",
                    "creating a view, function, rule, trigger or policy could read classified "
                    "data outside the reach of masking",
                )
            )
    elif a.category == "ddl" and a.node_type not in VALUE_BLIND_DDL:
        for ref in a.ranges:
            if ref.role == "ddl" and ref.table and ref.table.key in masked_tables:
                out.append(
                    (
                        "mask.ddl_on_classified",
                        f"changing the definition of {ref.table.key}, which holds classified "
                        "columns, could expose or unmask them",
                    )
                )
                break
    if a.node_type in ("DoStmt", "CallStmt") and identity_masks_anything:
        out.append(
            ("mask.opaque_code", "anonymous code blocks and procedures can read classified data")
        )
    if identity_masks_anything:
        for name in a.table_functions:
            if function_base(name) not in SAFE_TABLE_FUNCTIONS:
                out.append(
                    (
                        "mask.opaque_table_function",
                        f"the table function {name}() may return data masking cannot see",
                    )
                )
                break
    # A function of a built-in's name (or an operator) in another schema runs in place
    # of the built-in wherever its argument types fit better: SELECT upper('a'::varchar)
    # calls public.upper(varchar) before pg_catalog.upper(text). Every identity signs in
    # as the same database role, so what one defines every other would run, under the
    # name the allowlist lets through (a review's finding). Whoever asks.
    if a.defines_operator or (
        a.defines_routine is not None and functions.category(a.defines_routine) is not None
    ):
        what = "an operator" if a.defines_operator else f"a function named {a.defines_routine}"
        out.append(
            (
                "mask.builtin_shadow",
                f"{what} would run in place of PostgreSQL's own wherever its argument types "
                "fit better, for every identity",
            )
        )
    # Other sessions' statement text carries their literals whoever asks.
    for ref in a.ranges:
        if ref.relname in VALUE_CATALOGS and ref.schema in (None, "pg_catalog", "public"):
            out.append(
                ("mask.value_catalog", f"{ref.relname} exposes sampled values or statement text")
            )
            break
    return out
