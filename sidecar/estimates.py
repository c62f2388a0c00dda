"""The blast radius of a held statement: the planner's estimate, before anyone approves.

Before a request is opened the sidecar runs ``EXPLAIN (FORMAT JSON)`` of the
statement as it would run upstream (the rewritten text), never ``ANALYZE``, on
a connection of its own: outside the client's transaction, as the sidecar's
upstream role, under the client's confirmed ``search_path``, with the bound
parameter values of an extended-protocol statement. The transaction is read
only and rolled back; a statement and a lock timeout keep a plan that cannot be
made from holding the request back. The request carries the estimated rows per
table the statement writes (the rows the plan feeds to each UPDATE, DELETE,
INSERT or MERGE) or, for a read, per table it scans, and the plan's top node. A
statement EXPLAIN cannot plan (DDL, for one) or any failure gives the card an
``error`` instead: the request is opened all the same.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.errors
from pglast import parser as pg
from psycopg import sql

log = logging.getLogger("warden.sidecar.estimates")

# Statements EXPLAIN can plan: their first keyword.
_PLANNABLE = frozenset({"select", "insert", "update", "delete", "merge", "with", "values", "table"})
TIMEOUT_MS = 2000
LOCK_TIMEOUT_MS = 500


def _first_keyword(text: str) -> str:
    try:
        tokens = [t for t in pg.scan(text) if t.name not in {"SQL_COMMENT", "C_COMMENT"}]
    except Exception:
        return ""
    while tokens and text[tokens[0].start] == "(":
        tokens = tokens[1:]
    return text[tokens[0].start : tokens[0].end + 1].lower() if tokens else ""


def _rows(plan: dict[str, Any], out: dict[str, int], writes: bool) -> None:
    """Rows per table: what a ModifyTable node's input plans, else each scan's rows."""
    children = plan.get("Plans") or []
    relation = plan.get("Relation Name")
    if plan.get("Node Type") == "ModifyTable" and relation:
        rows = children[0].get("Plan Rows", 0) if children else plan.get("Plan Rows", 0)
        out[relation] = out.get(relation, 0) + int(rows)
    elif relation and not writes:
        out[relation] = max(out.get(relation, 0), int(plan.get("Plan Rows", 0)))
    for child in children:
        _rows(child, out, writes)


def summarise(plans: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The request's ``estimate`` from the plans of the statements of one text."""
    rows: dict[str, int] = {}
    top = ""
    # A text that writes: the rows it writes; else the rows it reads.
    writes = any(_writes(plan) for plan in plans)
    for plan in plans:
        if writes and not _writes(plan):
            continue
        _rows(plan, rows, writes)
        top = top or str(plan.get("Node Type", ""))
    return {"rows": rows, "top": top, "error": ""}


def _writes(plan: dict[str, Any]) -> bool:
    if plan.get("Node Type") == "ModifyTable":
        return True
    return any(_writes(child) for child in plan.get("Plans") or [])


def failed(why: str) -> dict[str, Any]:
    return {"rows": {}, "top": "", "error": why[:500]}


class PlanEstimator:
    """EXPLAIN on the sidecar's own upstream connection, opened on first use and
    again after a failure; one EXPLAIN at a time, on a worker thread."""

    # Held statements waiting for an estimate beyond which the next gets none: a
    # flood of them must not queue work on the database or delay every request.
    MAX_WAITING = 4

    def __init__(self, conninfo: str, *, password: str | None = None) -> None:
        self.conninfo = conninfo
        self.password = password
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        # A thread of its own: a slow EXPLAIN never takes the default executor's
        # threads, which the sessions use to judge large statements.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="warden-estimate"
        )
        self._waiting = 0

    async def estimate(
        self,
        text: str,
        params: Sequence[tuple[int, bytes | None]],
        types: Sequence[int],
        search_path: tuple[str, ...] | None,
    ) -> dict[str, Any]:
        if self._waiting >= self.MAX_WAITING:
            return failed("estimate skipped: other held statements were waiting for one")
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, self._estimate, text, params, types, search_path
            )
        except Exception as exc:  # the request is opened without an estimate
            log.warning("EXPLAIN of a held statement failed: %s", type(exc).__name__)
            return failed(f"EXPLAIN failed: {type(exc).__name__}")
        finally:
            self._waiting -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connect(self) -> psycopg.Connection[Any]:
        from sidecar.proxy.upstream import libpq_defaults

        kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": "warden-estimate",
            "connect_timeout": 5,
        }
        if self.password is not None:
            kwargs["password"] = self.password
        kwargs.update(libpq_defaults(self.conninfo))
        return psycopg.connect(self.conninfo, **kwargs)

    def _estimate(
        self,
        text: str,
        params: Sequence[tuple[int, bytes | None]],
        types: Sequence[int],
        search_path: tuple[str, ...] | None,
    ) -> dict[str, Any]:
        statements = [piece for piece in pg.split(text) if piece.strip()] if not params else [text]
        kinds = {_first_keyword(piece) for piece in statements}
        if not statements or not kinds <= _PLANNABLE:
            other = sorted(kinds - _PLANNABLE) or ["this"]
            return failed(f"EXPLAIN does not plan {other[0].upper()} statements")
        with self._lock:
            for attempt in (1, 2):  # a connection the server closed is opened again once
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                try:
                    return self._explain(self._conn, statements, params, types, search_path)
                except psycopg.OperationalError:
                    self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def _explain(
        self,
        conn: psycopg.Connection[Any],
        statements: list[str],
        params: Sequence[tuple[int, bytes | None]],
        types: Sequence[int],
        search_path: tuple[str, ...] | None,
    ) -> dict[str, Any]:
        pgconn = conn.pgconn
        setup = [
            "BEGIN READ ONLY",
            f"SET LOCAL statement_timeout = {TIMEOUT_MS}",
            f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}",
        ]
        if search_path:
            names = sql.SQL(", ").join(sql.Identifier(s) for s in search_path)
            setup.append(sql.SQL("SET LOCAL search_path = {}").format(names).as_string(conn))
        plans: list[dict[str, Any]] = []
        try:
            result = pgconn.exec_("; ".join(setup).encode())
            if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
                return failed(f"EXPLAIN failed: {_message(result)}")
            for statement in statements:
                command = b"EXPLAIN (FORMAT JSON) " + statement.encode("utf-8")
                if params:
                    count = len(params)
                    result = pgconn.exec_params(
                        command,
                        [value for _fmt, value in params],
                        [types[i] if i < len(types) else 0 for i in range(count)],
                        [fmt for fmt, _value in params],
                    )
                else:
                    result = pgconn.exec_(command)
                if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
                    return failed(f"EXPLAIN failed: {_message(result)}")
                document = json.loads(bytes(result.get_value(0, 0) or b"[]"))
                plans.extend(entry["Plan"] for entry in document if "Plan" in entry)
        finally:
            pgconn.exec_(b"ROLLBACK")
        return summarise(plans)


def _message(result: Any) -> str:
    """The error's condition, never the server's message: a message such as ``invalid
    input syntax for type integer: "..."`` quotes a value, and no filter of quotes
    is sure to remove it all."""
    raw = result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) or b""
    sqlstate = bytes(raw).decode("ascii", "replace")
    try:
        condition = psycopg.errors.lookup(sqlstate).__name__
    except KeyError:
        condition = "error"
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", condition).lower()
    return f"{words} (SQLSTATE {sqlstate})" if sqlstate else words
