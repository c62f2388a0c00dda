"""The MCP tools: their JSON Schemas (docs/mcp.md) and what each one runs.

Every statement a tool runs goes through the caller's own proxied connection, so the
proxy decides, masks, holds or refuses it exactly as for any client. The engine is
asked here only for what a tool must know beforehand and for the schema tools: which
kind of statement a text is (``query`` runs reads, ``execute`` writes), what a
statement would mask for this identity, which tables a guardrail refuses it. A tool
never takes connection parameters, and never shows sampled values.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any

import jsonschema
import psycopg

from sidecar.engine import functions
from sidecar.engine.vocabulary import NODE_KINDS
from sidecar.mcp.agents import AgentSession, Caller, Limits
from sidecar.proxy.approvals import MAX_WAIT, ApprovalGate, ApprovalUnavailable
from sidecar.proxy.policy import ALLOW, BLOCK, Verdict

_STATEMENT = {
    "type": "string",
    "minLength": 1,
    "maxLength": 100_000,
    "description": "One SQL statement (PostgreSQL)",
}
TOOLS: dict[str, dict[str, Any]] = {
    "list_tables": {
        "description": (
            "List the datasource's tables and views with their column counts, how many "
            "columns are classified, and whether policy lets you read each one."
        ),
        "input_schema": {"type": "object", "properties": {}, "additionalProperties": False},
    },
    "describe_table": {
        "description": (
            "Describe one table: each column's type, its classification, and whether you "
            "read it masked. No values are shown."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "table": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 200,
                    "description": "schema.table, or a table name unique in the datasource",
                }
            },
            "required": ["table"],
            "additionalProperties": False,
        },
    },
    "query": {
        "description": (
            "Run one read statement (SELECT). Warden masks classified columns and refuses "
            "what policy forbids. Returns the columns with their types and the rows as "
            "JSON, at most the configured number of rows (truncated says when cut)."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"sql": _STATEMENT},
            "required": ["sql"],
            "additionalProperties": False,
        },
    },
    "explain": {
        "description": (
            "Show the planner's plan (EXPLAIN, JSON) of one statement, without running it."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"sql": _STATEMENT},
            "required": ["sql"],
            "additionalProperties": False,
        },
    },
    "execute": {
        "description": (
            "Run one write statement (INSERT, UPDATE, DELETE, MERGE, DDL) in its own "
            "transaction. When a reviewer must approve it, returns at once with status "
            "'held' and the approval request's id and URL: follow it with approval_status, "
            "and once approved call execute again with the same statement to run it."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"sql": _STATEMENT},
            "required": ["sql"],
            "additionalProperties": False,
        },
    },
    "approval_status": {
        "description": (
            "The state of an approval request an execute (or query) of yours opened: "
            "pending, approved, denied, expired or cancelled. Waits up to wait_seconds "
            "for it to leave pending."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 64},
                "wait_seconds": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT},
            },
            "required": ["id"],
            "additionalProperties": False,
        },
    },
}
_VALIDATORS = {
    name: jsonschema.Draft202012Validator(t["input_schema"]) for name, t in TOOLS.items()
}

_CATEGORY = dict(NODE_KINDS.values())
READ_KINDS = frozenset({"select", "show"})
EXPLAINABLE_KINDS = frozenset({"select", "insert", "update", "delete", "merge"})
WRITE_CATEGORIES = frozenset({"write", "ddl"})
SQLSTATE_HELD = "WR001"


class ToolError(Exception):
    """A call that ends in an MCP tool error: ``code`` for programs, ``message`` for
    people (the proxy's own message for its refusals)."""

    def __init__(self, code: str, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.sqlstate = sqlstate


@dataclass
class CallRecord:
    """What the audit event of one call says: never values, only the engine's facts."""

    tool: str
    action: str | None = None
    outcome: str = "allowed"
    rows: int | None = None
    sqlstate: str | None = None
    approval_request: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)


def validate(tool: str, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """The arguments checked against the tool's JSON Schema."""
    if tool not in TOOLS:
        raise ToolError("unknown_tool", f"there is no tool {tool!r}")
    args = dict(arguments or {})
    error = next(iter(_VALIDATORS[tool].iter_errors(args)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "arguments"
        raise ToolError("invalid_arguments", f"{where}: {error.message}")
    return args


def jsonable(value: Any) -> Any:
    """A database value as JSON: numbers and text as they are, exact numerics, times
    and identifiers as text, bytes in PostgreSQL's hex form."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal | uuid.UUID | timedelta):
        return str(value)
    if isinstance(value, datetime | date | time_of_day):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def facts_of(verdict: Verdict) -> dict[str, Any]:
    """The audit facts of a verdict (kind, redacted statement, tables, masked columns...)."""
    fragment = verdict.audit_fragment if verdict.audit_fragment is not None else None
    if fragment is None:
        return dict(verdict.audit)
    try:
        facts = json.loads("{" + fragment + "}")
    except ValueError:
        return {}
    return facts if isinstance(facts, dict) else {}


def _first_rule(facts: Mapping[str, Any]) -> str | None:
    reasons = facts.get("reasons") or []
    if reasons and isinstance(reasons[0], dict):
        rule = reasons[0].get("rule")
        return str(rule) if rule else None
    return None


def held_request(detail: str | None) -> dict[str, str] | None:
    """The approval request in a held statement's DETAIL (``sidecar.proxy.hold``):
    ``approval_request=<id> state=<state> url=<url>``."""
    if not detail or not detail.startswith("approval_request="):
        return None
    found: dict[str, str] = {}
    for part in detail.split(" "):
        key, _, value = part.partition("=")
        if key in ("approval_request", "state", "url"):
            found[key] = value
    if "approval_request" not in found:
        return None
    return {
        "id": found["approval_request"],
        "state": found.get("state", ""),
        "url": found.get("url", ""),
    }


class Toolbox:
    """Runs the tools for a caller. ``policy`` is the proxy's (``EnginePolicy``);
    ``approvals`` the sidecar's approvals client, or None when it has none."""

    def __init__(self, *, policy: Any, approvals: ApprovalGate | None, limits: Limits) -> None:
        self.policy = policy
        self.approvals = approvals
        self.limits = limits
        # Approval requests each identity's calls opened: approval_status reports on
        # these only (another identity's request ids are not its business).
        self._requests: dict[str, OrderedDict[str, str]] = {}

    # ---- the engine's view, for the schema tools and the tool's own checks ----

    def decide(self, caller: Caller, text: str) -> Verdict:
        verdict: Verdict = self.policy.decide(
            identity=caller.identity.name,
            sql=text,
            standard_conforming_strings=True,
            search_path=None,
            in_transaction=False,
            protocol="extended",
        )
        return verdict

    def _check_kind(self, verdict: Verdict, tool: str, facts: Mapping[str, Any]) -> None:
        """A tool runs only its own kind of statement; what the policy refuses is left
        to the proxy, which refuses it with the rule's message (and records it).

        No tool changes the session a later call runs in: the read-only default, the
        statement timeout and the application name the audit trail tags MCP calls
        with are set once, when the session connects. So no statement that changes a
        setting, whatever the engine allows a psql user (``set_config`` of a setting
        it judges harmless is neither a barrier nor of kind ``set``)."""
        if verdict.action == BLOCK or verdict.error is not None:
            return
        kinds = set(verdict.kinds)
        if verdict.multi:
            raise ToolError("one_statement", f"{tool} runs one statement at a time")
        if (
            verdict.barrier
            or kinds & {"set", "reset", "discard", "transaction"}
            or any(
                functions.category(str(f)) == functions.SESSION_STATE
                for f in facts.get("functions") or ()
            )
        ):
            raise ToolError(
                "wrong_tool",
                f"{tool} does not run statements that change the session or transaction",
            )
        if tool == "query" and (not kinds <= READ_KINDS or facts.get("tables_written")):
            # (A SELECT whose WITH inserts, updates or deletes is of kind select.)
            what = ", ".join(sorted(kinds))
            if facts.get("tables_written"):
                what += " that writes " + ", ".join(facts["tables_written"])
            raise ToolError(
                "wrong_tool",
                f"query runs read statements (SELECT); this is {what}: "
                "use execute for writes, explain for plans",
            )
        if tool == "explain" and not kinds <= EXPLAINABLE_KINDS:
            raise ToolError(
                "wrong_tool", "explain shows the plan of a SELECT, INSERT, UPDATE, DELETE or MERGE"
            )
        if tool == "execute":
            categories = {_CATEGORY.get(k, "") for k in kinds}
            if kinds & {"copy_from", "copy_to"} or not categories <= WRITE_CATEGORIES:
                raise ToolError(
                    "wrong_tool",
                    f"execute runs one write or DDL statement; this is {', '.join(sorted(kinds))}"
                    + (": use query for reads" if kinds <= READ_KINDS else ""),
                )

    # ---- the tools --------------------------------------------------------------

    async def run(
        self,
        tool: str,
        args: dict[str, Any],
        caller: Caller,
        session: AgentSession | None,
        record: CallRecord,
    ) -> dict[str, Any]:
        """The tool's answer; ``record`` (the call's audit facts) is filled in on the
        way, also when the call ends in a ``ToolError``."""
        record.outcome = "allowed"
        if tool == "list_tables":
            return self.list_tables(caller, record)
        if tool == "describe_table":
            return await self.describe_table(caller, session, str(args["table"]), record)
        if tool == "approval_status":
            wait = int(args.get("wait_seconds", 0))
            return await self.approval_status(caller, str(args["id"]), wait, record)
        assert session is not None
        text = str(args["sql"])
        if tool == "explain":
            verdict = self.decide(caller, text)
            self._check_kind(verdict, tool, facts_of(verdict))
            text = "EXPLAIN (FORMAT JSON) " + text
        verdict = self.decide(caller, text)
        record.action = verdict.action
        record.facts = facts_of(verdict)
        if tool != "explain":  # its statement was checked above; EXPLAIN itself reads
            self._check_kind(verdict, tool, record.facts)
        try:
            if tool == "execute":
                payload = await self._write(session, text, record)
            else:
                payload = await self._read(session, text, record)
        except psycopg.Error as exc:
            payload = self._refused(caller, exc, record)
        if tool == "explain" and "rows" in payload:
            rows = payload.pop("rows")
            payload = {"plan": rows[0][0] if rows and rows[0] else None}
        return payload

    def list_tables(self, caller: Caller, record: CallRecord) -> dict[str, Any]:
        bundle = self.policy.bundle()
        classified = bundle.column_classifications
        tables = []
        for table in sorted(bundle.tables.values(), key=lambda t: (t.schema, t.name)):
            access = self._access(caller, table)
            tables.append(
                {
                    "schema": table.schema,
                    "name": table.name,
                    "kind": table.kind,
                    "columns": len(table.columns),
                    "classified_columns": sum(
                        1 for c in table.columns if f"{table.key}.{c.name}" in classified
                    ),
                    **access,
                }
            )
        record.rows = len(tables)
        return {"datasource": bundle.datasource_name, "tables": tables}

    def _access(self, caller: Caller, table: Any) -> dict[str, Any]:
        """Whether policy lets this identity read the table: a whole-table read decided
        by the engine (masking never refuses one; a guardrail may)."""
        verdict = self.decide(
            caller, f"SELECT * FROM {quote_ident(table.schema)}.{quote_ident(table.name)}"
        )
        if verdict.action == ALLOW:
            return {"access": "allowed"}
        access = "blocked" if verdict.action == BLOCK else "review"
        return {"access": access, "message": verdict.message}

    async def describe_table(
        self, caller: Caller, session: AgentSession | None, name: str, record: CallRecord
    ) -> dict[str, Any]:
        bundle = self.policy.bundle()
        schema, _, table_name = name.rpartition(".")
        if schema:
            table = bundle.tables.get(f"{schema}.{table_name}")
        else:
            found = bundle.tables_by_name.get(table_name, ())
            table = found[0] if len(found) == 1 else None
            if len(found) > 1:
                schemas = ", ".join(sorted(t.schema for t in found))
                raise ToolError(
                    "ambiguous", f"{table_name} is in several schemas ({schemas}): name one"
                )
        if table is None:
            if not bundle.tables and session is not None:
                return await self._describe_from_catalog(
                    caller, session, schema, table_name, record
                )
            raise ToolError("unknown_table", f"no table {name!r} in this datasource's schema")
        qualified = f"{quote_ident(table.schema)}.{quote_ident(table.name)}"
        columns = []
        for column in table.columns:
            key = f"{table.key}.{column.name}"
            classification = bundle.column_classifications.get(key)
            verdict = self.decide(caller, f"SELECT {quote_ident(column.name)} FROM {qualified}")
            facts = facts_of(verdict)
            columns.append(
                {
                    "name": column.name,
                    "type": column.type,
                    "classification": classification,
                    "level": bundle.classification_levels.get(classification)
                    if classification
                    else None,
                    "masked": bool(facts.get("masked_columns")),
                    "provisional": key in bundle.provisional,
                }
            )
        record.rows = len(columns)
        record.tables = [table.key]
        return {
            "schema": table.schema,
            "name": table.name,
            "kind": table.kind,
            **self._access(caller, table),
            "columns": columns,
        }

    async def _describe_from_catalog(
        self, caller: Caller, session: AgentSession, schema: str, name: str, record: CallRecord
    ) -> dict[str, Any]:
        """No schema snapshot in the bundle yet: the catalog, read through the caller's
        own proxied connection like any other statement."""
        text = (
            "SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_name = {_literal(name)}"
            + (f" AND table_schema = {_literal(schema)}" if schema else "")
            + " ORDER BY table_schema, ordinal_position"
        )
        try:
            payload = await self._read(session, text, record)
        except psycopg.Error as exc:
            return self._refused(caller, exc, record)
        if not payload.get("rows"):
            raise ToolError("unknown_table", f"no table {name!r} in this datasource")
        record.tables = [f"{schema}.{name}" if schema else name]
        return {
            "schema": schema or None,
            "name": name,
            "columns": [
                {"name": r[0], "type": r[1], "classification": None, "masked": False}
                for r in payload["rows"]
            ],
            "note": "no schema snapshot in the bundle yet: read from the catalog, unclassified",
        }

    async def approval_status(
        self, caller: Caller, request_id: str, wait: int, record: CallRecord
    ) -> dict[str, Any]:
        record.approval_request = request_id
        if request_id not in self._requests.get(caller.identity.name, {}):
            raise ToolError(
                "unknown_request", f"no approval request {request_id!r} was opened by your calls"
            )
        if self.approvals is None:
            raise ToolError("no_approvals", "this sidecar has no approvals service configured")
        try:
            state = await self.approvals.wait(request_id, max(0, min(wait, MAX_WAIT)))
        except ApprovalUnavailable as exc:
            raise ToolError("approvals_unavailable", f"Warden: {exc}") from None
        if state.identity != caller.identity.name:
            # The list above is what the caller's calls were answered, and the database
            # can answer WR001 with any DETAIL too (a view over a function that raises
            # it): the control plane's word on whose request it is decides.
            raise ToolError(
                "unknown_request", f"no approval request {request_id!r} was opened by your calls"
            )
        record.outcome = state.state
        answer = {"id": state.id, "state": state.state, "url": state.url}
        if state.decided_by:
            answer["decided_by"] = state.decided_by
        if state.reason:
            answer["reason"] = state.reason
        if state.state == "approved":
            answer["next"] = "call execute again with the same statement to run it"
        return answer

    # ---- running statements -----------------------------------------------------

    async def _read(self, session: AgentSession, text: str, record: CallRecord) -> dict[str, Any]:
        limits = self.limits
        rows: list[list[Any]] = []
        size = 2
        truncated: str | None = None
        connection = session.connection
        # Each read in a read-only transaction of its own, always rolled back: what it
        # changed in the session that a transaction undoes (a setting, whatever the
        # checks above did not foresee) does not outlive it. (A session-level advisory
        # lock would: the session's own end releases those.)
        await connection.execute("BEGIN READ ONLY", prepare=False)
        try:
            cursor = connection.cursor()
            # Closed on leaving the loop early: psycopg then cancels the rest of it.
            stream: Any = cursor.stream(text)
            async with contextlib.aclosing(stream):
                async for row in stream:
                    if len(rows) >= limits.max_rows:
                        truncated = "rows"
                        break
                    values = [jsonable(v) for v in row]
                    size += len(json.dumps(values, default=str)) + 1
                    if size > limits.max_result_bytes:
                        truncated = "bytes"
                        break
                    rows.append(values)
        finally:
            try:
                await connection.execute("ROLLBACK", prepare=False)
            except Exception:
                # Still in that transaction (the ROLLBACK itself cancelled or failed):
                # the next call must not run in it, so the session goes, and the next
                # call connects afresh.
                await session.close()
        columns = [{"name": c.name, "type": c.type_display} for c in cursor.description or ()]
        record.rows = len(rows)
        return {
            "columns": columns,
            "rows": rows,
            "row_count": len(rows),
            "truncated": truncated is not None,
            **({"truncated_by": truncated} if truncated else {}),
            "masked_columns": record.facts.get("masked_columns") or [],
        }

    async def _write(self, session: AgentSession, text: str, record: CallRecord) -> dict[str, Any]:
        connection = session.connection
        # The session reads in read-only transactions; a write gets its own.
        await connection.execute("BEGIN READ WRITE", prepare=False)
        try:
            cursor = await connection.execute(text, prepare=False)
            rows: list[list[Any]] = []
            columns: list[dict[str, str]] = []
            if cursor.description:
                columns = [{"name": c.name, "type": c.type_display} for c in cursor.description]
                rows = [
                    [jsonable(v) for v in r] for r in await cursor.fetchmany(self.limits.max_rows)
                ]
            affected = cursor.rowcount
            await connection.execute("COMMIT", prepare=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.execute("ROLLBACK", prepare=False)
            raise
        record.rows = affected if affected >= 0 else None
        if record.approval_request is None and record.action == "review":
            record.outcome = "approved"
        payload: dict[str, Any] = {"status": "done", "rows_affected": record.rows}
        if columns:
            payload.update(columns=columns, rows=rows)
        return payload

    def _refused(self, caller: Caller, exc: psycopg.Error, record: CallRecord) -> dict[str, Any]:
        """What the proxy (or the database) answered instead of running the statement."""
        sqlstate = exc.sqlstate or None
        message = exc.diag.message_primary or str(exc).strip()
        record.sqlstate = sqlstate
        if sqlstate == SQLSTATE_HELD:
            request = held_request(exc.diag.message_detail)
            if request is not None:
                record.outcome = "held"
                record.approval_request = request["id"]
                book = self._requests.setdefault(caller.identity.name, OrderedDict())
                book[request["id"]] = request["url"]
                while len(book) > 1000:
                    book.popitem(last=False)
                return {
                    "status": "held",
                    "approval_request": request,
                    "message": message,
                    "next": (
                        "a reviewer must approve this statement: follow it with "
                        "approval_status(id), then call execute again with the same statement"
                    ),
                }
            record.outcome = "held"
            raise ToolError("held", message, sqlstate)
        if sqlstate == "42501":
            record.outcome = "denied" if exc.diag.message_detail else "blocked"
            raise ToolError("blocked", message, sqlstate)
        if sqlstate == "57014":
            record.outcome = "error"
            raise ToolError(
                "timeout",
                f"{message} (statement timeout {self.limits.statement_timeout_ms} ms)",
                sqlstate,
            )
        record.outcome = "error"
        if sqlstate == "42601":  # refused before the database, as the server would
            record.outcome = "blocked"
            raise ToolError("syntax_error", message, sqlstate)
        if isinstance(exc, psycopg.OperationalError):
            raise ToolError("session_ended", f"Warden: the session ended: {message}", sqlstate)
        raise ToolError("database_error", message, sqlstate)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
