"""Built-in policy: the safe defaults, the function and setting lists, and the risk score.

These are the rules that hold with zero configuration (rule ids start with
``default.``) and the masking invariants that no guardrail can lift (rule ids
start with ``mask.``): a non-exempt identity may not move classified data
beyond the reach of the rewrite. Guardrails from the bundle are evaluated
before the defaults; see ``Engine`` for the order.
"""

from __future__ import annotations

from sidecar.engine.analysis import OPAQUE_CODE, VALUE_BLIND_DDL, Analysis
from sidecar.engine.bundle import Bundle, Identity

# Functions that reach the server's files, processes or other servers.
FILE_PROCESS_FUNCTIONS = frozenset(
    {
        "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_ls_logdir", "pg_ls_waldir",
        "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir", "pg_ls_replslotdir", "pg_stat_file", "lo_import", "lo_export",
        "pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync", "pg_logdir_ls",
        "pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend", "pg_reload_conf",
        "pg_rotate_logfile", "pg_promote", "pg_switch_wal", "pg_create_restore_point",
        "pg_backup_start", "pg_backup_stop", "pg_start_backup", "pg_stop_backup",
        "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
        "pg_drop_replication_slot", "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot", "pg_logical_slot_get_changes",
        "pg_logical_slot_peek_changes", "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_peek_binary_changes", "pg_replication_slot_advance",
        "pg_logical_emit_message", "pg_import_system_collations", "pg_wal_replay_pause",
        "pg_wal_replay_resume", "pg_log_backend_memory_contexts", "pg_current_logfile",
        "postgres_fdw_disconnect", "postgres_fdw_disconnect_all",
    }
)  # fmt: skip
FILE_PROCESS_PREFIXES = ("dblink",)
# Functions that run SQL given as text: the rewrite cannot see into them.
DYNAMIC_SQL_FUNCTIONS = frozenset(
    {
        "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml",
        "cursor_to_xmlschema", "table_to_xml", "table_to_xmlschema",
        "table_to_xml_and_xmlschema", "schema_to_xml", "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema", "database_to_xml", "database_to_xmlschema",
        "database_to_xml_and_xmlschema", "ts_stat", "ts_rewrite", "xpath_table",
        "crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby",
    }
)  # fmt: skip
# Settings a client may change; anything else (role, session_authorization,
# search_path, row_security, session_replication_role, ...) weakens the
# session's safety or the engine's name resolution, so it is refused.
SAFE_SETTINGS = frozenset(
    {
        "application_name", "client_encoding", "client_min_messages", "datestyle",
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
        "quote_all_identifiers", "standard_conforming_strings",
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
# Functions that return statement text, which for a rewritten statement includes
# the masking expressions and the datasource's masking key.
STATEMENT_TEXT_FUNCTIONS = frozenset(
    {
        "current_query",
        "pg_stat_get_activity",
        "pg_stat_statements",
        "pg_get_backend_memory_contexts",
    }
)
LEVEL_RISK = {"public": 0, "internal": 8, "confidential": 20, "restricted": 30}
IDENTITY_RISK = {"human": 0, "service": 5, "agent": 15}
CATEGORY_RISK = {"write": 15, "ddl": 30, "unknown": 50, "unparseable": 50}


def function_base(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def function_reason(name: str) -> tuple[str, str] | None:
    """(rule, message) when calling ``name`` is refused by default."""
    base = function_base(name)
    if base in FILE_PROCESS_FUNCTIONS or base.startswith(FILE_PROCESS_PREFIXES):
        return (
            "default.function.server_access",
            f"function {base}() reaches the server's files, processes or other servers",
        )
    if base in DYNAMIC_SQL_FUNCTIONS:
        return ("default.function.dynamic_sql", f"function {base}() runs SQL given as text")
    return None


def setting_reason(a: Analysis) -> tuple[str, str] | None:
    """(rule, message) when a SET/RESET statement is refused."""
    setting = a.setting or {}
    kind, name = setting.get("kind"), setting.get("name", "")
    if kind in ("VAR_RESET_ALL", "VAR_RESET", "VAR_SET_DEFAULT"):
        return None  # back to the server's defaults, which are safe
    if name == "standard_conforming_strings":
        values = [str(v).lower() for v in setting.get("values", [])]
        if kind == "VAR_SET_VALUE" and values != ["on"]:
            return (
                "default.setting",
                "standard_conforming_strings may only be set to on (it changes how "
                "every later statement is read)",
            )
        return None
    if name in SAFE_SETTINGS:
        return None
    return ("default.setting", f"changing the setting {name or kind!r} is not allowed")


def statement_risk(
    a: Analysis,
    bundle: Bundle,
    identity: Identity,
    unmasked_levels: list[str],
    masked_levels: list[str],
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
    a: Analysis, bundle: Bundle, identity: Identity, identity_masks_anything: bool
) -> list[tuple[str, str]]:
    """(rule, message) for statements that would let classified data escape the rewrite."""
    out: list[tuple[str, str]] = []
    for write in a.writes:
        table = write.target.table
        if table is None:
            continue
        masked = bundle.masked_columns_for(identity, table)
        if not masked:
            continue
        names = {write.target.alias or write.target.relname, write.target.relname}
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
        touched = [r for r in a.ranges if r.table and bundle.masked_columns_for(identity, r.table)]
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
            if ref.role == "ddl" and ref.table and bundle.masked_columns_for(identity, ref.table):
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
        for name in a.functions:
            if function_base(name) in STATEMENT_TEXT_FUNCTIONS:
                out.append(
                    (
                        "mask.statement_text",
                        f"{function_base(name)}() returns statement text, which carries the "
                        "masking expressions",
                    )
                )
                break
        for ref in a.ranges:
            if ref.relname in VALUE_CATALOGS and ref.schema in (None, "pg_catalog", "public"):
                out.append(
                    (
                        "mask.value_catalog",
                        f"{ref.relname} exposes sampled values or statement text",
                    )
                )
                break
    return out
