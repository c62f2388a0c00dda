"""The engine's own rules, one small function each: facts in, a typed outcome or None out.

The shape is a plugin's (as in pgcat's query-router plugins): a rule reads the
statement's ``StatementFacts`` and the decision's ``Context`` and returns a
``Default`` (a ``default.*`` decision, used when no guardrail applies), a
``Reason`` (a hard block no guardrail lifts) or None when it has nothing to
say. ``Engine`` runs them in a fixed order, which is the order their reasons
appear in a decision. Outcomes whose text does not depend on the statement are
built once, here, so a rule that fires allocates nothing.

The function, setting and reserved-schema rules are ``policy.statement_rules``;
the masking invariants ``policy.masking_violations``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sidecar.engine import guardrails, vocabulary
from sidecar.engine.bundle import Bundle
from sidecar.engine.decision import ClientError, Reason, SessionContext
from sidecar.engine.facts import Context, StatementFacts
from sidecar.engine.policy import function_base

# Statements whose functions run when the statement does; anything else that
# holds a barrier would run it later, out of the proxy's sight.
RUNS_NOW = frozenset(
    {
        "SelectStmt",
        "InsertStmt",
        "UpdateStmt",
        "DeleteStmt",
        "MergeStmt",
        "ExplainStmt",
        "CopyStmt",
        "CreateTableAsStmt",
        "VariableSetStmt",
        "DiscardStmt",
        "DoStmt",
        "CallStmt",
    }
)


@dataclass(frozen=True, slots=True)
class Default:
    """A ``default.*`` decision: it counts only when no guardrail applies."""

    action: str
    reason: Reason


# -- the text as a whole ----------------------------------------------------------------

BACKSLASH_ESCAPES = Reason(
    "default.backslash_escapes",
    "standard_conforming_strings is off and the text contains a "
    "backslash; Warden does not analyse legacy string escapes",
)
EXTENDED_MULTI_STATEMENT = Reason(
    "default.extended_multi_statement",
    "the extended protocol carries exactly one statement per Parse",
)
BARRIER_NOT_LAST = Reason(
    "session.barrier_not_last",
    "a statement that may change session state must be the last one in its "
    "text: what follows it is judged under the state the server confirms",
)
HASH_UNAVAILABLE = Reason(
    "mask.hash_unavailable",
    "hash masking is not installed in this database; an administrator must "
    "run `python -m sidecar install-masking --config FILE --admin-dsn DSN`",
)
ANALYSIS_FAILED = Reason("default.analysis_failed", "Warden could not analyse this statement")
REWRITE_NOT_PLACED = Reason(
    "mask.rewrite_failed", "Warden could not place the masking rewrite in this statement"
)
REWRITE_NOT_VERIFIED = Reason(
    "mask.rewrite_failed", "the masked statement did not pass Warden's own check"
)


def backslash_escapes(sql: str, session: SessionContext) -> Reason | None:
    if not session.standard_conforming_strings and "\\" in sql:
        return BACKSLASH_ESCAPES
    return None


# What PostgreSQL answers to a Parse with several statements.
EXTENDED_MULTI_STATEMENT_ERROR = ClientError(
    "42601", "cannot insert multiple commands into a prepared statement", None
)


def extended_multi_statement(protocol: str, statements: int) -> Reason | None:
    return EXTENDED_MULTI_STATEMENT if protocol == "extended" and statements > 1 else None


def barrier_not_last(barriers: list[bool]) -> Reason | None:
    return BARRIER_NOT_LAST if any(barriers[:-1]) else None


def hash_unavailable(needed: bool) -> Reason | None:
    return HASH_UNAVAILABLE if needed else None


def unparseable(parse_error: str) -> Reason:
    """Refused everywhere, without a review: the server would refuse it too, and the
    client gets the parser's own error (``Decision.error``)."""
    return Reason("default.unparseable", f"the statement could not be parsed ({parse_error})")


# -- defaults per statement ------------------------------------------------------------------

_LOCK_IN_PRODUCTION = Default(
    "review",
    Reason(
        "default.lock_in_production",
        "LOCK TABLE in production can stop every other client: it needs a review",
    ),
)
_TRUNCATE_IN_PRODUCTION = Default(
    "review", Reason("default.truncate_in_production", "TRUNCATE in production needs a review")
)
_WRITE_WITHOUT_WHERE = Default(
    "review",
    Reason(
        "default.write_without_where",
        "a write without an effective WHERE in production needs a review",
    ),
)


UNKNOWN_STATEMENT = "default.unknown_statement"


def unknown_statement(f: StatementFacts, ctx: Context) -> Default | None:
    if f.category != vocabulary.UNKNOWN:
        return None
    return Default(
        "block" if ctx.production else "review",
        Reason(
            UNKNOWN_STATEMENT,
            f"{f.raw.node_type.removesuffix('Stmt')} statements are "
            "not on the list of statements Warden understands",
        ),
    )


def opaque_or_role(f: StatementFacts, ctx: Context) -> Default | None:
    """Code the engine cannot see into, and changes to roles: blocked in production,
    held elsewhere, unless a guardrail allows them."""
    if f.category == "code":
        message = f"{f.kind.upper()} runs code Warden cannot see into"
    elif f.category == "role":
        message = f"{f.kind.replace('_', ' ')} changes roles or what they may do"
    else:
        return None
    return Default(
        "block" if ctx.production else "review",
        Reason(f"default.{f.category}_statement", f"{message}: a guardrail must allow it"),
    )


def lock_in_production(f: StatementFacts, ctx: Context) -> Default | None:
    return _LOCK_IN_PRODUCTION if ctx.production and f.runs and f.kind == "lock" else None


def ddl_in_production(f: StatementFacts, ctx: Context) -> Default | None:
    if not (ctx.production and f.runs):
        return None
    if f.kind == "truncate":
        return _TRUNCATE_IN_PRODUCTION
    if f.category in ("ddl", "maintenance"):
        return Default(
            "review",
            Reason(f"default.{f.category}_in_production", f"{f.kind} in production needs a review"),
        )
    return None


def write_without_where(f: StatementFacts, ctx: Context) -> Default | None:
    return _WRITE_WITHOUT_WHERE if ctx.production and f.missing_where else None


StatementDefault = Callable[[StatementFacts, Context], Default | None]
STATEMENT_DEFAULTS: tuple[StatementDefault, ...] = (
    unknown_statement,
    opaque_or_role,
    lock_in_production,
    ddl_in_production,
    write_without_where,
)


def review_floor(f: StatementFacts) -> bool:
    """An allow-guardrail cannot lift this statement above review."""
    return f.category == vocabulary.UNKNOWN


# -- hard rules per statement ------------------------------------------------------------------

_COPY_BARRIER = Reason(
    "session.copy_barrier", "COPY FROM may not call code that changes session state"
)
_DEFERRED_BARRIER = Reason(
    "session.deferred_barrier",
    "a statement that changes session state may not be prepared, "
    "declared as a cursor or stored in a definition; run it directly",
)


def unlisted_function(f: StatementFacts, ctx: Context, name: str, multi: bool) -> Reason | None:
    """None when a guardrail that applies to the statement names the function, or,
    outside production and for an identity with nothing masked, when the first
    guardrail that applies allows the statement (a sandbox's allow rule covers
    what it calls; the function rule guards masking, which does not apply to
    that identity). Either way the statement is a barrier: the server confirms
    the session state after it."""
    if guardrails.names_function(ctx.bundle, ctx.who, name, f, multi):
        return None
    if (
        not ctx.production
        and not ctx.masks_anything
        and guardrails.first_allows(ctx.bundle, ctx.who, f, multi)
    ):
        return None
    return Reason(
        "default.function.unlisted",
        f"{function_base(name)}() is not on Warden's list of "
        "functions; a guardrail that names it can allow it",
    )


def copy_barrier(f: StatementFacts, barrier: bool) -> Reason | None:
    copy = f.analysis.copy
    if barrier and copy is not None and copy["direction"] == "from":
        return _COPY_BARRIER
    return None


def deferred_barrier(f: StatementFacts, barrier: bool) -> Reason | None:
    if barrier and f.runs and f.raw.node_type not in RUNS_NOW:
        return _DEFERRED_BARRIER
    return None


BarrierRule = Callable[[StatementFacts, bool], Reason | None]
BARRIER_RULES: tuple[BarrierRule, ...] = (copy_barrier, deferred_barrier)


# -- the risk score ------------------------------------------------------------------------------


def risk_threshold(bundle: Bundle, risk: int) -> Default | None:
    if risk >= bundle.block_at:
        return Default(
            "block", Reason("default.risk", f"risk {risk} is at or above {bundle.block_at}")
        )
    if risk >= bundle.review_at:
        return Default(
            "review", Reason("default.risk", f"risk {risk} is at or above {bundle.review_at}")
        )
    return None
