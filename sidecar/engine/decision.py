"""The engine's output types: Decision, Reason, StatementAnalysis, SessionContext.

``Decision.to_json()`` is the stable JSON form used by the CLI, the audit
trail and the control plane's simulator. Keys are sorted; its fields are
documented in ``docs/bundle-format.md`` ("Decision JSON"). Fields may be
added, never removed or renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sidecar.engine.vocabulary import ACTIONS, SEVERITY

__all__ = ["ACTIONS", "SEVERITY", "Decision", "Reason", "SessionContext", "StatementAnalysis"]


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What the proxy knows about the client's session when a statement arrives."""

    standard_conforming_strings: bool = True
    in_transaction: bool = False
    # The effective schemas (``current_schemas(true)``) the server confirmed for the
    # session; None: the datasource's search_path from the bundle.
    search_path: tuple[str, ...] | None = None


class ClientError(NamedTuple):
    """The error PostgreSQL itself would answer, for a text the engine refuses the
    way the server would (a syntax error): sent to the client as it is, never
    stored (the parser's message may quote the text)."""

    sqlstate: str
    message: str
    position: int | None  # 1-based, in characters, as the server reports it


@dataclass(frozen=True, slots=True)
class Reason:
    rule: str  # a guardrail's name, or a built-in rule id such as "default.unknown_statement"
    message: str

    def to_json(self) -> dict[str, str]:
        return {"message": self.message, "rule": self.rule}


@dataclass(frozen=True, slots=True)
class StatementAnalysis:
    kind: str
    category: str
    tables_read: tuple[str, ...]
    tables_written: tuple[str, ...]
    columns_read: tuple[str, ...]
    functions: tuple[str, ...]
    classifications: tuple[str, ...]
    masked_columns: tuple[str, ...]
    has_effective_where: bool | None
    row_bound: int | None
    rewritten_sql: str | None
    fingerprint: str
    redacted_sql: str
    data_modifying_cte: bool = False
    explain_analyze: bool = False
    copy: dict[str, Any] | None = None
    lineage: tuple[dict[str, Any], ...] | None = None
    # {"transaction": "begin"|"commit"|...} or {"setting": {kind, name, local}};
    # setting values are left out (they are literals).
    session: dict[str, Any] | None = None
    # Of ``masked_columns``, those masked only provisionally (a finding nobody has
    # reviewed yet); and the provisional columns it reads that were left unmasked
    # because the identity is a service ("would have masked", for the audit trail).
    provisional_columns: tuple[str, ...] = ()
    would_have_masked: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "classifications": list(self.classifications),
            "columns_read": list(self.columns_read),
            "copy": self.copy,
            "data_modifying_cte": self.data_modifying_cte,
            "explain_analyze": self.explain_analyze,
            "fingerprint": self.fingerprint,
            "functions": list(self.functions),
            "has_effective_where": self.has_effective_where,
            "kind": self.kind,
            "lineage": None if self.lineage is None else list(self.lineage),
            "masked_columns": list(self.masked_columns),
            "provisional_columns": list(self.provisional_columns),
            "redacted_sql": self.redacted_sql,
            "rewritten_sql": self.rewritten_sql,
            "row_bound": self.row_bound,
            "session": self.session,
            "tables_read": list(self.tables_read),
            "tables_written": list(self.tables_written),
            "would_have_masked": list(self.would_have_masked),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    action: str
    reasons: tuple[Reason, ...]
    risk: int
    statements: tuple[StatementAnalysis, ...]
    upstream_sql: str
    message: str
    critical: bool = False
    identity: str = ""
    revision: str = ""
    # The text may change the session state statements are read under
    # (``sidecar.engine.state``): what follows waits for the server to confirm it.
    barrier: bool = False
    # The text touches a table with columns masked for this identity: the server's
    # error details (a failing row, a duplicate key) may carry their raw values.
    redact_errors: bool = False
    # Break-glass grants that lifted safety-floor rules for this decision (ids).
    break_glass: tuple[str, ...] = ()
    # Set when the text is refused as the server would refuse it (a syntax error,
    # several statements in one Parse): the client gets this error, not Warden's.
    error: ClientError | None = None
    # What the client is told to do about a refusal (PostgreSQL's HINT): the
    # deciding guardrail's own text, which its authors wrote for that case.
    hint: str = ""
    cached: bool = field(default=False, compare=False)

    def to_json(self, *, audit: bool = False) -> dict[str, Any]:
        """The stable JSON form. ``upstream_sql`` and ``rewritten_sql`` carry the
        client's literals; ``audit=True`` nulls them, leaving ``redacted_sql``,
        for anything that is stored (the audit trail, approval requests)."""
        statements = []
        for s in self.statements:
            item = s.to_json()
            item["rewritten_sql"] = None if audit else s.rewritten_sql
            statements.append(item)
        return {
            "action": self.action,
            "barrier": self.barrier,
            "break_glass": list(self.break_glass),
            "critical": self.critical,
            "identity": self.identity,
            "message": self.message,
            "reasons": [r.to_json() for r in self.reasons],
            "revision": self.revision,
            "risk": self.risk,
            "statements": statements,
            "upstream_sql": None if audit else self.upstream_sql,
        }
