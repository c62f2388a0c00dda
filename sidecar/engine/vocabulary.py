"""The policy vocabulary: every name a policy author may write, defined once.

The engine owns these names: it produces the statement kinds and categories,
applies the masking strategies within their parameter bounds, ranks the
classification levels and takes the actions. The control plane imports this
module for its model choices, form choices and validators, so what a policy
author is offered is what the engine does. ``bundle.schema.json`` repeats
the enumerations the bundle carries; tests/sidecar/engine/test_vocabulary.py
fails when it disagrees with this module, and when a kind offered here is one
the engine never reports (or the reverse: the ``call`` guardrail that never
matched).

Standard library only: the control plane's models import it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# -- actions ------------------------------------------------------------------------------
# In increasing severity: when several rules decide, the most severe wins.
ACTIONS = ("allow", "review", "block")
SEVERITY = {action: index for index, action in enumerate(ACTIONS)}

# -- classification levels ------------------------------------------------------------------
# In increasing sensitivity.
LEVELS = ("public", "internal", "confidential", "restricted")

# -- statement kinds and categories ------------------------------------------------------------
UNKNOWN = "unknown"  # a statement the engine does not understand: kind and category
UNPARSEABLE = "unparseable"  # text PostgreSQL's parser refuses: kind and category
# ``notify``: LISTEN/NOTIFY/UNLISTEN. ``maintenance``: server upkeep (CHECKPOINT,
# CLUSTER, REINDEX, and the floor's ALTER SYSTEM and LOAD). ``code``: code the engine
# cannot see into (DO blocks, procedures). ``role``: roles and role membership.
CATEGORIES = (
    "read", "write", "ddl", "session", "transaction", "utility", "notify", "maintenance",
    "code", "role", UNKNOWN, UNPARSEABLE,
)  # fmt: skip

# Statement node -> (kind, category). A node missing here is (unknown, unknown).
NODE_KINDS: dict[str, tuple[str, str]] = {
    "SelectStmt": ("select", "read"),
    "InsertStmt": ("insert", "write"),
    "UpdateStmt": ("update", "write"),
    "DeleteStmt": ("delete", "write"),
    "MergeStmt": ("merge", "write"),
    "TransactionStmt": ("transaction", "transaction"),
    "VariableSetStmt": ("set", "session"),
    "VariableShowStmt": ("show", "session"),
    "DiscardStmt": ("discard", "session"),
    "ExplainStmt": ("explain", "read"),
    "CopyStmt": ("copy_to", "read"),  # the analysis refines both by direction
    "PrepareStmt": ("prepare", "utility"),
    "ExecuteStmt": ("execute", "utility"),
    "DeallocateStmt": ("deallocate", "utility"),
    "DeclareCursorStmt": ("declare_cursor", "read"),
    "FetchStmt": ("fetch", "utility"),
    "ClosePortalStmt": ("close_cursor", "utility"),
    "LockStmt": ("lock", "utility"),
    "TruncateStmt": ("truncate", "ddl"),
    "DropStmt": ("drop", "ddl"),
    "CreateStmt": ("create_table", "ddl"),
    "CreateTableAsStmt": ("create_table_as", "ddl"),
    "AlterTableStmt": ("alter_table", "ddl"),
    "IndexStmt": ("create_index", "ddl"),
    "ViewStmt": ("create_view", "ddl"),
    "RenameStmt": ("rename", "ddl"),
    "CreateSchemaStmt": ("create_schema", "ddl"),
    "CreateSeqStmt": ("create_sequence", "ddl"),
    "AlterSeqStmt": ("alter_sequence", "ddl"),
    "CommentStmt": ("comment", "ddl"),
    "CreateEnumStmt": ("create_type", "ddl"),
    "AlterEnumStmt": ("alter_type", "ddl"),
    "CompositeTypeStmt": ("create_type", "ddl"),
    "CreateDomainStmt": ("create_domain", "ddl"),
    "RefreshMatViewStmt": ("refresh_materialized_view", "ddl"),
    "CreateFunctionStmt": ("create_function", "ddl"),
    "RuleStmt": ("create_rule", "ddl"),
    "CreateTrigStmt": ("create_trigger", "ddl"),
    "CreatePolicyStmt": ("create_policy", "ddl"),
    "VacuumStmt": ("vacuum", "ddl"),
    "GrantStmt": ("grant", "ddl"),
    # Code the engine cannot see into: refused to identities with masked columns
    # (``mask.opaque_code``), blocked in production and held elsewhere unless a
    # guardrail allows it; a procedure is also a function a guardrail must name.
    "CallStmt": ("call", "code"),
    "DoStmt": ("do", "code"),
    # Nothing about reading or security: allowed by default everywhere.
    "ConstraintsSetStmt": ("set_constraints", "transaction"),
    "ListenStmt": ("listen", "notify"),
    "UnlistenStmt": ("unlisten", "notify"),
    "NotifyStmt": ("notify", "notify"),
    # Server upkeep: reviewed in production. ALTER SYSTEM and LOAD are the floor's.
    "CheckPointStmt": ("checkpoint", "maintenance"),
    "ClusterStmt": ("cluster", "maintenance"),
    "ReindexStmt": ("reindex", "maintenance"),
    "AlterSystemStmt": ("alter_system", "maintenance"),
    "LoadStmt": ("load", "maintenance"),
    # Roles: blocked in production, held elsewhere unless a guardrail allows them.
    # (ALTER ROLE ... SET is the floor's: it changes what every session starts with.)
    "CreateRoleStmt": ("create_role", "role"),
    "AlterRoleStmt": ("alter_role", "role"),
    "AlterRoleSetStmt": ("alter_role_set", "role"),
    "DropRoleStmt": ("drop_role", "role"),
    "GrantRoleStmt": ("grant_role", "role"),
    "ReassignOwnedStmt": ("reassign_owned", "role"),
    "DropOwnedStmt": ("drop_owned", "ddl"),
    # Definitions of database objects: reviewed in production like other DDL. The
    # foreign-server, user-mapping and subscription ones are the floor's.
    "AlterCollationStmt": ("alter_collation", "ddl"),
    "AlterDatabaseRefreshCollStmt": ("alter_database", "ddl"),
    "AlterDatabaseStmt": ("alter_database", "ddl"),
    "AlterDatabaseSetStmt": ("alter_database_set", "ddl"),
    "AlterDefaultPrivilegesStmt": ("alter_default_privileges", "ddl"),
    "AlterDomainStmt": ("alter_domain", "ddl"),
    "AlterEventTrigStmt": ("alter_event_trigger", "ddl"),
    "AlterExtensionContentsStmt": ("alter_extension", "ddl"),
    "AlterExtensionStmt": ("alter_extension", "ddl"),
    "AlterFdwStmt": ("alter_foreign_data_wrapper", "ddl"),
    "AlterForeignServerStmt": ("alter_server", "ddl"),
    "AlterFunctionStmt": ("alter_function", "ddl"),
    "AlterObjectDependsStmt": ("alter_object_depends", "ddl"),
    "AlterObjectSchemaStmt": ("alter_object_schema", "ddl"),
    "AlterOpFamilyStmt": ("alter_operator_family", "ddl"),
    "AlterOperatorStmt": ("alter_operator", "ddl"),
    "AlterOwnerStmt": ("alter_owner", "ddl"),
    "AlterPolicyStmt": ("alter_policy", "ddl"),
    "AlterPublicationStmt": ("alter_publication", "ddl"),
    "AlterStatsStmt": ("alter_statistics", "ddl"),
    "AlterSubscriptionStmt": ("alter_subscription", "ddl"),
    "AlterTSConfigurationStmt": ("alter_text_search", "ddl"),
    "AlterTSDictionaryStmt": ("alter_text_search", "ddl"),
    "AlterTableMoveAllStmt": ("alter_tablespace", "ddl"),
    "AlterTableSpaceOptionsStmt": ("alter_tablespace", "ddl"),
    "AlterTypeStmt": ("alter_type", "ddl"),
    "AlterUserMappingStmt": ("alter_user_mapping", "ddl"),
    "CreateAmStmt": ("create_access_method", "ddl"),
    "CreateCastStmt": ("create_cast", "ddl"),
    "CreateConversionStmt": ("create_conversion", "ddl"),
    "CreateEventTrigStmt": ("create_event_trigger", "ddl"),
    "CreateExtensionStmt": ("create_extension", "ddl"),
    "CreateFdwStmt": ("create_foreign_data_wrapper", "ddl"),
    "CreateForeignServerStmt": ("create_server", "ddl"),
    "CreateForeignTableStmt": ("create_foreign_table", "ddl"),
    "CreateOpClassStmt": ("create_operator_class", "ddl"),
    "CreateOpFamilyStmt": ("create_operator_family", "ddl"),
    "CreatePLangStmt": ("create_language", "ddl"),
    "CreatePublicationStmt": ("create_publication", "ddl"),
    "CreateRangeStmt": ("create_type", "ddl"),
    "CreateStatsStmt": ("create_statistics", "ddl"),
    "CreateSubscriptionStmt": ("create_subscription", "ddl"),
    "CreateTableSpaceStmt": ("create_tablespace", "ddl"),
    "CreateTransformStmt": ("create_transform", "ddl"),
    "CreateUserMappingStmt": ("create_user_mapping", "ddl"),
    "CreatedbStmt": ("create_database", "ddl"),
    # CREATE AGGREGATE, OPERATOR, COLLATION, TEXT SEARCH ..., a base TYPE.
    "DefineStmt": ("define", "ddl"),
    "DropSubscriptionStmt": ("drop_subscription", "ddl"),
    "DropTableSpaceStmt": ("drop_tablespace", "ddl"),
    "DropUserMappingStmt": ("drop_user_mapping", "ddl"),
    "DropdbStmt": ("drop_database", "ddl"),
    "ImportForeignSchemaStmt": ("import_foreign_schema", "ddl"),
    "SecLabelStmt": ("security_label", "ddl"),
}
# Kinds the analysis reads from a statement's details rather than its node type.
EXPLAIN_ANALYZE = "explain_analyze"
CREATE_MATERIALIZED_VIEW = "create_materialized_view"
SELECT_INTO = "select_into"
COPY_FROM, COPY_TO = "copy_from", "copy_to"
REFINED_KINDS = (EXPLAIN_ANALYZE, CREATE_MATERIALIZED_VIEW, SELECT_INTO, COPY_FROM, COPY_TO)

# Every kind a decision reports, in the order policy authors see them.
STATEMENT_KINDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [*(kind for kind, _ in NODE_KINDS.values()), *REFINED_KINDS, UNKNOWN, UNPARSEABLE]
    )
)

# The control plane's coarser names: the compiler widens each to the engine kinds it
# covers (a guardrail on "explain" there means any EXPLAIN, analysed or not).
KIND_GROUPS: dict[str, tuple[str, ...]] = {
    "copy": (COPY_TO, COPY_FROM),
    "explain": ("explain", EXPLAIN_ANALYZE),
}

# What a guardrail's ``statement_kinds`` may name in the control plane: a guardrail
# matches a statement whose kind or category is listed (after KIND_GROUPS widen).
GUARDRAIL_STATEMENT_KINDS: tuple[str, ...] = tuple(
    dict.fromkeys([*CATEGORIES, *STATEMENT_KINDS, *KIND_GROUPS])
)


def engine_statement_kinds(name: str) -> tuple[str, ...]:
    """The engine kinds or categories a control-plane statement kind stands for."""
    return KIND_GROUPS.get(name, (name,))


# -- masking strategies ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntParameter:
    """An integer parameter of a masking strategy, with its inclusive bounds."""

    name: str
    minimum: int
    maximum: int
    default: int  # what the engine applies when a bundle leaves it out
    required: bool  # the control plane insists on it being written

    def accepts(self, value: object) -> bool:
        # bool is an int in Python; a JSON true is not a count.
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.minimum <= value <= self.maximum
        )


# partial keeps the last N characters of a text value and stars the rest. At least
# one (keeping none is redact under another name); at most 16, the length of a card
# number: keeping more shows most of the values the mask is there to hide.
KEEP_LAST = IntParameter("keep_last", minimum=1, maximum=16, default=4, required=True)

# Strategy -> its parameters (none for most). Order: as offered to policy authors.
MASKING_STRATEGIES: dict[str, tuple[IntParameter, ...]] = {
    "redact": (),
    "partial": (KEEP_LAST,),
    "email": (),
    "hash": (),
    "null": (),
    "year_only": (),
    "free_text": (),
}
MASKING_PARAMETERS: tuple[IntParameter, ...] = tuple(
    dict.fromkeys(p for parameters in MASKING_STRATEGIES.values() for p in parameters)
)

# A built-in classification's default mask: (strategy, params), or None for "not
# masked". The control plane compiles it into a bundle's ``masking_rules`` for every
# built-in classification its columns use when no masking rule covers that
# classification in the datasource's environment, so a fresh install needs no rule
# and the engine stays generic (docs/masking.md, "Default masks"). Each keeps the
# column usable where it can: the domain of an e-mail, the last four characters of
# a number people recognise by them; what has no safe part (secrets, health, dates
# of birth, IP addresses) is NULL. A custom classification keeps its level's default.
DEFAULT_MASKS: dict[str, tuple[str, dict[str, int]] | None] = {
    "pii.email": ("email", {}),
    "pii.phone": ("partial", {KEEP_LAST.name: 4}),
    "pii.name": ("redact", {}),
    "pii.address": ("redact", {}),
    "pii.dob": ("null", {}),
    "pii.ssn": ("partial", {KEEP_LAST.name: 4}),
    "pii.national_id": ("partial", {KEEP_LAST.name: 4}),
    "pii.free_text": ("free_text", {}),
    "financial.card": ("partial", {KEEP_LAST.name: 4}),
    "financial.iban": ("partial", {KEEP_LAST.name: 4}),
    "secret.token": ("null", {}),
    "secret.password": ("null", {}),
    "network.ip": ("null", {}),
    "health.record": ("null", {}),
    "general.internal": None,
    "general.public": None,
}


def default_masking_rule(classification: str) -> dict[str, Any] | None:
    """The bundle ``masking_rules`` entry of ``classification``'s default mask (it
    applies in every environment and exempts nobody), or None when it has none."""
    default = DEFAULT_MASKS.get(classification)
    if default is None:
        return None
    strategy, params = default
    return {
        "classification": classification,
        "strategy": strategy,
        "params": dict(params),
        "exempt_teams": [],
        "environments": [],
    }
